r"""Figures of notebooks 04 (REINFORCE on the small LM) and 09 (GRPO and its variants).

Every number comes from the course's trainers, run from the cached SFT start
(:func:`rlcourse.train.sft.sft_start`): :func:`rlcourse.train.reinforce.train_reinforce` with
``baseline`` in ``{"none", "mean", "rloo"}`` and :func:`rlcourse.train.grpo.train_grpo` with
``variant`` in ``{"grpo", "dr_grpo", "dapo", "gspo"}``. Nothing here re-implements a trainer.

Three kinds of function, as in the other plot modules:

* *experiments* (``*_experiment``): run the trainers (or, for the gradient-noise measurement,
  the same package functions a trainer step uses: :func:`rlcourse.train.common.sample_groups`,
  :func:`rlcourse.train.reinforce.reinforce_advantages`, :func:`rlcourse.losses.policy_gradient_loss`)
  and return plain data (histories and evaluations, no models). Results are memoised per
  process and arguments, so a notebook that ran an experiment and then calls a builder does
  not train twice;
* *plot* functions (``plot_*``): data in, a matplotlib ``Figure`` out;
* *builders* registered with :func:`rlcourse.plots.figure` (``04_…``, ``09_…``): no arguments,
  they run the experiment with the notebook's settings (``REINFORCE_SETTINGS``,
  ``GRPO_SETTINGS``, preset from ``$RLCOURSE_PRESET``) and return the figure.

Speed: the tiny model's tensors are small, and on a busy 2-core CPU several intra-op threads
cost far more than they save (a REINFORCE step was measured 20x slower with 2 threads than
with 1 on a loaded machine). The experiments therefore run with one thread on the CPU
(:func:`one_thread`) and restore the caller's setting.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from rlcourse.plots import figure

__all__ = [
    "REINFORCE_SETTINGS", "GRPO_SETTINGS", "PASS_KS", "BASELINE_LABELS", "VARIANT_LABELS",
    "one_thread", "clear_memo", "pass_at_k_curve", "run_summary",
    "reinforce_baselines_experiment", "gradient_noise_experiment", "grpo_variants_experiment",
    "eval_curve", "smoothed", "summary_table",
    "plot_learning_curves", "plot_pass_at_k", "plot_gradient_noise",
]

#: The budget of notebook 04: every baseline gets the same steps, prompts and samples.
REINFORCE_SETTINGS = dict(steps=60, lr=1e-4, prompts_per_step=16, group_size=8, eval_n=200, eval_every=10)
#: The budget of notebook 09: every variant gets the same steps, prompts, samples per prompt and
#: optimizer steps per batch (``num_iterations = 2``: the second step is off-policy, so the
#: ratios, the clipping and GSPO's sequence ratio actually act).
GRPO_SETTINGS = dict(steps=40, lr=1e-4, prompts_per_step=16, group_size=8, num_iterations=2, eval_n=200,
                     eval_every=10)
#: The k of the pass@k curves (one set of max(PASS_KS) samples per problem).
PASS_KS = (1, 2, 4, 8)

BASELINE_LABELS = {"none": "no baseline", "mean": "group-mean baseline", "rloo": "RLOO (leave-one-out)"}
VARIANT_LABELS = {"grpo": "GRPO", "dr_grpo": "Dr. GRPO", "dapo": "DAPO", "gspo": "GSPO"}
_STYLES = ["-", "--", ":", "-."]
_COLORS = ["C0", "C1", "C2", "C3", "C4", "C5"]
FIGSIZE = (10, 3.6)

_MEMO: dict = {}


def _preset() -> str:
    return os.environ.get("RLCOURSE_PRESET", "tiny")


@contextlib.contextmanager
def one_thread():
    """Run the body with one intra-op thread (see the module docstring); restore the setting after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def clear_memo() -> None:
    """Forget the memoised experiment results of this process."""
    _MEMO.clear()


def _memo_key(name: str, **kwargs):
    return (name,) + tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in kwargs.items()))


def _start(preset: str, seed: int, model, tokenizer, progress: bool):
    """A fresh copy of the starting policy: the given model, or the cached SFT start."""
    if model is not None:
        if tokenizer is None:
            raise ValueError("tokenizer is required when model is given")
        return copy.deepcopy(model), tokenizer
    from rlcourse.train.sft import sft_start

    return sft_start(preset, seed, progress=progress)


# ============================================================================ data

