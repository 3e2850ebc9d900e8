r"""The gradient of the KL-regularised RLHF objective.

Statement. With :math:`P_\theta` the sequence distribution of the policy, :math:`P_{\mathrm{ref}}`
that of the frozen reference and :math:`k_1(\tau) = \log P_\theta(\tau) - \log P_{\mathrm{ref}}(\tau)` (the log-ratio to the reference),

.. math::

    J_\beta(\theta) = \mathbb{E}_{\tau \sim P_\theta}[R(\tau)] - \beta\, \mathrm{KL}(P_\theta \| P_{\mathrm{ref}})
                    = \sum_\tau P_\theta(\tau) \big( R(\tau) - \beta k_1(\tau) \big).

Differentiating the product :math:`P_\theta \cdot (R - \beta k_1)` gives two terms: the
log-derivative trick on :math:`P_\theta`, and :math:`-\beta \nabla k_1 = -\beta \nabla \log P_\theta`
from the penalty itself:

.. math::

    \nabla J_\beta = \mathbb{E}\big[(R - \beta k_1 - \beta)\, \nabla \log P_\theta\big]
                   = \mathbb{E}\big[(R - \beta k_1)\, \nabla \log P_\theta\big],

because :math:`\mathbb{E}[\beta \nabla \log P_\theta] = \beta \cdot 0` (EGLP). The gradient is the
policy gradient of the *shaped* reward :math:`R - \beta k_1`, with the shaping treated as a
constant; per token, with :math:`k_1 = \sum_t k_{1,t}`, :math:`k_{1,t} = \log \frac{\pi_\theta(a_t \mid s_t)}{\pi_{\mathrm{ref}}(a_t \mid s_t)}`
(the k1 estimator at each token) and reward-to-go, this is PPO's per-token KL-shaped reward.

Checks:

* exact: autograd :math:`\nabla J_\beta` equals :math:`\mathbb{E}[(R - \beta k_1 - \beta)\nabla \log P]`
  (the direct calculation) and :math:`\mathbb{E}[(R - \beta k_1)\nabla \log P]`;
* exact: the dropped term :math:`\mathbb{E}[\beta \nabla \log P_\theta]` is 0;
* exact: the per-token form :math:`\mathbb{E}[\sum_t \nabla\log\pi_t \sum_{t' \ge t}(r_{t'} - \beta k_{1,t'})]`
  (KL-shaped rewards, reward-to-go) equals :math:`\nabla J_\beta`;
* exact: the surrogate "KL in the reward" :math:`\sum_\tau \mathrm{sg}[P](R - \beta\,\mathrm{sg}[k_1]) \log P_\theta`
  and the surrogate "k2 as a loss term" both have gradient :math:`\nabla J_\beta`;
* Monte Carlo: the mean of :math:`(R - \beta k_1)\nabla \log P` over samples is within 4 SE of :math:`\nabla J_\beta`;
* negative control: "k1 as a loss term" (:math:`\mathbb{E}_{\mathrm{sg}[P]}[-R\log P + \beta k_1]`) has the
  gradient of :math:`\mathbb{E}[R]` alone (the KL term vanishes by EGLP), and is rejected;
* negative control: the sign error :math:`\mathbb{E}[(R + \beta k_1)\nabla \log P]` is rejected.
"""

from __future__ import annotations

import torch

from rlcourse.advantages import reward_to_go
from rlcourse.derivations.base import Check, derivation, exact, monte_carlo, negative_control
from rlcourse.kl import kl_categorical, kl_k1, kl_k2
from rlcourse.toymdp import ToyMDP, ToyProblem

NAME = "rlhf_gradient"


def rlhf_objective(mdp: ToyMDP, theta: torch.Tensor, theta_ref: torch.Tensor, beta: float) -> torch.Tensor:
    r""":math:`J_\beta = \mathbb{E}_{P_\theta}[R] - \beta\,\mathrm{KL}(P_\theta \| P_{\mathrm{ref}})`, exact (differentiable)."""
    kl = kl_categorical(mdp.sequence_logprobs(theta), mdp.sequence_logprobs(theta_ref.detach()))
    return mdp.objective(theta) - beta * kl


