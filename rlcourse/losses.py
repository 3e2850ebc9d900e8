"""Policy-gradient losses: the plain surrogate, PPO (clip and penalty), GRPO and its variants, the critic.

Every function returns a *loss* (minimised). Per-token tensors are (B, T) with a 0/1
response mask; the reduction over tokens is one of ``rlcourse.logprobs.AGGREGATIONS``.
GRPO, Dr. GRPO, DAPO and GSPO differ from PPO-clip by one line each: where the ratio
comes from (token or sequence), whether a KL term to a reference is added, and how the
per-token losses are aggregated. ``TRL_LOSS_TYPE_TO_AGGREGATION`` says which aggregation
reproduces each of TRL's ``GRPOConfig.loss_type`` values.

Numerical safety: ratios and the k3 KL clamp their log-ratio to ``[-20, 20]``
(``rlcourse.ratios.LOG_RATIO_CLAMP``) before ``exp``, so a log-ratio of +-80 gives a
finite loss and finite gradients; the gradient of a clamped entry is 0.
"""

from __future__ import annotations

import torch

from rlcourse import _validate as V
from rlcourse.kl import kl_estimate, kl_k3, KL_ESTIMATORS
from rlcourse.logprobs import AGGREGATIONS, aggregate, masked_mean
from rlcourse.ratios import sequence_ratio, token_ratio

__all__ = [
    "TRL_LOSS_TYPE_TO_AGGREGATION",
    "policy_gradient_loss",
    "clipped_surrogate",
    "ppo_clip_loss",
    "ppo_penalty_loss",
    "AdaptiveKLController",
    "FixedKLController",
    "grpo_loss",
    "value_loss",
    "entropy_bonus",
]

#: TRL ``GRPOConfig.loss_type`` -> the ``aggregation`` of :func:`grpo_loss` that reproduces it.
#: ("dapo" additionally needs ``total_tokens=num_items_in_batch``; "dr_grpo" needs
#: ``max_completion_length``.)
TRL_LOSS_TYPE_TO_AGGREGATION = {
    "grpo": "seq_mean_token_mean",
    "bnpo": "token_mean",
    "dapo": "token_mean",
    "dr_grpo": "constant",
    "luspo": "seq_mean_token_sum",
}


# ----------------------------------------------------------------------------- helpers

def _advantages_like(advantages, like: torch.Tensor, like_name: str) -> torch.Tensor:
    """Accept advantages of shape (B, T) = like.shape, or (B,) broadcast over tokens."""
    V.tensor("advantages", advantages)
    if tuple(advantages.shape) == tuple(like.shape):
        return advantages
    if advantages.dim() == 1 and like.dim() == 2 and advantages.shape[0] == like.shape[0]:
        return advantages.unsqueeze(-1).expand_as(like)
    raise ValueError(
        f"advantages has shape {tuple(advantages.shape)} but {like_name} has shape {tuple(like.shape)}; "
        f"advantages must be {tuple(like.shape)} or ({like.shape[0]},)"
    )


def _eps(eps_low, eps_high) -> tuple[float, float]:
    eps_low = V.in_range("eps_low", eps_low, 0.0, 1.0, closed=False)
    eps_high = eps_low if eps_high is None else V.in_range("eps_high", eps_high, 0.0, 1.0, closed=False)
    return eps_low, eps_high


def _aggregation(aggregation: str) -> str:
    return V.choice("aggregation", aggregation, AGGREGATIONS)


def _check_policy_inputs(logp, logp_old, mask) -> None:
    V.tensor("logp", logp, ndim=2)
    V.tensor("logp_old", logp_old, ndim=2)
    V.same_shape(logp=logp, logp_old=logp_old)
    V.mask("mask", mask, like=logp, like_name="logp", nonempty=True)


def _ratio(logp, logp_old, mask, level: str) -> torch.Tensor:
    """(B, T) ratio: per token, or the GSPO sequence ratio broadcast over the tokens of its row."""
    V.choice("importance_level", level, ("token", "sequence"))
    if level == "token":
        return token_ratio(logp, logp_old)
    return sequence_ratio(logp, logp_old, mask).unsqueeze(-1).expand_as(logp)


