r"""Figures of notebooks 07 (reward models), 08 (RLHF with PPO) and 10 (DPO).

Three kinds of function, as in the other plot modules:

* *data* functions on the toy MDP and small tensors, exact and cheap (:func:`rule_reward_rows`,
  :func:`bt_recovery`, :func:`kl_estimator_curves`, :func:`kl_estimator_table`,
  :func:`per_prefix_kl_stats`, :func:`dpo_ipo_curves`);
* *plot* functions (``plot_*``): data in, a matplotlib ``Figure`` out; the LM experiments they
  draw are in :mod:`rlcourse.experiments.rlhf`;
* *builders* registered with :func:`rlcourse.plots.figure` (``07_…``, ``08_…``, ``10_…``): no
  arguments, ``plot(experiment())``.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from rlcourse.derivations import bradley_terry as bt
from rlcourse.derivations import kl_estimators as kle
from rlcourse.derivations import kl_optimum as klo
from rlcourse.kl import KL_ESTIMATORS, kl_categorical
from rlcourse.lm import Problem, is_correct, is_well_formed, math_verify_correct, reward
from rlcourse.experiments import rlhf as X
from rlcourse.experiments.summary import curve, result_summary
from rlcourse.plots import figure
from rlcourse.plots.experiments import saved_run_figure
from rlcourse.plots.lm_rl import smoothed
from rlcourse.preference import dpo_loss
from rlcourse.toymdp import ToyMDP

__all__ = [
    # exact
    "RULE_PROBLEM", "RULE_EXAMPLES", "rule_reward_rows", "bt_recovery", "kl_estimator_curves",
    "kl_estimator_table", "kl_gradient_directions", "per_prefix_kl_stats", "dpo_ipo_curves",
    "kl_optimum_table", "OPTIMUM_BETAS",
    # plots
    "plot_bradley_terry", "plot_reward_model", "plot_kl_estimators", "plot_overoptimization",
    "plot_kl_placement", "plot_dpo_ipo", "plot_method_comparison", "plot_dpo_displacement", "plot_kl_optimum",
]

FIGSIZE = (10, 3.6)
COLORS = {"k1": "tab:blue", "k2": "tab:orange", "k3": "tab:green", "correct": "tab:green", "wrong": "tab:red",
          "malformed": "tab:gray", "dpo": "tab:purple", "ppo": "tab:blue", "grpo": "tab:orange", "ipo": "tab:brown"}


# ============================================================================ 07: rule-based reward

#: The problem of the rule-based reward table: ``"12+7="``, answer ``"19"``.
RULE_PROBLEM = Problem(12, "+", 7)

#: ``(completion, finished, what it shows)`` for :func:`rule_reward_rows`.
RULE_EXAMPLES = (
    ("19", True, "correct"),
    (" 19 ", True, "spaces tolerated"),
    ("019", True, "same integer"),
    ("18", True, "wrong, well formed"),
    ("19", False, "right digits, never stopped"),
    ("19.0", True, "equivalent, not an integer literal"),
    ("38/2", True, "equivalent expression"),
    ("12+7", True, "the question copied back"),
    ("18 or 19", True, "hedge: the last number is parsed"),
    ("19 or 18", True, "same hedge, other order"),
    ("+19", True, "valid, but math-verify says no"),
    ("nineteen", True, "in words"),
    ("1 9", True, "malformed"),
    ("abc", True, "nothing to parse"),
)


def rule_reward_rows(examples: Sequence[tuple] = RULE_EXAMPLES, problem: Problem = RULE_PROBLEM) -> list[dict]:
    """The course's rule-based reward on hand-written completions of ``problem``.

    Each row: ``completion``, ``finished``, ``note``, ``math_verify`` (math-verify's
    ``verify(parse(gold), parse(completion))``), ``correct`` (:func:`rlcourse.lm.is_correct`),
    ``well_formed`` and ``reward`` (:func:`rlcourse.lm.reward`).
    """
    rows = []
    for ex in examples:
        c, f = ex[0], ex[1]
        rows.append({"completion": c, "finished": bool(f), "note": ex[2] if len(ex) > 2 else "",
                     "math_verify": bool(math_verify_correct(c, problem.answer)),
                     "correct": bool(is_correct(c, problem.answer)), "well_formed": bool(is_well_formed(c, f)),
                     "reward": float(reward(c, problem.answer, f))})
    return rows


# ============================================================================ 07: Bradley–Terry

def bt_recovery(n_samples: int = 4000, seed: int = 0) -> dict:
    """The planted rewards of :mod:`rlcourse.derivations.bradley_terry` and what maximum likelihood recovers.

    Returns float64 arrays: ``planted`` (:data:`~rlcourse.derivations.bradley_terry.PLANTED_REWARDS`),
    ``centred`` (planted minus its mean), ``infinite`` (the minimiser of the infinite-data NLL,
    from r = 0), ``sampled`` and ``se`` (the MLE on ``n_samples`` sampled comparisons and its
    standard errors from the inverse observed Fisher information), and ``grid`` / ``log_odds``
    (the log-odds of :math:`\\sigma(r_1 - r_2)` against :math:`r_1 - r_2`).
    """
    r_true = torch.tensor(bt.PLANTED_REWARDS, dtype=torch.float64)
    K = r_true.shape[0]
    infinite = bt.fit_rewards(lambda r: bt.expected_nll(r, r_true), K)
    chosen, rejected = bt.sample_comparisons(r_true, n_samples, seed)

    def total_nll(r):
        from rlcourse.preference import bradley_terry_loss
        return n_samples * bradley_terry_loss(r[chosen], r[rejected])

    sampled = bt.fit_rewards(total_nll, K)
    info = torch.autograd.functional.hessian(total_nll, sampled)
    se = torch.linalg.pinv(info, rtol=1e-10, hermitian=True).diagonal().clamp(min=0).sqrt()
    grid = torch.linspace(-4, 4, 81, dtype=torch.float64)
    return {"planted": r_true.numpy(), "centred": bt.centred(r_true).numpy(), "infinite": infinite.numpy(),
            "sampled": bt.centred(sampled).numpy(), "se": se.numpy(), "n_samples": n_samples,
            "grid": grid.numpy(), "log_odds": bt.log_odds(grid, torch.zeros_like(grid)).numpy()}


def plot_bradley_terry(data: dict) -> plt.Figure:
    """Left: the BT probability and its log-odds against the reward difference. Right: planted
    (centred) rewards, the infinite-data MLE and the MLE from sampled comparisons (± 2 SE)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=FIGSIZE)
    d = np.asarray(data["grid"])
    ax1.plot(d, 1 / (1 + np.exp(-d)), color="tab:blue", label=r"$P(y_1 \succ y_2) = \sigma(r_1 - r_2)$")
    ax1.set_xlabel(r"reward difference $r_1 - r_2$")
    ax1.set_ylabel("probability", color="tab:blue")
    ax1.set_ylim(-0.02, 1.02)
    ax1b = ax1.twinx()
    ax1b.plot(d, data["log_odds"], color="tab:red", ls="--", label="log-odds")
    ax1b.set_ylabel(r"$\log\frac{P}{1-P}$", color="tab:red")
    ax1.set_title("Bradley–Terry: log-odds = reward difference")
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = ax1b.get_legend_handles_labels()
    ax1.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)

    k = np.arange(len(data["planted"]))
    w = 0.27
    ax2.bar(k - w, data["planted"], w, color="lightgray", label="planted $r^*$")
    ax2.bar(k, data["centred"], w, color="tab:green", label="planted, centred")
    ax2.bar(k + w, data["sampled"], w, yerr=2 * np.asarray(data["se"]), color="tab:purple", capsize=3,
            label=f"MLE, {data['n_samples']} comparisons (±2 SE)")
    ax2.plot(k, data["infinite"], "k_", ms=18, mew=2, label="MLE, infinite data")
    ax2.axhline(0, color="k", lw=0.6)
    ax2.set_xticks(k, [f"$y_{i + 1}$" for i in k])
    ax2.set_ylabel("reward")
    ax2.set_ylim(-2.9, 2.4)
    ax2.set_title("the MLE recovers rewards up to a constant")
    ax2.legend(fontsize=7.5, loc="lower center", ncol=2)
    fig.tight_layout()
    return fig


