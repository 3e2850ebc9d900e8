"""Input checks shared by every public function of the package.

Every check raises ``ValueError`` that names the argument and says what was seen, so
that a wrong shape or a bad mask fails loudly instead of broadcasting into a silent NaN.

Validation happens once, at the boundary: a public function checks its arguments and then
calls unchecked private helpers (``_name``) for the arithmetic, so a loss built from several
primitives does not re-check the same tensor at every level. Each tensor costs one fused
reduction (``aminmax``; a float mask one more, a dot product), and the reductions of all the
tensors of one call are brought to the host together, in one synchronisation (:func:`together`);
``benchmarks/validation_overhead.py`` measures the total against the arithmetic.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch


def _is_number(value) -> bool:
    """A real number, not a bool (``True`` is an ``int`` in Python, but never a discount or a coefficient)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _structure(name: str, x, ndim) -> None:
    """The checks that need no data: a tensor, not on the meta device, of an allowed rank."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type == "meta":
        raise ValueError(f"{name} is a meta-device tensor (shape {tuple(x.shape)}, no data); "
                         f"materialise it (e.g. .to('cpu')) before calling")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            raise ValueError(
                f"{name} must have {' or '.join(map(str, allowed))} dimension(s), "
                f"got shape {tuple(x.shape)}"
            )


def tensor(name: str, x, *, ndim: int | Sequence[int] | None = None, finite: bool = True) -> torch.Tensor:
    """Check that ``x`` is a tensor (optionally of a given rank) with only finite values.

    Meta-device tensors (shapes without data) are rejected here, with the argument's name,
    rather than failing later inside ``.item()``.
    """
    _structure(name, x, ndim)
    if finite:
        together(("finite", name, x))
    return x


def _reductions(kind: str, x: torch.Tensor) -> list[torch.Tensor]:
    """The 0-dim reductions a check of ``kind`` needs from ``x`` (none for an empty or non-float tensor)."""
    if x.requires_grad:
        x = x.detach()
    if x.numel() == 0 or (kind != "mask" and not x.is_floating_point()):
        return []
    if kind == "mask" and x.dtype == torch.bool:
        return [x.sum()]
    lo_hi = [x, x] if x.dim() == 0 else list(torch.aminmax(x))
    if kind == "mask" and x.is_floating_point():
        flat = x.reshape(-1)
        # On [0, 1], m (1 - m) >= 0 with equality exactly at 0 and 1, so the sum is 0 iff every entry
        # is 0 or 1 (NaN fails the range).
        return lo_hi + [torch.dot(flat, 1 - flat)]
    return lo_hi


def _non_finite(name: str, x: torch.Tensor) -> ValueError:
    bad = int((~torch.isfinite(x.detach())).sum())
    return ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf), shape {tuple(x.shape)}")


def _judge(kind: str, name: str, x: torch.Tensor, vals: list[float], nonempty: bool) -> None:
    """Raise the check's ``ValueError`` from the reduced values ``vals`` (see :func:`_reductions`)."""
    if kind == "mask":
        if x.numel() == 0:
            if nonempty:
                raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): nothing to average over")
            return
        if x.dtype == torch.bool:
            any_one = vals[0] > 0
        else:
            lo, hi = vals[0], vals[1]
            if not (lo >= 0 and hi <= 1 and (len(vals) == 2 or vals[2] == 0.0)):
                shown = torch.unique(x.detach().flatten())[:5].tolist()
                raise ValueError(f"{name} must contain only 0 and 1, found values such as {shown}")
            any_one = hi == 1
        if nonempty and not any_one:
            raise ValueError(f"{name} is all zeros (shape {tuple(x.shape)}): nothing to average over")
        return
    if not vals:
        return
    lo, hi = vals
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise _non_finite(name, x)
    if kind == "logprobs" and hi > logprob_tolerance(x.dtype):
        raise ValueError(f"{name} must be log-probabilities (<= 0), but its largest entry is {hi:.4g} "
                         f"(logits or probabilities?)")


