"""``reinforce_baselines`` (notebook 04) through the runner, in its quick config: rows, arms, evaluations,
resumption; the config's refusals; the arms' trainer configs; the figure."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rlcourse.experiments import runner
from rlcourse.experiments.reinforce_baselines import ARM_LABELS, ARMS, KEYS, ReinforceBaselinesConfig, arm_config
from rlcourse.train.reinforce import reinforce_advantages


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory):
    import os

    old = os.environ.get("RLCOURSE_CACHE")
    os.environ["RLCOURSE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        out = tmp_path_factory.mktemp("run") / "reinforce_baselines"
        res = runner.run("reinforce_baselines", seeds=2, quick=True, out=out, progress=False)
        again = runner.run("reinforce_baselines", seeds=2, quick=True, out=out, progress=False)
    finally:
        if old is None:
            os.environ.pop("RLCOURSE_CACHE", None)
        else:
            os.environ["RLCOURSE_CACHE"] = old
    return res, again


def test_quick_run_gives_every_arm_and_seed_an_evaluated_curve_with_every_key(quick_result):
    res, again = quick_result
    cfg = ReinforceBaselinesConfig().quick()
    rows = res["curves"]
    assert all(set(r) == set(KEYS) for r in rows)
    assert {r["arm"] for r in rows} == set(ARMS) and {r["seed"] for r in rows} == {0, 1}
    every = cfg.evaluation.every
    steps = [0] + list(range(every, cfg.budget.steps + 1, every))
    for arm in ARMS:
        for seed in (0, 1):
            curve = [r for r in rows if r["arm"] == arm and r["seed"] == seed]
            assert [r["step"] for r in curve] == steps
            assert all(0.0 <= r["accuracy"] <= 1.0 for r in curve)
            assert all(r[k] is None for k in ("reward", "grad_norm", "update_norm", "advantage_abs")
                       for r in curve[:1])
            assert all(r["grad_norm"] > 0 and r["update_norm"] > 0 and r["advantage_abs"] >= 0
                       and -0.5 <= r["reward"] <= 1.0 for r in curve[1:])
            # pass@k at the start and at the end only
            assert [r["pass_at_1"] is not None for r in curve] == [True] + [False] * (len(steps) - 2) + [True]
            assert all(0 <= r["pass_at_1"] <= r["pass_at_8"] <= 1 for r in (curve[0], curve[-1]))
    # the start is shared: every arm and seed evaluates the same model at step 0
    assert len({r["accuracy"] for r in rows if r["step"] == 0}) == 1
    # the saved seeds are loaded, not re-run
    assert again["curves"] == rows and set(again["seconds"].values()) == {None}


def test_quick_run_same_seed_same_problems_so_the_offset_cancels_in_rloo(quick_result):
    """RLOO on r + c is RLOO on r (the advantages are equal up to float rounding): same seed, same problems,
    so the two arms' rows agree."""
    rows = quick_result[0]["curves"]
    for seed in (0, 1):
        a = [r for r in rows if r["arm"] == "rloo" and r["seed"] == seed]
        b = [r for r in rows if r["arm"] == "rloo_offset" and r["seed"] == seed]
        for x, y in zip(a, b):
            for k in ("accuracy", "reward", "advantage_abs", "pass_at_1"):
                assert (x[k] is None and y[k] is None) or x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-9), \
                    (seed, x["step"], k)
        # negative control: without a baseline the offset changes the advantages (|A| grows by about c)
        n = [r for r in rows if r["arm"] == "none" and r["seed"] == seed]
        no = [r for r in rows if r["arm"] == "none_offset" and r["seed"] == seed]
        assert no[1]["advantage_abs"] > n[1]["advantage_abs"] + 0.2


