r"""Bradley-Terry: log-odds are reward differences, and the MLE recovers rewards up to a constant.

Statement. The Bradley-Terry model (Bradley & Terry 1952) of a preference between two
responses with rewards :math:`r_1, r_2` is

.. math::

    P(y_1 \succ y_2) = \frac{e^{r_1}}{e^{r_1} + e^{r_2}} = \sigma(r_1 - r_2), \qquad
    \log \frac{P(y_1 \succ y_2)}{1 - P(y_1 \succ y_2)} = r_1 - r_2 .

So a preference depends on rewards only through their differences: :math:`r + c` gives the same
likelihood for any constant :math:`c` (a scale :math:`a r` does not). A reward model is trained
by minimising the negative log-likelihood
:math:`-\mathbb{E}_{(y_w, y_l)}[\log \sigma(r_\phi(y_w) - r_\phi(y_l))]`. With infinite data drawn from
planted rewards :math:`r^*` (pairs :math:`(i, j)` with weights :math:`\mu_{ij}`, labels from
:math:`\sigma(r^*_i - r^*_j)`) the expected NLL is

.. math::

    L(r) = \sum_{i<j} \mu_{ij} \Big[ -\sigma(r^*_i - r^*_j) \log \sigma(r_i - r_j)
                                      - \sigma(r^*_j - r^*_i) \log \sigma(r_j - r_i) \Big],

a cross-entropy minimised where :math:`\sigma(r_i - r_j) = \sigma(r^*_i - r^*_j)` for every compared
pair: :math:`\nabla L(r^*) = 0`, :math:`L` is convex with Hessian null space spanned by
:math:`\mathbf{1}` (when the comparison graph is connected), so the minimisers are exactly
:math:`r^* + c\,\mathbf{1}`: the rewards are identified up to a constant.

Checks (5 items, all 10 pairs compared, planted rewards with a non-zero mean):

* exact: :math:`\mathrm{logit}\, P(y_1 \succ y_2) = r_1 - r_2` on a grid of reward pairs;
* exact: :math:`\nabla L(r^*) = 0`; the Hessian annihilates :math:`\mathbf{1}` and its other eigenvalues are > 0;
* exact (optimisation, tolerance 1e-10): L-BFGS (then two Newton steps) on :math:`L` from 0
  recovers the centred planted rewards;
* exact: :math:`L(r + c) = L(r)`;
* negative control: :math:`L(2r) = L(r)` (a scale change) is rejected;
* negative control: "the MLE recovers the planted rewards themselves" (uncentred) is rejected;
* Monte Carlo: the MLE on 4000 sampled comparisons (``bradley_terry_loss``) is within 4 standard
  errors (inverse observed Fisher information) of the centred planted rewards;
* symbolic: :math:`\log\frac{\sigma(a-b)}{1 - \sigma(a-b)} = a - b` and
  :math:`\frac{e^a}{e^a + e^b} = \sigma(a - b)`.
"""

from __future__ import annotations

import sympy
import torch

from rlcourse.derivations.base import (Check, derivation, exact, inequality, negative_control, symbolic)
from rlcourse.preference import bradley_terry_loss, bradley_terry_probability

NAME = "bradley_terry"

PLANTED_REWARDS = (1.2, -0.3, 0.5, 2.0, -1.0)


