r"""Loss aggregation: each mode's per-token weights, GRPO's length bias, and micro-batch invariance.

Statement. Every aggregation of a per-token loss :math:`\ell_{i,t}` under a mask :math:`m` is a
weighted sum :math:`\sum_{i,t} w_{i,t}\ell_{i,t}` with, for row lengths :math:`L_i`, :math:`N = \sum_i L_i`
tokens, :math:`B` rows and a constant :math:`C`:

.. math::

    w^{\text{token-mean}} = \frac{1}{N},\quad
    w^{\text{seq-mean-token-mean}}_{i} = \frac{1}{B L_i},\quad
    w^{\text{seq-mean-token-sum}} = \frac1B,\quad
    w^{\text{seq-mean-token-sum-norm}} = \frac{1}{BC},\quad
    w^{\text{token-sum-norm}} = \frac1C.

Length bias (Liu et al. 2025, "Understanding R1-Zero-Like Training"): under GRPO's
``seq-mean-token-mean`` a token of a sequence of length :math:`L_s` weighs :math:`L_l / L_s` times a
token of a sequence of length :math:`L_l`, so a long wrong answer is penalised less per token than
a short one; DAPO's ``token-mean`` and Dr. GRPO's ``seq-mean-token-sum-norm`` weigh every token
alike. Gradient accumulation: with the full batch's :math:`N` and :math:`B` passed to each
micro-batch, the sum of the micro-batch aggregates equals the full-batch aggregate, for every
mode and micro-batches of uneven lengths; with each micro-batch's own normalisers it does not.
"""

from __future__ import annotations

import torch

from rlcourse.derivations.base import Check, derivation, exact, negative_control
from rlcourse.logprobs import AGG_MODES, agg_loss, aggregation_weights

NAME = "loss_aggregation"
LENGTHS = (2, 6, 3, 1)
T = 6
C = 8.0


def example_mask(lengths=LENGTHS, width: int = T) -> torch.Tensor:
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).to(torch.float64)


def reference_weights(lengths, mode: str, width: int = T, constant: float = C) -> torch.Tensor:
    """The weights of each mode written from the lengths alone, independently of ``aggregation_weights``."""
    B, N = len(lengths), sum(lengths)
    rows = []
    for L in lengths:
        per = {"token-mean": 1 / N, "seq-mean-token-mean": 1 / (B * L), "seq-mean-token-sum": 1 / B,
               "seq-mean-token-sum-norm": 1 / (B * constant), "token-sum-norm": 1 / constant}[mode]
        rows.append([per if t < L else 0.0 for t in range(width)])
    return torch.tensor(rows, dtype=torch.float64)


def accumulated(loss, mask, mode, splits, *, full_normalisers: bool = True) -> torch.Tensor:
    """Sum of the micro-batch aggregates over row splits (uneven lengths)."""
    total, start = torch.zeros((), dtype=loss.dtype), 0
    kw = {"constant": C} if mode.endswith("norm") else {}
    for size in splits:
        sl = slice(start, start + size)
        extra = {}
        if full_normalisers:
            extra = {"total_tokens": float(mask.sum()), "total_sequences": mask.shape[0]}
        total = total + agg_loss(loss[sl], mask[sl], mode, **kw, **extra)
        start += size
    return total


@derivation(NAME, "Loss aggregation: weights, length bias, gradient accumulation", source="rlhf-derivation")
def checks() -> list[Check]:
    mask = example_mask()
    loss = torch.randn(mask.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = []
    for mode in AGG_MODES:
        w = aggregation_weights(mask, mode, constant=C)
        out.append(exact(NAME, f"{mode}: weights == formula", reference_weights(LENGTHS, mode), w,
                         detail=f"lengths {LENGTHS}, B={len(LENGTHS)}, C={C}"))
        kw = {"constant": C} if mode.endswith("norm") else {}
        out.append(exact(NAME, f"{mode}: agg_loss == sum w * loss", (w * loss).sum(), agg_loss(loss, mask, mode, **kw)))
        out.append(exact(NAME, f"{mode}: sum of 3 uneven micro-batches == full batch",
                         agg_loss(loss, mask, mode, **kw), accumulated(loss, mask, mode, (1, 2, 1))))

    # length bias: per-token weight of the length-2 row / that of the length-6 row
    for mode, ratio in (("seq-mean-token-mean", 6 / 2), ("token-mean", 1.0), ("seq-mean-token-sum-norm", 1.0)):
        w = aggregation_weights(mask, mode, constant=C)
        out.append(exact(NAME, f"length bias {mode}: w(|y|=2) / w(|y|=6) == {ratio:g}", ratio,
                         float(w[0, 0] / w[1, 0])))
    w = aggregation_weights(mask, "seq-mean-token-mean")
    out.append(negative_control(exact(NAME, "GRPO (seq-mean-token-mean) weighs every token alike", 1.0,
                                      float(w[0, 0] / w[1, 0])),
                                detail="a token of a short answer weighs 3x one of a long answer; must be rejected"))
    out.append(negative_control(exact(NAME, "token-mean micro-batches with their own token counts == full batch",
                                      agg_loss(loss, mask, "token-mean"),
                                      accumulated(loss, mask, "token-mean", (1, 2, 1), full_normalisers=False)),
                                detail="each micro-batch divides by its own N; must be rejected"))
    return out
