r"""DAPO's dynamic sampling: dropping groups whose rewards are all equal changes the sampling distribution.

Statement. With a binary reward :math:`R \in \{0, 1\}` and success probability
:math:`p = P_\theta(R = 1) = J(\theta)`, a group of :math:`G` independent samples has all-equal
rewards with probability :math:`p^G + (1-p)^G`; DAPO (Yu et al. 2025) drops such groups and
samples again, so a group is kept with probability

.. math::

    \kappa = 1 - p^G - (1 - p)^G .

A sample taken from a kept group is not distributed as :math:`P_\theta` (a remark of "RLHF Derivation"):
given its own reward, the group is kept iff the other :math:`G-1` samples are not all equal to
it, so

.. math::

    q(\tau) = P_\theta(\tau)\, \frac{1 - p^{G-1}}{\kappa} \text{ if } R(\tau) = 1, \qquad
    q(\tau) = P_\theta(\tau)\, \frac{1 - (1-p)^{G-1}}{\kappa} \text{ if } R(\tau) = 0,

and the mean reward of kept samples, :math:`\mathbb{E}_q[R] = p(1 - p^{G-1})/\kappa`, is not
:math:`J`. The gradient estimator is less affected than the distribution: with a group
baseline a dropped group has every advantage equal to 0, so the kept-groups estimator is the
unfiltered one divided by :math:`\kappa`, :math:`\mathbb{E}[\hat g \mid \text{kept}] = \mathbb{E}[\hat g] / \kappa`.
With a binary reward, any advantage that depends only on the group's rewards averages to
:math:`h(R_i)` given :math:`\tau_i`, and :math:`\mathbb{E}[h(R)\nabla\log P] = (h(1) - h(0))\nabla J`, so for
one prompt the expected kept-groups GRPO gradient is exactly parallel to :math:`\nabla J`:

.. math::

    \mathbb{E}[\hat g \mid \text{kept}] = \frac{h(1) - h(0)}{\kappa}\, \nabla J, \qquad
    h(R) = \mathbb{E}_{k \sim \mathrm{Bin}(G-1, p)}\big[\hat A(R \mid k \text{ successes among the others})\big].

The scale depends on :math:`p`, so across prompts of different difficulty the mix is reweighted.

Checks (binary-reward toy MDP, all :math:`N^G` groups enumerated):

* exact: the enumerated keep probability equals :math:`1 - p^G - (1-p)^G`;
* exact: the enumerated distribution of kept samples equals the closed form :math:`q` (TV to
  :math:`P_\theta` reported), and :math:`\mathbb{E}_q[R] = p(1 - p^{G-1})/\kappa`;
* negative control: "kept samples are distributed as :math:`P_\theta`" is rejected;
* negative control: "the mean reward of kept samples is :math:`J`" is rejected;
* exact: :math:`\mathbb{E}[\hat g \mid \text{kept}]` computed group by group (each kept group's estimate
  :math:`\frac1G\sum_i \hat A_i \nabla\log P(\tau_i)`, averaged with the group probabilities renormalised
  over kept groups) equals :math:`\mathbb{E}[\hat g]/\kappa`, with :math:`\mathbb{E}[\hat g]` computed per
  sequence (the coefficient of each :math:`\nabla\log P(\tau)` summed over all groups) and :math:`\kappa`
  from its closed form (GRPO z-score advantages); and it equals the closed form
  :math:`\frac{h(1) - h(0)}{\kappa}\nabla J` (cosine 1, scale reported);
* negative controls: forgetting the renormalisation (:math:`\mathbb{E}[\hat g \mid \text{kept}] = \mathbb{E}[\hat g]`)
  is rejected; with uncentred advantages (the raw reward, no group baseline) a dropped group does
  carry a gradient and :math:`\mathbb{E}[\hat g \mid \text{kept}] = \mathbb{E}[\hat g]/\kappa` is rejected;
* Monte Carlo: the kept fraction of sampled groups, and the mean reward in kept groups, are
  within 4 SE of :math:`\kappa` and :math:`\mathbb{E}_q[R]`;
* symbolic: :math:`p(1 - p^{G-1}) + (1-p)(1 - (1-p)^{G-1}) = 1 - p^G - (1-p)^G` (q is normalised).
"""