@torch.no_grad()
def _clip_stats(ratio, adv, mask, logp, logp_old, eps_low, eps_high) -> dict[str, float]:
    ratio, adv = ratio.detach(), adv.detach()
    low = ratio < 1 - eps_low
    high = ratio > 1 + eps_high
    return {
        # fraction of tokens whose ratio lies outside [1 - eps_low, 1 + eps_high] (OpenAI baselines, CleanRL)
        "clipfrac": float(masked_mean((low | high).to(ratio.dtype), mask)),
        # fractions where the clip is active, i.e. the token's gradient is zeroed (TRL's clip_ratio/low, /high)
        "clipfrac_low": float(masked_mean((low & (adv < 0)).to(ratio.dtype), mask)),
        "clipfrac_high": float(masked_mean((high & (adv > 0)).to(ratio.dtype), mask)),
        # k3 estimate of KL(old || new) with tokens sampled from old
        "approx_kl": float(masked_mean(kl_k3(logp_old.detach(), logp.detach()), mask)),
        "ratio_mean": float(masked_mean(ratio, mask)),
    }


# ----------------------------------------------------------------------------- losses

def policy_gradient_loss(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                         aggregation: str = "token_mean", **agg_kwargs) -> torch.Tensor:
    r"""Vanilla policy-gradient surrogate loss (REINFORCE, Williams 1992).

    .. math::

        L(\theta) = -\operatorname{agg}_{i,t}\big(A_{i,t}\,\log\pi_\theta(y_{i,t}\mid s_{i,t})\big),
        \qquad \nabla_\theta L = -\operatorname{agg}\big(A\,\nabla_\theta\log\pi_\theta\big)

    Its value means nothing; its gradient is the policy-gradient estimate.

    Args:
        logp: (B, T) log-probs of the sampled tokens (carrying the gradient).
        advantages: (B, T), or (B,) broadcast over tokens (treated as constants).
        mask: (B, T) 0/1 response mask, not all zero.
        aggregation: one of ``AGGREGATIONS``; ``agg_kwargs`` go to :func:`rlcourse.logprobs.aggregate`.

    Returns:
        scalar loss.
    """
    V.tensor("logp", logp, ndim=2)
    V.mask("mask", mask, like=logp, like_name="logp", nonempty=True)
    _aggregation(aggregation)
    adv = _advantages_like(advantages, logp, "logp")
    return aggregate(-adv * logp, mask, aggregation, **agg_kwargs)


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float = 0.2,
                      eps_high: float | None = None, dual_clip: float | None = None) -> torch.Tensor:
    r"""Per-token PPO clipped surrogate loss (Schulman et al. 2017), with asymmetric eps and a dual clip.

    Asymmetric eps ("clip-higher"): DAPO, Yu et al. 2025. Dual clip: Ye et al. 2020.

    .. math::

        \ell_t = -\min\big(\rho_t A_t,\;
            \operatorname{clip}(\rho_t, 1-\epsilon_{\text{low}}, 1+\epsilon_{\text{high}})\,A_t\big)

    With ``dual_clip`` :math:`c > 1`, for :math:`A_t < 0` the loss is also bounded:
    :math:`\ell_t \leftarrow \min(\ell_t, -c\,A_t)` (objective :math:`\max(\cdot, c A_t)`).
    The gradient w.r.t. :math:`\log\pi` is :math:`-\rho_t A_t` where the unclipped term
    is the minimum, and 0 where the clip (or the dual clip) is active.

    Args:
        ratio: (B, T) importance ratios (>= 0).
        advantages: (B, T), or (B,) broadcast over tokens.
        eps_low, eps_high: clip range, each in (0, 1); ``eps_high=None`` means ``eps_low``.
        dual_clip: ``None`` or a constant > 1.

    Returns:
        (B, T) per-token losses.
    """
    V.tensor("ratio", ratio)
    if bool((ratio < 0).any()):
        raise ValueError(f"ratio must be >= 0, min entry {float(ratio.min()):.3g} (shape {tuple(ratio.shape)})")
    adv = _advantages_like(advantages, ratio, "ratio")
    eps_low, eps_high = _eps(eps_low, eps_high)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    loss = -torch.min(ratio * adv, clipped * adv)
    if dual_clip is not None:
        if not isinstance(dual_clip, (int, float)) or not dual_clip > 1:
            raise ValueError(f"dual_clip must be a number > 1 (or None), got {dual_clip!r}")
        loss = torch.where(adv < 0, torch.minimum(loss, -dual_clip * adv), loss)
    return loss


