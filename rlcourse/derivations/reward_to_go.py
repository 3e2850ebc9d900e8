r"""Reward-to-go: an action cannot be credited with rewards that came before it.

Statement. Write the return as past plus future rewards around each step :math:`t`,
:math:`R(\tau) = \sum_{t' < t} r_{t'} + G_t` with :math:`G_t = \sum_{t' \ge t} r_{t'}`. Then

.. math::

    \nabla_\theta J
      = \mathbb{E}\Big[\sum_t \nabla_\theta \log \pi_\theta(a_t \mid s_t)\, R(\tau)\Big]
      = \underbrace{\mathbb{E}\Big[\sum_t \nabla_\theta \log \pi_\theta(a_t \mid s_t)
            \sum_{t' < t} r_{t'}\Big]}_{=\,0}
      + \mathbb{E}\Big[\sum_t \nabla_\theta \log \pi_\theta(a_t \mid s_t)\, G_t\Big].

The first term vanishes: the past rewards are fixed once :math:`s_t` is known (the prefix
contains them), so conditioning on :math:`s_t` leaves
:math:`\mathbb{E}_{a_t \sim \pi(\cdot \mid s_t)}[\nabla \log \pi(a_t \mid s_t)] = 0` (EGLP).
The reward-to-go estimator keeps the mean and drops a term that only adds noise. That the
variance goes *down* is not a theorem (the dropped term can be correlated with the kept
one); it is measured here, exactly, on the toy MDP.

The current reward :math:`r_t` must stay: it depends on :math:`a_t`, so the "future only"
weight :math:`\sum_{t' > t} r_{t'}` is biased whenever per-token rewards are nonzero.

Checks (toy MDP with per-token and terminal rewards, :math:`\gamma = 1`):

* exact: the past-reward term :math:`\sum_\tau P \sum_t \nabla\log\pi_t \sum_{t'<t} r_{t'}`
  is 0 (enumeration with per-token scores, 1e-10);
* exact: the reward-to-go estimator has mean :math:`\nabla_\theta J`, as the full-return
  estimator does;
* exact: the trace of the covariance of the reward-to-go estimator is below that of the
  full-return estimator (both traces reported);
* Monte Carlo: the sample mean of the reward-to-go estimator is within 4 standard errors of
  :math:`\nabla_\theta J`;
* negative control: dropping the current reward (weight :math:`\sum_{t'>t} r_{t'}`) does not
  give :math:`\nabla_\theta J`;
* negative control: the past rewards alone (weight :math:`\sum_{t'<t} r_{t'}`) do not give
  :math:`\nabla_\theta J` (their mean is 0).
"""

from __future__ import annotations

import torch

from rlcourse.advantages import reward_to_go, trajectory_return
from rlcourse.derivations.base import Check, derivation, exact, inequality, monte_carlo, negative_control
from rlcourse.toymdp import ToyMDP

NAME = "reward_to_go"


