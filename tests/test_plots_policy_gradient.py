"""Figures of notebooks 02 and 03: each builder draws what it says, and each data function has the
property the notebooks rely on (measured exactly on the course's toy MDP)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from rlcourse import plots  # noqa: E402
from rlcourse.experiments import toy  # noqa: E402
from rlcourse.plots import policy_gradient as P  # noqa: E402
from rlcourse.toymdp import course_problem  # noqa: E402

NAMES = ["02_mc_gradient_error", "02_loss_not_a_loss", "02_training",
         "03_estimator_variance", "03_sampled_gradient_error", "03_constant_baseline"]


@pytest.fixture(scope="module")
def course():
    return course_problem()


@pytest.fixture(scope="module")
def stats(course):
    mdp, theta = course
    return P.estimator_stats(mdp, theta, P.variance_reduction_estimators(mdp, theta))


# ----------------------------------------------------------------------------- builders

def test_every_figure_of_notebooks_02_and_03_is_registered():
    assert set(NAMES) <= set(plots.BUILDERS)
    assert all(plots.BUILDERS[n].__module__ == P.__name__ for n in NAMES)


def _lines_with_data(ax):
    return [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 1]


def test_mc_gradient_error_figure_has_estimates_and_the_sqrt_n_line():
    fig = plots.BUILDERS["02_mc_gradient_error"]()
    left, right = fig.axes
    assert len(_lines_with_data(left)) == 4          # 2 components: sampled curve + exact level each
    assert right.get_xscale() == right.get_yscale() == "log"
    labels = [ln.get_label() for ln in right.get_lines()]
    assert any("RMS" in s for s in labels) and any("tr" in s for s in labels)
    plt.close(fig)


def test_loss_not_a_loss_figure_has_one_surrogate_curve_per_shift():
    fig = plots.BUILDERS["02_loss_not_a_loss"]()
    left, right = fig.axes
    assert len(_lines_with_data(left)) == 1
    labels = [ln.get_label() for ln in right.get_lines()]
    assert sum("shifted by" in s for s in labels) == len(P.LOSS_SHIFTS)
    assert any("minibatch" in s for s in labels)
    plt.close(fig)


def test_training_figure_shows_every_method_and_j_star():
    fig = plots.BUILDERS["02_training"]()
    left, right = fig.axes
    labels = [ln.get_label() for ln in left.get_lines() if not ln.get_label().startswith("_")]
    assert any("exact" in s for s in labels)
    assert sum("REINFORCE" in s for s in labels) == len(toy.TRAIN_BATCHES)
    assert any("J^*" in s for s in labels)
    assert right.get_yscale() == "log"
    plt.close(fig)


def test_estimator_variance_figure_has_one_bar_per_estimator():
    fig = plots.BUILDERS["03_estimator_variance"]()
    var_ax, bias_ax = fig.axes
    assert len(var_ax.patches) == len(bias_ax.patches) == 6
    assert "variance" in var_ax.get_title() and "bias" in bias_ax.get_title()
    plt.close(fig)


def test_sampled_error_figure_has_a_prediction_and_dots_per_estimator():
    fig = plots.BUILDERS["03_sampled_gradient_error"]()
    (ax,) = fig.axes
    assert len(_lines_with_data(ax)) == 2 * 6
    assert ax.get_xscale() == ax.get_yscale() == "log"
    plt.close(fig)


def test_constant_baseline_figure_marks_zero_mean_and_optimum():
    fig = plots.BUILDERS["03_constant_baseline"]()
    (ax,) = fig.axes
    assert len(_lines_with_data(ax)) == 1
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert any(s.startswith("optimal b*") for s in labels) and any(s.startswith("mean reward") for s in labels)
    plt.close(fig)


# ----------------------------------------------------------------------------- data functions

def test_variance_ordering_on_the_course_mdp(stats):
    v = {k: s["variance"] for k, s in stats.items()}
    assert v[P.FULL] > v[P.CONST] > v[P.RTG] > v[P.VBASE] > v[P.ADV]


def test_only_the_action_dependent_baseline_is_biased(stats):
    for name, s in stats.items():
        if name == P.ACTION:
            assert s["bias"] > 0.1
        else:
            assert s["bias"] < 1e-10, name


def test_sampled_errors_match_the_exact_prediction(course, stats):
    mdp, theta = course
    est = P.variance_reduction_estimators(mdp, theta)
    ns = [1, 10, 100]
    errors = P.sampled_errors(mdp, theta, {P.FULL: est[P.FULL], P.ACTION: est[P.ACTION]}, ns,
                              repeats=400, seed=5)
    for name in (P.FULL, P.ACTION):
        assert errors[name].shape == (400, 3)
        rms = np.sqrt((errors[name] ** 2).mean(0))
        pred = P.predicted_rms_error(stats[name], ns)
        np.testing.assert_allclose(rms, pred, rtol=0.15)
    # an unbiased estimator's error keeps falling; a biased one's cannot fall below its bias
    assert P.predicted_rms_error(stats[P.ACTION], [10**9])[0] == pytest.approx(stats[P.ACTION]["bias"], rel=1e-6)


def test_running_estimate_is_the_mean_of_the_sampled_estimates(course):
    mdp, theta = course
    x = torch.arange(mdp.num_sequences, dtype=torch.float64)[:, None] ** 2
    out = P.running_estimate(mdp, theta, x, [1, 5, 50], seed=2)
    idx = mdp.sample(theta, 50, seed=2)
    expected = torch.stack([x[idx[:n]].mean(0) for n in (1, 5, 50)])
    torch.testing.assert_close(out, expected)


def test_shifted_mdp_moves_returns_and_j_by_the_shift_but_not_the_gradient(course):
    mdp, theta = course
    m = P.shifted_mdp(mdp, 2.5)
    torch.testing.assert_close(m.returns(), mdp.returns() + 2.5)
    assert float(m.objective(theta)) == pytest.approx(float(mdp.objective(theta)) + 2.5, abs=1e-12)
    torch.testing.assert_close(m.exact_gradient(theta), mdp.exact_gradient(theta), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="shift"):
        P.shifted_mdp(mdp, float("nan"))


def test_surrogate_loss_value_depends_on_the_shift_along_the_same_run(course):
    mdp, theta = course
    runs = {c: toy.gradient_ascent(P.shifted_mdp(mdp, c), theta, steps=30) for c in (-2.0, 2.0)}
    # identical parameters: the exact gradient does not see the shift
    torch.testing.assert_close(runs[-2.0]["theta"], runs[2.0]["theta"], atol=1e-10, rtol=0)
    np.testing.assert_allclose(runs[2.0]["J"] - runs[-2.0]["J"], 4.0, atol=1e-10)
    # ... while the surrogate "loss" rises for c = -2 and falls for c = +2
    assert runs[-2.0]["surrogate_loss"][-1] > runs[-2.0]["surrogate_loss"][0]
    assert runs[2.0]["surrogate_loss"][-1] < runs[2.0]["surrogate_loss"][0]


def test_gradient_ascent_raises_j_toward_max_return(course):
    mdp, theta = course
    j_star = float(mdp.returns().max())
    exact = toy.gradient_ascent(mdp, theta, steps=100, lr=0.3)
    assert np.all(np.diff(exact["J"]) > 0)               # small exact steps: monotone ascent
    assert exact["J"][-1] <= j_star and j_star - exact["J"][-1] < 0.1
    sampled = toy.gradient_ascent(mdp, theta, steps=100, lr=0.3, batch_size=16, seed=0)
    assert len(sampled["batch_loss"]) == 100
    assert sampled["J"][-1] > exact["J"][0] + 0.5


def test_reinforce_step_is_unbiased_for_the_exact_gradient(course):
    # one REINFORCE step from theta0 with many samples lands where the exact step lands
    mdp, theta = course
    exact = toy.gradient_ascent(mdp, theta, steps=1, lr=1.0)["theta"]
    sampled = toy.gradient_ascent(mdp, theta, steps=1, lr=1.0, batch_size=20000, seed=0)["theta"]
    assert float((exact - sampled).abs().max()) < 0.05


def test_bad_arguments_raise_value_error(course):
    mdp, theta = course
    with pytest.raises(ValueError, match="batch_size"):
        toy.gradient_ascent(mdp, theta, steps=1, batch_size=0)
    with pytest.raises(ValueError, match="ns"):
        P.sampled_errors(mdp, theta, {}, [10, 5])
    with pytest.raises(ValueError, match="repeats"):
        P.sampled_errors(mdp, theta, {}, [1, 2], repeats=0)


def test_toy_loops_run_single_threaded_and_restore_the_thread_count(course, monkeypatch):
    from rlcourse.threads import cpu_threads

    mdp, theta = course
    seen = []
    objective = mdp.objective
    monkeypatch.setattr(mdp, "objective", lambda *a, **k: seen.append(torch.get_num_threads()) or objective(*a, **k))
    with cpu_threads(2):
        toy.gradient_ascent(mdp, theta, steps=1)
        assert torch.get_num_threads() == 2
    assert seen and set(seen) == {1}  # every J along the run was computed with one thread