"""Importance ratios between the current policy and the policy that sampled the data.

Three levels, from the finest to the coarsest, all built from the per-token log-ratio
``log pi_theta(y_t | s_t) - log pi_old(y_t | s_t)``:

* token level (PPO, GRPO): one ratio per token;
* sequence level (GSPO): the geometric mean of the token ratios of a response;
* trajectory level: the product of the token ratios, the exact likelihood ratio of the
  whole response (the one the importance-sampling identity needs).

Numerical safety: a log-ratio is clamped to ``[-LOG_RATIO_CLAMP, +LOG_RATIO_CLAMP]``
(20, so ``exp`` stays below 5e8 even in float32) before it is exponentiated. Entries
that hit the clamp get a zero gradient (``torch.clamp`` is flat there); that is what one
wants from a token whose probability has moved by a factor of e^20, and it never changes
a ratio in the ordinary range. Pass ``clamp=None`` to switch it off.
"""

from __future__ import annotations

import torch

from rlcourse import _validate as V
from rlcourse.logprobs import masked_mean, masked_sum

__all__ = ["LOG_RATIO_CLAMP", "log_ratio", "token_ratio", "sequence_ratio", "trajectory_ratio"]

#: Log-ratios are clamped to ``[-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP]`` before ``exp``.
LOG_RATIO_CLAMP = 20.0


def _check_pair(logp, logp_old) -> None:
    V.tensor("logp", logp)
    V.tensor("logp_old", logp_old)
    V.same_shape(logp=logp, logp_old=logp_old)


def _clamped_exp(x: torch.Tensor, clamp: float | None) -> torch.Tensor:
    if clamp is None:
        return torch.exp(x)
    V.positive("clamp", clamp)
    return torch.exp(torch.clamp(x, -clamp, clamp))


def log_ratio(logp: torch.Tensor, logp_old: torch.Tensor) -> torch.Tensor:
    r"""Per-token log importance ratio.

    .. math::

        \log \rho_t = \log \pi_\theta(y_t \mid s_t) - \log \pi_{\text{old}}(y_t \mid s_t)

    Not clamped (a log-ratio is always finite for finite inputs).

    Args:
        logp: (B, T) log-probs of the sampled tokens under the current policy.
        logp_old: (B, T) log-probs of the same tokens under the sampling policy.

    Returns:
        (B, T) log-ratios.
    """
    _check_pair(logp, logp_old)
    return logp - logp_old


def token_ratio(logp: torch.Tensor, logp_old: torch.Tensor, *, clamp: float | None = LOG_RATIO_CLAMP
                ) -> torch.Tensor:
    r"""Per-token importance ratio (PPO, Schulman et al. 2017; GRPO, Shao et al. 2024).

    .. math::

        \rho_t = \frac{\pi_\theta(y_t \mid s_t)}{\pi_{\text{old}}(y_t \mid s_t)}
               = \exp\big(\operatorname{clamp}(\log\pi_\theta - \log\pi_{\text{old}}, -20, 20)\big)

    The clamp (``LOG_RATIO_CLAMP``) keeps the ratio finite; clamped entries have zero
    gradient. ``clamp=None`` disables it.

    Args:
        logp, logp_old: (B, T) log-probs under the current and the sampling policy.

    Returns:
        (B, T) ratios.
    """
    return _clamped_exp(log_ratio(logp, logp_old), clamp)


def sequence_ratio(logp: torch.Tensor, logp_old: torch.Tensor, mask: torch.Tensor, *,
                   clamp: float | None = LOG_RATIO_CLAMP) -> torch.Tensor:
    r"""Sequence-level importance ratio of GSPO (Zheng et al. 2025): the geometric mean of token ratios.

    .. math::

        s_i = \Big(\frac{\pi_\theta(y_i \mid x)}{\pi_{\text{old}}(y_i \mid x)}\Big)^{1/|y_i|}
            = \exp\Big(\frac{1}{|y_i|}\sum_{t} m_{i,t}\,\log\rho_{i,t}\Big)

    The mean log-ratio is clamped to ``[-20, 20]`` before ``exp`` (``LOG_RATIO_CLAMP``;
    zero gradient where the clamp is active; ``clamp=None`` disables it). The gradient
    flows through the mean, as in GSPO and TRL's ``importance_sampling_level="sequence"``.

    Args:
        logp, logp_old: (B, T) log-probs under the current and the sampling policy.
        mask: (B, T) 0/1 response mask; every row needs at least one 1.

    Returns:
        (B,) one ratio per sequence.
    """
    lr = log_ratio(logp, logp_old)
    V.tensor("logp", logp, ndim=2)
    V.mask("mask", mask, like=logp, like_name="logp", nonempty=True)
    return _clamped_exp(masked_mean(lr, mask, dim=-1), clamp)


def trajectory_ratio(logp: torch.Tensor, logp_old: torch.Tensor, mask: torch.Tensor, *,
                     clamp: float | None = LOG_RATIO_CLAMP) -> torch.Tensor:
    r"""Trajectory importance ratio: the product of the token ratios of a response.

    .. math::

        \frac{P_\theta(\tau_i)}{P_{\text{old}}(\tau_i)} = \prod_t \rho_{i,t}^{\,m_{i,t}}
            = \exp\Big(\sum_t m_{i,t}\,\log\rho_{i,t}\Big)

    (the transition probabilities cancel: in a token-level MDP the next state is the
    prefix plus the token). The summed log-ratio is clamped to ``[-20, 20]`` before
    ``exp`` (``LOG_RATIO_CLAMP``; zero gradient where active) — for long responses
    pass ``clamp=None`` in float64 when the exact product is wanted.

    Args:
        logp, logp_old: (B, T) log-probs under the current and the sampling policy.
        mask: (B, T) 0/1 response mask.

    Returns:
        (B,) one ratio per sequence.
    """
    lr = log_ratio(logp, logp_old)
    V.tensor("logp", logp, ndim=2)
    V.mask("mask", mask, like=logp, like_name="logp")
    return _clamped_exp(masked_sum(lr, mask, dim=-1), clamp)