def pass_at_k_curve(model, tokenizer, task, n_eval: int, ks: Sequence[int] = PASS_KS, seed: int = 0) -> dict:
    """Held-out greedy accuracy and unbiased pass@k for every k in ``ks`` (one set of ``max(ks)``
    samples per problem, :func:`rlcourse.lm.evaluate`), on the same problems as the trainers' evaluation."""
    from rlcourse.lm import evaluate

    ks = tuple(int(k) for k in ks)
    out = evaluate(model, tokenizer, task.held_out(n_eval, seed=seed), ks=ks, n=max(ks), seed=seed, batch_size=512)
    return {"accuracy": out["accuracy"], "mean_reward": out["mean_reward"],
            "pass_at_k": {k: out[f"pass@{k}"] for k in ks}}


def run_summary(result, **extra) -> dict:
    """The plain data of a :class:`~rlcourse.train.common.TrainResult` (no model): history, evaluations, seconds."""
    return {"history": [dict(r) for r in result.history], "before": dict(result.before), "after": dict(result.after),
            "seconds": float(result.seconds), **extra}


def reinforce_baselines_experiment(preset: str = "tiny", steps: int = REINFORCE_SETTINGS["steps"], seed: int = 0, *,
                                   baselines: Sequence[str] = ("none", "mean", "rloo"),
                                   lr: float = REINFORCE_SETTINGS["lr"],
                                   prompts_per_step: int = REINFORCE_SETTINGS["prompts_per_step"],
                                   group_size: int = REINFORCE_SETTINGS["group_size"],
                                   eval_n: int = REINFORCE_SETTINGS["eval_n"],
                                   eval_every: int = REINFORCE_SETTINGS["eval_every"],
                                   ks: Sequence[int] = PASS_KS, model=None, tokenizer=None, task=None,
                                   progress: bool = False) -> dict:
    """REINFORCE from the same start, with the same seed and budget, for each baseline.

    Every run calls :func:`rlcourse.train.reinforce.train_reinforce` on a fresh copy of the start
    (``model``/``tokenizer`` if given, else the cached SFT start of ``preset``); with the same
    ``seed`` every run sees the same training problems at every step.

    Returns:
        ``{"config": {...}, "start": pass@k curve of the start, "runs": {baseline: run}}`` where a
        run is :func:`run_summary` plus ``"pass_at_k"``: the pass@k curve after training.
    """
    from rlcourse.train.reinforce import ReinforceConfig, train_reinforce
    from rlcourse.train.sft import default_task

    memo = model is None and task is None
    key = _memo_key("reinforce", preset=preset, steps=steps, seed=seed, baselines=baselines, lr=lr,
                    prompts_per_step=prompts_per_step, group_size=group_size, eval_n=eval_n,
                    eval_every=eval_every, ks=ks)
    if memo and key in _MEMO:
        return _MEMO[key]
    task = task or default_task()
    config = dict(preset=preset, steps=steps, seed=seed, lr=lr, prompts_per_step=prompts_per_step,
                  group_size=group_size, eval_n=eval_n, eval_every=eval_every)
    out = {"config": config, "runs": {}}
    with one_thread():
        m0, tok = _start(preset, seed, model, tokenizer, progress)
        out["start"] = pass_at_k_curve(m0, tok, task, eval_n, ks, seed=seed)
        for b in baselines:
            m, tok = _start(preset, seed, model, tokenizer, progress)
            cfg = ReinforceConfig(baseline=b, preset=preset, seed=seed, steps=steps, lr=lr, group_size=group_size,
                                  prompts_per_step=prompts_per_step, eval_n=eval_n, eval_every=eval_every)
            res = train_reinforce(cfg, m, tok, task=task, progress=progress)
            out["runs"][b] = run_summary(res, pass_at_k=pass_at_k_curve(res.model, tok, task, eval_n, ks,
                                                                         seed=seed)["pass_at_k"],
                                         samples=len(res.history) * prompts_per_step * group_size)
    if memo:
        _MEMO[key] = out
    return out