def per_token_estimates(mdp: ToyMDP, theta: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    r"""Per-sequence estimates :math:`\sum_t w_t(\tau)\, \nabla_\theta \log \pi_\theta(a_t \mid s_t)`,
    shape (N, S, V), for per-token weights ``weights`` (N, H) on every enumerated sequence."""
    return torch.einsum("nt,ntsa->nsa", weights, mdp.token_scores(theta))


def full_return_weights(mdp: ToyMDP) -> torch.Tensor:
    r""":math:`w_t = R(\tau)` at every counted step, (N, H)."""
    seq = mdp.sequences
    return trajectory_return(seq.token_rewards, seq.mask)[:, None] * seq.mask


def reward_to_go_weights(mdp: ToyMDP) -> torch.Tensor:
    r""":math:`w_t = G_t = \sum_{t' \ge t} r_{t'}`, (N, H)."""
    seq = mdp.sequences
    return reward_to_go(seq.token_rewards, seq.mask)


def past_reward_weights(mdp: ToyMDP) -> torch.Tensor:
    r""":math:`w_t = \sum_{t' < t} r_{t'} = R(\tau) - G_t`, (N, H): the boxed term of the derivation."""
    return full_return_weights(mdp) - reward_to_go_weights(mdp)


def future_only_weights(mdp: ToyMDP) -> torch.Tensor:
    r"""Wrong on purpose: :math:`w_t = G_t - r_t = \sum_{t' > t} r_{t'}` (the current reward dropped), (N, H)."""
    seq = mdp.sequences
    return reward_to_go_weights(mdp) - seq.token_rewards * seq.mask


def exact_mean(p: torch.Tensor, estimates: torch.Tensor) -> torch.Tensor:
    r""":math:`\mathbb{E}[X] = \sum_\tau P(\tau) X(\tau)` for per-sequence estimates (N, ...)."""
    return torch.einsum("n,n...->...", p, estimates)


def exact_variance_trace(p: torch.Tensor, estimates: torch.Tensor) -> float:
    r"""Trace of the covariance, :math:`\sum_\tau P(\tau)\, \lVert X(\tau) - \mathbb{E}X \rVert^2`."""
    x = estimates.reshape(estimates.shape[0], -1)
    mu = p @ x
    return float(p @ ((x - mu) ** 2).sum(-1))


@derivation(NAME, "Reward-to-go", source="rlhf-derivation, unified-rl-llm")
def checks() -> list[Check]:
    mdp = ToyMDP.random(vocab_size=3, horizon=3, seed=0)
    theta = mdp.init_params(seed=1)
    truth = mdp.exact_gradient(theta)
    p = mdp.probabilities(theta).detach()

    full = per_token_estimates(mdp, theta, full_return_weights(mdp))
    rtg = per_token_estimates(mdp, theta, reward_to_go_weights(mdp))
    past = per_token_estimates(mdp, theta, past_reward_weights(mdp))

    out = [exact(NAME, "E[sum_t grad log pi_t * sum_{t'<t} r_t'] == 0 (the past-reward term)",
                 torch.zeros_like(truth), exact_mean(p, past),
                 detail=f"enumeration of {mdp.num_sequences} sequences, per-token scores")]
    out.append(exact(NAME, "E[sum_t grad log pi_t * G_t] == grad J", truth, exact_mean(p, rtg),
                     detail="reward-to-go estimator, exact mean by enumeration"))
    out.append(exact(NAME, "E[R(tau) sum_t grad log pi_t] == grad J", truth, exact_mean(p, full),
                     detail="full-return estimator, same mean"))

    v_full, v_rtg = exact_variance_trace(p, full), exact_variance_trace(p, rtg)
    out.append(inequality(NAME, "tr Var[full return] - tr Var[reward-to-go] >= 0", 0.0, v_full - v_rtg,
                          detail=f"exact traces: full return {v_full:.4f}, reward-to-go {v_rtg:.4f} "
                                 "(measured on this MDP, not a theorem)"))

    idx = mdp.sample(theta, 20000, seed=0)
    out.append(monte_carlo(NAME, "mean of sum_t grad log pi_t G_t (sampled) == grad J", truth.flatten(),
                           rtg[idx].reshape(len(idx), -1)))

    future = exact_mean(p, per_token_estimates(mdp, theta, future_only_weights(mdp)))
    out.append(negative_control(
        exact(NAME, "E[sum_t grad log pi_t * sum_{t'>t} r_t'] (current reward dropped) == grad J", truth, future),
        detail=f"r_t depends on a_t, dropping it biases the gradient: "
               f"max bias {float((future - truth).abs().max()):.3f}"))
    out.append(negative_control(
        exact(NAME, "E[sum_t grad log pi_t * sum_{t'<t} r_t'] (past rewards only) == grad J", truth,
              exact_mean(p, past)),
        detail="the past-reward term has mean 0, not grad J: must be rejected"))
    return out
