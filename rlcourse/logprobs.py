r"""Token log-probabilities, entropy, masked reductions and loss aggregation.

A language model's output at position :math:`t` is a row of logits :math:`z_t \in \mathbb{R}^V`.
The policy is :math:`\pi_\theta(\cdot \mid s_t) = \mathrm{softmax}(z_t / T)` with temperature
:math:`T`, and everything RL needs from the model is the log-probability of the token that was
sampled, :math:`\log \pi_\theta(a_t \mid s_t)`.

Per-token tensors are ``(B, T)``. A mask of the same shape marks with 1 the tokens that count
(the response), with 0 the prompt and the padding. Every reduction here goes through the mask.

The four ways to reduce a ``(B, T)`` per-token loss :math:`\ell_{i,t}` to a scalar differ only
in the weight each token gets (see :func:`aggregation_weights`). They matter: GRPO's original
per-sequence mean gives a token of a short answer more weight than a token of a long one, which
is the length bias that DAPO and Dr. GRPO remove.
"""

from __future__ import annotations

import torch

from rlcourse import _validate as check

#: The aggregation modes, named as verl's ``agg_loss`` names them, plus ``token-sum-norm``
#: (the sum over tokens divided by an explicit constant C). See :func:`agg_loss`.
AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm",
             "token-sum-norm")

#: The names used before verl's: still accepted everywhere a mode is (``constant`` is
#: ``seq-mean-token-sum-norm``, Dr. GRPO's :math:`\Sigma / (B\,L_{\max})`).
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "constant")

_ALIASES = {"token_mean": "token-mean", "seq_mean_token_mean": "seq-mean-token-mean",
            "seq_mean_token_sum": "seq-mean-token-sum", "constant": "seq-mean-token-sum-norm"}

#: TRL 1.16 ``GRPOConfig.loss_type`` -> (mode, what to pass for the normaliser).
TRL_LOSS_TYPE_TO_AGG_MODE = {
    "grpo": "seq-mean-token-mean",      # also "sapo"
    "sapo": "seq-mean-token-mean",
    "bnpo": "token-mean",               # this micro-batch's token count
    "dapo": "token-mean",               # total_tokens = num_items_in_batch (the whole batch's count)
    "cispo": "token-mean",              # as dapo
    "dr_grpo": "seq-mean-token-sum-norm",  # constant = max_completion_length
    "luspo": "seq-mean-token-sum",
}


def canonical_mode(mode: str, name: str = "mode") -> str:
    """The verl name of an aggregation mode (accepts the older underscore names); clear error otherwise."""
    if isinstance(mode, str) and mode in _ALIASES:
        return _ALIASES[mode]
    if not isinstance(mode, str) or mode not in AGG_MODES:
        raise ValueError(f"{name} must be one of {list(AGG_MODES)} (or the older names {list(AGGREGATIONS)}), "
                         f"got {mode!r}")
    return mode


# --------------------------------------------------------------------------- log-probs, entropy


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    r"""Log-probability of each sampled token under ``softmax(logits / temperature)``.

    .. math::

        \log \pi_\theta(a_t \mid s_t) = \frac{z_{t,a_t}}{T} - \log \sum_{v=1}^{V} \exp\frac{z_{t,v}}{T}

    Args:
        logits: (B, T, V) logits :math:`z`; position ``t`` scores the token at ``tokens[:, t]``
            (shift the model's output by one before calling, as usual for causal LMs).
        tokens: (B, T) integer token ids in ``[0, V)``.
        temperature: :math:`T > 0`, the sampling temperature.

    Returns:
        (B, T) log-probabilities, in the dtype of ``logits``.
    """
    check.tensor("logits", logits, ndim=3)
    check.tensor("tokens", tokens, ndim=2)
    check.positive("temperature", temperature)
    if tokens.is_floating_point() or tokens.dtype == torch.bool:
        raise ValueError(f"tokens must be an integer tensor, got dtype {tokens.dtype}")
    if tuple(tokens.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"tokens has shape {tuple(tokens.shape)} but logits has shape {tuple(logits.shape)}; "
                         f"expected tokens of shape {tuple(logits.shape[:2])}")
    vocab = logits.shape[-1]
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise ValueError(f"tokens must lie in [0, {vocab}) (the vocabulary of logits), "
                         f"found values in [{int(tokens.min())}, {int(tokens.max())}]")
    logp_all = torch.log_softmax(logits / temperature, dim=-1)
    return logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    r"""Entropy (in nats) of the policy ``softmax(logits / temperature)`` at every position.

    .. math::

        \mathcal{H}\big(\pi(\cdot \mid s_t)\big) = -\sum_{v=1}^{V} \pi(v \mid s_t) \log \pi(v \mid s_t)
            = \operatorname{logsumexp}(u_t) - \sum_{v} \pi(v \mid s_t)\, u_{t,v},
        \qquad u_t = z_t / T,\; \pi(\cdot \mid s_t) = \mathrm{softmax}(u_t)

    computed in the second (logsumexp) form, as verl does: it never multiplies a probability
    of 0 by a log-probability of -inf, and it agrees with the first form to rounding.

    Args:
        logits: (..., V) logits.
        temperature: :math:`T > 0`.

    Returns:
        (...) entropies, the last dimension reduced.
    """
    check.tensor("logits", logits)
    check.positive("temperature", temperature)
    if logits.dim() == 0:
        raise ValueError("logits must have at least 1 dimension (the vocabulary), got a scalar")
    return _entropy(logits / temperature)


