r"""Baselines: subtracting a function of the state leaves the policy gradient unbiased.

Statement. For any :math:`b` that depends on the state only,

.. math::

    \mathbb{E}_\tau\Big[\sum_t \nabla_\theta \log \pi_\theta(a_t \mid s_t)\, b(s_t)\Big]
      = \sum_t \mathbb{E}_{s_t}\Big[ b(s_t)\,
        \underbrace{\mathbb{E}_{a_t \sim \pi(\cdot \mid s_t)}\big[\nabla_\theta \log \pi_\theta(a_t \mid s_t)\big]}_{=\,0\ \text{(EGLP)}}
        \Big] = 0,

so :math:`\sum_t \nabla \log \pi_t\, (G_t - b(s_t))` has mean :math:`\nabla_\theta J` whatever
:math:`b` is; :math:`b = V^\pi` is the usual choice and lowers the variance. Among
*constant* baselines for the full-return estimator :math:`g(\tau)(R(\tau) - b)` with
:math:`g = \nabla_\theta \log P_\theta(\tau)`, the trace of the covariance is the quadratic
:math:`\mathbb{E}[\lVert g \rVert^2 (R - b)^2] - \lVert \nabla J \rVert^2`, minimised at

.. math::

    b^\star = \frac{\mathbb{E}\big[R\, \lVert g \rVert^2\big]}{\mathbb{E}\big[\lVert g \rVert^2\big]}

(a reward average weighted by the squared score, not the plain :math:`\mathbb{E}[R]`).
The argument needs :math:`b` to be fixed given :math:`s_t`: a "baseline" that depends on
the action cannot be pulled out of :math:`\mathbb{E}_{a_t}` and biases the gradient.

Checks (toy MDP, :math:`\gamma = 1`):

* exact: :math:`\mathbb{E}[\sum_t \nabla \log \pi_t\, b(s_t)] = 0` for a random table :math:`b(s)`;
* exact: with :math:`b = V^\pi`, the estimator :math:`\sum_t \nabla\log\pi_t (G_t - V^\pi(s_t))`
  has mean :math:`\nabla_\theta J`;
* exact: its covariance trace is below that of plain reward-to-go (both reported);
* exact: :math:`d\,\mathrm{tr\,Var}/db = 0` at :math:`b^\star` (autograd through the exact variance);
* exact: :math:`\mathrm{tr\,Var}(b) \ge \mathrm{tr\,Var}(b^\star)` on a grid of constants around
  :math:`b^\star` (including :math:`0` and :math:`\mathbb{E}[R]`);
* Monte Carlo: the sampled mean of the :math:`V^\pi`-baseline estimator is within 4 SE of
  :math:`\nabla_\theta J`;
* negative control: the same stationarity test at :math:`b = \mathbb{E}[R]` fails;
* negative control: an action-dependent table :math:`b(s, a)` biases the gradient (bias reported);
* negative control: :math:`b = Q^\pi(s, a)` removes the signal altogether (the mean becomes 0).
"""

from __future__ import annotations

import torch

from rlcourse.advantages import reward_to_go, trajectory_return
from rlcourse.derivations.base import Check, derivation, exact, inequality, monte_carlo, negative_control
from rlcourse.toymdp import ToyMDP, course_problem

NAME = "baseline"


def state_baseline_weights(mdp: ToyMDP, b: torch.Tensor) -> torch.Tensor:
    r""":math:`b(s_t)` at every counted step of every sequence, (N, H), from a table ``b`` of shape (S,)."""
    seq = mdp.sequences
    return b[seq.states] * seq.mask


def action_baseline_weights(mdp: ToyMDP, b: torch.Tensor) -> torch.Tensor:
    r"""Wrong on purpose: :math:`b(s_t, a_t)` at every counted step, (N, H), from a table of shape (S, V)."""
    seq = mdp.sequences
    return b[seq.states, seq.tokens] * seq.mask


