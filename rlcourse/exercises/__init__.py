r"""Exercises that grade themselves by properties (the labs of the course).

In a lab notebook, each exercise ends with::

    from rlcourse.exercises import check
    check("03.reward_to_go", reward_to_go)

which grades the function by the properties it must have (exact identities on the toy MDP,
unbiasedness against enumeration, autograd truth tables, invariances, agreement with the
package's own function on random inputs and edge cases) and prints one row per property:
pass/fail and, for a failure, the smallest input that shows it.

Environment variables (set by ``rlcourse check``):

* ``RLCOURSE_EXERCISE_SEED``: the seed of the random inputs (per-student variation; default 0);
* ``RLCOURSE_CHECK_RESULTS``: a file to which each result is appended as one JSON line.
"""

from __future__ import annotations

import os

from rlcourse.exercises.grading import Result, dumps
from rlcourse.exercises.registry import Exercise, get, load_all, selftest

__all__ = ["check", "get", "load_all", "selftest", "Exercise", "Result"]

SEED_ENV = "RLCOURSE_EXERCISE_SEED"
RESULTS_ENV = "RLCOURSE_CHECK_RESULTS"


def _seed_from_env() -> int:
    raw = os.environ.get(SEED_ENV, "0")
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{SEED_ENV} must be an integer, got {raw!r}") from None


def check(exercise_id: str, candidate, *, seed: int | None = None, quiet: bool = False) -> Result:
    """Grade ``candidate`` for exercise ``exercise_id``, print the table, record the result; never raises
    for the candidate's own errors (an unknown id raises ``ValueError`` listing the valid ids)."""
    ex = get(exercise_id)
    result = ex.grade(candidate, _seed_from_env() if seed is None else seed)
    if not quiet:
        print(result.table())
    path = os.environ.get(RESULTS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(dumps(result) + "\n")
    return result