def ppo_clip_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                  eps_low: float = 0.2, eps_high: float | None = None, dual_clip: float | None = None,
                  aggregation: str = "token_mean", ratio_level: str = "token",
                  **agg_kwargs) -> tuple[torch.Tensor, dict[str, float]]:
    r"""PPO-clip loss (Schulman et al. 2017), aggregated over the masked tokens.

    .. math::

        L^{\text{CLIP}}(\theta) = \operatorname{agg}_{i,t}\Big(-\min\big(\rho_{i,t} A_{i,t},\;
            \operatorname{clip}(\rho_{i,t}, 1-\epsilon_{\text{low}}, 1+\epsilon_{\text{high}}) A_{i,t}\big)\Big)

    ``ratio_level="token"``: :math:`\rho_{i,t} = \pi_\theta/\pi_{\text{old}}` per token;
    ``"sequence"``: the GSPO ratio :math:`s_i` (Zheng et al. 2025) broadcast over the row,
    its gradient flowing through the mean log-ratio. Log-ratios are clamped to [-20, 20]
    before ``exp`` (zero gradient where clamped).

    Args:
        logp, logp_old: (B, T) log-probs under the current and the sampling policy.
        advantages: (B, T) or (B,).
        mask: (B, T) 0/1, not all zero.
        eps_low, eps_high, dual_clip: see :func:`clipped_surrogate`.
        aggregation: one of ``AGGREGATIONS``; ``agg_kwargs`` go to ``aggregate``.
        ratio_level: "token" or "sequence".

    Returns:
        (loss, stats) with float stats "clipfrac", "clipfrac_low", "clipfrac_high",
        "approx_kl" (k3 of KL(old || new)), "ratio_mean".
    """
    _check_policy_inputs(logp, logp_old, mask)
    _aggregation(aggregation)
    V.choice("ratio_level", ratio_level, ("token", "sequence"))
    eps_low, eps_high = _eps(eps_low, eps_high)
    adv = _advantages_like(advantages, logp, "logp")
    ratio = _ratio(logp, logp_old, mask, ratio_level)
    per_token = clipped_surrogate(ratio, adv, eps_low, eps_high, dual_clip)
    loss = aggregate(per_token, mask, aggregation, **agg_kwargs)
    return loss, _clip_stats(ratio, adv, mask, logp, logp_old, eps_low, eps_high)


