r"""The KL-regularised optimum: :math:`\pi^* \propto \pi_{\mathrm{ref}} \exp(r/\beta)` maximises :math:`\mathbb{E}[r] - \beta\,\mathrm{KL}`.

Statement. Over a finite set of responses (here: every sequence of the toy MDP), let

.. math::

    J(\pi) = \mathbb{E}_{y \sim \pi}[r(y)] - \beta\, \mathrm{KL}(\pi \| \pi_{\mathrm{ref}}), \qquad
    \pi^*(y) = \frac{\pi_{\mathrm{ref}}(y)\, e^{r(y)/\beta}}{Z}, \quad Z = \sum_y \pi_{\mathrm{ref}}(y)\, e^{r(y)/\beta}.

Since :math:`r(y) = \beta \log \frac{\pi^*(y)}{\pi_{\mathrm{ref}}(y)} + \beta \log Z` for every y,

.. math::

    J(\pi) = \mathbb{E}_\pi\Big[\beta \log\frac{\pi^*}{\pi_{\mathrm{ref}}} + \beta \log Z - \beta \log\frac{\pi}{\pi_{\mathrm{ref}}}\Big]
           = \beta \log Z - \beta\, \mathrm{KL}(\pi \| \pi^*),

so :math:`J \le \beta \log Z` with equality iff :math:`\pi = \pi^*` (Gibbs' inequality). The shaped
reward :math:`r - \beta \log(\pi^*/\pi_{\mathrm{ref}})` equals :math:`\beta \log Z` on *every* response.

Token level. The tabular policy of the toy MDP reaches :math:`\pi^*` exactly: with soft values
:math:`V(s) = \beta \log \sum_a \pi_{\mathrm{ref}}(a \mid s)\, e^{Q(s,a)/\beta}`,
:math:`Q(s, a) = r(s, a) + V(s')` (:math:`V = 0` after the end), the per-token policy
:math:`\pi^*(a \mid s) = \pi_{\mathrm{ref}}(a \mid s)\, e^{(Q(s,a) - V(s))/\beta}` has sequence
probabilities :math:`\pi^*(y)`, and :math:`V(\text{empty prefix}) = \beta \log Z`.

Checks (:math:`\beta = 0.5`, 15 sequences):

* exact: :math:`\nabla_\phi J(\mathrm{softmax}\,\phi) = 0` at :math:`\phi = \log \pi^*` (free logits per sequence);
* exact: :math:`J(\pi^*) = \beta \log Z`; :math:`r - \beta \log(\pi^*/\pi_{\mathrm{ref}}) = \beta \log Z` on every sequence;
* exact: for 20 random perturbations, :math:`J(\pi^*) - J(\pi) = \beta\,\mathrm{KL}(\pi \| \pi^*)`, and every gap is > 0;
* exact: the soft-Bellman token policy gives :math:`\pi^*` on sequences, its root value is
  :math:`\beta \log Z`, and the gradient of the token-level objective there is 0;
* negative control: :math:`\pi \propto \pi_{\mathrm{ref}}\, e^{\beta r}` (wrong scaling) has non-zero gradient.
"""

from __future__ import annotations

import torch

from rlcourse.derivations.base import Check, derivation, exact, inequality, negative_control
from rlcourse.derivations.rlhf_gradient import exact_rlhf_gradient
from rlcourse.kl import kl_categorical
from rlcourse.preference import kl_regularized_objective, kl_regularized_optimum
from rlcourse.toymdp import ToyMDP, ToyProblem

NAME = "kl_optimum"


