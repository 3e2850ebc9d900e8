r"""PPO's clipped surrogate: where its gradient is zero, and where it is not.

Statement. The per-token PPO-clip loss (Schulman et al. 2017) is

.. math::

    \ell(\rho, A) = -\min\big(\rho A,\; \operatorname{clip}(\rho, 1-\epsilon, 1+\epsilon) A\big),
    \qquad \rho = \exp(\log\pi_\theta - \log\pi_{\text{old}}).

Its gradient w.r.t. :math:`\log \pi_\theta` (with :math:`\partial\rho/\partial\log\pi = \rho`) is
:math:`-\rho A` where the unclipped term is the minimum and :math:`0` where the clipped term
is, which gives a truth table:

=============  =========================  ================  =========================
               :math:`\rho < 1-\epsilon`  inside the range  :math:`\rho > 1+\epsilon`
=============  =========================  ================  =========================
:math:`A > 0`  :math:`-\rho A`            :math:`-\rho A`   0 (clipped)
:math:`A < 0`  0 (clipped)                :math:`-\rho A`   :math:`-\rho A`
=============  =========================  ================  =========================

The clip only stops the ratio from moving further in the direction the advantage pushes it;
a token already moved the *wrong* way (e.g. :math:`A>0`, :math:`\rho<1-\epsilon`) keeps its
full gradient. In parameters, the gradient is :math:`-\rho A\, \nabla_\theta \log \pi_\theta`
or 0. At :math:`\theta = \theta_{\text{old}}` every :math:`\rho = 1`, the loss is
:math:`-\mathbb{E}[\sum_t A_t]`, which is 0 for exact advantages (or zero-mean ones), while
its gradient is minus the policy gradient: a loss of 0 says nothing about the gradient.

Checks:

* exact: the autograd gradient of :func:`rlcourse.losses.clipped_surrogate` w.r.t. :math:`\log\pi`
  in each of the 6 cells equals the table (:math:`\epsilon = 0.2`);
* exact (toy MDP, :math:`\theta \neq \theta_{\text{old}}`, :math:`A = A^{\text{old}}`): the gradient of the
  expected clipped loss w.r.t. :math:`\theta` equals
  :math:`\mathbb{E}_{\text{old}}[\sum_t \mathbb{1}[\text{unclipped}]\,(-\rho_t A_t)\, \nabla_\theta \log\pi_\theta(a_t \mid s_t)]`;
* exact (toy MDP at :math:`\theta_{\text{old}}`): the expected loss is 0 and its gradient is
  :math:`-\nabla_\theta J`; on a batch with zero-mean advantages, :func:`rlcourse.losses.ppo_clip_loss`
  is 0 while its gradient is :math:`-A/n` per token;
* negative control: ``max`` in place of ``min`` breaks the truth table;
* negative control: clipping without the ``min`` (loss :math:`-\operatorname{clip}(\rho)A`) breaks it;
* symbolic: :math:`\partial_\rho \min(\rho A, \operatorname{clip}(\rho) A)` in each of the 6 regions
  (sympy resolves the min/max from the signs alone) is :math:`A` or 0 as in the table.

The critic's clipped value loss (PPO as implemented in OpenAI baselines), :func:`rlcourse.losses.value_loss`,
:math:`\ell = \frac12\max\big((V - R)^2, (\operatorname{clip}(V, V^{\text{old}} - c, V^{\text{old}} + c) - R)^2\big)`,
has its own truth table: inside the range both terms agree and :math:`\partial\ell/\partial V = V - R`; outside
it the clipped term is a constant :math:`b` (:math:`V^{\text{old}} \pm c`), so the gradient is :math:`V - R` if the
unclipped error is the larger (the target is nearer :math:`b` than :math:`V`: the value moved away from it)
and 0 if the clipped one is (the target is nearer :math:`V`: the value moved towards it by more than
:math:`c`). Checks:

* exact: the autograd gradient of ``value_loss`` (token-mean) w.r.t. :math:`V` in 7 cells (inside; above the
  range with the target above :math:`V`, below :math:`V^{\text{old}} + c`, or between the two, nearer either
  end; below the range with the target below / above) equals that table divided by the number of tokens;
  the targets get no gradient;
* exact: without clipping, and with a range that clips nothing, the loss is :math:`\frac12\,\mathrm{mean}(V - R)^2`;
* negative control: ``min`` in place of ``max`` breaks the table.
"""

from __future__ import annotations

import sympy
import torch

from rlcourse.derivations.base import Check, derivation, exact, negative_control, symbolic
from rlcourse.losses import clipped_surrogate, ppo_clip_loss, value_loss
from rlcourse.ratios import token_ratio
from rlcourse.toymdp import ToyMDP, course_problem

