r"""Policy-gradient losses: per-token ``(B, T)`` losses, and the scalar losses as their aggregation.

Every policy loss exists twice, with no equation written twice: a per-token function
(``*_per_token``) returning the unreduced ``(B, T)`` matrix :math:`\ell_{i,t}`, and the scalar
loss, which is ``agg_loss(per_token(...), mask, mode)`` (:func:`rlcourse.logprobs.agg_loss`,
verl's mode names; TRL's ``loss_type`` map onto them by
:data:`rlcourse.logprobs.TRL_LOSS_TYPE_TO_AGG_MODE`). GRPO, Dr. GRPO, DAPO and GSPO differ
from PPO-clip by one argument each: the ratio level, the KL term, the aggregation.

Conventions: a *loss* is minimised. Advantages may be ``(B,)``, ``(B, 1)`` or ``(B, T)`` and
are constants: they are detached here, so no gradient reaches whatever computed them (a
critic, a reward model). No value is clamped unless asked: ``log_ratio_clamp=c`` clips the
log-ratios at ``[-c, c]`` before ``exp`` and the fraction it touched is reported in the stats
as ``log_ratio_clamped``.

Validation happens once per public call; the arithmetic runs in unchecked ``_`` helpers.
"""

from __future__ import annotations

import torch

from rlcourse import _validate as V
from rlcourse.kl import KL_ESTIMATORS, _k3
from rlcourse.logprobs import (TRL_LOSS_TYPE_TO_AGG_MODE, _agg, _check_agg_kwargs,
                               _masked_mean, canonical_mode, token_logprobs)
from rlcourse.ratios import _clamped_fraction, _exp, _sequence_log_ratio

__all__ = [
    "TRL_LOSS_TYPE_TO_AGGREGATION",
    "TRL_LOSS_TYPE_TO_AGG_MODE",
    "pg_loss_per_token",
    "importance_weighted_loss_per_token",
    "clipped_surrogate",
    "ppo_clip_loss_per_token",
    "grpo_loss_per_token",
    "value_loss_per_token",
    "sft_nll_per_token",
    "policy_gradient_loss",
    "importance_weighted_loss",
    "ppo_clip_loss",
    "ppo_penalty_loss",
    "AdaptiveKLController",
    "FixedKLController",
    "grpo_loss",
    "value_loss",
    "sft_loss",
    "entropy_bonus",
]

#: TRL ``GRPOConfig.loss_type`` -> the (older) ``aggregation`` name of :func:`grpo_loss` that reproduces it.
#: ("dapo" additionally needs ``total_tokens=num_items_in_batch``; "dr_grpo" needs
#: ``max_completion_length``.) :data:`TRL_LOSS_TYPE_TO_AGG_MODE` gives verl's names.
TRL_LOSS_TYPE_TO_AGGREGATION = {
    "grpo": "seq_mean_token_mean",
    "bnpo": "token_mean",
    "dapo": "token_mean",
    "dr_grpo": "constant",
    "luspo": "seq_mean_token_sum",
}

#: Default clip range of PPO (Schulman et al. 2017) and of TRL's ``GRPOConfig.epsilon``.
DEFAULT_EPS = 0.2


# ----------------------------------------------------------------------------- checks (run once per call)

def _check_advantages(advantages, like: torch.Tensor, like_name: str) -> torch.Tensor:
    """Validate advantages of shape (B,), (B, 1) or like.shape; return them detached, as (B, 1) or (B, T)."""
    V.tensor("advantages", advantages)
    return _advantages(advantages, like, like_name)


def _advantages(advantages, like, like_name) -> torch.Tensor:
    B = like.shape[0]
    if tuple(advantages.shape) == tuple(like.shape):
        return advantages.detach()
    if advantages.shape in ((B,), (B, 1)) and like.dim() == 2:
        return advantages.detach().reshape(B, 1)
    raise ValueError(
        f"advantages has shape {tuple(advantages.shape)} but {like_name} has shape {tuple(like.shape)}; "
        f"advantages must be ({B},), ({B}, 1) or {tuple(like.shape)}"
    )


def _check_eps(eps_low, eps_high) -> tuple[float, float]:
    """Clip bounds (lower, upper) on the ratio; -inf / +inf where that side is not clipped.

    eps_low: None or >= 1 -> no lower clip (a ratio is >= 0 > 1 - eps_low). eps_high: None ->
    eps_low's value (TRL's convention), float('inf') -> no upper clip, any other value > 0 -> 1 + eps_high.
    """
    if eps_low is None or (V._is_number(eps_low) and eps_low >= 1):
        low = float("-inf")
    else:
        low = 1.0 - V.in_range("eps_low", eps_low, 0.0, 1.0, closed=False)
    if eps_high is None:
        high = float("inf") if low == float("-inf") else 2.0 - low
    else:
        high = 1.0 + V.positive("eps_high", eps_high)
        if eps_high == 0:
            raise ValueError("eps_high must be > 0, got 0")
    return low, high


