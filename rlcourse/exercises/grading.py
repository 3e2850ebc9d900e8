r"""The property-check engine: grade an implementation by the properties it must have.

A grader is a list of :class:`Property` objects. Each property tries a list of inputs, from
the smallest to the largest (edge cases first: a length-1 sequence, an all-masked row, a
constant group, G = 2, ...), and stops at the first input on which the candidate is wrong:
that input is reported, so the student sees the *smallest* input that shows the bug.

A property fails by raising :class:`Failure`. Anything the candidate raises is caught:
``NotImplementedError`` marks the whole exercise "not implemented"; any other exception
becomes a failed property that names the exception and the input that triggered it. The
student never sees a traceback from the grader.

Helpers:

* :func:`for_cases` builds a property from a list of ``(description, case)`` and a test;
* :func:`agrees` builds the common "agrees with the package's function" property;
* :func:`compare` compares a returned value with the expected one (shape, then values);
* :func:`masked_cases` draws the (B, T) masks of a list of cases, optionally with an all-masked row;
* :func:`bandit_group_gradient` enumerates every group of a softmax bandit: the exact expected
  gradient of a group-advantage estimator, next to the true gradient.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
import itertools
from typing import Any, Callable, Iterable, Iterator

import torch

DTYPE = torch.float64

#: Status of a graded exercise.
PASSED, FAILED, NOT_IMPLEMENTED, ERROR = "passed", "failed", "not implemented", "error"


class Failure(Exception):
    """Raised by a property: ``detail`` says what was expected and seen, ``input`` on which input."""

    def __init__(self, detail: str, input: str = ""):
        super().__init__(detail)
        self.detail = detail
        self.input = input


@dataclass(frozen=True)
class Property:
    """A named check ``run(candidate, seed)`` that returns on success and raises :class:`Failure` otherwise."""

    name: str
    run: Callable[[Any, int], None]


@dataclass(frozen=True)
class Row:
    """The outcome of one property."""

    property: str
    passed: bool
    input: str = ""
    detail: str = ""


@dataclass
class Result:
    """The outcome of grading one exercise."""

    id: str
    points: int
    status: str
    rows: list[Row] = field(default_factory=list)
    message: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def failures(self) -> list[dict]:
        """One dict per failed property (or one for "not implemented" / an error)."""
        if self.status in (NOT_IMPLEMENTED, ERROR):
            return [{"property": self.status, "input": "", "detail": self.message}]
        return [{"property": r.property, "input": r.input, "detail": r.detail} for r in self.rows if not r.passed]

    def to_json(self) -> dict:
        return {"id": self.id, "passed": self.passed, "points": self.points if self.passed else 0,
                "max_points": self.points, "status": self.status, "failures": self.failures()}

    def table(self) -> str:
        """The table a student sees under a ``check(...)`` cell."""
        head = f"{self.id}: {self.status.upper() if self.status != PASSED else 'PASSED'}"
        head += f" ({self.points if self.passed else 0}/{self.points} points)"
        if self.status in (NOT_IMPLEMENTED, ERROR):
            return f"{head}\n  {self.message}"
        width = max([len(r.property) for r in self.rows] + [8])
        lines = [head, f"  {'property':<{width}}  status  failing input / what was seen"]
        for r in self.rows:
            status = "ok" if r.passed else "FAIL"
            extra = "" if r.passed else f"{r.input}\n  {'':<{width}}          {r.detail}" if r.input else r.detail
            lines.append(f"  {r.property:<{width}}  {status:<6}  {extra}".rstrip())
        return "\n".join(lines)


def dumps(result: Result) -> str:
    return json.dumps(result.to_json(), sort_keys=True)


# --------------------------------------------------------------------------- running


def run_properties(exercise_id: str, points: int, properties: Iterable[Property], candidate, seed: int) -> Result:
    """Run every property on ``candidate``; never raises for the candidate's own errors."""
    t0 = time.perf_counter()
    rows = []
    for prop in properties:
        try:
            prop.run(candidate, seed)
            rows.append(Row(prop.name, True))
        except NotImplementedError:
            return Result(exercise_id, points, NOT_IMPLEMENTED, [],
                          "not implemented: replace `raise NotImplementedError()` by your code",
                          time.perf_counter() - t0)
        except Failure as f:
            rows.append(Row(prop.name, False, f.input, f.detail))
        except Exception as e:  # an error of the candidate outside any case (e.g. a wrong return type)
            rows.append(Row(prop.name, False, "", f"raised {type(e).__name__}: {_short(str(e))}"))
    status = PASSED if all(r.passed for r in rows) else FAILED
    return Result(exercise_id, points, status, rows, "", time.perf_counter() - t0)


