"""Importance ratios (token, sequence, trajectory) and KL divergences (exact, k1/k2/k3)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlcourse.kl import KL_ESTIMATORS, kl_categorical, kl_estimate, kl_k1, kl_k2, kl_k3
from rlcourse.ratios import LOG_RATIO_CLAMP, log_ratio, sequence_ratio, token_ratio, trajectory_ratio

D = torch.float64


def _batch(seed=0, B=4, T=6):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g, dtype=D) * 3 - 0.01
    logp_old = (logp + 0.4 * torch.randn(B, T, generator=g, dtype=D)).clamp(max=-1e-3)  # log-probs are <= 0
    mask = torch.ones(B, T, dtype=D)
    mask[1, 4:] = 0
    mask[2, :2] = 0  # a prompt part before the response
    mask[3, 1:] = 0
    return logp, logp_old, mask


# ----------------------------------------------------------------------------- ratios

def test_log_ratio_and_token_ratio_are_difference_and_its_exp():
    logp, logp_old, _ = _batch()
    assert torch.equal(log_ratio(logp, logp_old), logp - logp_old)
    assert torch.allclose(token_ratio(logp, logp_old), logp.exp() / logp_old.exp(), rtol=1e-12)


def test_trajectory_ratio_is_product_of_masked_token_ratios():
    logp, logp_old, mask = _batch()
    r = token_ratio(logp, logp_old)
    product = torch.where(mask.bool(), r, torch.ones_like(r)).prod(-1)
    assert torch.allclose(trajectory_ratio(logp, logp_old, mask), product, rtol=1e-12)


def test_trajectory_ratio_is_ratio_of_sequence_probabilities():
    logp, logp_old, mask = _batch(seed=1)
    p_new = (logp * mask).sum(-1).exp()
    p_old = (logp_old * mask).sum(-1).exp()
    assert torch.allclose(trajectory_ratio(logp, logp_old, mask), p_new / p_old, rtol=1e-12)


def test_sequence_ratio_is_geometric_mean_of_masked_token_ratios():
    logp, logp_old, mask = _batch(seed=2)
    r = token_ratio(logp, logp_old)
    lengths = mask.sum(-1)
    product = torch.where(mask.bool(), r, torch.ones_like(r)).prod(-1)
    assert torch.allclose(sequence_ratio(logp, logp_old, mask), product ** (1 / lengths), rtol=1e-12)


def test_sequence_ratio_of_one_token_response_is_its_token_ratio():
    logp, logp_old, mask = _batch()
    assert torch.allclose(sequence_ratio(logp, logp_old, mask)[3], token_ratio(logp, logp_old)[3, 0])


def test_sequence_ratio_gradient_flows_through_the_mean_log_ratio():
    logp, logp_old, mask = _batch(seed=3)
    logp = logp.clone().requires_grad_(True)
    s = sequence_ratio(logp, logp_old, mask)
    s.sum().backward()
    expected = (s.detach() / mask.sum(-1)).unsqueeze(-1) * mask  # d s_i / d logp_it = s_i m_it / |y_i|
    assert torch.allclose(logp.grad, expected, rtol=1e-12)


def test_ratios_are_one_on_policy():
    logp, _, mask = _batch()
    for r in (token_ratio(logp, logp), sequence_ratio(logp, logp, mask), trajectory_ratio(logp, logp, mask)):
        assert torch.equal(r, torch.ones_like(r))


def test_opt_in_log_ratio_clamp_caps_ratio_at_exp_20_with_zero_gradient():
    logp = torch.tensor([[-0.1, -0.1, -80.1, -1.0]], requires_grad=True)
    logp_old = torch.tensor([[-80.1, -0.1, -0.1, -1.5]])
    r = token_ratio(logp, logp_old, clamp=LOG_RATIO_CLAMP)
    assert torch.allclose(r[0, :3], torch.tensor([math.exp(LOG_RATIO_CLAMP), 1.0, math.exp(-LOG_RATIO_CLAMP)]))
    r.sum().backward()
    assert logp.grad[0, 0] == 0 and logp.grad[0, 2] == 0  # clamped entries: zero gradient
    assert torch.allclose(logp.grad[0, 3], r[0, 3].detach())  # ordinary entry: d exp(x)/dx = exp(x)


def test_default_is_no_clamp_exp_30_stays_1e13():
    logp, logp_old = torch.tensor([[-1.0]], dtype=D), torch.tensor([[-31.0]], dtype=D)
    assert math.isclose(float(token_ratio(logp, logp_old)), math.exp(30.0), rel_tol=1e-12)


def test_clamp_none_gives_the_exact_ratio_in_float64():
    logp = torch.tensor([[-0.1]], dtype=D)
    logp_old = torch.tensor([[-80.1]], dtype=D)
    assert torch.allclose(token_ratio(logp, logp_old, clamp=None), torch.tensor([[math.exp(80.0)]], dtype=D))
    mask = torch.ones(1, 1, dtype=D)
    assert torch.allclose(trajectory_ratio(logp, logp_old, mask, clamp=None), torch.tensor([math.exp(80.0)], dtype=D))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-80, 80), min_size=1, max_size=8))
def test_opt_in_clamp_keeps_ratios_finite_with_finite_gradient_for_log_ratios_up_to_80(deltas):
    d = torch.tensor([deltas], dtype=torch.float32)
    logp_old = torch.full_like(d, -90.0)
    logp = (logp_old + d).clamp(max=0.0).requires_grad_(True)
    mask = torch.ones_like(d)
    c = LOG_RATIO_CLAMP
    total = token_ratio(logp, logp_old, clamp=c).sum() + sequence_ratio(logp, logp_old, mask, clamp=c).sum() \
        + trajectory_ratio(logp, logp_old, mask, clamp=c).sum()
    total.backward()
    assert torch.isfinite(total) and bool(torch.isfinite(logp.grad).all())


# ----------------------------------------------------------------------------- sample KL estimators

def test_k1_k2_k3_exact_formulas():
    logp = torch.tensor([[-1.0, -2.0, -0.5]], dtype=D)
    logp_ref = torch.tensor([[-1.5, -1.0, -0.5]], dtype=D)
    log_r = logp_ref - logp  # [-0.5, 1.0, 0.0]
    assert torch.allclose(kl_k1(logp, logp_ref), -log_r)
    assert torch.allclose(kl_k2(logp, logp_ref), 0.5 * log_r ** 2)
    assert torch.allclose(kl_k3(logp, logp_ref), log_r.exp() - 1 - log_r)
    expected_k3 = torch.tensor([[math.exp(-0.5) - 0.5, math.e - 2.0, 0.0]], dtype=D)
    assert torch.allclose(kl_k3(logp, logp_ref), expected_k3)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-80, 0), st.floats(-80, 0)), min_size=1, max_size=10))
def test_k3_is_nonnegative_and_finite_with_finite_gradient(pairs):
    logp = torch.tensor([[a for a, _ in pairs]], dtype=torch.float32, requires_grad=True)
    logp_ref = torch.tensor([[b for _, b in pairs]], dtype=torch.float32)
    k3 = kl_k3(logp, logp_ref)
    assert bool((k3 >= 0).all()) and bool(torch.isfinite(k3).all())
    k3.sum().backward()
    assert bool(torch.isfinite(logp.grad).all())


def test_k1_can_be_negative_but_k2_and_k3_cannot():
    logp = torch.tensor([[-2.0]])
    logp_ref = torch.tensor([[-1.0]])  # the sampled token is more likely under ref
    assert kl_k1(logp, logp_ref) < 0
    assert kl_k2(logp, logp_ref) > 0 and kl_k3(logp, logp_ref) > 0


def test_k1_and_k3_unbiased_k2_biased_by_exact_expectation():
    g = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(5, 7, generator=g, dtype=D), -1)
    logq = torch.log_softmax(2 * torch.randn(5, 7, generator=g, dtype=D), -1)
    exact = kl_categorical(logp, logq)
    expect = {name: (logp.exp() * f(logp, logq)).sum(-1) for name, f in KL_ESTIMATORS.items()}
    assert torch.allclose(expect["k1"], exact, atol=1e-12)
    assert torch.allclose(expect["k3"], exact, atol=1e-12)
    assert (expect["k2"] - exact).abs().max() > 1e-3  # negative control: k2 is biased


def test_kl_estimate_dispatches_by_name():
    logp, logp_ref, _ = _batch()
    for name, f in KL_ESTIMATORS.items():
        assert torch.equal(kl_estimate(logp, logp_ref, name), f(logp, logp_ref))
    assert torch.equal(kl_estimate(logp, logp_ref), kl_k3(logp, logp_ref))


# ----------------------------------------------------------------------------- exact KL

def test_kl_categorical_matches_hand_computation():
    p = torch.tensor([0.5, 0.5], dtype=D)
    q = torch.tensor([0.25, 0.75], dtype=D)
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert math.isclose(float(kl_categorical(p.log(), q.log())), expected, rel_tol=1e-12)
    assert math.isclose(float(kl_categorical(q.log(), p.log())),
                        0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5), rel_tol=1e-12)


def test_kl_categorical_is_zero_for_identical_and_positive_otherwise():
    logp = torch.log_softmax(torch.randn(3, 4, 5, dtype=D), -1)
    assert torch.equal(kl_categorical(logp, logp), torch.zeros(3, 4, dtype=D))
    other = torch.log_softmax(torch.randn(3, 4, 5, dtype=D), -1)
    assert bool((kl_categorical(logp, other) > 0).all())


# ----------------------------------------------------------------------------- bad inputs

_LOGP, _LOGP_OLD, _MASK = _batch()
BAD_INPUTS = [
    ("logp_old", lambda: token_ratio(_LOGP, _LOGP_OLD[:, :3])),
    ("logp", lambda: log_ratio(_LOGP.clone().fill_(float("nan")), _LOGP_OLD)),
    ("mask", lambda: sequence_ratio(_LOGP, _LOGP_OLD, _MASK * 2)),
    ("mask", lambda: sequence_ratio(_LOGP, _LOGP_OLD, torch.zeros_like(_MASK))),
    ("mask", lambda: trajectory_ratio(_LOGP, _LOGP_OLD, _MASK[:, :2])),
    ("logp_ref", lambda: kl_k3(_LOGP, _LOGP_OLD.clone().fill_(float("inf")))),
    ("logp_ref", lambda: kl_k1(_LOGP, _LOGP_OLD[:2])),
    ("estimator", lambda: kl_estimate(_LOGP, _LOGP_OLD, estimator="k4")),
    ("logq", lambda: kl_categorical(torch.log_softmax(torch.zeros(4), -1), torch.tensor([-1.0, -2.0, -0.5, -3.0]))),
    ("logq", lambda: kl_categorical(torch.log_softmax(torch.zeros(4), -1), torch.log_softmax(torch.zeros(3), -1))),
    ("logp", lambda: kl_categorical(torch.zeros(3), torch.log_softmax(torch.zeros(3), -1))),
    ("clamp", lambda: token_ratio(_LOGP, _LOGP_OLD, clamp=-1.0)),
]


@pytest.mark.parametrize("name,call", BAD_INPUTS, ids=[f"{i}-{n}" for i, (n, _) in enumerate(BAD_INPUTS)])
def test_bad_input_raises_value_error_naming_the_argument(name, call):
    with pytest.raises(ValueError, match=name):
        call()
