"""Numerically safe softmax shared by every kernel.

``safe_softmax`` subtracts the row maximum (so logits of +-1e4 never overflow) and returns an
all-zero row where every logit is ``-inf`` (a fully masked query), never NaN.
"""

from __future__ import annotations

from .._array import Array, Namespace


def safe_softmax(s: Array, xp: Namespace, axis: int = -1) -> Array:
    """softmax(s) along ``axis``; rows that are entirely ``-inf`` give zeros instead of NaN."""
    m = xp.max(s, axis=axis, keepdims=True)
    m = xp.where(xp.isinf(m), xp.zeros_like(m), m)
    e = xp.exp(s - m)
    z = xp.sum(e, axis=axis, keepdims=True)
    return e / xp.where(z == 0, xp.ones_like(z), z)
