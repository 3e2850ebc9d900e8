r"""Figures of notebooks 02 (the policy gradient) and 03 (variance reduction), on the toy MDP.

Everything here is measured against exact values computed by enumeration
(:mod:`rlcourse.toymdp`); the estimators themselves come from the derivation modules
(:mod:`rlcourse.derivations.policy_gradient`, ``reward_to_go``, ``baseline``) and the
REINFORCE update from :func:`rlcourse.losses.policy_gradient_loss`.

Three kinds of function:

* *data* functions (``shifted_mdp``, ``variance_reduction_estimators``,
  ``estimator_stats``, ``sampled_errors``, ``predicted_rms_error``): tensors in, numbers out, no
  plotting; the training runs of notebook 02 (exact gradient ascent and REINFORCE on the toy MDP)
  are experiments, :mod:`rlcourse.experiments.toy`;
* *plot* functions (``plot_*``): data in, a matplotlib ``Figure`` out;
* *builders* registered with :func:`rlcourse.plots.figure` (``02_…``, ``03_…``): no arguments,
  they compute their own data and return the figure the notebook shows.

Two facts make the sampled-error figures exact rather than anecdotal. For ``n`` i.i.d.
per-sequence estimates :math:`X_i` with mean :math:`\mu` and the exact gradient :math:`g`,

.. math::

    \mathbb{E}\,\big\lVert \bar X_n - g \big\rVert^2
      = \lVert \mu - g \rVert^2 + \frac{\operatorname{tr}\operatorname{Cov}[X]}{n},

so the root-mean-square error of an unbiased estimator is
:math:`\sqrt{\operatorname{tr}\operatorname{Cov}[X] / n}` (the :math:`1/\sqrt{n}` line), and a
biased one levels off at its bias :math:`\lVert \mu - g \rVert`. Both the bias and the
covariance trace are computed exactly by enumerating every sequence.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from rlcourse.derivations import baseline as bl
from rlcourse.derivations import reward_to_go as rtg
from rlcourse.experiments import toy
from rlcourse.plots import figure
from rlcourse.threads import cpu_threads
from rlcourse.toymdp import ToyMDP, course_problem

__all__ = [
    "shifted_mdp", "variance_reduction_estimators", "estimator_stats",
    "sampled_errors", "predicted_rms_error", "running_estimate",
    "plot_mc_gradient", "plot_loss_not_a_loss", "plot_training", "plot_estimator_bars",
    "plot_error_curves", "plot_constant_baseline",
]

FIGSIZE = (10, 4)
DTYPE = torch.float64

# The MDP and parameters used by the derivation checks (rlcourse.derivations.*.checks()),
# so that the numbers printed by `rlcourse verify` and by the notebooks agree.

# Names of the estimators of notebook 03, in the order they are plotted.
FULL, RTG, CONST, VBASE, ADV, ACTION = (
    "R(τ)  full return",
    "G_t  reward-to-go",
    "R(τ) − b*  optimal constant",
    "G_t − V(s_t)",
    "A(s_t, a_t)  exact advantage",
    "G_t − b(s_t, a_t)  action-dependent",
)


# ============================================================================ data

def shifted_mdp(mdp: ToyMDP, shift: float) -> ToyMDP:
    r"""The same MDP with every return shifted by a constant: :math:`R_c(\tau) = R(\tau) + c`.

    The shift is added to the terminal reward of every terminating transition (each
    sequence ends with exactly one). Since :math:`\sum_\tau P_\theta(\tau) = 1`,
    :math:`J_c = J + c` and :math:`\nabla J_c = \nabla J`: the *gradient* does not see the
    shift, but the value of the surrogate :math:`\sum_\tau \mathrm{sg}[P]\,R_c \log P` does.
    """
    if not math.isfinite(shift):
        raise ValueError(f"shift must be a finite number, got {shift!r}")
    term = mdp.terminal_reward + shift * mdp.terminates.to(DTYPE)
    return ToyMDP(mdp.vocab_size, mdp.horizon, mdp.token_reward, term, eos=mdp.eos,
                  temperature=mdp.temperature)


def variance_reduction_estimators(mdp: ToyMDP, theta: torch.Tensor, seed: int = 3) -> dict[str, torch.Tensor]:
    r"""Per-sequence gradient estimates :math:`X(\tau)`, shape (N, S, V) each, for every enumerated sequence.

    * ``R(τ)``: :math:`R(\tau) \sum_t \nabla \log \pi_t` (the plain estimator);
    * ``G_t``: :math:`\sum_t G_t \nabla \log \pi_t` (reward-to-go);
    * ``R(τ) − b*``: :math:`(R(\tau) - b^\star) \sum_t \nabla \log \pi_t` with the optimal constant
      :math:`b^\star` of :func:`rlcourse.derivations.baseline.optimal_constant_baseline`;
    * ``G_t − V(s_t)``: reward-to-go minus the exact state value;
    * ``A(s_t, a_t)``: :math:`\sum_t A^\pi(s_t, a_t) \nabla \log \pi_t`, the exact advantage (a perfect critic);
    * ``G_t − b(s_t, a_t)``: a random action-dependent "baseline" table, :math:`b \sim 2\,\mathcal N(0, 1)`
      (the negative control: biased). It is the table of the ``baseline`` derivation's checks:
      drawn from a generator seeded with ``seed``, after a state table of ``num_states`` draws.
    """
    seq = mdp.sequences
    full = rtg.per_token_estimates(mdp, theta, rtg.full_return_weights(mdp))
    b_star = bl.optimal_constant_baseline(mdp, theta)
    gen = torch.Generator().manual_seed(seed)
    torch.randn(mdp.num_states, generator=gen, dtype=DTYPE)        # the b(s) table drawn first by the checks
    b_sa = 2.0 * torch.randn(mdp.num_states, mdp.vocab_size, generator=gen, dtype=DTYPE)
    adv = mdp.advantages(theta)[seq.states, seq.tokens] * seq.mask
    return {
        FULL: full,
        RTG: rtg.per_token_estimates(mdp, theta, rtg.reward_to_go_weights(mdp)),
        CONST: rtg.per_token_estimates(mdp, theta, rtg.full_return_weights(mdp) - b_star * seq.mask),
        VBASE: bl.baselined_estimates(mdp, theta, bl.state_baseline_weights(mdp, mdp.state_values(theta))),
        ADV: rtg.per_token_estimates(mdp, theta, adv),
        ACTION: bl.baselined_estimates(mdp, theta, bl.action_baseline_weights(mdp, b_sa)),
    }


def estimator_stats(mdp: ToyMDP, theta: torch.Tensor, estimates: dict[str, torch.Tensor]) -> dict[str, dict]:
    r"""Exact bias norm :math:`\lVert \mathbb{E}X - \nabla J \rVert` and covariance trace
    :math:`\operatorname{tr}\operatorname{Cov}[X]` of each per-sequence estimator, by enumeration.

    Returns ``{name: {"bias": float, "variance": float}}``.
    """
    p = mdp.probabilities(theta).detach()
    truth = mdp.exact_gradient(theta)
    return {name: {"bias": float((rtg.exact_mean(p, x) - truth).norm()),
                   "variance": rtg.exact_variance_trace(p, x)}
            for name, x in estimates.items()}


def predicted_rms_error(stats: dict, ns) -> np.ndarray:
    r""":math:`\sqrt{\lVert\text{bias}\rVert^2 + \operatorname{tr}\operatorname{Cov}/n}` for each ``n``: the exact
    root-mean-square error of the mean of ``n`` i.i.d. estimates (``stats`` from :func:`estimator_stats`)."""
    ns = np.asarray(ns, dtype=float)
    return np.sqrt(stats["bias"] ** 2 + stats["variance"] / ns)


def _check_ns(ns) -> np.ndarray:
    ns = np.asarray(ns)
    if ns.ndim != 1 or ns.size == 0 or (ns < 1).any() or (np.diff(ns) <= 0).any():
        raise ValueError(f"ns must be a non-empty increasing 1-D list of positive sample sizes, got {ns!r}")
    return ns.astype(int)


@cpu_threads(1)  # tens of entries per tensor: a thread synchronisation costs more than the op
def running_estimate(mdp: ToyMDP, theta: torch.Tensor, estimates: torch.Tensor, ns, seed: int = 0) -> torch.Tensor:
    r"""The sample mean :math:`\bar X_n` of one stream of sampled sequences, at each ``n`` in ``ns``.

    Sequences are sampled token by token (:meth:`ToyMDP.sample`); ``estimates`` is (N, ...) per
    enumerated sequence. Returns (len(ns), ...)."""
    ns = _check_ns(ns)
    idx = mdp.sample(theta, int(ns[-1]), seed=seed)
    x = estimates[idx].reshape(len(idx), -1).cumsum(0)
    return (x[ns - 1] / torch.as_tensor(ns, dtype=DTYPE)[:, None]).reshape(len(ns), *estimates.shape[1:])


@cpu_threads(1)  # tens of entries per tensor: a thread synchronisation costs more than the op
def sampled_errors(mdp: ToyMDP, theta: torch.Tensor, estimates: dict[str, torch.Tensor], ns, repeats: int = 100,
                   seed: int = 0) -> dict[str, np.ndarray]:
    r"""Error :math:`\lVert \bar X_n - \nabla J \rVert` of sampled gradient estimates, shape (repeats, len(ns)).

    Each of the ``repeats`` runs samples one stream of ``max(ns)`` sequences from
    :math:`\pi_\theta` and measures the error of the running mean at each ``n``. All
    estimators see the *same* sequences (common random numbers), so their curves differ
    only by the estimator.
    """
    ns = _check_ns(ns)
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    truth = mdp.exact_gradient(theta).flatten()
    idx = mdp.sample(theta, repeats * int(ns[-1]), seed=seed).reshape(repeats, int(ns[-1]))
    counts = torch.as_tensor(ns, dtype=DTYPE)[None, :, None]
    out = {}
    for name, x in estimates.items():
        flat = x.reshape(x.shape[0], -1)
        means = flat[idx].cumsum(1)[:, ns - 1] / counts          # (repeats, len(ns), D)
        out[name] = (means - truth).norm(dim=-1).numpy()
    return out


# ============================================================================ plots

def plot_mc_gradient(ns, running: np.ndarray, exact: np.ndarray, labels: list[str], errors: np.ndarray,
                     predicted: np.ndarray) -> plt.Figure:
    r"""Left: a sampled estimate of a few gradient components against their exact values, as
    the number of samples grows. Right: the error :math:`\lVert \hat g_n - \nabla J \rVert` of many runs,
    their root-mean-square, and the exact prediction :math:`\sqrt{\operatorname{tr}\operatorname{Cov}/n}`.

    Args: ``running`` (len(ns), k) estimates; ``exact`` (k,); ``labels`` k names;
    ``errors`` (repeats, len(ns)); ``predicted`` (len(ns),).
    """
    ns = np.asarray(ns)
    running, exact, errors = np.asarray(running), np.asarray(exact), np.asarray(errors)
    fig, (a, b) = plt.subplots(1, 2, figsize=FIGSIZE)
    for j, lab in enumerate(labels):
        line, = a.plot(ns, running[:, j], label=f"sampled {lab}")
        a.axhline(exact[j], color=line.get_color(), ls="--", lw=1, label=f"exact {lab}")
    a.set_xscale("log")
    a.set_xlabel("number of sampled sequences n")
    a.set_ylabel("gradient component")
    a.set_title("Monte Carlo estimate → exact value")
    a.legend(fontsize=7, ncol=1)

    for r in errors[: min(len(errors), 20)]:
        b.plot(ns, r, color="tab:blue", alpha=0.15, lw=0.8)
    b.plot([], [], color="tab:blue", alpha=0.4, lw=0.8, label="single runs")
    b.plot(ns, np.sqrt((errors ** 2).mean(0)), "o-", color="tab:blue", ms=3,
           label=f"RMS over {len(errors)} runs")
    b.plot(ns, predicted, "k--", label=r"exact $\sqrt{\mathrm{tr\,Cov}/n}$")
    b.set_xscale("log")
    b.set_yscale("log")
    b.set_xlabel("number of sampled sequences n")
    b.set_ylabel(r"$\|\hat g_n - \nabla J\|$")
    b.set_title(r"error of the sampled gradient $\propto 1/\sqrt{n}$")
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_loss_not_a_loss(J: np.ndarray, surrogate: dict[float, np.ndarray], batch_loss: np.ndarray | None = None
                         ) -> plt.Figure:
    r"""Left: :math:`J` along one gradient-ascent run (the same run whatever the reward shift c).
    Right: the value of the surrogate loss :math:`-\sum_\tau \mathrm{sg}[P]\,(R + c) \log P` along that run,
    one curve per shift; optionally a REINFORCE minibatch loss in grey."""
    steps = np.arange(len(J))
    fig, (a, b) = plt.subplots(1, 2, figsize=FIGSIZE)
    a.plot(steps, J, color="k")
    a.set_xlabel("gradient step")
    a.set_ylabel(r"$J(\theta)$")
    a.set_title(r"objective $J$ rises (identical run for every shift $c$)")
    if batch_loss is not None and len(batch_loss):
        b.plot(np.arange(len(batch_loss)), batch_loss, color="0.6", lw=0.7,
               label="REINFORCE minibatch loss (c = 0, B = 16)")
    for c, vals in surrogate.items():
        b.plot(steps, vals, lw=2, label=f"surrogate loss, rewards shifted by c = {c:+g}")
    b.axhline(0, color="k", lw=0.5)
    b.set(xlabel="gradient step", ylabel="value of the surrogate loss",
          title="the 'loss' goes up or down with the shift c")
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_training(curves: dict[str, np.ndarray], j_star: float, j0: float | None = None) -> plt.Figure:
    r"""Exact :math:`J(\theta_k)` over training for several methods (left) and the gap
    :math:`J^* - J(\theta_k)` on a log scale (right). Each value of ``curves`` is (runs, steps + 1)
    or (steps + 1,); several runs are drawn faint with their mean solid.
    ``j_star`` is :math:`\max_\tau R(\tau)`, the supremum of :math:`J` over policies."""
    fig, (a, b) = plt.subplots(1, 2, figsize=FIGSIZE)
    for name, c in curves.items():
        c = np.atleast_2d(np.asarray(c))
        steps = np.arange(c.shape[1])
        label = name if len(c) == 1 else f"{name} ({len(c)} runs, mean solid)"
        style = dict(color="k", lw=1.8, zorder=5) if len(c) == 1 else dict(lw=2)
        line, = a.plot(steps, c.mean(0), label=label, **style)
        b.plot(steps, j_star - c.mean(0), **style)
        if len(c) > 1:
            for r in c:
                a.plot(steps, r, color=line.get_color(), alpha=0.3, lw=0.7)
                b.plot(steps, j_star - r, color=line.get_color(), alpha=0.3, lw=0.7)
    a.axhline(j_star, color="tab:red", ls="--", lw=1, label=r"$J^* = \max_\tau R(\tau)$")
    if j0 is not None:
        a.axhline(j0, color="0.5", ls=":", lw=1, label=r"$J(\theta_0)$")
    a.set_xlabel("gradient step")
    a.set_ylabel(r"exact $J(\theta)$")
    a.set_title("exact gradient vs sampled REINFORCE")
    a.legend(fontsize=7.5, loc="lower right")
    b.set_yscale("log")
    b.set_xlabel("gradient step")
    b.set_ylabel(r"$J^* - J(\theta)$")
    b.set_title("gap to the best achievable return")
    fig.tight_layout()
    return fig


def plot_estimator_bars(stats: dict[str, dict]) -> plt.Figure:
    r"""Two bar charts: the exact covariance trace of each estimator, and its exact bias norm."""
    names = list(stats)
    var = [stats[n]["variance"] for n in names]
    bias = [stats[n]["bias"] for n in names]
    colors = ["tab:red" if b > 1e-8 else "tab:blue" for b in bias]
    y = np.arange(len(names))[::-1]
    fig, (a, b) = plt.subplots(1, 2, figsize=FIGSIZE, sharey=True)
    a.barh(y, var, color=colors)
    for yi, v in zip(y, var):
        a.text(v, yi, f" {v:.3f}", va="center", fontsize=8)
    a.set_yticks(y, names, fontsize=8)
    a.set_xlabel(r"exact $\mathrm{tr\,Cov}[\hat g]$ (one sequence)")
    a.set_title("variance (exact, by enumeration)")
    a.set_xlim(0, max(var) * 1.25)
    b.barh(y, bias, color=colors)
    for yi, v in zip(y, bias):
        b.text(v, yi, f" {v:.3g}" if v > 1e-8 else " 0 (unbiased)", va="center", fontsize=8)
    b.set_xlabel(r"exact $\|\mathbb{E}[\hat g] - \nabla J\|$")
    b.set_title("bias (exact); red = biased")
    b.set_xlim(0, max(max(bias) * 1.4, 0.1))
    fig.tight_layout()
    return fig


def plot_error_curves(ns, errors: dict[str, np.ndarray], predicted: dict[str, np.ndarray]) -> plt.Figure:
    r"""RMS error of the sampled estimators against the number of samples (dots), with their exact
    predictions :math:`\sqrt{\text{bias}^2 + \mathrm{tr\,Cov}/n}` (lines); log-log."""
    ns = np.asarray(ns)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for name, e in errors.items():
        rms = np.sqrt((np.asarray(e) ** 2).mean(0))
        line, = ax.plot(ns, predicted[name], lw=1.5)
        ax.plot(ns, rms, "o", ms=3.5, color=line.get_color(), label=name)
    ax.plot([], [], "k-", lw=1.5, label=r"exact $\sqrt{\mathrm{bias}^2 + \mathrm{tr\,Cov}/n}$")
    ax.plot([], [], "ko", ms=3.5, label="sampled (RMS over runs)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of sampled sequences n")
    ax.set_ylabel(r"RMS of $\|\hat g_n - \nabla J\|$")
    ax.set_title("sampled gradient error: unbiased estimators fall as 1/√n, a biased one levels off")
    ax.legend(fontsize=7.5, loc="lower left")
    fig.tight_layout()
    return fig


def plot_constant_baseline(bs: np.ndarray, variance: np.ndarray, marks: dict[str, tuple[float, float]]
                           ) -> plt.Figure:
    r"""Covariance trace of :math:`(R - b)\nabla \log P` against the constant :math:`b`, with marked
    points ``{label: (b, tr Cov)}`` (e.g. b = 0, E[R], b*)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(bs, variance, color="k", lw=1.5, label=r"$\mathrm{tr\,Cov}[(R(\tau) - b)\,\nabla\log P_\theta(\tau)]$")
    for (label, (b, v)), m in zip(marks.items(), ["o", "s", "*", "D", "^"]):
        ax.plot([b], [v], m, ms=10 if m == "*" else 7, label=f"{label}: b = {b:.3f}, tr Cov = {v:.3f}")
    ax.set(xlabel="constant baseline b", ylabel="exact covariance trace",
           title="the best constant baseline is not the mean reward")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ============================================================================ builders

