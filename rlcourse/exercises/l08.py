"""Lab 08 — RLHF with PPO: exact KL, the k3 estimator, which KL each gradient follows, adaptive beta."""

from __future__ import annotations

import torch

from rlcourse import kl as KL
from rlcourse.exercises.grading import DTYPE, agrees, compare, for_cases, gen, log_softmax_rows, randn, value_close
from rlcourse.exercises.registry import register
from rlcourse.losses import AdaptiveKLController

# --------------------------------------------------------------------------- 08.kl_categorical


def kl_categorical(logp, logq):
    """Exact KL(p || q) between categoricals given as log-probs

    kl_categorical(logp (..., V), logq (..., V)) -> (...)
    """
    return (logp.exp() * (logp - logq)).sum(-1)


def _pair_cases(seed):
    return [{"logp": log_softmax_rows(gen(seed, k), *s), "logq": log_softmax_rows(gen(seed, 100 + k), *s)}
            for k, s in enumerate([(2,), (3, 4), (2, 3, 6)])]


def _zero_on_equal(fn, case):
    return compare(fn(case, case.clone()), torch.zeros(case.shape[:-1], dtype=DTYPE), 1e-12, 0, "KL(p || p)")


register(
    kl_categorical, 1, "easy",
    [agrees("agrees with rlcourse.kl.kl_categorical", _pair_cases, KL.kl_categorical, 1e-12, 1e-9),
     for_cases("KL(p || p) = 0",
               lambda seed: [(f"p of shape {s}", log_softmax_rows(gen(seed, 110 + i), *s))
                             for i, s in enumerate([(2,), (3, 5)])], _zero_on_equal)],
    {"direction_swapped": lambda logp, logq: kl_categorical(logq, logp),
     "not_weighted_by_p": lambda logp, logq: (logp - logq).sum(-1),
     "weighted_by_q": lambda logp, logq: (logq.exp() * (logp - logq)).sum(-1)},
)

# --------------------------------------------------------------------------- 08.kl_k3


def kl_k3(logp, logp_ref):
    """The k3 estimator of KL(pi || ref) from tokens sampled from pi

    kl_k3(logp (B,T), logp_ref (B,T)) -> (B,T)
    """
    log_r = logp_ref - logp
    return torch.expm1(log_r) - log_r


def _unbiased_cases(seed):
    return [(f"pi, ref over V={V} (every token enumerated)",
             (log_softmax_rows(gen(seed, 120 + V), V, scale=s), log_softmax_rows(gen(seed, 130 + V), V, scale=s)))
            for V, s in ((2, 1.0), (4, 1.0), (7, 2.0))]


def _k3_unbiased(fn, case):
    logp, logref = case
    est = fn(logp[None, :].clone(), logref[None, :].clone())[0]   # each token y as one sample
    return compare((logp.exp() * est).sum(), KL.kl_categorical(logp, logref), 1e-10, 1e-8,
                   "E_{y ~ pi}[k3(y)] (must be KL(pi || ref))")


def _k3_nonneg(fn, case):
    v = torch.as_tensor(fn(*[x.clone() for x in case]), dtype=DTYPE)
    if bool((v < 0).any()):
        return f"negative estimates {v[v < 0].tolist()[:4]}: k3 is >= 0 since log r <= r - 1"
    return None


def _nonneg_cases(seed):
    return [(f"log-probs of shape {(B, T)}, scale {s}", (-randn(gen(seed, 140 + k), B, T, scale=s).abs(),
                                                        -randn(gen(seed, 150 + k), B, T, scale=s).abs()))
            for k, (B, T, s) in enumerate([(1, 1, 1.0), (2, 3, 1.0), (4, 5, 5.0)])]


register(
    kl_k3, 2, "medium",
    [for_cases("unbiased: E_pi[k3] = KL(pi || ref) exactly (enumeration)", _unbiased_cases, _k3_unbiased),
     for_cases("never negative", _nonneg_cases, _k3_nonneg),
     agrees("agrees with rlcourse.kl.kl_k3", lambda seed: [{"logp": a, "logp_ref": b} for _, (a, b) in
                                                           _nonneg_cases(seed)], KL.kl_k3, 1e-10, 1e-8)],
    {"direction_swapped": lambda logp, logp_ref: kl_k3(logp_ref, logp),
     "missing_minus_one": lambda logp, logp_ref: torch.exp(logp_ref - logp) - (logp_ref - logp),
     "k1_instead": lambda logp, logp_ref: logp - logp_ref},
)

