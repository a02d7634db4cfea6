"""NumPy fast path for exact attention: tiled, threaded, BLAS-bound.

Computes exactly what :func:`.dense.sdpa_generic` computes,

    out = softmax(scale * q k^T + bias) v,

(FlashAttention's tiled online softmax: Dao et al., "FlashAttention: Fast and Memory-Efficient
Exact Attention with IO-Awareness", NeurIPS 2022; Milakov & Gimelshein, "Online normalizer
calculation for softmax", 2018) on heads-first NumPy arrays ``q: (..., H, Lq, D)``,
``k: (..., H, Lk, D)``, ``v: (..., H, Lk, Dv)`` with broadcasting batch dimensions, bool or float
masks, bottom-right causal masking and zeros for fully masked rows, in float32 or float64.

Where the time goes, and what this module does about it (measured on the 2-core AVX-512
development machine; see DESIGN.md "Performance design" and the README's Performance section):

* The two GEMMs per score are ~80% of the arithmetic. Each (batch, head, query tile) task runs
  ``S = (c q_tile) K_blk^T`` and ``acc += P V_blk`` in single-threaded BLAS on tiles whose score
  block stays in the 2 MB L2 (256 x 1024 floats), with ``K^T`` transposed once per head so the
  first GEMM streams contiguous memory. Row sums come from a GEMV with a ones vector (~20 G/s,
  four times ``sum(axis=1)``), which costs the same as a ones column appended to ``V`` without the
  copy of ``V``.
* Tasks run on a persistent pool (the caller's thread plus ``num_threads - 1`` workers) that
  pull them one at a time, heads in order and the heaviest causal tiles first, with BLAS held to
  one thread by a cached ``threadpoolctl.ThreadpoolController().limit``; NumPy's ufuncs and BLAS
  release the GIL. Without threadpoolctl the tasks run in the caller's thread and BLAS threads
  itself.
* The softmax passes are the rest. Two schemes, chosen per query tile, give the same result
  to rounding because softmax does not depend on the reference it is shifted by:

  - *bounded logits* (the common case): by Cauchy-Schwarz every logit of row ``i`` lies in
    ``[-U_i, U_i]``, ``U_i = |scale| |q_i| max_j |k_j|``. Where ``U <= R`` (R = 60 for float32,
    600 for float64, lowered when ``e^R * Lk * max|v|`` could overflow) ``exp(s)`` can neither
    overflow nor leave the normal range, so the softmax needs no reference (no running
    maximum): one exponential pass per score, no max/subtract passes and no rescaling between
    key blocks. The pass is ``exp2`` (``scale * log2(e)`` folded into ``q``; ~5.5 G/s a core
    against ~2.9 G/s for ``exp``) where it is faster in this process (see :func:`_prefer_exp2`),
    and only where its inputs provably stay normal, since its vector kernel drops to a scalar
    path (20-100x slower) for lanes that underflow.
  - *online softmax* (large logits, float masks): the running maximum and rescaling of
    FlashAttention, with ``np.exp`` (no slow path for ``-inf`` or underflow).

* Causal masks and sliding windows (FlashAttention-2's ``window_size``) are one band
  ``lo <= j - i - (Lk - Lq) <= hi``: key blocks outside it are never computed (a window of ``w``
  costs O(Lq * w)), blocks inside it are not masked, and only blocks on its edges are, by a 0/1 (or
  0/-inf) pattern. The band, and ALiBi's bias ``-slope |j - i - (Lk - Lq)|``, depend on ``j - i``
  only, so every tile's mask or bias is a zero-copy Toeplitz view of one pattern of length
  ``Lq + Lk - 1`` (:func:`_toeplitz`). ALiBi and float masks take the online softmax; a soft cap
  (``cap tanh(s / cap)``) bounds the logits by ``cap`` and so keeps the bounded tiles. Scratch
  buffers live per thread and are reused across calls.
* Small problems (few scores) go through a batched whole-array path, cheaper than dispatching
  tasks. Memory stays O(threads * tile + L): a 16384-token, 8-head forward needs ~10 MB of scratch.

:func:`sdpa_numpy` returns ``None`` where it does not apply (non-NumPy or non-float32/64 input,
mixed dtypes, empty axes, a mask of another dtype); the caller then uses the generic path.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .._threads import blas_limiter_available, get_num_threads, run_tasks, set_num_threads
from . import _accel

__all__ = ["sdpa_numpy", "set_num_threads", "get_num_threads", "blas_limiter_available"]

_LOG2E = 1.4426950408889634

#: dtype -> use ``exp2`` (scale folded as ``scale * log2 e``) rather than ``exp`` on bounded tiles;
#: decided once per process by :func:`_prefer_exp2` (or ``$ATTNKIT_EXP=exp|exp2``).
_EXP2: dict[np.dtype, bool] = {}

#: Largest |logit| (natural-log units) for which a query tile skips the running maximum: p = e^s
#: then lies in [e^-R, e^R]. R is lowered further per call so that sums of e^R * Lk * max|v|
#: stay below ``_V_RANGE[1]`` and products e^-R * max|v| above ``_V_RANGE[0]``.
_LOGIT_RANGE = {np.dtype(np.float32): 60.0, np.dtype(np.float64): 600.0}
_V_RANGE = {np.dtype(np.float32): (1e-30, 1e36), np.dtype(np.float64): (1e-290, 1e300)}

#: Score-tile budget in bytes (fits the 2 MB L2 next to the K and V blocks).
_TILE_BYTES = 1 << 20
_Q_TILE = 256
#: Smallest key block (a narrower GEMM wastes BLAS's packing).
_MIN_KEY_BLOCK = 128
#: At most this many scores in the whole call -> one batched pass in the caller's thread.
_SMALL_SCORES = 1 << 16

# ----------------------------------------------------------------------------------------------
# per-thread state

_local = threading.local()


def _prefer_exp2(dtype: np.dtype) -> bool:
    """Whether ``np.exp2`` beats ``np.exp`` in this process (timed once on 64K values).

    NumPy's float32 ``exp2`` (an SVML kernel) runs at ~5.5 G/s a core against ~2.9 G/s for ``exp``,
    but on the development machine about one process in four, depending on the randomised address
    layout (it never happens with ASLR off), gets a 3-4x slower ``exp2`` for its whole life while
    ``exp`` stays put. The two give the same softmax to rounding, so each process takes the faster.
    """
    choice = _EXP2.get(dtype)
    if choice is None:
        env = os.environ.get("ATTNKIT_EXP", "").strip().lower()
        if env in ("exp", "exp2"):
            choice = env == "exp2"
        else:
            x = np.linspace(-20.0, 20.0, 1 << 16, dtype=dtype)
            y = np.empty_like(x)

            def best(f: Any) -> float:
                times = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    f(x, out=y)
                    times.append(time.perf_counter() - t0)
                return min(times)

            best(np.exp2)
            best(np.exp)
            choice = best(np.exp2) * 1.2 < best(np.exp)
        _EXP2[dtype] = choice
    return choice


# ----------------------------------------------------------------------------------------------
# per-thread scratch


class _Scratch:
    """Buffers one thread reuses across tiles and calls (grown on demand, never shrunk)."""

    def __init__(self) -> None:
        self.bufs: dict[tuple[str, str], np.ndarray] = {}
        self.kt_key: Any = None

    def trim(self, limit: int) -> None:
        """Release buffers larger than ``limit`` bytes."""
        for key in [k for k, b in self.bufs.items() if b.nbytes > limit]:
            del self.bufs[key]
            if key[0] == "kt":
                self.kt_key = None

    def get(self, name: str, size: int, dtype: np.dtype) -> np.ndarray:
        key = (name, dtype.str)
        buf = self.bufs.get(key)
        if buf is None or buf.size < size:
            buf = np.empty(max(size, 1), dtype=dtype)
            self.bufs[key] = buf
            if name == "kt":
                self.kt_key = None
        return buf[:size]


#: Per-thread buffers above this size (K^T and the ones vector of a long sequence) are released
#: after each call instead of being kept for the next one.
_KEEP_BYTES = 8 << 20


def _scratch() -> _Scratch:
    s = getattr(_local, "scratch", None)
    if s is None:
        s = _local.scratch = _Scratch()
    return s


def _toeplitz(pattern: np.ndarray, start: int, rows: int, cols: int) -> np.ndarray:
    """Read-only view ``T[i, c] = pattern[start - i + c]`` of shape (rows, cols) (no copy; ``start >= rows - 1``).

    A tile's band mask or ALiBi bias depends only on ``j - i``, so every tile is such a view of one
    pattern of length ``Lq + Lk - 1`` indexed by ``j - i + Lq - 1``.
    """
    step = pattern.strides[0]
    return np.lib.stride_tricks.as_strided(pattern[start:], shape=(rows, cols), strides=(-step, step), writeable=False)


# ----------------------------------------------------------------------------------------------
# the plan of one call


class _Plan:
    """Everything the tasks of one call share: views per batch element, tiles, mode, mask."""

    def __init__(
        self,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        mask: np.ndarray | None,
        scale: float,
        causal: bool,
        batch: tuple[int, ...],
        window: tuple[int, int] = (-1, -1),
        slopes: np.ndarray | None = None,
        softcap: float | None = None,
    ) -> None:
        self.dtype = q.dtype
        self.lq, self.d = int(q.shape[-2]), int(q.shape[-1])
        self.lk, self.dv = int(k.shape[-2]), int(v.shape[-1])
        self.offset = self.lk - self.lq
        self.causal = causal
        self.scale = float(scale)
        self.batch = batch
        self.n = int(math.prod(batch))
        idx = list(np.ndindex(*batch)) if batch else [()]
        qb = np.broadcast_to(q, batch + q.shape[-2:])
        kb = np.broadcast_to(k, batch + k.shape[-2:])
        vb = np.broadcast_to(v, batch + v.shape[-2:])
        self.qs = [qb[i] for i in idx]
        self.ks = [kb[i] for i in idx]
        self.vs = [vb[i] for i in idx]
        self.mask_kind = None if mask is None else ("bool" if mask.dtype == np.bool_ else "float")
        if mask is not None:
            m2 = mask.reshape((1,) * (2 - mask.ndim) + mask.shape) if mask.ndim < 2 else mask
            mb = np.broadcast_to(m2, batch + m2.shape[-2:])
            self.ms: list[np.ndarray] | None = [mb[i] for i in idx]
        else:
            self.ms = None
        # tiles: a query tile of up to 256 rows; key blocks sized so the score tile fits in L2
        self.tq = min(_Q_TILE, self.lq)
        tk_target = max(_MIN_KEY_BLOCK, _TILE_BYTES // (self.tq * q.dtype.itemsize))
        self.tk_target = tk_target
        self.use_exp2 = False
        self.accel: Callable[[np.ndarray, np.ndarray], None] | None = None  # fused exp + row sums (._accel)
        # which batch element's keys each n uses (keys shared across a broadcast axis are transposed once)
        kidx = np.arange(math.prod(k.shape[:-2]), dtype=np.int64).reshape(k.shape[:-2])
        self.k_src = np.broadcast_to(kidx, batch).ravel().tolist() if batch else [0]
        self.tile_starts = list(range(0, self.lq, self.tq))
        # the band of visible keys, in rel = j - i - (Lk - Lq): lo <= rel <= hi (None: unbounded side);
        # causal is hi <= 0, a sliding window (left, right) is -left <= rel <= right
        left, right = int(window[0]), int(window[1])
        self.lo: int | None = -left if left >= 0 else None
        self.hi: int | None = right if right >= 0 else None
        if causal:
            self.hi = 0 if self.hi is None else min(self.hi, 0)
        self.softcap = softcap
        # one ALiBi slope per batch element (heads are a batch axis here), or None
        self.slopes: list[float] | None = None if slopes is None else np.broadcast_to(slopes, batch).ravel().tolist()
        d = np.arange(-(self.lq - 1), self.lk, dtype=np.int64) - self.offset  # rel of pattern index x = j - i + Lq - 1
        keep = np.ones(d.shape, dtype=bool)
        if self.lo is not None:
            keep &= d >= self.lo
        if self.hi is not None:
            keep &= d <= self.hi
        self._rel = d
        self._keep = keep
        self.pat_mul = keep.astype(self.dtype)  # 1/0 multiplier (bounded tiles)
        self.pat_bias = np.where(keep, 0.0, -np.inf).astype(self.dtype)  # 0/-inf bias (online tiles)
        self._alibi: dict[float, np.ndarray] = {}
        # bounded logits need e^s >= e^-R: ALiBi biases and float masks can push them below
        self.allow_bounded = self.mask_kind != "float" and self.slopes is None

    def bias_pattern(self, n: int) -> np.ndarray:
        """The additive pattern of batch element ``n``: ``-slope |rel|`` (ALiBi) inside the band, ``-inf`` outside."""
        if self.slopes is None:
            return self.pat_bias
        slope = self.slopes[n]
        pat = self._alibi.get(slope)
        if pat is None:
            pat = np.where(self._keep, -slope * np.abs(self._rel).astype(np.float64), -np.inf).astype(self.dtype)
            self._alibi[slope] = pat
        return pat

    def logit_range(self, n: int) -> float:
        """R for batch element ``n``: the largest logit bound for which a tile may skip the running maximum.

        By Cauchy-Schwarz ``|scale q_i . k_j| <= U_i = |scale| |q_i| max_j |k_j|``; a tile whose rows
        all have ``U_i <= R`` has every ``exp(s_ij)`` in ``[e^-R, e^R]``, inside the normal range (so
        ``exp2``'s fast vector path holds). R is lowered so that ``e^R * Lk * max|v|`` cannot
        overflow and ``e^-R * max|v|`` stays normal.
        """
        if not self.allow_bounded:
            return -math.inf
        lo, hi = _V_RANGE[self.dtype]
        vn = self.vs[n]
        vmax = max(float(vn.max()), -float(vn.min()))
        if not (vmax > 0 and math.isfinite(vmax)):
            return -math.inf  # all-zero or non-finite values: the online softmax handles them
        return min(_LOGIT_RANGE[self.dtype], math.log(hi / (self.lk * max(vmax, 1.0))), math.log(vmax / lo))

    def key_blocks(self, q0: int, q1: int) -> list[tuple[int, int, bool]]:
        """Key blocks ``(k0, k1, masked)`` for query rows ``[q0, q1)``, only where some row sees a key.

        Keys ``[start, end)`` are visible to some row of the tile, ``[fs, fe)`` to every row; blocks
        outside the band are skipped (so a window costs O(Lq * window)), blocks on its edges are
        ``masked`` (and, with ALiBi, every block, for its bias).
        """
        lk, off, lo, hi = self.lk, self.offset, self.lo, self.hi
        start = 0 if lo is None else max(0, q0 + off + lo)
        end = lk if hi is None else min(lk, q1 + off + hi)
        if end <= start:
            return []
        fs = start if lo is None else min(end, max(start, q1 - 1 + off + lo))
        fe = end if hi is None else max(fs, min(end, q0 + off + hi + 1))
        biased = self.slopes is not None
        blocks: list[tuple[int, int, bool]] = []
        for a, b, masked in ((start, fs, True), (fs, fe, biased), (fe, end, True)):
            if b > a:
                nb = -(-(b - a) // self.tk_target)
                step = -(-(b - a) // nb)
                blocks.extend((k0, min(k0 + step, b), masked) for k0 in range(a, b, step))
        return blocks

    def tasks(self) -> list[_Task]:
        """``(n, q0, q1, key blocks)``, batch-major (a thread's K^T copy serves consecutive tiles)."""
        starts = self.tile_starts[::-1] if self.causal and self.lo is None else self.tile_starts  # causal: heaviest tiles first
        blocks = {q0: self.key_blocks(q0, min(q0 + self.tq, self.lq)) for q0 in starts}
        return [(n, q0, min(q0 + self.tq, self.lq), blocks[q0]) for n in range(self.n) for q0 in starts]


_Task = tuple[int, int, int, list[tuple[int, int, bool]]]


# ----------------------------------------------------------------------------------------------
# the tile kernel


def _noop(name: str) -> None:
    return None


def _run_tasks(plan: _Plan, tasks: Iterable[_Task], out: list[np.ndarray], prof: dict[str, float] | None) -> None:
    """Compute the output rows of ``tasks`` into ``out`` in this thread."""
    sc = _scratch()
    last = [time.perf_counter()] if prof is not None else None

    def lap(name: str) -> None:
        assert prof is not None and last is not None
        now = time.perf_counter()
        prof[name] = prof.get(name, 0.0) + now - last[0]
        last[0] = now

    tick: Callable[[str], None] = lap if prof is not None else _noop
    try:
        _tiles(plan, tasks, out, sc, tick)
    finally:
        sc.trim(_KEEP_BYTES)


def _tiles(plan: _Plan, tasks: Iterable[_Task], out: list[np.ndarray], sc: _Scratch, tick: Callable[[str], None]) -> None:
    """The tile loop: for each task, its key blocks through GEMM, exponential, GEMM (see the module doc)."""
    dt = plan.dtype
    d, dv, lk, tq = plan.d, plan.dv, plan.lk, plan.tq
    width = max(plan.tk_target, tq)  # widest key block (every block is cut to <= tk_target)
    sbuf = sc.get("s", tq * width, dt)
    qbuf = sc.get("q", tq * d, dt)
    acc = sc.get("acc", tq * dv, dt)
    tmp = sc.get("tmp", tq * dv, dt)
    lsum = sc.get("l", tq, dt)
    ltmp = sc.get("lt", tq, dt)
    mrow = sc.get("m", tq, dt)
    mblk = sc.get("mb", tq, dt)
    ones = sc.get("ones", lk, dt)
    ones.fill(1)
    nbuf = sc.get("nmask", tq * width, np.dtype(np.bool_)) if plan.mask_kind == "bool" else None
    kt_all = sc.get("kt", d * lk, dt).reshape(d, lk)
    sc.kt_key = None  # the buffer may hold another call's keys at a reused address
    cap = plan.softcap
    base = plan.lq - 1  # pattern index of j - i = 0
    accel = plan.accel
    use_exp2 = plan.use_exp2 and accel is None
    expf = np.exp2 if use_exp2 else np.exp

    kmax = 0.0  # max_j |k_j| of the keys in kt_all
    head = -1  # batch element whose logit range ``rng`` is known
    rng = -math.inf
    for n, q0, q1, blocks in tasks:
        r = q1 - q0
        ksrc = plan.k_src[n]
        if sc.kt_key != ksrc:
            np.copyto(kt_all, plan.ks[n].T)
            sc.kt_key = ksrc
            if plan.allow_bounded:
                kmax = math.sqrt(float(np.max(np.einsum("dl,dl->l", kt_all, kt_all))))
            tick("transpose K")
        if head != n:
            head, rng = n, plan.logit_range(n)
        qt = plan.qs[n][q0:q1]
        bounded = rng >= 0 and (
            (cap is not None and cap <= rng) or abs(plan.scale) * kmax * math.sqrt(float(np.max(np.einsum("id,id->i", qt, qt)))) <= rng
        )
        vn = plan.vs[n]
        mn = plan.ms[n] if plan.ms is not None else None
        o = out[n][q0:q1]
        if not blocks:  # the causal or window band hides every key from these rows
            o[...] = 0
            continue
        a = acc[: r * dv].reshape(r, dv)
        t = tmp[: r * dv].reshape(r, dv)
        lrow = lsum[:r]
        lt = ltmp[:r]
        m = mrow[:r].reshape(r, 1)
        mb = mblk[:r].reshape(r, 1)
        # the logit is s = c q.k; with a soft cap s = cap tanh(c q.k / cap) (Gemma 2); c folds log2(e) for exp2
        unit = _LOG2E if bounded and use_exp2 else 1.0
        qs = np.multiply(qt, plan.scale * unit if cap is None else plan.scale / cap, out=qbuf[: r * d].reshape(r, d))
        bias = None if bounded else plan.bias_pattern(n)
        tick("other")
        for bi, (k0, k1, masked) in enumerate(blocks):
            cols = k1 - k0
            s = sbuf[: r * cols].reshape(r, cols)
            np.matmul(qs, kt_all[:, k0:k1], out=s)
            tick("GEMM q k^T")
            if cap is not None:
                np.tanh(s, out=s)
                np.multiply(s, cap * unit, out=s)
                tick("softcap")
            mt = None
            if mn is not None:
                mt = mn[slice(None) if mn.shape[0] == 1 else slice(q0, q1), slice(None) if mn.shape[1] == 1 else slice(k0, k1)]
            if bounded:
                # logits bounded by |U| <= R: p = e^s stays normal, no running maximum needed
                fused = accel is not None and mt is None  # e^s and its row sums in one pass
                if fused:
                    assert accel is not None
                    if masked:  # the band's edge: -inf outside it, e^-inf = 0
                        np.add(s, _toeplitz(plan.pat_bias, k0 - q0 + base, r, cols), out=s)
                    accel(s, lrow if bi == 0 else lt)
                else:
                    expf(s, out=s)
                tick("exp")
                if masked and not fused:
                    np.multiply(s, _toeplitz(plan.pat_mul, k0 - q0 + base, r, cols), out=s)
                if mt is not None:
                    np.multiply(s, mt, out=s)
                tick("mask")
                if bi == 0:
                    np.matmul(s, vn[k0:k1], out=a)
                    tick("GEMM p v")
                    if not fused:
                        np.matmul(s, ones[k0:k1], out=lrow)
                    tick("row sums")
                else:
                    np.matmul(s, vn[k0:k1], out=t)
                    a += t
                    tick("GEMM p v")
                    if not fused:
                        np.matmul(s, ones[k0:k1], out=lt)
                    lrow += lt
                    tick("row sums")
                continue
            # online softmax (Milakov & Gimelshein 2018) with a running maximum
            if masked:
                assert bias is not None
                np.add(s, _toeplitz(bias, k0 - q0 + base, r, cols), out=s)
            if mt is not None:
                if plan.mask_kind == "bool":
                    assert nbuf is not None
                    hidden = np.logical_not(mt, out=nbuf[: mt.size].reshape(mt.shape))
                    np.copyto(s, -np.inf, where=hidden)
                else:
                    np.add(s, mt, out=s)
            tick("mask")
            np.max(s, axis=1, keepdims=True, out=mb)
            tick("max")
            if bi == 0:
                np.copyto(m, mb)
                ms = np.where(np.isneginf(m), 0, m) if not np.isfinite(m).all() else m
                np.subtract(s, ms, out=s)
                tick("subtract")
                np.exp(s, out=s)
                tick("exp")
                np.matmul(s, vn[k0:k1], out=a)
                tick("GEMM p v")
                np.matmul(s, ones[k0:k1], out=lrow)
                tick("row sums")
            else:
                mnew = np.maximum(m, mb)
                ms = np.where(np.isneginf(mnew), 0, mnew) if not np.isfinite(mnew).all() else mnew
                alpha = np.exp(m - ms)
                np.copyto(m, mnew)
                np.subtract(s, ms, out=s)
                tick("subtract")
                np.exp(s, out=s)
                tick("exp")
                a *= alpha
                np.matmul(s, vn[k0:k1], out=t)
                a += t
                tick("GEMM p v")
                lrow *= alpha[:, 0]
                np.matmul(s, ones[k0:k1], out=lt)
                lrow += lt
                tick("row sums")
        # rows with no visible key have l == 0 and give zeros (never NaN)
        lcol = lrow.reshape(r, 1)
        if (lrow > 0).all():
            np.divide(a, lcol, out=o)
        else:
            o[...] = 0
            np.divide(a, lcol, out=o, where=lcol > 0)
        tick("normalise")


# ----------------------------------------------------------------------------------------------
# small problems: one batched pass


def _sdpa_small(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray | None,
    scale: float,
    causal: bool,
    window: tuple[int, int] = (-1, -1),
    slopes: np.ndarray | None = None,
    softcap: float | None = None,
) -> np.ndarray:
    lq, lk = q.shape[-2], k.shape[-2]
    if softcap is None:
        s = (q * np.asarray(scale, q.dtype)) @ np.swapaxes(k, -1, -2)
    else:
        s = (q * np.asarray(scale / softcap, q.dtype)) @ np.swapaxes(k, -1, -2)
        np.tanh(s, out=s)
        s *= np.asarray(softcap, q.dtype)
    rel = np.arange(lk)[None, :] - np.arange(lq)[:, None] - (lk - lq)  # j - i - (Lk - Lq)
    if slopes is not None:
        s = s - (np.asarray(slopes, np.float64)[..., None, None] * np.abs(rel)).astype(q.dtype)
    left, right = int(window[0]), int(window[1])
    if causal or left >= 0 or right >= 0:
        keep = np.ones((lq, lk), dtype=bool)
        if causal:
            keep &= rel <= 0
        if left >= 0:
            keep &= rel >= -left
        if right >= 0:
            keep &= rel <= right
        s = np.where(keep, s, -np.inf) if not keep.all() else s
    if mask is not None:
        s = np.where(mask, s, -np.inf) if mask.dtype == np.bool_ else s + mask
    m = np.max(s, axis=-1, keepdims=True)
    if not np.isfinite(m).all():
        m = np.where(np.isneginf(m), 0, m)
    s -= m
    np.exp(s, out=s)
    lsum = np.sum(s, axis=-1, keepdims=True)
    out = s @ v
    if (lsum > 0).all():
        out /= lsum
    else:
        np.divide(out, lsum, out=out, where=lsum > 0)  # rows with l == 0 are already zeros
    return out


# ----------------------------------------------------------------------------------------------
# entry point


def sdpa_numpy(
    q: Any,
    k: Any,
    v: Any,
    *,
    scale: float,
    mask: Any = None,
    causal: bool = False,
    block_size: int = 256,
    window: tuple[int, int] = (-1, -1),
    alibi_slopes: Any = None,
    softcap: float | None = None,
    num_threads: int | None = None,
    profile: dict[str, float] | None = None,
    accel: bool | None = None,
) -> np.ndarray | None:
    """Exact attention on heads-first NumPy arrays, or ``None`` where this path does not apply.

    ``out = softmax(scale * q k^T + bias) v`` with ``q: (..., H, Lq, D)``, ``k: (..., H, Lk, D)``,
    ``v: (..., H, Lk, Dv)`` (batch dimensions broadcast); ``mask`` is a bool (True = attend) or
    float (added) array broadcastable to ``(..., H, Lq, Lk)`` of the inputs' dtype; ``causal`` is
    bottom-right aligned (query ``i`` sees key ``j`` iff ``j <= i + Lk - Lq``). Rows with no
    visible key give zeros. Agrees with :func:`.dense.sdpa_generic` to rounding.

    FlashAttention-2's options, bottom-right aligned as ``causal`` (see :func:`.dense.sdpa`):
    ``window = (left, right)`` (query ``i`` sees keys ``i + Lk - Lq - left .. i + Lk - Lq + right``,
    -1 unbounded; key blocks outside the band are never computed, so the cost is O(Lq * window)),
    ``alibi_slopes`` broadcastable to the batch dimensions ``(..., H)`` (bias ``-slope |i + Lk - Lq - j|``,
    Press et al. 2022) and ``softcap`` (``cap tanh(s / cap)`` on the scaled scores, Gemma 2).

    ``block_size`` is accepted for the generic path's signature; this path sizes its own tiles to
    the L2 cache (the result does not depend on tiling beyond rounding). ``num_threads`` overrides
    :func:`get_num_threads`. ``profile``, if given, receives seconds per phase (for the benchmark).
    ``accel``: fuse the exponential and row sums of unmasked bounded float32 tiles into one compiled
    pass (:mod:`._accel`, the ``numba`` extra); ``None``: where installed and the call is large enough
    (:func:`._accel.wanted`); without Numba the NumPy pass runs.
    """
    if not (type(q) is np.ndarray and type(k) is np.ndarray and type(v) is np.ndarray):
        return None
    dt = q.dtype
    if dt not in _LOGIT_RANGE or k.dtype != dt or v.dtype != dt:
        return None
    if q.ndim < 2 or k.ndim < 2 or v.ndim < 2 or q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        return None
    if min(q.shape[-2:]) == 0 or min(k.shape[-2:]) == 0 or v.shape[-1] == 0:
        return None
    if mask is not None:
        if type(mask) is not np.ndarray or mask.ndim < 1 or not (mask.dtype == np.bool_ or mask.dtype == dt):
            return None
    try:
        batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
        if mask is not None:
            np.broadcast_shapes(mask.shape, batch + (q.shape[-2], k.shape[-2]))
            if mask.ndim > 2:
                batch = np.broadcast_shapes(batch, mask.shape[:-2])
    except ValueError:
        return None
    if not math.isfinite(scale):
        return None
    slopes = None
    if alibi_slopes is not None:
        slopes = np.asarray(alibi_slopes, dtype=np.float64)
        try:
            batch = np.broadcast_shapes(batch, slopes.shape)
        except ValueError:
            return None
    if softcap is not None and not (math.isfinite(softcap) and softcap > 0):
        return None
    window = (int(window[0]), int(window[1]))
    lq, lk = int(q.shape[-2]), int(k.shape[-2])
    n = int(math.prod(batch))
    if n == 0:
        return None
    if n * lq * lk <= _SMALL_SCORES and profile is None:
        return _sdpa_small(q, k, v, mask, scale, causal, window, slopes, softcap)
    plan = _Plan(q, k, v, mask, scale, causal, tuple(batch), window, slopes, softcap)
    if accel is None:  # the compiled pass where installed, once loaded or once a call pays for loading it
        accel = _accel.wanted(n * lq * lk, dt)
    plan.accel = _accel.exp_rowsum() if accel and dt == np.float32 else None
    plan.use_exp2 = plan.accel is None and _prefer_exp2(dt)  # timed here, in the caller's thread, once per process
    out = np.empty(tuple(batch) + (lq, int(v.shape[-1])), dtype=dt)
    outs = list(out.reshape(n, lq, out.shape[-1])) if n else []
    tasks = plan.tasks()
    # the caller's thread records the profile, the pool's threads do not
    run_tasks(lambda ts: _run_tasks(plan, ts, outs, None), tasks, num_threads, run_here=lambda ts: _run_tasks(plan, ts, outs, profile))
    return out