def _short(s: str, n: int = 160) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 1] + "…"


# --------------------------------------------------------------------------- describing inputs


def describe(x) -> str:
    """A short, readable description of an input: small tensors in full, large ones by shape."""
    if isinstance(x, dict):
        return ", ".join(f"{k}={describe(v)}" for k, v in x.items())
    if isinstance(x, torch.Tensor):
        if x.numel() <= 12:
            vals = x.detach().to(DTYPE).tolist() if x.is_floating_point() else x.tolist()
            return _fmt_nested(vals)
        return f"<tensor {tuple(x.shape)}>"
    if isinstance(x, float):
        return f"{x:.4g}"
    return repr(x)


def _fmt_nested(v) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_fmt_nested(u) for u in v) + "]"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


# --------------------------------------------------------------------------- comparing


def compare(got, expected, atol: float = 1e-8, rtol: float = 1e-6, what: str = "result") -> str | None:
    """``None`` if ``got`` matches ``expected`` (shape and values), else a description of the mismatch."""
    exp = torch.as_tensor(expected, dtype=DTYPE).detach()
    try:
        g = torch.as_tensor(got.detach() if isinstance(got, torch.Tensor) else got, dtype=DTYPE)
    except (TypeError, ValueError, RuntimeError):
        return f"{what} must be a tensor or a number, got {type(got).__name__}"
    if tuple(g.shape) != tuple(exp.shape):
        return f"{what} has shape {tuple(g.shape)}, expected {tuple(exp.shape)}"
    if not bool(torch.isfinite(g).all()) and bool(torch.isfinite(exp).all()):
        return f"{what} has non-finite entries: {describe(g)}"
    if not torch.allclose(g, exp, atol=atol, rtol=rtol):
        diff = (g - exp).abs()
        worst = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape)) if diff.dim() else ()
        at = f"; worst entry {list(worst)}: {float(g[worst]):.10g} vs {float(exp[worst]):.10g}" if worst else ""
        return f"{what} {describe(g)}, expected {describe(exp)} (max error {float(diff.max()):.3g}{at})"
    return None


def for_cases(name: str, make_cases: Callable[[int], list[tuple[str, Any]]],
              test: Callable[[Any, Any], str | None]) -> Property:
    """A property that runs ``test(candidate, case)`` on each case, smallest first.

    ``make_cases(seed)`` returns ``[(description, case), ...]``; ``test`` returns ``None`` when the
    candidate is right on the case, else a message. The first failing case is reported.
    """

    def run(candidate, seed):
        for desc, case in make_cases(seed):
            try:
                msg = test(candidate, case)
            except (NotImplementedError, Failure):
                raise
            except Exception as e:
                raise Failure(f"raised {type(e).__name__}: {_short(str(e))}", desc) from None
            if msg:
                raise Failure(msg, desc)

    return Property(name, run)


def agrees(name: str, make_cases: Callable[[int], list[dict]], reference: Callable[..., Any],
           atol: float = 1e-8, rtol: float = 1e-6, describe_case: Callable[[dict], str] = describe) -> Property:
    """The candidate, called with each case's keyword arguments, agrees with ``reference``."""

    def cases(seed):
        return [(describe_case(c), c) for c in make_cases(seed)]

    def test(fn, case):
        expected = reference(**case)
        got = fn(**{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in case.items()})
        return compare(got, expected, atol, rtol)

    return for_cases(name, cases, test)


