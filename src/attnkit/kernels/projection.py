"""Affine projections and head splitting for model-level layers.

``linear(x, W, b) = x W^T + b`` with ``W`` of shape (out, in), as ``torch.nn.Linear``.
"""

from __future__ import annotations

from .._array import Array, Namespace, moveaxis, reshape_lead

__all__ = ["linear", "split_heads", "merge_heads"]


def linear(x: Array, w: Array, b: Array | None, xp: Namespace) -> Array:
    """``x W^T + b`` over the last axis of ``x``."""
    y = x @ xp.matrix_transpose(w)
    return y + b if b is not None else y


def split_heads(x: Array, heads: int, xp: Namespace) -> Array:
    """``(..., L, H*d) -> (..., H, L, d)``."""
    width = int(x.shape[-1])
    return moveaxis(reshape_lead(x, x.ndim - 1, (heads, width // heads), xp), -2, -3, xp)


def merge_heads(x: Array, xp: Namespace) -> Array:
    """``(..., H, L, d) -> (..., L, H*d)``."""
    x = moveaxis(x, -3, -2, xp)
    heads, d = x.shape[-2], x.shape[-1]
    return reshape_lead(x, x.ndim - 2, (-1,) if heads is None or d is None else (int(heads) * int(d),), xp)
