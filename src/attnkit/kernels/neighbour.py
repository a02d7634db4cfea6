"""Scaled dot-product attention of queries over their own neighbour sets.

    out = softmax(scale * keys q + bias) values,   scale = 1/sqrt(d)   (Vaswani et al. 2017)

``q: (..., d)``, ``keys: (..., k, d)``, ``values: (..., k, dv)``, optional ``mask: (..., k)`` (bool,
True = attend, or float, added). Batch dimensions broadcast, so each query may have its own
neighbours, or many queries may share one key set. A query whose neighbours are all masked gives zeros.
"""

from __future__ import annotations

import numpy as np

from .._array import Array, Namespace, is_numpy, is_traced
from . import overflow
from .masks import apply_mask
from .softmax import safe_softmax

__all__ = ["neighbour_attention", "neighbour_weights"]


def neighbour_weights(q: Array, keys: Array, *, xp: Namespace, scale: float, mask: Array | None = None, _checked: bool = False) -> Array:
    """Attention weights ``(..., k)`` of each query over its neighbours (``_checked``: the caller has
    already bounded the logits with :func:`overflow.at_risk`)."""
    if not _checked and overflow.at_risk(xp, q.dtype, logits=(q, keys, q.shape[-1], scale)):  # logits past the dtype's range: see .overflow
        return overflow.run_wider(
            lambda q, keys, mask: neighbour_weights(q, keys, xp=xp, scale=scale, mask=mask), xp, (q, keys, mask), dtype=q.dtype, names="query, key"
        )
    if is_numpy(xp) and q.ndim == 1 and keys.ndim == 2:
        s = keys @ (q * scale)  # one query, one key set: a GEMV
    else:
        s = (q[..., None, :] @ xp.matrix_transpose(keys))[..., 0, :] * scale
    s = apply_mask(s, mask, xp)
    if is_numpy(xp):
        return _softmax_numpy(s)
    return safe_softmax(s, xp)


def _softmax_numpy(s: np.ndarray) -> np.ndarray:
    """In-place NumPy twin of :func:`safe_softmax` (same formula, fewer temporaries)."""
    m = s.max(axis=-1, keepdims=True)
    m[np.isinf(m)] = 0.0
    s = np.subtract(s, m, out=s if s.flags.writeable else None)
    np.exp(s, out=s)
    z = s.sum(axis=-1, keepdims=True)
    z[z == 0] = 1.0
    s /= z
    return s


def neighbour_attention(q: Array, keys: Array, values: Array, *, xp: Namespace, scale: float, mask: Array | None = None) -> Array:
    """Output ``(..., dv)``: each query's softmax-weighted average of its neighbour values."""
    if overflow.at_risk(xp, q.dtype, logits=(q, keys, q.shape[-1], scale), values=(values, keys.shape[-2])):  # see .overflow
        return overflow.run_wider(
            lambda q, keys, values, mask: neighbour_attention(q, keys, values, xp=xp, scale=scale, mask=mask),
            xp,
            (q, keys, values, mask),
            dtype=q.dtype,
            names="query, key",
        )
    w = neighbour_weights(q, keys, xp=xp, scale=scale, mask=mask, _checked=True)  # the logits were bounded just above
    if is_numpy(xp) and w.ndim == 1 and values.ndim == 2:
        out = w @ values
    else:
        out = (w[..., None, :] @ values)[..., 0, :]
    if (mask is None or str(mask.dtype).endswith("bool")) and not is_traced(out):
        # softmax weights over value rows in range: the forward's output check has nothing to find (a float
        # mask could overflow the logits; see overflow.note_convex_combination). Not in a traced graph, whose
        # lengths may be symbolic and whose values are checked nowhere.
        overflow.note_convex_combination(out, values, int(keys.shape[-2]))
    return out
