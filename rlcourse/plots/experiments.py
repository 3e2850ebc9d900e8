r"""Figures of the runner's experiments (:mod:`rlcourse.experiments.runner`): ``ppo_toy`` (notebook 06) and
``critic_gae`` (notebook 05) on the toy MDP; ``reinforce_baselines`` (notebook 04) and ``grpo_variants``
(notebook 09) on the small LM's chain task.

A *plot* function takes the plain-data result of :func:`rlcourse.experiments.runner.run` (or the object
printed by ``rlcourse experiment run NAME --json``) and draws the mean over seeds with its interval
shaded (:func:`rlcourse.experiments.summary.curve`: Student-t 95 % over seeds). Nothing here trains:
the builders ``06_ppo_toy`` and ``05_critic_gae`` are ``plot(run(NAME, seeds=3))`` with the default config;
``09_grpo_variants`` draws the full run the notebook saved (:func:`rlcourse.experiments.runner.results_dir`), and
runs it there first (about 20 minutes on one core) only if it has not been saved.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from rlcourse.experiments.summary import curve, result_summary
from rlcourse.plots import figure

__all__ = ["plot_ppo_toy", "plot_critic_gae", "plot_reinforce_baselines", "plot_grpo_variants", "GRPO_VARIANT_LABELS",
           "saved_run", "saved_run_figure", "SEEDS"]

#: Seeds of the figures' runs.
SEEDS = 3
FIGSIZE = (12, 3.6)
_METHOD_COLORS = {"vanilla": "tab:red", "clip": "tab:blue", "penalty": "tab:green", "unclipped": "tab:orange"}
_STYLES = ["-", "--", ":", "-."]


def saved_run(name: str) -> dict:
    """The full run of the experiment ``name`` over :data:`SEEDS` seeds that a notebook saved
    (:func:`rlcourse.experiments.runner.results_dir`), computed and saved there first if it is missing (minutes:
    the notebook says how long). What the figure builders of the LM experiments draw."""
    from rlcourse.experiments import runner

    return runner.run(name, SEEDS, out=runner.results_dir(name), progress=False)


def saved_run_figure(name: str, experiment: str):
    """Decorate ``plot(result) -> Figure``: register the figure ``name``, ``plot`` of the saved full run of
    ``experiment`` (:func:`saved_run`); ``plot`` itself is returned unchanged."""

    def wrap(plot):
        def build() -> plt.Figure:
            return plot(saved_run(experiment))

        build.__name__ = f"build_{name}"
        build.__doc__ = f"{plot.__name__} of the saved full run of {experiment!r}."
        figure(name)(build)
        return plot

    return wrap


def _band(ax, summary, arm, metric, label=None, **style):
    c = curve(summary, arm, metric)
    line, = ax.plot(c["step"], c["mean"], label=label, **style)
    ax.fill_between(c["step"], c["lo"], c["hi"], color=line.get_color(), alpha=0.18, linewidth=0)
    return c


def budget_text(budget: dict) -> str:
    """``"200 steps x 16 prompts x 8 samples, lr 0.0001"``: a :class:`~rlcourse.experiments.budget.Budget` as a
    result's config records it."""
    return (f"{budget['steps']} steps x {budget['prompts_per_step']} prompts x {budget['group_size']} samples, "
            f"lr {budget['lr']:g}")


def _n_seeds(result) -> int:
    return len(result.get("seeds", [])) or len(result["summary"]["seeds"])


def _peak(summary, arm, metric) -> dict:
    return next(p for p in summary["peak"] if p["arm"] == arm and p["metric"] == metric)