MC_NS = np.unique(np.logspace(0, np.log10(2000), 25).astype(int))
MC_REPEATS = 100
COMPONENTS = ((0, 0), (0, 2))  # (state, token): the first step's logits for "a" and "<eos>"


@figure("02_mc_gradient_error")
def build_mc_gradient_error() -> plt.Figure:
    """Sampled policy gradient R(τ)∇log P(τ) converging to the exact ∇J at the rate 1/√n."""
    mdp, theta = course_problem()
    per_seq = rtg.per_token_estimates(mdp, theta, rtg.full_return_weights(mdp))
    truth = mdp.exact_gradient(theta)
    stats = estimator_stats(mdp, theta, {FULL: per_seq})[FULL]
    running = running_estimate(mdp, theta, per_seq, MC_NS, seed=1)
    names = mdp.token_names()
    labels = [f"∂J/∂θ[s=(), {names[a]}]" for _, a in COMPONENTS]
    run = np.stack([running[:, s, a].numpy() for s, a in COMPONENTS], 1)
    exact = np.array([float(truth[s, a]) for s, a in COMPONENTS])
    errors = sampled_errors(mdp, theta, {FULL: per_seq}, MC_NS, repeats=MC_REPEATS, seed=0)[FULL]
    return plot_mc_gradient(MC_NS, run, exact, labels, errors, predicted_rms_error(stats, MC_NS))


