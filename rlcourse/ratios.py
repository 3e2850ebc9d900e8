"""Importance ratios between the current policy and the policy that sampled the data.

Three levels, from the finest to the coarsest, all built from the per-token log-ratio
``log pi_theta(y_t | s_t) - log pi_old(y_t | s_t)``:

* token level (PPO, GRPO): one ratio per token;
* sequence level (GSPO): the geometric mean of the token ratios of a response;
* trajectory level: the product of the token ratios, the exact likelihood ratio of the
  whole response (the one the importance-sampling identity needs).

No value is changed silently: by default the log-ratio is exponentiated as it is (so
exp(30) is 1.07e13, and a log-ratio above ~88 overflows float32 to inf, which the trainers'
non-finite-loss check then reports). A stabiliser is opt-in: ``clamp=c`` clips the log-ratio to
``[-c, c]`` before ``exp`` (zero gradient where active), and :func:`clamped_fraction` says how
many entries it touched, which the losses report in their stats.
"""

from __future__ import annotations

import torch

from rlcourse import _validate as V
from rlcourse.logprobs import _masked_sum

__all__ = ["LOG_RATIO_CLAMP", "log_ratio", "token_ratio", "sequence_ratio", "trajectory_ratio",
           "clamped_fraction"]

#: A conventional value for the opt-in ``clamp`` (e^20 ~ 4.85e8 stays finite in float32).
#: Not applied unless passed: the default of every function here is ``clamp=None``.
LOG_RATIO_CLAMP = 20.0


def _check_pair(logp, logp_old, ndim=None) -> None:
    V.logprobs("logp", logp, ndim=ndim)
    V.logprobs("logp_old", logp_old, ndim=ndim)
    V.same_shape(logp=logp, logp_old=logp_old)


def _check_clamp(clamp) -> float | None:
    return None if clamp is None else V.positive("clamp", clamp, allow_inf=False)


def _exp(x: torch.Tensor, clamp: float | None) -> torch.Tensor:
    """Unchecked exp, with the opt-in clamp of the exponent."""
    return torch.exp(x) if clamp is None else torch.exp(torch.clamp(x, -clamp, clamp))


def clamped_fraction(log_ratios: torch.Tensor, mask: torch.Tensor | None, clamp: float | None) -> float:
    r"""Fraction of (masked) log-ratios that a clamp at ``[-clamp, clamp]`` changes (0.0 when ``clamp`` is None).

    .. math::

        f = \frac{\sum_t m_t\,\mathbb{1}[|\log\rho_t| > c]}{\sum_t m_t}
    """
    V.tensor("log_ratios", log_ratios)
    if mask is not None:
        V.mask("mask", mask, like=log_ratios, like_name="log_ratios", nonempty=True)
    return _clamped_fraction(log_ratios, mask, _check_clamp(clamp))


def _clamped_fraction(lr, mask, clamp) -> float:
    if clamp is None:
        return 0.0
    hit = (lr.detach().abs() > clamp).to(lr.dtype)
    if mask is None:
        return float(hit.mean())
    m = mask.to(lr.dtype)
    return float((hit * m).sum() / m.sum())


def log_ratio(logp: torch.Tensor, logp_old: torch.Tensor) -> torch.Tensor:
    r"""Per-token log importance ratio.

    .. math::

        \log \rho_t = \log \pi_\theta(y_t \mid s_t) - \log \pi_{\text{old}}(y_t \mid s_t)

    Args:
        logp: (B, T) log-probs of the sampled tokens under the current policy (<= 0, floating).
        logp_old: (B, T) log-probs of the same tokens under the sampling policy.

    Returns:
        (B, T) log-ratios.
    """
    _check_pair(logp, logp_old)
    return logp - logp_old


def token_ratio(logp: torch.Tensor, logp_old: torch.Tensor, *, clamp: float | None = None) -> torch.Tensor:
    r"""Per-token importance ratio (PPO, Schulman et al. 2017; GRPO, Shao et al. 2024).

    .. math::

        \rho_t = \frac{\pi_\theta(y_t \mid s_t)}{\pi_{\text{old}}(y_t \mid s_t)}
               = \exp\big(\log\pi_\theta - \log\pi_{\text{old}}\big)

    ``clamp=c`` (opt-in) clips the log-ratio to ``[-c, c]`` first; clipped entries have zero
    gradient. The default changes no value.

    Args:
        logp, logp_old: (B, T) log-probs under the current and the sampling policy.
        clamp: None (default) or c > 0.

    Returns:
        (B, T) ratios.
    """
    _check_pair(logp, logp_old)
    return _exp(logp - logp_old, _check_clamp(clamp))


def sequence_ratio(logp: torch.Tensor, logp_old: torch.Tensor, mask: torch.Tensor, *,
                   clamp: float | None = None) -> torch.Tensor:
    r"""Sequence-level importance ratio of GSPO (Zheng et al. 2025): the geometric mean of token ratios.

    .. math::

        s_i = \Big(\frac{\pi_\theta(y_i \mid x)}{\pi_{\text{old}}(y_i \mid x)}\Big)^{1/|y_i|}
            = \exp\Big(\frac{1}{|y_i|}\sum_{t} m_{i,t}\,\log\rho_{i,t}\Big)

    The gradient flows through the mean, as in GSPO and TRL's ``importance_sampling_level="sequence"``.
    ``clamp=c`` (opt-in) clips the mean log-ratio to ``[-c, c]`` first.

    Args:
        logp, logp_old: (B, T) log-probs under the current and the sampling policy.
        mask: (B, T) 0/1 response mask; every row needs at least one 1.
        clamp: None (default) or c > 0.

    Returns:
        (B,) one ratio per sequence.
    """
    _check_pair(logp, logp_old, ndim=2)
    V.mask("mask", mask, like=logp, like_name="logp", nonempty=True)
    m = mask.to(logp.dtype)
    lengths = m.sum(-1)
    if bool((lengths == 0).any()):
        raise ValueError(f"mask has {int((lengths == 0).sum())} all-zero row(s) (shape {tuple(mask.shape)}): "
                         f"a sequence ratio needs at least one counted token per row")
    return _sequence_ratio(logp, logp_old, m, _check_clamp(clamp))


def _sequence_log_ratio(logp, logp_old, m):
    return ((logp - logp_old) * m).sum(-1) / m.sum(-1).clamp(min=1.0)


def _sequence_ratio(logp, logp_old, m, clamp=None):
    return _exp(_sequence_log_ratio(logp, logp_old, m), clamp)


def trajectory_ratio(logp: torch.Tensor, logp_old: torch.Tensor, mask: torch.Tensor, *,
                     clamp: float | None = None) -> torch.Tensor:
    r"""Trajectory importance ratio: the product of the token ratios of a response.

    .. math::

        \frac{P_\theta(\tau_i)}{P_{\text{old}}(\tau_i)} = \prod_t \rho_{i,t}^{\,m_{i,t}}
            = \exp\Big(\sum_t m_{i,t}\,\log\rho_{i,t}\Big)

    (the transition probabilities cancel: in a token-level MDP the next state is the
    prefix plus the token). ``clamp=c`` (opt-in) clips the summed log-ratio to ``[-c, c]``.

    Args:
        logp, logp_old: (B, T) log-probs under the current and the sampling policy.
        mask: (B, T) 0/1 response mask.
        clamp: None (default) or c > 0.

    Returns:
        (B,) one ratio per sequence.
    """
    _check_pair(logp, logp_old, ndim=2)
    V.mask("mask", mask, like=logp, like_name="logp")
    return _exp(_masked_sum(logp - logp_old, mask, -1), _check_clamp(clamp))
