"""KL divergence: exact for categoricals, and the k1/k2/k3 single-sample estimators.

The sample estimators follow Schulman (2020), "Approximating KL Divergence"
(http://joschu.net/blog/kl-approx.html). Tokens are sampled from ``pi`` (log-probs
``logp``); the quantity estimated is ``KL(pi || ref)``, and with
``log r = log ref(y) - log pi(y)``:

* k1 = -log r                 unbiased, can be negative, high variance;
* k2 = (log r)^2 / 2          biased (exact to second order), always >= 0;
* k3 = (r - 1) - log r        unbiased and always >= 0 (the form used by GRPO and TRL).
"""

from __future__ import annotations

import torch

from rlcourse import _validate as V
from rlcourse.ratios import LOG_RATIO_CLAMP

__all__ = ["kl_categorical", "kl_k1", "kl_k2", "kl_k3", "KL_ESTIMATORS", "kl_estimate"]


def _check_normalised(name: str, logp: torch.Tensor) -> None:
    V.tensor(name, logp)
    logp = logp.detach()
    if logp.dim() == 0:
        raise ValueError(f"{name} must have a last (vocabulary) dimension, got a scalar")
    if bool((logp > 1e-6).any()):
        raise ValueError(f"{name} must be log-probabilities (<= 0); max entry {float(logp.max()):.3g}")
    s = torch.logsumexp(logp, dim=-1)
    worst = float(s.abs().max())
    tol = 1e-4 if logp.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-8
    if worst > tol:
        raise ValueError(
            f"{name} (shape {tuple(logp.shape)}) is not normalised along the last dim: "
            f"|logsumexp| reaches {worst:.3g}; pass log_softmax(...) output"
        )


def kl_categorical(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    r"""Exact KL divergence between two categorical distributions given as log-probs.

    .. math::

        \mathrm{KL}(p \,\|\, q) = \sum_{v} p_v \,(\log p_v - \log q_v)

    Args:
        logp: (..., V) normalised log-probs of ``p`` (checked: logsumexp over V is 0).
        logq: (..., V) normalised log-probs of ``q``, same shape.

    Returns:
        (...) the KL, one value per distribution.
    """
    _check_normalised("logp", logp)
    _check_normalised("logq", logq)
    V.same_shape(logp=logp, logq=logq)
    return (logp.exp() * (logp - logq)).sum(-1)


def _log_r(logp, logp_ref) -> torch.Tensor:
    V.tensor("logp", logp)
    V.tensor("logp_ref", logp_ref)
    V.same_shape(logp=logp, logp_ref=logp_ref)
    return logp_ref - logp


def kl_k1(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    r"""k1 estimator of KL(pi || ref) from tokens sampled from pi (Schulman 2020).

    .. math::

        k_1 = -\log r, \qquad r = \frac{\pi_{\text{ref}}(y)}{\pi(y)},\; y \sim \pi

    Unbiased; individual values can be negative.

    Args:
        logp: (B, T) log-probs of the sampled tokens under the sampling policy pi.
        logp_ref: (B, T) log-probs of the same tokens under the reference.

    Returns:
        (B, T) per-token estimates.
    """
    return -_log_r(logp, logp_ref)


def kl_k2(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    r"""k2 estimator of KL(pi || ref) from tokens sampled from pi (Schulman 2020).

    .. math::

        k_2 = \tfrac12 (\log r)^2, \qquad r = \frac{\pi_{\text{ref}}(y)}{\pi(y)},\; y \sim \pi

    Non-negative and low-variance, but biased (exact only to second order in log r).

    Args:
        logp, logp_ref: (B, T) log-probs under the sampling policy and the reference.

    Returns:
        (B, T) per-token estimates.
    """
    return 0.5 * _log_r(logp, logp_ref) ** 2


def kl_k3(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    r"""k3 estimator of KL(pi || ref) from tokens sampled from pi (Schulman 2020; GRPO's KL term).

    .. math::

        k_3 = (r - 1) - \log r, \qquad r = \frac{\pi_{\text{ref}}(y)}{\pi(y)},\; y \sim \pi

    Unbiased (E_pi[r] = 1) and >= 0 since log r <= r - 1 (computed as ``expm1(log r) - log r``,
    floored at 0 against rounding, so it is >= 0 in floating point too). Numerical safety: log r is
    clamped to ``[-20, 20]`` (``LOG_RATIO_CLAMP``) before ``exp``, so the value stays
    finite (at most e^20 - 21); entries where the clamp is active get zero gradient.

    Args:
        logp, logp_ref: (B, T) log-probs under the sampling policy and the reference.

    Returns:
        (B, T) per-token estimates, all >= 0.
    """
    log_r = torch.clamp(_log_r(logp, logp_ref), -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    # expm1 keeps (r - 1) accurate for tiny log r; clamp_min(0) removes the last rounding error
    return (torch.expm1(log_r) - log_r).clamp_min(0.0)


#: Estimator name -> function, for configuration by name.
KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_estimate(logp: torch.Tensor, logp_ref: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    r"""Per-token KL(pi || ref) estimate with the estimator named ``estimator`` (k1, k2 or k3).

    .. math::

        \hat{k}_t = k_{\text{estimator}}\big(\log\pi_{\text{ref}}(y_t) - \log\pi(y_t)\big)

    Args:
        logp, logp_ref: (B, T) log-probs under the sampling policy and the reference.
        estimator: one of ``KL_ESTIMATORS`` ("k1", "k2", "k3").

    Returns:
        (B, T) per-token estimates.
    """
    V.choice("estimator", estimator, list(KL_ESTIMATORS))
    return KL_ESTIMATORS[estimator](logp, logp_ref)
