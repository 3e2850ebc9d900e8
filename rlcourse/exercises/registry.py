"""The exercise registry: every exercise of the labs, its reference solution, grader and wrong variants.

An exercise is registered once, in the module of its lecture (``l01.py`` ... ``l10.py``), by
:func:`register` after its reference solution and grader, with

* an id ``"NN.name"`` (NN = the lecture, name = the reference's), a title and the signature the student
  implements (the reference's docstring), points and a difficulty;
* ``kind``: ``"function"`` (the student writes a function with the given ``signature``) or
  ``"prediction"`` (the student writes a number, or a small dict of numbers / choices, before
  running the experiment; the grader compares it with the exact value computed now);
* ``reference``: the reference solution (for a prediction, a function returning the answer);
* ``properties``: the grader, a list of :class:`~rlcourse.exercises.grading.Property`;
* ``wrong``: named plausible wrong implementations (at least one) that the grader must reject;
  ``rlcourse exercises selftest`` proves it does.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from rlcourse.exercises.grading import Property, Result, run_properties, ERROR

KINDS = ("function", "prediction")
DIFFICULTIES = ("easy", "medium", "hard")
LECTURE_MODULES = tuple(f"rlcourse.exercises.l{n:02d}" for n in range(1, 11))


@dataclass(frozen=True)
class Exercise:
    id: str
    title: str
    points: int
    difficulty: str
    signature: str
    reference: Callable[..., Any]
    properties: tuple[Property, ...]
    wrong: dict[str, Callable[..., Any]] = field(default_factory=dict)
    kind: str = "function"

    @property
    def lecture(self) -> int:
        return int(self.id.split(".")[0])

    def to_json(self) -> dict:
        return {"id": self.id, "lecture": self.lecture, "title": self.title, "points": self.points,
                "difficulty": self.difficulty, "kind": self.kind, "signature": self.signature,
                "wrong_variants": sorted(self.wrong)}

    def grade(self, candidate, seed: int = 0) -> Result:
        """Grade ``candidate`` (a function; for a prediction, a function of no argument or the value)."""
        if self.kind == "prediction":
            if callable(candidate):
                try:
                    value = candidate()
                except NotImplementedError:
                    return run_properties(self.id, self.points, [_raise_not_implemented()], None, seed)
                except Exception as e:
                    return Result(self.id, self.points, ERROR, [], f"your answer raised {type(e).__name__}: {e}")
            else:
                value = candidate
            return run_properties(self.id, self.points, self.properties, value, seed)
        if not callable(candidate):
            return Result(self.id, self.points, ERROR, [],
                          f"expected a function {self.signature}, got {type(candidate).__name__}")
        return run_properties(self.id, self.points, self.properties, candidate, seed)


def _raise_not_implemented() -> Property:
    def run(candidate, seed):
        raise NotImplementedError
    return Property("answer", run)


_REGISTRY: dict[str, Exercise] = {}


def register(reference, points: int, difficulty: str, properties, wrong: dict, *, kind: str = "function",
             name: str | None = None, signature: str | None = None) -> Exercise:
    """Create and register the exercise whose reference solution is ``reference``, a function of a lecture
    module ``rlcourse.exercises.lNN``; refuses duplicates, unknown kinds and missing wrong variants.

    The exercise's id is ``"NN.<name>"`` (``name``: the reference's own name unless given); its title is the
    first line of the reference's docstring and its signature the docstring's second paragraph (or
    ``signature``, for one computed from the module's constants)."""
    module = getattr(reference, "__module__", "") or ""
    lecture = module.rpartition(".")[2]
    if not (callable(reference) and lecture[:1] == "l" and lecture[1:].isdigit() and len(lecture) == 3):
        raise ValueError(f"reference must be a function of a lecture module rlcourse.exercises.lNN, got "
                         f"{reference!r} from {module!r}")
    id = f"{lecture[1:]}.{name or reference.__name__}"
    paragraphs = [p for p in inspect.cleandoc(reference.__doc__ or "").split("\n\n") if p.strip()]
    if signature is None and len(paragraphs) >= 2:
        signature = paragraphs[1].strip()
    if not paragraphs or signature is None or "\n" in paragraphs[0]:
        raise ValueError(f"exercise {id!r}: the reference's docstring must be a one-line title, a blank line and "
                         f"the signature the student implements, got {reference.__doc__!r}")
    title = paragraphs[0].strip()
    if id in _REGISTRY:
        raise ValueError(f"exercise {id!r} is registered twice")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    if not wrong:
        raise ValueError(f"exercise {id!r} needs at least one registered wrong variant")
    if not properties:
        raise ValueError(f"exercise {id!r} needs at least one property")
    ex = Exercise(id, title, int(points), difficulty, signature, reference, tuple(properties), dict(wrong), kind)
    _REGISTRY[id] = ex
    return ex


def load_all() -> dict[str, Exercise]:
    """Import every lecture module; return the registry, sorted by id."""
    for mod in LECTURE_MODULES:
        importlib.import_module(mod)
    return dict(sorted(_REGISTRY.items()))


def get(exercise_id: str) -> Exercise:
    """The exercise with this id; ``ValueError`` listing the valid ids otherwise."""
    reg = load_all()
    if exercise_id not in reg:
        raise ValueError(f"unknown exercise id {exercise_id!r}; valid ids: {', '.join(reg)}")
    return reg[exercise_id]


def selftest(seed: int = 0, only: list[str] | None = None) -> list[dict]:
    """Grade every reference (must pass) and every wrong variant (must be rejected)."""
    rows = []
    for ex in load_all().values():
        if only and ex.id not in only:
            continue
        ref = ex.grade(ex.reference, seed)
        rejected, accepted = [], []
        for name, variant in ex.wrong.items():
            (accepted if ex.grade(variant, seed).passed else rejected).append(name)
        rows.append({"id": ex.id, "reference_passed": ref.passed, "reference_seconds": round(ref.seconds, 3),
                     "variants": sorted(ex.wrong), "variants_rejected": sorted(rejected),
                     "variants_accepted": sorted(accepted),
                     "reference_failures": ref.failures()})
    return rows