LOSS_SHIFTS = (-2.0, 0.0, 2.0)


@figure("02_loss_not_a_loss")
def build_loss_not_a_loss() -> plt.Figure:
    """J rises along exact gradient ascent; the surrogate loss's value depends on a reward shift."""
    mdp, theta = course_problem()
    run = toy.gradient_ascent(mdp, theta)
    surrogate = {c: toy.gradient_ascent(shifted_mdp(mdp, c), theta)["surrogate_loss"] for c in LOSS_SHIFTS}
    reinforce = toy.gradient_ascent(mdp, theta, batch_size=16, seed=0)
    return plot_loss_not_a_loss(run["J"], surrogate, reinforce["batch_loss"])


@figure("02_training")
def build_training() -> plt.Figure:
    """Exact gradient ascent vs sampled REINFORCE on the toy MDP, J against J* = max R."""
    mdp, theta = course_problem()
    return plot_training(toy.training_curves(mdp, theta), float(mdp.returns().max()), float(mdp.objective(theta)))


@figure("03_estimator_variance")
def build_estimator_variance() -> plt.Figure:
    """Exact covariance trace and bias of the full-return, reward-to-go and baselined estimators."""
    mdp, theta = course_problem()
    return plot_estimator_bars(estimator_stats(mdp, theta, variance_reduction_estimators(mdp, theta)))


