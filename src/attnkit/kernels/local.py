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
import math
from typing import Any

import array_api_compat
import numpy as np

from .._array import Array, Namespace
from .._array import length as _dim
from .._threads import BlasOneThread, ThreadScratch, blas_limiter_available, run_tasks
from . import _accel, overflow
from .dense import sdpa
from .gqa import group_keys, group_queries, needs_grouping, ungroup
from .masks import apply_mask, apply_mask_tile, index_grid, mask_tile

__all__ = ["local_global_mask", "local_global_allowed", "local_global_tile", "local_global_attention", "default_block"]


def local_global_mask(length: int, radius: int, global_idx: Any = (), causal: bool = False) -> np.ndarray:
    """The boolean ``(L, L)`` mask (True = may attend) that local-global attention is equivalent to."""
    return local_global_tile(0, length, 0, length, radius, global_idx, causal)


def local_global_tile(q0: int, nq: int, k0: int, nk: int, radius: int, global_idx: Any = (), causal: bool = False) -> np.ndarray:
    """Rows ``q0 .. q0+nq-1`` and columns ``k0 .. k0+nk-1`` of :func:`local_global_mask`: query ``i`` may
    attend key ``j`` iff ``|i - j| <= radius`` or ``j`` or ``i`` is global (and ``j <= i`` when causal)."""
    i = np.arange(q0, q0 + nq)[:, None]
    j = np.arange(k0, k0 + nk)[None, :]
    allowed = np.abs(i - j) <= radius
    g = np.asarray(list(global_idx) if not isinstance(global_idx, np.ndarray) else global_idx, dtype=np.int64)
    allowed |= np.isin(j, g) | np.isin(i, g)
    if causal:
        allowed &= j <= i
    return allowed


def local_global_allowed(q: Array, k: Array, *, xp: Namespace, radius: int, global_idx: Any, causal: bool, mask: Array | None = None) -> Array:
    """The pattern of :func:`local_global_mask` for scores of ``q (..., Lq, D)`` over ``k (..., Lk, D)``,
    built from index grids, combined with ``mask``: a bool ``(..., Lq, Lk)`` (True = may attend), or a
    float mask with ``-inf`` outside the pattern when ``mask`` is float.

    The indices are counted in ``xp`` (cumulative sums of ones, :func:`.masks.index_grid`), not from Python
    lengths, so the pattern holds at any length: a symbolic one (a graph being exported) too.
    """
    q1, k1 = q[..., :, :1], k[..., :, :1]
    if q1.ndim > 2:  # the leading axes may differ (grouped-query heads): the pattern is the same for all of them
        q1, k1 = xp.sum(q1, axis=tuple(range(q1.ndim - 2))), xp.sum(k1, axis=tuple(range(k1.ndim - 2)))
    s0 = q1 @ xp.matrix_transpose(k1)  # (Lq, Lk): only its shape is used
    i, j = index_grid(s0, xp)
    allowed = xp.abs(i - j) <= float(radius)
    for g in np.asarray(global_idx, dtype=np.int64).reshape(-1).tolist():
        allowed = allowed | (j == float(g)) | (i == float(g))
    if causal:
        allowed = allowed & (j <= i)
    if mask is None:
        return allowed
    if xp.isdtype(mask.dtype, "bool"):
        return allowed & mask
    return xp.where(allowed, mask, xp.asarray(-xp.inf, dtype=mask.dtype, device=array_api_compat.device(mask)))