from __future__ import annotations

import math

import sympy
import torch

from rlcourse.advantages import group_advantages as group_advantages_by_name
from rlcourse.advantages import grpo_advantages
from rlcourse.derivations.base import Check, derivation, exact, monte_carlo, negative_control, symbolic
from rlcourse.derivations.grpo_advantage import all_groups, cosine, group_advantages
from rlcourse.toymdp import ToyMDP

NAME = "dynamic_sampling"


def binary_reward_mdp(vocab_size: int = 3, horizon: int = 3, success_rate: float = 0.4, seed: int = 0) -> ToyMDP:
    """A toy MDP whose return is 0 or 1: a terminal reward of 1 on a random subset of ending transitions."""
    probe = ToyMDP(vocab_size, horizon)
    g = torch.Generator().manual_seed(seed)
    hit = torch.rand(probe.num_states, vocab_size, generator=g, dtype=torch.float64) < success_rate
    terminal = (hit & probe.terminates).to(torch.float64)
    return ToyMDP(vocab_size, horizon, terminal_reward=terminal)


def keep_probability(p: float, group_size: int) -> float:
    r""":math:`\kappa = 1 - p^G - (1-p)^G`: a group of binary rewards is not all equal."""
    return 1.0 - p ** group_size - (1.0 - p) ** group_size


