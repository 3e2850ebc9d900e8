r"""Generalized advantage estimation (Schulman et al. 2016).

Statement. With TD residuals :math:`\delta_t = r_t + \gamma V(s_{t+1}) - V(s_t)` (and
:math:`V = 0` after the last token), the backward recursion and the closed form agree,

.. math::

    \hat A_t = \delta_t + \gamma\lambda\, \hat A_{t+1}
    \quad\Longleftrightarrow\quad
    \hat A_t = \sum_{l \ge 0} (\gamma\lambda)^l\, \delta_{t+l},

and the two ends of the family are :math:`\lambda = 0`: :math:`\hat A_t = \delta_t` (one-step
TD), and :math:`\lambda = 1`: the sum telescopes to :math:`\hat A_t = G_t - V(s_t)`
(reward-to-go minus a state baseline). When :math:`V = V^\pi` exactly,
:math:`\mathbb{E}[\delta_{t+l} \mid s_{t+l}] = 0` for :math:`l \ge 1` while
:math:`\mathbb{E}[\delta_t \mid s_t, a_t] = A^\pi(s_t, a_t)`; since the score at step
:math:`t` is fixed given :math:`s_{t+l}`, every :math:`\lambda` gives an unbiased gradient,

.. math::

    \mathbb{E}\Big[\sum_t \gamma^t\, \nabla_\theta \log \pi_\theta(a_t \mid s_t)\, \hat A^{\mathrm{GAE}(\gamma,\lambda)}_t\Big]
      = \nabla_\theta J_\gamma(\theta) \quad \text{for all } \lambda \in [0, 1].

With an imperfect :math:`V` only :math:`\lambda = 1` stays unbiased (there :math:`V` is just a
baseline); :math:`\lambda < 1` trades that bias for lower variance.

Checks:

* exact: :func:`rlcourse.advantages.gae` (recursion) equals :func:`rlcourse.advantages.gae_closed_form`
  on random tensors with right padding and left prompts (:math:`\gamma = 0.9, \lambda = 0.8`);
* exact: :math:`\lambda = 0` gives :func:`rlcourse.advantages.td_residuals`;
* exact: :math:`\lambda = 1` gives :func:`rlcourse.advantages.reward_to_go` minus :math:`V`;
* exact (toy MDP, :math:`V = V^\pi`): the expected GAE-weighted score equals :math:`\nabla_\theta J`
  for :math:`\lambda \in \{0, 0.5, 1\}` (:math:`\gamma = 1`) and for :math:`\gamma = 0.9, \lambda = 0.95`;
* exact (toy MDP, a wrong :math:`V`): :math:`\lambda = 1` is still unbiased;
* negative control: a recursion without :math:`\gamma` on :math:`\lambda` disagrees with the closed form;
* negative control: with a wrong :math:`V`, :math:`\lambda = 0` is biased;
* negative control: at :math:`\gamma = 0.9` the estimator without :math:`\gamma^t` on the score,
  :math:`\mathbb{E}[\sum_t \hat A_t \nabla\log\pi_t]` (what most implementations compute), is not
  :math:`\nabla J_\gamma` (even with :math:`V = V^\pi`);
* symbolic: for :math:`T = 3` with symbolic rewards and values, recursion = closed form at every
  step, and :math:`\lambda = 1` gives :math:`G_0 - V_0`.
"""

from __future__ import annotations

import sympy
import torch

from rlcourse._validate import integer
from rlcourse.advantages import gae, gae_closed_form, reward_to_go, td_residuals
from rlcourse.derivations.base import Check, derivation, exact, negative_control, symbolic
from rlcourse.toymdp import ToyMDP, course_problem

NAME = "gae"