@figure("07_bradley_terry")
def build_bradley_terry() -> plt.Figure:
    """Bradley–Terry log-odds, and the MLE of planted rewards (exact and from 4000 sampled comparisons)."""
    return plot_bradley_terry(bt_recovery())


# ============================================================================ 08: KL estimators

def kl_estimator_curves(ratios=None) -> dict[str, np.ndarray]:
    """k1, k2, k3 of :mod:`rlcourse.kl` as functions of the ratio :math:`r = \\pi_{\\text{ref}}(y)/\\pi(y)` of one sampled token."""
    r = torch.as_tensor(np.geomspace(0.05, 20, 401) if ratios is None else ratios, dtype=torch.float64)
    # The estimators see only log(pi_ref / pi): place both log-probs at or below 0 with that difference.
    shift = float(r.max().log().clamp(min=0.0))
    logp = torch.full_like(r, -shift)
    out = {"ratio": r.numpy()}
    for name, fn in KL_ESTIMATORS.items():
        out[name] = fn(logp, r.log() - shift).numpy()
    return out


def kl_estimator_table(mdp: ToyMDP, theta: torch.Tensor, theta_ref: torch.Tensor) -> dict:
    """Sequence-level k1, k2, k3 at every sequence of ``mdp`` (samples from :math:`\\pi_\\theta`), exactly.

    Returns ``p`` (sequence probabilities), ``values`` (name -> (N,) array), ``mean`` and ``std``
    (name -> float, exact under :math:`\\pi_\\theta`), ``kl`` (the exact KL(pi||ref)), ``bias``
    (name -> mean - KL) and ``negative_mass`` (name -> probability that the estimate is < 0).
    """
    logp, logq = mdp.sequence_logprobs(theta).detach(), mdp.sequence_logprobs(theta_ref).detach()
    p = logp.exp()
    kl = float(kl_categorical(logp, logq))
    values = kle.estimator_values(logp, logq)
    mean = {k: float((p * v).sum()) for k, v in values.items()}
    std = {k: float((p * (v - mean[k]) ** 2).sum().sqrt()) for k, v in values.items()}
    return {"p": p.numpy(), "values": {k: v.numpy() for k, v in values.items()}, "mean": mean, "std": std,
            "kl": kl, "bias": {k: mean[k] - kl for k in values},
            "negative_mass": {k: float(p[v < 0].sum()) for k, v in values.items()}}


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of two gradients; NaN when one of them is 0 (to rounding: norm < 1e-12), where no direction exists."""
    na, nb = float(a.norm()), float(b.norm())
    return float((a * b).sum()) / (na * nb) if na > 1e-12 and nb > 1e-12 else float("nan")


def kl_gradient_directions(mdp: ToyMDP, theta: torch.Tensor, theta_ref: torch.Tensor) -> list[dict]:
    """The expected gradient of each estimator used as a loss term (samples not differentiated),
    compared with the gradients of the forward and reverse KL (all exact, by enumeration).

    Each row: ``estimator``, ``norm`` of its expected gradient, ``cos_forward`` / ``cos_reverse``
    (cosine with :math:`\\nabla\\mathrm{KL}(\\pi\\|\\pi_{\\text{ref}})` / :math:`\\nabla\\mathrm{KL}(\\pi_{\\text{ref}}\\|\\pi)`),
    ``err_forward`` / ``err_reverse`` (max absolute difference).
    """
    g_fwd = kle.kl_gradient(mdp, theta, theta_ref)
    g_rev = kle.kl_gradient(mdp, theta, theta_ref, reverse=True)
    rows = [{"estimator": "grad KL(pi||ref)", "norm": float(g_fwd.norm()), "cos_forward": 1.0,
             "cos_reverse": _cosine(g_fwd, g_rev), "err_forward": 0.0, "err_reverse": float((g_fwd - g_rev).abs().max())}]
    for name in ("k1", "k2", "k3"):
        g = kle.estimator_loss_gradient(mdp, theta, theta_ref, name)
        rows.append({"estimator": name, "norm": float(g.norm()), "cos_forward": _cosine(g, g_fwd),
                     "cos_reverse": _cosine(g, g_rev), "err_forward": float((g - g_fwd).abs().max()),
                     "err_reverse": float((g - g_rev).abs().max())})
    return rows


def per_prefix_kl_stats(mdp: ToyMDP, theta: torch.Tensor, theta_ref: torch.Tensor) -> list[dict]:
    """At every non-terminal prefix: the full-vocabulary KL, and the mean and standard deviation of
    k1 and k3 computed from *one* token sampled there (exact, by summing over the vocabulary)."""
    lp, lq = mdp.policy_logprobs(theta.detach()), mdp.policy_logprobs(theta_ref.detach())
    full = kl_categorical(lp, lq)
    p = lp.exp()
    names = mdp.token_names()
    rows = []
    for s in range(mdp.num_states):
        row = {"prefix": " ".join(names[a] for a in mdp.state_prefixes[s]) or "(empty)",
               "full_kl": float(full[s])}
        for name in ("k1", "k3"):
            k = KL_ESTIMATORS[name](lp[s], lq[s])
            m = float((p[s] * k).sum())
            row[f"{name}_mean"] = m
            row[f"{name}_std"] = float((p[s] * (k - m) ** 2).sum().sqrt())
        rows.append(row)
    return rows


def plot_kl_estimators(curves: dict, table: dict) -> plt.Figure:
    """Left: k1, k2, k3 of one sampled token against the ratio ref/pi. Right: their values on every
    sequence of the toy MDP (dot area ~ probability under pi), their exact means and the exact KL."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=FIGSIZE)
    r = curves["ratio"]
    labels = {"k1": r"$k_1 = -\log r$", "k2": r"$k_2 = \frac{1}{2}(\log r)^2$", "k3": r"$k_3 = (r-1) - \log r$"}
    for name in ("k1", "k2", "k3"):
        ax1.plot(r, curves[name], color=COLORS[name], label=labels[name])
    ax1.axhline(0, color="k", lw=0.6)
    ax1.axvline(1, color="k", lw=0.6, ls=":")
    ax1.set_xscale("log")
    ax1.set_ylim(-3.2, 5)
    ax1.set_xlabel(r"$r = \pi_{\mathrm{ref}}(y) / \pi(y)$ of the sampled token")
    ax1.set_ylabel("estimate")
    ax1.set_title("single-sample KL estimators")
    ax1.legend(fontsize=8)

    p = np.asarray(table["p"])
    for i, name in enumerate(("k1", "k2", "k3")):
        v = np.asarray(table["values"][name])
        jitter = np.linspace(-0.18, 0.18, len(v))
        ax2.scatter(i + jitter, v, s=900 * p + 4, color=COLORS[name], alpha=0.55, edgecolor="none")
        ax2.plot([i - 0.3, i + 0.3], [table["mean"][name]] * 2, color="k", lw=2)
    ax2.axhline(table["kl"], color="tab:red", ls="--", lw=1.2, label=f"exact KL(π‖ref) = {table['kl']:.3f}")
    ax2.plot([], [], color="k", lw=2, label="exact mean of the estimator")
    ax2.axhline(0, color="k", lw=0.6)
    ax2.set_yscale("symlog", linthresh=1.0)
    ax2.set_xticks([0, 1, 2], ["k1", "k2", "k3"])
    ax2.set_ylabel("estimate on each sequence (symlog)")
    ax2.set_title("toy MDP: 15 sequences (area ∝ probability)")
    ax2.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


