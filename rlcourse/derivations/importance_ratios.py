r"""Importance ratios: trajectory, token and sequence level.

Statement. Data sampled from :math:`\pi_{\text{old}}` can estimate expectations under
:math:`\pi_\theta` by reweighting with the likelihood ratio of the whole trajectory, which
in a token-level MDP is the product of the token ratios (the transitions, "append the
token", cancel):

.. math::

    \frac{P_\theta(\tau)}{P_{\text{old}}(\tau)} = \prod_t \rho_t, \qquad
    \rho_t = \frac{\pi_\theta(a_t \mid s_t)}{\pi_{\text{old}}(a_t \mid s_t)}, \qquad
    J(\theta) = \mathbb{E}_{\tau \sim \text{old}}\Big[\frac{P_\theta(\tau)}{P_{\text{old}}(\tau)} R(\tau)\Big],

and likewise
:math:`\nabla_\theta J = \mathbb{E}_{\text{old}}\big[\tfrac{P_\theta}{P_{\text{old}}} R\, \nabla_\theta \log P_\theta(\tau)\big]`.
PPO and GRPO weight each token by its *own* ratio instead,
:math:`\mathbb{E}_{\text{old}}[\sum_t \rho_t\, \nabla_\theta \log \pi_\theta(a_t \mid s_t)\, R]`,
dropping the product of the ratios of the other tokens. At :math:`\theta = \theta_{\text{old}}`
all ratios are 1 and both are the policy gradient; away from it the token-level form is
biased (a remark of "RLHF Derivation", measured here). GSPO's sequence-level ratio is the geometric
mean :math:`(\prod_t \rho_t)^{1/|y|}`, a length-normalised trajectory ratio, equal to 1 at
:math:`\theta_{\text{old}}`.

Checks (toy MDP, :math:`\theta` a finite step away from :math:`\theta_{\text{old}}`):

* exact: :func:`rlcourse.ratios.trajectory_ratio` equals :math:`P_\theta(\tau)/P_{\text{old}}(\tau)`
  from the enumeration;
* exact: :math:`\mathbb{E}_{\text{old}}[\tfrac{P_\theta}{P_{\text{old}}} R] = J(\theta)`;
* exact: the trajectory-ratio gradient estimator has mean :math:`\nabla_\theta J(\theta)`, and so
  has the autograd gradient of the importance-weighted objective;
* exact: the token-ratio gradient estimator equals :math:`\nabla_\theta J` at :math:`\theta = \theta_{\text{old}}`;
* exact: :func:`rlcourse.ratios.sequence_ratio` equals the geometric mean of the token
  ratios, and is 1 at :math:`\theta_{\text{old}}`;
* Monte Carlo: the sampled mean of :math:`\tfrac{P_\theta}{P_{\text{old}}} R` over
  :math:`\tau \sim \pi_{\text{old}}` is within 4 SE of :math:`J(\theta)`;
* negative control: the token-ratio estimator at :math:`\theta \ne \theta_{\text{old}}` is not
  :math:`\nabla_\theta J(\theta)` (bias reported);
* negative control: the plain mean of :math:`R` over old samples is not :math:`J(\theta)`.
"""

from __future__ import annotations

import torch

from rlcourse.derivations.base import Check, derivation, exact, monte_carlo, negative_control
from rlcourse.ratios import sequence_ratio, token_ratio, trajectory_ratio
from rlcourse.toymdp import ToyMDP, course_problem

NAME = "importance_ratios"


def enumerated_trajectory_ratio(mdp: ToyMDP, theta: torch.Tensor, theta_old: torch.Tensor) -> torch.Tensor:
    r""":math:`P_\theta(\tau) / P_{\text{old}}(\tau)` from the enumerated probabilities, (N,)."""
    return mdp.probabilities(theta) / mdp.probabilities(theta_old)


def package_trajectory_ratio(mdp: ToyMDP, theta: torch.Tensor, theta_old: torch.Tensor) -> torch.Tensor:
    r""":func:`rlcourse.ratios.trajectory_ratio` on the enumerated token log-probs, (N,)."""
    seq = mdp.sequences
    return trajectory_ratio(mdp.token_logprobs(theta), mdp.token_logprobs(theta_old), seq.mask)


def is_objective(mdp: ToyMDP, theta: torch.Tensor, theta_old: torch.Tensor) -> torch.Tensor:
    r""":math:`\sum_\tau P_{\text{old}}(\tau)\, \tfrac{P_\theta(\tau)}{P_{\text{old}}(\tau)} R(\tau)` (differentiable in theta)."""
    p_old = mdp.probabilities(theta_old).detach()
    return p_old @ (package_trajectory_ratio(mdp, theta, theta_old) * mdp.returns())


def trajectory_is_gradient_estimates(mdp: ToyMDP, theta: torch.Tensor, theta_old: torch.Tensor) -> torch.Tensor:
    r"""Per-sequence :math:`\tfrac{P_\theta}{P_{\text{old}}} R(\tau) \nabla_\theta \log P_\theta(\tau)`, (N, S, V)."""
    w = package_trajectory_ratio(mdp, theta.detach(), theta_old) * mdp.returns()
    return w[:, None, None] * mdp.score(theta)


