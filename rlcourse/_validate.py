"""Input checks shared by every public function of the package.

Every check raises ``ValueError`` that names the argument and says what was seen, so
that a wrong shape or a bad mask fails loudly instead of broadcasting into a silent NaN.
"""

from __future__ import annotations

from typing import Sequence

import torch


def tensor(name: str, x, *, ndim: int | Sequence[int] | None = None, finite: bool = True) -> torch.Tensor:
    """Check that ``x`` is a tensor (optionally of a given rank) with only finite values."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            raise ValueError(
                f"{name} must have {' or '.join(map(str, allowed))} dimension(s), "
                f"got shape {tuple(x.shape)}"
            )
    if finite and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf), shape {tuple(x.shape)}")
    return x


def same_shape(**tensors: torch.Tensor) -> None:
    """Check that every named tensor has the same shape."""
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(set(shapes.values())) > 1:
        seen = ", ".join(f"{k}{s}" for k, s in shapes.items())
        raise ValueError(f"shape mismatch: {seen} must all have the same shape")


def mask(name: str, m: torch.Tensor, *, like: torch.Tensor | None = None, like_name: str = "values",
         nonempty: bool = False) -> torch.Tensor:
    """Check a 0/1 mask (bool or numeric), optionally of the shape of ``like``.

    ``nonempty`` requires at least one 1 (a mean over it would otherwise be 0/0).
    """
    tensor(name, m)
    if like is not None and tuple(m.shape) != tuple(like.shape):
        raise ValueError(f"{name} has shape {tuple(m.shape)} but {like_name} has shape {tuple(like.shape)}")
    if m.dtype != torch.bool and not bool(((m == 0) | (m == 1)).all()):
        vals = torch.unique(m.detach().flatten())[:5].tolist()
        raise ValueError(f"{name} must contain only 0 and 1, found values such as {vals}")
    if nonempty and not bool(m.any()):
        raise ValueError(f"{name} is all zeros (shape {tuple(m.shape)}): nothing to average over")
    return m


def positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    if not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{name} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return float(value)


def in_range(name: str, value: float, low: float, high: float, *, closed: bool = True) -> float:
    if not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{name} must be a number, got {value!r}")
    ok = low <= value <= high if closed else low < value < high
    if not ok:
        br = "[]" if closed else "()"
        raise ValueError(f"{name} must lie in {br[0]}{low}, {high}{br[1]}, got {value}")
    return float(value)


def choice(name: str, value: str, options: Sequence[str]) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {list(options)}, got {value!r}")
    return value


def group_size(name: str, g: int, batch: int, *, minimum: int = 2) -> int:
    if not isinstance(g, int) or g < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {g!r}")
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