def random_batch(batch: int = 6, length: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random float64 (rewards, values, mask); the mask has right padding and, on some rows, a prompt on the left."""
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(batch, length, generator=g, dtype=torch.float64)
    values = torch.randn(batch, length, generator=g, dtype=torch.float64)
    mask = torch.zeros(batch, length, dtype=torch.float64)
    for i in range(batch):
        start = int(torch.randint(0, 3, (1,), generator=g)) if i % 2 else 0
        end = int(torch.randint(start + 1, length + 1, (1,), generator=g))
        mask[i, start:end] = 1.0
    return rewards, values, mask


def gae_missing_gamma(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
                      ) -> torch.Tensor:
    r"""Wrong on purpose: :math:`\hat A_t = \delta_t + \lambda \hat A_{t+1}` (the :math:`\gamma` on :math:`\lambda` forgotten),
    i.e. the :math:`\lambda`-discounted sum of the TD residuals (:func:`~rlcourse.advantages.reward_to_go` of them)."""
    return reward_to_go(td_residuals(rewards, values, mask, gamma), mask, lam)


def n_step_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, n: int
                      ) -> torch.Tensor:
    r"""The :math:`n`-step advantage, from its definition (rewards, then a bootstrapped value):

    .. math::

        \hat A^{(n)}_t = \sum_{l=0}^{n-1} \gamma^l r_{t+l} + \gamma^n V(s_{t+n}) - V(s_t),

    with :math:`t + l` running over counted tokens, and :math:`r = V = 0` after the last one
    (so :math:`n \ge` the remaining length gives :math:`G_t - V(s_t)`). It telescopes to
    :math:`\sum_{l<n} \gamma^l \delta_{t+l}`, and GAE is the mixture
    :math:`\sum_{n \ge 1} (1-\lambda)\lambda^{n-1} \hat A^{(n)}_t`. Same conventions as
    :func:`rlcourse.advantages.gae`; (B, T) in, (B, T) out, 0 where ``mask`` is 0.
    """
    integer("n", n)
    td_residuals(rewards, values, mask, gamma)  # validates shapes, mask and gamma
    m = mask.to(rewards.dtype)
    step = m.cumsum(-1)
    lag = step[:, None, :] - step[:, :, None]  # lag[b, t, s] = k_s - k_t between counted steps
    pair = (m[:, :, None] * m[:, None, :]) > 0
    discount = torch.full_like(lag, gamma) ** lag.clamp(min=0)
    zero = torch.zeros_like(lag)
    w_reward = torch.where(pair & (lag >= 0) & (lag < n), discount, zero)
    w_boot = torch.where(pair & (lag == n), discount, zero)
    adv = torch.einsum("bts,bs->bt", w_reward, rewards) + torch.einsum("bts,bs->bt", w_boot, values) - values
    return adv * m


def toy_values(mdp: ToyMDP, v: torch.Tensor) -> torch.Tensor:
    r""":math:`V(s_t)` along every enumerated sequence, (N, H), from a table ``v`` of shape (S,)."""
    seq = mdp.sequences
    return v[seq.states] * seq.mask


def expected_gae_gradient(mdp: ToyMDP, theta: torch.Tensor, v: torch.Tensor, gamma: float, lam: float,
                          discount_scores: bool = True) -> torch.Tensor:
    r""":math:`\sum_\tau P_\theta(\tau) \sum_t \gamma^t \hat A^{\mathrm{GAE}}_t \nabla_\theta \log \pi_\theta(a_t \mid s_t)`, (S, V).

    ``discount_scores=False`` drops the :math:`\gamma^t` (wrong on purpose for :math:`\gamma < 1`: the estimator
    most implementations use, which is biased for the discounted objective :math:`J_\gamma`)."""
    seq = mdp.sequences
    adv, _ = gae(seq.token_rewards, toy_values(mdp, v), seq.mask, gamma=gamma, lam=lam)
    w = mdp.probabilities(theta).detach()[:, None] * adv
    if discount_scores:
        w = w * mdp.discounts(gamma)
    return torch.einsum("nt,ntsa->sa", w, mdp.token_scores(theta))


def gae_sympy(T: int = 3) -> tuple[list, list, sympy.Expr, tuple, tuple]:
    r"""Symbolic GAE for ``T`` steps: (recursion, closed form, :math:`G_0 - V_0`, (gamma, lambda), rewards).

    The recursion is built backwards from :math:`\hat A_T = 0` with :math:`V_T = 0`."""
    g, lam = sympy.symbols("gamma lambda", positive=True)
    r = sympy.symbols(f"r0:{T}", real=True)
    v = list(sympy.symbols(f"V0:{T}", real=True)) + [sympy.Integer(0)]
    delta = [r[t] + g * v[t + 1] - v[t] for t in range(T)]
    rec = [sympy.Integer(0)] * (T + 1)
    for t in reversed(range(T)):
        rec[t] = delta[t] + g * lam * rec[t + 1]
    closed = [sum((g * lam) ** l * delta[t + l] for l in range(T - t)) for t in range(T)]
    g0_minus_v0 = sum(g ** k * r[k] for k in range(T)) - v[0]
    return rec[:T], closed, g0_minus_v0, (g, lam), r


@derivation(NAME, "Generalized advantage estimation", source="unified-rl-llm, ppo-post-training, roy-policy-gradients")
def checks() -> list[Check]:
    rewards, values, mask = random_batch()
    gamma, lam = 0.9, 0.8
    rec, _ = gae(rewards, values, mask, gamma=gamma, lam=lam)
    closed, _ = gae_closed_form(rewards, values, mask, gamma=gamma, lam=lam)
    out = [exact(NAME, "GAE recursion == closed form sum_l (gamma lam)^l delta_{t+l}", closed, rec,
                 detail=f"random (6, 8) batch, right padding and left prompts, gamma={gamma}, lambda={lam}")]
    out.append(exact(NAME, "GAE(lambda=0) == TD residual", td_residuals(rewards, values, mask, gamma),
                     gae(rewards, values, mask, gamma=gamma, lam=0.0)[0]))
    out.append(exact(NAME, "GAE(lambda=1) == reward-to-go - V", reward_to_go(rewards, mask, gamma) - values * mask,
                     gae(rewards, values, mask, gamma=gamma, lam=1.0)[0]))

    mdp, theta = course_problem()
    for gm, lm in ((1.0, 0.0), (1.0, 0.5), (1.0, 1.0), (0.9, 0.95)):
        out.append(exact(NAME, f"E[sum_t gamma^t A^GAE_t grad log pi_t] == grad J, V = V^pi (gamma={gm}, lambda={lm})",
                         mdp.exact_gradient(theta, gm),
                         expected_gae_gradient(mdp, theta, mdp.state_values(theta, gm), gm, lm)))
    gen = torch.Generator().manual_seed(5)
    v_wrong = mdp.state_values(theta) + torch.randn(mdp.num_states, generator=gen, dtype=torch.float64)
    truth = mdp.exact_gradient(theta)
    out.append(exact(NAME, "with a wrong V, GAE(lambda=1) is still unbiased", truth,
                     expected_gae_gradient(mdp, theta, v_wrong, 1.0, 1.0),
                     detail="lambda = 1: V only enters as a state baseline"))

    wrong = gae_missing_gamma(rewards, values, mask, gamma, lam)
    out.append(negative_control(
        exact(NAME, "recursion A_t = delta_t + lambda A_{t+1} (gamma missing) == closed form", closed, wrong),
        detail="a forgotten gamma on lambda must be rejected"))
    biased = expected_gae_gradient(mdp, theta, v_wrong, 1.0, 0.0)
    out.append(negative_control(
        exact(NAME, "with a wrong V, GAE(lambda=0) == grad J", truth, biased),
        detail=f"TD(0) trusts V: bias {float((biased - truth).norm()):.3f} (norm) with V^pi + N(0, 1) noise"))
    truth_09 = mdp.exact_gradient(theta, 0.9)
    no_discount = expected_gae_gradient(mdp, theta, mdp.state_values(theta, 0.9), 0.9, 0.95, discount_scores=False)
    out.append(negative_control(
        exact(NAME, "E[sum_t A^GAE_t grad log pi_t] (gamma^t dropped) == grad J_gamma (gamma=0.9, lambda=0.95)",
              truth_09, no_discount),
        detail=f"without gamma^t later steps weigh too much: bias {float((no_discount - truth_09).norm()):.3f} "
               "(norm), V = V^pi; must be rejected"))

    rec_s, closed_s, g0v0, (g, lm_s), _ = gae_sympy(3)
    for t in range(3):
        out.append(symbolic(NAME, f"T=3: recursion == closed form at t={t}", rec_s[t], closed_s[t]))
    out.append(symbolic(NAME, "T=3: GAE(lambda=1) at t=0 == G_0 - V_0", rec_s[0].subs(lm_s, 1), g0v0))
    return out
