r"""DPO: the reparameterised reward, log Z cancelling in Bradley-Terry, and the DPO minimiser equal to :math:`\pi^*`.

Statement. The maximiser of :math:`\mathbb{E}_\pi[r] - \beta\,\mathrm{KL}(\pi \| \pi_{\mathrm{ref}})` is
:math:`\pi^* = \pi_{\mathrm{ref}}\, e^{r/\beta} / Z` (see ``kl_optimum``). Solving for the reward,

.. math::

    r(y) = \beta \log \frac{\pi^*(y)}{\pi_{\mathrm{ref}}(y)} + \beta \log Z .

:math:`Z` is intractable for a language model, but in the Bradley-Terry probability only reward
differences enter, so it cancels:

.. math::

    P(y_w \succ y_l) = \sigma\Big(\beta \log\frac{\pi^*(y_w)}{\pi_{\mathrm{ref}}(y_w)} + \beta\log Z
                                  - \beta \log\frac{\pi^*(y_l)}{\pi_{\mathrm{ref}}(y_l)} - \beta\log Z\Big)
                     = \sigma\Big(\beta \log\frac{\pi^*(y_w)}{\pi_{\mathrm{ref}}(y_w)} - \beta \log\frac{\pi^*(y_l)}{\pi_{\mathrm{ref}}(y_l)}\Big).

DPO (Rafailov et al. 2023) fits a policy :math:`\pi_\theta` by maximum likelihood of this model on
preference pairs: :math:`L = -\mathbb{E}[\log\sigma(\beta h)]`, :math:`h = \log\frac{\pi_\theta(y_w)}{\pi_{\mathrm{ref}}(y_w)} - \log\frac{\pi_\theta(y_l)}{\pi_{\mathrm{ref}}(y_l)}`.
With infinite data (pairs :math:`\{i, j\}` with weights :math:`\mu_{ij}`, labels from the planted
:math:`\sigma(r_i - r_j)`), the expected loss of a pair is the cross-entropy

.. math::

    \ell_{ij} = -P^*_{ij}\log\sigma(\beta h_{ij}) - (1 - P^*_{ij})\log\sigma(-\beta h_{ij}),

which is conservative DPO's label-smoothed loss with :math:`\varepsilon = 1 - P^*_{ij}` (the
probability that the label of the better response is flipped). It is minimised where
:math:`\beta h_{ij} = r_i - r_j` for every compared pair, i.e. :math:`\pi_\theta \propto \pi_{\mathrm{ref}}\, e^{r/\beta} = \pi^*`
on a connected set of pairs: on an enumerable space the DPO minimiser is the RLHF optimum.

Checks (the 7 sequences of a toy MDP with vocabulary 3 and horizon 2, all 21 pairs, :math:`\beta = 0.5`):

* exact: ``implicit_reward`` :math:`(\pi^*) + \beta \log Z = r` on every sequence;
* exact: Bradley-Terry probabilities with the true rewards equal those with the implicit rewards
  (no :math:`\log Z`) on every pair;
* exact: the DPO loss is :math:`\log 2` when :math:`\pi = \pi_{\mathrm{ref}}`;
* exact: the gradient of the expected DPO loss w.r.t. free logits of :math:`\pi` is 0 at :math:`\pi^*`;
* exact (optimisation, tolerance 1e-6): L-BFGS (float64) on the expected DPO loss from
  :math:`\pi = \pi_{\mathrm{ref}}` reaches ``kl_regularized_optimum``;
* negative controls: the minimiser equals :math:`\pi \propto \pi_{\mathrm{ref}}\, e^{r}` (no :math:`\beta`) — rejected;
  it equals :math:`\pi \propto e^{r/\beta}` (no reference) — rejected;
* Monte Carlo: the mean DPO loss over 2000 sampled, Bradley-Terry-labelled pairs is within 4 SE of
  the expected (label-smoothed) loss;
* symbolic: :math:`\beta\log\frac{\pi_{\mathrm{ref}} e^{r/\beta}/Z}{\pi_{\mathrm{ref}}} + \beta\log Z = r`, and the
  cancellation of :math:`\log Z` inside :math:`\sigma`.
"""

