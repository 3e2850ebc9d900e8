r"""The performance difference lemma (Kakade & Langford 2002).

Statement. For two policies :math:`\pi'` and :math:`\pi` and :math:`\gamma \in [0, 1]`,

.. math::

    J(\pi') - J(\pi) = \mathbb{E}_{\tau \sim \pi'}\Big[\sum_t \gamma^t A^{\pi}(s_t, a_t)\Big]
                     = \sum_s d^{\pi'}_\gamma(s) \sum_a \pi'(a \mid s)\, A^{\pi}(s, a),

with :math:`d^{\pi'}_\gamma(s) = \sum_t \gamma^t P_{\pi'}(s_t = s)`. Proof in one line: with a
deterministic transition :math:`A^\pi(s_t, a_t) = r_t + \gamma V^\pi(s_{t+1}) - V^\pi(s_t)`, the
discounted sum telescopes along *any* trajectory to :math:`R(\tau) - V^\pi(s_0)`
(:math:`V^\pi = 0` after the end), and taking :math:`\mathbb{E}_{\pi'}` gives
:math:`J(\pi') - J(\pi)`. The expectation is over the *new* policy's trajectories: under
:math:`\pi` itself the advantages average to zero. Replacing :math:`d^{\pi'}` by
:math:`d^{\pi}` gives the local surrogate :math:`L_\pi(\pi')` of CPI/TRPO/PPO, which
matches :math:`J(\pi') - J(\pi)` to first order only: equal value (0) and equal gradient
at :math:`\pi' = \pi`.

Checks (toy MDP with per-token and terminal rewards):

* exact: :math:`J(\theta') - J(\theta) = \sum_\tau P_{\theta'}(\tau) \sum_t \gamma^t A^{\theta}(s_t, a_t)`
  for :math:`\gamma = 1` and :math:`\gamma = 0.9` (1e-10);
* exact: the same difference in the state-visitation form (:math:`\gamma = 0.9`);
* exact: :math:`\nabla_{\theta'} L_\theta(\theta')` at :math:`\theta' = \theta` equals
  :math:`\nabla_\theta J_\gamma(\theta)` (:math:`\gamma = 0.9`);
* Monte Carlo: the sampled mean of :math:`\sum_t \gamma^t A^\theta(s_t, a_t)` under
  :math:`\theta'` is within 4 SE of :math:`J(\theta') - J(\theta)`;
* negative control: the expectation under the old policy (which is 0) is not the difference;
* negative control: the local surrogate :math:`L_\theta(\theta')` is not the difference at a
  finite step (its error reported).
"""

from __future__ import annotations

import torch

from rlcourse.derivations.base import Check, derivation, exact, monte_carlo, negative_control
from rlcourse.toymdp import ToyMDP, course_problem

NAME = "performance_difference"


