"""Figures of notebook 04 (rlcourse.plots.lm_rl): plot functions and builders return figures
from small synthetic histories; the experiments call the trainers and return plain data.

Nothing here trains the course's SFT start: the builders are fed synthetic experiment results
(monkeypatched), and the experiment functions run a few steps from a briefly trained 1-digit
model with ``RLCOURSE_CACHE`` in a tmp dir.
"""

from __future__ import annotations

import dataclasses
import json
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from rlcourse import derivations  # noqa: E402

derivations.load_all()  # keep the derivation registry in course order (tests/test_derivations.py)

from conftest import MINI_TASK as TASK  # noqa: E402
from rlcourse.plots import BUILDERS, load_all, save  # noqa: E402
from rlcourse.experiments import lm_rl as X  # noqa: E402
from rlcourse.plots import lm_rl as L  # noqa: E402

NAMES = ("04_reinforce_baselines", "04_pass_at_k", "04_gradient_noise")


# --------------------------------------------------------------------------- synthetic data

def fake_run(seed: int, steps: int = 12, eval_every: int = 4, samples: int | None = None) -> dict:
    rng = np.random.default_rng(seed)
    history = []
    for s in range(steps):
        row = {"step": s, "reward_mean": float(0.3 + 0.02 * s + 0.05 * rng.standard_normal()),
               "frac_zero_std": 0.2, "sampling_rounds": 1.0, "entropy": 0.4, "completion_length": 3.0}
        if (s + 1) % eval_every == 0:
            row["eval_accuracy"] = float(0.3 + 0.03 * s)
        history.append(row)
    run = {"history": history, "before": {"accuracy": 0.3, "pass@1": 0.32, "pass@8": 0.9},
           "after": {"accuracy": 0.6, "pass@1": 0.5, "pass@8": 0.85, "mean_reward": 0.5}, "seconds": 12.3 + seed,
           "pass_at_k": {1: 0.5, 2: 0.65, 4: 0.78, 8: 0.85}}
    if samples is not None:
        run["samples"] = samples
    return run


def fake_reinforce(*args, **kwargs) -> dict:
    return {"config": dict(steps=12, lr=1e-4, prompts_per_step=4, group_size=4, eval_n=10, eval_every=4),
            "start": {"accuracy": 0.3, "mean_reward": 0.3, "pass_at_k": {1: 0.32, 2: 0.5, 4: 0.7, 8: 0.9}},
            "runs": {b: fake_run(i) for i, b in enumerate(("none", "mean", "rloo"))}}


def fake_runs_with_samples() -> dict:
    """Four runs, the third of which generated twice the samples (as a trainer with extra sampling rounds does)."""
    return {name: fake_run(i, samples=192 * (2 if i == 2 else 1)) for i, name in enumerate(("a", "b", "c", "d"))}


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


def test_eval_curve_starts_at_the_start_and_counts_steps_done():
    x, y = L.eval_curve(fake_run(0, steps=12, eval_every=4))
    assert x.tolist() == [0, 4, 8, 12]
    assert y[0] == pytest.approx(0.3)
    assert y[1:] == pytest.approx([0.3 + 0.03 * s for s in (3, 7, 11)])


def test_learning_curves_has_two_panels_one_line_per_run_and_wall_time_in_the_legend():
    runs = fake_runs_with_samples()
    fig = L.plot_learning_curves(runs, {"a": "A"}, show_samples=True, title="t")
    ax_r, ax_a = fig.axes
    assert len(ax_a.get_lines()) == 4
    legend = [t.get_text() for t in ax_r.get_legend().get_texts()]
    assert len(legend) == 4 and all(" s" in t for t in legend)
    assert any("384 samples" in t for t in legend)            # the extra samples are shown
    assert legend[0].startswith("A (12 s")
    plt.close(fig)
    fig = L.plot_learning_curves(runs, show_raw=False)
    assert len(fig.axes[0].get_lines()) == 4                 # only the moving averages
    plt.close(fig)
    with pytest.raises(ValueError, match="runs"):
        L.plot_learning_curves({})


def test_pass_at_k_plot_draws_every_curve():
    fig = L.plot_pass_at_k({"start": {1: 0.3, 8: 0.9}, "after": {1: 0.5, 8: 0.85}})
    assert len(fig.axes[0].get_lines()) == 2
    plt.close(fig)
    with pytest.raises(ValueError, match="curves"):
        L.plot_pass_at_k({})


def test_gradient_noise_plot_has_one_bar_per_baseline_and_shift():
    fig = L.plot_gradient_noise(fake_noise())
    assert len(fig.axes[0].patches) == 3 * 2
    plt.close(fig)


