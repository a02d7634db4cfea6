"""Numerically safe softmax shared by every kernel.

``safe_softmax`` subtracts the row maximum (so logits of +-1e4 never overflow) and returns an
all-zero row where every logit is ``-inf`` (a fully masked query), never NaN.
"""

from __future__ import annotations

from .._array import Array, Namespace
from .overflow import times_gain


def safe_softmax(s: Array, xp: Namespace, axis: int = -1, gain: tuple[float, ...] = ()) -> Array:
    """softmax(s) along ``axis``; rows that are entirely ``-inf`` give zeros instead of NaN.

    ``gain``: powers of two whose product multiplies ``s`` (logits held rescaled because the true ones
    overflow; see :func:`.overflow.times_gain`): ``softmax(g s) = exp(g (s - max s)) / sum``.
    """
    m = xp.max(s, axis=axis, keepdims=True)
    m = xp.where(xp.isinf(m), xp.zeros_like(m), m)
    e = xp.exp(s - m) if not gain else xp.exp(times_gain(s - m, gain, xp))
    z = xp.sum(e, axis=axis, keepdims=True)
    return e / xp.where(z == 0, xp.ones_like(z), z)


#: below this temperature ``-d/T`` could overflow for ordinary distances: the shifted form is used
SMALL_TEMPERATURE = 1e-3


def distance_logits(d: Array, temperature: float, mask: Array | None, xp: Namespace) -> Array:
    """The logits ``-d/T + mask`` of distance attention (``d >= 0``, ``(..., N)`` rows; ``mask`` prepared,
    bool True = attend or float added), safe for any ``T > 0``.

    For ``T >= SMALL_TEMPERATURE`` this is the plain formula. For smaller ``T`` (down to ``1e-300``)
    each row is first shifted by its smallest visible distance, which leaves the softmax unchanged:
    ``softmax(-d/T) = softmax(-(d - d_min)/T)``. The shifted logits are ``0`` at the nearest key and
    ``-(d - d_min)/T`` elsewhere, clamped at the dtype's most negative finite value (whose
    ``exp`` is 0 as that of the exact value is), so they never overflow to ``-inf`` for every key
    (which would read as a fully masked row) nor give ``0 * inf = NaN``.
    """
    from .masks import apply_mask
    from .overflow import dtype_max

    if temperature >= SMALL_TEMPERATURE:
        return apply_mask(d * (-1.0 / temperature), mask, xp)
    big = dtype_max(d.dtype)
    visible = None if mask is None else (mask if xp.isdtype(mask.dtype, "bool") else mask > -xp.inf)
    dv = d if visible is None else xp.where(visible, d, xp.asarray(xp.inf, dtype=d.dtype))
    dmin = xp.min(dv, axis=-1, keepdims=True)
    dmin = xp.where(xp.isinf(dmin), xp.zeros_like(dmin), dmin)
    inv = min(1.0 / temperature, big)
    diff = xp.clip(d - dmin, min=0.0, max=big / inv)
    return apply_mask(-(diff * inv), mask, xp)
