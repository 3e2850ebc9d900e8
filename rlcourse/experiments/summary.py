r"""Means and intervals over seeds: the one place where the experiments' numbers are summarised.

An experiment returns *tidy rows* ``{"arm", "seed", "step", <metric>: value, ...}`` (one row per
arm, seed and step; a metric may be absent from some rows). Everything here groups those rows
and reduces over **seeds**, never over steps or arms:

* :func:`t_interval` — the mean of ``n`` numbers and its two-sided Student-t confidence interval,

  .. math::

      \bar x \pm t_{n-1,\,(1+\text{level})/2}\; \frac{s}{\sqrt n},\qquad
      s^2 = \frac{1}{n-1}\sum_i (x_i - \bar x)^2;

  with ``n = 1`` the interval is undefined and reported as ``None``;
* :func:`summarize` — that interval per arm, step and metric (the ``summary`` of
  ``rlcourse experiment run --json``), plus per arm and metric the *final* value (last step)
  and the *peak* (each seed's maximum over steps), each with its interval over seeds;
* :func:`curve` — one arm's mean and interval as arrays, for the plots (:mod:`rlcourse.plots`).

The t quantile is exact (Abramowitz & Stegun 26.7.3–4: the Student-t CDF in closed form for an
integer number of degrees of freedom, inverted by bisection), so that no statistics library is
needed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable

import numpy as np

__all__ = ["result_summary", "LEVEL", "INTERVAL", "t_quantile", "t_interval", "summarize", "curve", "metrics_of", "arms_of"]

#: The confidence level of every interval of the experiments.
LEVEL = 0.95
#: How the summary's intervals are computed (written into every summary).
INTERVAL = "mean ± Student-t 95% confidence interval over seeds (n - 1 degrees of freedom); None when n = 1"

KEYS = ("arm", "seed", "step")


def _t_two_sided(t: float, df: int) -> float:
    r""":math:`P(|T| \le t)` for Student's t with ``df`` degrees of freedom (A&S 26.7.3 and 26.7.4)."""
    theta = math.atan(t / math.sqrt(df))
    c, s = math.cos(theta), math.sin(theta)
    if df % 2 == 1:
        if df == 1:
            return 2 * theta / math.pi
        term, total = c, c
        for k in range(3, df - 1, 2):  # terms cos^3 .. cos^(df-2)
            term *= c * c * (k - 1) / k
            total += term
        return 2 / math.pi * (theta + s * total)
    term, total = 1.0, 1.0
    for k in range(2, df - 1, 2):  # terms cos^2 .. cos^(df-2)
        term *= c * c * (k - 1) / k
        total += term
    return s * total


def t_quantile(level: float, df: int) -> float:
    r"""The two-sided Student-t critical value :math:`t^*` with :math:`P(|T| \le t^*) = \text{level}`.

    ``t_quantile(0.95, 2) = 4.303``, ``t_quantile(0.95, 9) = 2.262``; tends to 1.960 as ``df`` grows.
    """
    if not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")
    if not isinstance(df, int) or isinstance(df, bool) or df < 1:
        raise ValueError(f"df must be an integer >= 1, got {df!r}")
    lo, hi = 0.0, 1.0
    while _t_two_sided(hi, df) < level:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_two_sided(mid, df) < level:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def t_interval(values: Iterable[float], level: float = LEVEL) -> dict:
    """``{"n", "mean", "lo", "hi", "std"}`` of ``values`` (one per seed): the mean and its Student-t
    interval at ``level``; ``lo = hi = std = None`` when there is a single value."""
    x = [float(v) for v in values]
    if not x:
        raise ValueError("values must not be empty (a summary needs at least one seed)")
    bad = [v for v in x if not math.isfinite(v)]
    if bad:
        raise ValueError(f"values must be finite, got {bad[:3]} among {len(x)} values")
    n = len(x)
    mean = sum(x) / n
    if n == 1:
        return {"n": 1, "mean": mean, "lo": None, "hi": None, "std": None}
    std = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1))
    half = t_quantile(level, n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "lo": mean - half, "hi": mean + half, "std": std}


def metrics_of(rows: list[dict]) -> list[str]:
    """The metric names in ``rows`` (every numeric key but arm, seed and step), in first-seen order."""
    out: dict[str, None] = {}
    for r in rows:
        for k, v in r.items():
            if k not in KEYS and isinstance(v, (int, float)) and not isinstance(v, bool):
                out.setdefault(k)
    return list(out)


def arms_of(rows: list[dict]) -> list[str]:
    """The arms in ``rows``, in first-seen order."""
    return list(dict.fromkeys(r["arm"] for r in rows))