@figure("08_kl_estimators")
def build_kl_estimators() -> plt.Figure:
    """k1/k2/k3 against the token ratio, and their exact distributions on the toy MDP of the KL derivation."""
    mdp, theta, theta_ref = kle.problem()
    return plot_kl_estimators(kl_estimator_curves(), kl_estimator_table(mdp, theta, theta_ref))


# ============================================================================ 10: the KL-regularised optimum

OPTIMUM_BETAS = (0.1, 0.5, 2.0)


def kl_optimum_table(betas=OPTIMUM_BETAS) -> dict:
    """The closed-form optimum :math:`\\pi^*_\\beta \\propto \\pi_{\\text{ref}}\\,e^{r/\\beta}` over the sequences of the toy MDP.

    Returns ``labels`` (sequence names, sorted by reward), ``reward``, ``ref`` (probabilities) and
    ``optimum`` (beta -> probabilities), plus ``objective`` (beta -> J(pi*)) and ``log_z`` (beta -> log Z).
    """
    from rlcourse.preference import kl_regularized_objective, kl_regularized_optimum

    mdp, theta_ref = klo.problem()
    ref_logp, r = mdp.sequence_logprobs(theta_ref).detach(), mdp.returns()
    order = torch.argsort(r, descending=True)
    out = {"labels": [mdp.describe(int(i)) for i in order], "reward": r[order].numpy(),
           "ref": ref_logp.exp()[order].numpy(), "optimum": {}, "objective": {}, "log_z": {}}
    for b in betas:
        opt = kl_regularized_optimum(ref_logp, r, b)
        out["optimum"][b] = opt.exp()[order].numpy()
        out["objective"][b] = float(kl_regularized_objective(opt, ref_logp, r, b))
        out["log_z"][b] = float(klo.log_partition(ref_logp, r, b))
    return out