def test_each_arm_trains_with_its_baseline_offset_and_optimizer_and_no_clipping():
    cfg = ReinforceBaselinesConfig()
    seen = {a: arm_config(cfg, a, seed=3) for a in ARMS}
    assert {a: (c.baseline, c.reward_offset != 0, c.optimizer) for a, c in seen.items()} == ARMS
    b = cfg.budget
    assert all(c.grad_clip is None and c.seed == 3 and c.steps == b.steps for c in seen.values())
    assert all(c.group_size == b.group_size and c.prompts_per_step == b.prompts_per_step for c in seen.values())
    assert seen["sgd_rloo"].lr == cfg.sgd_lr and seen["rloo"].lr == b.lr
    assert seen["none_offset"].reward_offset == cfg.offset and seen["none"].reward_offset == 0.0
    assert set(ARM_LABELS) == set(ARMS)
    with pytest.raises(ValueError, match="arm"):
        arm_config(cfg, "ppo", 0)


def test_rloo_advantages_are_g_over_g_minus_1_times_the_group_mean_ones_at_the_config_group_size():
    """What the SGD arms rely on: on every group, RLOO's advantages are G/(G-1) times the group mean's
    (twice, at G = 2), so under SGD its step is that much longer; a batch-mean baseline is not such a multiple."""
    G = ReinforceBaselinesConfig().budget.group_size
    r = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, -0.5, 1.0, 0.5, 0.0], dtype=torch.float64)[: G * (10 // G)]
    rloo, mean = reinforce_advantages(r, "rloo", G), reinforce_advantages(r, "mean", G)
    assert torch.allclose(rloo, mean * G / (G - 1), atol=1e-12)
    batch = reinforce_advantages(r, "batch_mean", G)
    assert not torch.allclose(rloo, batch * G / (G - 1), atol=1e-3)  # negative control


_B, _E = ReinforceBaselinesConfig().budget, ReinforceBaselinesConfig().evaluation


@pytest.mark.parametrize("kw, field", [({"arms": ("none", "ppo")}, "arms"), ({"arms": ("none", "none")}, "arms"),
                                       ({"arms": ()}, "arms"), ({"sgd_lr": float("inf")}, "sgd_lr"),
                                       ({"offset": 0.0}, "offset"), ({"offset": float("nan")}, "offset"),
                                       ({"budget": dataclasses.replace(_B, steps=10)}, "evaluation.every"),
                                       ({"budget": (150, 5e-5)}, "budget"),
                                       ({"evaluation": dataclasses.replace(_E, samples=4)}, "evaluation.samples")])
def test_config_refuses_bad_fields_by_name(kw, field):
    with pytest.raises(ValueError, match=field):
        ReinforceBaselinesConfig(**kw)


@pytest.mark.parametrize("kw, field", [({"steps": 0}, "steps"), ({"lr": -1.0}, "lr"),
                                       ({"group_size": 1}, "budget.group_size"),
                                       ({"prompts_per_step": 0}, "prompts_per_step")])
def test_config_refuses_a_bad_budget_by_name(kw, field):
    with pytest.raises(ValueError, match=field):   # RLOO needs groups of >= 2
        ReinforceBaselinesConfig(budget=dataclasses.replace(_B, **kw))


def test_reinforce_baselines_is_listed_once_for_notebook_04():
    exps = runner.load_all()
    assert exps["reinforce_baselines"].notebook == "04"
    assert exps["reinforce_baselines"].config is ReinforceBaselinesConfig


def test_plot_draws_the_quick_result_and_refuses_another_experiment(quick_result):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlcourse.plots.experiments import plot_reinforce_baselines

    res = quick_result[0]
    fig = plot_reinforce_baselines(res)
    axes = fig.axes
    assert len(axes) == 6
    assert len(axes[0].get_lines()) == 4 and len(axes[2].get_lines()) == 4  # one line per arm of each panel
    labels = {t.get_text() for ax in axes for leg in [ax.get_legend()] if leg for t in leg.get_texts()}
    assert {ARM_LABELS[a] for a in ARMS} <= labels
    plt.close(fig)
    with pytest.raises(ValueError, match="reinforce_baselines"):
        plot_reinforce_baselines({**res, "name": "grpo_variants"})
    with pytest.raises(ValueError, match="reinforce_baselines"):
        plot_reinforce_baselines([])
