"""The machinery every derivation module uses: a check result, four kinds of check, a registry.

A derivation module defines small functions that compute the two sides of an identity,
and one ``checks()`` function, registered with :func:`derivation`, that returns a list of
:class:`Check` results. Five kinds of check:

* ``exact``: two numbers (or tensors) that must agree to a tolerance (about 1e-10 in float64);
* ``monte_carlo``: a sample mean that must lie within ``n_se`` standard errors of the exact
  value (fixed seed);
* ``negative_control``: a deliberately wrong variant run through the same comparison; the
  control *passes* when the comparison *rejects* the wrong variant;
* ``symbolic``: a sympy identity, ``simplify(lhs - rhs) == 0`` under the assumptions declared on
  the symbols (no ``force=True``: log(x^2) = 2 log x is rejected for a real x);
* ``inequality``: an exact check that a quantity lies on one side of a bound.

Each derivation names its sources by the keys of the course's reference list
(``rlhf-derivation``, ``unified-rl-llm``, ``ppo-post-training``, ``roy-policy-gradients``,
``wei-rl-llm``). A derivation that raises is reported as one failed check of kind ``error``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import sympy
import torch

KINDS = ("exact", "monte_carlo", "negative_control", "symbolic", "inequality", "error")

#: Reference keys -> titles (the course's reference list).
SOURCES = {
    "rlhf-derivation": '"RLHF Derivation" (blog post, 2025-07-31)',
    "unified-rl-llm": '"A Unified Perspective on RL for LLMs" (blog post, 2024-10-29, updated 2025-12)',
    "ppo-post-training": '"PPO in post training" (blog post, 2025-07-14)',
    "roy-policy-gradients": 'S. Roy, "Policy Gradients: The Math Behind RLHF" (blog post)',
    "wei-rl-llm": 'Ke Wei (with Jiakai Liu), "Algorithmic and Theoretical Foundations of RL: Introduction of RL for LLMs" (lecture slides, Fudan University)',
}


@dataclass
class Check:
    """One comparison: what was compared, the expected and observed values, the tolerance."""

    derivation: str
    check: str
    kind: str
    expected: float | list | str
    observed: float | list | str
    tolerance: float | str
    passed: bool
    error: float | None = None
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _summary(x) -> float | list | str:
    if isinstance(x, str):
        return x
    t = torch.as_tensor(x, dtype=torch.float64).detach()
    if t.numel() == 1:
        return float(t)
    return [float(v) for v in t.flatten()]


def exact(derivation: str, check: str, expected, observed, tol: float = 1e-10, detail: str = "") -> Check:
    """Compare two numbers or tensors elementwise: passed if max |expected - observed| <= tol."""
    e = torch.as_tensor(expected, dtype=torch.float64).detach()
    o = torch.as_tensor(observed, dtype=torch.float64).detach()
    if e.shape != o.shape:
        raise ValueError(f"{check}: expected has shape {tuple(e.shape)}, observed {tuple(o.shape)}")
    err = float((e - o).abs().max()) if e.numel() else 0.0
    ok = bool(torch.isfinite(o).all()) and err <= tol
    return Check(derivation, check, "exact", _summary(e), _summary(o), tol, ok, err, detail)


def inequality(derivation: str, check: str, bound: float, observed, *, above: bool = True,
               detail: str = "") -> Check:
    """An exact check of an inequality: ``observed >= bound`` (or ``<=`` when ``above=False``)."""
    o = torch.as_tensor(observed, dtype=torch.float64).detach()
    ok = bool(torch.isfinite(o).all()) and bool((o >= bound).all() if above else (o <= bound).all())
    err = float((bound - o).clamp(min=0).max() if above else (o - bound).clamp(min=0).max())
    exp = f">= {bound}" if above else f"<= {bound}"
    return Check(derivation, check, "inequality", exp, _summary(o.min() if above else o.max()), 0.0, ok, err, detail)


def monte_carlo(derivation: str, check: str, expected, samples: torch.Tensor, n_se: float = 4.0,
                detail: str = "") -> Check:
    """Check that the mean of ``samples`` (first dim = sample index) is within ``n_se`` standard
    errors of ``expected``, componentwise. The tolerance reported is the largest n_se * SE."""
    s = torch.as_tensor(samples, dtype=torch.float64).detach()
    e = torch.as_tensor(expected, dtype=torch.float64).detach()
    n = s.shape[0]
    mean = s.mean(0)
    se = s.std(0, unbiased=True) / n ** 0.5
    if mean.shape != e.shape:
        raise ValueError(f"{check}: expected has shape {tuple(e.shape)}, sample mean {tuple(mean.shape)}")
    dev = (mean - e).abs()
    # Components with zero variance must match exactly (up to float error).
    bound = torch.maximum(n_se * se, torch.full_like(se, 1e-12))
    ok = bool(torch.isfinite(mean).all()) and bool((dev <= bound).all())
    ratio = float((dev / bound).max())
    return Check(derivation, check, "monte_carlo", _summary(e), _summary(mean), float(bound.max()), ok,
                 float(dev.max()), detail or f"n={n} samples; worst deviation = {ratio:.2f} x tolerance")


def negative_control(wrong: Check, detail: str = "") -> Check:
    """Turn the check of a deliberately wrong variant into a negative control: it passes when the
    same comparison rejected the wrong variant."""
    return Check(wrong.derivation, wrong.check, "negative_control", wrong.expected, wrong.observed,
                 wrong.tolerance, not wrong.passed, wrong.error, detail or wrong.detail)


def symbolic(derivation: str, check: str, lhs, rhs, detail: str = "") -> Check:
    """A sympy identity: passed if ``simplify(lhs - rhs) == 0`` under the symbols' declared assumptions.

    Logarithms are expanded only where sympy can prove it valid (``expand_log`` without
    ``force``): declare a symbol ``positive=True`` when the identity needs it.
    """
    diff = sympy.simplify(sympy.expand(lhs - rhs))
    if diff != 0:
        diff = sympy.simplify(sympy.expand_log(sympy.expand(diff)))
    return Check(derivation, check, "symbolic", str(rhs), str(sympy.simplify(lhs)), "exact", diff == 0,
                 None, detail)


@dataclass
class Derivation:
    name: str
    title: str
    source: str
    module: str
    run: Callable[[], list[Check]] = field(repr=False)


REGISTRY: dict[str, Derivation] = {}


def derivation(name: str, title: str, source: str):
    """Register a module's ``checks()`` function under ``name`` for ``rlcourse verify``.

    ``source``: comma-separated reference keys (see :data:`SOURCES`), or "" for none.
    """
    unknown = [k.strip() for k in source.split(",") if k.strip() and k.strip() not in SOURCES]
    if unknown:
        raise ValueError(f"derivation {name!r}: unknown source key(s) {unknown}; known: {list(SOURCES)}")

    def wrap(fn: Callable[[], list[Check]]):
        if name in REGISTRY:
            raise ValueError(f"derivation {name!r} registered twice")
        REGISTRY[name] = Derivation(name, title, source, fn.__module__, fn)
        return fn

    return wrap