def together(*checks: tuple) -> None:
    """Run the data checks of several tensors with one host synchronisation.

    Each check is ``(kind, name, x)`` or ``(kind, name, x, nonempty)`` with ``kind`` one of
    ``"finite"`` (only finite values), ``"logprobs"`` (finite and <= 0 up to rounding) or
    ``"mask"`` (only 0 and 1; ``nonempty``: at least one 1). Structural checks (type, rank,
    shapes) are the caller's, made before. The errors are those of :func:`tensor`,
    :func:`logprobs` and :func:`mask`, in the order of ``checks``.
    """
    parts, counts = [], []
    for c in checks:
        r = _reductions(c[0], c[2])
        parts += r
        counts.append(len(r))
    vals: list[float] = []
    if parts:
        try:  # one device: stack promotes the dtypes (int64 counts of a bool mask, float16 ... float64)
            vals = torch.stack(parts).tolist()
        except RuntimeError:  # several devices
            vals = torch.stack([p.to("cpu", torch.float64) for p in parts]).tolist()
    i = 0
    for c, n in zip(checks, counts):
        _judge(c[0], c[1], c[2], vals[i:i + n], bool(c[3]) if len(c) > 3 else False)
        i += n


def nonempty(name: str, x: torch.Tensor) -> torch.Tensor:
    """Check that ``x`` has at least one element (a mean over nothing is 0/0)."""
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): nothing to compute a loss over")
    return x


@functools.lru_cache(maxsize=None)
def logprob_tolerance(dtype: torch.dtype) -> float:
    """Rounding slack for "log-probabilities are <= 0", by dtype: 4 machine epsilons.

    (bf16: 0.031, float16: 0.0039, float32: 4.8e-7, float64: 8.9e-16.)
    """
    if not dtype.is_floating_point:
        return 0.0
    return 4 * torch.finfo(dtype).eps


def normalisation_tolerance(dtype: torch.dtype, vocab: int) -> float:
    """Slack for ``|logsumexp(logp)| = 0`` of a log-softmax over ``vocab`` entries, by dtype.

    Each entry of a log-softmax computed with machine epsilon u carries a relative rounding
    error of about u, so its logsumexp is off by up to about (4 + log V) u: bf16 (u = 2^-7)
    needs ~0.05, which a fixed 1e-4 would wrongly reject. Floors: 1e-4 for 16/32-bit floats
    (logits of magnitude ~100 lose that much in float32), 1e-8 for float64.
    """
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    floor = 1e-8 if dtype == torch.float64 else 1e-4
    return max(floor, (4 + math.log(max(vocab, 1))) * eps)


def logprobs(name: str, x, *, ndim: int | Sequence[int] | None = None) -> torch.Tensor:
    """Check a tensor of log-probabilities: floating point, finite, every entry <= 0 (up to rounding).

    Integer tensors and positive entries are rejected: both are a sign that token ids,
    probabilities or logits were passed where log-probs are expected.
    """
    _logprob_structure(name, x, ndim)
    together(("logprobs", name, x))
    return x


def _logprob_structure(name: str, x, ndim=None) -> None:
    if isinstance(x, torch.Tensor) and x.device.type != "meta" and not x.is_floating_point():
        raise ValueError(f"{name} must be floating-point log-probabilities, got dtype {x.dtype} "
                         f"(token ids or counts?)")
    _structure(name, x, ndim)


def same_shape(**tensors: torch.Tensor) -> None:
    """Check that every named tensor has the same shape."""
    first, *rest = tensors.values()
    if all(v.shape == first.shape for v in rest):
        return
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(set(shapes.values())) > 1:
        seen = ", ".join(f"{k}{s}" for k, s in shapes.items())
        raise ValueError(f"shape mismatch: {seen} must all have the same shape")


def mask(name: str, m: torch.Tensor, *, like: torch.Tensor | None = None, like_name: str = "values",
         nonempty: bool = False) -> torch.Tensor:
    """Check a 0/1 mask (bool or numeric), optionally of the shape of ``like``.

    ``nonempty`` requires at least one 1 (a mean over it would otherwise be 0/0).
    """
    _mask_structure(name, m, like, like_name)
    together(("mask", name, m, nonempty))
    return m


