"""A second, harder task: multi-term sums written step by step (running sums, then the answer).

A problem is a prompt such as ``"12+7+30+5="``. The model writes the running sums after each
operation, a ``;``, then the final answer, and stops::

    12+7+30+5=  ->  "19,49,54;54"  <eos>
                     '--------'  '-'
                     the steps    the final answer (the last running sum)

The number of terms varies from problem to problem (``min_terms .. max_terms``), so the
length of a correct response varies several-fold: with the defaults (2 to 6 one-digit terms,
the calibrated task) from ``"3+4="`` -> ``"7;7"`` (4 tokens with ``<eos>``) to
``"9+9+9+9+9+9="`` -> ``"18,27,36,45,54;54"`` (18). A model can write fewer
steps than needed (skip a running sum, or write no steps at all), more (repeat one), or slip
inside a step; the final answer is the last running sum, so a slip in a step carries into the
answer. This is what makes the task harder for RL than the one-token answers of
:class:`~rlcourse.lm.task.ArithmeticTask`: correctness depends on several decisions made in
sequence, and the response length is the policy's to choose.

Reward (an *outcome* reward, as in RL with verifiable rewards): the final answer is the text
after the last ``;`` (the whole completion when there is none), judged by
:func:`rlcourse.lm.task.is_correct` (math-verify's ``parse`` / ``verify``, with its exact-integer
fast path). ``well_formed`` means "the completion matches ``S(,S)*;F`` with S and F integer
literals, and it ended with ``<eos>``":

.. math::

    r(y, a) = \\mathbb{1}[\\text{correct}(\\text{final}(y), a)]
              - c_{\\text{format}}\\,\\mathbb{1}[\\neg\\,\\text{well\\_formed}(y)]

with :math:`c_{\\text{format}}` = ``format_penalty`` (0.5 by default, as in task.py; 0 turns the
format term off). For ``12+7+30+5=`` (answer 54; two-digit terms, ``ChainTask(digits=2)``):

==========================  ===========  ======  ============================================
completion                  well formed  reward  why
==========================  ===========  ======  ============================================
``"19,49,54;54"`` + eos     yes          1.0     correct, every step right
``"19,59,64;64"`` + eos     yes          0.0     a step slipped (30 added as 40): wrong answer
``"19,59,64;54"`` + eos     yes          1.0     wrong steps, right answer: only the outcome
                                                 is rewarded (see below)
``"49;54"`` + eos           yes          1.0     steps skipped, right answer
``"19,49,54;55"`` + eos     yes          0.0     wrong final answer
``"54"`` + eos              no           0.5     no steps and no ``;``: format penalty
``"19,49,54;54"`` (no eos)  no           0.5     truncated: did not stop
``"19,49,54"`` + eos        no           -0.5    no final answer (nothing after ``;``)
``"19,49;5x"`` + eos        no           -0.5    wrong and malformed
==========================  ===========  ======  ============================================

Decision: wrong steps with a right final answer earn the full reward. The reward is the
outcome's, as in RL with verifiable rewards (DeepSeek-R1, DAPO): nothing checks the reasoning.
:func:`step_errors` measures how often a correct answer comes with wrong steps, so that this can
be watched rather than assumed (it is a diagnostic, never part of the reward). The same holds
for skipped steps: ``"49;54"`` is well formed and correct. On this task a correct answer after
a wrong step is rare (a second slip must cancel the first), so the outcome reward is, in
practice, a reward on the steps.

Demonstrations (:meth:`ChainTask.sft_examples`). The SFT start must be imperfect in a way RL
can fix, and fix *gradually*. One systematic error shared by every step (a dropped carry, or
the arithmetic task's "answer plus one") is undone by GRPO within 20–30 steps: it is one
decision. So the default demonstrator has many separate wrong facts instead (``slip="facts"``):
a fixed share of the (units of the running result, units of the term) pairs is written off by
one with probability ``wrong_fraction``, and the slip carries into the later steps and the
answer. Calibration on the 2-core CPU: ``benchmarks/chain_task.py`` and
``benchmarks/chain_task_calibration.md``.

Held-out split: a problem is held out when a keyed hash of its prompt is below
``held_out_fraction`` (the order of the terms matters here: it changes the running sums, so
``7+12+3`` and ``12+7+3`` are different problems). Deterministic, independent of sampling, and
no held-out problem is ever sampled for training.

Interface: the same as :class:`~rlcourse.lm.task.ArithmeticTask` (``sample``, ``held_out``,
``is_held_out``, ``max_answer_chars``) plus the task's own ``reward`` / ``batch_rewards`` /
``sft_examples`` / ``preference`` methods, since its completions are not the bare answer.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Sequence

import torch

from .task import (FORMAT_PENALTY, REWARD_CORRECT, REWARD_WRONG, finished_flags, is_correct, keyed_unit,
                   sample_split)

CHAIN_OPS = "+-"
SLIPS = ("carry", "facts", "once")  # the demonstrator's kinds of error (ChainTask.sft_examples)
STEP_SEP = ","   # between running sums
FINAL_SEP = ";"  # between the steps and the final answer

_NUM = r"\s*-?\d+\s*"
_WELL_FORMED = re.compile(rf"{_NUM}(?:,{_NUM})*;{_NUM}")
_INT = re.compile(_NUM)


@dataclass(frozen=True)
class ChainProblem:
    """One multi-term problem: ``terms`` combined left to right by ``ops`` (``len(ops) == len(terms) - 1``)."""

    terms: tuple
    ops: str

    @property
    def prompt(self) -> str:
        """``"12+7+30+5="``."""
        out = str(self.terms[0])
        for op, t in zip(self.ops, self.terms[1:]):
            out += f"{op}{t}"
        return out + "="

    @property
    def steps(self) -> tuple:
        """The running results after each operation; the last one is the answer."""
        acc, out = self.terms[0], []
        for op, t in zip(self.ops, self.terms[1:]):
            acc = acc + t if op == "+" else acc - t
            out.append(acc)
        return tuple(out)

    @property
    def answer(self) -> str:
        """The final answer, e.g. ``"54"`` (what the reward compares the final part against)."""
        return str(self.steps[-1])

    @property
    def solution(self) -> str:
        """The correct completion, e.g. ``"19,49,54;54"``."""
        return format_solution(self.steps)

    def __str__(self) -> str:
        return f"{self.prompt}{self.solution}"


def format_solution(steps: Sequence[int], final: int | None = None) -> str:
    """``"s1,s2,...,sk;final"`` (``final`` defaults to the last step)."""
    steps = list(steps)
    if not steps:
        raise ValueError("steps must hold at least one running result")
    final = steps[-1] if final is None else final
    return STEP_SEP.join(str(s) for s in steps) + FINAL_SEP + str(final)


def final_answer(completion: str) -> str:
    """The final-answer part of a completion: the text after the last ``;`` (all of it when there is none)."""
    if not isinstance(completion, str):
        raise ValueError(f"completion must be a string, got {type(completion).__name__}")
    return completion.rsplit(FINAL_SEP, 1)[-1]


def parse_steps(completion: str) -> list[int] | None:
    """The running sums a well-formed completion wrote (before ``;``), or None if it is malformed."""
    if not isinstance(completion, str) or not _WELL_FORMED.fullmatch(completion):
        return None
    return [int(s) for s in completion.rsplit(FINAL_SEP, 1)[0].split(STEP_SEP)]


def step_errors(problem: ChainProblem, completion: str) -> dict:
    """Diagnostic (never part of the reward): how the written steps compare with the true running sums.

    Returns ``{"well_formed", "n_steps" (written), "n_needed", "steps_right"}``: ``steps_right`` is
    True when the written steps are exactly the true running sums (None when malformed).
    """
    written = parse_steps(completion)
    if written is None:
        return {"well_formed": False, "n_steps": 0, "n_needed": len(problem.steps), "steps_right": None}
    return {"well_formed": True, "n_steps": len(written), "n_needed": len(problem.steps),
            "steps_right": tuple(written) == problem.steps}


@dataclass(frozen=True)
class ChainTask:
    """Multi-term problems ``t1 op t2 op ... = `` written out as running results, then the answer.

    The defaults are the calibrated task (``benchmarks/chain_task.py``): 2 to 6 one-digit terms, ``+``.
    Two-digit terms were too hard for the tiny model in a few CPU minutes of SFT.

    Args:
        min_terms, max_terms: the number of terms is uniform on ``[min_terms, max_terms]`` (>= 2).
        digits: largest number of digits of a term (terms are uniform on ``[0, 10**digits)``).
        ops: the operators to draw from, a subset of ``"+-"`` (running results may go negative with ``-``).
        held_out_fraction: share of all problems reserved for evaluation.
        split_seed: key of the hash that decides the split.
        format_penalty: subtracted from the reward of a malformed or truncated completion (0: off).
        slip, confused_fraction, skip_fraction: the demonstrator's errors (:meth:`sft_examples`); fields
            of the task, so that the SFT trainer's demonstrations and the cache key of a start follow them.
    """

    min_terms: int = 2
    max_terms: int = 6
    digits: int = 1
    ops: str = "+"
    held_out_fraction: float = 0.1
    split_seed: int = 0
    format_penalty: float = FORMAT_PENALTY
    slip: str = "facts"
    confused_fraction: float = 0.3
    skip_fraction: float = 0.0

    def __post_init__(self):
        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.min_terms) or self.min_terms < 2:
            raise ValueError(f"min_terms must be an integer >= 2 (a chain needs two terms), got {self.min_terms!r}")
        if not is_int(self.max_terms) or not self.min_terms <= self.max_terms <= 12:
            raise ValueError(f"max_terms must be an integer in [min_terms={self.min_terms}, 12], "
                             f"got {self.max_terms!r}")
        if not is_int(self.digits) or not 1 <= self.digits <= 6:
            raise ValueError(f"digits must be an integer in [1, 6], got {self.digits!r}")
        if not isinstance(self.ops, str) or not self.ops or any(o not in CHAIN_OPS for o in self.ops) \
                or len(set(self.ops)) != len(self.ops):
            raise ValueError(f"ops must be a non-empty string of distinct operators from {CHAIN_OPS!r}, "
                             f"got {self.ops!r}")
        if not isinstance(self.held_out_fraction, (int, float)) or not 0 < self.held_out_fraction < 1:
            raise ValueError(f"held_out_fraction must lie in (0, 1), got {self.held_out_fraction!r}")
        if not is_int(self.split_seed):
            raise ValueError(f"split_seed must be an integer, got {self.split_seed!r}")
        if not isinstance(self.format_penalty, (int, float)) or not 0 <= self.format_penalty <= 1:
            raise ValueError(f"format_penalty must lie in [0, 1], got {self.format_penalty!r}")
        if self.slip not in SLIPS:
            raise ValueError(f"slip must be 'carry', 'facts' or 'once', got {self.slip!r}")
        if not isinstance(self.confused_fraction, (int, float)) or not 0 <= self.confused_fraction <= 1:
            raise ValueError(f"confused_fraction must lie in [0, 1], got {self.confused_fraction!r}")
        if not isinstance(self.skip_fraction, (int, float)) or not 0 <= self.skip_fraction <= 1:
            raise ValueError(f"skip_fraction must lie in [0, 1], got {self.skip_fraction!r}")

    # -- problems ------------------------------------------------------------------------------
    def problem(self, terms: Sequence[int], ops: str | None = None) -> ChainProblem:
        """A checked problem of this task from its terms (``ops`` default: all ``+``)."""
        terms = tuple(terms)
        ops = "+" * (len(terms) - 1) if ops is None else ops
        if not self.min_terms <= len(terms) <= self.max_terms:
            raise ValueError(f"terms must hold between {self.min_terms} and {self.max_terms} numbers, "
                             f"got {len(terms)}: {terms!r}")
        hi = 10**self.digits
        if any(not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < hi for t in terms):
            raise ValueError(f"terms must be integers in [0, {hi}), got {terms!r}")
        if not isinstance(ops, str) or len(ops) != len(terms) - 1 or any(o not in self.ops for o in ops):
            raise ValueError(f"ops must be {len(terms) - 1} operators from {self.ops!r}, got {ops!r}")
        return ChainProblem(terms, ops)

    def is_held_out(self, problem: ChainProblem) -> bool:
        """True when ``problem`` belongs to the held-out split (a keyed hash of its prompt)."""
        return keyed_unit(f"{self.split_seed}|{problem.prompt}") < self.held_out_fraction

    def _draw(self, rng: random.Random) -> ChainProblem:
        k = rng.randint(self.min_terms, self.max_terms)
        hi = 10**self.digits
        return ChainProblem(tuple(rng.randrange(hi) for _ in range(k)),
                            "".join(rng.choice(self.ops) for _ in range(k - 1)))

    def sample(self, n: int, split: str = "train", seed: int = 0, unique: bool = False) -> list[ChainProblem]:
        """``n`` problems of ``split`` (``"train"`` or ``"held_out"``), reproducibly from ``seed``.

        The number of terms is uniform on ``[min_terms, max_terms]``, each term uniform on
        ``[0, 10**digits)``; draws from the other split are rejected. ``unique=True`` returns
        distinct problems.
        """
        return sample_split(self, n, split, seed, unique, rng_key=f"chain|{seed}|{split}")

    def held_out(self, n: int = 500, seed: int = 0) -> list[ChainProblem]:
        """A fixed evaluation set: ``n`` distinct held-out problems."""
        return self.sample(n, "held_out", seed=seed, unique=True)

    @property
    def max_answer_chars(self) -> int:
        """Longest correct completion in characters (steps, separators and final answer), signs included.

        The trainers give the model ``max_answer_chars + 2`` new tokens (``<eos>`` and one spare).
        """
        hi = 10**self.digits - 1
        width = len(str(self.max_terms * hi)) + (1 if "-" in self.ops else 0)
        n_steps = self.max_terms - 1
        return n_steps * width + (n_steps - 1) + 1 + width

    # -- reward ------------------------------------------------------------------------------
    def is_well_formed(self, completion: str, finished: bool = True) -> bool:
        """``S(,S)*;F`` with integer literals (spaces around each allowed), ended with ``<eos>``."""
        return bool(finished) and _WELL_FORMED.fullmatch(completion) is not None

    def is_correct(self, completion: str, answer: str | int) -> bool:
        """Whether the final-answer part of ``completion`` states ``answer`` (:func:`rlcourse.lm.task.is_correct`)."""
        return is_correct(final_answer(completion), answer)

    def reward(self, completion: str, answer: str | int, finished: bool = True) -> float:
        """:math:`\\mathbb{1}[\\text{correct}] - c_{\\text{format}}\\,\\mathbb{1}[\\text{malformed}]` (module table).

        Args:
            completion: the generated text, without ``<eos>``.
            answer: the true final answer (``problem.answer``).
            finished: whether the model emitted ``<eos>`` (False: truncated at the length limit).
        """
        correct = self.is_correct(completion, answer)
        penalty = 0.0 if self.is_well_formed(completion, finished) else float(self.format_penalty)
        return (REWARD_CORRECT if correct else REWARD_WRONG) - penalty

    def batch_rewards(self, completions: Sequence[str], answers: Sequence[str | int],
                      finished: Sequence[bool] | torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`reward` for each completion: a float32 tensor ``(N,)`` (signature of
        :func:`rlcourse.lm.task.batch_rewards`: one answer per completion, ``finished`` default all True)."""
        completions, answers = list(completions), list(answers)
        if len(completions) != len(answers):
            raise ValueError(f"completions has {len(completions)} entries but answers has {len(answers)}")
        finished = finished_flags(finished, len(completions))
        return torch.tensor([self.reward(c, a, f) for c, a, f in zip(completions, answers, finished)],
                            dtype=torch.float32)

    # -- SFT data ------------------------------------------------------------------------------
    def sft_examples(self, n: int, wrong_fraction: float = 0.5, seed: int = 0, offsets: Sequence[int] = (10,),
                     skip_fraction: float | None = None, slip: str | None = None,
                     confused_fraction: float | None = None) -> list[dict]:
        """Demonstrations ``{"prompt", "completion", "answer", "correct"}``, some with slips, some with a skip.

        Every slip *carries through*: the later steps are computed from the wrong value and the
        final answer is the last (wrong) step, so a wrong demonstration is a consistent chain.

        * ``slip="carry"``: at every step that has a carry (``+``: the units digits
          add up to 10 or more; ``-``: a borrow), the demonstrator drops it with probability
          ``wrong_fraction`` (``acc + t - 10`` instead of ``acc + t``; ``offsets`` is unused).
          A *systematic*, step-dependent error: with ``wrong_fraction > 0.5`` the most likely
          continuation at a carry is the wrong one, so greedy decoding fails on every problem
          with a carry, while a problem with ``m`` carries is sampled right with probability
          about ``(1 - wrong_fraction)**m`` — long chains are rarely right, short ones often.
        * ``slip="facts"`` (default): the demonstrator has wrong "addition facts": a fixed share
          ``confused_fraction`` of the pairs (units digit of the running result, units digit of
          the term), chosen by :meth:`confused_pairs`, and at a step that meets one of them it
          writes the result off by one (+1 or -1, fixed per pair) with probability
          ``wrong_fraction``. Many *separate* systematic errors: with ``wrong_fraction > 0.5``
          greedy decoding fails on every problem that meets a confused pair, and RL has to undo
          each pair on its own, as it meets it — so the gains come over many steps.
        * ``slip="once"``: with probability ``wrong_fraction`` one step, chosen uniformly, is off
          by ``d`` drawn from ``offsets`` (a random, non-systematic slip).
        * With probability ``skip_fraction`` (independently) one running result is left out
          (never the last one): a shorter demonstration that is still right, but asks the model
          to add two terms in one step.

        ``correct`` is whether the final answer is right. Problems come from the training split.
        ``slip``, ``confused_fraction`` and ``skip_fraction`` default to the task's fields (what the
        SFT trainer uses: it passes ``n``, ``wrong_fraction``, ``seed`` and ``offsets`` only).
        """
        slip = self.slip if slip is None else slip
        confused_fraction = self.confused_fraction if confused_fraction is None else confused_fraction
        skip_fraction = self.skip_fraction if skip_fraction is None else skip_fraction
        if slip not in ("carry", "facts", "once"):
            raise ValueError(f"slip must be 'carry', 'facts' or 'once', got {slip!r}")
        confused = self.confused_pairs(confused_fraction) if slip == "facts" else {}
        if not isinstance(wrong_fraction, (int, float)) or not 0 <= wrong_fraction <= 1:
            raise ValueError(f"wrong_fraction must lie in [0, 1], got {wrong_fraction!r}")
        if not isinstance(skip_fraction, (int, float)) or not 0 <= skip_fraction <= 1:
            raise ValueError(f"skip_fraction must lie in [0, 1], got {skip_fraction!r}")
        offsets = list(offsets)
        if not offsets or any(not isinstance(d, int) or isinstance(d, bool) or d == 0 for d in offsets):
            raise ValueError(f"offsets must be a non-empty list of non-zero integers, got {offsets!r}")
        rng = random.Random(f"chain|{seed}|sft")
        out = []
        for p in self.sample(n, "train", seed=seed):
            steps = list(p.steps)
            if slip == "carry":
                acc, steps = p.terms[0], []
                for op, t in zip(p.ops, p.terms[1:]):
                    if op == "+":
                        carry, acc = acc % 10 + t % 10 >= 10, acc + t
                        if carry and rng.random() < wrong_fraction:
                            acc -= 10  # the carry dropped
                    else:
                        borrow, acc = acc % 10 < t % 10, acc - t
                        if borrow and rng.random() < wrong_fraction:
                            acc += 10  # the borrow dropped
                    steps.append(acc)
            elif slip == "facts":
                acc, steps = p.terms[0], []
                for op, t in zip(p.ops, p.terms[1:]):
                    d = confused.get((acc % 10, t % 10), 0)
                    acc = acc + t if op == "+" else acc - t
                    if d and rng.random() < wrong_fraction:
                        acc += d  # a wrong fact: off by one
                    steps.append(acc)
            elif rng.random() < wrong_fraction:
                i, d = rng.randrange(len(steps)), rng.choice(offsets)
                steps = steps[:i] + [s + d for s in steps[i:]]  # the slip carries through
            shown = steps
            if len(steps) > 1 and rng.random() < skip_fraction:
                j = rng.randrange(len(steps) - 1)
                shown = steps[:j] + steps[j + 1:]
            out.append({"prompt": p.prompt, "completion": format_solution(shown, steps[-1]), "answer": p.answer,
                        "correct": steps[-1] == p.steps[-1]})
        return out

    def confused_pairs(self, fraction: float = 0.3) -> dict:
        """The demonstrator's wrong facts for ``slip="facts"``: ``{(units of acc, units of term): +1 or -1}``.

        Each of the 100 pairs is confused when a keyed hash (``split_seed``) falls below
        ``fraction``; the sign of its error comes from the same hash. Fixed for the task.
        """
        if not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
            raise ValueError(f"confused_fraction must lie in [0, 1], got {fraction!r}")
        out = {}
        for a in range(10):
            for b in range(10):
                h = hashlib.blake2b(f"{self.split_seed}|fact|{a}|{b}".encode(), digest_size=8).digest()
                u = int.from_bytes(h, "big") / 2.0**64
                if u < fraction:
                    out[(a, b)] = 1 if h[0] & 1 else -1
        return out

    # -- preference oracle -----------------------------------------------------------------------
    def preference(self, completion_a: str, completion_b: str, answer: str | int, finished_a: bool = True,
                   finished_b: bool = True) -> int:
        """+1 if ``a`` is preferred, -1 if ``b`` is, 0 on a tie: the higher :meth:`reward` wins; on equal
        rewards, the final answer closer to ``answer`` (both integer literals at different distances)."""
        answer = str(answer)
        ra, rb = self.reward(completion_a, answer, finished_a), self.reward(completion_b, answer, finished_b)
        if ra != rb:
            return 1 if ra > rb else -1
        fa, fb = final_answer(completion_a), final_answer(completion_b)
        if _INT.fullmatch(fa) and _INT.fullmatch(fb) and _INT.fullmatch(answer):
            da, db = abs(int(fa) - int(answer)), abs(int(fb) - int(answer))
            if da != db:
                return 1 if da < db else -1
        return 0


__all__ = ["ChainProblem", "ChainTask", "format_solution", "final_answer", "parse_steps", "step_errors",
           "CHAIN_OPS", "STEP_SEP", "FINAL_SEP"]
