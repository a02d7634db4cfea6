"""Local + global (Longformer-style) attention in O(L * window) memory.

Beltagy, Peters & Cohan 2020, "Longformer: The Long-Document Transformer" (arXiv:2004.05150). On one
sequence of length ``L`` with window radius ``w`` and a set ``G`` of global positions, query ``i`` may
attend key ``j`` iff

    |i - j| <= w   or   j in G   or   i in G          (and j <= i when causal)

so the window is centred on the query's own position (the spec's upstream centred it on the middle
key, which is wrong). The result equals dense attention ``softmax(scale q k^T + bias) v`` with that
boolean mask (:func:`local_global_mask`), computed without ever forming an ``L x L`` array:

* local part: queries in blocks of ``b``; block ``[q0, q1)`` scores only keys ``[q0 - w, q1 + w)``
  (a ``b x (b + 2w)`` tile), with the band and the causal condition applied to the tile;
* global columns: every query block also scores the ``|G|`` global keys (``b x |G|``); global keys are
  removed from the local tile so no key is counted twice; both parts share one softmax per row;
* global rows: the ``|G|`` global queries attend to every key (``|G| x L``, through the dense kernel)
  and replace their rows.

Memory is ``O(L (b + 2w + |G|))`` for the scores of all blocks together, and only one block's tile is
alive at a time. A user mask (bool, True = attend, or float, added) broadcasting to
``(..., H, L, L)`` is honoured; a row whose keys are all masked gives zeros. Heads-first layout
``(..., H, L, D)``; generic over the array API.
"""

from __future__ import annotations

import contextlib
from typing import Any

import array_api_compat
import numpy as np

from .._array import Array, Namespace
from .._array import length as _dim
from ._threads import BlasOneThread, blas_limiter_available
from .dense import sdpa
from .masks import apply_mask, apply_mask_tile, index_grid, mask_tile

__all__ = ["local_global_mask", "local_global_attention", "default_block"]


def local_global_mask(length: int, radius: int, global_idx: Any = (), causal: bool = False) -> np.ndarray:
    """The boolean ``(L, L)`` mask (True = may attend) that local-global attention is equivalent to."""
    i = np.arange(length)[:, None]
    j = np.arange(length)[None, :]
    allowed = np.abs(i - j) <= radius
    g = np.zeros(length, dtype=bool)
    g[np.asarray(list(global_idx), dtype=np.int64)] = True
    allowed |= g[None, :] | g[:, None]
    if causal:
        allowed &= j <= i
    return allowed


def _graph_form(
    q: Array, k: Array, v: Array, *, xp: Namespace, scale: float, radius: int, global_idx: Any, causal: bool, mask: Array | None
) -> Array:
    """Dense attention with the pattern of :func:`local_global_mask` built from index grids (any length).

    The equivalence the module docstring states, used when the length is symbolic: a Python loop over
    query blocks would be unrolled for one length.
    """
    s0 = q[..., :, :1] @ xp.matrix_transpose(k[..., :, :1])  # (..., L, L): only its shape is used
    i, j = index_grid(s0, xp)
    allowed = xp.abs(i - j) <= float(radius)
    for g in np.asarray(global_idx, dtype=np.int64).reshape(-1).tolist():
        allowed = allowed | (j == float(g)) | (i == float(g))
    if causal:
        allowed = allowed & (j <= i)
    if mask is not None:
        allowed = (
            allowed & mask if xp.isdtype(mask.dtype, "bool") else xp.where(allowed, mask, xp.asarray(-xp.inf, dtype=mask.dtype))
        )
    return sdpa(q, k, v, xp=xp, scale=scale, mask=allowed)


def default_block(radius: int, length: int) -> int:
    """Query block size: at least 64 rows (BLAS-friendly tiles), about ``w`` for wide windows, at most 512."""
    return max(1, min(length, max(64, min(512, radius))))