def _entropy(u: torch.Tensor) -> torch.Tensor:
    """Unchecked entropy of softmax(u) along the last dim, logsumexp form."""
    return torch.logsumexp(u, dim=-1) - (torch.softmax(u, dim=-1) * u).sum(-1)


# --------------------------------------------------------------------------- masked reductions


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    r"""Sum of the entries of ``x`` where ``mask`` is 1.

    .. math::

        \mathrm{sum}_m(x) = \sum_{i,t} m_{i,t}\, x_{i,t}

    Args:
        x: tensor of any shape.
        mask: 0/1 tensor (bool or numeric) of the shape of ``x``.
        dim: ``None`` sums everything (a scalar); an int sums over that dimension only.
    """
    check.tensor("x", x)
    check.mask("mask", mask, like=x, like_name="x")
    return _masked_sum(x, mask, dim)


def _masked_sum(x, mask, dim=None):
    masked = x * mask.to(x.dtype)
    return masked.sum() if dim is None else masked.sum(dim)


EMPTY_POLICIES = ("raise", "nan")


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None, *, empty: str = "raise") -> torch.Tensor:
    r"""Mean of the entries of ``x`` where ``mask`` is 1.

    .. math::

        \mathrm{mean}_m(x) = \frac{\sum_{i,t} m_{i,t}\, x_{i,t}}{\sum_{i,t} m_{i,t}}

    Args:
        x: tensor of any shape.
        mask: 0/1 tensor of the shape of ``x``.
        dim: ``None`` averages everything (a scalar); an int averages over that dimension.
        empty: what a mean over nothing (a slice whose mask is all 0) gives: ``"raise"``
            (default, a ``ValueError``) or ``"nan"`` (NaN for that slice, the others computed;
            e.g. a per-position mean over rows where some positions are padding everywhere).
    """
    check.tensor("x", x)
    check.choice("empty", empty, EMPTY_POLICIES)
    check.mask("mask", mask, like=x, like_name="x", nonempty=(empty == "raise" and dim is None))
    m = mask.to(x.dtype)
    counts = m.sum() if dim is None else m.sum(dim)
    if empty == "raise" and dim is not None and bool((counts == 0).any()):
        raise ValueError(f"mask has {int((counts == 0).sum())} all-zero slice(s) along dim {dim} "
                         f"(mask shape {tuple(mask.shape)}): nothing to average over; "
                         f"pass empty='nan' to get NaN for those slices")
    total = (x * m).sum() if dim is None else (x * m).sum(dim)
    if empty == "nan":
        return torch.where(counts > 0, total / counts.clamp(min=1), torch.full_like(total, float("nan")))
    return total / counts


