r"""Figures of notebooks 05 (advantages and GAE) and 06 (from TRPO to PPO).

Everything is measured against exact values computed by enumerating the toy MDP
(:mod:`rlcourse.toymdp`), with the estimators and losses taken from the package:
:func:`rlcourse.advantages.gae`, :mod:`rlcourse.ratios`, :func:`rlcourse.losses.clipped_surrogate`,
:class:`rlcourse.losses.AdaptiveKLController`, and the derivation modules
(:mod:`rlcourse.derivations.gae`, ``performance_difference``, ``importance_ratios``, ``ppo_penalty``).

Three kinds of function:

* *data* functions (``noisy_values``, ``gae_gradient_estimates``,
  ``gae_bias_variance``, ``kl_shaped_example``, ``surrogate_vs_true``, ``gspo_expected_gradient``,
  ``off_policy_gradient_bias``, ``ratio_length_stats``, ``clip_objective_curves``): tensors in,
  numbers out, no plotting;
* *plot* functions (``plot_*``): data in, a matplotlib ``Figure`` out;
* *builders* registered with :func:`rlcourse.plots.figure` (``05_…``, ``06_…``): no arguments,
  they compute their own data and return the figure the notebook shows.

The bias and variance of a gradient estimator :math:`X(\tau)` are exact: with :math:`g` the
exact gradient, bias :math:`= \lVert \mathbb{E}X - g \rVert` and variance
:math:`= \operatorname{tr}\operatorname{Cov}[X]`, both sums over every sequence weighted by its
probability. A batch of :math:`B` trajectories has mean squared error
:math:`\text{bias}^2 + \text{variance}/B`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from rlcourse.advantages import gae
from rlcourse.derivations import baseline as bl
from rlcourse.derivations import importance_ratios as ir
from rlcourse.derivations import performance_difference as pdl
from rlcourse.derivations.gae import toy_values
from rlcourse.derivations.ppo_penalty import SignReversedKLController, simulate_adaptive_kl
from rlcourse.kl import kl_categorical, kl_k1
from rlcourse.logprobs import token_logprobs
from rlcourse.losses import AdaptiveKLController, clipped_surrogate
from rlcourse.plots import figure
from rlcourse.ratios import sequence_ratio, trajectory_ratio
from rlcourse.toymdp import ToyMDP, course_problem

__all__ = [
    "step_direction", "noisy_values", "gae_gradient_estimates", "gae_bias_variance",
    "kl_shaped_example", "surrogate_vs_true", "gspo_expected_gradient", "off_policy_gradient_bias",
    "ratio_length_stats", "clip_objective_curves",
    "plot_gae_bias_variance", "plot_kl_shaped_gae", "plot_surrogate_vs_true",
    "plot_ratio_vs_length", "plot_clip_objective", "plot_clip_variants", "plot_adaptive_kl",
]

DTYPE = torch.float64
FIGSIZE = (10, 3.6)

# The MDP, parameters and perturbation used by the derivation checks
# (rlcourse.derivations.{gae, performance_difference, importance_ratios, ppo_clip}.checks()),
# so that the numbers printed by `rlcourse verify` and by the notebooks agree.
DIRECTION_SEED = 2
WRONG_V_SEED = 5

LAMBDAS = tuple(float(x) for x in np.round(np.linspace(0.0, 1.0, 21), 2))
BATCH_SIZE = 8
STEPS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)
LENGTHS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
EPS = 0.2

_COLORS = {"true": "tab:green", "noisy": "tab:red", "zero": "tab:blue"}


# ============================================================================ data: shared

def step_direction(mdp: ToyMDP) -> torch.Tensor:
    r"""The fixed direction :math:`d` of the off-policy experiments: :math:`\theta = \theta_{\text{old}} + \alpha d`
    (the derivation checks use :math:`\alpha = 0.5`, or 0.3 for the clip)."""
    return mdp.init_params(seed=DIRECTION_SEED)


def noisy_values(mdp: ToyMDP, theta: torch.Tensor, scale: float = 1.0, seed: int = WRONG_V_SEED,
                 gamma: float = 1.0) -> torch.Tensor:
    r"""An imperfect critic: :math:`V(s) = V^\pi(s) + \text{scale}\cdot\varepsilon_s`, :math:`\varepsilon_s \sim N(0, 1)`
    (seed 5 and scale 1 give the "wrong V" of :mod:`rlcourse.derivations.gae`), shape (S,)."""
    g = torch.Generator().manual_seed(seed)
    return mdp.state_values(theta, gamma) + scale * torch.randn(mdp.num_states, generator=g, dtype=DTYPE)


# ============================================================================ data: notebook 05

def gae_gradient_estimates(mdp: ToyMDP, theta: torch.Tensor, values: torch.Tensor, gamma: float = 1.0,
                           lam: float = 0.95) -> torch.Tensor:
    r"""Per-sequence GAE policy-gradient estimates, shape (N, S, V):

    .. math::

        X(\tau) = \sum_t \gamma^t\, \hat A^{\mathrm{GAE}(\gamma,\lambda)}_t\, \nabla_\theta \log\pi_\theta(a_t \mid s_t),

    with :math:`\hat A` from :func:`rlcourse.advantages.gae` and the critic ``values`` (a table
    over the S prefixes). Their :math:`P_\theta`-weighted mean is
    :func:`rlcourse.derivations.gae.expected_gae_gradient`.
    """
    seq = mdp.sequences
    adv, _ = gae(seq.token_rewards, toy_values(mdp, values), seq.mask, gamma=gamma, lam=lam)
    return bl.estimates(mdp, theta, adv * mdp.discounts(gamma))


def gae_bias_variance(mdp: ToyMDP, theta: torch.Tensor, values: torch.Tensor, lams=LAMBDAS,
                      gamma: float = 1.0) -> dict[str, np.ndarray]:
    r"""Exact bias norm and variance trace of the one-trajectory GAE(:math:`\lambda`) gradient estimator.

    Returns numpy arrays ``lam``, ``bias`` (:math:`\lVert \mathbb{E}X - \nabla J\rVert`) and
    ``variance`` (:math:`\operatorname{tr}\operatorname{Cov}X`), one entry per :math:`\lambda`.
    """
    p = mdp.probabilities(theta).detach()
    truth = mdp.exact_gradient(theta, gamma)
    bias, var = [], []
    for lam in lams:
        x = gae_gradient_estimates(mdp, theta, values, gamma, float(lam))
        bias.append(float((bl.exact_mean(p, x) - truth).norm()))
        var.append(float(bl.exact_variance_trace(p, x)))
    return {"lam": np.asarray(lams, dtype=float), "bias": np.asarray(bias), "variance": np.asarray(var)}


def kl_shaped_example(length: int = 24, vocab_size: int = 8, beta: float = 0.1, score: float = 1.0,
                      spread: float = 0.7, seed: int = 0) -> dict[str, torch.Tensor]:
    r"""One synthetic response with per-token KL-shaped rewards, as PPO-RLHF builds them ("A Unified Perspective on RL for LLMs"):

    .. math::

        r_t = -\beta\, k_{1,t} + \mathbb{1}[t = T-1]\; \text{score}, \qquad
        k_{1,t} = \log\pi_\theta(y_t \mid s_t) - \log\pi_{\text{ref}}(y_t \mid s_t).

    The reference logits are standard normal, the policy's are the reference's plus
    ``spread`` times standard normal noise, at each of ``length`` positions; the tokens are
    sampled from the policy. Returns (1, T) float64 tensors ``rewards``, ``k1``, ``mask``.
    """
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be an integer >= 1, got {length!r}")
    g = torch.Generator().manual_seed(seed)
    ref_logits = torch.randn(1, length, vocab_size, generator=g, dtype=DTYPE)
    logits = ref_logits + spread * torch.randn(1, length, vocab_size, generator=g, dtype=DTYPE)
    tokens = torch.multinomial(torch.softmax(logits[0], -1), 1, generator=g).T  # (1, T)
    k1 = kl_k1(token_logprobs(logits, tokens), token_logprobs(ref_logits, tokens))
    rewards = -beta * k1
    rewards[0, -1] += score
    return {"rewards": rewards, "k1": k1, "mask": torch.ones_like(rewards)}


# ============================================================================ data: notebook 06

def surrogate_vs_true(mdp: ToyMDP, theta_old: torch.Tensor, direction: torch.Tensor, steps=STEPS,
                      gamma: float = 1.0) -> dict[str, np.ndarray]:
    r"""Along :math:`\theta_\alpha = \theta_{\text{old}} + \alpha d`: the exact improvement
    :math:`J(\theta_\alpha) - J(\theta_{\text{old}})`, the local surrogate
    :math:`L_{\text{old}}(\theta_\alpha) = \sum_s d_{\text{old}}(s) \sum_a \pi_\alpha(a \mid s) A^{\text{old}}(s, a)`
    (:func:`rlcourse.derivations.performance_difference.local_surrogate`), and the sequence-level
    :math:`\mathrm{KL}(P_{\text{old}} \,\|\, P_\alpha)`. Numpy arrays ``step``, ``diff``, ``surrogate``, ``kl``.
    """
    diff, sur, kl = [], [], []
    lp_old = mdp.sequence_logprobs(theta_old)
    for a in steps:
        th = theta_old + a * direction
        diff.append(float(pdl.performance_difference(mdp, th, theta_old, gamma)))
        sur.append(float(pdl.local_surrogate(mdp, th, theta_old, gamma)))
        kl.append(float(kl_categorical(lp_old, mdp.sequence_logprobs(th))))
    return {"step": np.asarray(steps, float), "diff": np.asarray(diff), "surrogate": np.asarray(sur),
            "kl": np.asarray(kl)}


def gspo_expected_gradient(mdp: ToyMDP, theta: torch.Tensor, theta_old: torch.Tensor) -> torch.Tensor:
    r"""Expected gradient of the (unclipped) GSPO surrogate with :math:`A = R`, shape (S, V):

    .. math::

        \nabla_\theta\, \mathbb{E}_{\text{old}}\big[s_\theta(\tau) R(\tau)\big]
        = \mathbb{E}_{\text{old}}\Big[s_\theta(\tau)\, R(\tau)\, \frac{1}{|y|}\sum_t \nabla_\theta\log\pi_\theta(a_t \mid s_t)\Big],

    with :math:`s_\theta` the geometric-mean ratio :func:`rlcourse.ratios.sequence_ratio`.
    """
    seq = mdp.sequences
    th = theta.detach().clone().requires_grad_(True)
    s = sequence_ratio(mdp.token_logprobs(th), mdp.token_logprobs(theta_old), seq.mask)
    (g,) = torch.autograd.grad(mdp.probabilities(theta_old).detach() @ (s * mdp.returns()), th)
    return g


def off_policy_gradient_bias(mdp: ToyMDP, theta_old: torch.Tensor, direction: torch.Tensor,
                             steps=STEPS) -> dict[str, np.ndarray]:
    r"""Bias and variance, with samples from :math:`\pi_{\text{old}}`, of three estimators of
    :math:`\nabla J(\theta_\alpha)` at :math:`\theta_\alpha = \theta_{\text{old}} + \alpha d`:

    * trajectory ratio: :math:`\tfrac{P_\theta}{P_{\text{old}}} R\, \nabla\log P_\theta` (unbiased);
    * token ratios (PPO/GRPO): :math:`\sum_t \rho_t\, \nabla\log\pi_\theta(a_t \mid s_t)\, R`;
    * GSPO's sequence ratio (:func:`gspo_expected_gradient`, bias only).

    Numpy arrays ``step``, ``kl`` (:math:`\mathrm{KL}(P_{\text{old}} \| P_\theta)`), ``grad_norm``
    (:math:`\lVert\nabla J(\theta_\alpha)\rVert`), ``bias_trajectory``, ``bias_token``, ``bias_gspo``
    (each :math:`\lVert \mathbb{E}_{\text{old}}[X] - \nabla J(\theta_\alpha) \rVert`, exact).
    """
    p_old = mdp.probabilities(theta_old).detach()
    lp_old = mdp.sequence_logprobs(theta_old)
    out = {k: [] for k in ("kl", "grad_norm", "bias_trajectory", "bias_token", "bias_gspo")}
    for a in steps:
        th = theta_old + a * direction
        truth = mdp.exact_gradient(th)
        traj = ir.trajectory_is_gradient_estimates(mdp, th, theta_old)
        tok = ir.token_ratio_gradient_estimates(mdp, th, theta_old)
        out["kl"].append(float(kl_categorical(lp_old, mdp.sequence_logprobs(th))))
        out["grad_norm"].append(float(truth.norm()))
        out["bias_trajectory"].append(float((ir.exact_mean(p_old, traj) - truth).norm()))
        out["bias_token"].append(float((ir.exact_mean(p_old, tok) - truth).norm()))
        out["bias_gspo"].append(float((gspo_expected_gradient(mdp, th, theta_old) - truth).norm()))
    res = {k: np.asarray(v) for k, v in out.items()}
    res["step"] = np.asarray(steps, float)
    return res


def ratio_length_stats(lengths=LENGTHS, vocab_size: int = 8, spread: float = 0.3, n: int = 4000,
                       seed: int = 0) -> dict[str, np.ndarray | float]:
    r"""How the trajectory ratio and GSPO's geometric-mean ratio behave with the response length :math:`L`.

    Tokens are i.i.d. from a fixed :math:`\pi_{\text{old}}` over ``vocab_size`` tokens; the new
    policy's logits are the old ones plus ``spread`` times standard normal noise. With
    :math:`\ell = \log\rho` per token (mean :math:`-\mathrm{KL}(\pi_{\text{old}}\|\pi)`,
    std :math:`\sigma`) the exact facts are:

    * trajectory ratio :math:`w = \prod_t \rho_t`: :math:`\mathbb{E}w = 1`, std of :math:`\log w` is
      :math:`\sigma\sqrt L`, and :math:`\mathbb{E}w^2 = (1+\chi^2)^L` so the effective sample size
      fraction :math:`1/\mathbb{E}w^2` decays exponentially;
    * GSPO's :math:`s = w^{1/L}`: std of :math:`\log s` is :math:`\sigma/\sqrt L`, and
      :math:`s \to e^{-\mathrm{KL}}` as :math:`L` grows.

    Monte Carlo (``n`` responses per length, fixed seed) uses :func:`rlcourse.ratios.trajectory_ratio`
    (``clamp=None``) and :func:`rlcourse.ratios.sequence_ratio`. Returns arrays ``length``,
    ``mc_std_log_traj``, ``mc_std_log_gspo``, ``mc_ess_traj``, ``mc_ess_gspo`` (sample ESS
    :math:`(\sum w)^2 / (n \sum w^2)`), ``mc_mean_traj``, ``mc_median_traj``, ``mc_mean_gspo``,
    ``exact_std_log_traj``, ``exact_std_log_gspo``, ``exact_ess_traj``, and floats ``kl``, ``sigma``, ``chi2``.
    """
    g = torch.Generator().manual_seed(seed)
    old_logits = torch.randn(vocab_size, generator=g, dtype=DTYPE)
    new_logits = old_logits + spread * torch.randn(vocab_size, generator=g, dtype=DTYPE)
    lp_old, lp_new = torch.log_softmax(old_logits, -1), torch.log_softmax(new_logits, -1)
    p_old = lp_old.exp()
    ell = lp_new - lp_old
    kl = float(kl_categorical(lp_old, lp_new))
    sigma = float((p_old @ ell ** 2 - (p_old @ ell) ** 2).sqrt())
    chi2 = float(p_old @ (ell.exp() ** 2) - 1.0)
    keys = ("mc_std_log_traj", "mc_std_log_gspo", "mc_ess_traj", "mc_ess_gspo", "mc_mean_traj",
            "mc_median_traj", "mc_mean_gspo")
    out = {k: [] for k in keys}
    for L in lengths:
        tokens = torch.multinomial(p_old.expand(n, vocab_size), L, replacement=True, generator=g)
        logp, logp_old = lp_new[tokens], lp_old[tokens]
        mask = torch.ones(n, L, dtype=DTYPE)
        w = trajectory_ratio(logp, logp_old, mask, clamp=None)
        s = sequence_ratio(logp, logp_old, mask)
        out["mc_std_log_traj"].append(float(w.log().std()))
        out["mc_std_log_gspo"].append(float(s.log().std()))
        out["mc_ess_traj"].append(float(w.sum() ** 2 / (n * (w ** 2).sum())))
        out["mc_ess_gspo"].append(float(s.sum() ** 2 / (n * (s ** 2).sum())))
        out["mc_mean_traj"].append(float(w.mean()))
        out["mc_median_traj"].append(float(w.median()))
        out["mc_mean_gspo"].append(float(s.mean()))
    res: dict[str, np.ndarray | float] = {k: np.asarray(v) for k, v in out.items()}
    L = np.asarray(lengths, float)
    res.update(length=L, exact_std_log_traj=sigma * np.sqrt(L), exact_std_log_gspo=sigma / np.sqrt(L),
               exact_ess_traj=(1.0 + chi2) ** (-L), kl=kl, sigma=sigma, chi2=chi2)
    return res


def clip_objective_curves(ratios, advantage: float, eps_low: float = EPS, eps_high: float | None = None,
                          dual_clip: float | None = None) -> dict[str, np.ndarray]:
    r"""The per-token PPO objective :math:`-\ell(\rho, A)` of :func:`rlcourse.losses.clipped_surrogate`
    and its derivative in :math:`\rho` and in :math:`\log\pi` (autograd), on a grid of ratios.

    Returns numpy arrays ``ratio``, ``objective``, ``unclipped`` (:math:`\rho A`), ``grad_ratio``
    (:math:`\partial(-\ell)/\partial\rho`: :math:`A` or 0) and ``grad_logp``
    (:math:`\partial(-\ell)/\partial\log\pi = \rho\,\partial(-\ell)/\partial\rho`).
    """
    r = torch.as_tensor(ratios, dtype=DTYPE).reshape(1, -1).clone().requires_grad_(True)
    adv = torch.full_like(r, float(advantage))
    obj = -clipped_surrogate(r, adv, eps_low, eps_high, dual_clip)
    (g,) = torch.autograd.grad(obj.sum(), r)
    rr = r.detach()[0]
    return {"ratio": rr.numpy(), "objective": obj.detach()[0].numpy(), "unclipped": (rr * advantage).numpy(),
            "grad_ratio": g[0].numpy(), "grad_logp": (rr * g[0]).numpy()}


# ============================================================================ plots: notebook 05

def plot_gae_bias_variance(curves: dict[str, dict], batch_size: int = BATCH_SIZE) -> plt.Figure:
    """Three panels against lambda: bias norm, variance trace, and the MSE of a batch of ``batch_size``.

    ``curves`` maps a label to the output of :func:`gae_bias_variance`.
    """
    fig, axes = plt.subplots(1, 3, figsize=FIGSIZE, constrained_layout=True)
    colors = list(_COLORS.values()) + ["tab:purple", "tab:orange"]
    for (label, c), color in zip(curves.items(), colors):
        mse = c["bias"] ** 2 + c["variance"] / batch_size
        axes[0].plot(c["lam"], c["bias"], "o-", ms=3, color=color, label=label)
        axes[1].plot(c["lam"], c["variance"], "o-", ms=3, color=color, label=label)
        axes[2].plot(c["lam"], mse, "o-", ms=3, color=color, label=label)
        best = int(np.argmin(mse))
        axes[2].plot(c["lam"][best], mse[best], "*", ms=13, color=color, mec="k", mew=0.6)
    axes[0].set_title(r"bias  $\|\mathbb{E}\,\hat g - \nabla J\|$")
    axes[1].set_title(r"variance  tr Cov$[\hat g]$, one trajectory")
    axes[2].set_title(rf"MSE = bias² + variance/B, B = {batch_size} (★ best)")
    for ax in axes:
        ax.set_xlabel(r"$\lambda$")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return fig


def plot_kl_shaped_gae(rewards: np.ndarray, k1: np.ndarray, beta: float, advantages: dict[str, np.ndarray]
                       ) -> plt.Figure:
    """Left: per-token KL-shaped rewards (KL part and score); right: GAE advantages per token."""
    T = len(rewards)
    t = np.arange(T)
    kl_part = -beta * k1
    score = rewards[-1] - kl_part[-1]
    fig, axes = plt.subplots(1, 2, figsize=FIGSIZE, constrained_layout=True)
    ax = axes[0]
    ax.bar(t, kl_part, color="tab:red", alpha=0.8, label=r"$-\beta\,k_{1,t}$ (sampled KL penalty)")
    top = 1.6 * max(np.abs(kl_part).max(), 1e-3)
    ax.bar([T - 1], [top * 0.9], bottom=[max(kl_part[-1], 0)], color="tab:blue", alpha=0.8,
           label="score (last token, bar cut)")
    ax.annotate(f"score = {score:+g}", xy=(T - 1, top * 0.93), xytext=(T - 9, top * 0.8), fontsize=8,
                arrowprops=dict(arrowstyle="->", lw=0.8))
    ax.set_ylim(-top, top)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_title(rf"per-token rewards $r_t$, $\beta$ = {beta:g}")
    ax.set_xlabel("token position t")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    ax = axes[1]
    cmap = plt.get_cmap("viridis")
    for i, (label, a) in enumerate(advantages.items()):
        ax.plot(t, a, "o-", ms=3, color=cmap(0.9 * i / max(1, len(advantages) - 1)), label=label)
    ax.axhline(0, color="k", lw=0.6)
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi + 0.3 * (hi - lo))
    ax.set_title(r"GAE advantages $\hat A_t$, untrained critic $V \equiv 0$, $\gamma$ = 1")
    ax.set_xlabel("token position t")
    ax.legend(fontsize=8, loc="upper left", ncol=len(advantages), handlelength=1.2, columnspacing=0.8)
    ax.grid(alpha=0.3)
    return fig


# ============================================================================ plots: notebook 06

def plot_surrogate_vs_true(data: dict[str, np.ndarray]) -> plt.Figure:
    """Left: J(theta) - J(old) and the local surrogate against the step; right: |error| against the KL (log-log)."""
    fig, axes = plt.subplots(1, 2, figsize=FIGSIZE, constrained_layout=True)
    ax = axes[0]
    ax.plot(data["step"], data["diff"], "o-", ms=4, color="k", label=r"$J(\theta) - J(\theta_{old})$ (exact)")
    ax.plot(data["step"], data["surrogate"], "s--", ms=4, color="tab:orange",
            label=r"surrogate $L_{old}(\theta)$ (old visitation)")
    ax.set_xlabel(r"step $\alpha$,  $\theta = \theta_{old} + \alpha d$")
    ax.set_title("improvement: true vs local surrogate")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    keep = data["kl"] > 0
    err = np.abs(data["diff"] - data["surrogate"])[keep]
    kl = data["kl"][keep]
    ax.loglog(kl, err, "o-", ms=4, color="tab:red", label=r"$|J(\theta) - J(\theta_{old}) - L_{old}(\theta)|$")
    c = err[0] / kl[0]
    ax.loglog(kl, c * kl, ":", color="gray", label=r"$\propto$ KL (slope 1)")
    ax.set_xlabel(r"KL$(P_{old} \,\|\, P_\theta)$ (sequence level)")
    ax.set_title("surrogate error grows like the KL")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return fig


def plot_ratio_vs_length(stats: dict) -> plt.Figure:
    """Left: std of the log-ratio against the length; right: effective sample size fraction."""
    L = stats["length"]
    fig, axes = plt.subplots(1, 2, figsize=FIGSIZE, constrained_layout=True)
    ax = axes[0]
    ax.loglog(L, stats["exact_std_log_traj"], "-", color="tab:green", label=r"trajectory: $\sigma\sqrt{L}$")
    ax.loglog(L, stats["mc_std_log_traj"], "o", ms=4, color="tab:green")
    ax.loglog(L, np.full_like(L, stats["sigma"]), "-", color="tab:red", label=r"one token: $\sigma$")
    ax.loglog(L, stats["exact_std_log_gspo"], "-", color="tab:purple", label=r"GSPO: $\sigma/\sqrt{L}$")
    ax.loglog(L, stats["mc_std_log_gspo"], "^", ms=4, color="tab:purple")
    ax.set_xlabel("response length L (tokens)")
    ax.set_title("std of the log importance ratio (lines exact, dots sampled)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    ax = axes[1]
    ax.semilogx(L, stats["exact_ess_traj"], "-", color="tab:green", label=r"trajectory: $1/(1+\chi^2)^L$")
    ax.semilogx(L, stats["mc_ess_traj"], "o", ms=4, color="tab:green", label="trajectory, sampled")
    ax.semilogx(L, stats["mc_ess_gspo"], "^-", ms=4, color="tab:purple", label="GSPO, sampled")
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("response length L (tokens)")
    ax.set_title(f"effective sample size / n  (per-token KL = {stats['kl']:.3f})")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3, which="both")
    return fig


def _shade_clip(ax, eps_low, eps_high):
    ax.axvspan(1 - eps_low, 1 + eps_high, color="tab:gray", alpha=0.12, lw=0)
    ax.axvline(1.0, color="k", lw=0.5, ls=":")


def plot_clip_objective(pos: dict, neg: dict, eps: float = EPS) -> plt.Figure:
    """2 x 2: the clipped objective (top) and its derivative in the ratio (bottom), for A > 0 and A < 0."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 4.2), sharex=True, constrained_layout=True)
    for j, (c, sign) in enumerate(((pos, "A > 0"), (neg, "A < 0"))):
        A = float(c["unclipped"][-1] / c["ratio"][-1])
        top, bot = axes[0, j], axes[1, j]
        top.plot(c["ratio"], c["unclipped"], "--", color="gray", lw=1, label=r"$\rho A$ (no clip)")
        top.plot(c["ratio"], c["objective"], color="tab:blue", lw=2, label=r"$\min(\rho A, \mathrm{clip}(\rho)A)$")
        top.set_title(f"{sign} (A = {A:+.1f}, ε = {eps})")
        flat = c["grad_ratio"] == 0
        bot.plot(c["ratio"], c["grad_ratio"], color="tab:red", lw=2)
        bot.fill_between(c["ratio"], -abs(A) * 1.2, abs(A) * 1.2, where=flat, color="tab:red", alpha=0.08, lw=0)
        bot.set_ylim(-abs(A) * 1.25, abs(A) * 1.25)
        bot.text(0.02, 0.06 if A > 0 else 0.84, "shaded: gradient 0 (clipped)", transform=bot.transAxes, fontsize=7)
        bot.set_xlabel(r"ratio $\rho = \pi_\theta / \pi_{old}$")
        for ax in (top, bot):
            _shade_clip(ax, eps, eps)
            ax.axhline(0, color="k", lw=0.5)
            ax.grid(alpha=0.3)
        top.legend(fontsize=7, loc="upper left" if A > 0 else "lower left")
        kw = dict(fontsize=7, color="dimgray")
        if A > 0:
            top.text(1 + eps + 0.05, 0.45 * A, "flat: no incentive to raise\nthis token further", **kw)
            top.text(0.02, 0.95 * A, "below 1-ε: not clipped,\nthe full gradient stays", **kw)
        else:
            top.text(0.02, -0.92 * abs(A), "flat: no incentive to lower\nthis token further", va="top", **kw)
            top.text(1 + eps + 0.05, -0.55 * abs(A), "above 1+ε: not clipped,\nthe full gradient stays", **kw)
    axes[0, 0].set_ylabel("objective")
    axes[1, 0].set_ylabel(r"$\partial\, \mathrm{objective} / \partial \rho$")
    return fig


