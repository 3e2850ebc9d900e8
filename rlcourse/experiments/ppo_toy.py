r"""Notebook 06: K epochs on one batch — vanilla policy gradient vs PPO-clip vs PPO-penalty, exactly.

On the course's toy MDP (:mod:`rlcourse.toymdp`: every sequence enumerable, so :math:`J` and the
KL are exact), each *iteration* samples ONE batch of ``batch_size`` sequences from
:math:`\pi_{\text{old}}`, computes its advantages, and takes ``K`` full-batch optimizer steps on
that batch with one of three losses (the package's, never re-implemented):

* ``vanilla``: :func:`rlcourse.losses.policy_gradient_loss`, :math:`-\hat A\log\pi_\theta`, the
  on-policy surrogate reused K times as if the batch were still fresh (no ratio, no clip);
* ``clip``: :func:`rlcourse.losses.ppo_clip_loss` (Schulman et al. 2017), ratio to
  :math:`\pi_{\text{old}}` clipped to :math:`[1-\epsilon, 1+\epsilon]`;
* ``penalty``: :func:`rlcourse.losses.ppo_penalty_loss`, the ratio surrogate plus
  :math:`\beta\,\widehat{\mathrm{KL}}(\pi_{\text{old}}\|\pi_\theta)`, with :math:`\beta` moved after
  every iteration by :class:`rlcourse.losses.AdaptiveKLController` from the batch's KL estimate;
* ``unclipped`` (optional arm): :func:`rlcourse.losses.importance_weighted_loss`, the ratio
  surrogate with neither clip nor penalty (what the clip is removed from).

Advantages: :func:`rlcourse.advantages.gae` with the exact :math:`V^{\pi_{\text{old}}}` (``lam = 1``:
:math:`G_t - V^{\pi_{\text{old}}}(s_t)`), so that the comparison is about the update rule, not the critic.

Recorded after each iteration (one row per arm, seed and iteration; ``step`` = iteration, 0 = the start):

* ``J``: the exact objective :math:`J(\theta)`;
* ``kl``: the exact :math:`\mathrm{KL}(P_{\theta_{\text{old}}}\,\|\,P_\theta)` between the sequence
  distributions before and after the iteration's K steps (:func:`rlcourse.kl.kl_categorical` over all
  sequences; it is the expected sum of the per-token KLs along a sequence);
* ``clipfrac``: the fraction of the batch's tokens whose ratio :math:`\pi_\theta/\pi_{\text{old}}` ends
  the iteration outside :math:`[1-\epsilon, 1+\epsilon]` (``ppo_clip_loss``'s statistic; for the other
  arms, what the clip would have clipped);
* ``j_drop``: :math:`\max(0, J(\theta_{\text{old}}) - J(\theta))`, how much the iteration lost (0 if it gained);
* ``beta``: the penalty coefficient (``penalty`` arms only).

A seed fixes the batches (the only randomness); the MDP and the start are the course's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from rlcourse import _validate as V
from rlcourse.advantages import gae
from rlcourse.experiments.budget import check_part
from rlcourse.experiments.runner import experiment, over_arms
from rlcourse.kl import kl_categorical
from rlcourse.losses import (AdaptiveKLController, importance_weighted_loss, policy_gradient_loss, ppo_clip_loss,
                             ppo_penalty_loss)
from rlcourse.threads import cpu_threads
from rlcourse.toymdp import ToyMDP, ToyProblem

__all__ = ["PPOToyConfig", "METHODS", "run_seed", "toy_batch"]

METHODS = ("vanilla", "clip", "penalty", "unclipped")


@dataclass(frozen=True)
class PPOToyConfig:
    """The ``ppo_toy`` experiment.

    Attributes:
        methods: loss arms, from ``METHODS``.
        epochs: the K values (optimizer steps per batch); every method runs with every K.
        iterations: batches sampled (policy updates) per arm and seed.
        batch_size: sequences per batch.
        lr: learning rate on the logits.
        optimizer: ``"sgd"`` (default: a step is the gradient, so a zero gradient stops it) or ``"adam"``
            (state kept across iterations, as in PPO implementations: its momentum keeps moving the logits
            after the clip has zeroed the gradient, so clipped ratios drift further out of the range).
        eps: the clip range (``clip``) and the range of the ``clipfrac`` statistic.
        kl_target, init_beta, kl_horizon: the adaptive penalty (``penalty``): target per-token
            KL(old‖new), starting beta, and the controller's horizon (relative step ≤ 0.2 / horizon).
        lam: GAE lambda of the advantages (with the exact value of the sampling policy).
        problem: the MDP and the start (default: the course's, :func:`rlcourse.toymdp.course_problem`).
    """

    methods: tuple[str, ...] = ("vanilla", "clip", "penalty")
    epochs: tuple[int, ...] = (1, 4, 16)
    iterations: int = 40
    batch_size: int = 8
    lr: float = 1.0
    optimizer: str = "sgd"
    eps: float = 0.2
    kl_target: float = 0.01
    init_beta: float = 1.0
    kl_horizon: float = 1.0
    lam: float = 1.0
    problem: ToyProblem = ToyProblem()

    def __post_init__(self):
        for name in ("methods", "epochs"):
            v = getattr(self, name)
            if not isinstance(v, tuple) or not v:
                raise ValueError(f"{name} must be a non-empty tuple, got {v!r}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"methods: unknown {bad}; known: {list(METHODS)}")
        for k in self.epochs:
            V.integer("epochs", k)
        check_part(self, "problem", ToyProblem)
        for name in ("iterations", "batch_size"):
            V.integer(name, getattr(self, name))
        for name in ("lr", "eps", "kl_target", "init_beta", "kl_horizon"):
            V.positive(name, getattr(self, name), allow_inf=False)
        V.choice("optimizer", self.optimizer, ("adam", "sgd"))
        V.in_range("lam", self.lam, 0.0, 1.0)

    def quick(self) -> "PPOToyConfig":
        """A seconds-long version for CI: fewer iterations and K values."""
        return replace(self, epochs=(1, 8), iterations=4)

    def arms(self) -> list[tuple[str, str, int]]:
        return [(f"{m} K={k}", m, k) for m in self.methods for k in self.epochs]


def toy_batch(mdp: ToyMDP, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """The (B, H) tensors of the sampled sequences ``idx``: ``states``, ``tokens``, ``mask``, ``rewards``."""
    seq = mdp.sequences
    return {"idx": idx, "states": seq.states[idx], "tokens": seq.tokens[idx], "mask": seq.mask[idx],
            "rewards": seq.token_rewards[idx]}


def _batch_logp(mdp: ToyMDP, theta: torch.Tensor, b: dict) -> torch.Tensor:
    return mdp.policy_logprobs(theta)[b["states"], b["tokens"]] * b["mask"]


def _loss(method, logp, logp_old, adv, mask, cfg, beta):
    if method == "vanilla":
        return policy_gradient_loss(logp, adv, mask)
    if method == "unclipped":
        return importance_weighted_loss(logp, logp_old, adv, mask)
    if method == "clip":
        return ppo_clip_loss(logp, logp_old, adv, mask, eps_low=cfg.eps)[0]
    return ppo_penalty_loss(logp, logp_old, adv, mask, beta=beta)[0]


def _run_arm(cfg: PPOToyConfig, method: str, K: int, seed: int, arm: str, tick) -> list[dict]:
    mdp, theta0 = cfg.problem.build()
    theta = theta0.clone().requires_grad_(True)
    opt = (torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.SGD)([theta], lr=cfg.lr)
    ctl = AdaptiveKLController(cfg.init_beta, cfg.kl_target, cfg.kl_horizon) if method == "penalty" else None
    row0 = {"arm": arm, "seed": seed, "step": 0, "J": float(mdp.objective(theta0)), "kl": 0.0, "clipfrac": 0.0,
            "j_drop": 0.0}
    rows = [row0 | ({"beta": ctl.beta} if ctl else {})]
    for it in range(1, cfg.iterations + 1):
        old = theta.detach().clone()
        # the batch depends on the seed, the iteration and the current policy only (not on the arm's name)
        b = toy_batch(mdp, mdp.sample(old, cfg.batch_size, seed=seed * 1_000_003 + it))
        values = mdp.state_values(old)[b["states"]] * b["mask"]
        adv, _ = gae(b["rewards"], values, b["mask"], gamma=1.0, lam=cfg.lam)
        logp_old = _batch_logp(mdp, old, b)
        beta = ctl.beta if ctl else None
        for _ in range(K):
            opt.zero_grad()
            _loss(method, _batch_logp(mdp, theta, b), logp_old, adv, b["mask"], cfg, beta).backward()
            opt.step()
        with torch.no_grad():
            new = theta.detach()
            logp_new = _batch_logp(mdp, new, b)
            _, stats = ppo_clip_loss(logp_new, logp_old, adv, b["mask"], eps_low=cfg.eps)
            kl = float(kl_categorical(mdp.sequence_logprobs(old), mdp.sequence_logprobs(new)))
            J_old, J = float(mdp.objective(old)), float(mdp.objective(new))
            row = {"arm": arm, "seed": seed, "step": it, "J": J, "kl": kl, "clipfrac": stats["clipfrac"],
                   "j_drop": max(0.0, J_old - J)}
            if ctl:
                ctl.update(stats["approx_kl"], 1)  # the batch's k3 estimate of KL(old || new) per token
                row["beta"] = beta
        rows.append(row)
        tick()
    return rows


@experiment("ppo_toy", notebook="06", config=PPOToyConfig)
def run_seed(cfg: PPOToyConfig, seed: int, progress) -> list[dict]:
    """K epochs on one batch, toy MDP: vanilla PG vs PPO-clip vs PPO-penalty (adaptive beta); exact J and KL(old||new)
    per update

    Every arm (method × K) of ``cfg`` for one seed; tidy rows ``{arm, seed, step, J, kl, clipfrac, j_drop[, beta]}``."""
    arms = cfg.arms()
    with cpu_threads(1):  # tensors of tens of entries: threads only add synchronisation
        return over_arms(arms, len(arms) * cfg.iterations, progress,
                         lambda a, tick: _run_arm(cfg, a[1], a[2], seed, a[0], tick))
