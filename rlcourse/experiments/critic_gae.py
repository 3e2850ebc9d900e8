r"""Notebook 05: a critic learned by regression on λ-returns, and which GAE λ is best as it learns.

On a toy MDP (:mod:`rlcourse.toymdp`) with a fixed policy :math:`\pi` (the course's start), a
tabular critic :math:`V_\phi` (one number per prefix state, starting at ``critic_init``) is trained
by SGD on :func:`rlcourse.losses.value_loss` against the λ-returns
:math:`\hat R_t = \hat A_t + V_\phi(s_t)` of :func:`rlcourse.advantages.gae` (``critic_lambda``;
targets held fixed during the step), one sampled batch of ``batch_size`` sequences per step.

Every ``eval_every`` steps, for each :math:`\lambda` of the grid, the error of the GAE advantage
computed with the current critic against the exact advantage :math:`A^\pi(s_t, a_t)` of
:meth:`rlcourse.toymdp.ToyMDP.advantages` is computed **exactly**, over every sequence weighted by
its probability (no sampling in the measurement):

.. math::

    \text{adv\_mse}(\lambda) = \frac{\sum_\tau P_\pi(\tau) \sum_t \big(\hat A^{\mathrm{GAE}(\lambda)}_t(\tau; V_\phi)
        - A^\pi(s_t, a_t)\big)^2}{\sum_\tau P_\pi(\tau)\,|\tau|}\quad\text{(per token)}.

What to expect: transitions are deterministic, so :math:`\lambda = 0` (the TD residual) has no
sampling noise and its error is only the critic's, :math:`(V_\phi - V^\pi)(s_{t+1}) - (V_\phi - V^\pi)(s_t)`;
:math:`\lambda = 1` (:math:`G_t - V_\phi(s_t)`) carries the return's noise :math:`G_t - Q^\pi` plus the
critic's error at :math:`s_t`. As the critic's error shrinks the best λ should move toward 0.

Rows (``step`` = critic updates done, 0 = the untrained critic):

* arm ``lam=<λ>``: ``adv_mse``;
* arm ``critic``: ``critic_rmse`` (:math:`\sqrt{\sum_s d(s)(V_\phi - V^\pi)^2 / \sum_s d(s)}`, ``d`` the state
  visitation of :math:`\pi`), ``best_lambda`` (the grid's λ of least ``adv_mse``), ``value_loss`` (the
  batch loss of the last update).

A seed fixes the batches (the only randomness).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from rlcourse import _validate as V
from rlcourse.advantages import gae
from rlcourse.experiments.budget import check_part
from rlcourse.experiments.ppo_toy import toy_batch
from rlcourse.experiments.runner import experiment
from rlcourse.losses import value_loss
from rlcourse.threads import cpu_threads
from rlcourse.toymdp import ToyProblem

__all__ = ["CriticGAEConfig", "run_seed", "advantage_errors", "check_lambdas", "lam_arm"]


def lam_arm(lam: float) -> str:
    """The arm name of a λ: ``lam=0.50``."""
    return f"lam={lam:.2f}"


def check_lambdas(cfg) -> None:
    """``cfg.lambdas`` (the GAE λ grid: a non-empty tuple) and ``cfg.critic_lambda`` lie in [0, 1];
    ``ValueError`` naming the field otherwise."""
    if not isinstance(cfg.lambdas, tuple) or not cfg.lambdas:
        raise ValueError(f"lambdas must be a non-empty tuple, got {cfg.lambdas!r}")
    for name, v in [("lambdas", x) for x in cfg.lambdas] + [("critic_lambda", cfg.critic_lambda)]:
        V.in_range(name, v, 0.0, 1.0)


@dataclass(frozen=True)
class CriticGAEConfig:
    """The ``critic_gae`` experiment.

    Attributes:
        lambdas: the GAE λ grid whose advantage errors are measured.
        critic_lambda: λ of the critic's regression targets (1: Monte Carlo returns; < 1: bootstrapped).
        steps: critic updates; eval_every: updates between measurements.
        batch_size: sequences per update; lr: SGD learning rate on the value table.
        critic_init: the critic's starting value in every state.
        problem: the MDP and the (fixed) policy (the course's, with horizon 6).
    """

    lambdas: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0)
    critic_lambda: float = 1.0
    steps: int = 300
    eval_every: int = 10
    batch_size: int = 8
    lr: float = 0.5
    critic_init: float = 0.0
    problem: ToyProblem = ToyProblem(horizon=6)

    def __post_init__(self):
        check_lambdas(self)
        check_part(self, "problem", ToyProblem)
        for name in ("steps", "eval_every", "batch_size"):
            V.integer(name, getattr(self, name))
        V.positive("lr", self.lr, allow_inf=False)
        V.number("critic_init", self.critic_init, minimum=None)

    def quick(self) -> "CriticGAEConfig":
        """A seconds-long version for CI."""
        return replace(self, lambdas=(0.0, 0.5, 1.0), steps=20, eval_every=10,
                       problem=replace(self.problem, horizon=3))


def advantage_errors(mdp, theta: torch.Tensor, values: torch.Tensor, lambdas, gamma: float = 1.0) -> list[float]:
    r"""Exact per-token mean squared error of the GAE(λ) advantage (critic ``values``, a table over the
    states) against :math:`A^\pi`, one number per λ (formula in the module docstring)."""
    seq = mdp.sequences
    p = mdp.probabilities(theta).detach()
    exact = mdp.advantages(theta, gamma)[seq.states, seq.tokens] * seq.mask
    v = values.detach()[seq.states] * seq.mask
    tokens = float((p * seq.mask.sum(1)).sum())
    out = []
    for lam in lambdas:
        adv, _ = gae(seq.token_rewards, v, seq.mask, gamma=gamma, lam=float(lam))
        out.append(float((p[:, None] * (adv - exact) ** 2 * seq.mask).sum()) / tokens)
    return out


def _critic_rmse(mdp, theta, values) -> float:
    d = mdp.state_visitation(theta)
    err = (values.detach() - mdp.state_values(theta)) ** 2
    return float(((d * err).sum() / d.sum()).sqrt())


@experiment("critic_gae", notebook="05", config=CriticGAEConfig)
def run_seed(cfg: CriticGAEConfig, seed: int, progress) -> list[dict]:
    """toy MDP: a tabular critic trained on lambda-returns; exact error of GAE(lambda) vs the true advantage per lambda
    as the critic learns (the best lambda moves)

    One seed: the critic's training and, every ``eval_every`` updates, the advantage error per λ."""
    with cpu_threads(1):  # tensors of tens of entries: threads only add synchronisation
        return _run(cfg, seed, progress)


def _run(cfg, seed, progress):
    mdp, theta = cfg.problem.build()
    theta = theta.detach()
    phi = torch.full((mdp.num_states,), float(cfg.critic_init), dtype=theta.dtype, requires_grad=True)
    opt = torch.optim.SGD([phi], lr=cfg.lr)
    rows, loss = [], float("nan")

    def measure(step):
        errs = advantage_errors(mdp, theta, phi, cfg.lambdas)
        rows.extend({"arm": lam_arm(lam), "seed": seed, "step": step, "adv_mse": e}
                    for lam, e in zip(cfg.lambdas, errs))
        best = min(range(len(errs)), key=errs.__getitem__)
        rows.append({"arm": "critic", "seed": seed, "step": step, "critic_rmse": _critic_rmse(mdp, theta, phi),
                     "best_lambda": float(cfg.lambdas[best])} | ({} if step == 0 else {"value_loss": loss}))

    measure(0)
    for step in range(1, cfg.steps + 1):
        b = toy_batch(mdp, mdp.sample(theta, cfg.batch_size, seed=seed * 1_000_003 + step))
        values = phi[b["states"]] * b["mask"]
        _, returns = gae(b["rewards"], values.detach(), b["mask"], gamma=1.0, lam=cfg.critic_lambda)
        opt.zero_grad()
        lv = value_loss(values, values.detach(), returns, b["mask"])
        lv.backward()
        opt.step()
        loss = float(lv.detach())
        if step % cfg.eval_every == 0 or step == cfg.steps:
            measure(step)
        progress(step, cfg.steps)
    return rows
