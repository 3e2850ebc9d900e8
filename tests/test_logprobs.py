"""Tests of rlcourse.logprobs: log-probs and entropy (against TRL), masked reductions, aggregation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlcourse.logprobs import (
    AGGREGATIONS,
    aggregate,
    aggregation_weights,
    entropy_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    token_logprobs,
)

F64 = torch.float64


def right_padded_mask(lengths, T, dtype=F64):
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).to(dtype)


def random_mask(B, T, seed, p=0.6):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, T, generator=g) < p).to(F64)


# --------------------------------------------------------------------------- log-probs and entropy


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
def test_token_logprobs_match_trl_selective_log_softmax(temperature):
    from trl.trainer.utils import selective_log_softmax

    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(3, 5, 11, generator=g)
    tokens = torch.randint(0, 11, (3, 5), generator=g)
    ours = token_logprobs(logits, tokens, temperature=temperature)
    torch.testing.assert_close(ours, selective_log_softmax(logits / temperature, tokens), atol=1e-6, rtol=0)
    torch.testing.assert_close(ours, selective_log_softmax(logits, tokens, temperature=temperature),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
def test_entropy_matches_trl_entropy_from_logits(temperature):
    from trl.trainer.utils import entropy_from_logits as trl_entropy

    # float64: our logsumexp form and TRL's -sum p log p agree to rounding (in float32 they
    # differ in the last bits, ~1e-6, which is the point of choosing one form)
    logits = 3 * torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = entropy_from_logits(logits, temperature=temperature)
    assert ours.shape == (3, 5)
    torch.testing.assert_close(ours, trl_entropy(logits / temperature), atol=1e-12, rtol=0)


def test_entropy_of_a_token_with_underflowing_probability_is_exact():
    # exp(-1e4) underflows to 0: the logsumexp form never forms 0 * log 0
    logits_finite = torch.tensor([[0.0, 0.0, -1e4]], dtype=torch.float64)
    torch.testing.assert_close(entropy_from_logits(logits_finite), torch.log(torch.tensor([2.0], dtype=torch.float64)))


def test_token_logprobs_of_every_token_exponentiate_to_one():
    V = 6
    logits = torch.randn(1, 4, V, dtype=F64, generator=torch.Generator().manual_seed(2))
    every = torch.stack([token_logprobs(logits, torch.full((1, 4), v), temperature=0.8) for v in range(V)])
    torch.testing.assert_close(every.exp().sum(0), torch.ones(1, 4, dtype=F64), atol=1e-12, rtol=0)


def test_entropy_of_uniform_logits_is_log_vocab_and_low_temperature_lowers_it():
    assert float(entropy_from_logits(torch.zeros(7, dtype=F64))) == pytest.approx(math.log(7), abs=1e-12)
    logits = torch.randn(20, 9, dtype=F64, generator=torch.Generator().manual_seed(3))
    hot, cold = entropy_from_logits(logits, 2.0), entropy_from_logits(logits, 0.5)
    assert bool((cold < hot).all())
    assert bool((hot <= math.log(9) + 1e-12).all()) and bool((cold >= 0).all())


# --------------------------------------------------------------------------- masked reductions


def test_masked_sum_and_mean_equal_sum_and_mean_of_selected_entries():
    x = torch.randn(4, 6, dtype=F64, generator=torch.Generator().manual_seed(4))
    m = right_padded_mask([6, 2, 4, 1], 6)
    sel = x[m.bool()]
    assert float(masked_sum(x, m)) == pytest.approx(float(sel.sum()), abs=1e-12)
    assert float(masked_mean(x, m.bool())) == pytest.approx(float(sel.mean()), abs=1e-12)
    per_row = masked_mean(x, m, dim=1)
    expected = torch.stack([x[i, : n].mean() for i, n in enumerate([6, 2, 4, 1])])
    torch.testing.assert_close(per_row, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(masked_sum(x, m, dim=0), (x * m).sum(0))


@pytest.mark.parametrize("unbiased", [True, False])
def test_masked_var_equals_torch_var_of_selected_entries(unbiased):
    x = torch.randn(3, 5, dtype=F64, generator=torch.Generator().manual_seed(5))
    m = random_mask(3, 5, seed=6)
    expected = x[m.bool()].var(unbiased=unbiased)
    assert float(masked_var(x, m, unbiased=unbiased)) == pytest.approx(float(expected), abs=1e-12)


def test_masked_whiten_has_zero_mean_unit_variance_and_zeros_outside_mask():
    x = 5 + 3 * torch.randn(4, 7, dtype=F64, generator=torch.Generator().manual_seed(7))
    m = random_mask(4, 7, seed=8)
    w = masked_whiten(x, m)
    assert abs(float(masked_mean(w, m))) < 1e-12
    assert float(masked_var(w, m)) == pytest.approx(1.0, abs=1e-6)
    assert bool((w[~m.bool()] == 0).all())
    kept = masked_whiten(x, m, shift_mean=False)  # only rescaled: the mean is added back
    torch.testing.assert_close(kept, (w + masked_mean(x, m)) * m)


# --------------------------------------------------------------------------- aggregation


def explicit_aggregate(loss, mask, mode, L_max):
    """Each mode's equation written out as loops over rows."""
    B = loss.shape[0]
    rows = [(loss[i] * mask[i]).sum() for i in range(B)]
    lengths = [max(float(mask[i].sum()), 1.0) for i in range(B)]
    if mode == "token_mean":
        return sum(rows) / mask.sum()
    if mode == "seq_mean_token_mean":
        return sum(r / n for r, n in zip(rows, lengths)) / B
    if mode == "seq_mean_token_sum":
        return sum(rows) / B
    return sum(rows) / (B * L_max)