def _check_dual_clip(dual_clip, name="dual_clip") -> float | None:
    if dual_clip is None:
        return None
    if not V._is_number(dual_clip) or not dual_clip > 1 or dual_clip != dual_clip:
        raise ValueError(f"{name} must be a number > 1 (or None), got {dual_clip!r}")
    return float(dual_clip)


def _check_clamp(clamp) -> float | None:
    return None if clamp is None else V.positive("log_ratio_clamp", clamp, allow_inf=False)


def _check_policy_inputs(logp, logp_old, mask=None, *, nonempty=True, logp_ref=None, advantages=None) -> None:
    """Structure first (types, ranks, shapes), then every tensor's data in one host sync (``V.together``).

    ``logp_ref`` (log-probs of the shape of ``logp``) and ``advantages`` (finite; their shape is checked
    by :func:`_advantages`) join the same sync when given."""
    V._logprob_structure("logp", logp, 2)
    V._logprob_structure("logp_old", logp_old, 2)
    V.same_shape(logp=logp, logp_old=logp_old)
    data = [("logprobs", "logp", logp), ("logprobs", "logp_old", logp_old)]
    if mask is not None:
        V._mask_structure("mask", mask, logp, "logp")
        data.append(("mask", "mask", mask, nonempty))
    if logp_ref is not None:
        V._logprob_structure("logp_ref", logp_ref)
        V.same_shape(logp=logp, logp_ref=logp_ref)
        data.append(("logprobs", "logp_ref", logp_ref))
    if advantages is not None:
        V._structure("advantages", advantages, None)
        data.append(("finite", "advantages", advantages))
    V.together(*data)


def _check_level(level, name) -> str:
    return V.choice(name, level, ("token", "sequence"))


def _check_sequence_mask(mask, logp, validated: bool = False) -> None:
    if mask is None:
        raise ValueError("mask is required for the sequence-level (GSPO) ratio")
    if not validated:
        V.mask("mask", mask, like=logp, like_name="logp")
    if bool((mask.sum(-1) == 0).any()):
        raise ValueError(f"mask has an all-zero row (shape {tuple(mask.shape)}): the sequence-level ratio "
                         f"of a row needs at least one counted token")


# ----------------------------------------------------------------------------- unchecked arithmetic

def _log_ratio(logp, logp_old, mask, level):
    """(B, T) token log-ratios, or (B, 1) the GSPO mean log-ratio of each row."""
    if level == "token":
        return logp - logp_old
    return _sequence_log_ratio(logp, logp_old, mask.to(logp.dtype)).unsqueeze(-1)


def _clip(ratio, adv, low, high, dual_clip):
    lo, hi = (low if low > float("-inf") else None), (high if high < float("inf") else None)
    clipped = ratio if lo is None and hi is None else torch.clamp(ratio, lo, hi)
    loss = -torch.min(ratio * adv, clipped * adv)
    if dual_clip is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -dual_clip * adv), loss)
    return loss


def _grpo_per_token(logp, logp_old, adv, mask, low, high, level, beta, logp_ref, kl_estimator, delta,
                    kl_importance_correction, clamp):
    lr = _log_ratio(logp, logp_old, mask, level)
    ratio = _exp(lr, clamp)
    per_token = _clip(ratio, adv, low, high, delta).expand_as(logp) if level == "sequence" else \
        _clip(ratio, adv, low, high, delta)
    kl = None
    if beta > 0:
        log_r = logp_ref - logp if clamp is None else torch.clamp(logp_ref - logp, -clamp, clamp)
        kl = _k3(log_r) if kl_estimator == "k3" else (-log_r if kl_estimator == "k1" else 0.5 * log_r ** 2)
        if kl_importance_correction:
            kl = kl * ratio
        per_token = per_token + beta * kl
    return per_token, ratio, lr, kl


@torch.no_grad()
def _clip_stats(ratio, adv, mask, logp, logp_old, low, high, lr, clamp) -> dict[str, float]:
    ratio = ratio.detach().expand_as(logp)
    adv = adv.expand_as(logp)
    below = ratio < low
    above = ratio > high
    m = mask.to(ratio.dtype)
    n = m.sum()

    def frac(b):
        return float((b.to(ratio.dtype) * m).sum() / n)

    return {
        # fraction of tokens whose ratio lies outside [1 - eps_low, 1 + eps_high] (OpenAI baselines, CleanRL)
        "clipfrac": frac(below | above),
        # fractions where the clip is active, i.e. the token's gradient is zeroed (TRL's clip_ratio/low, /high)
        "clipfrac_low": frac(below & (adv < 0)),
        "clipfrac_high": frac(above & (adv > 0)),
        # k3 estimate of KL(old || new) with tokens sampled from old
        "approx_kl": float((_k3(torch.log(ratio)) * m).sum() / n) if clamp is not None else
        float((_k3(logp.detach() - logp_old.detach()) * m).sum() / n),
        "ratio_mean": float((ratio * m).sum() / n),
        # fraction of log-ratios changed by the opt-in log_ratio_clamp (0 when it is None)
        "log_ratio_clamped": _clamped_fraction(lr.detach().expand_as(logp), mask, clamp),
    }


