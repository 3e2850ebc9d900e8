"""Lab 09 — GRPO and its variants: group advantages, loss aggregation, the (G-1)/G scale, length weights."""

from __future__ import annotations

import torch

from rlcourse import advantages as ADV
from rlcourse import logprobs as LP
from rlcourse.exercises.grading import (DTYPE, agrees, bandit_group_gradient, compare, for_cases, gen, masked_cases,
                                       randn, value_close)
from rlcourse.exercises.registry import register

# --------------------------------------------------------------------------- 09.grpo_advantages


def grpo_advantages(rewards, group_size, eps=1e-6):
    """GRPO advantages: z-score within each group (unbiased std, eps outside the root)

    grpo_advantages(rewards (B,), group_size: int, eps=1e-6) -> (B,)
    """
    r = rewards.view(-1, group_size)
    adv = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + eps)
    return adv.reshape(-1)


def _grpo_cases(seed):
    out = []
    for k, (G, n_groups, spread) in enumerate([(2, 1, 1.0), (2, 3, 1.0), (4, 2, 1.0), (3, 2, 1e-4), (8, 2, 2.0)]):
        g = gen(seed, k)
        r = randn(g, G * n_groups, scale=spread)
        if k == 1:
            r[G:2 * G] = 1.0  # a constant group
        if k == 3:
            r = r + 0.5       # rewards of tiny spread: eps matters
        out.append({"rewards": r, "group_size": G, "eps": 1e-6})
    return out


def _invariance_cases(seed):
    out = []
    for k, (G, n_groups) in enumerate([(2, 2), (4, 3)]):
        g = gen(seed, 200 + k)
        out.append((f"G={G}, {n_groups} groups, rewards of spread ~1", (randn(g, G * n_groups), G,
                                                                        randn(g, n_groups), 0.5 + torch.rand(n_groups, generator=g, dtype=DTYPE))))
    return out


def _shift_scale(fn, case):
    r, G, shift, scale = case
    base = fn(r.clone(), G)
    moved = (r.view(-1, G) * scale[:, None] + shift[:, None]).reshape(-1)
    return compare(fn(moved, G), base, 1e-5, 1e-4, "advantages after shifting and scaling each group's rewards")


register(
    grpo_advantages, 2, "medium",
    [agrees("agrees with rlcourse.advantages.grpo_advantages (incl. G=2, a constant group, tiny spread)",
            _grpo_cases, ADV.grpo_advantages, 1e-8, 1e-6),
     for_cases("invariant to a per-group reward shift and positive scale", _invariance_cases, _shift_scale)],
    {"std_with_ddof_0": lambda rewards, group_size, eps=1e-6: (lambda r: ((r - r.mean(1, keepdim=True)) / (
         r.std(1, keepdim=True, unbiased=False) + eps)).reshape(-1))(rewards.view(-1, group_size)),
     "eps_inside_the_sqrt": lambda rewards, group_size, eps=1e-6: (lambda r: ((r - r.mean(1, keepdim=True)) / torch.sqrt(
         r.var(1, keepdim=True) + eps)).reshape(-1))(rewards.view(-1, group_size)),
     "batch_statistics_not_group": lambda rewards, group_size, eps=1e-6:
         (rewards - rewards.mean()) / (rewards.std() + eps)},
)

# --------------------------------------------------------------------------- 09.agg_loss

#: the modes of the exercise, and the name of each in rlcourse.logprobs.aggregate
MODES = {"token_mean": "token_mean", "seq_mean_token_mean": "seq_mean_token_mean",
         "seq_mean_token_sum": "seq_mean_token_sum", "constant": "constant"}


def agg_loss(loss_mat, mask, mode, max_len=None):
    """Loss aggregation: token mean, sequence mean of token means / sums, constant (Dr. GRPO)

    agg_loss(loss_mat (B,T), mask (B,T), mode: str, max_len=None) -> scalar
    """
    m = mask.to(loss_mat.dtype)
    B = loss_mat.shape[0]
    if mode == "token_mean":
        return (loss_mat * m).sum() / m.sum()
    if mode == "seq_mean_token_mean":
        return ((loss_mat * m).sum(-1) / m.sum(-1).clamp(min=1)).sum() / B
    if mode == "seq_mean_token_sum":
        return (loss_mat * m).sum() / B
    if mode == "constant":
        return (loss_mat * m).sum() / (B * max_len)
    raise ValueError(f"mode must be token_mean, seq_mean_token_mean, seq_mean_token_sum or constant, got {mode!r}")


