"""Notebook 04's gradient-noise figure and experiment (rlcourse.plots.lm_rl, rlcourse.experiments.lm_rl): the plot
and its builder on synthetic data; the measurement on a briefly trained 1-digit model (never the course's SFT
start); its memoisation. (Notebook 04's training runs are tests/test_experiment_reinforce_baselines.py.)
"""

from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from rlcourse import derivations  # noqa: E402

derivations.load_all()  # keep the derivation registry in course order (tests/test_derivations.py)

from conftest import MINI_TASK as TASK  # noqa: E402
from rlcourse.plots import BUILDERS, load_all, save  # noqa: E402
from rlcourse.experiments import lm_rl as X  # noqa: E402
from rlcourse.plots import lm_rl as L  # noqa: E402

NAMES = ("04_gradient_noise",)


# --------------------------------------------------------------------------- synthetic data

def fake_noise(*args, **kwargs) -> dict:
    stats = {b: {c: {"trace_cov": 10.0 + c, "signal": 8.0, "noise_to_signal": (10.0 + c) / 8.0} for c in (0.0, 1.0)}
             for b in ("none", "mean", "rloo")}
    return {"config": dict(n_batches=4, prompts_per_step=4, group_size=4), "shifts": [0.0, 1.0], "stats": stats,
            "mean_vs_rloo": 0.0, "reward_mean": 0.3}


# --------------------------------------------------------------------------- plot functions

def test_smoothed_is_a_trailing_mean():
    v = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert np.allclose(L.smoothed(v, 1), v)
    assert np.allclose(L.smoothed(v, 2), [1.0, 1.5, 2.5, 3.5, 4.5])
    assert np.allclose(L.smoothed(v, 10), np.cumsum(v) / np.arange(1, 6))
    with pytest.raises(ValueError, match="window"):
        L.smoothed(v, 0)


def test_gradient_noise_plot_has_one_bar_per_baseline_and_shift():
    fig = L.plot_gradient_noise(fake_noise())
    assert len(fig.axes[0].patches) == 3 * 2
    plt.close(fig)


# --------------------------------------------------------------------------- builders

@pytest.fixture
def synthetic(monkeypatch):
    monkeypatch.setattr(X, "gradient_noise_experiment", fake_noise)


def test_builders_are_registered():
    builders = load_all()
    for name in NAMES:
        assert name in builders and builders[name] is BUILDERS[name]


@pytest.mark.parametrize("name", NAMES)
def test_builder_returns_a_small_figure(name, synthetic, tmp_path):
    fig = BUILDERS[name]()
    assert isinstance(fig, plt.Figure)
    w, h = fig.get_size_inches()
    assert w <= 10 and h <= 4
    path = save(fig, name, tmp_path)
    assert path.exists() and path.stat().st_size < 200_000
    plt.close(fig)


# --------------------------------------------------------------------------- experiments (tiny real runs)

def _is_plain(x) -> bool:
    try:
        json.dumps(x)
        return True
    except TypeError:
        return False


def test_gradient_noise_mean_and_rloo_are_proportional_and_shift_invariant(start):
    model, tok = start
    G = 4
    data = X.gradient_noise_experiment(seed=0, n_batches=3, prompts_per_step=4, group_size=G, shifts=(0.0, 2.0),
                                       model=model, tokenizer=tok, task=TASK)
    st = data["stats"]
    assert data["mean_vs_rloo"] < 1e-4                                # g_mean = (G-1)/G g_rloo on every batch
    assert st["mean"][0.0]["trace_cov"] == pytest.approx(((G - 1) / G) ** 2 * st["rloo"][0.0]["trace_cov"], rel=1e-4)
    for b in ("mean", "rloo"):                                        # a baseline cancels a reward shift exactly
        assert st[b][2.0]["trace_cov"] == pytest.approx(st[b][0.0]["trace_cov"], rel=1e-5)
    assert all(math.isfinite(s["trace_cov"]) and s["trace_cov"] >= 0 for b in st.values() for s in b.values())
    with pytest.raises(ValueError, match="n_batches"):
        X.gradient_noise_experiment(n_batches=1, model=model, tokenizer=tok, task=TASK)


def test_gradient_noise_is_memoised_per_config_and_run_takes_its_config(start, monkeypatch):
    model, tok = start
    calls = []

    def counted_start(*args, **kwargs):
        calls.append(1)
        return model, tok

    monkeypatch.setattr(X, "_start", counted_start)
    monkeypatch.setattr(X, "default_task", lambda: TASK)
    X.clear_memo()
    try:
        fields = dict(n_batches=2, prompts_per_step=2, group_size=2, shifts=[0.0])  # a list is stored as a tuple
        a = X.gradient_noise_experiment("tiny", seed=0, **fields)
        b = X.run(X.GradientNoiseConfig("tiny", 0, **fields))
        assert a is b and len(calls) == 1, "the same config ran twice"
        assert json.loads(json.dumps(a))["config"]["n_batches"] == 2
        X.gradient_noise_experiment("tiny", seed=1, **fields)
        assert len(calls) == 2, "another seed must run"
    finally:
        X.clear_memo()
    from rlcourse.train.grpo import GRPOConfig

    with pytest.raises(TypeError, match="cfg must be one of"):
        X.run(GRPOConfig())  # a trainer's config is not an experiment's
    with pytest.raises(ValueError, match="n_batches"):
        X.GradientNoiseConfig(n_batches=1)
