"""The course's task: integer arithmetic with a verifiable answer, a rule-based reward and a preference oracle.

A problem is a prompt such as ``"12+7="``; the model should answer ``"19"`` and stop
(``<eos>``). Difficulty is set by the number of digits of the operands and the operators.

Reward (rule-based, as in Ke Wei's lecture slides "Algorithmic and Theoretical Foundations of RL:
Introduction of RL for LLMs"; see REFERENCES.md). With ``correct`` judged by math-verify's ``parse`` /
``verify`` (gold first) and ``well_formed`` meaning "the completion is one integer, optionally
surrounded by spaces, and ended with ``<eos>``":

.. math::

    r(y, a) = \\mathbb{1}[\\text{correct}(y, a)] - 0.5\\,\\mathbb{1}[\\neg\\,\\text{well\\_formed}(y)]

=====================  ===========  ======  ======================================
completion             well formed  reward  why
=====================  ===========  ======  ======================================
``"19"`` + eos         yes          1.0     correct
``" 19 "`` + eos       yes          1.0     surrounding spaces are tolerated
``"18"`` + eos         yes          0.0     wrong but well formed
``"19abc"`` + eos      no           0.5     math-verify finds 19, format penalty
``"19"`` (no eos)      no           0.5     truncated: did not stop
``"1 9"`` + eos        no           -0.5    wrong (math-verify reads 9) and malformed
``"abc"`` + eos        no           -0.5    nothing to parse
=====================  ===========  ======  ======================================

Speed: math-verify costs about 0.3 ms per call (sympy underneath). A completion that is a
plain integer literal is judged by exact integer comparison instead (a few microseconds);
anything else falls back to math-verify. ``tests/test_lm.py`` checks that the two agree.

Held-out split: a problem is held out when a keyed hash of its canonical form (operands
sorted for the commutative ``+`` and ``*``, so ``7+12`` and ``12+7`` fall on the same side)
is below ``held_out_fraction``. The split depends only on ``split_seed``: it is
deterministic, needs no enumeration, and no held-out problem is ever sampled for training.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from dataclasses import dataclass
from typing import Sequence

import torch

from rlcourse._validate import integer

REWARD_CORRECT = 1.0
REWARD_WRONG = 0.0
FORMAT_PENALTY = 0.5  # subtracted when the completion is not "one integer, then <eos>"
OPS = "+-*"

_INT = re.compile(r"[ \t\n\r]*-?[0-9]+[ \t\n\r]*")  # ASCII only: int() refuses other "spaces" (\x1d...)


@dataclass(frozen=True)
class Problem:
    """One arithmetic problem: ``prompt`` (e.g. ``"12+7="``) and its ``answer`` (e.g. ``"19"``)."""

    a: int
    op: str
    b: int

    @property
    def prompt(self) -> str:
        return f"{self.a}{self.op}{self.b}="

    @property
    def answer(self) -> str:
        return str(_apply(self.a, self.op, self.b))

    def __str__(self) -> str:
        return f"{self.prompt}{self.answer}"


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


@dataclass(frozen=True)
class ArithmeticTask:
    """Arithmetic problems ``a op b =`` with operands in ``[0, 10**digits)``.

    Args:
        digits: largest number of digits of an operand (difficulty).
        ops: the operators to draw from, a subset of ``"+-*"``.
        allow_negative: if False, the operands of ``-`` are ordered so that the answer is >= 0.
        held_out_fraction: share of all problems reserved for evaluation.
        split_seed: key of the hash that decides the split.
    """

    digits: int = 2
    ops: str = "+-"
    allow_negative: bool = False
    held_out_fraction: float = 0.1
    split_seed: int = 0

    def __post_init__(self):
        if not isinstance(self.digits, int) or not 1 <= self.digits <= 9:
            raise ValueError(f"digits must be an integer in [1, 9], got {self.digits!r}")
        if not isinstance(self.ops, str) or not self.ops or any(o not in OPS for o in self.ops) \
                or len(set(self.ops)) != len(self.ops):
            raise ValueError(f"ops must be a non-empty string of distinct operators from {OPS!r}, got {self.ops!r}")
        if not isinstance(self.held_out_fraction, (int, float)) or not 0 < self.held_out_fraction < 1:
            raise ValueError(f"held_out_fraction must lie in (0, 1), got {self.held_out_fraction!r}")

    # -- the split -------------------------------------------------------------------------
    def is_held_out(self, problem: Problem) -> bool:
        """True when ``problem`` belongs to the held-out split (a keyed hash, see module doc)."""
        a, b = problem.a, problem.b
        if problem.op in "+*":
            a, b = min(a, b), max(a, b)
        return keyed_unit(f"{self.split_seed}|{a}{problem.op}{b}") < self.held_out_fraction

    def _draw(self, rng: random.Random) -> Problem:
        hi = 10**self.digits
        a, b, op = rng.randrange(hi), rng.randrange(hi), rng.choice(self.ops)
        if op == "-" and not self.allow_negative and a < b:
            a, b = b, a
        return Problem(a, op, b)

    def sample(self, n: int, split: str = "train", seed: int = 0, unique: bool = False) -> list[Problem]:
        """``n`` problems of ``split`` (``"train"`` or ``"held_out"``), reproducibly from ``seed``.

        Operands are uniform on ``[0, 10**digits)`` (swapped for ``-`` when negatives are off);
        draws from the other split are rejected. ``unique=True`` returns distinct problems.
        """
        return sample_split(self, n, split, seed, unique, rng_key=f"{seed}|{split}")

    def held_out(self, n: int = 500, seed: int = 0) -> list[Problem]:
        """A fixed evaluation set: ``n`` distinct held-out problems."""
        return self.sample(n, "held_out", seed=seed, unique=True)

    @property
    def max_answer_chars(self) -> int:
        """Longest answer in characters (sign included)."""
        hi = 10**self.digits - 1
        longest = max(len(str(_apply(hi, o, hi))) for o in self.ops)
        if "-" in self.ops and self.allow_negative:
            longest = max(longest, len(str(-hi)))
        return longest

    # -- the task interface the trainers call (module functions below, with this task) ---------
    def reward(self, completion: str, answer: str | int, finished: bool = True) -> float:
        """:func:`reward` (the module's rule-based reward)."""
        return reward(completion, answer, finished)

    def batch_rewards(self, completions: Sequence[str], answers: Sequence[str | int],
                      finished: Sequence[bool] | torch.Tensor | None = None) -> torch.Tensor:
        """:func:`batch_rewards`: the reward of each completion, a float32 tensor ``(N,)``."""
        return batch_rewards(completions, answers, finished)

    def sft_examples(self, n: int, wrong_fraction: float = 0.5, seed: int = 0,
                     offsets: Sequence[int] = (-2, -1, 1, 2)) -> list[dict]:
        """:func:`sft_examples` with this task: demonstrations, a fraction of them wrong by a small amount."""
        return sft_examples(n, wrong_fraction=wrong_fraction, seed=seed, task=self, offsets=offsets)

    def preference(self, completion_a: str, completion_b: str, answer: str | int, finished_a: bool = True,
                   finished_b: bool = True) -> int:
        """:func:`preference` (higher reward wins; on a tie, the integer closer to the answer)."""
        return preference(completion_a, completion_b, answer, finished_a, finished_b)


def keyed_unit(key: str) -> float:
    """A keyed hash of ``key`` as a number in ``[0, 1)`` (blake2b, 8 bytes): the tasks' split and fixed choices."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2.0**64


def sample_split(task, n: int, split: str, seed: int, unique: bool, rng_key: str) -> list:
    """``n`` problems of ``split`` drawn by ``task._draw`` from ``random.Random(rng_key)``, rejecting the other split.

    The one sampler of every task (``task.sample``): draws whose ``task.is_held_out`` disagrees with
    ``split`` are rejected, and with ``unique=True`` so are repeats. ``ValueError`` when the split
    cannot supply ``n`` problems within ``1000 n + 100000`` draws.
    """
    integer("n", n)
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
    want_held = split == "held_out"
    rng = random.Random(rng_key)
    out: list = []
    seen: set = set()
    attempts, limit = 0, 1000 * n + 100_000
    while len(out) < n:
        attempts += 1
        if attempts > limit:
            raise ValueError(f"n={n} is more than the {split} split can supply{' uniquely' if unique else ''} "
                             f"(found {len(out)} after {limit} draws)")
        p = task._draw(rng)
        if task.is_held_out(p) != want_held or (unique and p in seen):
            continue
        seen.add(p)
        out.append(p)
    return out


# -- reward ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=65536)
def default_task() -> ArithmeticTask:
    """The course's task, used by every trainer: 2-digit addition and subtraction, answers >= 0."""
    return ArithmeticTask(digits=2, ops="+-")


def _parse_gold(answer: str):
    from math_verify import parse

    return parse(answer)


def math_verify_correct(completion: str, answer: str | int) -> bool:
    """Reference judge: ``verify(parse(answer), parse(completion))`` with math-verify (gold first)."""
    from math_verify import parse, verify

    return bool(verify(_parse_gold(str(answer)), parse(completion)))


def is_correct(completion: str, answer: str | int) -> bool:
    """Whether ``completion`` states ``answer``: exact integer comparison for an integer literal, else math-verify."""
    if not isinstance(completion, str):
        raise ValueError(f"completion must be a string, got {type(completion).__name__}")
    answer = str(answer)
    if _INT.fullmatch(completion) and _INT.fullmatch(answer):
        return int(completion) == int(answer)
    return math_verify_correct(completion, answer)


def is_well_formed(completion: str, finished: bool = True) -> bool:
    """One integer literal (surrounding spaces allowed) that ended with ``<eos>`` (``finished``)."""
    return bool(finished) and _INT.fullmatch(completion) is not None


def reward(completion: str, answer: str | int, finished: bool = True) -> float:
    """Rule-based reward :math:`r = \\mathbb{1}[\\text{correct}] - 0.5\\,\\mathbb{1}[\\text{malformed}]`.

    Values: 1.0 correct, 0.0 wrong but well formed, 0.5 correct but malformed (or not
    stopped), -0.5 wrong and malformed. See the module docstring for examples.

    Args:
        completion: the generated text, without the ``<eos>`` token.
        answer: the true answer (string or int).
        finished: whether the model emitted ``<eos>`` (False: truncated at the length limit).
    """
    correct = is_correct(completion, answer)
    return (REWARD_CORRECT if correct else REWARD_WRONG) - (0.0 if is_well_formed(completion, finished) else FORMAT_PENALTY)


def finished_flags(finished: Sequence[bool] | torch.Tensor | None, n: int, of: str = "completions") -> list[bool]:
    """``finished`` as a list of ``n`` flags (None: all True); ``ValueError`` naming ``of`` if its length is not ``n``."""
    if finished is None:
        return [True] * n
    finished = finished.tolist() if isinstance(finished, torch.Tensor) else list(finished)
    if len(finished) != n:
        raise ValueError(f"finished has {len(finished)} entries but {of} has {n}")
    return finished


def batch_rewards(completions: Sequence[str], answers: Sequence[str | int],
                  finished: Sequence[bool] | torch.Tensor | None = None) -> torch.Tensor:
    """:func:`reward` for each completion: a float32 tensor ``(N,)``.

    ``answers`` has one entry per completion (repeat each answer ``G`` times for groups).
    ``finished`` defaults to all True.
    """
    completions, answers = list(completions), list(answers)
    if len(completions) != len(answers):
        raise ValueError(f"completions has {len(completions)} entries but answers has {len(answers)}")
    finished = finished_flags(finished, len(completions))
    return torch.tensor([reward(c, a, f) for c, a, f in zip(completions, answers, finished)], dtype=torch.float32)


# -- SFT data -------------------------------------------------------------------------------
def sft_examples(n: int, wrong_fraction: float = 0.5, seed: int = 0, task: ArithmeticTask | None = None,
                 offsets: Sequence[int] = (-2, -1, 1, 2)) -> list[dict]:
    """Training demonstrations, a fraction of them deliberately wrong by a small amount.

    Each example is ``{"prompt", "completion", "answer", "correct"}`` with a training-split
    problem. With probability ``wrong_fraction`` the completion is ``answer + d`` with ``d``
    drawn uniformly from ``offsets`` (resampled so that it stays >= 0 when the task has no
    negative answers). A model that imitates this data puts mass ``1 - wrong_fraction`` on
    the right answer: right answers are then often among k samples (pass@k high) while a
    single sample is often wrong (pass@1 low) — the gap RL closes. ``offsets=(1,)`` makes the
    error systematic (the wrong answer is always one more), so that for
    ``wrong_fraction > 0.5`` even the most likely answer is wrong.
    """
    task = task or ArithmeticTask()
    if not isinstance(wrong_fraction, (int, float)) or not 0 <= wrong_fraction <= 1:
        raise ValueError(f"wrong_fraction must lie in [0, 1], got {wrong_fraction!r}")
    offsets = list(offsets)
    if not offsets or any(not isinstance(d, int) or d == 0 for d in offsets):
        raise ValueError(f"offsets must be a non-empty list of non-zero integers, got {offsets!r}")
    rng = random.Random(f"{seed}|sft")
    out = []
    for p in task.sample(n, "train", seed=seed):
        ans = int(p.answer)
        value, correct = ans, True
        if rng.random() < wrong_fraction:
            allowed = [d for d in offsets if task.allow_negative or ans < 0 or ans + d >= 0]
            d = rng.choice(allowed) if allowed else abs(rng.choice(offsets))
            value, correct = ans + d, False
        out.append({"prompt": p.prompt, "completion": str(value), "answer": p.answer, "correct": correct})
    return out


# -- preference oracle ----------------------------------------------------------------------
def _distance(completion: str, answer: str) -> int | None:
    if _INT.fullmatch(completion) and _INT.fullmatch(answer):
        return abs(int(completion) - int(answer))
    return None


def preference(completion_a: str, completion_b: str, answer: str | int, finished_a: bool = True,
               finished_b: bool = True, tie_break: str = "distance") -> int:
    """Oracle label: +1 if ``a`` is preferred, -1 if ``b`` is, 0 if neither (the pair is discarded).

    The completion with the higher :func:`reward` wins. On equal rewards, ``tie_break="distance"``
    prefers the integer closer to the answer when both are integer literals at different
    distances (e.g. 18 over 25 for 19); every other tie, and every tie with
    ``tie_break="discard"``, gives 0.
    """
    if tie_break not in ("distance", "discard"):
        raise ValueError(f"tie_break must be 'distance' or 'discard', got {tie_break!r}")
    answer = str(answer)
    ra, rb = reward(completion_a, answer, finished_a), reward(completion_b, answer, finished_b)
    if ra != rb:
        return 1 if ra > rb else -1
    if tie_break == "distance":
        da, db = _distance(completion_a, answer), _distance(completion_b, answer)
        if da is not None and db is not None and da != db:
            return 1 if da < db else -1
    return 0


_module_preference = preference  # make_preference_pairs' own argument is named preference


def make_preference_pairs(prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str | int], *,
                          group_size: int, finished: Sequence[bool] | torch.Tensor | None = None,
                          tie_break: str = "distance", max_pairs_per_group: int | None = None,
                          seed: int = 0, preference=None) -> list[dict]:
    """Chosen/rejected pairs from G sampled completions per prompt, labelled by :func:`preference`
    (or by a task's oracle: ``preference=task.preference``, called as ``preference(a, b, answer)``;
    ``tie_break`` applies to the default oracle only).

    Rows come in groups of ``group_size`` consecutive completions of the same prompt (as in
    a :class:`~rlcourse.lm.rollout.Rollout`). Within a group every pair of *distinct*,
    *finished* completions is labelled (unfinished ones are left out, so that appending
    ``<eos>`` when training reproduces exactly what was sampled); unlabelled pairs are
    discarded; ``max_pairs_per_group`` keeps a random subset (reproducible from ``seed``).

    Returns:
        A list of ``{"prompt", "chosen", "rejected", "answer"}`` (TRL's preference format,
        completions without ``<eos>``).
    """
    prompts, completions, answers = list(prompts), list(completions), list(answers)
    n = len(completions)
    integer("group_size", group_size, 2)
    if len(prompts) != n or len(answers) != n:
        raise ValueError(f"prompts ({len(prompts)}), completions ({n}) and answers ({len(answers)}) "
                         "must have the same length")
    if n == 0 or n % group_size:
        raise ValueError(f"group_size={group_size} does not divide the number of completions {n}")
    if finished is None:
        finished = [True] * n
    elif isinstance(finished, torch.Tensor):
        finished = finished.tolist()
    if len(finished) != n:
        raise ValueError(f"finished has {len(finished)} entries but completions has {n}")
    integer("max_pairs_per_group", max_pairs_per_group, none_ok=True)
    if preference is not None and not callable(preference):
        raise ValueError(f"preference must be a callable (a task's .preference) or None, got {preference!r}")
    oracle = preference or functools.partial(_module_preference, tie_break=tie_break)
    rng = random.Random(f"{seed}|pairs")
    pairs = []
    for start in range(0, n, group_size):
        rows = range(start, start + group_size)
        if len({prompts[i] for i in rows}) != 1:
            raise ValueError(f"rows {start}..{start + group_size - 1} do not share one prompt: "
                             "groups must be G consecutive rows of the same prompt")
        cands = sorted({completions[i] for i in rows if finished[i]})
        answer = str(answers[start])
        group = []
        for i in range(len(cands)):
            for j in range(i + 1, len(cands)):
                lab = oracle(cands[i], cands[j], answer)
                if lab:
                    chosen, rejected = (cands[i], cands[j]) if lab > 0 else (cands[j], cands[i])
                    group.append({"prompt": prompts[start], "chosen": chosen, "rejected": rejected, "answer": answer})
        if max_pairs_per_group is not None and len(group) > max_pairs_per_group:
            group = rng.sample(group, max_pairs_per_group)
        pairs.extend(group)
    return pairs
