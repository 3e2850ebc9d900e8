"""The parts the LM experiments' configs share (rlcourse.experiments.budget): each refuses a bad field by name,
the budget's trainer fields are exactly a trainer config's keyword arguments, and check_budget enforces what an
experiment asks of its budget and evaluation."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from rlcourse.experiments.budget import Batch, Budget, Evaluation, check_budget, check_part
from rlcourse.train.grpo import GRPOConfig

BUDGET = Budget(steps=10, lr=1e-4, prompts_per_step=4, group_size=2)


@pytest.mark.parametrize("changes, field", [(dict(steps=0), "steps"), (dict(lr=0.0), "lr"), (dict(lr=float("nan")), "lr"),
                                            (dict(prompts_per_step=2.0), "prompts_per_step"),
                                            (dict(group_size=True), "group_size")])
def test_budget_refuses_a_bad_field_by_name(changes, field):
    with pytest.raises(ValueError, match=field):
        replace(BUDGET, **changes)


@pytest.mark.parametrize("kwargs, field", [(dict(every=0, prompts=4), "every"), (dict(every=1, prompts=0), "prompts"),
                                           (dict(every=1, prompts=4, samples=0), "samples")])
def test_evaluation_refuses_a_bad_field_by_name(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Evaluation(**kwargs)


def test_trainer_fields_configure_a_trainer_with_exactly_the_budget():
    cfg = GRPOConfig(**BUDGET.trainer_fields())
    assert (cfg.steps, cfg.lr, cfg.prompts_per_step, cfg.group_size) == (10, 1e-4, 4, 2)
    assert BUDGET.samples == 8 and Batch(prompts_per_step=3, group_size=5).trainer_fields() == \
        {"prompts_per_step": 3, "group_size": 5}


@dataclass(frozen=True)
class _Cfg:
    budget: object = BUDGET
    evaluation: object = Evaluation(every=5, prompts=16)


def test_check_budget_enforces_the_group_the_samples_and_an_evaluation_after_the_start():
    check_budget(_Cfg(), sampled=False, min_group_size=2)                                   # accepted
    check_budget(_Cfg(evaluation=Evaluation(every=10, prompts=16, samples=4)), sampled=True)
    with pytest.raises(ValueError, match="budget.group_size"):
        check_budget(_Cfg(), sampled=False, min_group_size=3)
    with pytest.raises(ValueError, match="evaluation.samples"):                            # greedy expected
        check_budget(_Cfg(evaluation=Evaluation(every=5, prompts=16, samples=4)), sampled=False)
    with pytest.raises(ValueError, match="evaluation.samples"):                            # sampled expected
        check_budget(_Cfg(), sampled=True)
    with pytest.raises(ValueError, match="evaluation.every=11 exceeds steps=10"):
        check_budget(_Cfg(evaluation=Evaluation(every=11, prompts=16)), sampled=False)
    with pytest.raises(ValueError, match="budget must be a rlcourse.experiments.budget.Budget"):
        check_budget(_Cfg(budget={"steps": 10}), sampled=False)


def test_check_part_names_the_field_and_the_expected_class():
    check_part(_Cfg(), "evaluation", Evaluation)
    with pytest.raises(ValueError, match=r"evaluation must be a rlcourse.experiments.budget.Evaluation, got \(5, 16\)"):
        check_part(_Cfg(evaluation=(5, 16)), "evaluation", Evaluation)