NAME = "ppo_clip"
EPS = 0.2

#: The six cells of the truth table: (label, ratio, advantage).
CASES = (
    ("A>0, ratio below 1-eps", 0.6, 1.5),
    ("A>0, ratio inside", 1.1, 1.5),
    ("A>0, ratio above 1+eps", 1.5, 1.5),
    ("A<0, ratio below 1-eps", 0.6, -0.7),
    ("A<0, ratio inside", 0.9, -0.7),
    ("A<0, ratio above 1+eps", 1.5, -0.7),
)


def unclipped_active(ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float = EPS,
                     eps_high: float | None = None) -> torch.Tensor:
    r"""True where :math:`\rho A` is the minimum: :math:`A>0, \rho \le 1+\epsilon_h` or :math:`A<0, \rho \ge 1-\epsilon_l`."""
    eps_high = eps_low if eps_high is None else eps_high
    return ((advantages > 0) & (ratio <= 1 + eps_high)) | ((advantages < 0) & (ratio >= 1 - eps_low))


def truth_table_gradient(ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float = EPS,
                         eps_high: float | None = None) -> torch.Tensor:
    r"""The piecewise formula: :math:`\partial \ell / \partial \log\pi = -\rho A` where unclipped, else 0."""
    return torch.where(unclipped_active(ratio, advantages, eps_low, eps_high), -ratio * advantages,
                       torch.zeros_like(ratio))