def exact_rlhf_gradient(mdp: ToyMDP, theta: torch.Tensor, theta_ref: torch.Tensor, beta: float) -> torch.Tensor:
    r""":math:`\nabla_\theta J_\beta` by autograd through the enumeration, shape (S, V)."""
    th = theta.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(rlhf_objective(mdp, th, theta_ref, beta), th)
    return g


def log_ratio(mdp: ToyMDP, theta: torch.Tensor, theta_ref: torch.Tensor) -> torch.Tensor:
    r""":math:`k_1(\tau) = \log P_\theta(\tau) - \log P_{\mathrm{ref}}(\tau)` (= the sum of per-token k1), shape (N,)."""
    return kl_k1(mdp.token_logprobs(theta.detach()), mdp.token_logprobs(theta_ref.detach())).sum(-1)


def score_form_gradient(mdp: ToyMDP, theta: torch.Tensor, theta_ref: torch.Tensor, beta: float,
                        constant: float = 0.0, kl_sign: float = -1.0) -> torch.Tensor:
    r""":math:`\sum_\tau P_\theta (R + \text{kl\_sign}\cdot\beta k_1 + c)\, \nabla \log P_\theta`, shape (S, V).

    ``constant=-beta`` is the direct calculation; ``kl_sign=+1`` is the sign error (negative control)."""
    weight = mdp.returns() + kl_sign * beta * log_ratio(mdp, theta, theta_ref) + constant
    return torch.einsum("n,n,nsa->sa", mdp.probabilities(theta.detach()), weight, mdp.score(theta))


def eglp_term(mdp: ToyMDP, theta: torch.Tensor, beta: float) -> torch.Tensor:
    r"""The term that vanishes: :math:`\mathbb{E}[\beta\, \nabla \log P_\theta]`, shape (S, V)."""
    return beta * torch.einsum("n,nsa->sa", mdp.probabilities(theta.detach()), mdp.score(theta))


def shaped_reward_to_go_gradient(mdp: ToyMDP, theta: torch.Tensor, theta_ref: torch.Tensor, beta: float
                                 ) -> torch.Tensor:
    r""":math:`\mathbb{E}[\sum_t \nabla \log \pi_t \sum_{t' \ge t} (r_{t'} - \beta k_{1,t'})]`: per-token KL-shaped
    rewards ("A Unified Perspective on RL for LLMs"; Wei, lecture slides) with reward-to-go, by enumeration, shape (S, V)."""
    seq = mdp.sequences
    shaped = seq.token_rewards - beta * kl_k1(mdp.token_logprobs(theta.detach()), mdp.token_logprobs(theta_ref))
    rtg = reward_to_go(shaped * seq.mask, seq.mask)
    return torch.einsum("n,nt,ntsa->sa", mdp.probabilities(theta.detach()), rtg, mdp.token_scores(theta))


def surrogate_gradient(mdp: ToyMDP, theta: torch.Tensor, theta_ref: torch.Tensor, beta: float, form: str
                       ) -> torch.Tensor:
    r"""Gradient of an objective surrogate (to maximise) with samples not differentiated, shape (S, V).

    * ``"kl_in_reward"``: :math:`\sum_\tau \mathrm{sg}[P](R - \beta\,\mathrm{sg}[k_1]) \log P_\theta`;
    * ``"k2_loss"``: :math:`\sum_\tau \mathrm{sg}[P](R \log P_\theta - \beta k_2(\theta))`;
    * ``"k1_loss"``: :math:`\sum_\tau \mathrm{sg}[P](R \log P_\theta - \beta k_1(\theta))` (wrong: k1 has no gradient).
    """
    th = theta.detach().clone().requires_grad_(True)
    logp, logq = mdp.sequence_logprobs(th), mdp.sequence_logprobs(theta_ref.detach())
    p, R = logp.detach().exp(), mdp.returns()
    if form == "kl_in_reward":
        s = (p * (R - beta * kl_k1(logp, logq).detach()) * logp).sum()
    elif form == "k2_loss":
        s = (p * (R * logp - beta * kl_k2(logp, logq))).sum()
    elif form == "k1_loss":
        s = (p * (R * logp - beta * kl_k1(logp, logq))).sum()
    else:
        raise ValueError(f"form must be 'kl_in_reward', 'k2_loss' or 'k1_loss', got {form!r}")
    (g,) = torch.autograd.grad(s, th)
    return g


