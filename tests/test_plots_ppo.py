"""Figures of notebooks 05 and 06 (rlcourse.plots.ppo): builders, and properties of their data functions.

Also the n-step advantage helper of rlcourse.derivations.gae that notebook 05 uses.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rlcourse import derivations  # noqa: E402

# Register every derivation in course order before the plot module imports a few of them: the
# registry keeps import order, and tests/test_derivations.py checks that order.
derivations.load_all()

from rlcourse.advantages import gae, reward_to_go, td_residuals  # noqa: E402
from rlcourse.derivations.gae import expected_gae_gradient, n_step_advantages, random_batch  # noqa: E402
from rlcourse.derivations.ppo_clip import truth_table_gradient  # noqa: E402
from rlcourse.plots import BUILDERS, load_all  # noqa: E402
from rlcourse.toymdp import course_problem  # noqa: E402
from rlcourse.plots import ppo  # noqa: E402

FAST = settings(max_examples=25, deadline=None)

# name -> number of axes the figure must have
EXPECTED_AXES = {
    "05_gae_bias_variance": 3,
    "05_kl_shaped_gae": 2,
    "06_surrogate_vs_true": 2,
    "06_ratio_vs_length": 2,
    "06_ppo_clip": 4,
    "06_clip_variants": 2,
    "06_adaptive_kl": 2,
}


@pytest.fixture(scope="module")
def course():
    return course_problem()


# ----------------------------------------------------------------------------- builders

def test_every_figure_of_notebooks_05_and_06_is_registered():
    load_all()
    ours = {n for n in BUILDERS if n[:3] in ("05_", "06_")}
    # the experiment figures (05_critic_gae, 05_critic_gae_lm, 06_ppo_toy) are tested with their experiments
    # in tests/test_experiment_runner.py and tests/test_experiment_critic_gae_lm.py
    assert ours == set(EXPECTED_AXES) | {"05_critic_gae", "05_critic_gae_lm", "06_ppo_toy"}


@pytest.mark.parametrize("name", sorted(EXPECTED_AXES))
def test_builder_returns_a_figure_with_the_expected_axes(name):
    load_all()
    fig = BUILDERS[name]()
    try:
        assert isinstance(fig, plt.Figure)
        axes = fig.get_axes()
        assert len(axes) == EXPECTED_AXES[name]
        assert all(ax.has_data() for ax in axes), "every panel shows something"
        assert all(ax.get_title() for ax in axes if ax.get_subplotspec().rowspan.start == 0), "top panels are titled"
        w, h = fig.get_size_inches()
        assert w <= 10 and h <= 4.3
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------- notebook 05 data

@FAST
@given(lam=st.floats(0.0, 1.0), scale=st.floats(0.1, 3.0), seed=st.integers(0, 1000))
def test_gae_estimates_average_to_the_expected_gae_gradient(course, lam, scale, seed):
    mdp, theta = course
    v = ppo.noisy_values(mdp, theta, scale=scale, seed=seed)
    x = ppo.gae_gradient_estimates(mdp, theta, v, 1.0, lam)
    mean = torch.einsum("n,nsa->sa", mdp.probabilities(theta), x)
    assert torch.allclose(mean, expected_gae_gradient(mdp, theta, v, 1.0, lam), atol=1e-12)


@FAST
@given(scale=st.floats(0.1, 3.0), seed=st.integers(0, 1000))
def test_gae_bias_is_zero_at_lambda_one_for_any_critic(course, scale, seed):
    mdp, theta = course
    v = ppo.noisy_values(mdp, theta, scale=scale, seed=seed)
    out = ppo.gae_bias_variance(mdp, theta, v, lams=(0.0, 1.0))
    assert out["bias"][1] < 1e-10, "lambda = 1: V is only a baseline"
    assert out["bias"][0] > 1e-3, "lambda = 0 trusts a wrong V: biased"
    assert (out["variance"] >= 0).all()


def test_gae_bias_is_zero_for_every_lambda_with_the_true_critic(course):
    mdp, theta = course
    out = ppo.gae_bias_variance(mdp, theta, mdp.state_values(theta))
    assert np.all(out["bias"] < 1e-10)
    assert np.all(np.diff(out["variance"]) > 0), "with V = V^pi, variance grows with lambda on the course MDP"


def test_noisy_values_default_is_the_derivations_wrong_v(course):
    mdp, theta = course
    g = torch.Generator().manual_seed(5)
    expected = mdp.state_values(theta) + torch.randn(mdp.num_states, generator=g, dtype=torch.float64)
    assert torch.equal(ppo.noisy_values(mdp, theta), expected)


@FAST
@given(beta=st.floats(0.0, 1.0), score=st.floats(-2.0, 2.0), length=st.integers(1, 30), seed=st.integers(0, 99))
def test_kl_shaped_rewards_are_minus_beta_k1_plus_score_on_the_last_token(beta, score, length, seed):
    ex = ppo.kl_shaped_example(length=length, beta=beta, score=score, seed=seed)
    r, k1 = ex["rewards"], ex["k1"]
    assert r.shape == k1.shape == (1, length)
    assert torch.allclose(r[0, :-1], -beta * k1[0, :-1], atol=1e-12)
    assert math.isclose(float(r.sum()), score - beta * float(k1.sum()), abs_tol=1e-10)


def test_kl_shaped_gae_at_lambda_one_is_the_reward_to_go():
    ex = ppo.kl_shaped_example()
    adv = ppo.kl_shaped_advantages(ex, lams=(1.0, 0.0))
    a1, a0 = list(adv.values())
    assert np.allclose(a1, reward_to_go(ex["rewards"], ex["mask"])[0].numpy(), atol=1e-12)
    assert np.allclose(a0, ex["rewards"][0].numpy(), atol=1e-12), "V = 0 and lambda = 0: the reward itself"


# ----------------------------------------------------------------------------- n-step advantages

@FAST
@given(gamma=st.floats(0.0, 1.0), lam=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_gae_is_the_exponential_mixture_of_n_step_advantages(gamma, lam, seed):
    r, v, m = random_batch(seed=seed)
    T = r.shape[1]
    mix = sum((1 - lam) * lam ** (n - 1) * n_step_advantages(r, v, m, gamma, n) for n in range(1, T))
    mix = mix + lam ** (T - 1) * n_step_advantages(r, v, m, gamma, T)
    assert torch.allclose(mix, gae(r, v, m, gamma=gamma, lam=lam)[0], atol=1e-10)


@FAST
@given(gamma=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_n_step_ends_are_td_residual_and_monte_carlo(gamma, seed):
    r, v, m = random_batch(seed=seed)
    assert torch.allclose(n_step_advantages(r, v, m, gamma, 1), td_residuals(r, v, m, gamma), atol=1e-12)
    mc = reward_to_go(r, m, gamma) - v * m
    for n in (r.shape[1], r.shape[1] + 3):
        assert torch.allclose(n_step_advantages(r, v, m, gamma, n), mc, atol=1e-12)


def test_n_step_rejects_a_bad_n():
    r, v, m = random_batch()
    with pytest.raises(ValueError, match="n must be"):
        n_step_advantages(r, v, m, 1.0, 0)


# ----------------------------------------------------------------------------- notebook 06 data

def test_local_surrogate_is_first_order_accurate(course):
    mdp, theta = course
    d = ppo.surrogate_vs_true(mdp, theta, ppo.step_direction(mdp), steps=(0.0, 0.005, 0.01, 0.02))
    assert abs(d["diff"][0]) < 1e-12 and abs(d["surrogate"][0]) < 1e-12
    err = np.abs(d["diff"] - d["surrogate"])[1:]
    ratio = err / np.asarray([0.005, 0.01, 0.02]) ** 2
    assert ratio.max() / ratio.min() < 1.2, "the error is second order in the step"
    assert np.all(d["kl"][1:] > 0)


def test_token_ratio_bias_vanishes_on_policy_and_trajectory_ratio_is_unbiased(course):
    mdp, theta = course
    d = ppo.off_policy_gradient_bias(mdp, theta, ppo.step_direction(mdp), steps=(0.0, 0.3, 1.0))
    assert d["bias_token"][0] < 1e-12
    assert np.all(d["bias_trajectory"] < 1e-12)
    assert np.all(d["bias_token"][1:] > 1e-2)


def test_gspo_gradient_at_theta_old_is_the_length_normalised_score(course):
    mdp, theta = course
    seq = mdp.sequences
    w = mdp.probabilities(theta) * mdp.returns() / seq.lengths.to(torch.float64)
    expected = torch.einsum("n,nsa->sa", w, mdp.score(theta))
    assert torch.allclose(ppo.gspo_expected_gradient(mdp, theta, theta), expected, atol=1e-12)


def test_ratio_length_stats_match_their_exact_laws():
    s = ppo.ratio_length_stats(lengths=(1, 4, 16), n=4000)
    assert np.allclose(s["exact_std_log_traj"] * s["exact_std_log_gspo"], s["sigma"] ** 2)
    assert np.allclose(s["mc_std_log_traj"], s["exact_std_log_traj"], rtol=0.1)
    assert np.allclose(s["mc_std_log_gspo"], s["exact_std_log_gspo"], rtol=0.1)
    assert np.all((s["mc_ess_traj"] > 0) & (s["mc_ess_traj"] <= 1))
    assert abs(s["mc_mean_gspo"][-1] - math.exp(-s["kl"])) < 0.01
    assert s["exact_ess_traj"][0] == pytest.approx(1 / (1 + s["chi2"]))


@FAST
@given(adv=st.floats(-3.0, 3.0).filter(lambda a: abs(a) > 1e-3), eps=st.floats(0.05, 0.5))
def test_clip_curves_follow_the_truth_table(adv, eps):
    grid = np.linspace(0.01, 2.5, 97)
    c = ppo.clip_objective_curves(grid, adv, eps)
    r = torch.as_tensor(c["ratio"])
    table = -truth_table_gradient(r, torch.full_like(r, adv), eps).numpy()  # d objective / d log pi
    assert np.allclose(c["grad_logp"], table, atol=1e-12)
    assert np.all(np.isin(np.round(c["grad_ratio"], 12), np.round([0.0, adv], 12)))
    assert np.all(c["objective"] <= c["unclipped"] + 1e-12), "the clipped objective is a lower bound"


def test_dual_clip_floors_the_objective_at_c_times_a():
    c = ppo.clip_objective_curves(np.linspace(0, 6, 121), -1.5, 0.2, dual_clip=3.0)
    assert np.all(c["objective"] >= 3.0 * -1.5 - 1e-12)
    assert np.all(c["grad_ratio"][c["ratio"] > 3.0] == 0)


def test_adaptive_kl_runs_reach_the_target_and_the_reversed_rule_diverges():
    runs = list(ppo.adaptive_kl_runs(n_updates=200).values())
    for betas, kls in runs[:2]:
        assert kls[-1] == pytest.approx(ppo.KL_TARGET, rel=1e-8)
    _, bad = runs[2]
    assert bad[-1] > 100 * ppo.KL_TARGET