def plot_clip_variants(dual: dict, plain_neg: dict, higher: dict, plain_pos: dict, eps: float, eps_high: float,
                       c: float) -> plt.Figure:
    """Left: A < 0 with and without the dual clip; right: A > 0 with symmetric eps and clip-higher."""
    fig, axes = plt.subplots(1, 2, figsize=FIGSIZE, constrained_layout=True)
    ax = axes[0]
    A = float(plain_neg["unclipped"][-1] / plain_neg["ratio"][-1])
    ax.plot(plain_neg["ratio"], plain_neg["objective"], color="tab:blue", lw=2, label="PPO clip")
    ax.plot(dual["ratio"], dual["objective"], "--", color="tab:orange", lw=2, label=f"dual clip, c = {c}")
    ax.axhline(c * A, color="tab:orange", lw=0.6, ls=":")
    ax.axvline(c, color="tab:orange", lw=0.6, ls=":")
    ax.set_title(f"A = {A:+.1f} < 0: the dual clip caps the loss for ρ > c")
    ax.set_xlabel(r"ratio $\rho$")
    ax.set_ylabel("objective")
    _shade_clip(ax, eps, eps)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    A = float(plain_pos["unclipped"][-1] / plain_pos["ratio"][-1])
    ax.plot(plain_pos["ratio"], plain_pos["objective"], color="tab:blue", lw=2, label=f"ε = {eps} both sides")
    ax.plot(higher["ratio"], higher["objective"], "--", color="tab:green", lw=2,
            label=f"clip-higher: ε_low = {eps}, ε_high = {eps_high}")
    ax.axvline(1 + eps_high, color="tab:green", lw=0.6, ls=":")
    ax.set_title(f"A = {A:+.1f} > 0: clip-higher, ε_high > ε_low")
    ax.set_xlabel(r"ratio $\rho$")
    _shade_clip(ax, eps, eps)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return fig


