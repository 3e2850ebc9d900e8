"""Policy-gradient, PPO, GRPO-family, value and entropy losses: truth tables, identities, safety."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlcourse.kl import kl_k3
from rlcourse.losses import (
    AdaptiveKLController,
    FixedKLController,
    clipped_surrogate,
    entropy_bonus,
    grpo_loss,
    policy_gradient_loss,
    ppo_clip_loss,
    ppo_clip_loss_per_token,
    ppo_penalty_loss,
    value_loss,
)
from rlcourse.logprobs import aggregate
from rlcourse.ratios import sequence_ratio, token_ratio

D = torch.float64
EPS = 0.2


def _batch(seed=0, B=4, T=6, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g, dtype=D) * 3 - 0.01
    logp_old = (logp + spread * torch.randn(B, T, generator=g, dtype=D)).clamp(max=-1e-3)  # log-probs are <= 0
    mask = torch.ones(B, T, dtype=D)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    adv = torch.randn(B, generator=g, dtype=D)
    return logp, logp_old, mask, adv


# ----------------------------------------------------------------------------- PPO-clip truth table

# (advantage sign, ratio, is the gradient zero?)  The clip range is [0.8, 1.2].
TRUTH_TABLE = [
    (+1.0, 0.5, False),  # A>0, below the range: the unclipped term is the min -> gradient -r A
    (+1.0, 1.1, False),  # A>0, inside
    (+1.0, 1.5, True),   # A>0, above: clipped at 1.2, no incentive to push further -> 0
    (-1.0, 0.5, True),   # A<0, below: clipped at 0.8 -> 0
    (-1.0, 1.1, False),  # A<0, inside
    (-1.0, 1.5, False),  # A<0, above: the unclipped (worse) term is the min -> gradient -r A
]


@pytest.mark.parametrize("sign,ratio,zero_grad", TRUTH_TABLE)
def test_ppo_clip_gradient_truth_table(sign, ratio, zero_grad):
    A = torch.tensor([[2.0 * sign]], dtype=D)
    logp_old = torch.tensor([[-1.0]], dtype=D)
    logp = (logp_old + math.log(ratio)).requires_grad_(True)
    loss = clipped_surrogate(token_ratio(logp, logp_old), A, eps_low=EPS).sum()
    loss.backward()
    expected = 0.0 if zero_grad else -ratio * float(A)
    assert math.isclose(float(logp.grad), expected, abs_tol=1e-12)


def test_ppo_clip_loss_gradient_per_token_is_zero_or_minus_r_a_over_n():
    # all six cases of the truth table at once, through ppo_clip_loss with token_mean aggregation
    A = torch.tensor([[2.0 * s for s, _, _ in TRUTH_TABLE]], dtype=D)
    r = torch.tensor([[r for _, r, _ in TRUTH_TABLE]], dtype=D)
    zero = torch.tensor([[z for _, _, z in TRUTH_TABLE]])
    logp_old = torch.full_like(r, -1.0)
    logp = (logp_old + r.log()).requires_grad_(True)
    loss, stats = ppo_clip_loss(logp, logp_old, A, torch.ones_like(r), eps_low=EPS)
    loss.backward()
    expected = torch.where(zero, torch.zeros_like(r), -r * A) / r.numel()
    assert torch.allclose(logp.grad, expected, atol=1e-12)
    assert math.isclose(stats["clipfrac"], 4 / 6)          # ratios 0.5, 1.5, 0.5, 1.5 lie outside
    assert math.isclose(stats["clipfrac_high"], 1 / 6)     # clip active: A>0 above
    assert math.isclose(stats["clipfrac_low"], 1 / 6)      # clip active: A<0 below


def test_ppo_clip_loss_value_matches_min_formula():
    logp, logp_old, mask, adv = _batch()
    r = (logp - logp_old).exp()
    A = adv[:, None].expand_as(r)
    per_token = -torch.min(r * A, r.clamp(1 - EPS, 1 + EPS) * A)
    loss, _ = ppo_clip_loss(logp, logp_old, adv, mask)
    assert torch.allclose(loss, (per_token * mask).sum() / mask.sum(), rtol=1e-12)


def test_dual_clip_bounds_the_loss_for_negative_advantages():
    r = torch.logspace(-2, 3, 200, dtype=D)[None, :]
    A = -torch.ones_like(r) * 1.5
    c = 3.0
    plain = clipped_surrogate(r, A, eps_low=EPS)
    dual = clipped_surrogate(r, A, eps_low=EPS, dual_clip=c)
    assert plain.max() > c * 1.5  # without the dual clip, the loss grows like r |A|
    assert bool((dual <= c * 1.5 + 1e-12).all())
    assert torch.equal(dual[r <= c], plain[r <= c])  # unchanged below the dual bound
    # for A > 0 the dual clip does nothing
    assert torch.equal(clipped_surrogate(r, -A, dual_clip=c), clipped_surrogate(r, -A))


def test_dual_clip_gradient_is_zero_beyond_the_bound():
    logp_old = torch.tensor([[0.0, 0.0]], dtype=D) - 3
    logp = (logp_old + torch.tensor([[math.log(5.0), math.log(2.0)]], dtype=D)).requires_grad_(True)
    loss = clipped_surrogate(token_ratio(logp, logp_old), torch.tensor([[-1.0, -1.0]], dtype=D), dual_clip=3.0)
    loss.sum().backward()
    assert torch.allclose(logp.grad, torch.tensor([[0.0, 2.0]], dtype=D))  # r=5 > c: 0; r=2 < c: -r A = 2


def test_asymmetric_eps_high_lets_positive_advantages_move_further():
    logp_old = torch.tensor([[-1.0]], dtype=D)
    A = torch.tensor([[1.0]], dtype=D)
    grads = {}
    for eps_high in (0.2, 0.28):
        logp = (logp_old + math.log(1.25)).requires_grad_(True)
        clipped_surrogate(token_ratio(logp, logp_old), A, eps_low=0.2, eps_high=eps_high).sum().backward()
        grads[eps_high] = float(logp.grad)
    assert grads[0.2] == 0.0  # 1.25 > 1.2: clipped
    assert math.isclose(grads[0.28], -1.25)  # 1.25 < 1.28: still pushed up
    # and eps_low still governs the bottom of the range
    r = torch.tensor([[0.75]], dtype=D)
    assert torch.allclose(clipped_surrogate(r, -A, eps_low=0.2, eps_high=0.28), torch.tensor([[0.8]], dtype=D))


def test_loss_is_zero_at_ratio_one_with_zero_mean_advantages_but_gradient_is_not():
    logp_old = -torch.rand(2, 5, dtype=D) - 0.1
    mask = torch.ones(2, 5, dtype=D)
    A = torch.randn(2, 5, dtype=D)
    A = A - A.mean()  # zero-mean over the counted tokens
    logp = logp_old.clone().requires_grad_(True)  # on-policy: every ratio is 1
    loss, _ = ppo_clip_loss(logp, logp_old, A, mask)
    loss.backward()
    assert abs(float(loss.detach())) < 1e-12
    assert torch.allclose(logp.grad, -A / A.numel(), atol=1e-12)
    assert float(logp.grad.abs().max()) > 1e-3


def test_ppo_clip_on_policy_gradient_equals_policy_gradient_loss_gradient():
    logp, _, mask, adv = _batch(seed=5)
    g1 = logp.clone().requires_grad_(True)
    ppo_clip_loss(g1, logp, adv, mask)[0].backward()
    g2 = logp.clone().requires_grad_(True)
    policy_gradient_loss(g2, adv, mask).backward()
    assert torch.allclose(g1.grad, g2.grad, atol=1e-12)


def test_policy_gradient_loss_is_aggregated_minus_a_logp():
    logp, _, mask, adv = _batch()
    A = adv[:, None].expand_as(logp)
    for agg in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum"):
        assert torch.allclose(policy_gradient_loss(logp, adv, mask, agg), aggregate(-A * logp, mask, agg))
    assert torch.allclose(policy_gradient_loss(logp, A, mask, "constant", constant=8),
                          (-A * logp * mask).sum() / (4 * 8))


def test_ppo_clip_sequence_level_uses_gspo_ratio_for_every_token():
    logp, logp_old, mask, adv = _batch(seed=2)
    s = sequence_ratio(logp, logp_old, mask)[:, None].expand_as(logp)
    expected = aggregate(clipped_surrogate(s, adv), mask, "seq_mean_token_mean")
    loss, stats = ppo_clip_loss(logp, logp_old, adv, mask, aggregation="seq_mean_token_mean", ratio_level="sequence")
    assert torch.allclose(loss, expected, rtol=1e-12)
    assert math.isclose(stats["approx_kl"], float((kl_k3(logp_old, logp) * mask).sum() / mask.sum()))


# ----------------------------------------------------------------------------- PPO penalty + KL controllers

def test_ppo_penalty_loss_formula_and_zero_kl_on_policy():
    logp, logp_old, mask, adv = _batch()
    r = (logp - logp_old).exp()
    k = r - 1 - (logp - logp_old)  # k3 of KL(old || new), samples from old
    A = adv[:, None]
    loss, stats = ppo_penalty_loss(logp, logp_old, adv, mask, beta=0.5)
    assert torch.allclose(loss, (-(r * A - 0.5 * k) * mask).sum() / mask.sum(), rtol=1e-12)
    assert stats["kl"] > 0
    _, on_policy = ppo_penalty_loss(logp, logp, adv, mask, beta=0.5)
    assert on_policy["kl"] == 0.0 and on_policy["ratio_mean"] == 1.0


def test_adaptive_kl_controller_raises_beta_above_target_and_lowers_below():
    up = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert up.update(9.0, n_steps=256) > 0.1
    down = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert down.update(3.0, n_steps=256) < 0.1
    on_target = AdaptiveKLController(0.1, target=6.0)
    assert on_target.update(6.0, n_steps=256) == 0.1


def test_adaptive_kl_controller_step_is_bounded_by_twenty_percent_of_n_over_horizon():
    for kl, sign in ((1e6, +1), (0.0, -1)):
        ctl = AdaptiveKLController(0.1, target=6.0, horizon=1000)
        assert math.isclose(ctl.update(kl, n_steps=100), 0.1 * (1 + sign * 0.2 * 100 / 1000))
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    assert math.isclose(ctl.update(7.2, n_steps=100), 0.1 * (1 + 0.2 * 0.1))  # inside the band: proportional
    assert ctl.value == ctl.beta


def test_adaptive_kl_controller_converges_toward_target_in_a_toy_loop():
    ctl = AdaptiveKLController(0.01, target=1.0, horizon=100)
    for _ in range(300):
        kl = 0.1 / ctl.beta  # a policy whose KL falls as the penalty grows
        ctl.update(kl, n_steps=10)
    assert abs(0.1 / ctl.beta - 1.0) < 0.05


def test_fixed_kl_controller_never_moves():
    ctl = FixedKLController(0.3)
    assert ctl.update(100.0, 10) == 0.3 and ctl.update(0.0, 10) == 0.3


# ----------------------------------------------------------------------------- GRPO family

def test_grpo_without_kl_equals_ppo_clip_with_same_aggregation():
    logp, logp_old, mask, adv = _batch(seed=4)
    for level in ("token", "sequence"):
        ours, _ = grpo_loss(logp, logp_old, adv, mask, importance_level=level, eps_high=0.28)
        ppo, _ = ppo_clip_loss(logp, logp_old, adv, mask, eps_high=0.28, aggregation="seq_mean_token_mean",
                               ratio_level=level)
        assert torch.allclose(ours, ppo, rtol=1e-12)


def test_grpo_kl_term_adds_beta_times_aggregated_k3():
    logp, logp_old, mask, adv = _batch(seed=6)
    logp_ref = logp - 0.2
    base, _ = grpo_loss(logp, logp_old, adv, mask)
    with_kl, stats = grpo_loss(logp, logp_old, adv, mask, beta=0.1, logp_ref=logp_ref)
    k3 = kl_k3(logp, logp_ref)
    assert torch.allclose(with_kl - base, 0.1 * aggregate(k3, mask, "seq_mean_token_mean"), rtol=1e-10)
    assert math.isclose(stats["kl"], float((k3 * mask).sum() / mask.sum()))


def test_dr_grpo_constant_normaliser_and_dapo_token_mean():
    logp, logp_old, mask, adv = _batch(seed=8)
    per_token = clipped_surrogate(token_ratio(logp, logp_old), adv)
    dr, _ = grpo_loss(logp, logp_old, adv, mask, aggregation="constant", max_completion_length=10)
    assert torch.allclose(dr, (per_token * mask).sum() / (4 * 10))
    dapo, _ = grpo_loss(logp, logp_old, adv, mask, aggregation="token_mean", eps_high=0.28)
    per_token = clipped_surrogate(token_ratio(logp, logp_old), adv, eps_high=0.28)
    assert torch.allclose(dapo, (per_token * mask).sum() / mask.sum())


def test_grpo_delta_bounds_negative_advantage_loss_like_dual_clip():
    logp, logp_old, mask, adv = _batch(seed=9, spread=1.5)
    a, _ = grpo_loss(logp, logp_old, adv, mask, delta=2.0)
    r = token_ratio(logp, logp_old)
    b = aggregate(clipped_surrogate(r, adv, dual_clip=2.0), mask, "seq_mean_token_mean")
    assert torch.allclose(a, b)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-80, 80), min_size=2, max_size=6), st.sampled_from(["token", "sequence"]),
       st.floats(-3, 3))
def test_opt_in_log_ratio_clamp_keeps_losses_finite_for_log_ratios_up_to_80_and_counts_clamped_tokens(
        deltas, level, a):
    d = torch.tensor([deltas, deltas[::-1]], dtype=torch.float32)
    logp_old = torch.full_like(d, -85.0)
    logp = (logp_old + d).clamp(max=-1e-3).requires_grad_(True)
    logp_ref = torch.full_like(d, -1.0) - d  # KL term with log-ratios up to +-80 as well
    mask = torch.ones_like(d)
    adv = torch.tensor([a, -a])
    c = 20.0
    ppo, _ = ppo_clip_loss(logp, logp_old, adv, mask, ratio_level=level, dual_clip=3.0, log_ratio_clamp=c)
    grpo, stats = grpo_loss(logp, logp_old, adv, mask, importance_level=level, beta=0.04, logp_ref=logp_ref.clamp(max=0),
                            kl_importance_correction=True, log_ratio_clamp=c)
    pen, pen_stats = ppo_penalty_loss(logp, logp_old, adv, mask, beta=0.1, log_ratio_clamp=c)
    (ppo + grpo + pen).backward()
    assert all(math.isfinite(float(x.detach())) for x in (ppo, grpo, pen))
    assert bool(torch.isfinite(logp.grad).all())
    assert all(math.isfinite(v) for v in stats.values())
    lr = (logp - logp_old).detach()
    expected = float((lr.abs() > c).double().mean()) if level == "token" else \
        float((lr.mean(-1).abs() > c).double().mean())
    assert math.isclose(stats["log_ratio_clamped"], expected, rel_tol=1e-6)
    assert math.isclose(pen_stats["log_ratio_clamped"], float((lr.abs() > c).double().mean()), rel_tol=1e-6)


def test_ratio_is_not_clamped_by_default_exp_30_is_1e13():
    logp_old = torch.tensor([[-31.0, -1.0]], dtype=D)
    logp = torch.tensor([[-1.0, -1.0]], dtype=D)
    adv = torch.tensor([-1.0], dtype=D)
    per_token = ppo_clip_loss_per_token(logp, logp_old, adv)
    assert math.isclose(float(per_token[0, 0]), math.exp(30.0), rel_tol=1e-12)  # 1.07e13, not e^20 = 4.85e8
    _, stats = grpo_loss(logp, logp_old, adv, torch.ones_like(logp))
    assert stats["log_ratio_clamped"] == 0.0
    _, stats = grpo_loss(logp, logp_old, adv, torch.ones_like(logp), log_ratio_clamp=20.0)
    assert stats["log_ratio_clamped"] == 0.5


# ----------------------------------------------------------------------------- value loss, entropy

def test_value_loss_unclipped_is_half_squared_error():
    v = torch.tensor([[0.5, -0.5, 2.0]], dtype=D)
    R = torch.tensor([[1.0, 1.0, 1.0]], dtype=D)
    m = torch.ones_like(v)
    assert torch.allclose(value_loss(v, torch.zeros_like(v), R, m), (0.5 * (v - R) ** 2).mean())


def test_value_loss_clip_takes_the_pessimistic_term():
    old = torch.zeros(1, 3, dtype=D)
    R = torch.ones(1, 3, dtype=D)
    m = torch.ones(1, 3, dtype=D)
    # V=0.5 moved past old+0.2 toward R: clipped V=0.2 is worse ((0.8)^2 > (0.5)^2) -> that term, no gradient
    # V=-0.5 moved away from R: unclipped is worse ((1.5)^2 > (1.2)^2) -> gradient V - R
    # V=0.1 inside the clip range: both terms equal
    v = torch.tensor([[0.5, -0.5, 0.1]], dtype=D, requires_grad=True)
    loss = value_loss(v, old, R, m, clip_range=0.2, aggregation="seq_mean_token_sum")
    assert math.isclose(float(loss), 0.5 * (0.64 + 2.25 + 0.81))
    loss.backward()
    assert torch.allclose(v.grad, torch.tensor([[0.0, -1.5, -0.9]], dtype=D))


def test_entropy_bonus_is_minus_coef_times_masked_mean():
    H = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert torch.allclose(entropy_bonus(H, m, 0.01), torch.tensor(-0.01 * 2.0))


# ----------------------------------------------------------------------------- bad inputs

logp, logp_old, mask, adv = _batch()
BAD_INPUTS = [
    ("eps_low", lambda: ppo_clip_loss(logp, logp_old, adv, mask, eps_low=0.0)),
    ("eps_low", lambda: clipped_surrogate(torch.ones(2, 2), torch.ones(2, 2), eps_low=-0.1)),
    ("eps_high", lambda: grpo_loss(logp, logp_old, adv, mask, eps_high=0.0)),
    ("eps_high", lambda: grpo_loss(logp, logp_old, adv, mask, eps_high=-0.2)),
    ("dual_clip", lambda: ppo_clip_loss(logp, logp_old, adv, mask, dual_clip=1.0)),
    ("delta", lambda: grpo_loss(logp, logp_old, adv, mask, delta=1.1)),
    ("beta", lambda: grpo_loss(logp, logp_old, adv, mask, beta=-0.1, logp_ref=logp)),
    ("beta", lambda: ppo_penalty_loss(logp, logp_old, adv, mask, beta=-1.0)),
    ("logp_ref", lambda: grpo_loss(logp, logp_old, adv, mask, beta=0.1)),
    ("logp_ref", lambda: grpo_loss(logp, logp_old, adv, mask, beta=0.1, logp_ref=logp[:, :2])),
    ("aggregation", lambda: grpo_loss(logp, logp_old, adv, mask, aggregation="sum")),
    ("aggregation", lambda: policy_gradient_loss(logp, adv, mask, aggregation="mean")),
    ("importance_level", lambda: grpo_loss(logp, logp_old, adv, mask, importance_level="trajectory")),
    ("ratio_level", lambda: ppo_clip_loss(logp, logp_old, adv, mask, ratio_level="seq")),
    ("kl_estimator", lambda: grpo_loss(logp, logp_old, adv, mask, beta=0.1, logp_ref=logp, kl_estimator="k9")),
    ("max_completion_length", lambda: grpo_loss(logp, logp_old, adv, mask, aggregation="constant")),
    ("mask", lambda: ppo_clip_loss(logp, logp_old, adv, mask * 0.5)),
    ("mask", lambda: grpo_loss(logp, logp_old, adv, torch.zeros_like(mask))),
    ("mask", lambda: policy_gradient_loss(logp, adv, mask[:, :3])),
    ("logp_old", lambda: ppo_clip_loss(logp, logp_old[:, :3], adv, mask)),
    ("logp", lambda: ppo_clip_loss(logp.clone().fill_(float("nan")), logp_old, adv, mask)),
    ("advantages", lambda: ppo_clip_loss(logp, logp_old, adv[:2], mask)),
    ("advantages", lambda: grpo_loss(logp, logp_old, adv.clone().fill_(float("inf")), mask)),
    ("ratio", lambda: clipped_surrogate(-torch.ones(2, 2), torch.ones(2, 2))),
    ("clip_range", lambda: value_loss(logp, logp, logp, mask, clip_range=-0.2)),
    ("returns", lambda: value_loss(logp, logp, logp[:, :2], mask)),
    ("coef", lambda: entropy_bonus(logp, mask, -0.1)),
    ("target", lambda: AdaptiveKLController(0.1, target=0.0)),
    ("init_beta", lambda: AdaptiveKLController(-0.1, target=1.0)),
    ("kl", lambda: AdaptiveKLController(0.1, target=1.0).update(float("nan"), 1)),
    ("n_steps", lambda: AdaptiveKLController(0.1, target=1.0).update(1.0, 0)),
]


@pytest.mark.parametrize("name,call", BAD_INPUTS, ids=[f"{i}-{n}" for i, (n, _) in enumerate(BAD_INPUTS)])
def test_bad_input_raises_value_error_naming_the_argument(name, call):
    with pytest.raises(ValueError, match=name):
        call()