def autograd_gradient(surrogate, ratio: torch.Tensor, advantages: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    r""":math:`\partial \ell / \partial \log\pi` by autograd through :math:`\rho = \exp(\log\pi - \log\pi_{\text{old}})`,
    for a per-token loss ``surrogate(ratio, advantages, eps)``."""
    logp_old = torch.full_like(ratio, -5.0)  # log-probs are <= 0: ratios up to e^5 are representable
    logp = (logp_old + ratio.log()).clone().requires_grad_(True)
    (g,) = torch.autograd.grad(surrogate(token_ratio(logp, logp_old), advantages, eps).sum(), logp)
    return g


def max_instead_of_min(ratio: torch.Tensor, advantages: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    r"""Wrong on purpose: :math:`-\max(\rho A, \operatorname{clip}(\rho) A)`."""
    return -torch.max(ratio * advantages, torch.clamp(ratio, 1 - eps, 1 + eps) * advantages)


def clip_without_min(ratio: torch.Tensor, advantages: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    r"""Wrong on purpose: :math:`-\operatorname{clip}(\rho, 1-\epsilon, 1+\epsilon) A`."""
    return -torch.clamp(ratio, 1 - eps, 1 + eps) * advantages


def expected_clip_loss(mdp: ToyMDP, theta: torch.Tensor, theta_old: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    r""":math:`\mathbb{E}_{\tau \sim \text{old}}[\sum_t \ell(\rho_t, A^{\text{old}}(s_t, a_t))]` by enumeration (differentiable in theta)."""
    seq = mdp.sequences
    adv = mdp.advantages(theta_old)[seq.states, seq.tokens] * seq.mask
    rho = token_ratio(mdp.token_logprobs(theta), mdp.token_logprobs(theta_old))
    per_token = clipped_surrogate(rho, adv, eps) * seq.mask
    return mdp.probabilities(theta_old) @ per_token.sum(-1)


def clip_gradient_formula(mdp: ToyMDP, theta: torch.Tensor, theta_old: torch.Tensor, eps: float = EPS
                          ) -> torch.Tensor:
    r""":math:`\mathbb{E}_{\text{old}}[\sum_t \mathbb{1}[\text{unclipped}]\,(-\rho_t A_t)\,\nabla_\theta\log\pi_\theta(a_t \mid s_t)]`, (S, V)."""
    seq = mdp.sequences
    adv = mdp.advantages(theta_old)[seq.states, seq.tokens] * seq.mask
    rho = token_ratio(mdp.token_logprobs(theta), mdp.token_logprobs(theta_old))
    w = truth_table_gradient(rho, adv, eps) * seq.mask
    return torch.einsum("n,nt,ntsa->sa", mdp.probabilities(theta_old), w, mdp.token_scores(theta))


def clip_objective_derivatives_sympy() -> list[tuple[str, sympy.Expr, sympy.Expr]]:
    r"""For each region, :math:`\partial_\rho \min(\rho A, \operatorname{clip}(\rho, 1-\epsilon, 1+\epsilon) A)`
    and the expected value (:math:`A` or 0). Each region is parametrised by positive symbols so that
    sympy can order the arguments of min/max itself:
    below :math:`\rho = 1-\epsilon-u`, inside :math:`\rho = 1-\epsilon+2\epsilon w/(1+w)`, above :math:`\rho = 1+\epsilon+u`."""
    eps, u, w, a = sympy.symbols("epsilon u w a", positive=True)
    regions = {"below": (1 - eps - u, u), "inside": (1 - eps + 2 * eps * w / (1 + w), w), "above": (1 + eps + u, u)}
    expected = {(1, "below"): a, (1, "inside"): a, (1, "above"): 0,
                (-1, "below"): 0, (-1, "inside"): -a, (-1, "above"): -a}
    out = []
    for sign in (1, -1):
        A = sign * a
        for name, (rho, var) in regions.items():
            f = sympy.Min(rho * A, sympy.Max(1 - eps, sympy.Min(rho, 1 + eps)) * A)
            out.append((f"A{'>' if sign > 0 else '<'}0, {name}", sympy.diff(f, var) / sympy.diff(rho, var),
                        sympy.sympify(expected[(sign, name)])))
    return out


#: Cells of the clipped value loss (V_old = 0, c = 0.2): (label, V, R).
VALUE_CLIP = 0.2
VALUE_CASES = (
    ("V inside the range", 0.1, 1.0),
    ("V above the range, target above it", 0.5, 1.0),
    ("V above the range, target below it", 0.5, -1.0),
    ("V above the range, target between, nearer V_old + c", 0.5, 0.3),
    ("V above the range, target between, nearer V", 0.5, 0.4),
    ("V below the range, target below it", -0.5, -1.0),
    ("V below the range, target above it", -0.5, 1.0),
)


def value_truth_table(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, c: float
                      ) -> torch.Tensor:
    r""":math:`\partial\ell/\partial V` by region: :math:`V - R` inside :math:`[V^{\text{old}} - c, V^{\text{old}} + c]`;
    above it (clipped value :math:`b = V^{\text{old}} + c`) :math:`V - R` if :math:`|V - R| > |b - R|`, i.e.
    :math:`R < (V + b)/2`, else 0; below it (:math:`b = V^{\text{old}} - c`) :math:`V - R` if :math:`R > (V + b)/2`, else 0."""
    above, below = values > old_values + c, values < old_values - c
    active = ((~above & ~below) | (above & (returns < (values + old_values + c) / 2))
              | (below & (returns > (values + old_values - c) / 2)))
    return torch.where(active, values - returns, torch.zeros_like(values))


def value_loss_with_min(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                        clip_range: float) -> torch.Tensor:
    r"""Wrong on purpose: :math:`\frac12\min(\cdot,\cdot)` in place of max, token-mean."""
    v_clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    per_token = 0.5 * torch.min((values - returns) ** 2, (v_clipped - returns) ** 2)
    return (per_token * mask).sum() / mask.sum()


def value_gradients(loss_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """Autograd d loss / d V and d loss / d R over the 6 cells as a (1, 6) batch, token-mean."""
    v = torch.tensor([[c[1] for c in VALUE_CASES]], dtype=torch.float64, requires_grad=True)
    r = torch.tensor([[c[2] for c in VALUE_CASES]], dtype=torch.float64, requires_grad=True)
    loss = loss_fn(v, torch.zeros_like(v), r, torch.ones_like(v), VALUE_CLIP)
    gv, gr = torch.autograd.grad(loss, (v, r), allow_unused=True)
    return gv[0], (torch.zeros_like(r[0]) if gr is None else gr[0])


def value_checks() -> list[Check]:
    v = torch.tensor([c[1] for c in VALUE_CASES], dtype=torch.float64)
    r = torch.tensor([c[2] for c in VALUE_CASES], dtype=torch.float64)
    n = len(VALUE_CASES)
    table = value_truth_table(v, torch.zeros_like(v), r, VALUE_CLIP) / n
    gv, gr = value_gradients(lambda *a: value_loss(*a[:4], clip_range=a[4]))
    out = [exact(NAME, f"value loss d/dV, {label}: {'(V-R)/n' if table[i] != 0 else '0'}", table[i], gv[i],
                 detail=f"V={v[i]:+.2f}, R={r[i]:+.2f}, V_old=0, c={VALUE_CLIP}")
           for i, (label, _, _) in enumerate(VALUE_CASES)]
    out.append(exact(NAME, "value loss: the targets get no gradient", torch.zeros(n, dtype=torch.float64), gr))
    g = torch.Generator().manual_seed(3)
    vals, rets = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    mask = torch.ones(3, 5, dtype=torch.float64)
    mask[1, 3:] = 0
    half_mse = 0.5 * ((vals - rets) ** 2 * mask).sum() / mask.sum()
    old = vals + 0.05 * torch.randn(3, 5, generator=g, dtype=torch.float64)
    out.append(exact(NAME, "value loss without clipping == 0.5 mean (V - R)^2", half_mse,
                     value_loss(vals, old, rets, mask)))
    out.append(exact(NAME, "value loss with |V - V_old| < c everywhere == 0.5 mean (V - R)^2", half_mse,
                     value_loss(vals, old, rets, mask, clip_range=0.5), detail="|V - V_old| <= 0.2 < c = 0.5"))
    out.append(negative_control(
        exact(NAME, "value-loss truth table for 0.5 min(...) in place of max", table, value_gradients(value_loss_with_min)[0]),
        detail="min instead of max must be rejected"))
    return out


@derivation(NAME, "PPO clip: truth table of the gradient", source="unified-rl-llm")
def checks() -> list[Check]:
    ratio = torch.tensor([c[1] for c in CASES], dtype=torch.float64)
    adv = torch.tensor([c[2] for c in CASES], dtype=torch.float64)
    table = truth_table_gradient(ratio, adv)
    got = autograd_gradient(clipped_surrogate, ratio, adv)
    out = [exact(NAME, f"d loss / d log pi, {label}: {'-ratio*A' if table[i] != 0 else '0'}", table[i], got[i],
                 detail=f"ratio={ratio[i]:.2f}, A={adv[i]:+.2f}, eps={EPS}")
           for i, (label, _, _) in enumerate(CASES)]

    mdp, theta_old = course_problem()
    theta = theta_old + 0.3 * mdp.init_params(seed=2)
    th = theta.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(expected_clip_loss(mdp, th, theta_old), th)
    seq = mdp.sequences
    rho = token_ratio(mdp.token_logprobs(theta), mdp.token_logprobs(theta_old))
    adv_seq = mdp.advantages(theta_old)[seq.states, seq.tokens]
    p_old = mdp.probabilities(theta_old)
    clipped = float(p_old @ (seq.mask * ~unclipped_active(rho, adv_seq)).sum(-1)) / float(p_old @ seq.mask.sum(-1))
    out.append(exact(NAME, "toy MDP: grad_theta E_old[sum_t loss_t] == E_old[sum_t 1[unclipped] (-rho A) grad log pi]",
                     clip_gradient_formula(mdp, theta, theta_old), g,
                     detail=f"expected fraction of tokens with a zero (clipped) gradient: {clipped:.3f}"))

    th_old = theta_old.detach().clone().requires_grad_(True)
    loss0 = expected_clip_loss(mdp, th_old, theta_old)
    (g0,) = torch.autograd.grad(loss0, th_old)
    out.append(exact(NAME, "toy MDP at theta_old: E_old[sum_t loss_t] == 0 (exact advantages)", 0.0, loss0))
    out.append(exact(NAME, "toy MDP at theta_old: its gradient == -grad J", -mdp.exact_gradient(theta_old), g0,
                     detail=f"|grad| = {float(g0.norm()):.3f} although the loss is 0"))

    a = torch.tensor([[1.0, -2.0, 0.5], [1.5, -1.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.float64)
    logp = torch.tensor([[-0.3, -1.2, -2.0], [-0.7, -0.1, -1.0]], dtype=torch.float64, requires_grad=True)
    loss, _ = ppo_clip_loss(logp, logp.detach(), a, mask, aggregation="token_mean")
    (gl,) = torch.autograd.grad(loss, logp)
    out.append(exact(NAME, "batch at ratio 1, zero-mean advantages: ppo_clip_loss == 0", 0.0, loss))
    out.append(exact(NAME, "batch at ratio 1: d loss / d logp == -A / n_tokens (not 0)", -a * mask / mask.sum(), gl))

    out.append(negative_control(
        exact(NAME, "truth table for -max(ratio*A, clip(ratio)*A)", table,
              autograd_gradient(max_instead_of_min, ratio, adv)),
        detail="max instead of min must be rejected"))
    out.append(negative_control(
        exact(NAME, "truth table for -clip(ratio)*A (no min)", table, autograd_gradient(clip_without_min, ratio, adv)),
        detail="without the min, a token moved the wrong way loses its gradient: must be rejected"))

    for label, lhs, rhs in clip_objective_derivatives_sympy():
        out.append(symbolic(NAME, f"d/d ratio of min(ratio A, clip(ratio) A), {label}", lhs, rhs))
    return out + value_checks()