def plot_ppo_toy(result: dict, early: int = 15) -> plt.Figure:
    """Exact J per iteration (every method × K); the largest KL(old‖new) one iteration reached, per method
    and K; and KL(old‖new) per iteration at the largest K over the first ``early`` iterations."""
    summary = result_summary(result, "ppo_toy")
    cfg = result["config"]
    fig, axes = plt.subplots(1, 3, figsize=FIGSIZE)
    ks, methods = list(cfg["epochs"]), list(cfg["methods"])
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        color = _METHOD_COLORS.get(m)
        for i, k in enumerate(ks):
            _band(axes[0], summary, f"{m} K={k}", "J", label=f"{m} K={k}", color=color,
                  linestyle=_STYLES[i % len(_STYLES)], linewidth=1.4)
        peaks = [_peak(summary, f"{m} K={k}", "kl") for k in ks]
        mean = np.array([p["mean"] for p in peaks])
        err = np.array([[p["mean"] - (p["lo"] if p["lo"] is not None else p["mean"]) for p in peaks],
                        [(p["hi"] if p["hi"] is not None else p["mean"]) - p["mean"] for p in peaks]])
        err[0] = np.minimum(err[0], mean * 0.999)  # a log axis cannot show a lower end <= 0
        axes[1].bar(np.arange(len(ks)) + (j - (len(methods) - 1) / 2) * width, mean, width, yerr=err, capsize=3,
                    color=color, label=m)
        c = curve(summary, f"{m} K={ks[-1]}", "kl")
        keep = (c["step"] > 0) & (c["step"] <= early)
        line, = axes[2].plot(c["step"][keep], c["mean"][keep], color=color, marker="o", markersize=3, label=m)
        axes[2].fill_between(c["step"][keep], np.maximum(c["lo"][keep], c["mean"][keep] * 1e-2), c["hi"][keep],
                             color=color, alpha=0.18, linewidth=0)
    axes[0].set(xlabel="iteration (one sampled batch each)", ylabel="exact J(θ)", title="objective")
    axes[0].legend(fontsize=7, ncol=len(methods), loc="lower right")
    axes[1].set(xticks=range(len(ks)), xticklabels=[f"K = {k}" for k in ks], yscale="log",
                ylabel="max over iterations of KL(π_old ‖ π_new)", title="largest step of a run")
    axes[1].legend(fontsize=7)
    axes[2].set(xlabel="iteration", ylabel="exact KL(π_old ‖ π_new), sequences", yscale="log",
                title=f"KL per iteration, K = {ks[-1]}")
    axes[2].legend(fontsize=7)
    fig.suptitle(f"K epochs on one batch of {cfg['batch_size']} ({cfg['optimizer']}, lr {cfg['lr']}, clip ε "
                 f"{cfg['eps']}, KL target {cfg['kl_target']}/token): mean and 95% t-interval over "
                 f"{_n_seeds(result)} seeds", fontsize=10)
    fig.tight_layout()
    return fig


