r"""The expected grad-log-prob (EGLP) lemma.

Statement. For any family of distributions :math:`P_\theta` over a finite set,

.. math::

    \mathbb{E}_{x \sim P_\theta}\big[\nabla_\theta \log P_\theta(x)\big]
      = \sum_x P_\theta(x)\, \frac{\nabla_\theta P_\theta(x)}{P_\theta(x)}
      = \nabla_\theta \sum_x P_\theta(x) = \nabla_\theta 1 = 0 .

Two instances matter for policy gradients: per state,
:math:`\sum_a \pi_\theta(a \mid s)\, \nabla_\theta \log \pi_\theta(a \mid s) = 0` for every
:math:`s`, and per trajectory,
:math:`\mathbb{E}_{\tau \sim P_\theta}[\nabla_\theta \log P_\theta(\tau)] = 0`. The lemma is
the reason why reward-to-go and baselines do not bias the gradient: any factor that is
fixed once :math:`s_t` is known can be pulled out of :math:`\mathbb{E}_{a_t}[\cdot]`, which
then multiplies zero. It needs the weights to be the *same* normalised distribution whose
log is differentiated.

Checks:

* exact: for every state, :math:`\sum_a \pi(a \mid s) \nabla_\theta \log \pi(a \mid s) = 0`
  (the Jacobian of the log-policy by autograd, float64, 1e-10), at temperature 0.7;
* exact: :math:`\sum_\tau P_\theta(\tau) \nabla_\theta \log P_\theta(\tau) = 0` by enumeration;
* Monte Carlo: the sample mean of :math:`\nabla_\theta \log P_\theta(\tau)` is within 4
  standard errors of 0, componentwise;
* negative control: weighting the scores at :math:`\theta` by the trajectory distribution of
  another parameter :math:`\theta'` does not give 0;
* negative control: differentiating the unnormalised log-probability :math:`\theta_{s,a}/T`
  (forgetting :math:`\log Z`) gives :math:`\mathbb{E}_\pi = \pi(\cdot \mid s)/T \neq 0`;
* symbolic: for a softmax over 3 logits,
  :math:`\sum_a p_a\, \partial \log p_a / \partial z_b = 0` for each :math:`b`.
"""

from __future__ import annotations

import sympy
import torch

from rlcourse.derivations.base import Check, derivation, exact, monte_carlo, negative_control, symbolic
from rlcourse.toymdp import ToyMDP

NAME = "eglp"


def log_policy_jacobian(mdp: ToyMDP, theta: torch.Tensor) -> torch.Tensor:
    r""":math:`\partial \log \pi_\theta(a \mid s) / \partial \theta_{s',b}` by autograd, shape (S, V, S, V)."""
    return torch.autograd.functional.jacobian(mdp.policy_logprobs, theta.detach())


def per_state_expected_score(mdp: ToyMDP, theta: torch.Tensor) -> torch.Tensor:
    r""":math:`\sum_a \pi_\theta(a \mid s)\, \nabla_\theta \log \pi_\theta(a \mid s)` for every state s, shape (S, S, V)."""
    pi = mdp.policy_logprobs(theta.detach()).exp()
    return torch.einsum("sa,sakb->skb", pi, log_policy_jacobian(mdp, theta))


def expected_trajectory_score(mdp: ToyMDP, theta: torch.Tensor, theta_weights: torch.Tensor | None = None
                              ) -> torch.Tensor:
    r""":math:`\sum_\tau P_{\theta_w}(\tau)\, \nabla_\theta \log P_\theta(\tau)`, shape (S, V).

    ``theta_weights`` defaults to ``theta`` (the EGLP lemma); another value is the
    negative control (weights from a different distribution).
    """
    w = mdp.probabilities((theta if theta_weights is None else theta_weights).detach())
    return torch.einsum("n,nsa->sa", w, mdp.score(theta))


def unnormalised_expected_score(mdp: ToyMDP, theta: torch.Tensor) -> torch.Tensor:
    r"""Wrong on purpose: :math:`\sum_a \pi(a \mid s)\, \nabla_\theta (\theta_{s,a}/T)`, i.e. the score of
    the logits without the log-partition, shape (S, S, V); equals :math:`\pi(b \mid s)/T` on the diagonal block."""
    S, Vn = theta.shape
    pi = mdp.policy_logprobs(theta.detach()).exp()
    jac = torch.zeros(S, Vn, S, Vn, dtype=theta.dtype)
    for s in range(S):
        jac[s, :, s, :] = torch.eye(Vn, dtype=theta.dtype) / mdp.temperature
    return torch.einsum("sa,sakb->skb", pi, jac)


def sampled_scores(mdp: ToyMDP, theta: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    r"""Per-sample :math:`\nabla_\theta \log P_\theta(\tau_i)`, shape (n, S*V)."""
    idx = mdp.sample(theta, n, seed=seed)
    return mdp.score(theta)[idx].reshape(n, -1)


def softmax_eglp_sympy(k: int = 3) -> list[tuple[sympy.Expr, sympy.Symbol]]:
    r"""For a softmax over ``k`` symbolic logits, :math:`\sum_a p_a\, \partial_{z_b} \log p_a` for each b."""
    z = sympy.symbols(f"z0:{k}", real=True)
    Z = sum(sympy.exp(zi) for zi in z)
    p = [sympy.exp(zi) / Z for zi in z]
    return [(sum(p[a] * sympy.diff(sympy.log(p[a]), z[b]) for a in range(k)), z[b]) for b in range(k)]


@derivation(NAME, "EGLP lemma", source="rlhf-derivation")
def checks() -> list[Check]:
    mdp = ToyMDP.random(vocab_size=3, horizon=3, seed=0, temperature=0.7)
    theta = mdp.init_params(seed=1)
    S, Vn = theta.shape

    per_state = per_state_expected_score(mdp, theta)
    out = [exact(NAME, "sum_a pi(a|s) grad log pi(a|s) == 0 for every state", torch.zeros_like(per_state),
                 per_state,
                 detail=f"{S} states x {S * Vn} parameters, autograd Jacobian of log softmax(theta/0.7)")]

    traj = expected_trajectory_score(mdp, theta)
    out.append(exact(NAME, "sum_tau P(tau) grad log P(tau) == 0", torch.zeros_like(traj), traj,
                     detail=f"enumeration of {mdp.num_sequences} sequences"))

    samples = sampled_scores(mdp, theta, n=20000, seed=0)
    out.append(monte_carlo(NAME, "mean of grad log P(tau) over samples == 0", torch.zeros(S * Vn), samples))

    other = mdp.init_params(seed=2)
    wrong = expected_trajectory_score(mdp, theta, theta_weights=other)
    out.append(negative_control(
        exact(NAME, "scores at theta weighted by P_theta'(tau), theta' != theta", torch.zeros_like(wrong), wrong),
        detail=f"weights from another distribution: max |E| = {float(wrong.abs().max()):.3f}, must be rejected"))

    unnorm = unnormalised_expected_score(mdp, theta)
    out.append(negative_control(
        exact(NAME, "score of unnormalised logits theta_sa/T has mean 0", torch.zeros_like(unnorm), unnorm),
        detail="forgetting log Z: the mean is pi(.|s)/T, must be rejected"))

    for lhs, zb in softmax_eglp_sympy(3):
        out.append(symbolic(NAME, f"softmax(z0,z1,z2): sum_a p_a d log p_a / d {zb} == 0", lhs, sympy.Integer(0)))
    return out
