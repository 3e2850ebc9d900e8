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

__all__ = ["kl_categorical", "kl_k1", "kl_k2", "kl_k3", "KL_ESTIMATORS", "kl_estimate"]


def _check_normalised(name: str, logp: torch.Tensor) -> None:
    """Log-probs of full distributions along the last dim: <= 0 and logsumexp = 0, with a
    tolerance by dtype (a bf16 log-softmax is accepted; see ``_validate.normalisation_tolerance``)."""
    V.logprobs(name, logp)
    logp = logp.detach()
    if logp.dim() == 0:
        raise ValueError(f"{name} must have a last (vocabulary) dimension, got a scalar")
    if logp.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(logp.shape)})")
    s = torch.logsumexp(logp.double(), dim=-1)
    worst = float(s.abs().max())
    tol = V.normalisation_tolerance(logp.dtype, logp.shape[-1])
    if worst > tol:
        raise ValueError(
            f"{name} (shape {tuple(logp.shape)}, {logp.dtype}) is not normalised along the last dim: "
            f"|logsumexp| reaches {worst:.3g} (tolerance {tol:.2g} for this dtype); pass log_softmax(...) output"
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
    V.logprobs("logp", logp)
    V.logprobs("logp_ref", logp_ref)
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


def kl_k3(logp: torch.Tensor, logp_ref: torch.Tensor, *, clamp: float | None = None) -> torch.Tensor:
    r"""k3 estimator of KL(pi || ref) from tokens sampled from pi (Schulman 2020; GRPO's KL term).

    .. math::

        k_3 = (r - 1) - \log r, \qquad r = \frac{\pi_{\text{ref}}(y)}{\pi(y)},\; y \sim \pi

    Unbiased (E_pi[r] = 1) and >= 0 since log r <= r - 1 (computed as ``expm1(log r) - log r``,
    which keeps tiny values accurate and is >= 0 in floating point too). No value is clamped:
    ``clamp=c`` (opt-in) clips log r to ``[-c, c]`` first (zero gradient where active).

    Args:
        logp, logp_ref: (B, T) log-probs under the sampling policy and the reference.
        clamp: None (default) or c > 0.

    Returns:
        (B, T) per-token estimates, all >= 0.
    """
    log_r = _log_r(logp, logp_ref)
    if clamp is not None:
        c = V.positive("clamp", clamp, allow_inf=False)
        log_r = torch.clamp(log_r, -c, c)
    return _k3(log_r)


def _k3(log_r: torch.Tensor) -> torch.Tensor:
    """Unchecked k3 of a log-ratio log r = log ref - log pi."""
    return torch.expm1(log_r) - log_r


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