def estimates(mdp: ToyMDP, theta: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    r"""Per-sequence :math:`\sum_t w_t\, \nabla_\theta \log \pi_\theta(a_t \mid s_t)`, shape (N, S, V)."""
    return torch.einsum("nt,ntsa->nsa", weights, mdp.token_scores(theta))


def baselined_estimates(mdp: ToyMDP, theta: torch.Tensor, baseline_weights: torch.Tensor) -> torch.Tensor:
    r"""Per-sequence :math:`\sum_t (G_t - b_t)\, \nabla_\theta \log \pi_\theta(a_t \mid s_t)`, shape (N, S, V)."""
    seq = mdp.sequences
    return estimates(mdp, theta, reward_to_go(seq.token_rewards, seq.mask) - baseline_weights)


def exact_mean(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r""":math:`\sum_\tau P(\tau)\, X(\tau)`."""
    return torch.einsum("n,n...->...", p, x)


def exact_variance_trace(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r""":math:`\sum_\tau P(\tau)\, \lVert X(\tau) - \mathbb{E}X \rVert^2` (differentiable in ``x``)."""
    x = x.reshape(x.shape[0], -1)
    return p @ ((x - p @ x) ** 2).sum(-1)


def constant_baseline_variance(mdp: ToyMDP, theta: torch.Tensor, b: torch.Tensor | float) -> torch.Tensor:
    r"""Covariance trace of the full-return estimator :math:`\nabla\log P_\theta(\tau)\,(R(\tau) - b)`.

    ``b`` is a number or a tensor of constants (any shape); the result has the shape of ``b``.
    """
    p = mdp.probabilities(theta).detach()
    seq = mdp.sequences
    R = trajectory_return(seq.token_rewards, seq.mask)
    g = mdp.score(theta).reshape(mdp.num_sequences, -1)
    b = torch.as_tensor(b, dtype=torch.float64)
    x = (R[None, :] - b.reshape(-1, 1))[..., None] * g          # (K, N, S*V)
    mu = torch.einsum("n,knd->kd", p, x)
    return torch.einsum("n,knd->k", p, (x - mu[:, None]) ** 2).reshape(b.shape)


def optimal_constant_baseline(mdp: ToyMDP, theta: torch.Tensor) -> float:
    r""":math:`b^\star = \mathbb{E}[R \lVert g \rVert^2] / \mathbb{E}[\lVert g \rVert^2]` with
    :math:`g = \nabla_\theta \log P_\theta(\tau)`, exact by enumeration."""
    p = mdp.probabilities(theta).detach()
    seq = mdp.sequences
    R = trajectory_return(seq.token_rewards, seq.mask)
    g2 = (mdp.score(theta) ** 2).sum((1, 2))
    return float((p * R * g2).sum() / (p * g2).sum())


@derivation(NAME, "Baselines and the optimal constant baseline", source="rlhf-derivation, unified-rl-llm, ppo-post-training, roy-policy-gradients")
def checks() -> list[Check]:
    mdp, theta = course_problem()
    truth = mdp.exact_gradient(theta)
    p = mdp.probabilities(theta).detach()
    gen = torch.Generator().manual_seed(3)

    b_any = 2.0 * torch.randn(mdp.num_states, generator=gen, dtype=torch.float64)
    term = exact_mean(p, estimates(mdp, theta, state_baseline_weights(mdp, b_any)))
    out = [exact(NAME, "E[sum_t grad log pi_t * b(s_t)] == 0 for a random b(s)", torch.zeros_like(truth), term,
                 detail=f"b drawn from N(0, 4) on {mdp.num_states} states")]

    v_pi = mdp.state_values(theta)
    with_v = baselined_estimates(mdp, theta, state_baseline_weights(mdp, v_pi))
    no_b = baselined_estimates(mdp, theta, torch.zeros_like(mdp.sequences.mask))
    out.append(exact(NAME, "E[sum_t grad log pi_t (G_t - V(s_t))] == grad J", truth, exact_mean(p, with_v)))

    var0, varv = float(exact_variance_trace(p, no_b)), float(exact_variance_trace(p, with_v))
    out.append(inequality(NAME, "tr Var[G_t] - tr Var[G_t - V(s_t)] >= 0", 0.0, var0 - varv,
                          detail=f"exact traces: no baseline {var0:.4f}, V baseline {varv:.4f}"))

    b_star = optimal_constant_baseline(mdp, theta)
    b = torch.tensor(b_star, dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(constant_baseline_variance(mdp, theta, b), b)
    out.append(exact(NAME, "d tr Var / d b == 0 at b* = E[R |g|^2] / E[|g|^2]", 0.0, slope,
                     detail=f"b* = {b_star:.4f}"))

    mean_R = float(p @ mdp.returns())
    grid = [b_star + d for d in torch.linspace(-2.0, 2.0, 40, dtype=torch.float64).tolist()] + [0.0, mean_R]
    v_star = float(constant_baseline_variance(mdp, theta, b_star))
    excess = constant_baseline_variance(mdp, theta, torch.tensor(grid, dtype=torch.float64)) - v_star
    out.append(inequality(NAME, "tr Var(b) - tr Var(b*) >= 0 on a grid of constants", 0.0, excess,
                          detail=f"tr Var: b*={b_star:.4f} -> {v_star:.4f}; b=0 -> "
                                 f"{float(constant_baseline_variance(mdp, theta, 0.0)):.4f}; b=E[R]={mean_R:.4f} -> "
                                 f"{float(constant_baseline_variance(mdp, theta, mean_R)):.4f}"))

    b_mean = torch.tensor(mean_R, dtype=torch.float64, requires_grad=True)
    (slope_mean,) = torch.autograd.grad(constant_baseline_variance(mdp, theta, b_mean), b_mean)
    out.append(negative_control(
        exact(NAME, "d tr Var / d b == 0 at b = E[R] (the plain mean reward)", 0.0, slope_mean),
        detail="the unweighted mean reward is not the variance minimiser: must be rejected"))

    idx = mdp.sample(theta, 20000, seed=0)
    out.append(monte_carlo(NAME, "mean of sum_t grad log pi_t (G_t - V(s_t)) (sampled) == grad J",
                           truth.flatten(), with_v[idx].reshape(len(idx), -1)))

    b_sa = 2.0 * torch.randn(mdp.num_states, mdp.vocab_size, generator=gen, dtype=torch.float64)
    biased = exact_mean(p, baselined_estimates(mdp, theta, action_baseline_weights(mdp, b_sa)))
    out.append(negative_control(
        exact(NAME, "E[sum_t grad log pi_t (G_t - b(s_t, a_t))] == grad J (action-dependent b)", truth, biased),
        detail=f"b(s, a) cannot leave E_a: bias {float((biased - truth).norm()):.3f} (norm), must be rejected"))

    q_pi = mdp.q_values(theta)
    with_q = exact_mean(p, baselined_estimates(mdp, theta, action_baseline_weights(mdp, q_pi)))
    out.append(negative_control(
        exact(NAME, "E[sum_t grad log pi_t (G_t - Q(s_t, a_t))] == grad J", truth, with_q),
        detail=f"subtracting Q removes the whole signal: |mean| = {float(with_q.norm()):.1e}, "
               f"|grad J| = {float(truth.norm()):.3f}"))
    return out