def plot_kl_optimum(table: dict) -> plt.Figure:
    """Probabilities of the reference and of the optimum for each beta, sequences sorted by reward (line, right axis)."""
    fig, ax = plt.subplots(figsize=(10, 3.6))
    n = len(table["labels"])
    k = np.arange(n)
    series = [("π_ref", table["ref"], "lightgray")]
    cmap = plt.cm.viridis(np.linspace(0.15, 0.85, len(table["optimum"])))
    series += [(f"π*, β = {b:g}", p, c) for (b, p), c in zip(table["optimum"].items(), cmap)]
    w = 0.8 / len(series)
    for j, (label, p, c) in enumerate(series):
        ax.bar(k + (j - (len(series) - 1) / 2) * w, p, w, color=c, label=label)
    ax.set_xticks(k, table["labels"], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("probability")
    ax2 = ax.twinx()
    ax2.plot(k, table["reward"], "k.-", lw=1, label="reward r(y)")
    ax2.set_ylabel("reward r(y)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper right")
    ax.set_title("π* ∝ π_ref · exp(r/β): small β chases the reward, large β stays with the reference")
    fig.tight_layout()
    return fig


@figure("10_kl_optimum")
def build_kl_optimum() -> plt.Figure:
    """The closed-form KL-regularised optimum on the toy MDP for three betas."""
    return plot_kl_optimum(kl_optimum_table())


# ============================================================================ 10: DPO and IPO losses

def dpo_ipo_curves(beta: float = 0.5, h=None) -> dict[str, np.ndarray]:
    """DPO (sigmoid) and IPO losses of one pair, and their derivatives, against the log-ratio margin
    :math:`h = \\log\\frac{\\pi(y_w)}{\\pi_{\\text{ref}}(y_w)} - \\log\\frac{\\pi(y_l)}{\\pi_{\\text{ref}}(y_l)}`.

    Computed with :func:`rlcourse.preference.dpo_loss` and autograd (the derivative is with
    respect to :math:`\\log\\pi(y_w)`, which moves :math:`h` one for one).
    """
    h = torch.as_tensor(np.linspace(-6, 10, 321) if h is None else h, dtype=torch.float64)
    out = {"h": h.numpy(), "beta": beta}
    for loss_type in ("sigmoid", "ipo"):
        chosen = h.clone().requires_grad_(True)
        zeros = torch.zeros_like(h)
        losses = []
        for i in range(h.shape[0]):
            losses.append(dpo_loss(chosen[i:i + 1], zeros[i:i + 1], zeros[i:i + 1], zeros[i:i + 1], beta=beta,
                                   loss_type=loss_type)[0])
        total = torch.stack(losses)
        (g,) = torch.autograd.grad(total.sum(), chosen)
        key = "dpo" if loss_type == "sigmoid" else "ipo"
        out[key] = total.detach().numpy()
        out[f"{key}_grad"] = g.numpy()
    return out


def plot_dpo_ipo(curves: dict) -> plt.Figure:
    """DPO and IPO losses of one pair (left) and their derivative (right) against the margin h."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=FIGSIZE)
    h, beta = curves["h"], curves["beta"]
    target = 1 / (2 * beta)
    ax1.plot(h, curves["dpo"], color=COLORS["dpo"], label=r"DPO: $-\log\sigma(\beta h)$")
    ax1.plot(h, curves["ipo"], color=COLORS["ipo"], label=r"IPO: $(h - \frac{1}{2\beta})^2$")
    ax1.axvline(target, color=COLORS["ipo"], ls=":", lw=1)
    ax1.axhline(0, color="k", lw=0.6)
    ax1.set(ylim=(-0.5, 8), xlabel=r"margin $h$ (chosen minus rejected log-ratio to the reference)",
            ylabel="loss of one pair", title=f"β = {beta}: IPO has a finite target h = 1/(2β) = {target:g}")
    ax1.legend(fontsize=8)
    ax2.plot(h, -np.asarray(curves["dpo_grad"]), color=COLORS["dpo"], label=r"DPO: $\beta\,\sigma(-\beta h)$")
    ax2.plot(h, -np.asarray(curves["ipo_grad"]), color=COLORS["ipo"], label=r"IPO: $-2(h - \frac{1}{2\beta})$")
    ax2.axhline(0, color="k", lw=0.6)
    ax2.axvline(target, color=COLORS["ipo"], ls=":", lw=1)
    ax2.set(ylim=(-2, 3), xlabel="margin h", ylabel=r"push on $\log\pi(y_w)$  ($-\partial L/\partial \log\pi(y_w)$)",
            title="DPO never stops pushing; IPO pulls back")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


@figure("10_dpo_ipo")
def build_dpo_ipo() -> plt.Figure:
    """DPO and IPO losses and their push on the chosen response, against the margin h (beta = 0.5)."""
    return plot_dpo_ipo(dpo_ipo_curves())


# ============================================================================ 07: a cached reward model

def plot_reward_model(histories: dict, scores: dict) -> plt.Figure:
    """Left: pair accuracy during training, on the training batches (smoothed) and on held-out pairs, for each
    reward model in ``histories`` (label -> history rows). Right: the first reward model's scores of correct,
    wrong and malformed samples, centred per prompt (``scores`` from :func:`score_by_kind`)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=FIGSIZE)
    for (label, history), color in zip(histories.items(), ("tab:green", "tab:red", "tab:blue", "tab:purple")):
        steps = np.array([r["step"] for r in history]) + 1
        ax1.plot(steps, smoothed([r["accuracy"] for r in history], 10), color=color, ls="--", lw=1.2,
                 label=f"{label}: training batches")
        ev = [(st, r["held_out_pair_accuracy"]) for st, r in zip(steps, history) if "held_out_pair_accuracy" in r]
        if ev:
            ax1.plot(*zip(*ev), "o-", color=color, ms=4, label=f"{label}: held-out pairs")
    ax1.axhline(0.5, color="k", ls=":", lw=0.8)
    ax1.set_ylim(0.35, 1.0)
    ax1.set_xlabel("reward-model step")
    ax1.set_ylabel("pair accuracy")
    ax1.set_title("training vs held-out pair accuracy")
    ax1.legend(fontsize=7.5, loc="lower right")

    s = scores["centred"]
    allv = np.concatenate([np.asarray(v) for v in s.values() if len(v)])
    bins = np.linspace(np.percentile(allv, 0.5), np.percentile(allv, 99.5), 40)
    for k in ("correct", "wrong"):
        if len(s[k]):
            ax2.hist(s[k], bins=bins, density=True, alpha=0.5, color=COLORS[k], label=f"{k} (n = {len(s[k])})")
    if len(s["malformed"]):  # usually a handful: one tick each rather than a histogram
        ax2.plot(s["malformed"], np.zeros(len(s["malformed"])), "|", color="k", ms=22, mew=2,
                 label=f"malformed (n = {len(s['malformed'])}), one tick each")
    ax2.set_xlabel(r"score minus the mean score of the prompt's 8 samples")
    ax2.set_ylabel("density")
    ax2.set_title(f"SFT samples of held-out prompts: P(correct > wrong, same prompt) = {scores['auc_within']:.2f}", fontsize=9)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


