"""Optional compiled softmax pass for the NumPy kernels (the ``numba`` extra).

On CPUs without AVX-512 NumPy's float32 ``exp`` runs at about 0.8 G values/s a core (1.26 ns a value
on the 2-core Zen 3 development machine, measured), which is 40% of the time the two GEMMs take per
attention score. :func:`exp_rowsum` replaces ``np.exp(s, out=s)`` followed by the row sums
``s @ 1`` by one fused pass compiled with Numba (Lam, Pitrou & Seibert 2015, "Numba: a LLVM-based
Python JIT compiler"): the Cephes ``expf`` algorithm (Moshier 1989, "Methods and Programs for
Mathematical Functions": ``e^x = 2^n e^f`` with ``n = round(x log2 e)``, ``f = x - n ln 2`` in
Cody-Waite's two-part form and a degree-7 polynomial for ``e^f``, relative error below 2^-22 ~ 2.4e-7
on ``[-87, 88.37]``), written in plain arithmetic so that LLVM vectorises it; about 0.35 ns a value.
Outside that range it is exactly ``0`` below -87 (``-inf`` included; NumPy gives a subnormal down
to -103, invisible next to any normal term of the row) and ``+inf`` above 88.37 (NumPy overflows
at 88.72); ``NaN`` stays ``NaN``. The kernels call it only on tiles whose logits are bounded by 60.

Nothing here imports Numba until a kernel asks for :func:`exp_rowsum` (never on ``import
attnkit``); ``$ATTNKIT_NUMBA=0`` turns it off, and without Numba the kernels keep their NumPy pass.
The kernel is compiled eagerly for C-contiguous float32 rows, once per process (cached on disk by
Numba), under a lock, so worker threads never compile.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["exp_rowsum", "softmax_band", "enabled", "loaded", "wanted", "exp_rowsum_reference"]

#: a call with at least this many scores loads the compiled pass (Numba's import and cache load take
#: about a second, once per process) ...
LOAD_MIN_SCORES = 1 << 24
#: ... and once loaded, calls with at least this many use it (smaller ones keep NumPy's pass: the
#: gain there is microseconds, and small results then do not depend on what ran before)
USE_MIN_SCORES = 1 << 20

_lock = threading.Lock()
_kernel: Any = None  # the compiled function, or False when unavailable / disabled
_found: bool | None = None  # whether numba is installed (looked up once: find_spec reads the disk)


def enabled() -> bool:
    """Whether the compiled pass may be used: Numba installed and ``$ATTNKIT_NUMBA`` not ``0``/``off``."""
    if os.environ.get("ATTNKIT_NUMBA", "").strip().lower() in ("0", "off", "false", "no"):
        return False
    global _found
    if _found is None:
        _found = importlib.util.find_spec("numba") is not None
    return _kernel is not False and (_kernel is not None or _found)


def loaded() -> bool:
    """Whether the kernel is compiled in this process already (so using it costs nothing more)."""
    return bool(_kernel)


def wanted(scores: int, dtype: Any) -> bool:
    """Whether a kernel call over ``scores`` attention scores of ``dtype`` should take the compiled pass."""
    if np.dtype(dtype) != np.float32 or scores < USE_MIN_SCORES or not enabled():
        return False
    return loaded() or scores >= LOAD_MIN_SCORES


def exp_rowsum() -> Callable[[np.ndarray, np.ndarray], None] | None:
    """``f(s, z)``: ``s <- e^s`` in place and ``z[i] = sum_j s[i, j]`` for a C-contiguous float32 ``s`` of
    shape ``(r, c)`` and ``z`` of shape ``(r,)``; ``None`` without Numba (or when disabled)."""
    k = _kernels()
    return None if k is None else k[0]


def softmax_band() -> Callable[[np.ndarray, int, int, bool, np.ndarray], None] | None:
    """``f(s, first, last, normalise, z)`` on a C-contiguous float32 stack of tiles ``s (h, r, c)`` and ``z (h,
    r)``: row ``i`` keeps columns ``i + first .. i + last - 1`` (clipped to the row); there ``s[g, i, j] <-
    e^s[g, i, j]``, divided by ``z[g, i]`` (their sum) when ``normalise``, and ``0`` on the other columns,
    unread. A banded tile needs no ``-inf`` mask, and its probabilities can come out normalised:
    the extra multiply of the row, in L1 after the exponential, cost 0.06 ns a score where NumPy's
    broadcast division of the ``P V`` rows by ``z`` afterwards cost 0.5-0.9 ns an output element
    (8.6 ms at L 16384, 8 heads, w 256, one core).

    For logits with ``|s| <= 87`` only (the local kernel calls it on tiles whose logits are bounded by
    60): it skips the range clamps of :func:`exp_rowsum` (15% of its time); ``NaN`` stays ``NaN``."""
    k = _kernels()
    return None if k is None else k[1]


def _kernels() -> tuple[Any, Any] | None:
    global _kernel
    if not enabled():
        return None
    if _kernel is None:
        with _lock:
            if _kernel is None:
                try:
                    _kernel = _compile()
                except Exception:  # numba present but unusable (version clash, no compiler target)
                    _kernel = False
    return _kernel or None


def _compile() -> tuple[Any, Any]:
    import numba

    f32 = np.float32
    # fastmath without nnan/ninf: -inf and NaN keep their meaning; reassoc lets the row sum vectorise
    flags = {"contract", "reassoc", "nsz", "arcp", "afn"}

    @numba.njit(fastmath=flags, inline="always")
    def expf_core(xc: Any) -> Any:  # pragma: no cover - compiled
        # e^x for |x| <= 87.3 (2^n stays a normal number); NaN in, NaN out
        n = np.floor(xc * f32(1.44269504088896341) + f32(0.5))
        f = xc - n * f32(0.693359375)
        f = f - n * f32(-2.12194440e-4)
        p = f32(1.9875691500e-4)
        p = p * f + f32(1.3981999507e-3)
        p = p * f + f32(8.3334519073e-3)
        p = p * f + f32(4.1665795894e-2)
        p = p * f + f32(1.6666665459e-1)
        p = p * f + f32(5.0000001201e-1)
        p = p * f * f + f + f32(1.0)
        # 2^n from its exponent bits: n in [-126, 127] for x in [-87.3, 88.37]
        return p * np.int32((np.int32(n) + np.int32(127)) << np.int32(23)).view(np.float32)

    @numba.njit(fastmath=flags, inline="always")
    def expf(x: Any) -> Any:  # pragma: no cover - compiled
        # written so that NaN falls through every select and stays NaN
        xc = x if not (x < f32(-87.0)) else f32(-87.0)
        xc = xc if not (xc > f32(88.37)) else f32(88.37)
        e = expf_core(xc)
        e = e if not (x < f32(-87.0)) else f32(0.0)
        return e if not (x > f32(88.37)) else f32(np.inf)

    @numba.njit("void(float32[:, ::1], float32[::1])", fastmath=flags, nogil=True, cache=True)
    def dense(s: Any, z: Any) -> None:  # pragma: no cover - compiled, exercised through the kernels
        rows, cols = s.shape
        for i in range(rows):
            acc = f32(0.0)
            row = s[i]
            for j in range(cols):
                e = expf(row[j])
                row[j] = e
                acc += e
            z[i] = acc

    @numba.njit("void(float32[:, :, ::1], int64, int64, boolean, float32[:, ::1])", fastmath=flags, nogil=True, cache=True)
    def band(s: Any, first: int, last: int, normalise: bool, z: Any) -> None:  # pragma: no cover - compiled
        heads, rows, cols = s.shape
        for g in range(heads):
            for i in range(rows):
                lo = min(max(i + first, 0), cols)
                hi = min(max(i + last, lo), cols)
                row = s[g, i]
                row[:lo] = f32(0.0)
                row[hi:] = f32(0.0)
                seg = row[lo:hi]
                acc = f32(0.0)
                for j in range(seg.shape[0]):
                    e = expf_core(seg[j])
                    seg[j] = e
                    acc += e
                z[g, i] = acc
                if normalise and acc != f32(0.0):
                    r = f32(1.0) / acc
                    for j in range(seg.shape[0]):
                        seg[j] *= r

    return dense, band


def exp_rowsum_reference(s: np.ndarray, z: np.ndarray) -> None:
    """What :func:`exp_rowsum`'s kernel computes, in NumPy (the default pass)."""
    np.exp(s, out=s)
    np.sum(s, axis=-1, out=z)