# --------------------------------------------------------------------------- 08.kl_gradient_directions (prediction)

CHOICES = ("0", "KL(pi||ref)", "KL(ref||pi)")


def kl_gradient_directions():
    # E[grad k1] = E[grad log pi] = 0; E[grad k2] = grad KL(pi||ref); E[grad k3] = -sum ref grad log pi = grad KL(ref||pi)
    """Predict: the expected gradient of k1, k2, k3 is the gradient of which KL?"""
    return {"k1": "0", "k2": "KL(pi||ref)", "k3": "KL(ref||pi)"}


def _directions_truth():
    g = gen(0, 160)
    theta, logref = randn(g, 5), log_softmax_rows(g, 5)
    th = theta.clone().requires_grad_(True)
    logp = torch.log_softmax(th, -1)
    pi = logp.exp().detach()
    targets = {"0": torch.zeros(5, dtype=DTYPE),
               "KL(pi||ref)": torch.autograd.grad(KL.kl_categorical(logp, logref), th, retain_graph=True)[0],
               "KL(ref||pi)": torch.autograd.grad(KL.kl_categorical(logref, logp), th, retain_graph=True)[0]}
    out = {}
    for name, est in KL.KL_ESTIMATORS.items():
        # tokens are samples (no gradient through sampling): E = sum_y pi(y) grad k(y)
        (grad,) = torch.autograd.grad((pi * est(logp, logref)).sum(), th, retain_graph=True)
        out[name] = next(c for c in CHOICES if torch.allclose(grad, targets[c], atol=1e-10))
    return out


register(
    kl_gradient_directions, 2, "medium",
    [value_close("equals the exact expected gradients (autograd, enumeration over 5 tokens)", _directions_truth, 0,
                 "differentiate each estimator with the sampled token held fixed")],
    {"all_follow_kl_pi_ref": lambda: {"k1": "KL(pi||ref)", "k2": "KL(pi||ref)", "k3": "KL(pi||ref)"},
     "k2_k3_swapped": lambda: {"k1": "0", "k2": "KL(ref||pi)", "k3": "KL(pi||ref)"}},
    kind="prediction",
    signature=f"kl_gradient_directions() -> {{'k1': ..., 'k2': ..., 'k3': ...}}, each one of {list(CHOICES)}",
)

# --------------------------------------------------------------------------- 08.adaptive_beta


def adaptive_beta(beta, kl, target, n_steps, horizon):
    """The adaptive KL coefficient (proportional controller, Ziegler et al. 2019)

    adaptive_beta(beta, kl, target, n_steps, horizon) -> new beta
    """
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return beta * (1.0 + error * n_steps / horizon)


def _adaptive_cases(seed):
    g = gen(seed, 170)
    beta, target = 0.02 + 0.2 * float(torch.rand(1, generator=g)), 0.01 + float(torch.rand(1, generator=g))
    return [{"beta": beta, "kl": f * target, "target": target, "n_steps": n, "horizon": 1000}
            for f in (0.0, 0.5, 0.9, 1.0, 1.1, 1.19, 1.5, 100.0) for n in (1, 64)]


def _controller(beta, kl, target, n_steps, horizon):
    return AdaptiveKLController(beta, target, horizon).update(kl, n_steps)


register(
    adaptive_beta, 2, "easy",
    [agrees("agrees with rlcourse.losses.AdaptiveKLController.update (incl. KL = 0 and 100 x target)",
            _adaptive_cases, _controller, 1e-12, 1e-10)],
    {"error_not_clipped": lambda beta, kl, target, n_steps, horizon: beta * (1 + (kl / target - 1) * n_steps / horizon),
     "sign_reversed": lambda beta, kl, target, n_steps, horizon:
         beta * (1 - min(max(kl / target - 1.0, -0.2), 0.2) * n_steps / horizon),
     "n_steps_ignored": lambda beta, kl, target, n_steps, horizon: adaptive_beta(beta, kl, target, 1, horizon)},
)
