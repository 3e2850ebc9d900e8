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

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "constant")


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

        \mathcal{H}\big(\pi(\cdot \mid s_t)\big) = -\sum_{v=1}^{V} \pi(v \mid s_t) \log \pi(v \mid s_t),
        \qquad \pi(\cdot \mid s_t) = \mathrm{softmax}(z_t / T)

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
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


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
    masked = x * mask.to(x.dtype)
    return masked.sum() if dim is None else masked.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    r"""Mean of the entries of ``x`` where ``mask`` is 1.

    .. math::

        \mathrm{mean}_m(x) = \frac{\sum_{i,t} m_{i,t}\, x_{i,t}}{\sum_{i,t} m_{i,t}}

    Args:
        x: tensor of any shape.
        mask: 0/1 tensor of the shape of ``x``; it must count at least one entry (per slice
            along ``dim`` when ``dim`` is given), since a mean over nothing is 0/0.
        dim: ``None`` averages everything (a scalar); an int averages over that dimension.
    """
    check.tensor("x", x)
    check.mask("mask", mask, like=x, like_name="x", nonempty=True)
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum()
    counts = m.sum(dim)
    if bool((counts == 0).any()):
        raise ValueError(f"mask has {int((counts == 0).sum())} all-zero slice(s) along dim {dim} "
                         f"(mask shape {tuple(mask.shape)}): nothing to average over")
    return (x * m).sum(dim) / counts


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
    mean = (x * m).sum() / n
    sum_sq = (((x - mean) ** 2) * m).sum()
    return sum_sq / (n - 1) if unbiased else sum_sq / n


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    r"""Normalise ``x`` to zero mean and unit variance, statistics over the masked entries only.

    .. math::

        \tilde{x}_{i,t} = m_{i,t}\,\frac{x_{i,t} - \mathrm{mean}_m(x)}{\sqrt{\mathrm{var}_m(x) + \epsilon}}

    The variance is the unbiased one and :math:`\epsilon` sits inside the square root, as in
    TRL's and verl's ``masked_whiten`` (used for PPO and REINFORCE++ advantages). With
    ``shift_mean=False`` the mean is added back, :math:`\tilde{x} + \mathrm{mean}_m(x)` (also
    their convention): only the scale changes. Masked-out entries of the result are 0.

    Args:
        x: tensor of any shape.
        mask: 0/1 tensor of the shape of ``x`` counting at least 2 entries.
        shift_mean: subtract the mean (default) or keep it.
        eps: :math:`\epsilon \ge 0`, guards a zero variance.
    """
    check.tensor("x", x)
    check.mask("mask", mask, like=x, like_name="x", nonempty=True)
    check.positive("eps", eps, allow_zero=True)
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


# --------------------------------------------------------------------------- loss aggregation


def _normalisers(mask: torch.Tensor, mode: str, constant, total_tokens, total_sequences) -> tuple[float, float]:
    """Validate the aggregation arguments; return (number of tokens, number of sequences) of the full batch."""
    check.tensor("mask", mask, ndim=2)
    check.mask("mask", mask)
    check.choice("mode", mode, AGGREGATIONS)
    batch = mask.shape[0]
    own_tokens = int(mask.sum())

    if total_tokens is None:
        n_tokens = float(own_tokens)
    else:
        n_tokens = check.positive("total_tokens", total_tokens)
        if n_tokens < own_tokens:
            raise ValueError(f"total_tokens={total_tokens} is smaller than the {own_tokens} tokens counted by "
                             f"this mask (shape {tuple(mask.shape)}); it must be the full batch's count")
    if total_sequences is None:
        n_seqs = float(batch)
    else:
        if not isinstance(total_sequences, int) or total_sequences < max(batch, 1):
            raise ValueError(f"total_sequences must be an integer >= the {batch} rows of mask "
                             f"(it is the full batch's number of sequences), got {total_sequences!r}")
        n_seqs = float(total_sequences)
    if mode == "constant":
        if constant is None:
            raise ValueError("constant is required for mode='constant' (the maximum completion length L_max)")
        check.positive("constant", constant)

    # With the normaliser taken from this batch, an empty batch would be 0/0 (or a silent 0).
    own_normaliser = total_tokens is None if mode == "token_mean" else total_sequences is None
    if own_normaliser and own_tokens == 0:
        raise ValueError(f"mask is all zeros (shape {tuple(mask.shape)}): nothing to aggregate; "
                         f"pass the full batch's normalisers when this is one micro-batch of a larger batch")
    return n_tokens, n_seqs