def value_close(name: str, exact: Callable[[], Any], tol: float, explain: str = "") -> Property:
    """For predictions: the answer equals the exact value (computed now, by enumeration) within ``tol``."""

    def run(answer, seed):
        truth = exact()
        if isinstance(truth, dict):
            if not isinstance(answer, dict) or set(answer) != set(truth):
                raise Failure(f"answer must be a dict with keys {sorted(truth)}, got {answer!r}")
            for k in truth:
                _one(answer[k], truth[k], tol, f"[{k!r}]")
            return
        _one(answer, truth, tol, "")

    def _one(a, t, tol, where):
        if isinstance(t, str):
            if a != t:
                raise Failure(f"answer{where} = {a!r} is not right{': ' + explain if explain else ''}")
            return
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a):
            raise Failure(f"answer{where} must be a finite number, got {a!r}")
        if abs(a - t) > tol:
            raise Failure(f"answer{where} = {a:.4g} is off by more than {tol:g}{': ' + explain if explain else ''}")

    return Property(name, run)


# --------------------------------------------------------------------------- random inputs


def gen(seed: int, k: int = 0) -> torch.Generator:
    """A generator for case ``k`` of a property under the student's ``seed``."""
    return torch.Generator().manual_seed(1_000_003 * seed + 7919 * k + 17)


def randn(g: torch.Generator, *shape, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=g, dtype=DTYPE)


def rand_mask(g: torch.Generator, B: int, T: int, kind: str = "right") -> torch.Tensor:
    """(B, T) float 0/1 masks: ``right`` padding, ``left`` prompt then response then padding, or ``holes``."""
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    pos = torch.arange(T)
    if kind == "right":
        m = pos[None, :] < lengths[:, None]
    elif kind == "left":
        start = torch.randint(0, T, (B,), generator=g)
        m = (pos[None, :] >= start[:, None]) & (pos[None, :] < (start + lengths)[:, None])
    elif kind == "holes":
        m = torch.rand(B, T, generator=g) < 0.6
        m[:, 0] = True
    else:
        raise ValueError(f"kind must be right, left or holes, got {kind!r}")
    return m.to(DTYPE)


def log_softmax_rows(g: torch.Generator, *shape, scale: float = 1.0) -> torch.Tensor:
    return torch.log_softmax(randn(g, *shape, scale=scale), dim=-1)


def masked_cases(seed: int, shapes: Iterable[tuple[int, int, str]], *,
                 empty_row: int | None = None) -> Iterator[tuple[torch.Generator, int, int, torch.Tensor]]:
    """``(g, B, T, mask)`` for each ``(B, T, kind)`` of ``shapes``: case ``k`` draws from ``gen(seed, k)``,
    its mask from :func:`rand_mask` (the generator then goes on to draw the case's other tensors).

    ``empty_row=i``: in every batch where row ``i`` is not the last (``B >= i + 2``), row ``i`` is all masked.
    """
    for k, (B, T, kind) in enumerate(shapes):
        g = gen(seed, k)
        m = rand_mask(g, B, T, kind)
        if empty_row is not None and B >= empty_row + 2:
            m[empty_row] = 0.0
        yield g, B, T, m


# --------------------------------------------------------------------------- exact references


def bandit_group_gradient(theta: torch.Tensor, rewards: torch.Tensor, group_size: int,
                          advantages: Callable[[torch.Tensor, int], Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``(E[estimate], grad J)`` for a softmax bandit (logits ``theta``, arm rewards ``rewards``, K arms).

    The estimate is ``(1/G) sum_i A_i grad_theta log pi(a_i)`` for a group of ``G = group_size`` i.i.d. arms,
    with ``A = advantages(rewards of the group, G)``; its expectation is a sum over all K^G groups, each
    weighted by its probability. ``grad J = pi * (r - E_pi[r])``.
    """
    K = theta.shape[-1]
    pi = torch.softmax(theta, -1)
    grad_j = pi * (rewards - (pi * rewards).sum())
    expected = torch.zeros(K, dtype=DTYPE)
    for arms in itertools.product(range(K), repeat=group_size):
        a = torch.tensor(arms)
        adv = torch.as_tensor(advantages(rewards[a].clone(), group_size), dtype=DTYPE)
        scores = torch.nn.functional.one_hot(a, K).to(DTYPE) - pi
        expected += pi[a].prod() * (adv[:, None] * scores).mean(0)
    return expected, grad_j
