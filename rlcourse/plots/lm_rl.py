r"""The gradient-noise figure of notebook 04 (``04_gradient_noise``), and :func:`smoothed`.

:func:`plot_gradient_noise` draws :func:`rlcourse.experiments.lm_rl.gradient_noise`; its builder is
``plot(experiment(settings))`` with the notebook's settings (preset from ``$RLCOURSE_PRESET``). Nothing here
trains. Notebook 04's training runs (``04_reinforce_baselines``) and notebook 09's (``09_grpo_variants``) are the
runner's experiments, drawn by :mod:`rlcourse.plots.experiments`.
"""

from __future__ import annotations

import math
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np

from rlcourse.experiments import lm_rl as X
from rlcourse.experiments.settings import preset as _preset
from rlcourse.plots import figure

__all__ = ["BASELINE_LABELS", "smoothed", "plot_gradient_noise"]

BASELINE_LABELS = {"none": "no baseline", "mean": "group-mean baseline", "rloo": "RLOO (leave-one-out)"}
_STYLES = ["-", "--", ":", "-."]
_COLORS = ["C0", "C1", "C2", "C3", "C4", "C5"]
FIGSIZE = (10, 3.6)

def smoothed(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average over ``window`` steps (shorter at the start), same length as ``values``."""
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    v = np.asarray(values, dtype=float)
    c = np.concatenate([[0.0], np.cumsum(v)])
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


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

@figure("04_gradient_noise")
def build_gradient_noise() -> plt.Figure:
    """Noise-to-signal ratio of the REINFORCE gradient at the start, per baseline and reward shift."""
    return plot_gradient_noise(X.gradient_noise_experiment(_preset(), seed=0))