def aggregation_weights(mask: torch.Tensor, mode: str, *, constant: float | None = None,
                        total_tokens: float | None = None, total_sequences: int | None = None) -> torch.Tensor:
    r"""The weight :math:`w_{i,t}` of each token's loss in :func:`aggregate`: aggregate :math:`= \sum_{i,t} w_{i,t}\ell_{i,t}`.

    With :math:`m` the mask, :math:`L_i = \sum_t m_{i,t}` the length of row :math:`i`,
    :math:`N = \sum_{i,t} m_{i,t}` the number of counted tokens and :math:`B` the number of rows:

    .. math::

        w_{i,t} = m_{i,t} \times \begin{cases}
            1 / N                  & \text{token\_mean (DAPO, Yu et al. 2025; TRL "dapo", "bnpo")} \\
            1 / (B \, L_i)         & \text{seq\_mean\_token\_mean (GRPO, Shao et al. 2024; TRL "grpo")} \\
            1 / B                  & \text{seq\_mean\_token\_sum} \\
            1 / (B \, L_{\max})    & \text{constant (Dr. GRPO, Liu et al. 2025; TRL "dr\_grpo")}
        \end{cases}

    ``seq_mean_token_mean`` gives every *sequence* the same total weight, so a token of a short
    answer weighs more than a token of a long one; the other three give every counted *token*
    the same weight. A row with no counted token has weight 0 but still counts in :math:`B`
    (its length is clamped to 1, as in TRL).

    Micro-batches: pass ``total_tokens`` (:math:`N`) and ``total_sequences`` (:math:`B`) of the
    FULL batch; then the weights of the micro-batches are exactly the rows of the full batch's
    weights, and the sum of micro-batch aggregates equals the full-batch aggregate.

    Args:
        mask: (B, T) 0/1 mask.
        mode: one of :data:`AGGREGATIONS`.
        constant: :math:`L_{\max}`, required for ``mode="constant"`` (ignored otherwise).
        total_tokens: :math:`N` of the full batch (``token_mean`` only; default: this mask's).
        total_sequences: :math:`B` of the full batch (other modes; default: this mask's rows).

    Returns:
        (B, T) weights, in the mask's dtype if floating, else torch's default dtype.
    """
    n_tokens, n_seqs = _normalisers(mask, mode, constant, total_tokens, total_sequences)
    m = mask.to(mask.dtype if mask.is_floating_point() else torch.get_default_dtype())
    if mode == "token_mean":
        return m / n_tokens
    if mode == "seq_mean_token_mean":
        lengths = m.sum(-1, keepdim=True).clamp(min=1.0)
        return m / (n_seqs * lengths)
    if mode == "seq_mean_token_sum":
        return m / n_seqs
    return m / (n_seqs * float(constant))


def aggregate(per_token_loss: torch.Tensor, mask: torch.Tensor, mode: str, *, constant: float | None = None,
              total_tokens: float | None = None, total_sequences: int | None = None) -> torch.Tensor:
    r"""Reduce a (B, T) per-token loss to a scalar, in one of four ways.

    .. math::

        \text{token\_mean} &= \frac{\sum_{i,t} m_{i,t}\ell_{i,t}}{\sum_{i,t} m_{i,t}} \\
        \text{seq\_mean\_token\_mean} &= \frac{1}{B}\sum_i \frac{\sum_t m_{i,t}\ell_{i,t}}{\sum_t m_{i,t}} \\
        \text{seq\_mean\_token\_sum} &= \frac{1}{B}\sum_i \sum_t m_{i,t}\ell_{i,t} \\
        \text{constant} &= \frac{\sum_{i,t} m_{i,t}\ell_{i,t}}{B\, L_{\max}}

    Each is :math:`\sum_{i,t} w_{i,t}\ell_{i,t}` with the weights of :func:`aggregation_weights`
    (which documents the modes, the papers, and the micro-batch normalisers).

    Args:
        per_token_loss: (B, T) :math:`\ell`.
        mask: (B, T) 0/1 mask.
        mode: one of :data:`AGGREGATIONS`.
        constant, total_tokens, total_sequences: see :func:`aggregation_weights`.

    Returns:
        A scalar tensor.
    """
    check.tensor("per_token_loss", per_token_loss, ndim=2)
    check.mask("mask", mask, like=per_token_loss, like_name="per_token_loss")
    n_tokens, n_seqs = _normalisers(mask, mode, constant, total_tokens, total_sequences)
    m = mask.to(per_token_loss.dtype)
    masked = per_token_loss * m
    if mode == "token_mean":
        return masked.sum() / n_tokens
    if mode == "seq_mean_token_mean":
        per_sequence = masked.sum(-1) / m.sum(-1).clamp(min=1.0)
        return per_sequence.sum() / n_seqs
    if mode == "seq_mean_token_sum":
        return masked.sum() / n_seqs
    return masked.sum() / (n_seqs * float(constant))