def _mask_structure(name: str, m, like=None, like_name: str = "values") -> None:
    _structure(name, m, None)
    if like is not None and tuple(m.shape) != tuple(like.shape):
        raise ValueError(f"{name} has shape {tuple(m.shape)} but {like_name} has shape {tuple(like.shape)}")


def integer(name: str, value, minimum: int = 1, *, none_ok: bool = False):
    """``value`` if it is an ``int`` (not bool) >= ``minimum`` (None when ``none_ok``), else ``ValueError`` naming it.

    The one place that decides "is this an integer >= k": a float such as ``2.0`` is refused
    (a count, a step or a size is never fractional), and so is ``True``.
    """
    if value is None and none_ok:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        what = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
        raise ValueError(f"{name} must be {what}{' or None' if none_ok else ''}, got {value!r}")
    return value


def number(name: str, value, minimum: float | None = 0.0, maximum: float | None = None, *, strict: bool = True,
           none_ok: bool = False, allow_inf: bool = False):
    """``float(value)`` if it is a number in the range, else ``ValueError`` naming it.

    The one place that decides "is this a number in range": an ``int`` or ``float``, not bool, not
    NaN, and finite unless ``allow_inf`` (``lr=inf`` or ``temperature=inf`` would train nothing, or
    crash deep inside; a clip range of ``inf`` is a legitimate "no clipping", hence the option).
    The range is ``minimum < value < maximum`` when ``strict``, ``minimum <= value <= maximum``
    otherwise; a bound of None is absent. None itself passes (as None) when ``none_ok``.
    """
    if value is None and none_ok:
        return None
    if not _is_number(value) or value != value or (not allow_inf and math.isinf(value)):
        what = "a number (not NaN)" if allow_inf else "a finite number"
        raise ValueError(f"{name} must be {what}{' or None' if none_ok else ''}, got {value!r}")
    below = minimum is not None and (value <= minimum if strict else value < minimum)
    above = maximum is not None and (value >= maximum if strict else value > maximum)
    if below or above:
        if minimum is not None and maximum is not None:
            lo, hi = "()" if strict else "[]"
            need = f"lie in {lo}{minimum}, {maximum}{hi}"
        elif minimum is not None:
            need = f"be {'>' if strict else '>='} {minimum}"
        else:
            need = f"be {'<' if strict else '<='} {maximum}"
        raise ValueError(f"{name} must {need}, got {value!r}")
    return float(value)


def positive(name: str, value: float, *, allow_zero: bool = False, allow_inf: bool = True) -> float:
    """:func:`number` ``> 0`` (``>= 0`` with ``allow_zero``); ``+inf`` passes unless ``allow_inf=False``."""
    return number(name, value, 0.0, strict=not allow_zero, allow_inf=allow_inf)


def in_range(name: str, value: float, low: float, high: float, *, closed: bool = True) -> float:
    """:func:`number` in ``[low, high]`` (``(low, high)`` when not ``closed``)."""
    return number(name, value, low, high, strict=not closed)


def choice(name: str, value: str, options: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {list(options)}, got {value!r}")
    return value


def group_size(name: str, g: int, batch: int, *, minimum: int = 2) -> int:
    integer(name, g, minimum)
    if batch % g != 0:
        raise ValueError(f"{name}={g} does not divide the batch size {batch}")
    return g


def probabilities(name: str, p: torch.Tensor, *, dim: int = -1, atol: float = 1e-6) -> torch.Tensor:
    """Check non-negative entries that sum to 1 along ``dim``."""
    tensor(name, p)
    if bool((p < 0).any()):
        raise ValueError(f"{name} has negative entries (min {float(p.min()):.3g})")
    s = p.sum(dim)
    if not torch.allclose(s, torch.ones_like(s), atol=atol):
        worst = float((s - 1).abs().max())
        raise ValueError(f"{name} must sum to 1 along dim {dim}; largest deviation {worst:.3g}")
    return p
