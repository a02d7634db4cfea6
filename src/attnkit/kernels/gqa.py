"""Grouped-query and multi-query attention as broadcasting over a group axis.

Grouped-query attention (Ainslie et al. 2023, "GQA: Training Generalized Multi-Query Transformer
Models from Multi-Head Checkpoints") lets ``Hkv`` key/value heads serve ``H`` query heads,
``Hkv | H``; multi-query attention (Shazeer 2019, "Fast Transformer Decoding: One Write-Head is All
You Need") is ``Hkv = 1``. With ``G = H / Hkv``, query head ``h`` uses key/value head ``h // G``,
the convention of torch's ``scaled_dot_product_attention(..., enable_gqa=True)`` (``repeat_interleave``
of the key/value heads).

Every attention kernel here broadcasts its batch dimensions, so GQA needs no kernel of its own:
heads-first ``q: (..., H, L, D)`` becomes ``(..., Hkv, G, L, D)``, ``k, v: (..., Hkv, L, X)`` become
``(..., Hkv, 1, L, X)`` (views: the keys and values are never copied per group), the kernel runs
over the extra axis, and its ``(..., Hkv, G, L, X)`` result is merged back to ``(..., H, L, X)``.
"""

from __future__ import annotations

from .._array import Array, Namespace, shape_str
from ..errors import ShapeError

__all__ = ["kv_groups", "needs_grouping", "group_queries", "group_keys", "group_slopes", "ungroup"]


def kv_groups(q: Array, k: Array, v: Array | None = None) -> int:
    """``G = H / Hkv`` for heads-first ``q: (..., H, Lq, D)``, ``k, v: (..., Hkv, Lk, X)`` (1: no grouping).

    Raises :class:`ShapeError` when ``Hkv`` does not divide ``H`` or keys and values differ in heads.
    """
    if q.ndim < 3 or k.ndim < 3:
        return 1
    hq, hk = int(q.shape[-3]), int(k.shape[-3])
    if v is not None and v.ndim >= 3 and int(v.shape[-3]) != hk:
        raise ShapeError(f"value: expected {hk} heads (as key), got {int(v.shape[-3])} (shape {shape_str(v.shape)})")
    if hk == hq:
        return 1
    if hk == 0 or hq % hk:
        raise ShapeError(
            f"key: expected a number of key/value heads that divides the {hq} query heads (grouped-query attention), "
            f"got {hk} (shape {shape_str(k.shape)})"
        )
    return hq // hk


def needs_grouping(q: Array, k: Array, v: Array | None = None) -> bool:
    """True when ``Hkv`` is neither ``H`` nor 1 (one key/value head already broadcasts over the query heads)."""
    return kv_groups(q, k, v) > 1 and int(k.shape[-3]) > 1


def group_queries(x: Array | None, hk: int, xp: Namespace) -> Array | None:
    """Query-side ``(..., H, L, X)`` -> ``(..., Hkv, G, L, X)``; a mask with one head (or fewer than 3
    axes) gets the group axis by broadcasting. ``None`` stays ``None``."""
    if x is None or x.ndim < 3:
        return x
    if int(x.shape[-3]) == 1:
        return xp.expand_dims(x, axis=-3)
    return xp.reshape(x, (*x.shape[:-3], hk, int(x.shape[-3]) // hk, *x.shape[-2:]))


def group_keys(x: Array, xp: Namespace) -> Array:
    """Key/value-side ``(..., Hkv, L, X)`` -> ``(..., Hkv, 1, L, X)`` (a view)."""
    return xp.expand_dims(x, axis=-3)


def ungroup(x: Array, xp: Namespace) -> Array:
    """``(..., Hkv, G, L, X)`` -> ``(..., H, L, X)``."""
    return xp.reshape(x, (*x.shape[:-4], int(x.shape[-4]) * int(x.shape[-3]), *x.shape[-2:]))


def group_slopes(slopes: Array | None, hk: int, xp: Namespace) -> Array | None:
    """Per-query-head values ``(..., H)`` (ALiBi slopes) -> ``(..., Hkv, G)``; ``(..., 1)`` -> ``(..., 1, 1)``."""
    if slopes is None:
        return None
    slopes = xp.asarray(slopes)
    if slopes.ndim == 0 or int(slopes.shape[-1]) == 1:
        return xp.reshape(slopes, (*slopes.shape[:-1], 1, 1)) if slopes.ndim else slopes
    return xp.reshape(slopes, (*slopes.shape[:-1], hk, int(slopes.shape[-1]) // hk))