def _agg_cases(seed):
    # row 2 all masked in the two larger batches: it still counts in B
    shapes = [(1, 1, "right"), (2, 3, "right"), (4, 5, "left"), (4, 6, "holes")]
    return [{"loss_mat": randn(g, B, T), "mask": m, "mode": mode, "max_len": T + 2}
            for g, B, T, m in masked_cases(seed, shapes, empty_row=2) for mode in MODES]


def _package_agg(loss_mat, mask, mode, max_len=None):
    return LP.aggregate(loss_mat, mask, MODES[mode], constant=max_len if mode == "constant" else None)


def _variant(mode_fix):
    def wrong(loss_mat, mask, mode, max_len=None):
        return mode_fix(loss_mat, mask.to(loss_mat.dtype), mode, max_len)
    return wrong


register(
    agg_loss, 3, "medium",
    [agrees("agrees with rlcourse.logprobs.aggregate for every mode (incl. 1x1, an all-masked row)",
            _agg_cases, _package_agg, 1e-10, 1e-8)],
    {"all_masked_rows_not_counted": _variant(lambda L, m, mode, ml: agg_loss(L[m.sum(-1) > 0], m[m.sum(-1) > 0], mode, ml)),
     "token_mean_as_mean_of_row_means": _variant(lambda L, m, mode, ml: agg_loss(
         L, m, "seq_mean_token_mean" if mode == "token_mean" else mode, ml)),
     "constant_uses_longest_row": _variant(lambda L, m, mode, ml: agg_loss(
         L, m, mode, int(m.sum(-1).max()) if mode == "constant" else ml))},
)

# --------------------------------------------------------------------------- 09.group_mean_scale (prediction)


def group_mean_scale():
    # subtracting the group mean includes r_i itself: E[gradient] = (G - 1) / G * grad J = 3/4 for G = 4
    """Predict: with G = 4, the group-mean baseline scales the expected gradient by?

    group_mean_scale() -> float
    """
    return 0.75


def _scale_truth():
    """Enumerate every group of G = 4 draws from a 3-armed softmax bandit; return E[estimate] / grad J."""
    G, K = 4, 3
    g = gen(0, 210)
    expected, grad_j = bandit_group_gradient(randn(g, K), randn(g, K), G, ADV.dr_grpo_advantages)
    return float((expected @ grad_j) / (grad_j @ grad_j))


register(
    group_mean_scale, 1, "medium",
    [value_close("equals E[estimate] / grad J by enumeration of every group (3-armed bandit)", _scale_truth, 0.01,
                 "the group mean contains the sample's own reward")],
    {"unbiased": lambda: 1.0, "rloo_factor": lambda: 4 / 3},
    kind="prediction",
)

# --------------------------------------------------------------------------- 09.length_weights (prediction)


def length_weights():
    # weight of one token of the 3-token answer / weight of one token of the 30-token answer
    """Predict: weight of a token of a 3-token answer over one of a 30-token answer, per mode"""
    return {"token_mean": 1.0, "seq_mean_token_mean": 10.0, "seq_mean_token_sum": 1.0, "constant": 1.0}


def _length_truth():
    mask = torch.zeros(2, 30, dtype=DTYPE)
    mask[0, :3] = 1.0
    mask[1, :30] = 1.0
    out = {}
    for mode, name in MODES.items():
        w = LP.aggregation_weights(mask, name, constant=30 if mode == "constant" else None)
        out[mode] = float(w[0, 0] / w[1, 0])
    return out


register(
    length_weights, 2, "easy",
    [value_close("equals rlcourse.logprobs.aggregation_weights", _length_truth, 0.01,
                 "per-sequence means give every sequence the same total weight")],
    {"inverted": lambda: {"token_mean": 1.0, "seq_mean_token_mean": 0.1, "seq_mean_token_sum": 1.0, "constant": 1.0},
     "all_equal": lambda: {"token_mean": 1.0, "seq_mean_token_mean": 1.0, "seq_mean_token_sum": 1.0, "constant": 1.0}},
    kind="prediction",
    signature=f"length_weights() -> {{mode: ratio}} for modes {list(MODES)}",
)