def test_summary_table_lists_every_run_and_the_start():
    data = fake_reinforce()
    data["runs"]["rloo"]["samples"] = 384
    table = L.summary_table(data["runs"], L.BASELINE_LABELS, data["start"])
    lines = table.splitlines()
    assert len(lines) == 2 + 1 + 3
    assert "start (SFT)" in lines[2] and "RLOO" in table and "384" in table


# --------------------------------------------------------------------------- builders

@pytest.fixture
def synthetic(monkeypatch):
    monkeypatch.setattr(X, "reinforce_baselines_experiment", fake_reinforce)
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


def test_reinforce_experiment_runs_the_trainer_for_each_baseline(start):
    model, tok = start
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_threads = torch.get_num_threads()
    data = X.reinforce_baselines_experiment(steps=2, seed=0, prompts_per_step=4, group_size=4, eval_n=4, eval_every=1,
                                            ks=(1, 2), model=model, tokenizer=tok, task=TASK)
    assert torch.get_num_threads() == n_threads                       # one_thread() restored the setting
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # the start is not trained
    assert list(data["runs"]) == ["none", "mean", "rloo"]
    assert _is_plain(data)
    for run in data["runs"].values():
        assert [r["step"] for r in run["history"]] == [0, 1]
        assert set(run["pass_at_k"]) == {1, 2} and run["samples"] == 2 * 4 * 4
        assert len(L.eval_curve(run)[0]) == 3
    fig = L.plot_learning_curves(data["runs"], L.BASELINE_LABELS)
    plt.close(fig)


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


@pytest.fixture
def stub_reinforce_trainer(monkeypatch):
    """The REINFORCE experiment with its trainer, start and evaluation replaced by stubs; returns the
    list of baselines the (fake) trainer was called with, in order."""
    calls = []

    def fake_train(cfg, model, tok, task=None, progress=False):
        calls.append(cfg.baseline)
        from rlcourse.train.common import TrainResult

        return TrainResult(model, tok, [{"step": 0, "reward_mean": 0.1}], {"accuracy": 0.1}, {"accuracy": 0.2}, 1.0)

    monkeypatch.setattr(X, "train_reinforce", fake_train)
    monkeypatch.setattr(X, "_start", lambda *a, **k: (torch.nn.Linear(1, 1), None))
    monkeypatch.setattr(X, "pass_at_k_curve", lambda *a, **k: {"accuracy": 0.1, "mean_reward": 0.1,
                                                                "pass_at_k": {1: 0.1}})
    return calls


def test_memo_returns_the_same_result_without_retraining(stub_reinforce_trainer):
    calls = stub_reinforce_trainer
    X.clear_memo()
    try:
        a = X.reinforce_baselines_experiment("tiny", steps=1, seed=0, baselines=("none",))
        b = X.reinforce_baselines_experiment("tiny", steps=1, seed=0, baselines=("none",))
        assert a is b and calls == ["none"]
        X.reinforce_baselines_experiment("tiny", steps=1, seed=1, baselines=("none",))
        assert calls == ["none", "none"]
    finally:
        X.clear_memo()


def test_run_of_a_config_is_the_keyword_form_and_memoised(stub_reinforce_trainer):
    calls = stub_reinforce_trainer
    X.clear_memo()
    try:
        cfg = X.ReinforceBaselinesConfig(steps=1, baselines=["none"])  # a list is stored as a tuple: hashable
        assert cfg.baselines == ("none",)
        assert hash(cfg) == hash(X.ReinforceBaselinesConfig(steps=1, baselines=("none",)))
        a = X.run(cfg)
        b = X.reinforce_baselines_experiment("tiny", steps=1, baselines=("none",))
        assert a is b and calls == ["none"]
        assert a["config"] == {**dataclasses.asdict(cfg)} and json.loads(json.dumps(a))["config"]["steps"] == 1
        assert a["runs"]["none"]["samples"] == 1 * cfg.prompts_per_step * cfg.group_size
    finally:
        X.clear_memo()
    from rlcourse.train.grpo import GRPOConfig

    with pytest.raises(TypeError, match="cfg must be one of"):
        X.run(GRPOConfig())  # a trainer's config is not an experiment's
    with pytest.raises(ValueError, match="n_batches"):
        X.GradientNoiseConfig(n_batches=1)


def test_settings_the_notebooks_print_are_the_configs_defaults():
    assert X.REINFORCE_SETTINGS["steps"] == X.ReinforceBaselinesConfig().steps == 60
