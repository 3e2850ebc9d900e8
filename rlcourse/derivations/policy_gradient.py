r"""The log-derivative trick and the policy gradient theorem.

Statement. For :math:`J(\theta) = \mathbb{E}_{\tau \sim P_\theta}[R(\tau)] = \sum_\tau P_\theta(\tau) R(\tau)`,

.. math::

    \nabla_\theta J(\theta)
      = \sum_\tau \nabla_\theta P_\theta(\tau)\, R(\tau)
      = \sum_\tau P_\theta(\tau)\, \nabla_\theta \log P_\theta(\tau)\, R(\tau)
      = \mathbb{E}_{\tau \sim P_\theta}\Big[ R(\tau) \sum_t \nabla_\theta \log \pi_\theta(a_t \mid s_t) \Big],

using :math:`\nabla P = P\, \nabla \log P` and, because the transition (append the token) is
deterministic and does not depend on :math:`\theta`,
:math:`\log P_\theta(\tau) = \sum_t \log \pi_\theta(a_t \mid s_t)`.

Checks:

* exact: the autograd gradient of the enumerated :math:`J` equals the enumerated
  score-function expectation :math:`\sum_\tau P R \nabla \log P` (float64, 1e-10);
* exact: the surrogate :math:`\sum_\tau \mathrm{sg}[P_\theta(\tau)]\, R(\tau) \log P_\theta(\tau)`
  has the same gradient although its value is not :math:`J` (the "loss is not a loss" point);
* Monte Carlo: the sample mean of :math:`R(\tau) \nabla \log P_\theta(\tau)` over sampled
  sequences is within 4 standard errors of the exact gradient, componentwise;
* negative control: dropping the :math:`P` factor (the naive
  :math:`\sum_\tau R \nabla \log P`) does not equal the gradient;
* symbolic: :math:`\partial_\theta p = p\, \partial_\theta \log p` for a softmax probability.
"""

from __future__ import annotations

import sympy
import torch

from rlcourse.derivations.base import Check, derivation, exact, monte_carlo, negative_control, symbolic
from rlcourse.toymdp import ToyMDP, course_problem

NAME = "log_derivative_trick"


def score_function_gradient(mdp: ToyMDP, theta: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    r"""Exact :math:`\sum_\tau P_\theta(\tau) R(\tau) \nabla_\theta \log P_\theta(\tau)` by enumeration."""
    p, R, score = mdp.probabilities(theta).detach(), mdp.returns(gamma), mdp.score(theta)
    return torch.einsum("n,n,nsa->sa", p, R, score)


def surrogate_gradient(mdp: ToyMDP, theta: torch.Tensor) -> tuple[float, torch.Tensor]:
    r"""Value and gradient of the surrogate :math:`\sum_\tau \mathrm{sg}[P] R \log P_\theta`."""
    th = theta.detach().clone().requires_grad_(True)
    surrogate = (mdp.probabilities(th).detach() * mdp.returns() * mdp.sequence_logprobs(th)).sum()
    (g,) = torch.autograd.grad(surrogate, th)
    return float(surrogate.detach()), g


def sampled_gradients(mdp: ToyMDP, theta: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    r"""Per-sample estimates :math:`R(\tau_i) \nabla \log P_\theta(\tau_i)`, shape (n, S*V)."""
    idx = mdp.sample(theta, n, seed=seed)
    return (mdp.returns()[idx, None, None] * mdp.score(theta)[idx]).reshape(n, -1)


@derivation(NAME, "Log-derivative trick / policy gradient theorem", source="rlhf-derivation, unified-rl-llm, ppo-post-training, roy-policy-gradients")
def checks() -> list[Check]:
    mdp, theta = course_problem()
    truth = mdp.exact_gradient(theta)
    out = [exact(NAME, "autograd grad J == sum_tau P R grad log P", truth,
                 score_function_gradient(mdp, theta),
                 detail="exact gradient of the enumerated J vs the enumerated score-function form")]

    value, g = surrogate_gradient(mdp, theta)
    out.append(exact(NAME, "grad of surrogate sg[P] R log P == grad J", truth, g,
                     detail=f"surrogate value {value:.4f} differs from J = {float(mdp.objective(theta)):.4f}, "
                            "its gradient does not"))

    samples = sampled_gradients(mdp, theta, n=20000, seed=0)
    out.append(monte_carlo(NAME, "mean of R grad log P (sampled) == grad J", truth.flatten(), samples))

    naive = torch.einsum("n,nsa->sa", mdp.returns(), mdp.score(theta))
    out.append(negative_control(exact(NAME, "sum_tau R grad log P without the P factor", truth, naive),
                                detail="forgetting the probability weight must be rejected"))

    th, x = sympy.symbols("theta x", real=True)
    p = sympy.exp(th) / (sympy.exp(th) + sympy.exp(x))
    out.append(symbolic(NAME, "d p / d theta == p * d log p / d theta (softmax)",
                        sympy.diff(p, th), p * sympy.diff(sympy.log(p), th)))
    return out