def local_global_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    xp: Namespace,
    scale: float,
    radius: int,
    global_idx: np.ndarray,
    causal: bool = False,
    mask: Array | None = None,
    block: int | None = None,
) -> Array:
    """Local-global attention on heads-first arrays ``q, k: (..., H, L, D)``, ``v: (..., H, L, Dv)``.

    ``radius`` is ``w`` (keys ``i - w .. i + w``); ``global_idx`` a sorted array of distinct positions in
    ``[0, L)``; ``mask`` an already prepared mask (see :func:`attnkit.kernels.masks.prepare_mask`).
    """
    length = _dim(q.shape[-2])
    if length is None:  # symbolic length (a graph being exported): the whole-sequence form
        return _graph_form(q, k, v, xp=xp, scale=scale, radius=int(radius), global_idx=global_idx, causal=causal, mask=mask)
    dev = array_api_compat.device(q)
    w = int(radius)
    b = int(block) if block else default_block(w, length)
    gidx = np.asarray(global_idx, dtype=np.int64).reshape(-1)
    n_glob = int(gidx.size)
    is_glob = np.zeros(length, dtype=bool)
    is_glob[gidx] = True
    neg_inf = xp.asarray(-xp.inf, dtype=q.dtype, device=dev)
    qs = q * scale
    kt = xp.matrix_transpose(k)
    if isinstance(q, np.ndarray):
        # BLAS wants each block's matrices contiguous: strided (..., L, H, D) views and transposed key
        # views make NumPy's matmul fall back to a loop that is 10-100x slower. One O(L*D) copy each.
        qs, kt, v = np.ascontiguousarray(qs), np.ascontiguousarray(kt), np.ascontiguousarray(v)
    if n_glob:
        g_dev = xp.asarray(gidx, device=dev)
        kg = xp.take(k, g_dev, axis=-2)
        vg = xp.take(v, g_dev, axis=-2)
        kg_t = xp.matrix_transpose(kg)
        if isinstance(q, np.ndarray):
            kg_t = np.ascontiguousarray(kg_t)

    def block(q0: int, q1: int) -> Array:
        k0 = max(0, q0 - w)
        k1 = min(length, q1 + w) if not causal else min(length, q1)
        rows = np.arange(q0, q1)[:, None]
        cols = np.arange(k0, k1)[None, :]
        allowed = (np.abs(rows - cols) <= w) & ~is_glob[None, k0:k1]
        if causal:
            allowed &= cols <= rows
        qt = qs[..., q0:q1, :]
        s = qt @ kt[..., :, k0:k1]
        s = xp.where(xp.asarray(allowed, device=dev), s, neg_inf)
        s = apply_mask_tile(s, mask, xp, q0, q1, k0, k1)
        sg = None
        if n_glob:
            sg = qt @ kg_t
            if causal:
                sg = xp.where(xp.asarray(gidx[None, :] <= rows, device=dev), sg, neg_inf)
            if mask is not None:
                mt = mask_tile(mask, q0, q1, 0, length)
                if mt.shape[-1] != 1:
                    mt = xp.take(mt, g_dev, axis=-1)
                sg = apply_mask(sg, mt, xp)
        # one softmax over [local keys | global keys] without concatenating (strided slices of a
        # concatenated tile would again keep NumPy's matmul off BLAS)
        m = xp.max(s, axis=-1, keepdims=True)
        if sg is not None:
            m = xp.maximum(m, xp.max(sg, axis=-1, keepdims=True))
        m = xp.where(xp.isinf(m), xp.zeros_like(m), m)
        e = xp.exp(s - m)
        z = xp.sum(e, axis=-1, keepdims=True)
        o = e @ v[..., k0:k1, :]
        if sg is not None:
            eg = xp.exp(sg - m)
            z = z + xp.sum(eg, axis=-1, keepdims=True)
            o = o + eg @ vg
        o = o / xp.where(z == 0, xp.ones_like(z), z)
        return o

    with _blas_limit(isinstance(q, np.ndarray)):
        parts = [block(q0, min(q0 + b, length)) for q0 in range(0, length, b)]
    out = parts[0] if len(parts) == 1 else xp.concat(parts, axis=-2)
    if n_glob:
        out = _global_rows(q, k, v, out, xp=xp, scale=scale, gidx=gidx, causal=causal, mask=mask, dev=dev)
    return out


def _blas_limit(active: bool) -> Any:
    """Hold BLAS to one thread around the many small per-block GEMMs (NumPy only).

    Multi-threaded BLAS gains nothing on ``b x (b + 2w)`` tiles and, on a loaded machine, its spinning
    threads made the blocks 10-50x slower. Uses the kernels' shared re-entrant limiter
    (:mod:`._threads`); without threadpoolctl it is a no-op.
    """
    if not active or not blas_limiter_available():
        return contextlib.nullcontext()
    return BlasOneThread()


def _global_rows(
    q: Array, k: Array, v: Array, out: Array, *, xp: Namespace, scale: float, gidx: np.ndarray, causal: bool, mask: Array | None, dev: Any
) -> Array:
    """Replace the rows of the global queries by dense attention over every key."""
    length = _dim(q.shape[-2])
    g_dev = xp.asarray(gidx, device=dev)
    qg = xp.take(q, g_dev, axis=-2)
    m = None
    if mask is not None:
        m = mask if mask.shape[-2] == 1 else xp.take(mask, g_dev, axis=-2)
    if causal:
        allowed = xp.asarray(np.arange(length)[None, :] <= gidx[:, None], device=dev)
        if m is None:
            m = allowed
        elif xp.isdtype(m.dtype, "bool"):
            m = xp.logical_and(m, allowed)
        else:
            m = xp.where(allowed, m, xp.asarray(-xp.inf, dtype=m.dtype, device=dev))
    og = sdpa(qg, k, v, xp=xp, scale=scale, mask=m, causal=False)
    if og.dtype != out.dtype:
        og = xp.astype(og, out.dtype)
    if isinstance(out, np.ndarray) and out.flags.writeable:
        out = out.copy() if not out.flags.owndata else out
        out[..., gidx, :] = og
        return out
    pos = np.zeros(length, dtype=np.int64)
    pos[gidx] = np.arange(gidx.size)
    rows = xp.take(og, xp.asarray(pos, device=dev), axis=-2)
    is_glob = np.zeros(length, dtype=bool)
    is_glob[gidx] = True
    return xp.where(xp.asarray(is_glob[:, None], device=dev), rows, out)
