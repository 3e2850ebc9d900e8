"""``kl_placement`` (notebook 08): the quick run's rows for every arm and seed (the start replaced by a
seconds-long miniature: no checkpoint cache needed), bad configs refused by name, and every arm mapped onto a
valid GRPO config with the same beta (the trainer's placements are tested in test_train_grpo_kl_placement.py)."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest

import rlcourse.experiments.kl_placement as kp
from rlcourse.experiments import runner
from rlcourse.train.grpo import GRPOConfig

KEYS = {"arm", "seed", "step", "kl", "sqrt_kl", "gold", "accuracy"}


@pytest.fixture
def mini_start(start, monkeypatch):
    model, tok = start
    monkeypatch.setattr(kp, "sft_start", lambda preset, seed, device=None, progress=True, cfg=None, task=None:
                        (copy.deepcopy(model), tok))


def test_quick_run_gives_every_arm_and_seed_its_evaluations(mini_start, tmp_path):
    cfg = kp.KLPlacementConfig().quick()
    res = runner.run("kl_placement", seeds=2, quick=True, out=tmp_path / "run", progress=False)
    rows = res["curves"]
    assert all(set(r) == KEYS for r in rows)
    assert {r["arm"] for r in rows} == set(kp.ARMS)
    every = cfg.evaluation.every
    steps = [0] + list(range(every, cfg.budget.steps + 1, every))
    for arm in kp.ARMS:
        for seed in (0, 1):
            c = [r for r in rows if r["arm"] == arm and r["seed"] == seed]
            assert [r["step"] for r in c] == steps
            assert c[0]["kl"] == 0.0 and all(r["kl"] >= 0 and 0 <= r["accuracy"] <= 1 for r in c)


def test_every_arm_is_a_valid_grpo_config_with_the_same_beta_except_the_beta_zero_control():
    for arm, fields in kp.ARMS.items():
        cfg = GRPOConfig(variant="dr_grpo", **{"beta": 0.5, **fields})
        assert cfg.beta == (0.0 if arm == "no_kl" else 0.5)
    placements = {(f.get("kl_placement", "loss"), f.get("kl_estimator", "k3")) for a, f in kp.ARMS.items()
                  if a != "no_kl"}
    assert placements == {("reward", "k1"), ("loss", "k3"), ("loss", "k2"), ("sequence_loss", "k2"), ("loss", "k1")}


def test_config_refuses_bad_fields_by_name():
    budget, evaluation = kp.KLPlacementConfig().budget, kp.KLPlacementConfig().evaluation
    for make, name in ((lambda: dict(arms=("reward_k1", "k4")), "arms"), (lambda: dict(arms=()), "arms"),
                       (lambda: dict(beta=0.0), "beta"), (lambda: dict(beta=float("inf")), "beta"),
                       (lambda: dict(budget=replace(budget, group_size=1)), "budget.group_size"),
                       (lambda: dict(budget=replace(budget, steps=0)), "steps"),
                       (lambda: dict(budget=replace(budget, lr=-1.0)), "lr"),
                       (lambda: dict(budget=replace(budget, steps=4)), "evaluation.every"),
                       (lambda: dict(evaluation=replace(evaluation, samples=None)), "evaluation.samples"),
                       (lambda: dict(budget={"steps": 50}), "budget")):
        with pytest.raises(ValueError, match=name):
            kp.KLPlacementConfig(**make())


def test_kl_placement_is_listed_for_notebook_08():
    assert runner.load_all()["kl_placement"].notebook == "08"
