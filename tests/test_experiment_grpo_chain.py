"""``grpo_variants`` (notebook 09) through the runner, in its quick config: rows, arms, evaluations, resumption."""

from __future__ import annotations

import pytest

from rlcourse.experiments import runner
from rlcourse.experiments.grpo_chain import GRPOChainConfig

KEYS = {"arm", "seed", "step", "accuracy", "length_correct", "length_incorrect", "entropy", "clipfrac"}


def test_grpo_variants_quick_gives_every_arm_and_seed_an_evaluated_curve(tmp_path):
    res = runner.run("grpo_variants", seeds=2, quick=True, out=tmp_path / "run", progress=False)
    cfg = GRPOChainConfig().quick()
    rows = res["curves"]
    assert all(set(r) == KEYS for r in rows)
    assert {r["arm"] for r in rows} == {"grpo", "dr_grpo", "dapo", "gspo"}
    assert {r["seed"] for r in rows} == {0, 1}
    steps = [0] + list(range(cfg.eval_every, cfg.steps + 1, cfg.eval_every))
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
    again = runner.run("grpo_variants", seeds=2, quick=True, out=tmp_path / "run", progress=False)
    assert again["curves"] == rows and set(again["seconds"].values()) == {None}


def test_grpo_variants_config_refuses_bad_fields():
    with pytest.raises(ValueError, match="variants"):
        GRPOChainConfig(variants=("grpo", "ppo"))
    with pytest.raises(ValueError, match="eval_every"):
        GRPOChainConfig(steps=10, eval_every=20)
    with pytest.raises(ValueError, match="steps"):
        GRPOChainConfig(steps=0)


def test_grpo_variants_is_listed_once_for_notebook_09():
    exps = runner.load_all()
    assert exps["grpo_variants"].notebook == "09"
    assert exps["grpo_variants"].config is GRPOChainConfig