def discounted_advantages(mdp: ToyMDP, theta_old: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    r""":math:`\gamma^t A^{\theta_{\text{old}}}(s_t, a_t)` along every enumerated sequence, (N, H)."""
    seq = mdp.sequences
    adv = mdp.advantages(theta_old, gamma)[seq.states, seq.tokens]
    return adv * seq.mask * mdp.discounts(gamma)


def expected_advantage_sum(mdp: ToyMDP, theta_new: torch.Tensor, theta_old: torch.Tensor,
                           gamma: float = 1.0) -> torch.Tensor:
    r""":math:`\mathbb{E}_{\tau \sim \theta_{\text{new}}}[\sum_t \gamma^t A^{\theta_{\text{old}}}(s_t, a_t)]` by enumeration."""
    return mdp.probabilities(theta_new) @ discounted_advantages(mdp, theta_old, gamma).sum(-1)


def visitation_form(mdp: ToyMDP, theta_new: torch.Tensor, theta_old: torch.Tensor, gamma: float = 1.0,
                    visitation_theta: torch.Tensor | None = None) -> torch.Tensor:
    r""":math:`\sum_s d_\gamma(s) \sum_a \pi_{\text{new}}(a \mid s) A^{\text{old}}(s, a)`.

    With ``visitation_theta`` = ``theta_new`` (the default) this is the exact difference; with
    ``theta_old`` it is the local surrogate :math:`L_{\text{old}}(\pi_{\text{new}})` of TRPO/PPO.
    """
    d = mdp.state_visitation(theta_new if visitation_theta is None else visitation_theta, gamma)
    pi_new = mdp.policy_logprobs(theta_new).exp()
    return d @ (pi_new * mdp.advantages(theta_old, gamma)).sum(-1)


def local_surrogate(mdp: ToyMDP, theta_new: torch.Tensor, theta_old: torch.Tensor, gamma: float = 1.0
                    ) -> torch.Tensor:
    r""":math:`L_{\text{old}}(\theta_{\text{new}}) = \sum_s d^{\text{old}}_\gamma(s) \sum_a \pi_{\text{new}}(a \mid s) A^{\text{old}}(s, a)`."""
    return visitation_form(mdp, theta_new, theta_old, gamma, visitation_theta=theta_old.detach())


def performance_difference(mdp: ToyMDP, theta_new: torch.Tensor, theta_old: torch.Tensor,
                           gamma: float = 1.0) -> torch.Tensor:
    r""":math:`J_\gamma(\theta_{\text{new}}) - J_\gamma(\theta_{\text{old}})`, exact."""
    return mdp.objective(theta_new, gamma) - mdp.objective(theta_old, gamma)


@derivation(NAME, "Performance difference lemma", source="ppo-post-training")
def checks() -> list[Check]:
    mdp, theta_old = course_problem()
    theta_new = theta_old + 0.5 * mdp.init_params(seed=2)
    out = []
    for gamma in (1.0, 0.9):
        diff = performance_difference(mdp, theta_new, theta_old, gamma)
        out.append(exact(NAME, f"J(new) - J(old) == E_new[sum_t gamma^t A_old] (gamma={gamma})", diff,
                         expected_advantage_sum(mdp, theta_new, theta_old, gamma),
                         detail=f"J(new) - J(old) = {float(diff):.4f}"))

    gamma = 0.9
    diff = performance_difference(mdp, theta_new, theta_old, gamma)
    out.append(exact(NAME, "J(new) - J(old) == sum_s d_new(s) sum_a pi_new(a|s) A_old(s, a) (gamma=0.9)", diff,
                     visitation_form(mdp, theta_new, theta_old, gamma)))

    th = theta_old.detach().clone().requires_grad_(True)
    (g_local,) = torch.autograd.grad(local_surrogate(mdp, th, theta_old, gamma), th)
    out.append(exact(NAME, "grad L_old(theta) at theta_old == grad J (gamma=0.9)",
                     mdp.exact_gradient(theta_old, gamma), g_local,
                     detail="the surrogate with the old visitation agrees to first order"))

    idx = mdp.sample(theta_new, 20000, seed=0)
    samples = discounted_advantages(mdp, theta_old, gamma).sum(-1)[idx]
    out.append(monte_carlo(NAME, "mean over tau ~ new of sum_t gamma^t A_old == J(new) - J(old) (gamma=0.9)",
                           diff, samples))

    under_old = expected_advantage_sum(mdp, theta_old, theta_old, gamma)
    out.append(negative_control(
        exact(NAME, "E_old[sum_t gamma^t A_old] == J(new) - J(old)", diff, under_old),
        detail=f"under the old policy the advantages average to {float(under_old):.1e}, must be rejected"))

    surrogate = local_surrogate(mdp, theta_new, theta_old, gamma)
    out.append(negative_control(
        exact(NAME, "L_old(new) with the old visitation == J(new) - J(old)", diff, surrogate),
        detail=f"first-order only: L = {float(surrogate):.4f} vs {float(diff):.4f} at a finite step"))
    return out
