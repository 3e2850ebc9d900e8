r"""Group baselines: the group mean shrinks the gradient by (G-1)/G, RLOO is unbiased, the std rescales.

Statement. Draw a group of :math:`G` independent sequences :math:`\tau_1, \dots, \tau_G \sim P_\theta`
(the same prompt), with returns :math:`R_i`, and estimate the policy gradient by

.. math::

    \hat g = \frac1G \sum_{i=1}^G \hat A_i\, \nabla \log P_\theta(\tau_i).

* Group mean (Dr. GRPO, Liu et al. 2025; GRPO without the std):
  :math:`\hat A_i = R_i - \frac1G \sum_j R_j = \frac{G-1}{G} R_i - \frac1G \sum_{j \ne i} R_j`.
  The second part is independent of :math:`\tau_i`, so it vanishes in expectation (EGLP), but the
  first part keeps only a fraction of :math:`R_i`:

  .. math::

      \mathbb{E}[\hat g] = \frac{G-1}{G}\, \nabla J(\theta).

  The bias is a positive scale only (a smaller step size), but "the group mean is an unbiased
  baseline" is false as stated.
* Leave-one-out (RLOO, Kool et al. 2019; Ahmadian et al. 2024):
  :math:`\hat A_i = R_i - \frac{1}{G-1}\sum_{j \ne i} R_j = \frac{G}{G-1}(R_i - \bar R)`, so
  :math:`\mathbb{E}[\hat g] = \nabla J` exactly.
* GRPO's z-score (Shao et al. 2024): :math:`\hat A_i = (R_i - \bar R)/(\mathrm{std}(R) + \epsilon)`.
  The std depends on :math:`R_i` itself, so the expectation is no longer a multiple of
  :math:`\nabla J`: both its direction and its scale change (measured: cosine and scale).

Every expectation is exact: all :math:`N^G` ordered groups of the toy MDP's :math:`N`
sequences are enumerated, each weighted by :math:`\prod_i P_\theta(\tau_i)`.

Checks:

* exact: :math:`\mathbb{E}[\hat g_{\text{mean}}] = \frac{G-1}{G}\nabla J` for G = 2, 3, 4;
* exact: :math:`\mathbb{E}[\hat g_{\text{RLOO}}] = \nabla J` for G = 2, 3, 4;
* exact: RLOO advantages :math:`= \frac{G}{G-1} \times` group-mean advantages on every group;
* negative control: "the group-mean baseline is unbiased" (:math:`\mathbb{E}[\hat g_{\text{mean}}] = \nabla J`) is rejected;
* negative control: "GRPO's z-score estimator points along :math:`\nabla J`" (unit vectors compared)
  is rejected; the cosine and the scale are reported;
* Monte Carlo: the mean of the RLOO estimator over sampled groups is within 4 SE of :math:`\nabla J`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import torch

from rlcourse.advantages import dr_grpo_advantages, grpo_advantages, rloo_advantages
from rlcourse.derivations.base import Check, derivation, exact, monte_carlo, negative_control
from rlcourse.toymdp import ToyMDP, ToyProblem

NAME = "grpo_advantage"

AdvantageFn = Callable[[torch.Tensor, int], torch.Tensor]


@lru_cache(maxsize=8)
def all_groups(num_sequences: int, group_size: int) -> torch.Tensor:
    """Every ordered group of ``group_size`` sequence indices, shape (N^G, G) (cached; do not modify)."""
    grids = torch.meshgrid(*[torch.arange(num_sequences)] * group_size, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=1)


def group_advantages(rewards: torch.Tensor, group_size: int, advantage_fn: AdvantageFn) -> torch.Tensor:
    """Advantages of every group at once: ``rewards`` (M, G) -> (M, G), via the (B,) group API."""
    return advantage_fn(rewards.reshape(-1), group_size).reshape(rewards.shape)


def expected_group_gradient(mdp: ToyMDP, theta: torch.Tensor, group_size: int, advantage_fn: AdvantageFn
                            ) -> torch.Tensor:
    r"""Exact :math:`\mathbb{E}[\frac1G \sum_i \hat A_i \nabla \log P(\tau_i)]` over all :math:`N^G` groups, (S, V)."""
    p, R, score = mdp.probabilities(theta.detach()), mdp.returns(), mdp.score(theta)
    groups = all_groups(mdp.num_sequences, group_size)
    weight = p[groups].prod(dim=1)                                     # P(group)
    adv = group_advantages(R[groups], group_size, advantage_fn)        # (M, G)
    # Sum of weight * A_i over every (group, slot) that holds sequence n.
    coef = torch.zeros(mdp.num_sequences, dtype=p.dtype).index_add_(
        0, groups.reshape(-1), (weight[:, None] * adv).reshape(-1))
    return torch.einsum("n,nsa->sa", coef, score) / group_size


def sampled_group_gradients(mdp: ToyMDP, theta: torch.Tensor, group_size: int, n_groups: int,
                            advantage_fn: AdvantageFn, seed: int = 0) -> torch.Tensor:
    r"""Per-group estimates :math:`\frac1G \sum_i \hat A_i \nabla \log P(\tau_i)` over sampled groups, (n, S*V)."""
    idx = mdp.sample(theta, n_groups * group_size, seed=seed)
    adv = advantage_fn(mdp.returns()[idx], group_size)
    per_sample = adv[:, None, None] * mdp.score(theta)[idx]
    return per_sample.reshape(n_groups, group_size, -1).mean(1)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two flattened tensors."""
    a, b = a.flatten(), b.flatten()
    return float(a @ b / (a.norm() * b.norm()))


