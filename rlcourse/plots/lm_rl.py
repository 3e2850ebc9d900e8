r"""Figures of notebook 04 (REINFORCE on the small LM).

*Plot* functions (``plot_*``) take the results of the experiments of
:mod:`rlcourse.experiments.lm_rl` and return a matplotlib ``Figure``; the *builders* registered
with :func:`rlcourse.plots.figure` (``04_…``) are ``plot(experiment(settings))`` with
the notebook's settings (preset from ``$RLCOURSE_PRESET``). Nothing here trains. (Notebook 09's figure,
``09_grpo_variants``, is :func:`rlcourse.plots.experiments.plot_grpo_variants`.)
"""

from __future__ import annotations

import math
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np

from rlcourse.experiments import lm_rl as X
from rlcourse.experiments.settings import preset as _preset
from rlcourse.plots import figure

__all__ = [
    "BASELINE_LABELS", "eval_curve", "smoothed", "summary_table",
    "plot_learning_curves", "plot_pass_at_k", "plot_gradient_noise",
]

BASELINE_LABELS = {"none": "no baseline", "mean": "group-mean baseline", "rloo": "RLOO (leave-one-out)"}
_STYLES = ["-", "--", ":", "-."]
_COLORS = ["C0", "C1", "C2", "C3", "C4", "C5"]
FIGSIZE = (10, 3.6)

