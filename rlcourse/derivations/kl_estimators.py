r"""Sample estimators of KL(pi || ref): k1, k2, k3, their bias and their gradients.

Statement. Let :math:`x \sim \pi` and :math:`\log r(x) = \log \pi_{\mathrm{ref}}(x) - \log \pi(x)`.
The three estimators of Schulman (2020), "Approximating KL Divergence", are

.. math::

    k_1 = -\log r, \qquad k_2 = \tfrac12 (\log r)^2, \qquad k_3 = (r - 1) - \log r .

* :math:`\mathbb{E}_\pi[k_1] = \mathrm{KL}(\pi \| \pi_{\mathrm{ref}})` (the definition), but single
  values of :math:`k_1` are negative whenever :math:`\pi_{\mathrm{ref}}(x) > \pi(x)`;
* :math:`\mathbb{E}_\pi[k_2] \neq \mathrm{KL}` in general: it agrees only to second order in
  :math:`\log r`;
* :math:`\mathbb{E}_\pi[k_3] = \mathrm{KL}`, because :math:`\mathbb{E}_\pi[r] = \sum_x \pi_{\mathrm{ref}}(x) = 1`,
  and :math:`k_3 \ge 0` pointwise, because :math:`f(u) = e^u - 1 - u \ge 0` (its minimum is at
  :math:`u = 0`, where :math:`f = f' = 0` and :math:`f'' = e^u > 0`).

Gradients. In training these estimators are used as a *loss term*: the samples come from the
current policy but are not differentiated through, so the expected loss is
:math:`L_k(\theta) = \sum_x \mathrm{sg}[\pi_\theta(x)]\, k(x; \theta)`. Using
:math:`\nabla \log r = -\nabla \log \pi_\theta` and the EGLP lemma
:math:`\sum_x \pi_\theta \nabla \log \pi_\theta = 0`,

.. math::

    \nabla L_{k_1} &= \textstyle\sum_x \pi_\theta \nabla \log \pi_\theta = 0, \\
    \nabla L_{k_2} &= \textstyle\sum_x \pi_\theta \log\frac{\pi_\theta}{\pi_{\mathrm{ref}}} \nabla \log \pi_\theta
                    = \nabla\, \mathrm{KL}(\pi_\theta \| \pi_{\mathrm{ref}}), \\
    \nabla L_{k_3} &= \textstyle\sum_x \pi_\theta (1 - r) \nabla \log \pi_\theta
                    = -\sum_x \pi_{\mathrm{ref}} \nabla \log \pi_\theta
                    = \nabla\, \mathrm{KL}(\pi_{\mathrm{ref}} \| \pi_\theta).

So the unbiased *value* estimator k3 has the gradient of the *reverse* KL, k1 has no gradient at
all in expectation, and the biased k2 is the one whose gradient is that of the forward KL.

Here :math:`x` is a whole sequence of the toy MDP (a categorical over its enumerated
sequences, :math:`\log \pi(x) = \sum_t \log \pi(a_t \mid s_t)`). Per token, the
"full-vocabulary" KL at a visited prefix, :math:`\sum_a \pi(a \mid s) \log \frac{\pi(a \mid s)}{\pi_{\mathrm{ref}}(a \mid s)}`,
is what a sampled k1 or k3 at that prefix estimates, and summed along a sequence all three
agree in expectation with the sequence-level KL (chain rule of KL).

Checks:

* exact: :math:`\mathbb{E}_\pi[k_1] = \mathbb{E}_\pi[k_3] = \mathrm{KL}(\pi \| \pi_{\mathrm{ref}})` by enumeration;
* exact: :math:`k_3 \ge 0` on every sequence (inequality);
* negative control: the same inequality for :math:`k_1` (":math:`k_1 \ge 0`") is rejected;
* negative control: ":math:`k_2` is unbiased" is rejected by the exact comparison (bias reported);
* exact: per prefix, :math:`\mathbb{E}_{a \sim \pi(\cdot \mid s)}[k_1] = \mathbb{E}[k_3] =` the full-vocabulary KL;
  along sequences, :math:`\mathbb{E}[\sum_t \mathrm{KL}_t] = \mathbb{E}[\sum_t k_{1,t}] = \mathbb{E}[\sum_t k_{3,t}] = \mathrm{KL}(P \| P_{\mathrm{ref}})`;
* exact: :math:`\nabla L_{k_1} = 0`, :math:`\nabla L_{k_2} = \nabla \mathrm{KL}(\pi \| \pi_{\mathrm{ref}})`,
  :math:`\nabla L_{k_3} = \nabla \mathrm{KL}(\pi_{\mathrm{ref}} \| \pi)` (autograd, 1e-10);
* exact: the per-token k3 loss (GRPO's) has gradient
  :math:`\sum_s \mathrm{sg}[d_\pi(s)]\, \nabla \mathrm{KL}(\pi_{\mathrm{ref}}(\cdot \mid s) \| \pi(\cdot \mid s))`;
* exact: the per-token k2 loss, :math:`\sum_\tau \mathrm{sg}[P_\theta(\tau)] \sum_t k_{2,t}(\theta)`, has gradient
  :math:`\sum_t \mathbb{E}\big[\nabla\mathrm{KL}(\pi(\cdot \mid s_t) \| \pi_{\mathrm{ref}}(\cdot \mid s_t))\big]` with the
  prefixes :math:`s_t` held fixed (enumerated sequence by sequence and step by step): per token,
  :math:`\mathbb{E}_{a \sim \pi(\cdot \mid s)}[\nabla k_2] = \nabla\mathrm{KL}(\pi(\cdot \mid s) \| \pi_{\mathrm{ref}}(\cdot \mid s))`;
* negative controls (horizon 3): the per-token k2 loss does *not* have the gradient of the sequence-level
  :math:`\mathrm{KL}(P_\theta \| P_{\mathrm{ref}})`, and the per-token k3 loss not that of
  :math:`\mathrm{KL}(P_{\mathrm{ref}} \| P_\theta)`: the sequence-level gradients also move the distribution
  of prefixes, which a per-token loss with sampled prefixes does not differentiate;
* negative control: :math:`\nabla L_{k_3} = \nabla \mathrm{KL}(\pi \| \pi_{\mathrm{ref}})` (the direction
  production code has shipped) is rejected;
* Monte Carlo: sample means of sequence-level k1 and k3 and of the per-token k3 sum are within
  4 standard errors of the KL; the smallest sampled k1 is negative;
* symbolic: :math:`f(u) = e^u - 1 - u` has :math:`f(0) = f'(0) = 0` and :math:`f'' = e^u > 0`, and
  sympy's ``minimum`` over the reals is 0.
"""

