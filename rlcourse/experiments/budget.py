"""What the configs of the LM experiments share: the training budget every arm gets, and the evaluation schedule.

An experiment compares arms on equal terms, so its config states the budget once (:class:`Budget`: steps,
learning rate, the batch) and each arm's trainer config takes it (:meth:`Budget.trainer_fields`), and states
once when and on what the arms are evaluated (:class:`Evaluation`). Both validate their fields on
construction (``ValueError`` naming the field).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rlcourse._validate import integer, number

__all__ = ["Batch", "Budget", "Evaluation", "check_part", "check_budget"]


@dataclass(frozen=True)
class Batch:
    """One training step's samples: ``prompts_per_step`` training problems x ``group_size`` samples each (the
    trainers' fields of the same names)."""

    prompts_per_step: int
    group_size: int

    def __post_init__(self):
        integer("prompts_per_step", self.prompts_per_step)
        integer("group_size", self.group_size)

    @property
    def samples(self) -> int:
        """Samples per step: ``prompts_per_step * group_size``."""
        return self.prompts_per_step * self.group_size

    def trainer_fields(self) -> dict:
        """The fields, as keyword arguments of a trainer's config."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Budget(Batch):
    """The training budget of every arm: ``steps`` steps of a :class:`Batch` at learning rate ``lr``."""

    steps: int
    lr: float

    def __post_init__(self):
        super().__post_init__()
        integer("steps", self.steps)
        number("lr", self.lr)


@dataclass(frozen=True)
class Evaluation:
    """Held-out evaluation at the start and after every ``every`` training steps, on ``prompts`` held-out
    problems: ``samples`` responses to each (temperature 1), or one greedy response where ``samples`` is None."""

    every: int
    prompts: int
    samples: int | None = None

    def __post_init__(self):
        integer("every", self.every)
        integer("prompts", self.prompts)
        integer("samples", self.samples, none_ok=True)

    def check_steps(self, steps: int) -> None:
        """``every <= steps`` (else no evaluation after the start); ``ValueError`` otherwise."""
        if self.every > steps:
            raise ValueError(f"evaluation.every={self.every} exceeds steps={steps}: no evaluation after the start")


def check_part(cfg, field: str, kind: type) -> None:
    """``getattr(cfg, field)`` is a ``kind`` (a config's nested part); ``ValueError`` naming the field otherwise."""
    value = getattr(cfg, field)
    if not isinstance(value, kind):
        raise ValueError(f"{field} must be a {kind.__module__}.{kind.__name__}, got {value!r}")


def check_budget(cfg, *, sampled: bool, min_group_size: int = 1) -> None:
    """The ``budget`` (a :class:`Budget`) and ``evaluation`` (an :class:`Evaluation`) of an experiment's config:
    ``budget.group_size >= min_group_size``; ``evaluation.samples`` set (``sampled``) or None (greedy
    evaluation); at least one evaluation after the start. ``ValueError`` naming the field otherwise."""
    check_part(cfg, "budget", Budget)
    check_part(cfg, "evaluation", Evaluation)
    integer("budget.group_size", cfg.budget.group_size, min_group_size)
    if sampled:
        integer("evaluation.samples", cfg.evaluation.samples)
    elif cfg.evaluation.samples is not None:
        raise ValueError(f"evaluation.samples must be None (greedy evaluation: one response per problem), "
                         f"got {cfg.evaluation.samples!r}")
    cfg.evaluation.check_steps(cfg.budget.steps)
