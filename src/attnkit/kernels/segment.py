"""Segment reductions over an edge list: segment max / sum / softmax.

A *segment* is the set of edges with the same target node: ``seg[e]`` is edge ``e``'s target in
``[0, num)``. Segment softmax normalises edge scores within each target's segment,

    alpha_e = exp(s_e - m_seg(e)) / sum_{e' : seg(e') = seg(e)} exp(s_e' - m_seg(e)),

with ``m`` the per-segment maximum (so large scores never overflow); an edge scored ``-inf`` gets
weight 0, and a segment whose edges are all ``-inf`` gives zeros, never NaN. This is the softmax of
graph attention over each node's incoming edges (Veličković et al. 2018).

The array API has no scatter, so the reductions are backend-specific: NumPy uses ``ufunc.at``, torch
``scatter_reduce``/``index_add`` (autograd flows through the sums; the subtracted maximum is a constant
that cancels mathematically, so it is detached), JAX ``.at[].add``/``.at[].max`` (traceable). Any other
library (CuPy, array_api_strict, ...) computes in its own namespace and on its own device from a
one-hot ``(num, E)`` membership matrix: the sum as a matrix product, the max as a masked maximum
(memory ``num * E`` times the row width; the values must be finite, as scores and messages are).
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat
import numpy as np

from .._array import Array, Namespace, is_numpy, is_torch

__all__ = ["segment_max", "segment_sum", "segment_softmax"]


def _is_jax(x: Array) -> bool:
    return type(x).__module__.split(".")[0] in ("jax", "jaxlib")


def _onehot(seg: Array, num: int, dtype: Any, xp: Namespace, device: Any) -> Array:
    """``(num, E)``: ``[n, e] = (seg[e] == n)``, as ``dtype`` (bool with ``dtype=None``)."""
    hit = xp.arange(num, device=device)[:, None] == xp.astype(seg, xp.int64)[None, :]
    return hit if dtype is None else xp.astype(hit, dtype)


def _seg_in(seg: Any, x: Array, xp: Namespace) -> Array:
    """``seg`` as an int64 array of ``x``'s library on ``x``'s device."""
    dev = array_api_compat.device(x)
    if array_api_compat.is_array_api_obj(seg) and not isinstance(seg, np.ndarray):
        return seg if array_api_compat.device(seg) == dev else array_api_compat.to_device(seg, dev)
    return xp.asarray(np.asarray(seg, dtype=np.int64), device=dev)


def segment_sum(x: Array, seg: Any, num: int, xp: Namespace) -> Array:
    """``out[n] = sum_{e : seg[e] = n} x[e]``, shape ``(num, *x.shape[1:])``."""
    if is_torch(xp):
        import torch

        idx = seg if isinstance(seg, torch.Tensor) else torch.as_tensor(np.asarray(seg), device=x.device)
        out = torch.zeros((num, *x.shape[1:]), dtype=x.dtype, device=x.device)
        return out.index_add(0, idx.to(device=x.device, dtype=torch.int64), x)
    if is_numpy(xp):
        out = np.zeros((num, *x.shape[1:]), dtype=x.dtype)
        np.add.at(out, np.asarray(seg, dtype=np.int64), x)
        return out
    idx = _seg_in(seg, x, xp)
    if _is_jax(x):
        return xp.zeros((num, *x.shape[1:]), dtype=x.dtype).at[idx].add(x)
    dev = array_api_compat.device(x)
    flat = xp.reshape(x, (int(x.shape[0]), math.prod(x.shape[1:])))
    return xp.reshape(_onehot(idx, num, x.dtype, xp, dev) @ flat, (num, *x.shape[1:]))


def segment_max(x: Array, seg: Any, num: int, xp: Namespace) -> Array:
    """``out[n] = max_{e : seg[e] = n} x[e]`` (``-inf`` for an empty segment), shape ``(num, *x.shape[1:])``."""
    if is_torch(xp):
        import torch

        idx = seg if isinstance(seg, torch.Tensor) else torch.as_tensor(np.asarray(seg), device=x.device)
        idx = idx.to(device=x.device, dtype=torch.int64).reshape((-1,) + (1,) * (x.ndim - 1)).expand(x.shape)
        out = torch.full((num, *x.shape[1:]), -torch.inf, dtype=x.dtype, device=x.device)
        return out.scatter_reduce(0, idx, x, reduce="amax", include_self=True)
    if is_numpy(xp):
        out = np.full((num, *x.shape[1:]), -np.inf, dtype=x.dtype)
        np.maximum.at(out, np.asarray(seg, dtype=np.int64), x)
        return out
    idx = _seg_in(seg, x, xp)
    if _is_jax(x):
        return xp.full((num, *x.shape[1:]), -math.inf, dtype=x.dtype).at[idx].max(x)
    dev = array_api_compat.device(x)
    flat = xp.reshape(x, (int(x.shape[0]), math.prod(x.shape[1:])))
    hit = _onehot(idx, num, None, xp, dev)[:, :, None]  # (num, E, 1)
    masked = xp.where(hit, flat[None, :, :], xp.full_like(flat[None, :, :], -math.inf))
    return (
        xp.reshape(xp.max(masked, axis=1), (num, *x.shape[1:]))
        if int(x.shape[0])
        else xp.full((num, *x.shape[1:]), -math.inf, dtype=x.dtype, device=dev)
    )


def segment_softmax(scores: Array, seg: Any, num: int, xp: Namespace) -> Array:
    """Softmax of ``scores`` (``(E, ...)``) within each segment of ``seg``.

    ``seg``: an ``(E,)`` int64 array of ``xp`` on the scores' device, values in ``[0, num)``.
    """
    m = segment_max(scores, seg, num, xp)
    if is_torch(xp):
        m = m.detach()
    m = xp.where(xp.isinf(m), xp.zeros_like(m), m)
    e = xp.exp(scores - xp.take(m, seg, axis=0))
    z = segment_sum(e, seg, num, xp)
    z = xp.where(z == 0, xp.ones_like(z), z)
    return e / xp.take(z, seg, axis=0)