def ppo_penalty_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                     beta: float, aggregation: str = "token_mean",
                     **agg_kwargs) -> tuple[torch.Tensor, dict[str, float]]:
    r"""PPO with an adaptive KL penalty instead of the clip (Schulman et al. 2017, Sec. 4).

    .. math::

        L^{\text{KLPEN}}(\theta) = \operatorname{agg}_{i,t}\Big(-\big(\rho_{i,t} A_{i,t}
            - \beta\,\hat{k}_{i,t}\big)\Big),\qquad
        \hat{k} = k_3 \text{ estimate of } \mathrm{KL}(\pi_{\text{old}} \,\|\, \pi_\theta) = (\rho - 1) - \log\rho

    (samples come from :math:`\pi_{\text{old}}`, so :math:`r = \pi_\theta/\pi_{\text{old}} = \rho`).
    Log-ratios are clamped to [-20, 20] before ``exp`` (zero gradient where clamped).

    Args:
        logp, logp_old: (B, T) log-probs under the current and the sampling policy.
        advantages: (B, T) or (B,).
        mask: (B, T) 0/1, not all zero.
        beta: penalty coefficient, >= 0 (see :class:`AdaptiveKLController`).
        aggregation: one of ``AGGREGATIONS``; ``agg_kwargs`` go to ``aggregate``.

    Returns:
        (loss, stats) with float stats "kl" (masked mean of the penalty's KL estimate),
        "approx_kl" (the same), "ratio_mean".
    """
    _check_policy_inputs(logp, logp_old, mask)
    _aggregation(aggregation)
    beta = V.positive("beta", beta, allow_zero=True)
    adv = _advantages_like(advantages, logp, "logp")
    ratio = token_ratio(logp, logp_old)
    kl = kl_k3(logp_old, logp)
    per_token = -(ratio * adv - beta * kl)
    loss = aggregate(per_token, mask, aggregation, **agg_kwargs)
    with torch.no_grad():
        kl_mean = float(masked_mean(kl.detach(), mask))
        stats = {"kl": kl_mean, "approx_kl": kl_mean, "ratio_mean": float(masked_mean(ratio.detach(), mask))}
    return loss, stats


class AdaptiveKLController:
    r"""Adaptive KL coefficient (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences").

    .. math::

        e_t = \operatorname{clip}\Big(\frac{\mathrm{KL}_t}{\mathrm{KL}_{\text{target}}} - 1, -0.2, 0.2\Big),
        \qquad \beta_{t+1} = \beta_t\,\Big(1 + e_t\,\frac{n_{\text{steps}}}{H}\Big)

    beta grows when the measured KL is above the target and shrinks when below, by a
    relative step of at most ``0.2 * n_steps / horizon``. (PPO's own rule, Schulman et al.
    2017, doubles/halves beta; this is the smooth proportional version used in RLHF.)

    Args:
        init_beta: starting coefficient, > 0.
        target: target KL per step, > 0.
        horizon: H, > 0.
    """

    def __init__(self, init_beta: float, target: float, horizon: int = 10000):
        self.beta = V.positive("init_beta", init_beta)
        self.target = V.positive("target", target)
        self.horizon = V.positive("horizon", horizon)

    @property
    def value(self) -> float:
        """The current coefficient (alias of ``beta``, as in TRL's old controller)."""
        return self.beta

    def update(self, kl, n_steps: int) -> float:
        """Move beta toward the KL target given the measured ``kl`` over ``n_steps`` steps; return the new beta."""
        if isinstance(kl, torch.Tensor):
            V.tensor("kl", kl)
            if kl.numel() != 1:
                raise ValueError(f"kl must be a scalar, got shape {tuple(kl.shape)}")
            kl = float(kl)
        if not isinstance(kl, (int, float)) or kl != kl or kl in (float("inf"), float("-inf")):
            raise ValueError(f"kl must be a finite number, got {kl!r}")
        if not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + error * n_steps / self.horizon
        return self.beta


class FixedKLController:
    r"""Constant KL coefficient with the interface of :class:`AdaptiveKLController`.

    .. math::

        \beta_{t+1} = \beta_t
    """

    def __init__(self, beta: float):
        self.beta = V.positive("beta", beta, allow_zero=True)

    @property
    def value(self) -> float:
        return self.beta

    def update(self, kl, n_steps: int) -> float:
        """Return beta unchanged."""
        return self.beta