@figure("07_reward_model")
def build_reward_model() -> plt.Figure:
    """Training curves of the course's BT reward model and its scores of correct / wrong / malformed samples."""
    data = X.reward_model_experiment()
    return plot_reward_model({"course recipe": data["info"]["history"], "textbook": data["textbook_info"]["history"]},
                             data["scores"])


# ============================================================================ 08: reward hacking

# ============================================================================ 10: method_comparison (runner)

#: Colour and label of each arm of the ``method_comparison`` experiment.
METHOD_ARMS = {"dpo_offline": ("tab:purple", "DPO offline"), "dpo_online": ("tab:pink", "DPO online (iterative)"),
               "ppo": ("tab:blue", "PPO"), "grpo": ("tab:orange", "GRPO")}


def _comparison(result) -> tuple[dict, list[str]]:
    """The summary of a ``method_comparison`` result (``ValueError`` for another experiment's) and its arms."""
    summary = result_summary(result, "method_comparison")
    arms = [a for a in METHOD_ARMS if any(p["arm"] == a for p in summary["by_step"])]
    return summary, arms


def _band_against(ax, summary, arm, metric, x_metric, **style):
    """``metric``'s mean over seeds and its interval (shaded) against the mean over seeds of ``x_metric``."""
    y, x = curve(summary, arm, metric), curve(summary, arm, x_metric)
    line, = ax.plot(x["mean"], y["mean"], **style)
    ax.fill_between(x["mean"], y["lo"], y["hi"], color=line.get_color(), alpha=0.18, linewidth=0)
    return line