@saved_run_figure("05_critic_gae_lm", "critic_gae_lm")
def plot_critic_gae(result: dict) -> plt.Figure:
    """The GAE(λ) advantage error per λ as the critic learns, the error against λ early and late, and the
    critic's error with the best λ.

    Draws the toy MDP's ``critic_gae`` (errors against the exact advantage, log axes) or the LM's
    ``critic_gae_lm`` (errors against the Monte Carlo reference with its noise subtracted, which may dip
    below 0: linear axes)."""
    lm = isinstance(result, dict) and result.get("name") == "critic_gae_lm"
    summary = result_summary(result, "critic_gae_lm" if lm else "critic_gae")
    cfg = result["config"]
    lams = list(cfg["lambdas"])
    target = "MC A (noise subtracted)" if lm else "exact A"
    yscale = "linear" if lm else "log"
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(lams)))
    fig, axes = plt.subplots(1, 3, figsize=FIGSIZE)
    for lam, col in zip(lams, colors):
        _band(axes[0], summary, f"lam={lam:.2f}", "adv_mse", label=f"λ = {lam:g}", color=col)
    axes[0].set(xlabel="critic updates", ylabel=f"per-token MSE of GAE(λ) vs {target}", yscale=yscale,
                title="advantage error while the critic learns")
    axes[0].legend(fontsize=7, ncol=2)
    steps = sorted({p["step"] for p in summary["by_step"] if p["arm"] == "critic"})
    picks = [steps[0], steps[min(len(steps) - 1, max(1, len(steps) // 10))], steps[-1]]
    for step, style in zip(dict.fromkeys(picks), ["-", "--", ":"]):
        pts = [next(p for p in summary["by_step"] if p["arm"] == f"lam={lam:.2f}" and p["step"] == step
                    and p["metric"] == "adv_mse") for lam in lams]
        mean = np.array([p["mean"] for p in pts])
        lo = np.array([p["mean"] if p["lo"] is None else p["lo"] for p in pts])
        hi = np.array([p["mean"] if p["hi"] is None else p["hi"] for p in pts])
        line, = axes[1].plot(lams, mean, style, marker="o", markersize=3, label=f"after {step} updates")
        axes[1].fill_between(lams, lo if lm else np.maximum(lo, 1e-9), hi, color=line.get_color(), alpha=0.18,
                             linewidth=0)
    axes[1].set(xlabel="λ", ylabel=f"per-token MSE vs {target}", yscale=yscale, title="error against λ")
    axes[1].legend(fontsize=7)
    _band(axes[2], summary, "critic", "critic_rmse",
          label="critic RMSE ‖V_φ − V^π‖" + (" (MC, noise subtracted)" if lm else ""), color="tab:gray")
    if lm:  # what a critic that learned only the mean value reaches
        axes[2].axhline(float(np.mean(curve(summary, "critic", "const_rmse")["mean"])), color="tab:gray",
                        linestyle=":", linewidth=1, label="best constant critic")
    twin = axes[2].twinx()
    _band(twin, summary, "critic", "best_lambda", label="best λ", color="tab:purple", drawstyle="steps-post")
    twin.set(ylabel="best λ (least error)", ylim=(-0.05, 1.05))
    axes[2].set(xlabel="critic updates", ylabel="critic RMSE (visitation-weighted)", title="critic error and best λ")
    h1, l1 = axes[2].get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    axes[2].legend(h1 + h2, l1 + l2, fontsize=7)
    if lm:
        title = (f"PPO's critic on λ-returns of the fixed chain-task SFT policy (λ = {cfg['critic_lambda']}, batch "
                 f"{cfg['batch_size']}, K = {cfg['mc_samples']} continuations per prefix)")
    else:
        title = (f"tabular critic on λ-returns (λ = {cfg['critic_lambda']}, batch {cfg['batch_size']}, "
                 f"horizon {cfg['problem']['horizon']})")
    fig.suptitle(f"{title}: mean and 95% t-interval over {_n_seeds(result)} seeds", fontsize=10)
    fig.tight_layout()
    return fig


def _run(name):
    from rlcourse.experiments import runner

    return runner.run(name, SEEDS, progress=False)


@figure("06_ppo_toy")
def build_ppo_toy() -> plt.Figure:
    return plot_ppo_toy(_run("ppo_toy"))


@figure("05_critic_gae")
def build_critic_gae() -> plt.Figure:
    return plot_critic_gae(_run("critic_gae"))


#: Display names of the GRPO variants (the arms of ``grpo_variants``).
GRPO_VARIANT_LABELS = {"grpo": "GRPO", "dr_grpo": "Dr. GRPO", "dapo": "DAPO", "gspo": "GSPO"}
_VARIANT_COLORS = {"grpo": "tab:blue", "dr_grpo": "tab:orange", "dapo": "tab:green", "gspo": "tab:red"}


@saved_run_figure("09_grpo_variants", "grpo_variants")
def plot_grpo_variants(result: dict) -> plt.Figure:
    """The four panels of notebook 09 for the ``grpo_variants`` result: greedy held-out accuracy; the mean greedy
    length of the correct (solid) and of the incorrect (dashed) responses; the per-token entropy of the sampling
    policy; the clip fraction of the second update on each batch (log scale: GSPO's is near 1, the token-level
    variants' a few per cent). Mean over seeds with its 95 % t-interval shaded, against training steps."""
    summary = result_summary(result, "grpo_variants")
    cfg = result["config"]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.5))
    for v in cfg["variants"]:
        style = {"color": _VARIANT_COLORS.get(v), "marker": "o", "markersize": 3}
        label = GRPO_VARIANT_LABELS.get(v, v)
        _band(axes[0], summary, v, "accuracy", label=label, **style)
        _band(axes[1], summary, v, "length_correct", label=label, **style)
        _band(axes[1], summary, v, "length_incorrect", linestyle="--", **{**style, "marker": "s"})
        _band(axes[2], summary, v, "entropy", label=label, **style)
        _band(axes[3], summary, v, "clipfrac", label=label, **style)
    axes[0].set(xlabel="training step", ylabel="greedy held-out accuracy",
                title=f"accuracy ({cfg['evaluation']['prompts']} held-out problems)")
    axes[0].legend(fontsize=7, loc="lower right")
    axes[1].set(xlabel="training step", ylabel="mean greedy length (tokens)",
                title="length: correct (—) / incorrect (- -)")
    axes[1].legend(fontsize=7, ncol=2)
    axes[2].set(xlabel="training step", ylabel="entropy per token (nats, sampled)",
                title="entropy of the sampling policy")
    axes[2].legend(fontsize=7)
    axes[3].set(xlabel="training step", ylabel="tokens whose ratio left the range",
                yscale="log", title=f"clip fraction, update {cfg['num_iterations']} of a batch")
    axes[3].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"GRPO variants on the chain task ({budget_text(cfg['budget'])}, {cfg['num_iterations']} updates "
                 f"per batch): "
                 f"mean and 95% t-interval over {_n_seeds(result)} seeds", fontsize=10)
    fig.tight_layout()
    return fig


#: The panels of :func:`plot_reinforce_baselines`: (title, arms, metric of the lower panel, its label).
_REINFORCE_PANELS = (
    ("baselines (AdamW)", ("none", "batch_mean", "group_mean", "rloo"), "reward",
     "mean sampled reward (training steps)"),
    ("reward offset c (AdamW)", ("none", "none_offset", "rloo", "rloo_offset"), "grad_norm",
     "mean ‖ĝ‖ per step (no clipping)"),
    ("SGD vs AdamW, group mean vs RLOO", ("sgd_group_mean", "sgd_rloo", "group_mean", "rloo"),
     "update_norm", r"mean $\|\theta_{t+1} - \theta_t\|$ per step"),
)


@saved_run_figure("04_reinforce_baselines", "reinforce_baselines")
def plot_reinforce_baselines(result: dict) -> plt.Figure:
    """The ``reinforce_baselines`` experiment (notebook 04), mean and 95% t-interval over seeds: held-out greedy
    accuracy (top) and, below, the quantity each comparison turns on: the sampled reward for the baselines, the
    gradient norm for the reward offset, the length of a step for SGD against AdamW (the AdamW arms of that
    panel are the group-mean and RLOO arms of the first). Arms absent from the result are left out; a panel
    with none of its arms is left empty."""
    from rlcourse.experiments.reinforce_baselines import ARM_LABELS

    summary = result_summary(result, "reinforce_baselines")
    cfg = result["config"]
    arms = set(cfg["arms"])
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.6), sharex=True)
    colors = {"none": "tab:red", "batch_mean": "tab:orange", "group_mean": "tab:green", "rloo": "tab:blue",
              "none_offset": "tab:purple", "rloo_offset": "tab:cyan", "sgd_group_mean": "tab:olive",
              "sgd_rloo": "tab:brown"}
    dashed = {"none_offset", "rloo_offset", "sgd_group_mean", "sgd_rloo"}
    for col, (title, panel_arms, metric, label) in enumerate(_REINFORCE_PANELS):
        shown = [a for a in panel_arms if a in arms]
        for a in shown:
            # the group mean is drawn wide, so that RLOO on top of it (the same run under AdamW) leaves it visible
            style = dict(color=colors[a], linestyle="--" if a in dashed else "-",
                         linewidth=3.5 if a == "group_mean" else 1.5)
            _band(axes[0, col], summary, a, "accuracy", label=ARM_LABELS[a], **style)
            _band(axes[1, col], summary, a, metric, label=ARM_LABELS[a], marker="o", markersize=2.5, **style)
        axes[0, col].set(title=title, ylabel="held-out greedy accuracy" if col == 0 else None)
        axes[1, col].set(xlabel="REINFORCE step", ylabel=label)
        if shown:
            axes[0, col].legend(fontsize=7, loc="lower right")
    if {"sgd_group_mean", "sgd_rloo"} & arms:
        axes[1, 2].set_yscale("log")
    fig.suptitle(f"REINFORCE on the chain task, {budget_text(cfg['budget'])} (AdamW; SGD lr {cfg['sgd_lr']:g}; "
                 f"c = {cfg['offset']:+g}): mean and 95% "
                 f"t-interval over {_n_seeds(result)} seeds", fontsize=10)
    fig.tight_layout()
    return fig
