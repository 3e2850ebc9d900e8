"""Tests of rlcourse.advantages: returns, TD residuals, GAE identities, group baselines, whitening."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlcourse.advantages import (
    dr_grpo_advantages,
    gae,
    gae_closed_form,
    grpo_advantages,
    reinforce_pp_advantages,
    reward_to_go,
    rloo_advantages,
    td_residuals,
    trajectory_return,
    whiten,
)
from rlcourse.logprobs import masked_mean, masked_var, masked_whiten

F64 = torch.float64
FAST = settings(max_examples=60, deadline=None)
unit = st.floats(0.0, 1.0)


@st.composite
def episodes(draw, max_rows=4, max_len=7):
    """(rewards, values, mask) in float64; masks with right padding, a prompt on the left, or holes."""
    B, T = draw(st.integers(1, max_rows)), draw(st.integers(1, max_len))
    layout = draw(st.sampled_from(["right_padding", "after_prompt", "holes"]))
    rows = []
    for _ in range(B):
        if layout == "holes":
            rows.append(draw(st.lists(st.booleans(), min_size=T, max_size=T)))
        else:
            start = draw(st.integers(0, T - 1)) if layout == "after_prompt" else 0
            end = draw(st.integers(start, T))
            rows.append([start <= j < end for j in range(T)])
    numbers = st.lists(st.floats(-5, 5), min_size=B * T, max_size=B * T)
    rewards = torch.tensor(draw(numbers), dtype=F64).view(B, T)
    values = torch.tensor(draw(numbers), dtype=F64).view(B, T)
    return rewards, values, torch.tensor(rows, dtype=F64)


def plain_python(rewards, values, mask, gamma):
    """Reference in pure Python: per row, the counted steps, their reward-to-go and TD residuals."""
    G = torch.zeros_like(rewards)
    delta = torch.zeros_like(rewards)
    R = torch.zeros(rewards.shape[0], dtype=rewards.dtype)
    for i in range(rewards.shape[0]):
        idx = [j for j in range(rewards.shape[1]) if mask[i, j]]
        r = [float(rewards[i, j]) for j in idx]
        v = [float(values[i, j]) for j in idx] + [0.0]  # terminal value 0
        n = len(idx)
        for k, j in enumerate(idx):
            G[i, j] = sum(gamma ** (l - k) * r[l] for l in range(k, n))
            delta[i, j] = r[k] + gamma * v[k + 1] - v[k]
        R[i] = sum(gamma ** k * r[k] for k in range(n))
    return G, delta, R


def close(a, b, tol=1e-9):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


# --------------------------------------------------------------------------- returns and TD residuals


@FAST
@given(ep=episodes(), gamma=unit)
def test_reward_to_go_td_residuals_and_return_match_plain_python(ep, gamma):
    rewards, values, mask = ep
    G, delta, R = plain_python(rewards, values, mask, gamma)
    close(reward_to_go(rewards, mask, gamma), G)
    close(td_residuals(rewards, values, mask, gamma), delta)
    close(trajectory_return(rewards, mask, gamma), R)


@FAST
@given(ep=episodes(), gamma=unit)
def test_trajectory_return_is_reward_to_go_at_first_counted_token(ep, gamma):
    rewards, _, mask = ep
    G = reward_to_go(rewards, mask, gamma)
    first = mask.argmax(dim=1)  # first counted position (0 for an empty row, where G is 0)
    close(trajectory_return(rewards, mask, gamma), G.gather(1, first[:, None]).squeeze(1))


# --------------------------------------------------------------------------- GAE identities


@FAST
@given(ep=episodes(), gamma=unit)
def test_gae_lambda_zero_is_td_residual(ep, gamma):
    rewards, values, mask = ep
    _, delta, _ = plain_python(rewards, values, mask, gamma)
    advantages, _ = gae(rewards, values, mask, gamma, lam=0.0)
    close(advantages, delta)


@FAST
@given(ep=episodes(), gamma=unit)
def test_gae_lambda_one_is_reward_to_go_minus_value(ep, gamma):
    rewards, values, mask = ep
    advantages, returns = gae(rewards, values, mask, gamma, lam=1.0)
    close(advantages, (reward_to_go(rewards, mask, gamma) - values) * mask)
    close(returns, reward_to_go(rewards, mask, gamma))  # lam = 1: the critic's target is G


@FAST
@given(ep=episodes(), lam=unit)
def test_gae_gamma_zero_is_reward_minus_value(ep, lam):
    rewards, values, mask = ep
    advantages, _ = gae(rewards, values, mask, gamma=0.0, lam=lam)
    close(advantages, (rewards - values) * mask)


@FAST
@given(ep=episodes())
def test_gae_gamma_one_lambda_one_is_undiscounted_sum_of_future_rewards_minus_value(ep):
    rewards, values, mask = ep
    future = (rewards * mask).flip(1).cumsum(1).flip(1)  # sum of counted rewards from t on
    advantages, _ = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    close(advantages, (future - values) * mask)


@FAST
@given(ep=episodes(), gamma=unit, lam=unit)
def test_gae_recursion_equals_closed_form(ep, gamma, lam):
    rewards, values, mask = ep
    a_rec, ret_rec = gae(rewards, values, mask, gamma, lam)
    a_cf, ret_cf = gae_closed_form(rewards, values, mask, gamma, lam)
    close(a_rec, a_cf)
    close(ret_rec, ret_cf)


@FAST
@given(ep=episodes(), gamma=unit, lam=unit)
def test_gae_returns_are_advantages_plus_values_and_zero_outside_mask(ep, gamma, lam):
    rewards, values, mask = ep
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    close(returns, (advantages + values) * mask)
    outside = ~mask.bool()
    assert bool((advantages[outside] == 0).all()) and bool((returns[outside] == 0).all())


@FAST
@given(ep=episodes(), gamma=unit, lam=unit)
def test_gae_ignores_rewards_and_values_outside_the_mask(ep, gamma, lam):
    rewards, values, mask = ep
    outside = 1 - mask
    noisy = gae(rewards + 100 * outside, values - 50 * outside, mask, gamma, lam)
    for clean, dirty in zip(gae(rewards, values, mask, gamma, lam), noisy):
        close(clean, dirty)


def test_gae_same_response_after_a_prompt_or_right_padded_gives_the_same_advantages():
    g = torch.Generator().manual_seed(0)
    r, v = torch.randn(4, dtype=F64, generator=g), torch.randn(4, dtype=F64, generator=g)
    padded = torch.zeros(2, 9, dtype=F64)
    values = torch.zeros(2, 9, dtype=F64)
    mask = torch.zeros(2, 9, dtype=F64)
    padded[0, :4], values[0, :4], mask[0, :4] = r, v, 1  # response first, right padding
    padded[1, 3:7], values[1, 3:7], mask[1, 3:7] = r, v, 1  # prompt of 3, response, padding
    advantages, _ = gae(padded, values, mask, gamma=0.9, lam=0.8)
    close(advantages[0, :4], advantages[1, 3:7], tol=1e-14)


def test_gae_with_full_mask_matches_the_textbook_loop():
    # The loop of CleanRL / TRL's PPOTrainer, for a batch with no padding.
    g = torch.Generator().manual_seed(1)
    rewards, values = torch.randn(3, 6, dtype=F64, generator=g), torch.randn(3, 6, dtype=F64, generator=g)
    gamma, lam = 0.97, 0.9
    last, expected = 0.0, []
    for t in reversed(range(6)):
        next_values = values[:, t + 1] if t < 5 else 0.0
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last = delta + gamma * lam * last
        expected.append(last)
    advantages, _ = gae(rewards, values, torch.ones(3, 6, dtype=torch.bool), gamma, lam)
    close(advantages, torch.stack(expected[::-1], dim=1), tol=1e-14)


# --------------------------------------------------------------------------- group baselines

GROUP_BASELINES = {
    "grpo": grpo_advantages,
    "grpo_eps0": lambda r, g: grpo_advantages(r, g, eps=0.0),
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
}


@pytest.mark.parametrize("method", sorted(GROUP_BASELINES))
@settings(max_examples=40, deadline=None)
@given(value=st.floats(-1e3, 1e3), group_size=st.integers(2, 9), n_groups=st.integers(1, 3))
def test_group_of_identical_rewards_gives_exactly_zero_advantage(method, value, group_size, n_groups):
    rewards = torch.full((group_size * n_groups,), value, dtype=F64)
    advantages = GROUP_BASELINES[method](rewards, group_size)
    assert bool((advantages == 0).all()), advantages


@pytest.mark.parametrize("value", [0.1, 1 / 3, 0.7])
def test_identical_rewards_that_round_give_exactly_zero_and_no_nan(value):
    # 0.1 + 0.1 + 0.1 != 0.3: the rounded mean is not 0.1, and the std is ~1e-17, not 0.
    rewards = torch.tensor([value] * 3 + [0.0, 1.0, 1.0], dtype=F64)
    for method in GROUP_BASELINES.values():
        advantages = method(rewards, 3)
        assert bool(torch.isfinite(advantages).all())
        assert bool((advantages[:3] == 0).all())


@FAST
@given(rewards=st.lists(st.floats(-10, 10, width=32), min_size=2, max_size=12), group_size=st.integers(2, 6))
def test_group_advantages_sum_to_zero_within_each_group(rewards, group_size):
    # width=32: float32-sized rewards, whose squares cannot underflow the float64 variance
    # (with eps=0, a group like [0, 1e-175] would have std 0 and infinite advantages).
    n = (len(rewards) // group_size) * group_size
    if n == 0:
        return
    r = torch.tensor(rewards[:n], dtype=F64)
    for method in GROUP_BASELINES.values():
        sums = method(r, group_size).view(-1, group_size).sum(1)
        close(sums, torch.zeros_like(sums), tol=1e-9)


def test_rloo_equals_explicit_leave_one_out_mean():
    r = torch.tensor([1.0, 0.0, 0.5, 2.0, -1.0, 3.0, 0.0, 0.25], dtype=F64)
    G = 4
    expected = torch.empty_like(r)
    for i in range(len(r)):
        group = range((i // G) * G, (i // G + 1) * G)
        expected[i] = r[i] - sum(float(r[j]) for j in group if j != i) / (G - 1)
    close(rloo_advantages(r, G), expected, tol=1e-14)
    close(rloo_advantages(r, G), G / (G - 1) * dr_grpo_advantages(r, G), tol=1e-14)


def test_grpo_uses_unbiased_std_with_eps_outside_the_sqrt():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0], dtype=F64)  # groups of 3
    eps = 0.5  # large, so that where eps goes is visible
    g = r.view(2, 3)
    mean, centred = g.mean(1, keepdim=True), g - g.mean(1, keepdim=True)
    expected = centred / (g.std(1, unbiased=True, keepdim=True) + eps)
    ours = grpo_advantages(r, 3, eps=eps).view(2, 3)
    close(ours[0], expected[0], tol=1e-14)
    # Negative controls: the biased std, and eps inside the square root, give other numbers.
    biased = centred / (g.std(1, unbiased=False, keepdim=True) + eps)
    inside = centred / torch.sqrt(g.var(1, unbiased=True, keepdim=True) + eps)
    assert not torch.allclose(ours[0], biased[0]) and not torch.allclose(ours[0], inside[0])
    assert bool((ours[1] == 0).all()) and float(mean[1]) == 1.0


def test_grpo_without_scale_is_dr_grpo():
    r = torch.randn(12, dtype=F64, generator=torch.Generator().manual_seed(2))
    close(grpo_advantages(r, 4, scale=False), dr_grpo_advantages(r, 4), tol=0)


# --------------------------------------------------------------------------- REINFORCE++ and whitening


def test_reinforce_pp_whitened_has_masked_mean_zero_and_std_one():
    g = torch.Generator().manual_seed(3)
    mask = (torch.arange(8)[None, :] < torch.tensor([8, 3, 5, 1, 6])[:, None]).to(F64)
    rewards = torch.zeros(5, 8, dtype=F64)
    rewards[torch.arange(5), mask.sum(1).long() - 1] = torch.randn(5, dtype=F64, generator=g)  # outcome reward
    rewards -= 0.01 * torch.rand(5, 8, dtype=F64, generator=g) * mask  # per-token KL penalty
    advantages = reinforce_pp_advantages(rewards, mask, gamma=1.0)
    assert abs(float(masked_mean(advantages, mask))) < 1e-10
    assert float(masked_var(advantages, mask).sqrt()) == pytest.approx(1.0, abs=1e-6)
    assert bool((advantages[~mask.bool()] == 0).all())
    close(advantages, masked_whiten(reward_to_go(rewards, mask), mask))


def test_whiten_is_masked_whiten():
    assert whiten is masked_whiten


# --------------------------------------------------------------------------- bad inputs


def _r(B=2, T=3):
    return torch.zeros(B, T)


BAD_INPUTS = {
    "values_shape_mismatch": (lambda: gae(_r(), torch.zeros(2, 4), torch.ones(2, 3)), "values"),
    "values_nan": (lambda: td_residuals(_r(), torch.full((2, 3), float("nan")), torch.ones(2, 3)), "values"),
    "rewards_inf": (lambda: reward_to_go(torch.full((2, 3), float("inf")), torch.ones(2, 3)), "rewards"),
    "rewards_integer": (lambda: reward_to_go(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3)), "rewards"),
    "rewards_not_2d": (lambda: trajectory_return(torch.zeros(3), torch.ones(3)), "rewards"),
    "mask_not_binary": (lambda: gae(_r(), _r(), torch.full((2, 3), 2.0)), "mask"),
    "mask_shape": (lambda: reward_to_go(_r(), torch.ones(3, 2)), "mask"),
    "gamma_above_one": (lambda: gae(_r(), _r(), torch.ones(2, 3), gamma=1.5), "gamma"),
    "gamma_negative": (lambda: reward_to_go(_r(), torch.ones(2, 3), gamma=-0.1), "gamma"),
    "lam_above_one": (lambda: gae(_r(), _r(), torch.ones(2, 3), lam=1.01), "lam"),
    "lam_negative_closed_form": (lambda: gae_closed_form(_r(), _r(), torch.ones(2, 3), lam=-0.5), "lam"),
    "group_size_not_dividing": (lambda: grpo_advantages(torch.zeros(6), 4), "group_size"),
    "group_size_one": (lambda: rloo_advantages(torch.zeros(6), 1), "group_size"),
    "group_rewards_2d": (lambda: dr_grpo_advantages(torch.zeros(2, 3), 3), "rewards"),
    "group_rewards_nan": (lambda: grpo_advantages(torch.tensor([0.0, float("nan")]), 2), "rewards"),
    "grpo_eps_negative": (lambda: grpo_advantages(torch.zeros(4), 2, eps=-1e-6), "eps"),
    "reinforce_pp_all_zero_mask": (lambda: reinforce_pp_advantages(_r(), torch.zeros(2, 3)), "mask"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_value_error_naming_the_argument(case):
    call, argument = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=argument):
        call()