MASKS = {
    "right_padding": right_padded_mask([5, 1, 3, 5], 6),
    "after_prompt": torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 1, 1]], dtype=F64),
    "with_empty_row": right_padded_mask([4, 0, 2], 5),
}


@pytest.mark.parametrize("layout", sorted(MASKS))
@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_aggregate_equals_explicit_formula(mode, layout):
    mask = MASKS[layout]
    loss = torch.randn(mask.shape, dtype=F64, generator=torch.Generator().manual_seed(9))
    ours = aggregate(loss, mask, mode, constant=8)
    assert float(ours) == pytest.approx(float(explicit_aggregate(loss, mask, mode, 8)), abs=1e-12)


@pytest.mark.parametrize("normalisers", [{}, {"total_tokens": 40, "total_sequences": 11}])
@pytest.mark.parametrize("layout", sorted(MASKS))
@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_aggregation_gradient_equals_aggregation_weights(mode, layout, normalisers):
    mask = MASKS[layout]
    loss = torch.randn(mask.shape, dtype=F64, generator=torch.Generator().manual_seed(10)).requires_grad_()
    aggregate(loss, mask, mode, constant=8, **normalisers).backward()
    weights = aggregation_weights(mask, mode, constant=8, **normalisers)
    torch.testing.assert_close(loss.grad, weights, atol=1e-15, rtol=0)
    assert bool((weights[~mask.bool()] == 0).all())


def test_seq_mean_token_mean_weighs_short_answers_more_and_token_mean_does_not():
    mask = right_padded_mask([1, 4], 4)
    seq = aggregation_weights(mask, "seq_mean_token_mean")
    tok = aggregation_weights(mask, "token_mean")
    assert float(seq[0, 0]) == pytest.approx(1 / 2) and float(seq[1, 0]) == pytest.approx(1 / 8)
    assert bool((tok[mask.bool()] == 1 / 5).all())
    for weights in (seq, tok):  # both are averages: the weights sum to 1
        assert float(weights.sum()) == pytest.approx(1.0, abs=1e-12)


def test_empty_row_gets_zero_weight_but_counts_in_the_batch_size():
    w = aggregation_weights(right_padded_mask([2, 0], 3), "seq_mean_token_mean")
    torch.testing.assert_close(w, torch.tensor([[0.25, 0.25, 0], [0, 0, 0]], dtype=F64))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_aggregate_keeps_the_loss_dtype(dtype):
    loss = torch.ones(2, 3, dtype=dtype)
    assert aggregate(loss, torch.ones(2, 3, dtype=torch.bool), "token_mean").dtype == dtype
    assert aggregation_weights(torch.ones(2, 3, dtype=dtype), "token_mean").dtype == dtype


def _microbatch_setup(seed=11):
    """A batch of 7 rows of uneven lengths (one empty), a tiny linear 'model', per-token PG losses."""
    g = torch.Generator().manual_seed(seed)
    lengths = [3, 7, 1, 0, 5, 2, 6]
    B, T, V, d = len(lengths), 8, 5, 4
    features = torch.randn(B, T, d, dtype=F64, generator=g)
    tokens = torch.randint(0, V, (B, T), generator=g)
    advantages = torch.randn(B, T, dtype=F64, generator=g)
    W = torch.randn(d, V, dtype=F64, generator=g)
    mask = right_padded_mask(lengths, T)
    return lengths, features, tokens, advantages, W, mask