def plot_adaptive_kl(runs: dict[str, tuple[np.ndarray, np.ndarray]], target: float, beta_star: float
                     ) -> plt.Figure:
    """Left: beta over the updates (log); right: the KL it produced (log), with the target."""
    fig, axes = plt.subplots(1, 2, figsize=FIGSIZE, constrained_layout=True)
    styles = ["-", "-", "--"]
    colors = ["tab:blue", "tab:orange", "tab:red"]
    for (label, (betas, kls)), ls, col in zip(runs.items(), styles, colors):
        it = np.arange(len(betas))
        axes[0].semilogy(it, betas, ls, color=col, label=label)
        axes[1].semilogy(it, kls, ls, color=col, label=label)
    axes[0].axhline(beta_star, color="k", lw=0.8, ls=":", label=f"β* = {beta_star:g}")
    axes[1].axhline(target, color="k", lw=0.8, ls=":", label=f"KL target = {target:g}")
    axes[0].set_title(r"KL coefficient $\beta$")
    axes[1].set_title("measured KL")
    for ax in axes:
        ax.set_xlabel("policy update")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    return fig


# ============================================================================ builders

def gae_bias_variance_curves(mdp: ToyMDP | None = None, theta: torch.Tensor | None = None, lams=LAMBDAS
                             ) -> dict[str, dict]:
    """The three critics of notebook 05's figure: the true V, V + N(0, 1) noise, and V = 0."""
    if mdp is None:
        mdp, theta = course_problem()
    v_true = mdp.state_values(theta)
    return {
        "true Vπ": gae_bias_variance(mdp, theta, v_true, lams),
        "noisy Vπ + N(0, 1)": gae_bias_variance(mdp, theta, noisy_values(mdp, theta), lams),
        "no critic, V ≡ 0": gae_bias_variance(mdp, theta, torch.zeros_like(v_true), lams),
    }