def grpo_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
              eps_low: float = 0.2, eps_high: float | None = None, importance_level: str = "token",
              aggregation: str = "seq_mean_token_mean", beta: float = 0.0, logp_ref: torch.Tensor | None = None,
              kl_estimator: str = "k3", max_completion_length: int | None = None, delta: float | None = None,
              kl_importance_correction: bool = False,
              **agg_kwargs) -> tuple[torch.Tensor, dict[str, float]]:
    r"""GRPO loss (Shao et al. 2024) and its variants Dr. GRPO, DAPO, GSPO — TRL 1.16 ``GRPOTrainer`` semantics.

    .. math::

        \ell_{i,t} = -\min\big(w_{i,t} \hat{A}_i,\; \operatorname{clip}(w_{i,t}, 1-\epsilon_{\text{low}},
            1+\epsilon_{\text{high}})\,\hat{A}_i\big) + \beta\,\hat{k}_{i,t},\qquad
        L = \operatorname{agg}_{i,t}(\ell_{i,t})

    with :math:`w_{i,t} = \pi_\theta(y_{i,t})/\pi_{\text{old}}(y_{i,t})` (``importance_level="token"``)
    or the GSPO sequence ratio :math:`s_i` (``"sequence"``, Zheng et al. 2025), and
    :math:`\hat{k}_{i,t} = e^{\log\pi_{\text{ref}}-\log\pi_\theta} - (\log\pi_{\text{ref}}-\log\pi_\theta) - 1`
    (k3). The variants are aggregations (see ``TRL_LOSS_TYPE_TO_AGGREGATION``):

    * GRPO: ``seq_mean_token_mean``, :math:`\frac1B\sum_i \frac{1}{|y_i|}\sum_t \ell_{i,t}`;
    * DAPO (Yu et al. 2025) / TRL "bnpo": ``token_mean``, :math:`\sum_{i,t}\ell_{i,t} / \sum_i |y_i|`
      (TRL "dapo": pass ``total_tokens=num_items_in_batch``), plus the clip-higher ``eps_high``;
    * Dr. GRPO (Liu et al. 2025): ``constant``, :math:`\sum_{i,t}\ell_{i,t} / (B\,L_{\max})`,
      ``max_completion_length`` = :math:`L_{\max}`, with advantages not divided by the std.

    Options that mirror TRL: ``delta`` is the two-sided clip of INTELLECT-2 (TRL
    ``GRPOConfig.delta``): for :math:`A<0` the loss is bounded by :math:`\delta |A|`; it
    equals ``dual_clip=delta`` of :func:`clipped_surrogate` and must be >= 1 + eps_high.
    ``kl_importance_correction=True`` multiplies the KL term by :math:`w_{i,t}` (DeepSeek-V3.2;
    TRL ``use_bias_correction_kl``, whose default in TRL 1.16 is True). Log-ratios are
    clamped to [-20, 20] before ``exp`` (zero gradient where clamped); TRL does not clamp,
    so the two agree whenever every |log-ratio| <= 20.

    Args:
        logp, logp_old: (B, T) log-probs under the current and the sampling policy.
        advantages: (B,) group advantages (or (B, T)).
        mask: (B, T) 0/1 completion mask, not all zero.
        eps_low, eps_high: clip range in (0, 1); ``eps_high=None`` means ``eps_low``.
        importance_level: "token" (GRPO) or "sequence" (GSPO).
        aggregation: one of ``AGGREGATIONS``.
        beta: KL coefficient, >= 0; if > 0, ``logp_ref`` (B, T) is required.
        kl_estimator: "k1", "k2" or "k3" (GRPO and TRL: "k3").
        max_completion_length: L_max for ``aggregation="constant"``.
        delta: None or the two-sided clip bound (>= 1 + eps_high).
        kl_importance_correction: multiply the KL term by the importance ratio.
        **agg_kwargs: ``total_tokens`` / ``total_sequences`` for micro-batches.

    Returns:
        (loss, stats) with float stats "clipfrac", "clipfrac_low", "clipfrac_high",
        "approx_kl", "ratio_mean", and "kl" (masked mean of the KL term) when beta > 0.
    """
    _check_policy_inputs(logp, logp_old, mask)
    _aggregation(aggregation)
    V.choice("importance_level", importance_level, ("token", "sequence"))
    V.choice("kl_estimator", kl_estimator, list(KL_ESTIMATORS))
    eps_low, eps_high = _eps(eps_low, eps_high)
    beta = V.positive("beta", beta, allow_zero=True)
    if delta is not None:
        if not isinstance(delta, (int, float)) or not delta >= 1 + eps_high:
            raise ValueError(f"delta must be a number >= 1 + eps_high = {1 + eps_high}, got {delta!r}")
    if beta > 0:
        if logp_ref is None:
            raise ValueError("logp_ref is required when beta > 0")
        V.tensor("logp_ref", logp_ref)
        V.same_shape(logp=logp, logp_ref=logp_ref)
    if aggregation == "constant":
        if max_completion_length is not None:
            if "constant" in agg_kwargs:
                raise ValueError("give max_completion_length or constant, not both")
            if not isinstance(max_completion_length, int) or max_completion_length < 1:
                raise ValueError(f"max_completion_length must be an integer >= 1, got {max_completion_length!r}")
            agg_kwargs["constant"] = max_completion_length
        elif "constant" not in agg_kwargs:
            raise ValueError("max_completion_length is required for aggregation='constant' (Dr. GRPO)")

    adv = _advantages_like(advantages, logp, "logp")
    ratio = _ratio(logp, logp_old, mask, importance_level)
    per_token = clipped_surrogate(ratio, adv, eps_low, eps_high, dual_clip=delta)
    if beta > 0:
        kl = kl_estimate(logp, logp_ref, kl_estimator)
        if kl_importance_correction:
            kl = kl * ratio
        per_token = per_token + beta * kl
    loss = aggregate(per_token, mask, aggregation, **agg_kwargs)
    stats = _clip_stats(ratio, adv, mask, logp, logp_old, eps_low, eps_high)
    if beta > 0:
        stats["kl"] = float(masked_mean(kl.detach(), mask))
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range: float | None = None, aggregation: str = "token_mean", **agg_kwargs) -> torch.Tensor:
    r"""Critic loss, optionally clipped around the old values (PPO as implemented in OpenAI baselines).

    .. math::

        \ell_t = \tfrac12\max\Big((V_t - R_t)^2,\;
            \big(\operatorname{clip}(V_t, V^{\text{old}}_t - c, V^{\text{old}}_t + c) - R_t\big)^2\Big)

    ``clip_range=None``: :math:`\ell_t = \tfrac12 (V_t - R_t)^2`.

    Args:
        values: (B, T) current value predictions (carrying the gradient).
        old_values: (B, T) predictions at rollout time.
        returns: (B, T) targets (e.g. GAE returns).
        mask: (B, T) 0/1, not all zero.
        clip_range: c > 0, or None.
        aggregation: one of ``AGGREGATIONS``; ``agg_kwargs`` go to ``aggregate``.

    Returns:
        scalar loss.
    """
    V.tensor("values", values, ndim=2)
    V.tensor("old_values", old_values)
    V.tensor("returns", returns)
    V.same_shape(values=values, old_values=old_values, returns=returns)
    V.mask("mask", mask, like=values, like_name="values", nonempty=True)
    _aggregation(aggregation)
    unclipped = (values - returns) ** 2
    if clip_range is None:
        per_token = 0.5 * unclipped
    else:
        c = V.positive("clip_range", clip_range)
        v_clipped = old_values + torch.clamp(values - old_values, -c, c)
        per_token = 0.5 * torch.max(unclipped, (v_clipped - returns) ** 2)
    return aggregate(per_token, mask, aggregation, **agg_kwargs)


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor, coef: float) -> torch.Tensor:
    r"""Entropy bonus as a loss term (Mnih et al. 2016; PPO, Schulman et al. 2017).

    .. math::

        L_H = -c\,\frac{\sum_{i,t} m_{i,t} H_{i,t}}{\sum_{i,t} m_{i,t}}

    Adding it to a loss rewards higher entropy.

    Args:
        entropy: (B, T) per-token entropies.
        mask: (B, T) 0/1, not all zero.
        coef: c >= 0.

    Returns:
        scalar loss term.
    """
    V.tensor("entropy", entropy, ndim=2)
    V.mask("mask", mask, like=entropy, like_name="entropy", nonempty=True)
    coef = V.positive("coef", coef, allow_zero=True)
    return -coef * masked_mean(entropy, mask)