def token_ratio_gradient_estimates(mdp: ToyMDP, theta: torch.Tensor, theta_old: torch.Tensor) -> torch.Tensor:
    r"""Per-sequence :math:`\sum_t \rho_t\, \nabla_\theta \log \pi_\theta(a_t \mid s_t)\, R(\tau)` (PPO-style), (N, S, V)."""
    seq = mdp.sequences
    rho = token_ratio(mdp.token_logprobs(theta.detach()), mdp.token_logprobs(theta_old)) * seq.mask
    return torch.einsum("nt,n,ntsa->nsa", rho, mdp.returns(), mdp.token_scores(theta))


def geometric_mean_token_ratio(mdp: ToyMDP, theta: torch.Tensor, theta_old: torch.Tensor) -> torch.Tensor:
    r""":math:`(\prod_t \rho_t)^{1/|y|}` from the enumerated per-token probabilities, (N,)."""
    seq = mdp.sequences
    pi, pi_old = mdp.policy_logprobs(theta).exp(), mdp.policy_logprobs(theta_old).exp()
    rho = pi[seq.states, seq.tokens] / pi_old[seq.states, seq.tokens]
    prod = torch.where(seq.mask > 0, rho, torch.ones_like(rho)).prod(-1)
    return prod ** (1.0 / seq.lengths.to(prod.dtype))


def exact_mean(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r""":math:`\sum_\tau P(\tau)\, X(\tau)`."""
    return torch.einsum("n,n...->...", p, x)


@derivation(NAME, "Importance ratios: trajectory, token and sequence level", source="rlhf-derivation")
def checks() -> list[Check]:
    mdp, theta_old = course_problem()
    theta = theta_old + 0.5 * mdp.init_params(seed=2)
    p_old = mdp.probabilities(theta_old)
    J = mdp.objective(theta)
    truth = mdp.exact_gradient(theta)

    out = [exact(NAME, "trajectory_ratio (product of token ratios) == P_theta / P_old",
                 enumerated_trajectory_ratio(mdp, theta, theta_old), package_trajectory_ratio(mdp, theta, theta_old),
                 detail=f"{mdp.num_sequences} sequences")]
    out.append(exact(NAME, "E_old[P_theta / P_old * R] == J(theta)", J, is_objective(mdp, theta, theta_old),
                     detail=f"J(theta) = {float(J):.4f}, J(old) = {float(mdp.objective(theta_old)):.4f}"))
    out.append(exact(NAME, "E_old[P_theta / P_old * R * grad log P_theta] == grad J(theta)", truth,
                     exact_mean(p_old, trajectory_is_gradient_estimates(mdp, theta, theta_old))))
    th = theta.detach().clone().requires_grad_(True)
    (g_is,) = torch.autograd.grad(is_objective(mdp, th, theta_old), th)
    out.append(exact(NAME, "autograd of E_old[trajectory_ratio * R] == grad J(theta)", truth, g_is,
                     detail="gradient flows through the product of token ratios"))

    at_old = exact_mean(p_old, token_ratio_gradient_estimates(mdp, theta_old, theta_old))
    out.append(exact(NAME, "token-ratio estimator == grad J at theta = theta_old", mdp.exact_gradient(theta_old),
                     at_old, detail="every ratio is 1"))

    seq = mdp.sequences
    gspo = sequence_ratio(mdp.token_logprobs(theta), mdp.token_logprobs(theta_old), seq.mask)
    out.append(exact(NAME, "sequence_ratio (GSPO) == geometric mean of token ratios",
                     geometric_mean_token_ratio(mdp, theta, theta_old), gspo))
    ones = sequence_ratio(mdp.token_logprobs(theta_old), mdp.token_logprobs(theta_old), seq.mask)
    out.append(exact(NAME, "sequence_ratio == 1 at theta = theta_old", torch.ones_like(ones), ones))

    idx = mdp.sample(theta_old, 20000, seed=0)
    w = package_trajectory_ratio(mdp, theta, theta_old) * mdp.returns()
    out.append(monte_carlo(NAME, "mean over tau ~ old of P_theta / P_old * R == J(theta)", J, w[idx]))

    biased = exact_mean(p_old, token_ratio_gradient_estimates(mdp, theta, theta_old))
    out.append(negative_control(
        exact(NAME, "E_old[sum_t rho_t grad log pi_t R] == grad J(theta) (token-level ratios)", truth, biased),
        detail=f"off-policy the per-token ratio is biased: |bias| = {float((biased - truth).norm()):.4f}, "
               f"|grad J| = {float(truth.norm()):.4f}"))
    naive = p_old @ mdp.returns()
    out.append(negative_control(
        exact(NAME, "E_old[R] (no ratio) == J(theta)", J, naive),
        detail="without reweighting the old samples estimate J(old), must be rejected"))
    return out
