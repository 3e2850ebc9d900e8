"""``grpo_variants`` (notebook 09) through the runner, in its quick config: rows, arms, evaluations, resumption."""

from __future__ import annotations

from dataclasses import replace

import pytest
from conftest import MINI_TASK

from rlcourse.experiments import runner
from rlcourse.experiments.grpo_chain import GRPOChainConfig, greedy_eval
from rlcourse.lm import generate, held_out_accuracy

KEYS = {"arm", "seed", "step", "accuracy", "length_correct", "length_incorrect", "entropy", "clipfrac"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The quick config over 2 seeds, saved in a directory of this module (one run shared by its tests), with
    its own checkpoint cache (the quick SFT start)."""
    root = tmp_path_factory.mktemp("grpo_variants")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLCOURSE_CACHE", str(root / "cache"))
        res = runner.run("grpo_variants", seeds=2, quick=True, out=root / "run", progress=False)
    return res, root / "run"


def test_grpo_variants_quick_gives_every_arm_and_seed_an_evaluated_curve(quick_run):
    res, out = quick_run
    cfg = GRPOChainConfig().quick()
    rows = res["curves"]
    assert all(set(r) == KEYS for r in rows)
    assert {r["arm"] for r in rows} == {"grpo", "dr_grpo", "dapo", "gspo"}
    assert {r["seed"] for r in rows} == {0, 1}
    every = cfg.evaluation.every
    steps = [0] + list(range(every, cfg.budget.steps + 1, every))
    for arm in ("grpo", "dr_grpo", "dapo", "gspo"):
        for seed in (0, 1):
            curve = [r for r in rows if r["arm"] == arm and r["seed"] == seed]
            assert [r["step"] for r in curve] == steps
            assert all(0.0 <= r["accuracy"] <= 1.0 for r in curve)
            assert curve[0]["entropy"] is None and all(r["entropy"] > 0 for r in curve[1:])
            assert all(0.0 <= r["clipfrac"] <= 1.0 for r in curve[1:])
    # the start is shared: every arm and seed evaluates the same model at step 0
    assert len({r["accuracy"] for r in rows if r["step"] == 0}) == 1
    # a second call loads the saved seeds instead of re-running them
    again = runner.run("grpo_variants", seeds=2, quick=True, out=out, progress=False)
    assert again["curves"] == rows and set(again["seconds"].values()) == {None}


def test_grpo_variants_config_refuses_bad_fields():
    with pytest.raises(ValueError, match="variants"):
        GRPOChainConfig(variants=("grpo", "ppo"))
    budget, evaluation = GRPOChainConfig().budget, GRPOChainConfig().evaluation
    with pytest.raises(ValueError, match="evaluation.every"):
        GRPOChainConfig(budget=replace(budget, steps=10))
    with pytest.raises(ValueError, match="steps"):
        GRPOChainConfig(budget=replace(budget, steps=0))
    with pytest.raises(ValueError, match="budget.group_size"):   # a group of one has no spread
        GRPOChainConfig(budget=replace(budget, group_size=1))
    with pytest.raises(ValueError, match="evaluation.samples"):  # the evaluation is greedy
        GRPOChainConfig(evaluation=replace(evaluation, samples=4))


def test_grpo_variants_is_listed_once_for_notebook_09():
    exps = runner.load_all()
    assert exps["grpo_variants"].notebook == "09"
    assert exps["grpo_variants"].config is GRPOChainConfig


# ---------------------------------------------------------------- the figure: draws the result, and only this one

def test_plot_grpo_variants_draws_every_variant_and_refuses_another_experiments_result(quick_run, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlcourse.plots import BUILDERS, load_all
    from rlcourse.plots.experiments import plot_grpo_variants

    res, _ = quick_run
    variants = res["config"]["variants"]
    fig = plot_grpo_variants(res)
    acc, length, entropy, clip = fig.axes
    assert len(acc.get_lines()) == len(entropy.get_lines()) == len(clip.get_lines()) == len(variants)
    assert len(length.get_lines()) == 2 * len(variants)          # correct and incorrect, per variant
    assert clip.get_yscale() == "log"
    # the accuracy line of each variant is its mean over seeds at every evaluation
    steps = sorted({r["step"] for r in res["curves"]})
    for line, v in zip(acc.get_lines(), variants):
        mean = [sum(r["accuracy"] for r in res["curves"] if r["arm"] == v and r["step"] == s) / 2 for s in steps]
        assert list(line.get_xdata()) == steps and list(line.get_ydata()) == pytest.approx(mean)
    plt.close(fig)
    other = runner.run("ppo_toy", seeds=2, quick=True, progress=False)
    with pytest.raises(ValueError, match="grpo_variants"):
        plot_grpo_variants(other)
    with pytest.raises(ValueError, match="grpo_variants"):
        plot_grpo_variants({"curves": res["curves"]})                # not a runner result at all

    # the figure builder draws the notebook's saved run (results_dir), not a run of its own making
    calls = []

    def fake_run(name, seeds, **kw):
        calls.append((name, seeds, kw.get("out")))
        return res

    monkeypatch.setattr(runner, "run", fake_run)
    load_all()
    fig = BUILDERS["09_grpo_variants"]()
    assert calls == [("grpo_variants", 3, runner.results_dir("grpo_variants"))]
    plt.close(fig)


def test_greedy_eval_accuracy_is_the_packages_greedy_accuracy_and_its_lengths_split_the_mean_length(start):
    """The accuracy equals rlcourse.lm.held_out_accuracy exactly; the mean lengths of the correct and of the
    incorrect responses, weighted by their counts, give the mean greedy length of all responses (an identity
    whatever the model answers)."""
    model, tok = start
    n = 20
    out = greedy_eval(model, tok, MINI_TASK, n)
    assert out["accuracy"] == held_out_accuracy(model, tok, MINI_TASK, n)
    problems = MINI_TASK.held_out(n)
    ro = generate(model, tok, [p.prompt for p in problems], 1, MINI_TASK.max_answer_chars + 2, greedy=True)
    mean_length = float(ro.response_mask.sum(-1).double().mean())
    k = round(out["accuracy"] * n)
    parts = [(k, out["length_correct"]), (n - k, out["length_incorrect"])]
    assert sum(c * (m or 0.0) for c, m in parts) / n == pytest.approx(mean_length, abs=1e-6)  # float32 means
    assert all((m is None) == (c == 0) for c, m in parts)