def gradient_noise_experiment(preset: str = "tiny", seed: int = 0, *, n_batches: int = 16,
                              prompts_per_step: int = REINFORCE_SETTINGS["prompts_per_step"],
                              group_size: int = REINFORCE_SETTINGS["group_size"],
                              shifts: Sequence[float] = (0.0, 1.0), baselines: Sequence[str] = ("none", "mean", "rloo"),
                              temperature: float = 1.0, model=None, tokenizer=None, task=None,
                              progress: bool = False) -> dict:
    r"""The noise of the REINFORCE gradient at the start, for each baseline and reward shift ``c``.

    Draws ``n_batches`` batches exactly as a training step does (``prompts_per_step`` x
    ``group_size`` samples, :func:`rlcourse.train.common.sample_groups`), and on the *same*
    samples computes the gradient :math:`\hat g` of the REINFORCE surrogate
    (:func:`rlcourse.losses.policy_gradient_loss`, ``seq_mean_token_sum``) with the advantages
    of :func:`rlcourse.train.reinforce.reinforce_advantages` for rewards :math:`r + c`. From the
    batches, with :math:`\bar g` their mean:

    * ``trace_cov``: :math:`\operatorname{tr}\operatorname{Cov}[\hat g]`, unbiased
      :math:`\frac{1}{n-1}\sum_k \lVert \hat g_k - \bar g \rVert^2`;
    * ``signal``: :math:`\lVert \mathbb{E}\hat g \rVert^2`, unbiased :math:`\lVert \bar g\rVert^2 - \operatorname{tr}\operatorname{Cov}/n`;
    * ``noise_to_signal``: ``trace_cov / signal`` — the number of batches whose average has a
      relative RMS error of 100 %; divide by 100 for 10 %. It does not depend on the scale of
      :math:`\hat g` (so a baseline that only rescales the gradient does not change it).

    Also ``mean_vs_rloo``: the largest relative difference, over batches, between the group-mean
    gradient and :math:`\frac{G-1}{G}` times the RLOO gradient (0 up to float32 rounding: the two
    advantages are proportional on every group), and ``reward_mean`` of the samples.
    """
    from rlcourse.losses import policy_gradient_loss
    from rlcourse.train.common import default_max_new_tokens, sample_groups
    from rlcourse.train.grpo import policy_forward
    from rlcourse.train.reinforce import reinforce_advantages
    from rlcourse.train.sft import default_task

    if not isinstance(n_batches, int) or n_batches < 2:
        raise ValueError(f"n_batches must be an integer >= 2, got {n_batches!r}")
    memo = model is None and task is None
    key = _memo_key("noise", preset=preset, seed=seed, n_batches=n_batches, prompts_per_step=prompts_per_step,
                    group_size=group_size, shifts=shifts, baselines=baselines, temperature=temperature)
    if memo and key in _MEMO:
        return _MEMO[key]
    task = task or default_task()
    shifts = [float(c) for c in shifts]
    with one_thread():
        m, tok = _start(preset, seed, model, tokenizer, progress)
        params = [p for p in m.parameters() if p.requires_grad]
        total = {(b, c): 0.0 for b in baselines for c in shifts}
        sq = {(b, c): 0.0 for b in baselines for c in shifts}
        worst, rewards = 0.0, []
        for k in range(n_batches):
            _, ro, r = sample_groups(m, tok, task, n_prompts=prompts_per_step, group_size=group_size,
                                     max_new_tokens=default_max_new_tokens(task), temperature=temperature,
                                     seed=seed, step=k)
            rewards.append(r.float().mean().item())
            logp, _ = policy_forward(m, ro.input_ids, ro.attention_mask, ro.response_mask, temperature)
            grads = {}
            for b in baselines:
                for c in shifts:
                    adv = reinforce_advantages(r + c, b, group_size)
                    loss = policy_gradient_loss(logp, adv, ro.response_mask, "seq_mean_token_sum")
                    g = torch.autograd.grad(-loss, params, retain_graph=True)  # the ascent direction
                    g = torch.cat([x.reshape(-1) for x in g]).double()
                    grads[(b, c)] = g
                    total[(b, c)] = total[(b, c)] + g
                    sq[(b, c)] += float(g @ g)
            if "mean" in baselines and "rloo" in baselines:
                for c in shifts:
                    gm, gr = grads[("mean", c)], grads[("rloo", c)]
                    scale = float(gr.norm()) or 1.0
                    worst = max(worst, float((gm - (group_size - 1) / group_size * gr).norm()) / scale)
    n = n_batches
    stats = {}
    for b in baselines:
        stats[b] = {}
        for c in shifts:
            mean = total[(b, c)] / n
            tr = (sq[(b, c)] - n * float(mean @ mean)) / (n - 1)
            signal = float(mean @ mean) - tr / n
            stats[b][c] = {"trace_cov": tr, "signal": signal,
                           "noise_to_signal": tr / signal if signal > 0 else math.inf}
    out = {"config": dict(preset=preset, seed=seed, n_batches=n, prompts_per_step=prompts_per_step,
                          group_size=group_size, temperature=temperature),
           "shifts": shifts, "stats": stats, "mean_vs_rloo": worst, "reward_mean": float(np.mean(rewards))}
    if memo:
        _MEMO[key] = out
    return out


