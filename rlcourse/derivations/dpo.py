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

The other losses of :func:`rlcourse.preference.dpo_loss`, each with its defining property (:math:`\ell(h)`
is a pair's loss at margin :math:`h`, and :math:`\ell^{\mathrm{swap}}` the loss with the two responses
exchanged, i.e. at :math:`-h`):

* IPO (Azar et al. 2023), :math:`\ell = (h - \frac{1}{2\beta})^2`: on the chain of pairs that ranks the 7
  sequences by reward (deterministic labels), the point :math:`\log\pi = \log\pi_{\mathrm{ref}} + \mathrm{rank}/(2\beta) - \log Z`
  has loss 0 and gradient 0 (exact), and L-BFGS from :math:`\pi_{\mathrm{ref}}` reaches margins of exactly
  :math:`1/(2\beta)` (1e-6): IPO regresses the margin to a finite target instead of pushing it to
  infinity; negative control: margins :math:`1/\beta` rejected;
* hinge (SLiC, Zhao et al. 2023), :math:`\ell = \max(0, 1 - \beta h)`: on a grid of margins the loss
  equals the formula and its gradient w.r.t. the chosen log-prob is :math:`-\beta/B` inside the margin
  and exactly 0 beyond it (:math:`\beta h > 1`); negative control: the sigmoid loss is not flat beyond
  the margin;
* conservative DPO (label smoothing :math:`\varepsilon`, Mitchell 2023): its loss is the expected plain DPO
  loss when each label is flipped with probability :math:`\varepsilon`,
  :math:`(1-\varepsilon)\ell(h) + \varepsilon\,\ell^{\mathrm{swap}}`, and its gradient vanishes at the finite
  margin :math:`\beta h = \log\frac{1-\varepsilon}{\varepsilon}`; negative controls: robust DPO's loss in
  place of cDPO's is rejected, and plain DPO's gradient is not 0 there;
* robust DPO (Chowdhury et al. 2024) is unbiased under label flips: with each label flipped with
  probability :math:`\varepsilon`, the exact expectation over the two labels,
  :math:`(1-\varepsilon)\ell_{\mathrm{rDPO}}(h) + \varepsilon\,\ell_{\mathrm{rDPO}}^{\mathrm{swap}}`, equals the clean DPO
  loss, in value and gradient; negative control: plain DPO under the same noise is biased (rejected);
  symbolic: the same identity for symbolic :math:`h, \beta, \varepsilon`.
"""

from __future__ import annotations

import math

import sympy
import torch

from rlcourse.derivations.base import Check, derivation, exact, monte_carlo, negative_control, symbolic
from rlcourse.preference import bradley_terry_probability, dpo_loss, implicit_reward, kl_regularized_optimum
from rlcourse.toymdp import ToyMDP, ToyProblem

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


def problem() -> tuple[ToyMDP, torch.Tensor]:
    """``(mdp, theta_ref)``: the toy MDP (horizon 2, seed 13) and the reference policy (seed 14) of these checks."""
    return ToyProblem(horizon=2, mdp_seed=13, theta_seed=14).build()


@derivation(NAME, "DPO", source="wei-rl-llm")
def checks() -> list[Check]:
    mdp, theta_ref = problem()
    ref_logp = mdp.sequence_logprobs(theta_ref)
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
    return out + ipo_checks(ref_logp, r, beta) + hinge_checks() + noisy_label_checks(logp, ref_logp, r, beta)


# ----------------------------------------------------------------------------- IPO, hinge, cDPO, robust DPO

def ranking_chain(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) indices of the N - 1 pairs of consecutive ranks by reward (better first)."""
    order = torch.argsort(rewards, descending=True)
    return order[:-1], order[1:]


def pair_loss(logp: torch.Tensor, ref_logp: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor,
              beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0) -> torch.Tensor:
    """``dpo_loss`` (mean over pairs) of the pairs (chosen[k], rejected[k]) of sequences with log-probs ``logp``."""
    return dpo_loss(logp[chosen], logp[rejected], ref_logp[chosen], ref_logp[rejected], beta=beta,
                    loss_type=loss_type, label_smoothing=label_smoothing)[0]