ERR_NS = np.unique(np.logspace(0, np.log10(3000), 16).astype(int))
ERR_REPEATS = 100


@figure("03_sampled_gradient_error")
def build_sampled_gradient_error() -> plt.Figure:
    """RMS error of each sampled estimator vs n, against its exact prediction."""
    mdp, theta = course_problem()
    est = variance_reduction_estimators(mdp, theta)
    stats = estimator_stats(mdp, theta, est)
    errors = sampled_errors(mdp, theta, est, ERR_NS, repeats=ERR_REPEATS, seed=0)
    return plot_error_curves(ERR_NS, errors, {n: predicted_rms_error(stats[n], ERR_NS) for n in est})


@figure("03_constant_baseline")
def build_constant_baseline() -> plt.Figure:
    """Covariance trace of the full-return estimator against a constant baseline b, with b* marked."""
    mdp, theta = course_problem()
    b_star = bl.optimal_constant_baseline(mdp, theta)
    mean_R = float(mdp.objective(theta))
    bs = torch.linspace(b_star - 1.5, b_star + 1.5, 201, dtype=DTYPE)
    var = bl.constant_baseline_variance(mdp, theta, bs).numpy()

    def at(b):
        return float(bl.constant_baseline_variance(mdp, theta, b))

    marks = {"no baseline": (0.0, at(0.0)), "mean reward E[R]": (mean_R, at(mean_R)),
             "optimal b*": (b_star, at(b_star))}
    return plot_constant_baseline(bs.numpy(), var, marks)