@saved_run_figure("10_dpo_vs_rl", "method_comparison")
def plot_method_comparison(result: dict) -> plt.Figure:
    """Held-out greedy accuracy of every arm against the samples drawn, the optimizer updates and the wall
    seconds (mean over seeds and its interval). Offline DPO draws all its samples before its first update, so
    in the first panel its evaluations stand in one column at the full budget (error bars)."""
    summary, arms = _comparison(result)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for arm in arms:
        color, label = METHOD_ARMS[arm]
        style = dict(color=color, marker="o", markersize=3, label=label)
        if arm == "dpo_offline":
            y, x = curve(summary, arm, "accuracy"), curve(summary, arm, "samples")
            axes[0].errorbar(x["mean"], y["mean"], yerr=[y["mean"] - y["lo"], y["hi"] - y["mean"]], fmt="o",
                             markersize=3, capsize=2, color=color, label=f"{label} (all drawn first)")
        else:
            _band_against(axes[0], summary, arm, "accuracy", "samples", **style)
        _band_against(axes[1], summary, arm, "accuracy", "updates", **style)
        _band_against(axes[2], summary, arm, "accuracy", "seconds", **style)
    for ax, xlabel in zip(axes, ("samples drawn from a policy", "optimizer updates of the policy",
                                 "wall seconds in the trainer (one core)")):
        ax.set(xlabel=xlabel, ylim=(0, 1))
    axes[0].set_ylabel("held-out greedy accuracy")
    axes[0].legend(fontsize=7.5, loc="lower right")
    fig.suptitle(f"same SFT start, same sample budget: mean and 95% t-interval over {len(summary['seeds'])} seeds",
                 fontsize=10)
    fig.tight_layout()
    return fig