def log_odds(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    r""":math:`\log \frac{P(y_1 \succ y_2)}{1 - P(y_1 \succ y_2)}` from the Bradley-Terry probability."""
    return torch.logit(bradley_terry_probability(r1, r2))


def all_pairs(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (i, j) of every unordered pair i < j of ``k`` items."""
    i, j = torch.triu_indices(k, k, offset=1)
    return i, j


def expected_nll(r: torch.Tensor, r_true: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    r"""Infinite-data negative log-likelihood :math:`L(r)` (cross-entropy to the planted preferences),
    pairs weighted by ``weights`` (default uniform over the unordered pairs)."""
    i, j = all_pairs(r.shape[0])
    w = torch.full((i.shape[0],), 1.0 / i.shape[0], dtype=r.dtype) if weights is None else weights
    p_true = bradley_terry_probability(r_true[i], r_true[j])
    return -(w * (p_true * bradley_terry_probability(r[i], r[j]).log()
                  + (1 - p_true) * bradley_terry_probability(r[j], r[i]).log())).sum()


def nll_gradient_and_hessian(r: torch.Tensor, r_true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient (K,) and Hessian (K, K) of :func:`expected_nll` at ``r`` (autograd)."""
    r = r.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(expected_nll(r, r_true), r)
    h = torch.autograd.functional.hessian(lambda x: expected_nll(x, r_true), r.detach())
    return g, h


def fit_rewards(loss_fn, k: int, max_iter: int = 200, newton_steps: int = 2) -> torch.Tensor:
    """Minimise ``loss_fn(r)`` over r in R^k from r = 0 with L-BFGS (float64, strong Wolfe), then polish
    with ``newton_steps`` Newton steps (pseudo-inverse Hessian: the constant direction is flat).

    Near the optimum the loss changes by less than its rounding error, so a line search on loss
    values stalls around 1e-8; Newton steps use the gradient, which stays accurate."""
    r = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([r], lr=1.0, max_iter=max_iter, tolerance_grad=1e-14, tolerance_change=1e-16,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn(r)
        loss.backward()
        return loss

    opt.step(closure)
    r = r.detach()
    for _ in range(newton_steps):
        x = r.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss_fn(x), x)
        h = torch.autograd.functional.hessian(loss_fn, r)
        r = r - torch.linalg.pinv(h, rtol=1e-10, hermitian=True) @ g
    return r


def sample_comparisons(r_true: torch.Tensor, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` comparisons of uniformly drawn pairs, labelled by Bradley-Terry: (chosen, rejected) indices."""
    g = torch.Generator().manual_seed(seed)
    i, j = all_pairs(r_true.shape[0])
    pick = torch.randint(0, i.shape[0], (n,), generator=g)
    a, b = i[pick], j[pick]
    a_wins = torch.rand(n, generator=g, dtype=r_true.dtype) < bradley_terry_probability(r_true[a], r_true[b])
    return torch.where(a_wins, a, b), torch.where(a_wins, b, a)


def centred(r: torch.Tensor) -> torch.Tensor:
    """Rewards minus their mean (the identifiable part)."""
    return r - r.mean()


def _mle_monte_carlo(r_true: torch.Tensor, n: int, seed: int, n_se: float = 4.0) -> Check:
    """Fit the MLE on ``n`` sampled comparisons; compare centred estimates to the truth within ``n_se``
    standard errors from the inverse observed Fisher information (pseudo-inverse: the constant
    direction is not identified)."""
    chosen, rejected = sample_comparisons(r_true, n, seed)
    total_nll = lambda r: n * bradley_terry_loss(r[chosen], r[rejected])  # noqa: E731
    r_hat = fit_rewards(total_nll, r_true.shape[0])
    info = torch.autograd.functional.hessian(total_nll, r_hat)
    se = torch.linalg.pinv(info, rtol=1e-10, hermitian=True).diagonal().clamp(min=0).sqrt()
    dev = (centred(r_hat) - centred(r_true)).abs()
    bound = n_se * se
    ok = bool((dev <= bound).all())
    return Check(NAME, f"MLE on {n} sampled comparisons == centred planted rewards", "monte_carlo",
                 [float(x) for x in centred(r_true)], [float(x) for x in centred(r_hat)], float(bound.max()), ok,
                 float(dev.max()), f"seed {seed}; worst deviation = {float((dev / bound).max()):.2f} x tolerance "
                                   f"({n_se} SE from the inverse observed Fisher information)")


@derivation(NAME, "Bradley-Terry", source="wei-rl-llm")
def checks() -> list[Check]:
    grid = torch.linspace(-3, 3, 7, dtype=torch.float64)
    r1, r2 = torch.meshgrid(grid, grid, indexing="ij")
    out = [exact(NAME, "logit P(y1 > y2) == r1 - r2", r1 - r2, log_odds(r1, r2), tol=1e-12,
                 detail="7 x 7 grid of rewards in [-3, 3]")]

    r_true = torch.tensor(PLANTED_REWARDS, dtype=torch.float64)
    K = r_true.shape[0]
    g, h = nll_gradient_and_hessian(r_true, r_true)
    out.append(exact(NAME, "grad L(r*) == 0 (infinite data)", torch.zeros(K), g, tol=1e-12))
    ones = torch.ones(K, dtype=torch.float64)
    out.append(exact(NAME, "Hessian of L at r* annihilates the constant vector", torch.zeros(K), h @ ones, tol=1e-12))
    eig = torch.linalg.eigvalsh(h)
    out.append(inequality(NAME, "other Hessian eigenvalues > 0 (identified up to a constant)", 1e-3, eig[1:],
                          detail=f"eigenvalues {[round(float(e), 5) for e in eig]}"))

    r_hat = fit_rewards(lambda r: expected_nll(r, r_true), K)
    out.append(exact(NAME, "L-BFGS on the expected NLL recovers centred r*", centred(r_true), centred(r_hat), tol=1e-10,
                     detail=f"planted r* = {list(PLANTED_REWARDS)} (mean {float(r_true.mean()):.2f}); "
                            "L-BFGS + 2 Newton steps from r = 0"))

    r_any = torch.tensor([0.3, -1.1, 0.8, 0.0, 1.7], dtype=torch.float64)
    base = expected_nll(r_any, r_true)
    out.append(exact(NAME, "L(r + c) == L(r) (c = 3.7)", base, expected_nll(r_any + 3.7, r_true), tol=1e-12))
    out.append(negative_control(exact(NAME, "L(2 r) == L(r) (a scale change)", base,
                                      expected_nll(2 * r_any, r_true), tol=1e-12),
                                detail="only differences are unidentified; a scale must be rejected"))
    out.append(negative_control(exact(NAME, "the MLE equals the planted rewards themselves (uncentred)", r_true, r_hat,
                                      tol=1e-8),
                                detail=f"the fit keeps the mean of its start (0), planted mean "
                                       f"{float(r_true.mean()):.2f}; must be rejected"))

    out.append(_mle_monte_carlo(r_true, n=4000, seed=0))

    a, b = sympy.symbols("a b", real=True)
    sig = 1 / (1 + sympy.exp(-(a - b)))
    out.append(symbolic(NAME, "log(sigma(a-b) / (1 - sigma(a-b))) == a - b", sympy.log(sig / (1 - sig)), a - b))
    out.append(symbolic(NAME, "e^a / (e^a + e^b) == sigma(a - b)", sympy.exp(a) / (sympy.exp(a) + sympy.exp(b)), sig))
    return out
