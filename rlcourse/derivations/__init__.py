"""Every derivation of the course, checked numerically.

Each module states one result (docstring, LaTeX), computes both sides of it on the toy
token-level MDP (:mod:`rlcourse.toymdp`) or on small tensors, and registers a ``checks()``
function that returns :class:`~rlcourse.derivations.base.Check` results: exact, Monte Carlo,
negative control (a deliberately wrong variant that must be rejected) and, where one fits,
a sympy proof. ``rlcourse verify`` runs them all.
"""

from __future__ import annotations

import importlib
import time

from rlcourse.derivations.base import REGISTRY, Check, Derivation

# The order of the course.
MODULES = (
    "policy_gradient",
    "eglp",
    "reward_to_go",
    "baseline",
    "performance_difference",
    "importance_ratios",
    "gae",
    "ppo_clip",
    "ppo_penalty",
    "kl_estimators",
    "rlhf_gradient",
    "grpo_advantage",
    "dynamic_sampling",
    "bradley_terry",
    "kl_optimum",
    "dpo",
    "grpo_objective",
    "loss_aggregation",
    "self_test",
)


def load_all() -> dict[str, Derivation]:
    """Import every derivation module (which registers it) and return the registry in order."""
    modules = {importlib.import_module(f"rlcourse.derivations.{m}").__name__: i for i, m in enumerate(MODULES)}
    ordered = sorted(REGISTRY.values(), key=lambda d: modules.get(d.module, len(MODULES)))
    return {d.name: d for d in ordered}


def run(only: str | list[str] | None = None) -> list[tuple[Derivation, list[Check], float]]:
    """Run the checks of every derivation (or of those named in ``only``).

    Returns a list of (derivation, checks, seconds).
    """
    registry = load_all()
    names = list(registry) if only is None else ([only] if isinstance(only, str) else list(only))
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ValueError(f"only: unknown derivation(s) {unknown}; known: {list(registry)}")
    out = []
    for n in names:
        t0 = time.perf_counter()
        try:
            checks = registry[n].run()
        except Exception as e:  # noqa: BLE001  a derivation that raises is a failed check, the others still run
            checks = [Check(n, f"checks() raised {type(e).__name__}", "error", "no exception",
                            f"{type(e).__name__}: {e}", "none", False, None,
                            f"{type(e).__name__}: {e}")]
        out.append((registry[n], checks, time.perf_counter() - t0))
    return out


__all__ = ["Check", "Derivation", "MODULES", "load_all", "run"]