@saved_run_figure("10_dpo_displacement", "method_comparison")
def plot_dpo_displacement(result: dict) -> plt.Figure:
    """Where the probability goes: the mean log-probability of the chosen (solid) and of the rejected (dashed)
    responses of the fixed held-out pairs, and the exact probability of the correct answer, of the answers that
    differ from it in the last digit only, and of those that differ in one earlier digit only (solid) or
    anywhere else (dotted), for every arm over its run (mean over seeds and its interval)."""
    summary, arms = _comparison(result)
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.5))
    panels = ((0, "logp_chosen", "-"), (0, "logp_rejected", "--"), (1, "p_correct", "-"), (2, "p_last_digit", "-"),
              (3, "p_other_digit", "-"), (3, "p_elsewhere", ":"))
    for arm in arms:
        color, label = METHOD_ARMS[arm]
        # the x axis: the share of the arm's updates done, so that arms with different update counts align
        updates = curve(summary, arm, "updates")["mean"]
        share = updates / updates[-1]
        for k, metric, ls in panels:
            y = curve(summary, arm, metric)
            axes[k].plot(share, y["mean"], color=color, linestyle=ls, marker="o", markersize=2.5,
                         label=label if ls == "-" else None)
            axes[k].fill_between(share, y["lo"], y["hi"], color=color, alpha=0.15, linewidth=0)
    titles = ("held-out pairs: mean log π(y | x)\nsolid: chosen, dashed: rejected", "π(the correct answer)",
              "π(answers with the last digit wrong)", "π(answers with one earlier digit wrong)\n"
              "dotted: π(every other response)")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9.5)
        ax.set_xlabel("share of the arm's updates")
    for ax in axes[1:3]:
        ax.set_ylim(0, 1)
    axes[3].set_ylim(bottom=0)
    axes[1].legend(fontsize=7.5)
    fig.suptitle(f"mean and 95% t-interval over {len(summary['seeds'])} seeds; probabilities exact (sums over complete "
                 "responses), on held-out problems", fontsize=10)
    fig.tight_layout()
    return fig


# ============================================================================ 08: the runner's experiments

def _xy_errorbar(ax, summary, arm, x_metric, y_metric, **style):
    """Mean of ``y_metric`` against mean of ``x_metric`` at each step of ``arm``, both with their interval."""
    cx, cy = curve(summary, arm, x_metric), curve(summary, arm, y_metric)
    ax.errorbar(cx["mean"], cy["mean"], xerr=[cx["mean"] - cx["lo"], cx["hi"] - cx["mean"]],
                yerr=[cy["mean"] - cy["lo"], cy["hi"] - cy["mean"]], capsize=2, elinewidth=0.8, markersize=3.5,
                **style)


