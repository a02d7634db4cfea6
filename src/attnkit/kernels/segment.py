"""Segment reductions over an edge list: segment max / sum / softmax.

A *segment* is the set of edges with the same target node: ``seg[e]`` is edge ``e``'s target in
``[0, num)``. Segment softmax normalises edge scores within each target's segment,

    alpha_e = exp(s_e - m_seg(e)) / sum_{e' : seg(e') = seg(e)} exp(s_e' - m_seg(e)),

with ``m`` the per-segment maximum (so large scores never overflow); an edge scored ``-inf`` gets
weight 0, and a segment whose edges are all ``-inf`` gives zeros, never NaN. This is the softmax of
graph attention over each node's incoming edges (Veličković et al. 2018).

The array API has no scatter, so the reductions are backend-specific: NumPy uses ``ufunc.at``, torch
``scatter_reduce``/``index_add`` (autograd flows through the sums; the subtracted maximum is a constant
that cancels mathematically, so it is detached). Other libraries go through NumPy and come back.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from .._array import Array, Namespace, is_numpy, is_torch, to_numpy

__all__ = ["segment_max", "segment_sum", "segment_softmax"]


def segment_sum(x: Array, seg: Any, num: int, xp: Namespace) -> Array:
    """``out[n] = sum_{e : seg[e] = n} x[e]``, shape ``(num, *x.shape[1:])``."""
    if is_torch(xp):
        import torch

        idx = seg if isinstance(seg, torch.Tensor) else torch.as_tensor(np.asarray(seg), device=x.device)
        out = torch.zeros((num, *x.shape[1:]), dtype=x.dtype, device=x.device)
        return out.index_add(0, idx.to(device=x.device, dtype=torch.int64), x)
    if is_numpy(xp):
        acc = np.zeros((num, *x.shape[1:]), dtype=x.dtype)
        np.add.at(acc, np.asarray(seg, dtype=np.int64), x)
        return acc
    res = segment_sum(to_numpy(x), to_numpy(seg), num, np)
    return xp.asarray(res, device=array_api_compat.device(x))


def segment_max(x: Array, seg: Any, num: int, xp: Namespace) -> Array:
    """``out[n] = max_{e : seg[e] = n} x[e]`` (``-inf`` for an empty segment), shape ``(num, *x.shape[1:])``."""
    if is_torch(xp):
        import torch

        idx = seg if isinstance(seg, torch.Tensor) else torch.as_tensor(np.asarray(seg), device=x.device)
        idx = idx.to(device=x.device, dtype=torch.int64).reshape((-1,) + (1,) * (x.ndim - 1)).expand(x.shape)
        out = torch.full((num, *x.shape[1:]), -torch.inf, dtype=x.dtype, device=x.device)
        return out.scatter_reduce(0, idx, x, reduce="amax", include_self=True)
    if is_numpy(xp):
        top = np.full((num, *x.shape[1:]), -np.inf, dtype=x.dtype)
        np.maximum.at(top, np.asarray(seg, dtype=np.int64), x)
        return top
    res = segment_max(to_numpy(x), to_numpy(seg), num, np)
    return xp.asarray(res, device=array_api_compat.device(x))


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