def _per_token_loss(W, features, tokens, advantages):
    return -advantages * token_logprobs(features @ W, tokens, temperature=0.9)


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_microbatch_sum_equals_full_batch_loss_and_gradient(mode):
    lengths, features, tokens, advantages, W, mask = _microbatch_setup()
    L_max = 8
    full_W = W.clone().requires_grad_()
    full = aggregate(_per_token_loss(full_W, features, tokens, advantages), mask, mode, constant=L_max)
    full.backward()

    acc_W = W.clone().requires_grad_()
    totals = dict(total_tokens=int(mask.sum()), total_sequences=mask.shape[0], constant=L_max)
    summed = torch.zeros((), dtype=F64)
    for lo, hi in [(0, 3), (3, 4), (4, 7)]:  # B = 3, 1, 2 rows; T = 7, 1, 6 columns (own padding)
        T_mb = max(max(lengths[lo:hi]), 1)
        rows = slice(lo, hi), slice(0, T_mb)
        mb = aggregate(_per_token_loss(acc_W, features[lo:hi, :T_mb], tokens[rows], advantages[rows]),
                       mask[rows], mode, **totals)
        mb.backward()  # gradient accumulation, as in a trainer
        summed = summed + mb.detach()

    assert float(summed) == pytest.approx(float(full.detach()), abs=1e-12)
    torch.testing.assert_close(acc_W.grad, full_W.grad, atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean"])
def test_microbatch_sum_without_full_batch_normalisers_is_wrong(mode):
    # Negative control: the normalisers are what make the micro-batch sum exact.
    lengths, features, tokens, advantages, W, mask = _microbatch_setup()
    loss = _per_token_loss(W, features, tokens, advantages)
    full = aggregate(loss, mask, mode)
    naive = aggregate(loss[:3], mask[:3], mode) + aggregate(loss[4:], mask[4:], mode)
    assert abs(float(naive) - float(full)) > 1e-3


# --------------------------------------------------------------------------- bad inputs


def _logits():
    return torch.randn(2, 3, 4)


BAD_INPUTS = {
    "logits_not_3d": (lambda: token_logprobs(torch.randn(3, 4), torch.zeros(3, dtype=torch.long)), "logits"),
    "logits_nan": (lambda: token_logprobs(torch.full((2, 3, 4), float("nan")), torch.zeros(2, 3, dtype=torch.long)),
                   "logits"),
    "tokens_wrong_shape": (lambda: token_logprobs(_logits(), torch.zeros(2, 4, dtype=torch.long)), "tokens"),
    "tokens_out_of_vocab": (lambda: token_logprobs(_logits(), torch.full((2, 3), 4)), "tokens"),
    "tokens_float": (lambda: token_logprobs(_logits(), torch.zeros(2, 3)), "tokens"),
    "temperature_zero": (lambda: token_logprobs(_logits(), torch.zeros(2, 3, dtype=torch.long), 0.0),
                         "temperature"),
    "entropy_temperature_negative": (lambda: entropy_from_logits(_logits(), -1.0), "temperature"),
    "entropy_logits_inf": (lambda: entropy_from_logits(torch.tensor([0.0, float("inf")])), "logits"),
    "masked_sum_mask_shape": (lambda: masked_sum(torch.ones(2, 3), torch.ones(3, 2)), "mask"),
    "masked_mean_mask_not_binary": (lambda: masked_mean(torch.ones(2, 3), torch.full((2, 3), 0.5)), "mask"),
    "masked_mean_all_zero": (lambda: masked_mean(torch.ones(2, 3), torch.zeros(2, 3)), "mask"),
    "masked_mean_empty_row": (lambda: masked_mean(torch.ones(2, 3), right_padded_mask([2, 0], 3, torch.float32),
                                                  dim=1), "mask"),
    "masked_var_single_entry": (lambda: masked_var(torch.ones(2, 3), right_padded_mask([1, 0], 3, torch.float32)),
                                "mask"),
    "masked_whiten_eps_negative": (lambda: masked_whiten(torch.randn(2, 3), torch.ones(2, 3), eps=-1.0), "eps"),
    "aggregate_unknown_mode": (lambda: aggregate(torch.ones(2, 3), torch.ones(2, 3), "sum"), "mode"),
    "aggregate_loss_inf": (lambda: aggregate(torch.full((2, 3), float("inf")), torch.ones(2, 3), "token_mean"),
                           "per_token_loss"),
    "aggregate_mask_shape": (lambda: aggregate(torch.ones(2, 3), torch.ones(2, 4), "token_mean"), "mask"),
    "aggregate_all_zero_mask": (lambda: aggregate(torch.ones(2, 3), torch.zeros(2, 3), "seq_mean_token_mean"),
                                "mask"),
    "constant_missing": (lambda: aggregate(torch.ones(2, 3), torch.ones(2, 3), "constant"), "constant"),
    "constant_negative": (lambda: aggregation_weights(torch.ones(2, 3), "constant", constant=-4), "constant"),
    "total_tokens_too_small": (lambda: aggregation_weights(torch.ones(2, 3), "token_mean", total_tokens=5),
                               "total_tokens"),
    "total_sequences_too_small": (lambda: aggregation_weights(torch.ones(2, 3), "seq_mean_token_sum",
                                                              total_sequences=1), "total_sequences"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_value_error_naming_the_argument(case):
    call, argument = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=argument):
        call()


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 4), T=st.integers(1, 6), seed=st.integers(0, 10_000), mode=st.sampled_from(AGGREGATIONS))
def test_aggregation_weights_reproduce_aggregate_on_random_masks(B, T, seed, mode):
    mask = random_mask(B, T, seed)
    mask[0, 0] = 1.0  # at least one counted token
    loss = torch.randn(B, T, dtype=F64, generator=torch.Generator().manual_seed(seed + 1))
    weights = aggregation_weights(mask, mode, constant=T)
    assert float(aggregate(loss, mask, mode, constant=T)) == pytest.approx(float((weights * loss).sum()), abs=1e-12)