@saved_run_figure("08_overoptimization", "overoptimization")
def plot_overoptimization(result: dict) -> plt.Figure:
    """Gold (rule) reward and reward-model score against √KL(π‖π_ref), one row per reward model: PPO at each fixed
    β (one point per evaluation: mean over seeds, 95 % t-intervals on both axes) and best-of-N (analytic KL)."""
    summary = result_summary(result, "overoptimization")
    cfg = result["config"]
    rms, betas = list(cfg["reward_models"]), list(cfg["betas"])
    n_seeds = len(summary["seeds"])
    fig, axes = plt.subplots(len(rms), 2, figsize=(10, 3.3 * len(rms)), squeeze=False)
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, len(betas)))
    for row, rm in zip(axes, rms):
        for ax, metric, title in ((row[0], "gold", "gold reward (rule; never seen in training)"),
                                  (row[1], "score", "proxy: reward-model score (what is optimised)")):
            for beta, color in zip(betas, colors):
                _xy_errorbar(ax, summary, f"{rm}_beta{beta:g}", "sqrt_kl", metric, color=color, marker="o",
                             label=f"PPO β = {beta:g}")
            _xy_errorbar(ax, summary, f"bon_{rm}", "sqrt_kl", metric, color="k", marker="s", linestyle="--",
                         label="best-of-N (N = 1, 2, 4, …)")
            ax.set(xlabel="√KL(π ‖ π_ref)  (nats^½)", ylabel=metric, title=f"{rm} reward model: {title}")
            ax.title.set_fontsize(9)
        row[0].legend(fontsize=7)
    fig.suptitle(f"optimising a learned reward: mean and 95% t-interval over {n_seeds} seeds "
                 f"(PPO, {cfg['budget']['steps']} steps, fixed β; best-of-N KL = log N − (N−1)/N, an upper bound)",
                 fontsize=10)
    fig.tight_layout()
    return fig


_PLACEMENT_STYLE = {"reward_k1": ("tab:blue", "-"), "seq_k2": ("tab:green", "-"), "loss_k2": ("tab:olive", "--"),
                    "loss_k3": ("tab:red", "--"), "loss_k1": ("tab:gray", ":"), "no_kl": ("k", ":")}


@saved_run_figure("08_kl_placement", "kl_placement")
def plot_kl_placement(result: dict) -> plt.Figure:
    """The exact KL(π‖π_ref) and the gold reward over training for each KL placement (mean, 95 % t-band over
    seeds), and the final KL per placement with its interval."""
    summary = result_summary(result, "kl_placement")
    cfg = result["config"]
    arms = list(cfg["arms"])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for arm in arms:
        color, ls = _PLACEMENT_STYLE.get(arm, (None, "-"))
        for ax, metric in ((axes[0], "kl"), (axes[1], "gold")):
            c = curve(summary, arm, metric)
            line, = ax.plot(c["step"], c["mean"], color=color, linestyle=ls, label=arm)
            ax.fill_between(c["step"], c["lo"], c["hi"], color=line.get_color(), alpha=0.15, linewidth=0)
    finals = {p["arm"]: p for p in summary["final"] if p["metric"] == "kl"}
    mean = np.array([finals[a]["mean"] for a in arms])
    lo = np.array([finals[a]["mean"] if finals[a]["lo"] is None else finals[a]["lo"] for a in arms])
    hi = np.array([finals[a]["mean"] if finals[a]["hi"] is None else finals[a]["hi"] for a in arms])
    axes[2].bar(range(len(arms)), mean, yerr=[mean - lo, hi - mean], capsize=3,
                color=[_PLACEMENT_STYLE.get(a, ("tab:blue", ""))[0] for a in arms])
    axes[0].set(xlabel="GRPO step", ylabel="exact KL(π ‖ π_ref) per sequence (nats)", title="KL reached")
    axes[1].set(xlabel="GRPO step", ylabel="mean rule reward of samples", title="reward")
    axes[2].set(xticks=range(len(arms)), ylabel="final KL (nats)", title=f"KL at step {cfg['budget']['steps']}")
    axes[2].set_xticklabels(arms, rotation=30, fontsize=8)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"where the KL term goes (Dr. GRPO, β = {cfg['beta']:g}, same start and rule reward): mean and "
                 f"95% t-interval over {len(summary['seeds'])} seeds", fontsize=10)
    fig.tight_layout()
    return fig