def _check_rows(rows) -> None:
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"rows must be a non-empty list of tidy rows, got {type(rows).__name__}"
                         f"{'' if not isinstance(rows, list) else ' (empty)'}")
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or any(k not in r for k in KEYS):
            raise ValueError(f"rows[{i}] must be a dict with keys {KEYS}, got {r!r:.120}")


def summarize(rows: list[dict], level: float = LEVEL) -> dict:
    """Per arm, step and metric: the mean over seeds and its interval.

    Returns ``{"interval": INTERVAL, "level", "seeds", "by_step": [{"arm", "step", "metric", "n", "mean",
    "lo", "hi", "std"}, ...], "final": [...], "peak": [...]}``. ``final`` is each arm's last step
    (per metric: the value at the largest step the seed has for it), ``peak`` each seed's maximum
    over steps; both reduced over seeds the same way.
    """
    _check_rows(rows)
    metrics = metrics_of(rows)
    by_step: dict[tuple, list[float]] = defaultdict(list)
    per_seed: dict[tuple, list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        for m in metrics:
            if m in r and r[m] is not None:
                by_step[(r["arm"], r["step"], m)].append(r[m])
                per_seed[(r["arm"], m, r["seed"])].append((r["step"], r[m]))
    arms = arms_of(rows)
    out_step = [{"arm": a, "step": s, "metric": m, **t_interval(v, level)}
                for (a, s, m), v in sorted(by_step.items(), key=lambda kv: (arms.index(kv[0][0]), kv[0][1],
                                                                            metrics.index(kv[0][2])))]
    final, peak = [], []
    for a in arms:
        for m in metrics:
            seeds = {sd: pts for (aa, mm, sd), pts in per_seed.items() if aa == a and mm == m}
            if not seeds:
                continue
            final.append({"arm": a, "metric": m, **t_interval([max(p)[1] for p in seeds.values()], level)})
            peak.append({"arm": a, "metric": m, **t_interval([max(v for _, v in p) for p in seeds.values()], level)})
    return {"interval": INTERVAL, "level": level, "seeds": sorted({r["seed"] for r in rows}),
            "by_step": out_step, "final": final, "peak": peak}


def curve(summary: dict, arm: str, metric: str) -> dict[str, np.ndarray]:
    """One arm's curve from a :func:`summarize` result: numpy arrays ``step``, ``mean``, ``lo``, ``hi``
    (``lo``/``hi`` equal the mean where the interval is undefined, i.e. one seed)."""
    pts = [p for p in summary["by_step"] if p["arm"] == arm and p["metric"] == metric]
    if not pts:
        known = sorted({(p["arm"], p["metric"]) for p in summary["by_step"]})
        raise ValueError(f"no summary for arm={arm!r}, metric={metric!r}; known (arm, metric): {known[:12]}")
    mean = np.array([p["mean"] for p in pts])
    return {"step": np.array([p["step"] for p in pts]), "mean": mean,
            "lo": np.array([p["mean"] if p["lo"] is None else p["lo"] for p in pts]),
            "hi": np.array([p["mean"] if p["hi"] is None else p["hi"] for p in pts])}


def format_interval(point: dict, fmt: str = ".3f") -> str:
    """``"mean [lo, hi]"`` of one summary row (just the mean when there is no interval: one seed)."""
    if point.get("lo") is None:
        return f"{point['mean']:{fmt}}"
    return f"{point['mean']:{fmt}} [{point['lo']:{fmt}}, {point['hi']:{fmt}}]"


def interval(table: list[dict], arm: str, metric: str, step: int | None = None, fmt: str = ".3f") -> str:
    """The formatted interval of the row of ``table`` (a summary's ``by_step``, ``final`` or ``peak``)
    for ``arm`` and ``metric`` (and ``step``, for ``by_step``); ``KeyError`` naming them if absent."""
    for row in table:
        if row["arm"] == arm and row["metric"] == metric and (step is None or row.get("step") == step):
            return format_interval(row, fmt)
    raise KeyError(f"no summary row for arm={arm!r}, metric={metric!r}, step={step!r}")


def result_summary(result, name: str) -> dict:
    """The ``summary`` of ``result``, which must be what :func:`rlcourse.experiments.runner.run` (or
    ``rlcourse experiment run NAME --json``) returned for the experiment ``name``; ``ValueError`` otherwise."""
    if not isinstance(result, dict) or result.get("name") != name or "summary" not in result:
        got = result.get("name") if isinstance(result, dict) else type(result).__name__
        raise ValueError(f"result must be the result of the {name!r} experiment (runner.run or --json), got {got!r}")
    return result["summary"]
