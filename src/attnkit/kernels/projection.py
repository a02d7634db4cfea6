"""Affine projections and head splitting for model-level layers.

``linear(x, W, b) = x W^T + b`` with ``W`` of shape (out, in), as ``torch.nn.Linear``.
"""

from __future__ import annotations

from .._array import Array, Namespace

__all__ = ["linear", "split_heads", "merge_heads"]


def linear(x: Array, w: Array, b: Array | None, xp: Namespace) -> Array:
    """``x W^T + b`` over the last axis of ``x``."""
    y = x @ xp.matrix_transpose(w)
    return y + b if b is not None else y


def split_heads(x: Array, heads: int, xp: Namespace) -> Array:
    """``(..., L, H*d) -> (..., H, L, d)``."""
    *lead, length, width = x.shape
    return xp.moveaxis(xp.reshape(x, (*lead, length, heads, width // heads)), -2, -3)


def merge_heads(x: Array, xp: Namespace) -> Array:
    """``(..., H, L, d) -> (..., L, H*d)``."""
    x = xp.moveaxis(x, -3, -2)
    *lead, length, heads, d = x.shape
    return xp.reshape(x, (*lead, length, heads * d))