# ----------------------------------------------------------------------------- per-token losses

def pg_loss_per_token(logp: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    r"""Per-token policy-gradient (REINFORCE) surrogate, Williams 1992.

    .. math::

        \ell_{i,t} = -A_{i,t}\,\log\pi_\theta(y_{i,t}\mid s_{i,t}),
        \qquad \nabla_\theta \ell_{i,t} = -A_{i,t}\,\nabla_\theta\log\pi_\theta(y_{i,t}\mid s_{i,t})

    Args:
        logp: (B, T) log-probs of the sampled tokens (carrying the gradient).
        advantages: (B,), (B, 1) or (B, T); detached (constants).

    Returns:
        (B, T) per-token losses (unmasked: aggregate with :func:`rlcourse.logprobs.agg_loss`).
    """
    V.logprobs("logp", logp, ndim=2)
    adv = _check_advantages(advantages, logp, "logp")
    return -adv * logp


def importance_weighted_loss_per_token(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, *,
                                       log_ratio_clamp: float | None = None) -> torch.Tensor:
    r"""Per-token unclipped importance-weighted surrogate (the objective PPO clips; Kakade & Langford 2002).

    .. math::

        \ell_{i,t} = -\rho_{i,t}\,A_{i,t},\qquad \rho_{i,t} = \exp(\log\pi_\theta - \log\pi_{\text{old}}),
        \qquad \nabla_\theta \ell_{i,t} = -\rho_{i,t} A_{i,t}\,\nabla_\theta\log\pi_\theta

    At :math:`\theta = \theta_{\text{old}}` its gradient equals that of :func:`pg_loss_per_token`.

    Args:
        logp, logp_old: (B, T) log-probs under the current and the sampling policy.
        advantages: (B,), (B, 1) or (B, T); detached.
        log_ratio_clamp: None (default) or c > 0 (opt-in clip of the log-ratio).

    Returns:
        (B, T) per-token losses.
    """
    _check_policy_inputs(logp, logp_old)
    adv = _check_advantages(advantages, logp, "logp")
    return -_exp(logp - logp_old, _check_clamp(log_ratio_clamp)) * adv


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float | None = DEFAULT_EPS,
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

    No clipping on a side: ``eps_low=None`` or ``eps_low >= 1`` (then :math:`1-\epsilon \le 0 \le \rho`),
    ``eps_high=float("inf")``. ``eps_high=None`` means ``eps_low``'s value (TRL's ``epsilon_high``).

    Args:
        ratio: (B, T) importance ratios (>= 0) (any shape, with advantages of the same shape).
        advantages: (B,), (B, 1) or (B, T); detached.
        eps_low: in (0, 1) (default 0.2, PPO's and TRL's), or None / >= 1 for no lower clip.
        eps_high: > 0, inf (no upper clip), or None (= eps_low).
        dual_clip: ``None`` or a constant > 1.

    Returns:
        (B, T) per-token losses.
    """
    V.tensor("ratio", ratio)
    if ratio.numel() and float(ratio.detach().min()) < 0:
        raise ValueError(f"ratio must be >= 0, min entry {float(ratio.min()):.3g} (shape {tuple(ratio.shape)})")
    adv = _check_advantages(advantages, ratio, "ratio")
    low, high = _check_eps(eps_low, eps_high)
    return _clip(ratio, adv, low, high, _check_dual_clip(dual_clip)).expand_as(ratio)


def ppo_clip_loss_per_token(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor,
                            mask: torch.Tensor | None = None, eps_low: float | None = DEFAULT_EPS,
                            eps_high: float | None = None, dual_clip: float | None = None,
                            ratio_level: str = "token", log_ratio_clamp: float | None = None) -> torch.Tensor:
    r"""Per-token PPO-clip loss from log-probs: :func:`clipped_surrogate` of the token or GSPO ratio.

    .. math::

        \ell_{i,t} = -\min\big(\rho_{i,t} A_{i,t},\;
            \operatorname{clip}(\rho_{i,t}, 1-\epsilon_{\text{low}}, 1+\epsilon_{\text{high}}) A_{i,t}\big)

    ``ratio_level="token"``: :math:`\rho_{i,t} = \pi_\theta/\pi_{\text{old}}`; ``"sequence"``: the
    GSPO ratio :math:`s_i` of the row (needs ``mask``), its gradient through the mean log-ratio.

    Args:
        logp, logp_old: (B, T) log-probs under the current and the sampling policy.
        advantages: (B,), (B, 1) or (B, T); detached.
        mask: (B, T) 0/1; required for ``ratio_level="sequence"`` only.
        eps_low, eps_high, dual_clip: see :func:`clipped_surrogate`.
        ratio_level: "token" or "sequence".
        log_ratio_clamp: None (default) or c > 0.

    Returns:
        (B, T) per-token losses.
    """
    _check_policy_inputs(logp, logp_old)
    level = _check_level(ratio_level, "ratio_level")
    if level == "sequence":
        _check_sequence_mask(mask, logp)
    adv = _check_advantages(advantages, logp, "logp")
    low, high = _check_eps(eps_low, eps_high)
    per_token, *_ = _grpo_per_token(logp, logp_old, adv, mask, low, high, level, 0.0, None, "k3",
                                    _check_dual_clip(dual_clip), False, _check_clamp(log_ratio_clamp))
    return per_token


def _check_grpo(logp, logp_old, mask, eps_low, eps_high, importance_level, beta, logp_ref, kl_estimator, delta,
                log_ratio_clamp, level_name="importance_level", advantages=None):
    """Validate the GRPO arguments: the numbers first, then every tensor (``advantages`` too, if given)
    in one host sync."""
    level = _check_level(importance_level, level_name)
    V.choice("kl_estimator", kl_estimator, list(KL_ESTIMATORS))
    low, high = _check_eps(eps_low, eps_high)
    beta = V.positive("beta", beta, allow_zero=True, allow_inf=False)
    if delta is not None:
        if not V._is_number(delta) or not delta >= high:
            raise ValueError(f"delta must be a number >= 1 + eps_high = {high}, got {delta!r}")
    if beta > 0 and logp_ref is None:
        raise ValueError("logp_ref is required when beta > 0")
    clamp = _check_clamp(log_ratio_clamp)
    _check_policy_inputs(logp, logp_old, mask, logp_ref=logp_ref if beta > 0 else None, advantages=advantages)
    if level == "sequence":
        _check_sequence_mask(mask, logp, validated=mask is not None)
    return level, low, high, beta, (None if delta is None else float(delta)), clamp


def grpo_loss_per_token(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                        *, eps_low: float | None = DEFAULT_EPS, eps_high: float | None = None,
                        importance_level: str = "token", beta: float = 0.0, logp_ref: torch.Tensor | None = None,
                        kl_estimator: str = "k3", delta: float | None = None,
                        kl_importance_correction: bool = False,
                        log_ratio_clamp: float | None = None) -> torch.Tensor:
    r"""Per-token GRPO loss (Shao et al. 2024; TRL 1.16 ``GRPOTrainer``'s ``per_token_loss``).

    .. math::

        \ell_{i,t} = -\min\big(w_{i,t} \hat{A}_i,\; \operatorname{clip}(w_{i,t}, 1-\epsilon_{\text{low}},
            1+\epsilon_{\text{high}})\,\hat{A}_i\big) + \beta\,\hat{k}_{i,t}

    with :math:`w_{i,t}` the token ratio or the GSPO sequence ratio and :math:`\hat{k}` the
    per-token KL estimate to the reference (:func:`rlcourse.kl.kl_estimate`, k3 by default).
    Arguments as in :func:`grpo_loss`.

    Returns:
        (B, T) per-token losses.
    """
    level, low, high, beta, delta, clamp = _check_grpo(logp, logp_old, mask, eps_low, eps_high, importance_level,
                                                       beta, logp_ref, kl_estimator, delta, log_ratio_clamp,
                                                       advantages=advantages)
    adv = _advantages(advantages, logp, "logp")
    per_token, *_ = _grpo_per_token(logp, logp_old, adv, mask, low, high, level, beta, logp_ref, kl_estimator,
                                    delta, bool(kl_importance_correction), clamp)
    return per_token


def value_loss_per_token(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                         clip_range: float | None = None) -> torch.Tensor:
    r"""Per-token critic loss, optionally clipped around the old values (PPO as in OpenAI baselines).

    .. math::

        \ell_t = \tfrac12\max\Big((V_t - R_t)^2,\;
            \big(\operatorname{clip}(V_t, V^{\text{old}}_t - c, V^{\text{old}}_t + c) - R_t\big)^2\Big)

    ``clip_range=None``: :math:`\ell_t = \tfrac12 (V_t - R_t)^2`. ``returns`` are detached (targets).

    Args:
        values: (B, T) current value predictions (carrying the gradient).
        old_values: (B, T) predictions at rollout time.
        returns: (B, T) targets (e.g. GAE returns).
        clip_range: c > 0, or None.

    Returns:
        (B, T) per-token losses.
    """
    V.tensor("values", values, ndim=2)
    V.tensor("old_values", old_values)
    V.tensor("returns", returns)
    V.same_shape(values=values, old_values=old_values, returns=returns)
    c = None if clip_range is None else V.positive("clip_range", clip_range)
    return _value_per_token(values, old_values, returns, c)


def _value_per_token(values, old_values, returns, c):
    returns = returns.detach()
    unclipped = (values - returns) ** 2
    if c is None:
        return 0.5 * unclipped
    v_clipped = old_values + torch.clamp(values - old_values, -c, c)
    return 0.5 * torch.max(unclipped, (v_clipped - returns) ** 2)


#: The label that Hugging Face losses ignore (``CrossEntropyLoss(ignore_index=-100)``).
IGNORE_INDEX = -100


def sft_nll_per_token(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    r"""Per-token negative log-likelihood of the labels (supervised fine-tuning).

    .. math::

        \ell_{i,t} = -\log \operatorname{softmax}(z_{i,t} / T)_{y_{i,t}}

    Positions labelled :data:`IGNORE_INDEX` (-100, Hugging Face's convention) get 0.

    Args:
        logits: (B, T, V), already aligned with ``labels`` (``logits[:, t]`` scores ``labels[:, t]``).
        labels: (B, T) integer token ids in [0, V), or -100.
        temperature: T > 0 (1 for ordinary SFT).

    Returns:
        (B, T) per-token losses.
    """
    V.tensor("labels", labels, ndim=2)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    ignored = labels == IGNORE_INDEX
    logp = token_logprobs(logits, torch.where(ignored, torch.zeros_like(labels), labels), temperature)
    return torch.where(ignored, torch.zeros_like(logp), -logp)


# ----------------------------------------------------------------------------- scalar losses

def _resolve_agg(aggregation, mask, agg_kwargs, max_completion_length=None):
    if max_completion_length is not None:
        if "constant" in agg_kwargs:
            raise ValueError("give max_completion_length or constant, not both")
        V.integer("max_completion_length", max_completion_length)
    mode = canonical_mode(aggregation, "aggregation")
    if mode == "seq-mean-token-sum-norm" and max_completion_length is not None:
        agg_kwargs = dict(agg_kwargs, constant=max_completion_length)
    if mode in ("seq-mean-token-sum-norm", "token-sum-norm") and agg_kwargs.get("constant") is None:
        raise ValueError(f"aggregation={aggregation!r} needs its constant: pass max_completion_length "
                         f"(Dr. GRPO's L_max) or constant=C")
    unknown = set(agg_kwargs) - {"constant", "total_tokens", "total_sequences"}
    if unknown:
        raise ValueError(f"unknown aggregation argument(s) {sorted(unknown)}; "
                         f"valid: constant, total_tokens, total_sequences")
    return _check_agg_kwargs(mask, mode, agg_kwargs.get("constant"), agg_kwargs.get("total_tokens"),
                             agg_kwargs.get("total_sequences"))


def policy_gradient_loss(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                         aggregation: str = "token-mean", **agg_kwargs) -> torch.Tensor:
    r"""Vanilla policy-gradient surrogate loss (REINFORCE, Williams 1992): ``agg_loss(pg_loss_per_token)``.

    .. math::

        L(\theta) = \operatorname{agg}_{i,t}\big(-A_{i,t}\,\log\pi_\theta(y_{i,t}\mid s_{i,t})\big)

    Its value means nothing; its gradient is the policy-gradient estimate.

    Args:
        logp: (B, T) log-probs of the sampled tokens (carrying the gradient).
        advantages: (B,), (B, 1) or (B, T) (detached: constants).
        mask: (B, T) 0/1 response mask, not all zero.
        aggregation: a mode of :func:`rlcourse.logprobs.agg_loss`; ``agg_kwargs`` its normalisers.

    Returns:
        scalar loss.
    """
    V.logprobs("logp", logp, ndim=2)
    V.mask("mask", mask, like=logp, like_name="logp", nonempty=True)
    agg = _resolve_agg(aggregation, mask, agg_kwargs)
    adv = _check_advantages(advantages, logp, "logp")
    return _agg(-adv * logp, mask, *agg)


def importance_weighted_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor,
                             mask: torch.Tensor, aggregation: str = "token-mean", *,
                             log_ratio_clamp: float | None = None, **agg_kwargs) -> torch.Tensor:
    r"""Unclipped importance-weighted surrogate: ``agg_loss(importance_weighted_loss_per_token)``.

    .. math::

        L(\theta) = \operatorname{agg}_{i,t}\big(-\rho_{i,t} A_{i,t}\big)
    """
    _check_policy_inputs(logp, logp_old, mask)
    agg = _resolve_agg(aggregation, mask, agg_kwargs)
    adv = _check_advantages(advantages, logp, "logp")
    return _agg(-_exp(logp - logp_old, _check_clamp(log_ratio_clamp)) * adv, mask, *agg)


def ppo_clip_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                  eps_low: float | None = DEFAULT_EPS, eps_high: float | None = None,
                  dual_clip: float | None = None, aggregation: str = "token-mean", ratio_level: str = "token",
                  *, log_ratio_clamp: float | None = None, **agg_kwargs) -> tuple[torch.Tensor, dict[str, float]]:
    r"""PPO-clip loss (Schulman et al. 2017): ``agg_loss(ppo_clip_loss_per_token)``.

    .. math::

        L^{\text{CLIP}}(\theta) = \operatorname{agg}_{i,t}\Big(-\min\big(\rho_{i,t} A_{i,t},\;
            \operatorname{clip}(\rho_{i,t}, 1-\epsilon_{\text{low}}, 1+\epsilon_{\text{high}}) A_{i,t}\big)\Big)

    Args:
        logp, logp_old: (B, T) log-probs under the current and the sampling policy.
        advantages: (B,), (B, 1) or (B, T); detached.
        mask: (B, T) 0/1, not all zero.
        eps_low, eps_high, dual_clip: see :func:`clipped_surrogate`.
        aggregation: a mode of ``agg_loss``; ``agg_kwargs`` its normalisers.
        ratio_level: "token" or "sequence" (GSPO).
        log_ratio_clamp: None (default) or c > 0, reported as ``log_ratio_clamped``.

    Returns:
        (loss, stats) with float stats "clipfrac", "clipfrac_low", "clipfrac_high",
        "approx_kl" (k3 of KL(old || new)), "ratio_mean", "log_ratio_clamped".
    """
    level, low, high, _, _, clamp = _check_grpo(logp, logp_old, mask, eps_low, eps_high, ratio_level, 0.0, None,
                                                "k3", None, log_ratio_clamp, "ratio_level", advantages=advantages)
    dual = _check_dual_clip(dual_clip)
    agg = _resolve_agg(aggregation, mask, agg_kwargs)
    adv = _advantages(advantages, logp, "logp")
    per_token, ratio, lr, _ = _grpo_per_token(logp, logp_old, adv, mask, low, high, level, 0.0, None, "k3", dual,
                                              False, clamp)
    return _agg(per_token, mask, *agg), _clip_stats(ratio, adv, mask, logp, logp_old, low, high, lr, clamp)


def ppo_penalty_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                     beta: float, aggregation: str = "token-mean", *, log_ratio_clamp: float | None = None,
                     **agg_kwargs) -> tuple[torch.Tensor, dict[str, float]]:
    r"""PPO with an adaptive KL penalty instead of the clip (Schulman et al. 2017, Sec. 4).

    .. math::

        L^{\text{KLPEN}}(\theta) = \operatorname{agg}_{i,t}\Big(-\rho_{i,t} A_{i,t}
            + \beta\,\hat{k}_{i,t}\Big),\qquad
        \hat{k} = k_3 \text{ estimate of } \mathrm{KL}(\pi_{\text{old}} \,\|\, \pi_\theta) = (\rho - 1) - \log\rho

    i.e. the per-token :func:`importance_weighted_loss_per_token` plus :math:`\beta` times
    :func:`rlcourse.kl.kl_k3` ``(logp_old, logp)`` (samples come from :math:`\pi_{\text{old}}`).

    Args:
        logp, logp_old: (B, T) log-probs under the current and the sampling policy.
        advantages: (B,), (B, 1) or (B, T); detached.
        mask: (B, T) 0/1, not all zero.
        beta: penalty coefficient, >= 0 (see :class:`AdaptiveKLController`).
        aggregation: a mode of ``agg_loss``; ``agg_kwargs`` its normalisers.
        log_ratio_clamp: None (default) or c > 0.

    Returns:
        (loss, stats) with float stats "kl" (masked mean of the penalty's KL estimate),
        "approx_kl" (the same), "ratio_mean", "log_ratio_clamped".
    """
    _check_policy_inputs(logp, logp_old, mask)
    beta = V.positive("beta", beta, allow_zero=True, allow_inf=False)
    clamp = _check_clamp(log_ratio_clamp)
    agg = _resolve_agg(aggregation, mask, agg_kwargs)
    adv = _check_advantages(advantages, logp, "logp")
    lr = logp - logp_old
    ratio = _exp(lr, clamp)
    kl = _k3(lr if clamp is None else torch.clamp(lr, -clamp, clamp))
    loss = _agg(-ratio * adv + beta * kl, mask, *agg)
    with torch.no_grad():
        kl_mean = float(_masked_mean(kl.detach(), mask))
        stats = {"kl": kl_mean, "approx_kl": kl_mean, "ratio_mean": float(_masked_mean(ratio.detach(), mask)),
                 "log_ratio_clamped": _clamped_fraction(lr, mask, clamp)}
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
        kl = V.number("kl", kl, minimum=None)
        V.integer("n_steps", n_steps)
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
              eps_low: float | None = DEFAULT_EPS, eps_high: float | None = None, importance_level: str = "token",
              aggregation: str = "seq-mean-token-mean", beta: float = 0.0, logp_ref: torch.Tensor | None = None,
              kl_estimator: str = "k3", max_completion_length: int | None = None, delta: float | None = None,
              kl_importance_correction: bool = False, log_ratio_clamp: float | None = None,
              **agg_kwargs) -> tuple[torch.Tensor, dict[str, float]]:
    r"""GRPO loss (Shao et al. 2024) and its variants Dr. GRPO, DAPO, GSPO: ``agg_loss(grpo_loss_per_token)``.

    TRL 1.16 ``GRPOTrainer`` semantics:

    .. math::

        \ell_{i,t} = -\min\big(w_{i,t} \hat{A}_i,\; \operatorname{clip}(w_{i,t}, 1-\epsilon_{\text{low}},
            1+\epsilon_{\text{high}})\,\hat{A}_i\big) + \beta\,\hat{k}_{i,t},\qquad
        L = \operatorname{agg}_{i,t}(\ell_{i,t})

    with :math:`w_{i,t} = \pi_\theta(y_{i,t})/\pi_{\text{old}}(y_{i,t})` (``importance_level="token"``)
    or the GSPO sequence ratio :math:`s_i` (``"sequence"``, Zheng et al. 2025), and
    :math:`\hat{k}_{i,t} = e^{\log\pi_{\text{ref}}-\log\pi_\theta} - (\log\pi_{\text{ref}}-\log\pi_\theta) - 1`
    (k3). The variants are aggregations (TRL ``loss_type`` -> mode: :data:`TRL_LOSS_TYPE_TO_AGG_MODE`):

    * GRPO: ``seq-mean-token-mean``, :math:`\frac1B\sum_i \frac{1}{|y_i|}\sum_t \ell_{i,t}`;
    * DAPO (Yu et al. 2025) / TRL "bnpo": ``token-mean``, :math:`\sum_{i,t}\ell_{i,t} / \sum_i |y_i|`
      (TRL "dapo": pass ``total_tokens=num_items_in_batch``), plus the clip-higher ``eps_high``;
    * Dr. GRPO (Liu et al. 2025): ``seq-mean-token-sum-norm``, :math:`\sum_{i,t}\ell_{i,t} / (B\,L_{\max})`,
      ``max_completion_length`` = :math:`L_{\max}`, with advantages not divided by the std.

    Options that mirror TRL: ``delta`` is the two-sided clip of INTELLECT-2 (TRL
    ``GRPOConfig.delta``): for :math:`A<0` the loss is bounded by :math:`\delta |A|`; it
    equals ``dual_clip=delta`` of :func:`clipped_surrogate` and must be >= 1 + eps_high.
    ``kl_importance_correction=True`` multiplies the KL term by :math:`w_{i,t}` (DeepSeek-V3.2;
    TRL ``use_bias_correction_kl``, whose default in TRL 1.16 is True). Nothing is clamped
    unless ``log_ratio_clamp`` is given (TRL clamps nothing either).

    Args:
        logp, logp_old: (B, T) log-probs under the current and the sampling policy.
        advantages: (B,) or (B, 1) group advantages (or (B, T)); detached.
        mask: (B, T) 0/1 completion mask, not all zero.
        eps_low, eps_high: clip range (see :func:`clipped_surrogate`; default 0.2 as TRL's ``epsilon``).
        importance_level: "token" (GRPO) or "sequence" (GSPO).
        aggregation: a mode of ``agg_loss`` (verl's names, or the older ones).
        beta: KL coefficient, >= 0; if > 0, ``logp_ref`` (B, T) is required.
        kl_estimator: "k1", "k2" or "k3" (GRPO and TRL: "k3").
        max_completion_length: L_max for ``seq-mean-token-sum-norm`` (alias ``constant``).
        delta: None or the two-sided clip bound (>= 1 + eps_high).
        kl_importance_correction: multiply the KL term by the importance ratio.
        log_ratio_clamp: None (default) or c > 0, applied to the importance log-ratio and to the KL
            term's log-ratio; the fractions it changed are ``log_ratio_clamped`` and ``kl_log_ratio_clamped``.
        **agg_kwargs: ``constant`` / ``total_tokens`` / ``total_sequences`` for ``agg_loss``.

    Returns:
        (loss, stats) with float stats "clipfrac", "clipfrac_low", "clipfrac_high",
        "approx_kl", "ratio_mean", "log_ratio_clamped", and "kl" (masked mean of the KL term) when beta > 0.
    """
    level, low, high, beta, delta, clamp = _check_grpo(logp, logp_old, mask, eps_low, eps_high, importance_level,
                                                       beta, logp_ref, kl_estimator, delta, log_ratio_clamp,
                                                       advantages=advantages)
    agg = _resolve_agg(aggregation, mask, agg_kwargs, max_completion_length)
    adv = _advantages(advantages, logp, "logp")
    return _grpo_loss(logp, logp_old, adv, mask, low, high, level, beta, logp_ref, kl_estimator, delta,
                      bool(kl_importance_correction), clamp, agg)


def _grpo_loss(logp, logp_old, adv, mask, low, high, level, beta, logp_ref, kl_estimator, delta,
               kl_importance_correction, clamp, agg):
    """Unchecked GRPO loss and stats (arguments as validated by :func:`grpo_loss`)."""
    per_token, ratio, lr, kl = _grpo_per_token(logp, logp_old, adv, mask, low, high, level, beta, logp_ref,
                                               kl_estimator, delta, kl_importance_correction, clamp)
    stats = _clip_stats(ratio, adv, mask, logp, logp_old, low, high, lr, clamp)
    if kl is not None:
        stats["kl"] = float(_masked_mean(kl.detach(), mask))
        stats["kl_log_ratio_clamped"] = _clamped_fraction(logp_ref - logp, mask, clamp)
    return _agg(per_token, mask, *agg), stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range: float | None = None, aggregation: str = "token-mean", **agg_kwargs) -> torch.Tensor:
    r"""Critic loss: ``agg_loss(value_loss_per_token)`` (PPO as implemented in OpenAI baselines).

    .. math::

        L_V = \operatorname{agg}_{i,t}\Big(\tfrac12\max\big((V_t - R_t)^2,\;
            (\operatorname{clip}(V_t, V^{\text{old}}_t - c, V^{\text{old}}_t + c) - R_t)^2\big)\Big)

    Args:
        values, old_values, returns: (B, T); see :func:`value_loss_per_token`.
        mask: (B, T) 0/1, not all zero.
        clip_range: c > 0, or None.
        aggregation: a mode of ``agg_loss``; ``agg_kwargs`` its normalisers.

    Returns:
        scalar loss.
    """
    V.tensor("values", values, ndim=2)
    V.tensor("old_values", old_values)
    V.tensor("returns", returns)
    V.same_shape(values=values, old_values=old_values, returns=returns)
    V.mask("mask", mask, like=values, like_name="values", nonempty=True)
    c = None if clip_range is None else V.positive("clip_range", clip_range)
    agg = _resolve_agg(aggregation, mask, agg_kwargs)
    return _agg(_value_per_token(values, old_values, returns, c), mask, *agg)


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None,
             aggregation: str = "token-mean", temperature: float = 1.0, **agg_kwargs) -> torch.Tensor:
    r"""Supervised fine-tuning loss: ``agg_loss(sft_nll_per_token)`` over the response tokens.

    .. math::

        L_{\text{SFT}} = \operatorname{agg}_{i,t}\big(-\log\pi_\theta(y_{i,t}\mid s_{i,t})\big)

    With ``aggregation="token-mean"`` and ``mask = labels != -100`` this is Hugging Face's
    causal-LM loss (``CrossEntropyLoss(ignore_index=-100)`` on shifted labels).

    Args:
        logits: (B, T, V) aligned with ``labels``.
        labels: (B, T) integer ids, -100 where ignored.
        mask: (B, T) 0/1 response mask; default ``labels != -100``. Labels of -100 must be masked out.
        aggregation: a mode of ``agg_loss``; ``agg_kwargs`` its normalisers.
        temperature: T > 0.

    Returns:
        scalar loss.
    """
    per_token = sft_nll_per_token(logits, labels, temperature)
    if mask is None:
        mask = labels != IGNORE_INDEX
    V.mask("mask", mask, like=labels, like_name="labels", nonempty=True)
    if bool((mask.bool() & (labels == IGNORE_INDEX)).any()):
        raise ValueError("mask counts positions whose label is -100 (ignored): mask them out or give their ids")
    agg = _resolve_agg(aggregation, mask, agg_kwargs)
    return _agg(per_token, mask, *agg)


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
    coef = V.positive("coef", coef, allow_zero=True, allow_inf=False)
    return -coef * _masked_mean(entropy, mask)
