"""Lab 04 — REINFORCE on a language model: the token-mean loss, RLOO advantages, pass@k."""

from __future__ import annotations

import math

import torch

from rlcourse import advantages as ADV
from rlcourse.exercises.grading import (DTYPE, agrees, bandit_group_gradient, compare, for_cases, gen, masked_cases,
                                       randn)
from rlcourse.exercises.registry import register
from rlcourse.losses import policy_gradient_loss

# --------------------------------------------------------------------------- 04.reinforce_loss


def reinforce_loss(logp, advantages, mask):
    """The REINFORCE loss, token mean over the response mask

    reinforce_loss(logp (B,T), advantages (B,), mask (B,T)) -> scalar
    """
    m = mask.to(logp.dtype)
    return -(advantages.detach()[:, None] * logp * m).sum() / m.sum()


def _pg_cases(seed):
    # row 1 all masked in the two larger batches
    shapes = [(1, 1, "right"), (2, 3, "right"), (4, 5, "left"), (3, 6, "holes")]
    return [{"logp": -randn(g, B, T).abs(), "advantages": randn(g, B), "mask": m}
            for g, B, T, m in masked_cases(seed, shapes, empty_row=1)]


def _grad_cases(seed):
    return [(f"logp {tuple(c['logp'].shape)}, advantages {c['advantages'].tolist()}, mask {c['mask'].tolist()}", c)
            for c in _pg_cases(seed)]


def _grad_truth(fn, case):
    logp = case["logp"].clone().requires_grad_(True)
    adv = case["advantages"].clone().requires_grad_(True)
    fn(logp, adv, case["mask"].clone()).backward()
    m = case["mask"]
    msg = compare(logp.grad, -case["advantages"][:, None] * m / m.sum(), 1e-12, 1e-9, "d loss / d logp")
    if msg:
        return msg
    if adv.grad is not None and bool(adv.grad.abs().max() > 0):
        return f"the advantages received a gradient {adv.grad.tolist()}: they must be constants (detach them)"
    return None


register(
    reinforce_loss, 2, "easy",
    [agrees("agrees with rlcourse.losses.policy_gradient_loss(..., 'token_mean') (incl. an all-masked row)",
            _pg_cases, lambda logp, advantages, mask: policy_gradient_loss(logp, advantages, mask, "token_mean"),
            1e-12, 1e-9),
     for_cases("autograd: d loss/d logp = -A m / N, and no gradient reaches the advantages", _grad_cases,
               _grad_truth)],
    {"advantages_not_detached": lambda logp, advantages, mask:
         -(advantages[:, None] * logp * mask).sum() / mask.sum(),
     "mask_not_applied": lambda logp, advantages, mask: -(advantages.detach()[:, None] * logp).mean(),
     "sign_flipped": lambda logp, advantages, mask: -reinforce_loss(logp, advantages, mask),
     "sum_not_mean": lambda logp, advantages, mask: -(advantages.detach()[:, None] * logp * mask).sum()},
)

# --------------------------------------------------------------------------- 04.rloo_advantages


def rloo_advantages(rewards, group_size):
    """RLOO: each reward minus the mean of the others in its group

    rloo_advantages(rewards (B,), group_size: int) -> (B,)
    """
    r = rewards.view(-1, group_size)
    others = (r.sum(1, keepdim=True) - r) / (group_size - 1)
    return (r - others).reshape(-1)


def _group_cases(seed):
    out = []
    for k, (G, n_groups) in enumerate([(2, 1), (2, 3), (3, 2), (4, 2), (8, 1)]):
        r = randn(gen(seed, k), G * n_groups)
        if n_groups > 1:
            r[:G] = 0.5  # a constant group
        out.append({"rewards": r, "group_size": G})
    return out


def _bandit_cases(seed):
    return [(f"groups of G={G} i.i.d. draws from a {K}-armed softmax bandit", (G, K, gen(seed, 50 + G)))
            for G, K in ((2, 2), (3, 3), (4, 3))]


def _unbiased_group(fn, case):
    """Enumerate every G-tuple of arms: E[(1/G) sum_i A_i grad log pi(a_i)] must equal grad J."""
    G, K, g = case
    expected, grad_j = bandit_group_gradient(randn(g, K), randn(g, K), G, fn)
    return compare(expected, grad_j, 1e-10, 1e-8, "E[gradient estimate] (enumeration of every group)")


register(
    rloo_advantages, 2, "medium",
    [agrees("agrees with rlcourse.advantages.rloo_advantages (incl. G=2, a constant group, G=8)", _group_cases,
            ADV.rloo_advantages, 1e-10, 1e-8),
     for_cases("unbiased: E[(1/G) sum_i A_i grad log pi(a_i)] = grad J (enumeration)", _bandit_cases,
               _unbiased_group)],
    {"group_mean_baseline": lambda rewards, group_size: ADV.dr_grpo_advantages(rewards, group_size),
     "divides_by_G_not_G_minus_1": lambda rewards, group_size:
         (rewards.view(-1, group_size) - (rewards.view(-1, group_size).sum(1, keepdim=True)
                                          - rewards.view(-1, group_size)) / group_size).reshape(-1)},
)

# --------------------------------------------------------------------------- 04.pass_at_k


def pass_at_k(n, c, k):
    """The unbiased pass@k estimator from n samples with c correct (Chen et al. 2021)

    pass_at_k(n: int, c: int, k: int) -> float
    """
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _passk_cases(seed):
    g = gen(seed, 60)
    ps = [0.0, 1.0] + [float(x) for x in torch.rand(2, generator=g, dtype=DTYPE)]
    return [(f"n={n}, k={k}, p={p:.3g}", (n, k, p)) for n, k in ((1, 1), (2, 1), (4, 2), (6, 3), (10, 4))
            for p in ps]


def _passk_unbiased(fn, case):
    n, k, p = case
    e = sum(math.comb(n, c) * p ** c * (1 - p) ** (n - c) * float(fn(n, c, k)) for c in range(n + 1))
    truth = 1 - (1 - p) ** k
    if abs(e - truth) > 1e-10:
        return f"E[estimate] = {e:.6g} over c ~ Binomial(n, p), but pass@k = 1 - (1 - p)^k = {truth:.6g}"
    return None


register(
    pass_at_k, 2, "medium",
    [for_cases("unbiased: E over c ~ Binomial(n, p) equals 1 - (1 - p)^k exactly", _passk_cases, _passk_unbiased)],
    {"plug_in_estimate": lambda n, c, k: 1.0 - (1.0 - c / n) ** k,
     "all_k_correct_not_at_least_one": lambda n, c, k: math.comb(c, k) / math.comb(n, k)},
)
