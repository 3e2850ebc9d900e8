"""agg_loss: every mode's gradient is invariant to gradient accumulation over uneven micro-batches."""

from __future__ import annotations

import pytest
import torch

from rlcourse.logprobs import AGG_MODES, AGGREGATIONS, agg_loss, aggregate, aggregation_weights
from rlcourse.losses import grpo_loss

D = torch.float64


def _batch(seed=0, B=7, T=9):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([1, 9, 4, 2, 7, 3, 9])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(D)
    logp = -torch.rand(B, T, generator=g, dtype=D) - 0.05
    logp_old = (logp + 0.2 * torch.randn(B, T, generator=g, dtype=D)).clamp(max=-1e-3)
    adv = torch.randn(B, generator=g, dtype=D)
    return logp, logp_old, adv, mask


@pytest.mark.parametrize("mode", AGG_MODES)
def test_gradient_accumulation_over_uneven_micro_batches_equals_the_full_batch(mode):
    logp, logp_old, adv, mask = _batch()
    kw = {"constant": 9} if mode.endswith("norm") else {}
    full_leaf = logp.clone().requires_grad_(True)
    full, _ = grpo_loss(full_leaf, logp_old, adv, mask, aggregation=mode, **kw)
    full.backward()
    acc_leaf = logp.clone().requires_grad_(True)
    total = 0.0
    for rows in (slice(0, 1), slice(1, 4), slice(4, 7)):  # 1, 3 and 3 rows of lengths 1 | 9,4,2 | 7,3,9
        part, _ = grpo_loss(acc_leaf[rows], logp_old[rows], adv[rows], mask[rows], aggregation=mode, **kw,
                            total_tokens=float(mask.sum()), total_sequences=mask.shape[0])
        part.backward()
        total += float(part)
    assert abs(total - float(full)) < 1e-12
    assert torch.allclose(acc_leaf.grad, full_leaf.grad, atol=1e-12, rtol=0)


def test_token_mean_micro_batches_with_their_own_token_counts_differ_from_the_full_batch():
    logp, logp_old, adv, mask = _batch()
    full, _ = grpo_loss(logp, logp_old, adv, mask, aggregation="token-mean")
    parts = sum(float(grpo_loss(logp[r], logp_old[r], adv[r], mask[r], aggregation="token-mean")[0]) / 3
                for r in (slice(0, 1), slice(1, 4), slice(4, 7)))
    assert abs(parts - float(full)) > 1e-3


@pytest.mark.parametrize("old,new", [("token_mean", "token-mean"), ("seq_mean_token_mean", "seq-mean-token-mean"),
                                     ("seq_mean_token_sum", "seq-mean-token-sum"),
                                     ("constant", "seq-mean-token-sum-norm")])
def test_older_mode_names_give_the_same_result_as_verl_names(old, new):
    assert old in AGGREGATIONS
    logp, _, _, mask = _batch()
    assert torch.equal(aggregate(logp, mask, old, constant=9), agg_loss(logp, mask, new, constant=9))
    assert torch.equal(aggregation_weights(mask, old, constant=9), aggregation_weights(mask, new, constant=9))


def test_token_sum_norm_is_the_sum_over_an_explicit_constant_and_seq_norm_divides_by_b_too():
    logp, _, _, mask = _batch()
    s = (logp * mask).sum()
    assert torch.allclose(agg_loss(logp, mask, "token-sum-norm", constant=5.0), s / 5.0)
    assert torch.allclose(agg_loss(logp, mask, "seq-mean-token-sum-norm", constant=5.0), s / (7 * 5.0))