from __future__ import annotations

import sympy
import torch

from rlcourse.derivations.base import (Check, derivation, exact, inequality, monte_carlo, negative_control,
                                       symbolic)
from rlcourse.kl import KL_ESTIMATORS, kl_categorical
from rlcourse.toymdp import ToyMDP, ToyProblem

NAME = "kl_estimators"


def estimator_values(logp: torch.Tensor, logp_ref: torch.Tensor) -> dict[str, torch.Tensor]:
    r"""k1, k2, k3 at every outcome x (samples from pi), as a dict name -> tensor like ``logp``."""
    return {name: fn(logp, logp_ref) for name, fn in KL_ESTIMATORS.items()}


def exact_expectations(logp: torch.Tensor, logp_ref: torch.Tensor) -> dict[str, float]:
    r""":math:`\mathbb{E}_{x \sim \pi}[k(x)] = \sum_x \pi(x)\, k(x)` for k1, k2, k3 (categorical over the last dim)."""
    p = logp.detach().exp()
    return {name: float((p * k).sum()) for name, k in estimator_values(logp.detach(), logp_ref).items()}


def sequence_kl(mdp: ToyMDP, theta: torch.Tensor, theta_ref: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    r"""Exact :math:`\mathrm{KL}(P_\theta \| P_{\mathrm{ref}})` over whole sequences (``reverse``:
    :math:`\mathrm{KL}(P_{\mathrm{ref}} \| P_\theta)`); differentiable in ``theta``."""
    logp, logq = mdp.sequence_logprobs(theta), mdp.sequence_logprobs(theta_ref)
    return kl_categorical(logq, logp) if reverse else kl_categorical(logp, logq)


def estimator_loss_gradient(mdp: ToyMDP, theta: torch.Tensor, theta_ref: torch.Tensor, estimator: str
                            ) -> torch.Tensor:
    r"""Gradient of the expected loss term :math:`\sum_\tau \mathrm{sg}[P_\theta(\tau)]\, k(\tau; \theta)`,
    with ``k`` the sequence-level estimator (log-probs of whole sequences), shape (S, V)."""
    th = theta.detach().clone().requires_grad_(True)
    logp = mdp.sequence_logprobs(th)
    k = KL_ESTIMATORS[estimator](logp, mdp.sequence_logprobs(theta_ref).detach())
    (g,) = torch.autograd.grad((logp.detach().exp() * k).sum(), th)
    return g


def kl_gradient(mdp: ToyMDP, theta: torch.Tensor, theta_ref: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    r""":math:`\nabla_\theta \mathrm{KL}(P_\theta \| P_{\mathrm{ref}})` (or of the reverse KL) by autograd, shape (S, V)."""
    th = theta.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(sequence_kl(mdp, th, theta_ref.detach(), reverse), th)
    return g


def per_position_kl(mdp: ToyMDP, theta: torch.Tensor, theta_ref: torch.Tensor) -> torch.Tensor:
    r"""Full-vocabulary :math:`\mathrm{KL}(\pi(\cdot \mid s) \| \pi_{\mathrm{ref}}(\cdot \mid s))` at every prefix s, shape (S,)."""
    return kl_categorical(mdp.policy_logprobs(theta.detach()), mdp.policy_logprobs(theta_ref.detach()))


def per_position_expected_estimators(mdp: ToyMDP, theta: torch.Tensor, theta_ref: torch.Tensor
                                     ) -> dict[str, torch.Tensor]:
    r""":math:`\mathbb{E}_{a \sim \pi(\cdot \mid s)}[k(a)]` at every prefix s for k1, k2, k3, each shape (S,)."""
    lp, lq = mdp.policy_logprobs(theta.detach()), mdp.policy_logprobs(theta_ref.detach())
    return {name: (lp.exp() * k).sum(-1) for name, k in estimator_values(lp, lq).items()}


def token_estimators(mdp: ToyMDP, theta: torch.Tensor, theta_ref: torch.Tensor, estimator: str) -> torch.Tensor:
    r"""Per-token estimator along every enumerated sequence, (N, H), 0 after the end."""
    lp, lq = mdp.token_logprobs(theta), mdp.token_logprobs(theta_ref)
    return KL_ESTIMATORS[estimator](lp, lq) * mdp.sequences.mask


def expected_token_sums(mdp: ToyMDP, theta: torch.Tensor, theta_ref: torch.Tensor) -> dict[str, float]:
    r""":math:`\mathbb{E}_\tau[\sum_t X_t]` for X = full-vocab KL at :math:`s_t`, k1, k3 (per-token), by enumeration."""
    p = mdp.probabilities(theta.detach())
    seq = mdp.sequences
    full = (per_position_kl(mdp, theta, theta_ref)[seq.states] * seq.mask).sum(-1)
    out = {"full_vocab": float((p * full).sum())}
    for name in ("k1", "k3"):
        out[name] = float((p * token_estimators(mdp, theta.detach(), theta_ref, name).sum(-1)).sum())
    return out


def token_k3_loss_gradient(mdp: ToyMDP, theta: torch.Tensor, theta_ref: torch.Tensor, estimator: str = "k3"
                           ) -> torch.Tensor:
    r"""Gradient of the per-token loss :math:`\sum_\tau \mathrm{sg}[P_\theta(\tau)] \sum_t k_{t}(\theta)`, (S, V), for
    the estimator ``k`` (default k3, GRPO's)."""
    th = theta.detach().clone().requires_grad_(True)
    k = token_estimators(mdp, th, theta_ref.detach(), estimator).sum(-1)
    (g,) = torch.autograd.grad((mdp.probabilities(theta.detach()) * k).sum(), th)
    return g


def visitation_weighted_reverse_kl_gradient(mdp: ToyMDP, theta: torch.Tensor, theta_ref: torch.Tensor
                                            ) -> torch.Tensor:
    r""":math:`\nabla_\theta \sum_s \mathrm{sg}[d_\theta(s)]\, \mathrm{KL}(\pi_{\mathrm{ref}}(\cdot \mid s) \| \pi_\theta(\cdot \mid s))`, (S, V)."""
    th = theta.detach().clone().requires_grad_(True)
    d = mdp.state_visitation(theta.detach())
    kl = kl_categorical(mdp.policy_logprobs(theta_ref.detach()), mdp.policy_logprobs(th))
    (g,) = torch.autograd.grad((d * kl).sum(), th)
    return g


def fixed_prefix_kl_gradient(mdp: ToyMDP, theta: torch.Tensor, theta_ref: torch.Tensor) -> torch.Tensor:
    r""":math:`\sum_t \mathbb{E}_\tau\big[\nabla_\theta \mathrm{KL}(\pi_\theta(\cdot \mid s_t) \| \pi_{\mathrm{ref}}(\cdot \mid s_t))\big]`
    with the prefixes held fixed: sequence by sequence and step by step, each visited prefix's full-vocabulary
    KL gradient weighted by the (constant) sequence probability, (S, V)."""
    th = theta.detach().clone().requires_grad_(True)
    kl = kl_categorical(mdp.policy_logprobs(th), mdp.policy_logprobs(theta_ref.detach()))     # (S,)
    seq = mdp.sequences
    total = sum(float(mdp.probabilities(theta.detach())[n]) * kl[int(seq.states[n, t])]
                for n in range(mdp.num_sequences) for t in range(int(seq.lengths[n])))
    (g,) = torch.autograd.grad(total, th)
    return g


def sampled_estimators(mdp: ToyMDP, theta: torch.Tensor, theta_ref: torch.Tensor, n: int, seed: int = 0
                       ) -> dict[str, torch.Tensor]:
    r"""Sequence-level k1, k3 and the per-token k3 sum on ``n`` sampled sequences, each shape (n,)."""
    idx = mdp.sample(theta, n, seed=seed)
    logp, logq = mdp.sequence_logprobs(theta.detach())[idx], mdp.sequence_logprobs(theta_ref)[idx]
    vals = estimator_values(logp, logq)
    return {"k1": vals["k1"], "k3": vals["k3"],
            "k3_token_sum": token_estimators(mdp, theta.detach(), theta_ref, "k3").sum(-1)[idx]}


def _sympy_fact(check: str, statement, detail: str = "") -> Check:
    """A sympy fact that is not an identity (an inequality, a minimum): passed if it is True."""
    ok = bool(statement is True or statement == sympy.true)
    return Check(NAME, check, "symbolic", "True", str(statement), "exact", ok, None, detail)


def problem() -> tuple[ToyMDP, torch.Tensor, torch.Tensor]:
    """``(mdp, theta, theta_ref)``: the toy MDP (seed 3), policy (seed 4) and reference (seed 5) of these checks; a
    pair of policies farther apart than the course's problem, so that the estimators' differences show."""
    mdp, theta = ToyProblem(mdp_seed=3, theta_seed=4).build()
    return mdp, theta, mdp.init_params(seed=5)


@derivation(NAME, "KL estimators", source="ppo-post-training")
def checks() -> list[Check]:
    mdp, theta, theta_ref = problem()
    logp, logq = mdp.sequence_logprobs(theta), mdp.sequence_logprobs(theta_ref)
    kl = float(sequence_kl(mdp, theta, theta_ref))
    e = exact_expectations(logp, logq)
    vals = estimator_values(logp, logq)
    n_seq = mdp.num_sequences

    out = [exact(NAME, "E_pi[k1] == KL(pi||ref)", kl, e["k1"],
                 detail=f"enumeration of {n_seq} sequences; KL = {kl:.6f}"),
           exact(NAME, "E_pi[k3] == KL(pi||ref)", kl, e["k3"], detail="E_pi[r] = sum ref = 1 makes k3 unbiased"),
           inequality(NAME, "k3 >= 0 on every sequence", 0.0, vals["k3"], detail=f"min over {n_seq} sequences"),
           negative_control(inequality(NAME, "k1 >= 0 on every sequence", 0.0, vals["k1"]),
                            detail=f"k1 = log pi/ref is negative where ref > pi: min {float(vals['k1'].min()):.4f}, "
                                   "must be rejected"),
           negative_control(exact(NAME, "E_pi[k2] == KL(pi||ref) (k2 unbiased?)", kl, e["k2"]),
                            detail=f"k2 is biased: E[k2] - KL = {e['k2'] - kl:+.6f}, must be rejected")]

    # Per position: full-vocabulary KL vs the estimators at a sampled token; sums along sequences.
    full = per_position_kl(mdp, theta, theta_ref)
    per_pos = per_position_expected_estimators(mdp, theta, theta_ref)
    out.append(exact(NAME, "per prefix: E_a[k1] == full-vocab KL(pi(.|s)||ref(.|s))", full, per_pos["k1"],
                     detail=f"{mdp.num_states} prefixes"))
    out.append(exact(NAME, "per prefix: E_a[k3] == full-vocab KL(pi(.|s)||ref(.|s))", full, per_pos["k3"]))
    sums = expected_token_sums(mdp, theta, theta_ref)
    out.append(exact(NAME, "E[sum_t full-vocab KL_t] == E[sum_t k1_t] == E[sum_t k3_t] == KL(P||P_ref)",
                     [kl] * 3, [sums["full_vocab"], sums["k1"], sums["k3"]],
                     detail="chain rule of KL: per-token sums estimate the sequence-level KL"))

    # Gradients of the estimators used as a loss term (samples not differentiated).
    g_fwd, g_rev = kl_gradient(mdp, theta, theta_ref), kl_gradient(mdp, theta, theta_ref, reverse=True)
    g = {k: estimator_loss_gradient(mdp, theta, theta_ref, k) for k in ("k1", "k2", "k3")}
    out.append(exact(NAME, "grad E_sg[pi][k1] == 0", torch.zeros_like(g["k1"]), g["k1"],
                     detail="EGLP: k1 as a loss term has no expected gradient"))
    out.append(exact(NAME, "grad E_sg[pi][k2] == grad KL(pi||ref)", g_fwd, g["k2"]))
    out.append(exact(NAME, "grad E_sg[pi][k3] == grad KL(ref||pi)", g_rev, g["k3"],
                     detail="the unbiased value estimator has the gradient of the reverse KL"))
    out.append(negative_control(exact(NAME, "grad E_sg[pi][k3] == grad KL(pi||ref)", g_fwd, g["k3"]),
                                detail=f"max |grad KL(pi||ref) - grad KL(ref||pi)| = "
                                       f"{float((g_fwd - g_rev).abs().max()):.4f}; must be rejected"))
    out.append(exact(NAME, "per-token k3 loss: grad == grad sum_s sg[d(s)] KL(ref(.|s)||pi(.|s))",
                     visitation_weighted_reverse_kl_gradient(mdp, theta, theta_ref),
                     token_k3_loss_gradient(mdp, theta, theta_ref),
                     detail="GRPO's per-token k3 term pulls each visited prefix towards ref in reverse KL"))
    g_tok_k2 = token_k3_loss_gradient(mdp, theta, theta_ref, "k2")
    out.append(exact(NAME, "per-token k2 loss: grad == sum_t E[grad KL(pi(.|s_t)||ref(.|s_t))], prefixes fixed",
                     fixed_prefix_kl_gradient(mdp, theta, theta_ref), g_tok_k2,
                     detail="enumerated sequence by sequence and step by step (horizon 3)"))
    out.append(negative_control(exact(NAME, "per-token k2 loss: grad == grad KL(P||P_ref) of whole sequences", g_fwd,
                                      g_tok_k2),
                                detail=f"max difference {float((g_fwd - g_tok_k2).abs().max()):.4f}: the sequence-level "
                                       "gradient also moves the prefix distribution; must be rejected"))
    g_tok_k3 = token_k3_loss_gradient(mdp, theta, theta_ref)
    out.append(negative_control(exact(NAME, "per-token k3 loss: grad == grad KL(P_ref||P) of whole sequences", g_rev,
                                      g_tok_k3),
                                detail=f"max difference {float((g_rev - g_tok_k3).abs().max()):.4f}: prefixes visited "
                                       "under pi, not under ref; must be rejected"))

    # Monte Carlo.
    s = sampled_estimators(mdp, theta, theta_ref, n=20000, seed=0)
    out.append(monte_carlo(NAME, "mean of sampled k1 == KL", kl, s["k1"]))
    out.append(monte_carlo(NAME, "mean of sampled k3 == KL", kl, s["k3"]))
    out.append(monte_carlo(NAME, "mean of sampled per-token k3 sums == KL", kl, s["k3_token_sum"]))
    out.append(inequality(NAME, "smallest sampled k1 < 0", 0.0, s["k1"].min(), above=False,
                          detail=f"min sampled k1 = {float(s['k1'].min()):.4f}; sampled k3 min = "
                                 f"{float(s['k3'].min()):.2e} (never negative)"))

    # Symbolic: k3 = e^u - 1 - u >= 0 with u = log r.
    u = sympy.Symbol("u", real=True)
    f = sympy.exp(u) - 1 - u
    out.append(symbolic(NAME, "f(u) = e^u - 1 - u: f(0) == 0", f.subs(u, 0), sympy.Integer(0)))
    out.append(symbolic(NAME, "f'(u) == e^u - 1, zero at u = 0", sympy.diff(f, u), sympy.exp(u) - 1))
    out.append(symbolic(NAME, "f'(0) == 0", sympy.diff(f, u).subs(u, 0), sympy.Integer(0)))
    f2 = sympy.diff(f, u, 2)
    out.append(_sympy_fact("f''(u) = e^u > 0 for real u (f convex, so u = 0 is the global minimum)",
                           f2.is_positive, detail=f"f'' = {f2}"))
    from sympy.calculus.util import minimum
    out.append(symbolic(NAME, "min over the reals of e^u - 1 - u == 0", minimum(f, u, sympy.S.Reals),
                        sympy.Integer(0), detail="so k3 = r - 1 - log r >= 0 for every r > 0"))
    return out