def sampled_gradients(mdp: ToyMDP, theta: torch.Tensor, theta_ref: torch.Tensor, beta: float, n: int,
                      seed: int = 0) -> torch.Tensor:
    r"""Per-sample :math:`(R - \beta k_1)\nabla\log P_\theta` at sampled sequences, shape (n, S*V)."""
    idx = mdp.sample(theta, n, seed=seed)
    w = mdp.returns() - beta * log_ratio(mdp, theta, theta_ref)
    return (w[idx, None, None] * mdp.score(theta)[idx]).reshape(n, -1)


def problem() -> tuple[ToyMDP, torch.Tensor, torch.Tensor]:
    """``(mdp, theta, theta_ref)``: the toy MDP (seed 6), policy (seed 7) and reference (seed 8) of these checks."""
    mdp, theta = ToyProblem(mdp_seed=6, theta_seed=7).build()
    return mdp, theta, mdp.init_params(seed=8)


@derivation(NAME, "RLHF gradient", source="wei-rl-llm")
def checks() -> list[Check]:
    mdp, theta, theta_ref = problem()
    beta = 0.3
    truth = exact_rlhf_gradient(mdp, theta, theta_ref, beta)
    out = [
        exact(NAME, "grad J_beta == E[(R - beta k1 - beta) grad log P] (direct calculation)", truth,
              score_form_gradient(mdp, theta, theta_ref, beta, constant=-beta),
              detail=f"beta = {beta}; k1 = log P - log P_ref; {mdp.num_sequences} sequences"),
        exact(NAME, "E[beta grad log P] == 0 (EGLP)", torch.zeros_like(truth), eglp_term(mdp, theta, beta),
              detail="the -beta term from differentiating the penalty's own log P"),
        exact(NAME, "grad J_beta == E[(R - beta k1) grad log P]", truth,
              score_form_gradient(mdp, theta, theta_ref, beta)),
        exact(NAME, "grad J_beta == E[sum_t grad log pi_t * reward-to-go of (r - beta k1)]", truth,
              shaped_reward_to_go_gradient(mdp, theta, theta_ref, beta),
              detail="PPO's per-token KL-shaped reward with reward-to-go"),
        exact(NAME, "surrogate sg[P](R - beta sg[k1]) log P: gradient == grad J_beta", truth,
              surrogate_gradient(mdp, theta, theta_ref, beta, "kl_in_reward")),
        exact(NAME, "surrogate sg[P](R log P - beta k2): gradient == grad J_beta", truth,
              surrogate_gradient(mdp, theta, theta_ref, beta, "k2_loss"),
              detail="k2 as a loss term has the gradient of KL(pi||ref)"),
        monte_carlo(NAME, "mean of (R - beta k1) grad log P (sampled) == grad J_beta", truth.flatten(),
                    sampled_gradients(mdp, theta, theta_ref, beta, n=20000, seed=0)),
    ]
    k1_loss = surrogate_gradient(mdp, theta, theta_ref, beta, "k1_loss")
    no_kl = mdp.exact_gradient(theta)
    out.append(negative_control(
        exact(NAME, "surrogate sg[P](R log P - beta k1): gradient == grad J_beta", truth, k1_loss),
        detail=f"k1 as a loss term has zero expected gradient: equals grad E[R] to "
               f"{float((k1_loss - no_kl).abs().max()):.1e}; must be rejected"))
    out.append(negative_control(
        exact(NAME, "sign error: E[(R + beta k1) grad log P] == grad J_beta", truth,
              score_form_gradient(mdp, theta, theta_ref, beta, kl_sign=+1.0)),
        detail="a KL bonus instead of a penalty must be rejected"))
    return out