def eval_curve(run: dict) -> tuple[np.ndarray, np.ndarray]:
    """Held-out greedy accuracy against steps done: the start (``before``, step 0) then every
    ``eval_accuracy`` of the history (measured after step ``s``, so at ``s + 1`` steps done)."""
    xs, ys = [], []
    if "accuracy" in run.get("before", {}):
        xs.append(0)
        ys.append(run["before"]["accuracy"])
    for row in run["history"]:
        if "eval_accuracy" in row:
            xs.append(int(row["step"]) + 1)
            ys.append(float(row["eval_accuracy"]))
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def smoothed(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average over ``window`` steps (shorter at the start), same length as ``values``."""
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    v = np.asarray(values, dtype=float)
    c = np.concatenate([[0.0], np.cumsum(v)])
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def summary_table(runs: dict, labels: dict | None = None, start: dict | None = None) -> str:
    """A text table of runs: wall time, completions generated, held-out greedy accuracy, pass@1, pass@8."""
    labels = labels or {}
    head = f"{'run':<24}{'train s':>9}{'samples':>9}{'greedy acc':>12}{'pass@1':>9}{'pass@8':>9}"
    lines = [head, "-" * len(head)]
    if start is not None:
        pk = start.get("pass_at_k", {})
        lines.append(f"{'start (SFT)':<24}{'-':>9}{'-':>9}{start['accuracy']:>12.3f}"
                     f"{pk.get(1, float('nan')):>9.3f}{pk.get(8, float('nan')):>9.3f}")
    for name, run in runs.items():
        a = run["after"]
        samples = run.get("samples", "-")
        lines.append(f"{labels.get(name, name):<24}{run['seconds']:>9.1f}{samples!s:>9}{a['accuracy']:>12.3f}"
                     f"{a.get('pass@1', float('nan')):>9.3f}{a.get('pass@8', float('nan')):>9.3f}")
    return "\n".join(lines)


# ============================================================================ plots

def plot_learning_curves(runs: dict, labels: dict | None = None, *, smooth: int = 5, title: str | None = None,
                         show_samples: bool = False, show_raw: bool = True) -> plt.Figure:
    """Two panels for runs on the same budget: the mean reward of each step's samples (moving
    average over ``smooth`` steps; raw values faint) and the held-out greedy accuracy (``eval_curve``).

    ``runs`` maps a name to a run (:func:`run_summary`: ``history``, ``before``, ``seconds``); the
    legend shows each run's training wall time (and completions generated if ``show_samples``);
    ``show_raw=False`` leaves out the faint per-step rewards (a smaller PNG).
    Overlapping curves stay visible: each run has its own line style.
    """
    if not runs:
        raise ValueError("runs must contain at least one run")
    labels = labels or {}
    fig, (ax_r, ax_a) = plt.subplots(1, 2, figsize=FIGSIZE)
    for i, (name, run) in enumerate(runs.items()):
        color, style = _COLORS[i % len(_COLORS)], _STYLES[i % len(_STYLES)]
        steps = np.asarray([r["step"] for r in run["history"]], dtype=float)
        reward = np.asarray([r["reward_mean"] for r in run["history"]], dtype=float)
        label = f"{labels.get(name, name)} ({run['seconds']:.0f} s"
        if show_samples and run.get("samples") is not None:
            label += f", {run['samples']} samples"
        label += ")"
        if show_raw:
            ax_r.plot(steps, reward, color=color, alpha=0.2, lw=0.8)
        ax_r.plot(steps, smoothed(reward, smooth), color=color, ls=style, lw=1.8, label=label)
        x, y = eval_curve(run)
        ax_a.plot(x, y, color=color, ls=style, marker="osD^"[i % 4], ms=6 - 1.0 * (i % 4),
                  fillstyle="none" if i % 2 else "full", lw=1.6, label=labels.get(name, name))
    ax_r.set(xlabel="step", ylabel=f"mean reward of the step's samples\n(moving average, {smooth} steps)")
    ax_a.set(xlabel="steps done", ylabel="held-out greedy accuracy")
    ax_r.legend(fontsize=7.5, loc="lower right", title="training wall time", title_fontsize=7.5)
    ax_a.legend(fontsize=7.5, loc="lower right")
    for ax in (ax_r, ax_a):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_pass_at_k(curves: dict, *, title: str | None = None) -> plt.Figure:
    """pass@k against k (log scale) for several policies: ``curves`` maps a label to ``{k: pass@k}``."""
    if not curves:
        raise ValueError("curves must contain at least one curve")
    fig, ax = plt.subplots(figsize=(6, 3.6))
    markers = ["o", "s", "^", "D", "v", "P"]
    for i, (label, pk) in enumerate(curves.items()):
        ks = sorted(int(k) for k in pk)
        ax.plot(ks, [pk[k] for k in ks], color="k" if i == 0 else _COLORS[(i - 1) % len(_COLORS)],
                ls=_STYLES[i % len(_STYLES)], marker=markers[i % len(markers)], ms=7 - 1.2 * (i % 4),
                fillstyle="none" if i % 2 else "full", lw=1.4, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
    ax.set(xlabel="k (samples per problem)", ylabel="held-out pass@k", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_gradient_noise(data: dict, labels: dict | None = None) -> plt.Figure:
    """Noise-to-signal ratio of the REINFORCE gradient per baseline (bars), one group per reward
    shift ``c`` (:func:`gradient_noise_experiment`)."""
    labels = labels or BASELINE_LABELS
    stats, shifts = data["stats"], data["shifts"]
    if not stats:
        raise ValueError("data['stats'] is empty")
    names = list(stats)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(names)
    x = np.arange(len(shifts))
    for i, b in enumerate(names):
        vals = [stats[b][c]["noise_to_signal"] for c in shifts]
        bars = ax.bar(x + (i - (len(names) - 1) / 2) * width, vals, width, color=_COLORS[i % len(_COLORS)],
                      label=labels.get(b, b))
        for rect, v in zip(bars, vals):
            ax.annotate(f"{v:.2f}", (rect.get_x() + rect.get_width() / 2, rect.get_height()), ha="center",
                        va="bottom", fontsize=7)
    ax.set_xticks(x, [f"rewards r + {c:g}" if c >= 0 else f"rewards r - {-c:g}" for c in shifts])
    ax.set_ylim(0, 1.4 * max(s["noise_to_signal"] for b in stats.values() for s in b.values()
                               if math.isfinite(s["noise_to_signal"])))
    ax.set_ylabel("tr Cov[g] / |E g|²  (per batch)")
    ax.set_title(f"REINFORCE gradient noise at the SFT start ({data['config']['n_batches']} batches of "
                 f"{data['config']['prompts_per_step']}x{data['config']['group_size']} samples)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper center", ncol=len(names))
    fig.tight_layout()
    return fig


# ============================================================================ builders

def _reinforce_data() -> dict:
    return X.reinforce_baselines_experiment(_preset(), seed=0)


@figure("04_reinforce_baselines")
def build_reinforce_baselines() -> plt.Figure:
    """REINFORCE with no baseline, the group mean and RLOO: same start, seed and budget."""
    data = _reinforce_data()
    c = data["config"]
    return plot_learning_curves(data["runs"], BASELINE_LABELS,
                                title=f"REINFORCE on the small LM ({c['steps']} steps x {c['prompts_per_step']} "
                                      f"prompts x {c['group_size']} samples, lr {c['lr']:g})")


@figure("04_pass_at_k")
def build_pass_at_k() -> plt.Figure:
    """pass@k of the SFT start and after each REINFORCE run."""
    data = _reinforce_data()
    curves = {"SFT start": data["start"]["pass_at_k"]}
    curves.update({f"after REINFORCE, {BASELINE_LABELS.get(b, b)}": r["pass_at_k"] for b, r in data["runs"].items()})
    return plot_pass_at_k(curves, title=f"held-out pass@k ({data['config']['eval_n']} problems, "
                                        f"{max(X.PASS_KS)} samples each)")


@figure("04_gradient_noise")
def build_gradient_noise() -> plt.Figure:
    """Noise-to-signal ratio of the REINFORCE gradient at the start, per baseline and reward shift."""
    return plot_gradient_noise(X.gradient_noise_experiment(_preset(), seed=0))