def _graph_form(
    q: Array, k: Array, v: Array, *, xp: Namespace, scale: float, radius: int, global_idx: Any, causal: bool, mask: Array | None
) -> Array:
    """Dense attention with the pattern of :func:`local_global_allowed` (any length).

    The equivalence the module docstring states, used when the length is symbolic: a Python loop over
    query blocks would be unrolled for one length.
    """
    allowed = local_global_allowed(q, k, xp=xp, radius=radius, global_idx=global_idx, causal=causal, mask=mask)
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

    ``k, v`` may have ``Hkv`` heads dividing ``H`` (grouped-query attention, see :mod:`.gqa`).

    ``radius`` is ``w`` (keys ``i - w .. i + w``); ``global_idx`` a sorted array of distinct positions in
    ``[0, L)``; ``mask`` an already prepared mask (see :func:`attnkit.kernels.masks.prepare_mask`).
    """
    if _dim(q.shape[-2]) is None:  # symbolic length (a graph being exported): the whole-sequence form
        return _graph_form(q, k, v, xp=xp, scale=scale, radius=int(radius), global_idx=global_idx, causal=causal, mask=mask)
    if overflow.at_risk(xp, q.dtype, logits=(q, k, q.shape[-1], scale), values=(v, k.shape[-2])):  # see .overflow
        return overflow.run_wider(
            lambda q, k, v, mask: local_global_attention(
                q, k, v, xp=xp, scale=scale, radius=radius, global_idx=global_idx, causal=causal, mask=mask, block=block
            ),
            xp,
            (q, k, v, mask),
            dtype=q.dtype,
            names="query, key",
        )
    if needs_grouping(q, k, v):  # grouped-query attention (see .gqa): k/v heads broadcast over their group
        hk = int(k.shape[-3])
        out = local_global_attention(
            group_queries(q, hk, xp),
            group_keys(k, xp),
            group_keys(v, xp),
            xp=xp,
            scale=scale,
            radius=radius,
            global_idx=global_idx,
            causal=causal,
            mask=group_queries(mask, hk, xp),
            block=block,
        )
        return ungroup(out, xp)
    fast = local_global_numpy(q, k, v, scale=scale, radius=radius, global_idx=global_idx, causal=causal, mask=mask, block=block)
    if fast is not None:
        # softmax weights of logits in range over value rows in range: |out| <= max|v| (as in .dense), so
        # the caller's output check (overflow.finite_or_wider) need not read the output (6 ms at L 16384)
        overflow.note_convex_combination(fast, v, int(k.shape[-2]))
        return fast
    length = int(q.shape[-2])
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

    def query_block(q0: int, q1: int) -> Array:
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
        parts = [query_block(q0, min(q0 + b, length)) for q0 in range(0, length, b)]
    out = parts[0] if len(parts) == 1 else xp.concat(parts, axis=-2)
    if n_glob:
        out = _global_rows(q, k, v, out, xp=xp, scale=scale, gidx=gidx, causal=causal, mask=mask, dev=dev)
    if mask is None or xp.isdtype(mask.dtype, "bool"):  # (a float mask could overflow)
        overflow.note_convex_combination(out, v, length)
    return out


# --------------------------------------------------------------------------------------------------
# NumPy fast path: threaded tiles, in place
#
# Where the time goes (2-core Zen 3, AVX2, OpenBLAS, one thread, L = 16384, w = 256, 8 heads, d 64,
# fp32; interleaved minima, the machine shared): a tile of ``b`` rows computes ``b + 2w`` keys a row
# where ``2w + 1`` are kept, so ``b / (2w + 1)`` of its GEMM work is spent on the band's two triangles
# (12% at b = 64), and its two GEMMs run at 73-85 GFLOP/s (b = 64 .. 192; thinner tiles are slower):
# per kept score, 68-69 GFLOP/s at b = 64 .. 96, 67 at 128, 62 at 192, the same with ``K Q^T`` for
# ``Q K^T``. Splitting a tile's key range into the fully-inside rectangle plus the two triangles cut in
# row slices wastes what tiles of the slices' height waste (it is the same staircase) with more, thinner
# GEMMs: measured no gain, so a tile is one rectangle. The compiled banded softmax pass costs 0.44 ns a
# kept score (exp, sums, normalising the row while it is in L1), NumPy's exp 1.3-2 ns a score.
# The rest was Python and NumPy call overhead per tile (~45 us: buffer look-ups, norm maxima, the
# division; 1368 tiles) and serial set-up (scaling q, the norms, copying (L, H, D)-layout keys and
# values): now a tile stacks ``hb`` heads (one ``np.matmul`` call for all of them), a task is ``hb``
# heads x a run of tiles (scaled queries, norms and the Cauchy-Schwarz bound once a task, in the
# worker), keys and values are read in place (``K_blk^T`` is a transposed view BLAS takes as is; a
# ``(d, L)`` transposed copy, row stride ``4 L`` bytes, made the first GEMM 2-3x slower). Logits bounded
# by Cauchy-Schwarz skip the row maximum. With the ``numba`` extra (:mod:`._accel`) a bounded tile
# without a global key takes one compiled pass over each row's own keys, zeros elsewhere.


#: a thread's scratch array of at least ``size`` elements (kept between calls, grown as needed)
_np_buf = ThreadScratch().get


class _LocalPlan:
    """The shared, read-only state of one NumPy local-global call (heads flattened to ``n``)."""

    def __init__(
        self,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        out: np.ndarray,
        scale: float,
        w: int,
        causal: bool,
        gidx: np.ndarray,
        accel: Any,
        block: int,
        heads: int,
    ) -> None:
        self.q, self.k, self.v, self.out = q, k, v, out
        self.w, self.causal, self.gidx, self.block, self.heads = w, causal, gidx, block, heads
        self.length = int(q.shape[-2])
        self.dtype = q.dtype
        self.scale = np.asarray(scale, dtype=self.dtype)
        self.accel = accel if self.dtype == np.float32 else None
        self.band = _accel.softmax_band() if self.accel is not None else None
        self.ones = np.ones(self.length, dtype=self.dtype)
        self.is_glob = np.zeros(self.length, dtype=bool)
        self.is_glob[gidx] = True
        self.glob_before = np.concatenate([[0], np.cumsum(self.is_glob)])
        self.kg = np.ascontiguousarray(k[:, gidx, :]) if gidx.size else None
        self.vg = np.ascontiguousarray(v[:, gidx, :]) if gidx.size else None
        # |s_ij| <= |scale q_i| |k_j| bounds the logits of a tile (Cauchy-Schwarz); squared norms here
        self.kgn2 = np.einsum("ngd,ngd->ng", self.kg, self.kg).max(axis=1) if self.kg is not None else None
        self.limit = 60.0 if self.dtype == np.float32 else 600.0
        self._outside: dict[tuple[int, int, int], np.ndarray] = {}

    def span(self, q0: int, q1: int) -> tuple[int, int]:
        return max(0, q0 - self.w), (min(self.length, q1 + self.w) if not self.causal else q1)

    def outside(self, q0: int, q1: int, k0: int, k1: int) -> np.ndarray:
        """True where query ``i`` may not attend local key ``j`` (``|i - j| > w``, ``j > i`` when causal, or
        ``j`` global); blocks away from the ends and the globals share one array. Those logits are set
        to ``-inf`` (not biased by it: a NaN outside the pattern must not reach the row)."""
        glob = self.glob_before[k1] > self.glob_before[k0]
        key = (q1 - q0, q0 - k0, k1 - k0)
        if not glob:
            hit = self._outside.get(key)  # (a dict read is atomic; two threads may build the same array)
            if hit is not None:
                return hit
        outside = ~(local_global_tile(q0, q1 - q0, k0, k1 - k0, self.w, (), self.causal) & ~self.is_glob[None, k0:k1])
        if not glob:
            self._outside[key] = outside
        return outside

    def task(self, g0: int, g1: int, r0: int, r1: int) -> None:
        """Heads ``g0 .. g1-1``, query rows ``r0 .. r1-1``: tiles of ``block`` rows."""
        hb, rows, d, b = g1 - g0, r1 - r0, int(self.q.shape[-1]), self.block
        qs = _np_buf("q", hb * rows * d, self.dtype).reshape(hb, rows, d)
        np.multiply(self.q[g0:g1, r0:r1], self.scale, out=qs)
        k0, k1 = self.span(r0, r1)
        # squared norms: |s_ij|^2 <= |scale q_i|^2 |k_j|^2 (Cauchy-Schwarz), checked for the whole task
        # first, tile by tile where that fails
        kn = np.einsum("hld,hld->hl", self.k[g0:g1, k0:k1], self.k[g0:g1, k0:k1])
        qn = np.einsum("hld,hld->hl", qs, qs)
        limit2 = self.limit**2
        kmax = kn.max(axis=1)
        if self.kgn2 is not None:
            np.maximum(kmax, self.kgn2[g0:g1], out=kmax)
        bounded = float((qn.max(axis=1) * kmax).max()) <= limit2
        for q0 in range(r0, r1, b):
            q1 = min(r1, q0 + b)
            ok = bounded
            if not ok:
                t0, t1 = self.span(q0, q1)
                km = kn[:, t0 - k0 : t1 - k0].max(axis=1)
                if self.kgn2 is not None:
                    np.maximum(km, self.kgn2[g0:g1], out=km)
                ok = float((qn[:, q0 - r0 : q1 - r0].max(axis=1) * km).max()) <= limit2
            self.tile(g0, g1, q0, q1, qs[:, q0 - r0 : q1 - r0], ok)

    def tile(self, g0: int, g1: int, q0: int, q1: int, qt: np.ndarray, bounded: bool) -> None:
        """One tile: heads ``g0 .. g1-1`` x query rows ``q0 .. q1-1`` (``qt``: their scaled queries)
        against their local keys and the global keys, one softmax per row, output written in place."""
        k0, k1 = self.span(q0, q1)
        hb, r, c, ng = g1 - g0, q1 - q0, k1 - k0, int(self.gidx.size)
        s = _np_buf("s", hb * r * c, self.dtype).reshape(hb, r, c)
        np.matmul(qt, self.k[g0:g1, k0:k1].transpose(0, 2, 1), out=s)
        # Every row sees its own key (local, or global), so some logit is finite. When every |logit| of
        # the tile is below `limit`, exp cannot overflow nor underflow a whole row, and the row maximum is
        # not needed (softmax is shift-invariant).
        z = _np_buf("z", hb * r, self.dtype).reshape(hb, r)
        banded = bounded and self.band is not None and self.glob_before[k1] == self.glob_before[k0]
        if banded:  # no global key among these: row i keeps keys q0 + i - w .. q0 + i + w (.. q0 + i if causal)
            assert self.band is not None  # (it normalises the probabilities too where no key is global)
            self.band(s, q0 - self.w - k0, (q0 + 1 if self.causal else q0 + self.w + 1) - k0, self.kg is None, z)
        else:
            np.copyto(s, -np.inf, where=self.outside(q0, q1, k0, k1))
        sg = None
        if self.kg is not None:
            sg = _np_buf("sg", hb * r * ng, self.dtype).reshape(hb, r, ng)
            np.matmul(qt, self.kg[g0:g1].transpose(0, 2, 1), out=sg)
            if self.causal:
                np.copyto(sg, -np.inf, where=self.gidx[None, :] > np.arange(q0, q1)[:, None])
        if not bounded:
            m = np.max(s, axis=-1, keepdims=True)
            if sg is not None:
                np.maximum(m, np.max(sg, axis=-1, keepdims=True), out=m)
            np.subtract(s, m, out=s)
            if sg is not None:
                np.subtract(sg, m, out=sg)
        if not banded:
            if self.accel is not None and bounded:
                self.accel(s.reshape(hb * r, c), z.reshape(hb * r))
            else:
                np.exp(s, out=s)
                np.matmul(s, self.ones[:c], out=z)
        o = self.out[g0:g1, q0:q1]
        np.matmul(s, self.v[g0:g1, k0:k1], out=o)
        if sg is not None and self.vg is not None:
            np.exp(sg, out=sg)
            z += sg @ self.ones[:ng]
            o += sg @ self.vg[g0:g1]
        if not banded or sg is not None:
            np.divide(o, z[..., None], out=o)  # the softmax normalisation: once per output row

    def run(self, tasks: Any) -> None:
        for t in tasks:
            self.task(*t)


#: query rows of a task (a run of tiles sharing the scaled queries, norms and bound)
TASK_ROWS = 512


def local_numpy_block(radius: int, length: int) -> int:
    """Query rows a tile of the NumPy path. A ``b x (b + 2w)`` tile wastes ``b / (b + 2w)`` of its GEMM
    work on the band's triangles, while BLAS slows on thin tiles and each tile costs some Python. At
    ``w = 256`` on a 2-core Zen 3 (CPU time, minimum of interleaved repeats, L = 16384, 8 heads, 4 a
    tile, compiled exp pass) 64 rows took 298 ms, 96 306, 128 314, 48 302. So about ``w / 4`` rows,
    32 to 128; the whole sequence where every tile would see every key."""
    b = max(32, min(128, (radius // 4) // 16 * 16))
    return max(1, length if length <= b + 2 * radius else b)


def local_numpy_heads(heads: int, block: int, radius: int, itemsize: int) -> int:
    """Heads a tile stacks (one ``np.matmul`` call for all of them): up to 4, with the tile's scores
    at most 2 MiB (measured at w = 256, b = 64: 1, 2, 4, 8 heads took 305, 305, 298, 298 ms)."""
    per_head = block * (block + 2 * radius) * itemsize
    return max(1, min(heads, 4, (2 << 20) // max(1, per_head)))


def _rows_view(a: np.ndarray) -> np.ndarray:
    """``a (n, L, D)`` as it is where BLAS can read its row blocks in place (unit stride along ``D``, rows
    at least ``D`` apart: e.g. the heads-first view of a ``(L, H, D)`` array), else a C-contiguous copy.
    At L = 16384, 8 heads, d 64 the two copies of a ``(L, H, D)`` layout took 33 ms, serial, and the
    tiles ran no slower on the strided rows (each row is 256 contiguous bytes)."""
    if a.strides[-1] == a.itemsize and a.strides[-2] >= a.shape[-1] * a.itemsize and a.strides[0] >= 0:
        return a
    return np.ascontiguousarray(a)


def local_global_numpy(
    q: Any,
    k: Any,
    v: Any,
    *,
    scale: float,
    radius: int,
    global_idx: np.ndarray,
    causal: bool,
    mask: Any,
    block: int | None,
    num_threads: int | None = None,
    accel: bool | None = None,
    heads_per_tile: int | None = None,
) -> np.ndarray | None:
    """Local-global attention on heads-first float NumPy arrays ``(..., H, L, D)`` without a user mask,
    in threaded in-place tiles (same result as the generic path to rounding); ``None`` where this path
    does not apply. ``accel``: use the compiled exp pass of :mod:`._accel` (``None``: where installed and
    the call is large enough to pay for loading it). ``heads_per_tile``: heads one tile stacks
    (``None``: :func:`local_numpy_heads`)."""
    if mask is not None or not all(type(x) is np.ndarray for x in (q, k, v)):
        return None
    dt = q.dtype
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)) or k.dtype != dt or v.dtype != dt:
        return None
    if q.ndim < 2 or q.shape[:-1] != k.shape[:-1] or k.shape[:-1] != v.shape[:-1] or q.shape[-1] != k.shape[-1]:
        return None
    length, d, dv = int(q.shape[-2]), int(q.shape[-1]), int(v.shape[-1])
    if min(length, d, dv) == 0:
        return None
    lead = tuple(q.shape[:-2])
    n = math.prod(lead)
    qq = q.reshape(n, length, d)
    kk, vv = _rows_view(k.reshape(n, length, d)), _rows_view(v.reshape(n, length, dv))
    out = np.empty((n, length, dv), dtype=dt)
    w = int(radius)
    b = int(block) if block else local_numpy_block(w, length)
    hb = int(heads_per_tile) if heads_per_tile else local_numpy_heads(n, b, w, dt.itemsize)
    gidx = np.asarray(global_idx, dtype=np.int64).reshape(-1)
    if accel is None:
        accel = _accel.wanted(n * length * (2 * w + 1), dt)
    plan = _LocalPlan(qq, kk, vv, out, scale, w, causal, gidx, _accel.exp_rowsum() if accel else None, b, hb)
    run = b * max(1, TASK_ROWS // b)
    tasks = [(g0, min(n, g0 + hb), r0, min(length, r0 + run)) for g0 in range(0, n, hb) for r0 in range(0, length, run)]
    run_tasks(plan.run, tasks, num_threads)
    res = out.reshape(*lead, length, dv)
    if gidx.size:
        res = _global_rows(q, k, v, res, xp=np, scale=scale, gidx=gidx, causal=causal, mask=None, dev="cpu")
    return res


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