def _masked_mean(x, mask):
    """Unchecked scalar masked mean (callers have validated x and a non-empty mask)."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum()


def masked_normalize(x: torch.Tensor, mask: torch.Tensor, constant: float, dim: int | None = None) -> torch.Tensor:
    r"""Masked sum divided by a constant (not by the number of counted entries).

    .. math::

        \mathrm{normalize}_m(x; C) = \frac{1}{C}\sum_{t} m_{t}\, x_{t}

    (over everything, or along ``dim``). With :math:`C` the maximum completion length this
    is the per-sequence term of Dr. GRPO; as a sum over everything it is verl's
    ``seq-mean-token-sum-norm`` before its division by :math:`B`.

    Args:
        x: tensor of any shape.
        mask: 0/1 tensor of the shape of ``x``.
        constant: :math:`C > 0`, finite.
        dim: ``None`` (a scalar) or the dimension to sum over.
    """
    check.tensor("x", x)
    check.mask("mask", mask, like=x, like_name="x")
    c = check.positive("constant", constant, allow_inf=False)
    return _masked_sum(x, mask, dim) / c


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    r"""Variance of the entries of ``x`` where ``mask`` is 1 (a scalar).

    .. math::

        \mathrm{var}_m(x) = \frac{1}{N - c} \sum_{i,t} m_{i,t} \big(x_{i,t} - \mathrm{mean}_m(x)\big)^2,
        \qquad N = \sum_{i,t} m_{i,t},\quad c = 1 \text{ if unbiased else } 0

    Args:
        x: tensor of any shape.
        mask: 0/1 tensor of the shape of ``x``, counting at least 2 entries when ``unbiased``.
        unbiased: Bessel's correction (divide by N - 1), as torch's ``var`` does by default.
    """
    check.tensor("x", x)
    check.mask("mask", mask, like=x, like_name="x", nonempty=True)
    m = mask.to(x.dtype)
    n = m.sum()
    if unbiased and float(n) < 2:
        raise ValueError(f"mask counts {int(n)} entry: the unbiased variance needs at least 2")
    return _masked_var(x, m, unbiased)


def _masked_var(x, m, unbiased=True):
    n = m.sum()
    mean = (x * m).sum() / n
    sum_sq = (((x - mean) ** 2) * m).sum()
    return sum_sq / (n - 1) if unbiased else sum_sq / n


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    r"""Normalise ``x`` to zero mean and unit variance, statistics over the masked entries only.

    .. math::

        \tilde{x}_{i,t} = m_{i,t}\,\frac{x_{i,t} - \mathrm{mean}_m(x)}{\sqrt{\mathrm{var}_m(x) + \epsilon}}

    The variance is the unbiased one and :math:`\epsilon` sits inside the square root, as in
    the ``masked_whiten`` of TRL's former PPO trainer and of verl (used for PPO and
    REINFORCE++ advantages; eps default 1e-8 as theirs). With ``shift_mean=False`` the mean
    is added back, :math:`\tilde{x} + \mathrm{mean}_m(x)` (also their convention): only the
    scale changes. Masked-out entries of the result are 0.

    Args:
        x: tensor of any shape.
        mask: 0/1 tensor of the shape of ``x`` counting at least 2 entries.
        shift_mean: subtract the mean (default) or keep it.
        eps: :math:`\epsilon \ge 0`, guards a zero variance.
    """
    check.tensor("x", x)
    check.mask("mask", mask, like=x, like_name="x", nonempty=True)
    check.positive("eps", eps, allow_zero=True, allow_inf=False)
    m = mask.to(x.dtype)
    if float(m.sum()) < 2:
        raise ValueError(f"mask counts {int(m.sum())} entry: whitening needs at least 2 (unbiased variance)")
    return _masked_whiten(x, m, shift_mean, eps)


def _masked_whiten(x, m, shift_mean=True, eps=1e-8):
    mean = (x * m).sum() / m.sum()
    var = _masked_var(x, m, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * m


# --------------------------------------------------------------------------- loss aggregation


def _normalisers(mask: torch.Tensor, mode: str, constant, total_tokens, total_sequences) -> tuple[float, float, float]:
    """Validate the aggregation arguments (mode already canonical).

    Returns (number of tokens N, number of sequences B, constant C or nan) of the full batch.
    """
    batch = mask.shape[0]
    own_tokens = float(mask.sum())

    if total_tokens is None:
        n_tokens = own_tokens
    else:
        n_tokens = check.positive("total_tokens", total_tokens, allow_inf=False)
        if mode == "token-mean" and n_tokens < own_tokens:
            raise ValueError(f"total_tokens={total_tokens} is smaller than the {int(own_tokens)} tokens counted by "
                             f"this mask (shape {tuple(mask.shape)}); it must be the full batch's count")
    if total_sequences is None:
        n_seqs = float(batch)
    else:
        if (not isinstance(total_sequences, int) or isinstance(total_sequences, bool)
                or total_sequences < max(batch, 1)):
            raise ValueError(f"total_sequences must be an integer >= the {batch} rows of mask "
                             f"(it is the full batch's number of sequences), got {total_sequences!r}")
        n_seqs = float(total_sequences)
    c = float("nan")
    if mode in ("seq-mean-token-sum-norm", "token-sum-norm"):
        if constant is None:
            what = "L_max, e.g. the maximum completion length" if mode == "seq-mean-token-sum-norm" else "C"
            raise ValueError(f"constant is required for mode={mode!r} (the normaliser {what}); "
                             f"it is never inferred from the padded width")
        c = check.positive("constant", constant, allow_inf=False)
    if batch == 0:
        raise ValueError(f"mask has no rows (shape {tuple(mask.shape)}): nothing to aggregate")
    # With the normaliser taken from this batch, an empty batch would be 0/0 (or a silent 0).
    own_normaliser = total_tokens is None if mode == "token-mean" else total_sequences is None
    if own_normaliser and own_tokens == 0:
        raise ValueError(f"mask is all zeros (shape {tuple(mask.shape)}): nothing to aggregate; "
                         f"pass the full batch's normalisers (total_tokens / total_sequences) when this is "
                         f"one micro-batch of a larger batch")
    return n_tokens, n_seqs, c


def _check_agg_kwargs(mask, mode, constant, total_tokens, total_sequences):
    mode = canonical_mode(mode)
    return (mode,) + _normalisers(mask, mode, constant, total_tokens, total_sequences)


def _agg(loss: torch.Tensor, mask: torch.Tensor, mode: str, n_tokens: float, n_seqs: float, c: float) -> torch.Tensor:
    """Unchecked aggregation (canonical mode, normalisers from :func:`_normalisers`)."""
    m = mask.to(loss.dtype)
    masked = loss * m
    if mode == "token-mean":
        return masked.sum() / n_tokens
    if mode == "seq-mean-token-mean":
        per_sequence = masked.sum(-1) / m.sum(-1).clamp(min=1.0)
        return per_sequence.sum() / n_seqs
    if mode == "seq-mean-token-sum":
        return masked.sum() / n_seqs
    if mode == "seq-mean-token-sum-norm":
        return masked.sum() / (n_seqs * c)
    return masked.sum() / c  # token-sum-norm


def aggregation_weights(mask: torch.Tensor, mode: str, *, constant: float | None = None,
                        total_tokens: float | None = None, total_sequences: int | None = None) -> torch.Tensor:
    r"""The weight :math:`w_{i,t}` of each token's loss in :func:`agg_loss`: aggregate :math:`= \sum_{i,t} w_{i,t}\ell_{i,t}`.

    With :math:`m` the mask, :math:`L_i = \sum_t m_{i,t}` the length of row :math:`i`,
    :math:`N = \sum_{i,t} m_{i,t}` the number of counted tokens, :math:`B` the number of rows
    and :math:`C` the explicit ``constant``:

    .. math::

        w_{i,t} = m_{i,t} \times \begin{cases}
            1 / N           & \text{token-mean (DAPO, Yu et al. 2025; TRL "bnpo", "dapo")} \\
            1 / (B \, L_i)  & \text{seq-mean-token-mean (GRPO, Shao et al. 2024; TRL "grpo")} \\
            1 / B           & \text{seq-mean-token-sum (TRL "luspo"; REINFORCE's unbiased sum)} \\
            1 / (B \, C)    & \text{seq-mean-token-sum-norm (Dr. GRPO, Liu et al. 2025; TRL "dr\_grpo", } C = L_{\max}) \\
            1 / C           & \text{token-sum-norm (a constant normaliser per micro-batch)}
        \end{cases}

    ``seq-mean-token-mean`` gives every *sequence* the same total weight, so a token of a short
    answer weighs more than a token of a long one; the others give every counted *token* the
    same weight. A row with no counted token has weight 0 but still counts in :math:`B`
    (its length is clamped to 1, as in TRL; verl leaves such rows out of :math:`B`).
    The older names (:data:`AGGREGATIONS`) are accepted: ``constant`` is ``seq-mean-token-sum-norm``.

    Micro-batches: pass ``total_tokens`` (:math:`N`) and ``total_sequences`` (:math:`B`) of the
    FULL batch; then the weights of the micro-batches are exactly the rows of the full batch's
    weights, and the sum of micro-batch aggregates equals the full-batch aggregate
    (``token-sum-norm`` needs nothing: :math:`C` is already a constant).

    Args:
        mask: (B, T) 0/1 mask.
        mode: one of :data:`AGG_MODES` (or :data:`AGGREGATIONS`).
        constant: :math:`C`, required for the two ``-norm`` modes (ignored otherwise).
        total_tokens: :math:`N` of the full batch (``token-mean`` only; default: this mask's).
        total_sequences: :math:`B` of the full batch (default: this mask's rows).

    Returns:
        (B, T) weights, in the mask's dtype if floating, else torch's default dtype.
    """
    check.tensor("mask", mask, ndim=2)
    check.mask("mask", mask)
    mode, n_tokens, n_seqs, c = _check_agg_kwargs(mask, mode, constant, total_tokens, total_sequences)
    m = mask.to(mask.dtype if mask.is_floating_point() else torch.get_default_dtype())
    if mode == "token-mean":
        return m / n_tokens
    if mode == "seq-mean-token-mean":
        return m / (n_seqs * m.sum(-1, keepdim=True).clamp(min=1.0))
    if mode == "seq-mean-token-sum":
        return m / n_seqs
    if mode == "seq-mean-token-sum-norm":
        return m / (n_seqs * c)
    return m / c


def agg_loss(loss: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean", *, constant: float | None = None,
             total_tokens: float | None = None, total_sequences: int | None = None) -> torch.Tensor:
    r"""Reduce a (B, T) per-token loss to a scalar (verl's ``agg_loss``; TRL's ``loss_type`` normalisers).

    .. math::

        \text{token-mean} &= \frac{\sum_{i,t} m_{i,t}\ell_{i,t}}{N} \\
        \text{seq-mean-token-mean} &= \frac{1}{B}\sum_i \frac{\sum_t m_{i,t}\ell_{i,t}}{\sum_t m_{i,t}} \\
        \text{seq-mean-token-sum} &= \frac{1}{B}\sum_i \sum_t m_{i,t}\ell_{i,t} \\
        \text{seq-mean-token-sum-norm} &= \frac{\sum_{i,t} m_{i,t}\ell_{i,t}}{B\, C} \\
        \text{token-sum-norm} &= \frac{\sum_{i,t} m_{i,t}\ell_{i,t}}{C}

    Each is :math:`\sum_{i,t} w_{i,t}\ell_{i,t}` with the weights of :func:`aggregation_weights`
    (which documents the modes, the papers, and the micro-batch normalisers). TRL's
    ``loss_type`` values map onto the modes by :data:`TRL_LOSS_TYPE_TO_AGG_MODE`.

    Args:
        loss: (B, T) per-token loss :math:`\ell`.
        mask: (B, T) 0/1 mask.
        mode: one of :data:`AGG_MODES` (or the older :data:`AGGREGATIONS`); unknown names
            raise a ``ValueError`` listing the valid ones.
        constant: :math:`C > 0` for the two ``-norm`` modes (never inferred).
        total_tokens, total_sequences: the full batch's :math:`N` and :math:`B` when ``loss``
            is one micro-batch of it (see :func:`aggregation_weights`).

    Returns:
        A scalar tensor.
    """
    check.tensor("loss", loss, ndim=2)
    check.mask("mask", mask, like=loss, like_name="loss")
    mode, n_tokens, n_seqs, c = _check_agg_kwargs(mask, mode, constant, total_tokens, total_sequences)
    return _agg(loss, mask, mode, n_tokens, n_seqs, c)


def aggregate(per_token_loss: torch.Tensor, mask: torch.Tensor, mode: str, *, constant: float | None = None,
              total_tokens: float | None = None, total_sequences: int | None = None) -> torch.Tensor:
    r"""The earlier name of :func:`agg_loss` (same arguments, same result).

    .. math::

        \operatorname{aggregate}(\ell, m) = \sum_{i,t} w_{i,t}\,\ell_{i,t}
    """
    check.tensor("per_token_loss", per_token_loss, ndim=2)
    check.mask("mask", mask, like=per_token_loss, like_name="per_token_loss")
    mode, n_tokens, n_seqs, c = _check_agg_kwargs(mask, mode, constant, total_tokens, total_sequences)
    return _agg(per_token_loss, mask, mode, n_tokens, n_seqs, c)