def kept_groups(mdp: ToyMDP, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ordered group (N^G, G) and whether dynamic sampling keeps it (rewards not all equal), (N^G,) bool."""
    groups = all_groups(mdp.num_sequences, group_size)
    R = mdp.returns()[groups]
    return groups, ~(R == R[:, :1]).all(dim=1)


def enumerated_keep_probability(mdp: ToyMDP, theta: torch.Tensor, group_size: int) -> float:
    """P(group kept), summing the probabilities of every kept group."""
    groups, keep = kept_groups(mdp, group_size)
    return float((mdp.probabilities(theta.detach())[groups].prod(1) * keep).sum())


def kept_distribution(mdp: ToyMDP, theta: torch.Tensor, group_size: int) -> torch.Tensor:
    r"""Distribution of a sample taken from a kept group (any slot), by enumeration of groups, (N,)."""
    groups, keep = kept_groups(mdp, group_size)
    w = mdp.probabilities(theta.detach())[groups].prod(1) * keep
    q = torch.zeros(mdp.num_sequences, dtype=w.dtype).index_add_(
        0, groups.reshape(-1), w.repeat_interleave(group_size))
    return q / q.sum()


def kept_distribution_closed_form(mdp: ToyMDP, theta: torch.Tensor, group_size: int) -> torch.Tensor:
    r""":math:`q(\tau) = P(\tau)\,(1 - p^{G-1})/\kappa` if :math:`R(\tau) = 1`, else :math:`P(\tau)(1 - (1-p)^{G-1})/\kappa`, (N,)."""
    P, R = mdp.probabilities(theta.detach()), mdp.returns()
    p = float(mdp.objective(theta.detach()))
    kappa = keep_probability(p, group_size)
    factor = torch.where(R > 0.5, torch.tensor(1 - p ** (group_size - 1), dtype=P.dtype),
                         torch.tensor(1 - (1 - p) ** (group_size - 1), dtype=P.dtype))
    return P * factor / kappa


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    """TV distance 1/2 sum |p - q|."""
    return 0.5 * float((p - q).abs().sum())


def zscore_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """GRPO's z-score advantages, as in DAPO (unbiased std, eps = 1e-6)."""
    return grpo_advantages(rewards, group_size, eps=1e-6, scale=True)


def expected_group_gradient(mdp: ToyMDP, theta: torch.Tensor, group_size: int, kept_only: bool,
                            advantage_fn=zscore_advantages) -> torch.Tensor:
    r""":math:`\mathbb{E}[\hat g]` over all groups, or :math:`\mathbb{E}[\hat g \mid \text{kept}]` (``kept_only``), (S, V)."""
    groups, keep = kept_groups(mdp, group_size)
    w = mdp.probabilities(theta.detach())[groups].prod(1)
    if kept_only:
        w = w * keep / (w * keep).sum()
    adv = group_advantages(mdp.returns()[groups], group_size, advantage_fn)
    coef = torch.zeros(mdp.num_sequences, dtype=w.dtype).index_add_(0, groups.reshape(-1),
                                                                      (w[:, None] * adv).reshape(-1))
    return torch.einsum("n,nsa->sa", coef, mdp.score(theta)) / group_size


def kept_gradient_by_groups(mdp: ToyMDP, theta: torch.Tensor, group_size: int,
                            advantage_fn=zscore_advantages) -> torch.Tensor:
    r""":math:`\mathbb{E}[\hat g \mid \text{kept}]` group by group, (S, V): each kept group's own estimate
    :math:`\frac1G \sum_i \hat A_i \nabla\log P(\tau_i)`, weighted by :math:`P(\text{group}) / P(\text{kept})`.

    A second route to the same quantity as ``expected_group_gradient(..., kept_only=True)`` (which sums
    a coefficient per sequence first): the per-group estimates are formed explicitly."""
    groups, keep = kept_groups(mdp, group_size)
    groups = groups[keep]
    w = mdp.probabilities(theta.detach())[groups].prod(1)
    adv = group_advantages(mdp.returns()[groups], group_size, advantage_fn)        # (K, G)
    score = mdp.score(theta)                                                       # (N, S, V)
    total = torch.zeros_like(score[0])
    for i in range(group_size):                                                    # slot by slot: (K, S, V)
        total += torch.einsum("k,ksa->sa", w * adv[:, i], score[groups[:, i]])
    return total / group_size / w.sum()


def raw_reward_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """No baseline: the advantage is the reward itself (normaliser "none"); dropped groups then carry a gradient."""
    return group_advantages_by_name(rewards, group_size, "none")


def binomial_scale(p: float, group_size: int, advantage_fn=zscore_advantages) -> float:
    r""":math:`h(1) - h(0)` with :math:`h(R) = \mathbb{E}_{k \sim \mathrm{Bin}(G-1,p)}[\hat A_1]` for the group
    :math:`(R, \underbrace{1, \dots, 1}_{k}, 0, \dots, 0)`; an independent closed form (no enumeration)."""
    G = group_size
    h = []
    for r in (0.0, 1.0):
        total = 0.0
        for k in range(G):
            group = torch.tensor([r] + [1.0] * k + [0.0] * (G - 1 - k), dtype=torch.float64)
            total += math.comb(G - 1, k) * p ** k * (1 - p) ** (G - 1 - k) * float(advantage_fn(group, G)[0])
        h.append(total)
    return h[1] - h[0]


def sampled_groups(mdp: ToyMDP, theta: torch.Tensor, group_size: int, n_groups: int, seed: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of ``n_groups`` sampled groups, (n, G), and whether each is kept, (n,) bool."""
    R = mdp.returns()[mdp.sample(theta, n_groups * group_size, seed=seed)].reshape(n_groups, group_size)
    return R, ~(R == R[:, :1]).all(dim=1)


@derivation(NAME, "Dynamic sampling", source="rlhf-derivation")
def checks() -> list[Check]:
    mdp = binary_reward_mdp(seed=0)
    theta = mdp.init_params(seed=1)
    G = 4
    P, R = mdp.probabilities(theta), mdp.returns()
    p = float(mdp.objective(theta))
    kappa = keep_probability(p, G)
    out = [exact(NAME, "P(group kept) == 1 - p^G - (1-p)^G", kappa, enumerated_keep_probability(mdp, theta, G),
                 detail=f"G = {G}, p = P(R=1) = {p:.4f}; all {mdp.num_sequences}^{G} groups enumerated")]

    q = kept_distribution(mdp, theta, G)
    tv = total_variation(q, P)
    out.append(exact(NAME, "distribution of kept samples == closed form q",
                     kept_distribution_closed_form(mdp, theta, G), q, detail=f"TV(q, P_theta) = {tv:.4f}"))
    mean_kept = float((q * R).sum())
    out.append(exact(NAME, "E_q[R] == p (1 - p^(G-1)) / kappa", p * (1 - p ** (G - 1)) / kappa, mean_kept))
    out.append(negative_control(exact(NAME, "kept samples are distributed as P_theta", P, q),
                                detail=f"TV(q, P_theta) = {tv:.4f}; must be rejected"))
    out.append(negative_control(exact(NAME, "mean reward of kept samples == J", p, mean_kept),
                                detail=f"E_q[R] = {mean_kept:.4f} vs J = {p:.4f}; must be rejected"))

    truth = mdp.exact_gradient(theta)
    g_all = expected_group_gradient(mdp, theta, G, kept_only=False)
    g_kept = kept_gradient_by_groups(mdp, theta, G)
    out.append(exact(NAME, "E[g | kept] (group by group) == E[g] (per sequence) / kappa (closed form)",
                     g_all / kappa, g_kept,
                     detail="GRPO z-score advantages: a dropped group has every advantage 0"))
    out.append(negative_control(exact(NAME, "E[g | kept] == E[g] (renormalisation by kappa forgotten)", g_all, g_kept),
                                detail=f"kappa = {kappa:.4f}; must be rejected"))
    raw_all = expected_group_gradient(mdp, theta, G, kept_only=False, advantage_fn=raw_reward_advantages)
    raw_kept = kept_gradient_by_groups(mdp, theta, G, advantage_fn=raw_reward_advantages)
    out.append(negative_control(
        exact(NAME, "raw-reward advantages (no baseline): E[g | kept] == E[g] / kappa", raw_all / kappa, raw_kept),
        detail="a dropped all-ones group carries a gradient when advantages are not centred; must be rejected"))
    c = binomial_scale(p, G) / kappa
    out.append(exact(NAME, "E[g | kept] (group by group) == (h(1) - h(0)) / kappa * grad J", c * truth, g_kept,
                     detail=f"binary reward, one prompt: cosine with grad J = {cosine(g_kept, truth):.12f}, "
                            f"scale = {c:.4f} (unfiltered: {binomial_scale(p, G):.4f})"))

    rewards, keep = sampled_groups(mdp, theta, G, n_groups=10000, seed=0)
    out.append(monte_carlo(NAME, "fraction of sampled groups kept == 1 - p^G - (1-p)^G", kappa, keep.double()))
    out.append(monte_carlo(NAME, "mean reward within kept groups == E_q[R]", mean_kept, rewards[keep].mean(1),
                           detail=f"{int(keep.sum())} kept groups of 10000"))

    ps, qs, Gs = sympy.symbols("p q G", positive=True)
    lhs = sympy.expand(ps * (1 - ps ** (Gs - 1)) + qs * (1 - qs ** (Gs - 1)))   # = p + q - p^G - q^G
    out.append(symbolic(NAME, "p(1 - p^(G-1)) + (1-p)(1 - (1-p)^(G-1)) == 1 - p^G - (1-p)^G (q sums to 1)",
                        lhs.subs(qs, 1 - ps), 1 - ps ** Gs - (1 - ps) ** Gs,
                        detail="for symbolic G: expanded with q, then q = 1 - p"))
    return out