@figure("05_gae_bias_variance")
def build_gae_bias_variance() -> plt.Figure:
    return plot_gae_bias_variance(gae_bias_variance_curves(), BATCH_SIZE)


KL_BETA = 0.1
KL_LAMBDAS = (0.0, 0.5, 0.9, 0.95, 1.0)


def kl_shaped_advantages(example: dict, lams=KL_LAMBDAS, gamma: float = 1.0) -> dict[str, np.ndarray]:
    """GAE advantages of :func:`kl_shaped_example` with an untrained critic (V = 0), one array per lambda."""
    values = torch.zeros_like(example["rewards"])
    return {rf"$\lambda$ = {lam:g}": gae(example["rewards"], values, example["mask"], gamma=gamma, lam=lam)[0][0].numpy()
            for lam in lams}


@figure("05_kl_shaped_gae")
def build_kl_shaped_gae() -> plt.Figure:
    ex = kl_shaped_example(beta=KL_BETA)
    return plot_kl_shaped_gae(ex["rewards"][0].numpy(), ex["k1"][0].numpy(), KL_BETA, kl_shaped_advantages(ex))


@figure("06_surrogate_vs_true")
def build_surrogate_vs_true() -> plt.Figure:
    mdp, theta = course_problem()
    return plot_surrogate_vs_true(surrogate_vs_true(mdp, theta, step_direction(mdp)))