def log_partition(ref_logp: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    r""":math:`\log Z = \log \sum_y \pi_{\mathrm{ref}}(y)\, e^{r(y)/\beta}`."""
    return torch.logsumexp(ref_logp + rewards / beta, dim=-1)


def objective_of_logits(phi: torch.Tensor, ref_logp: torch.Tensor, rewards: torch.Tensor, beta: float
                        ) -> torch.Tensor:
    r""":math:`J(\mathrm{softmax}\,\phi)` for free logits :math:`\phi` over the responses."""
    return kl_regularized_objective(torch.log_softmax(phi, -1), ref_logp, rewards, beta)


def objective_gradient(phi: torch.Tensor, ref_logp: torch.Tensor, rewards: torch.Tensor, beta: float
                       ) -> torch.Tensor:
    r""":math:`\nabla_\phi J(\mathrm{softmax}\,\phi)` by autograd."""
    phi = phi.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(objective_of_logits(phi, ref_logp, rewards, beta), phi)
    return g


def perturbation_gaps(opt_logp: torch.Tensor, ref_logp: torch.Tensor, rewards: torch.Tensor, beta: float,
                      n: int = 20, scale: float = 0.5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""For ``n`` random logit perturbations :math:`\pi \propto \pi^* e^{\epsilon}`: the gaps
    :math:`J(\pi^*) - J(\pi)` and :math:`\beta\,\mathrm{KL}(\pi \| \pi^*)`, each (n,)."""
    g = torch.Generator().manual_seed(seed)
    eps = scale * torch.randn(n, opt_logp.shape[-1], generator=g, dtype=opt_logp.dtype)
    logp = torch.log_softmax(opt_logp + eps, -1)
    ref, r = ref_logp.expand_as(logp), rewards.expand_as(logp)
    gaps = kl_regularized_objective(opt_logp, ref_logp, rewards, beta) - kl_regularized_objective(logp, ref, r, beta)
    return gaps, beta * kl_categorical(logp, opt_logp.expand_as(logp))


def soft_optimal_logits(mdp: ToyMDP, theta_ref: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Token-level optimum by soft Bellman backward induction.

    Returns (theta*, V) where theta* are logits of shape (S, V) with
    :math:`\mathrm{softmax}(\theta^*_s / T) = \pi^*(\cdot \mid s)` and V (S,) the soft values."""
    ref = mdp.policy_logprobs(theta_ref.detach())
    S = mdp.num_states
    v = torch.zeros(S, dtype=ref.dtype)
    q = torch.zeros_like(ref)
    for s in sorted(range(S), key=lambda i: -len(mdp.state_prefixes[i])):   # longest prefixes first
        nxt = mdp.next_state[s]
        cont = torch.where(nxt >= 0, v[nxt.clamp(min=0)], torch.zeros_like(ref[s]))
        q[s] = mdp.token_reward[s] + torch.where(mdp.terminates[s], mdp.terminal_reward[s], cont)
        v[s] = beta * torch.logsumexp(ref[s] + q[s] / beta, dim=-1)
    log_pi = ref + (q - v[:, None]) / beta
    return mdp.temperature * log_pi, v


def problem() -> tuple[ToyMDP, torch.Tensor]:
    """``(mdp, theta_ref)``: the toy MDP (seed 11) and the reference policy (seed 12) of these checks."""
    return ToyProblem(mdp_seed=11, theta_seed=12).build()


@derivation(NAME, "KL-regularised optimum", source="wei-rl-llm")
def checks() -> list[Check]:
    mdp, theta_ref = problem()
    beta = 0.5
    ref_logp, r = mdp.sequence_logprobs(theta_ref), mdp.returns()
    opt = kl_regularized_optimum(ref_logp, r, beta)
    log_z = float(log_partition(ref_logp, r, beta))
    j_opt = float(kl_regularized_objective(opt, ref_logp, r, beta))

    grad = objective_gradient(opt, ref_logp, r, beta)
    out = [exact(NAME, "grad_phi J(softmax phi) == 0 at phi = log pi*", torch.zeros_like(grad), grad,
                 detail=f"beta = {beta}; free logits over {mdp.num_sequences} sequences"),
           exact(NAME, "J(pi*) == beta log Z", beta * log_z, j_opt),
           exact(NAME, "r - beta log(pi*/ref) == beta log Z on every sequence", torch.full_like(r, beta * log_z),
                 r - beta * (opt - ref_logp), detail="the shaped reward is constant under pi*")]

    gaps, kl = perturbation_gaps(opt, ref_logp, r, beta)
    out.append(exact(NAME, "J(pi*) - J(pi) == beta KL(pi || pi*) for 20 perturbations", kl, gaps))
    out.append(inequality(NAME, "J(pi*) - J(pi) > 0 for 20 perturbations", 1e-6, gaps,
                          detail=f"smallest gap {float(gaps.min()):.4f}"))

    theta_opt, v = soft_optimal_logits(mdp, theta_ref, beta)
    out.append(exact(NAME, "soft-Bellman token policy: sequence log-probs == log pi*", opt,
                     mdp.sequence_logprobs(theta_opt), detail="the tabular token policy reaches pi* exactly"))
    out.append(exact(NAME, "soft value of the empty prefix == beta log Z", beta * log_z, v[0]))
    g_tok = exact_rlhf_gradient(mdp, theta_opt, theta_ref, beta)
    out.append(exact(NAME, "grad_theta (E[R] - beta KL(P_theta || P_ref)) == 0 at the token-level optimum",
                     torch.zeros_like(g_tok), g_tok))

    wrong = kl_regularized_optimum(ref_logp, r, 1.0 / beta)   # pi ∝ ref exp(r * beta)
    g_wrong = objective_gradient(wrong, ref_logp, r, beta)
    j_wrong = float(kl_regularized_objective(wrong, ref_logp, r, beta))
    out.append(negative_control(
        exact(NAME, "grad J == 0 at pi ∝ ref exp(beta r) (wrong scaling)", torch.zeros_like(g_wrong), g_wrong),
        detail=f"J = {j_wrong:.4f} < beta log Z = {beta * log_z:.4f}; must be rejected"))
    return out