def zscore_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """GRPO's z-score advantages (unbiased std, eps = 1e-6)."""
    return grpo_advantages(rewards, group_size, eps=1e-6, scale=True)


def problem() -> tuple[ToyMDP, torch.Tensor]:
    """``(mdp, theta)``: the toy MDP (seed 9) and policy (seed 10) of these checks."""
    return ToyProblem(mdp_seed=9, theta_seed=10).build()


@derivation(NAME, "GRPO advantage", source="wei-rl-llm")
def checks() -> list[Check]:
    mdp, theta = problem()
    truth = mdp.exact_gradient(theta)
    N = mdp.num_sequences
    out = []
    for G in (2, 3, 4):
        g_mean = expected_group_gradient(mdp, theta, G, dr_grpo_advantages)
        out.append(exact(NAME, f"G={G}: E[group-mean estimator] == (G-1)/G grad J", (G - 1) / G * truth, g_mean,
                         detail=f"all {N}^{G} = {N ** G} ordered groups enumerated"))
        out.append(exact(NAME, f"G={G}: E[RLOO estimator] == grad J", truth,
                         expected_group_gradient(mdp, theta, G, rloo_advantages)))

    G = 3
    rewards = mdp.returns()[all_groups(N, G)]
    out.append(exact(NAME, "RLOO advantages == G/(G-1) x group-mean advantages, every group (G=3)",
                     G / (G - 1) * group_advantages(rewards, G, dr_grpo_advantages),
                     group_advantages(rewards, G, rloo_advantages)))

    g_mean = expected_group_gradient(mdp, theta, G, dr_grpo_advantages)
    out.append(negative_control(exact(NAME, "G=3: the group-mean baseline is unbiased (E == grad J)", truth, g_mean),
                                detail="it shrinks the gradient by (G-1)/G = 2/3; must be rejected"))

    g_z = expected_group_gradient(mdp, theta, G, zscore_advantages)
    cos = cosine(g_z, truth)
    scale = float(g_z.flatten() @ truth.flatten() / truth.flatten().norm() ** 2)
    out.append(negative_control(
        exact(NAME, "G=3: E[z-score estimator] points along grad J (unit vectors)", truth / truth.norm(),
              g_z / g_z.norm()),
        detail=f"std normalisation changes the direction: cosine with grad J = {cos:.4f}, projection scale "
               f"= {scale:.3f}, norm ratio |E g|/|grad J| = {float(g_z.norm() / truth.norm()):.3f}; must be rejected"))

    samples = sampled_group_gradients(mdp, theta, G, n_groups=10000, advantage_fn=rloo_advantages, seed=0)
    out.append(monte_carlo(NAME, "G=3: mean of the RLOO estimator over sampled groups == grad J",
                           truth.flatten(), samples))
    return out