@figure("06_ratio_vs_length")
def build_ratio_vs_length() -> plt.Figure:
    return plot_ratio_vs_length(ratio_length_stats())


CLIP_GRID = np.linspace(0.0, 2.0, 401)
CLIP_ADV = (1.0, -1.0)


@figure("06_ppo_clip")
def build_ppo_clip() -> plt.Figure:
    pos = clip_objective_curves(CLIP_GRID, CLIP_ADV[0], EPS)
    neg = clip_objective_curves(CLIP_GRID, CLIP_ADV[1], EPS)
    return plot_clip_objective(pos, neg, EPS)


DUAL_C = 3.0
EPS_HIGH = 0.28


@figure("06_clip_variants")
def build_clip_variants() -> plt.Figure:
    wide = np.linspace(0.0, 5.0, 501)
    return plot_clip_variants(
        dual=clip_objective_curves(wide, -1.0, EPS, dual_clip=DUAL_C),
        plain_neg=clip_objective_curves(wide, -1.0, EPS),
        higher=clip_objective_curves(CLIP_GRID, 1.0, EPS, eps_high=EPS_HIGH),
        plain_pos=clip_objective_curves(CLIP_GRID, 1.0, EPS),
        eps=EPS, eps_high=EPS_HIGH, c=DUAL_C)


# The KL model and controller settings of rlcourse.derivations.ppo_penalty.checks().
KL_TARGET, KL_C, KL_HORIZON, KL_N_STEPS, KL_UPDATES = 0.1, 0.05, 10000, 5000, 60


def adaptive_kl_runs(n_updates: int = KL_UPDATES) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The controller against KL(beta) = c / beta from beta 10x too small and 10x too large, and the
    sign-reversed rule (the derivation's negative control) from the small start."""
    runs = {}
    for label, ctl in (("β₀ = 0.05", AdaptiveKLController(0.05, KL_TARGET, KL_HORIZON)),
                       ("β₀ = 5", AdaptiveKLController(5.0, KL_TARGET, KL_HORIZON)),
                       ("sign-reversed rule, β₀ = 0.05", SignReversedKLController(0.05, KL_TARGET, KL_HORIZON))):
        betas, kls = simulate_adaptive_kl(ctl, KL_C, n_updates, KL_N_STEPS)
        runs[label] = (betas.numpy(), kls.numpy())
    return runs


@figure("06_adaptive_kl")
def build_adaptive_kl() -> plt.Figure:
    return plot_adaptive_kl(adaptive_kl_runs(), KL_TARGET, KL_C / KL_TARGET)