def grpo_variants_experiment(preset: str = "tiny", steps: int = GRPO_SETTINGS["steps"], seed: int = 0, *,
                             variants: Sequence[str] = ("grpo", "dr_grpo", "dapo", "gspo"),
                             lr: float = GRPO_SETTINGS["lr"],
                             prompts_per_step: int = GRPO_SETTINGS["prompts_per_step"],
                             group_size: int = GRPO_SETTINGS["group_size"],
                             num_iterations: int = GRPO_SETTINGS["num_iterations"],
                             eval_n: int = GRPO_SETTINGS["eval_n"], eval_every: int = GRPO_SETTINGS["eval_every"],
                             ks: Sequence[int] = PASS_KS, model=None, tokenizer=None, task=None,
                             progress: bool = False) -> dict:
    """GRPO, Dr. GRPO, DAPO and GSPO from the same start, with the same seed and budget.

    Every run calls :func:`rlcourse.train.grpo.train_grpo` (each variant with its own defaults:
    advantage, aggregation, clip range, DAPO's dynamic sampling and overlong shaping) on a fresh
    copy of the start, with the same steps, prompts per step, G, learning rate and
    ``num_iterations``. DAPO's dynamic sampling may generate more than one round per step: the
    number of completions each run generated is reported as ``"samples"``.

    Returns:
        ``{"config": {...}, "start": pass@k curve of the start, "runs": {variant: run}}`` where a run
        is :func:`run_summary` plus ``"pass_at_k"`` (after training) and ``"samples"``.
    """
    from rlcourse.train.grpo import GRPOConfig, train_grpo
    from rlcourse.train.sft import default_task

    memo = model is None and task is None
    key = _memo_key("grpo", preset=preset, steps=steps, seed=seed, variants=variants, lr=lr,
                    prompts_per_step=prompts_per_step, group_size=group_size, num_iterations=num_iterations,
                    eval_n=eval_n, eval_every=eval_every, ks=ks)
    if memo and key in _MEMO:
        return _MEMO[key]
    task = task or default_task()
    config = dict(preset=preset, steps=steps, seed=seed, lr=lr, prompts_per_step=prompts_per_step,
                  group_size=group_size, num_iterations=num_iterations, eval_n=eval_n, eval_every=eval_every)
    out = {"config": config, "runs": {}}
    with one_thread():
        m0, tok = _start(preset, seed, model, tokenizer, progress)
        out["start"] = pass_at_k_curve(m0, tok, task, eval_n, ks, seed=seed)
        for v in variants:
            m, tok = _start(preset, seed, model, tokenizer, progress)
            cfg = GRPOConfig(variant=v, preset=preset, seed=seed, steps=steps, lr=lr, group_size=group_size,
                             prompts_per_step=prompts_per_step, num_iterations=num_iterations, eval_n=eval_n,
                             eval_every=eval_every)
            res = train_grpo(cfg, m, tok, task=task, progress=progress)
            rounds = sum(float(r.get("sampling_rounds", 1.0)) for r in res.history)
            out["runs"][v] = run_summary(
                res, pass_at_k=pass_at_k_curve(res.model, tok, task, eval_n, ks, seed=seed)["pass_at_k"],
                samples=int(round(rounds * prompts_per_step * group_size)))
    if memo:
        _MEMO[key] = out
    return out


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
    return reinforce_baselines_experiment(_preset(), seed=0)


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
                                        f"{max(PASS_KS)} samples each)")


@figure("04_gradient_noise")
def build_gradient_noise() -> plt.Figure:
    """Noise-to-signal ratio of the REINFORCE gradient at the start, per baseline and reward shift."""
    return plot_gradient_noise(gradient_noise_experiment(_preset(), seed=0))


@figure("09_grpo_variants")
def build_grpo_variants() -> plt.Figure:
    """GRPO vs Dr. GRPO vs DAPO vs GSPO on the same task, seed and budget."""
    data = grpo_variants_experiment(_preset(), seed=0)
    c = data["config"]
    return plot_learning_curves(data["runs"], VARIANT_LABELS, show_samples=True,
                                title=f"GRPO variants ({c['steps']} steps x {c['prompts_per_step']} prompts x "
                                      f"{c['group_size']} samples, {c['num_iterations']} updates per batch, "
                                      f"lr {c['lr']:g})")