def ipo_point(ref_logp: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    r"""Log-probs with every chain margin equal to :math:`1/(2\beta)`: :math:`\log\pi_{\mathrm{ref}} + \mathrm{rank}/(2\beta)`,
    normalised (rank 0 = the lowest reward)."""
    rank = torch.argsort(torch.argsort(rewards)).to(ref_logp.dtype)
    return torch.log_softmax(ref_logp + rank / (2 * beta), -1)


def ipo_minimiser(ref_logp: torch.Tensor, rewards: torch.Tensor, beta: float, max_iter: int = 200) -> torch.Tensor:
    """Log-probs minimising the IPO loss on the ranking chain, over free logits by L-BFGS from pi = ref."""
    chosen, rejected = ranking_chain(rewards)
    phi = ref_logp.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([phi], lr=1.0, max_iter=max_iter, tolerance_grad=1e-14, tolerance_change=1e-18,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = pair_loss(torch.log_softmax(phi, -1), ref_logp, chosen, rejected, beta, "ipo")
        loss.backward()
        return loss

    opt.step(closure)
    return torch.log_softmax(phi.detach(), -1)


def margins(logp: torch.Tensor, ref_logp: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    r""":math:`h = (\log\pi - \log\pi_{\mathrm{ref}})(y_w) - (\log\pi - \log\pi_{\mathrm{ref}})(y_l)` of each pair."""
    u = logp - ref_logp
    return u[chosen] - u[rejected]


def ipo_checks(ref_logp: torch.Tensor, rewards: torch.Tensor, beta: float) -> list[Check]:
    chosen, rejected = ranking_chain(rewards)
    target = torch.full((chosen.shape[0],), 1 / (2 * beta), dtype=ref_logp.dtype)
    point = ipo_point(ref_logp, rewards, beta)
    phi = point.clone().requires_grad_(True)
    loss = pair_loss(torch.log_softmax(phi, -1), ref_logp, chosen, rejected, beta, "ipo")
    (g,) = torch.autograd.grad(loss, phi)
    out = [exact(NAME, "IPO on the ranking chain: loss == 0 and gradient == 0 where every margin == 1/(2 beta)",
                 torch.zeros(g.numel() + 1, dtype=g.dtype), torch.cat([loss.detach().reshape(1), g]),
                 detail=f"{chosen.shape[0]} pairs of consecutive ranks, beta = {beta}, 1/(2 beta) = {1 / (2 * beta)}")]
    fitted = ipo_minimiser(ref_logp, rewards, beta)
    h = margins(fitted, ref_logp, chosen, rejected)
    out.append(exact(NAME, "IPO minimiser (L-BFGS) on the ranking chain: every margin h == 1/(2 beta)", target, h,
                     tol=1e-6, detail="free logits from pi = ref, float64; optimisation tolerance 1e-6"))
    out.append(negative_control(exact(NAME, "IPO minimiser: every margin h == 1/beta", 2 * target, h, tol=1e-6),
                                detail="the target is 1/(2 beta), not 1/beta; must be rejected"))
    return out


def hinge_checks(beta: float = 0.5) -> list[Check]:
    """Hinge loss on a grid of margins: value, and a gradient that is exactly 0 beyond the margin 1/beta."""
    h = torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.5, 2.5, 3.0, 4.0], dtype=torch.float64)   # beta h = 1 at h = 2
    B = h.shape[0]
    zeros = torch.full_like(h, -2.0)

    def loss_and_grad(loss_type):
        chosen = (zeros + h).clone().requires_grad_(True)          # log pi(y_w) - log pi(y_l) = h, ref equal
        loss = dpo_loss(chosen, zeros, zeros, zeros, beta=beta, loss_type=loss_type)[0]
        (g,) = torch.autograd.grad(loss, chosen)
        return loss.detach(), g

    loss, g = loss_and_grad("hinge")
    inside = beta * h < 1
    out = [exact(NAME, "hinge loss == mean max(0, 1 - beta h) on a grid of margins", (1 - beta * h).clamp(min=0).mean(),
                 loss, detail=f"beta = {beta}; h in {h.tolist()}"),
           exact(NAME, "hinge gradient wrt log pi(y_w) == -beta/B inside the margin, 0 beyond (beta h > 1)",
                 torch.where(inside, torch.full_like(h, -beta / B), torch.zeros_like(h)), g,
                 detail=f"{int((~inside).sum())} of {B} pairs beyond the margin: loss 0 and gradient 0")]
    _, g_sig = loss_and_grad("sigmoid")
    out.append(negative_control(
        exact(NAME, "sigmoid (DPO) loss: gradient == 0 beyond the hinge margin", torch.zeros(int((~inside).sum()),
              dtype=h.dtype), g_sig[~inside]),
        detail="log sigmoid never saturates exactly: DPO keeps pushing h up; must be rejected"))
    return out


def noisy_label_checks(logp: torch.Tensor, ref_logp: torch.Tensor, rewards: torch.Tensor, beta: float,
                       eps: float = 0.2) -> list[Check]:
    """Label smoothing (cDPO) and robust DPO under labels flipped with probability eps, by exact enumeration
    of the two labels of every pair."""
    w, l = ranked_pairs(rewards)
    phi = logp.detach().clone().requires_grad_(True)

    def value_and_grad(fn):
        v = fn(torch.log_softmax(phi, -1))
        (g,) = torch.autograd.grad(v, phi)
        return torch.cat([v.detach().reshape(1), g])

    def under_noise(loss_type, smoothing=0.0):
        return lambda lp: ((1 - eps) * pair_loss(lp, ref_logp, w, l, beta, loss_type, smoothing)
                           + eps * pair_loss(lp, ref_logp, l, w, beta, loss_type, smoothing))

    clean = value_and_grad(lambda lp: pair_loss(lp, ref_logp, w, l, beta))
    cdpo = value_and_grad(lambda lp: pair_loss(lp, ref_logp, w, l, beta, "sigmoid", eps))
    detail = f"eps = {eps}, {w.shape[0]} pairs, beta = {beta}; (loss, gradient wrt logits)"
    out = [exact(NAME, "cDPO loss(eps) == (1-eps) DPO(y_w, y_l) + eps DPO(y_l, y_w) (value and gradient)",
                 value_and_grad(under_noise("sigmoid")), cdpo, detail=detail)]
    out.append(negative_control(
        exact(NAME, "rDPO(eps) in place of cDPO == (1-eps) DPO(y_w, y_l) + eps DPO(y_l, y_w)",
              value_and_grad(under_noise("sigmoid")),
              value_and_grad(lambda lp: pair_loss(lp, ref_logp, w, l, beta, "robust", eps))),
        detail="the two eps-losses confused (rDPO removes the noise, cDPO models it); must be rejected"))

    hstar = math.log((1 - eps) / eps) / beta
    one = torch.zeros(1, dtype=torch.float64)

    def grad_at_margin(smoothing):
        c = (one + hstar).requires_grad_(True)
        (g,) = torch.autograd.grad(dpo_loss(c, one, one, one, beta=beta, label_smoothing=smoothing)[0], c)
        return g

    out.append(exact(NAME, "cDPO gradient == 0 at the finite margin beta h = log((1-eps)/eps)", one,
                     grad_at_margin(eps), detail=f"h* = {hstar:.4f}: sigma(beta h*) = 1 - eps"))
    out.append(negative_control(exact(NAME, "plain DPO gradient == 0 at beta h = log((1-eps)/eps)", one,
                                      grad_at_margin(0.0)),
                                detail="without smoothing the optimum margin is infinite; must be rejected"))

    out.append(exact(NAME, "rDPO unbiased: E over flipped labels of rDPO == clean DPO (value and gradient)", clean,
                     value_and_grad(under_noise("robust", eps)), detail=detail))
    out.append(negative_control(
        exact(NAME, "plain DPO under label flips: E over flipped labels == clean DPO", clean,
              value_and_grad(under_noise("sigmoid"))),
        detail="label noise biases the plain DPO loss; must be rejected"))

    hs, bs, es = sympy.symbols("h beta epsilon", positive=True)
    logsig = lambda x: -sympy.log(1 + sympy.exp(-x))  # noqa: E731
    rdpo = lambda x: (-(1 - es) * logsig(bs * x) + es * logsig(-bs * x)) / (1 - 2 * es)  # noqa: E731
    out.append(symbolic(NAME, "(1-eps) rDPO(h) + eps rDPO(-h) == -log sigma(beta h)",
                        (1 - es) * rdpo(hs) + es * rdpo(-hs), -logsig(bs * hs)))
    return out