from __future__ import annotations

import math

import sympy
import torch

from rlcourse.derivations.base import Check, derivation, exact, monte_carlo, negative_control, symbolic
from rlcourse.preference import bradley_terry_probability, dpo_loss, implicit_reward, kl_regularized_optimum
from rlcourse.toymdp import ToyMDP

NAME = "dpo"


def log_partition(ref_logp: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    r""":math:`\log Z = \log \sum_y \pi_{\mathrm{ref}}(y)\, e^{r(y)/\beta}`."""
    return torch.logsumexp(ref_logp + rewards / beta, dim=-1)


def ranked_pairs(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every unordered pair as (better, worse) indices by reward; ties are rejected (P* = 1/2 has no ordering)."""
    i, j = torch.triu_indices(rewards.shape[0], rewards.shape[0], offset=1)
    if bool((rewards[i] == rewards[j]).any()):
        raise ValueError("rewards: tied rewards; the pairs need a strict order")
    better = torch.where(rewards[i] > rewards[j], i, j)
    return better, torch.where(rewards[i] > rewards[j], j, i)


def expected_dpo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, rewards: torch.Tensor, beta: float
                      ) -> torch.Tensor:
    r"""Infinite-data DPO loss :math:`\sum_{\{i,j\}} \mu_{ij}\, \ell_{ij}`, pairs uniform, labels from the planted
    Bradley-Terry probabilities: each pair is ``dpo_loss`` of (better, worse) with label smoothing
    :math:`\varepsilon = 1 - P^*(\text{better} \succ \text{worse}) < 1/2`."""
    w, l = ranked_pairs(rewards)
    flip = 1.0 - bradley_terry_probability(rewards[w], rewards[l])
    losses = [dpo_loss(logp[a:a + 1], logp[b:b + 1], ref_logp[a:a + 1], ref_logp[b:b + 1], beta=beta,
                       label_smoothing=float(e))[0]
              for a, b, e in zip(w.tolist(), l.tolist(), flip.tolist())]
    return torch.stack(losses).mean()


def dpo_gradient(phi: torch.Tensor, ref_logp: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    r""":math:`\nabla_\phi` of the expected DPO loss at :math:`\pi = \mathrm{softmax}(\phi)`."""
    phi = phi.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(expected_dpo_loss(torch.log_softmax(phi, -1), ref_logp, rewards, beta), phi)
    return g


def dpo_minimiser(ref_logp: torch.Tensor, rewards: torch.Tensor, beta: float, max_iter: int = 300) -> torch.Tensor:
    """Log-probs of the minimiser of the expected DPO loss over free logits, by L-BFGS from pi = ref (float64)."""
    phi = ref_logp.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([phi], lr=1.0, max_iter=max_iter, tolerance_grad=1e-12, tolerance_change=1e-16,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = expected_dpo_loss(torch.log_softmax(phi, -1), ref_logp, rewards, beta)
        loss.backward()
        return loss

    opt.step(closure)
    return torch.log_softmax(phi.detach(), -1)


def sampled_pair_losses(logp: torch.Tensor, ref_logp: torch.Tensor, rewards: torch.Tensor, beta: float, n: int,
                        seed: int = 0) -> torch.Tensor:
    """DPO loss of each of ``n`` sampled pairs (pair uniform, winner drawn from Bradley-Terry), (n,)."""
    g = torch.Generator().manual_seed(seed)
    i, j = torch.triu_indices(rewards.shape[0], rewards.shape[0], offset=1)
    pick = torch.randint(0, i.shape[0], (n,), generator=g)
    a, b = i[pick], j[pick]
    a_wins = torch.rand(n, generator=g, dtype=rewards.dtype) < bradley_terry_probability(rewards[a], rewards[b])
    w, l = torch.where(a_wins, a, b), torch.where(a_wins, b, a)
    return torch.stack([dpo_loss(logp[x:x + 1], logp[y:y + 1], ref_logp[x:x + 1], ref_logp[y:y + 1], beta=beta)[0]
                        for x, y in zip(w.tolist(), l.tolist())])


@derivation(NAME, "DPO", source="wei-rl-llm")
def checks() -> list[Check]:
    mdp = ToyMDP.random(vocab_size=3, horizon=2, seed=13)
    ref_logp = mdp.sequence_logprobs(mdp.init_params(seed=14))
    r = mdp.returns()
    beta = 0.5
    N = mdp.num_sequences
    opt = kl_regularized_optimum(ref_logp, r, beta)
    log_z = log_partition(ref_logp, r, beta)
    implicit = implicit_reward(opt, ref_logp, beta)
    out = [exact(NAME, "implicit_reward(pi*) + beta log Z == r on every sequence", r, implicit + beta * log_z,
                 detail=f"beta = {beta}, {N} sequences, beta log Z = {float(beta * log_z):.4f}")]

    i, j = torch.triu_indices(N, N, offset=1)
    out.append(exact(NAME, "BT probability: true rewards == implicit rewards (log Z cancels), every pair",
                     bradley_terry_probability(r[i], r[j]), bradley_terry_probability(implicit[i], implicit[j]),
                     detail=f"{i.shape[0]} pairs"))

    loss_ref, _, _ = dpo_loss(ref_logp[i], ref_logp[j], ref_logp[i], ref_logp[j], beta=beta)
    out.append(exact(NAME, "DPO loss == log 2 at pi == ref", math.log(2.0), loss_ref))

    g = dpo_gradient(opt, ref_logp, r, beta)
    out.append(exact(NAME, "grad of the expected DPO loss == 0 at pi*", torch.zeros_like(g), g,
                     detail="pairs uniform, labels from BT(r); cDPO label smoothing 1 - P* gives the expected loss"))

    fitted = dpo_minimiser(ref_logp, r, beta)
    out.append(exact(NAME, "L-BFGS minimiser of the expected DPO loss == pi* (probabilities)", opt.exp(), fitted.exp(),
                     tol=1e-6, detail="free logits from pi = ref, float64; optimisation tolerance 1e-6"))
    no_beta = kl_regularized_optimum(ref_logp, r, 1.0)
    out.append(negative_control(exact(NAME, "DPO minimiser == pi ∝ ref exp(r) (beta forgotten)", no_beta.exp(),
                                      fitted.exp(), tol=1e-6), detail="must be rejected"))
    no_ref = torch.log_softmax(r / beta, -1)
    out.append(negative_control(exact(NAME, "DPO minimiser == pi ∝ exp(r / beta) (reference forgotten)", no_ref.exp(),
                                      fitted.exp(), tol=1e-6), detail="must be rejected"))

    logp = torch.log_softmax(ref_logp + 0.7 * torch.randn(N, generator=torch.Generator().manual_seed(0),
                                                          dtype=torch.float64), -1)
    out.append(monte_carlo(NAME, "mean DPO loss on 2000 sampled BT-labelled pairs == expected loss",
                           expected_dpo_loss(logp, ref_logp, r, beta).detach(),
                           sampled_pair_losses(logp, ref_logp, r, beta, n=2000, seed=0),
                           detail="at a random policy; the expected loss uses label smoothing 1 - P*"))

    b, rr, z, ref = sympy.symbols("beta r Z pi_ref", positive=True)
    out.append(symbolic(NAME, "beta log(pi*/ref) + beta log Z == r for pi* = ref exp(r/beta) / Z",
                        b * sympy.log(ref * sympy.exp(rr / b) / z / ref) + b * sympy.log(z), rr))
    p1, p2, r1, r2 = sympy.symbols("p1 p2 ref1 ref2", positive=True)
    sig = lambda x: 1 / (1 + sympy.exp(-x))  # noqa: E731
    h1, h2 = b * sympy.log(p1 / r1), b * sympy.log(p2 / r2)
    out.append(symbolic(NAME, "sigma(h1 + beta log Z - h2 - beta log Z) == sigma(h1 - h2)",
                        sig(h1 + b * sympy.log(z) - (h2 + b * sympy.log(z))), sig(h1 - h2)))
    return out
