"""Attention of a few new queries over a key/value cache (incremental decoding).

When a causal model generates one token at a time, each step has ``Lq`` new queries (``Lq = 1``
while decoding, a chunk of the prompt while prefilling) and attends over every key so far: the
``Lk - Lq`` cached ones and the ``Lq`` new ones. Query ``i`` of the chunk sits at position
``Lk - Lq + i`` and sees keys ``j <= Lk - Lq + i``: causal masking aligned bottom-right, as
everywhere in attnkit (:func:`.dense.sdpa`), so a chunked forward equals the full causal forward.

With ``Lq = 1`` the causal mask hides nothing, and with grouped-query attention (Ainslie et al.
2023) the ``G = H / Hkv`` query heads of one key/value head read the same keys: the step is one
``(G * Lq) x D`` by ``D x Lk`` product per key/value head, i.e. a GEMV for multi-head attention and
a thin GEMM for GQA, bound by reading the cache once. :func:`decode_numpy` does exactly that on
NumPy arrays (heads folded into the query rows, the cache read through strided views, never copied);
everything else goes to :func:`.dense.sdpa`, which dispatches to torch's fused kernel (``enable_gqa``)
for torch tensors and to the tiled kernels otherwise. Both compute

    out = softmax(scale * q k^T + bias) v          (Vaswani et al. 2017; Dao et al. 2022)

Layout is heads-first: ``q: (..., H, Lq, D)``, ``k: (..., Hkv, Lk, D)``, ``v: (..., Hkv, Lk, Dv)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._array import Array, Namespace, is_numpy
from .._threads import BlasOneThread, blas_limiter_available
from . import overflow
from .dense import NO_WINDOW, sdpa

__all__ = ["cached_attention", "decode_numpy", "DECODE_ROWS"]

#: at most this many query rows per key/value head (``G * Lq``) take :func:`decode_numpy`; a longer
#: chunk (a prefill) goes to the tiled kernels, whose score tiles stay in cache
DECODE_ROWS = 64


def decode_numpy(q: np.ndarray, k: np.ndarray, v: np.ndarray, *, scale: float) -> np.ndarray:
    """Causal (bottom-right) attention of a short chunk of queries over NumPy keys/values.

    ``q: (..., H, Lq, D)``, ``k: (..., Hkv, Lk, D)``, ``v: (..., Hkv, Lk, Dv)`` with ``Hkv | H`` and
    ``Lq <= Lk``, one float dtype. The ``G = H / Hkv`` query heads of each key/value head and the
    ``Lq`` queries are folded into ``G * Lq`` rows, so each key/value head costs two BLAS products
    over its keys (``k`` and ``v`` may be strided views of a larger buffer: each ``(Lk, D)`` matrix
    only needs unit stride along ``D``). The softmax subtracts the row maximum; a chunk of ``Lq > 1``
    hides ``j > i + Lk - Lq`` (every row keeps at least one key). Returns ``(..., H, Lq, Dv)``.
    """
    if blas_limiter_available():
        # a few rows per product: BLAS's own threads only spin (on a loaded 2-core machine a 4 x 128 by
        # 128 x 4096 product took 80 ms with two OpenBLAS threads against 0.9 ms with one)
        with BlasOneThread():
            return _decode_numpy(q, k, v, scale)
    return _decode_numpy(q, k, v, scale)


def _decode_numpy(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    hq, lq, d = int(q.shape[-3]), int(q.shape[-2]), int(q.shape[-1])
    hk, lk = int(k.shape[-3]), int(k.shape[-2])
    g = hq // hk
    qs = np.multiply(q, np.asarray(scale, q.dtype))  # a fresh (..., H, Lq, D) array: folding the heads is a reshape
    qs = qs.reshape(*qs.shape[:-3], hk, g * lq, d)
    s = qs @ np.swapaxes(k, -1, -2)  # (..., Hkv, G*Lq, Lk)
    if lq > 1:  # row (h, i) hides keys j > i + Lk - Lq: a triangle in the last Lq columns
        hidden = np.triu(np.ones((lq, lq), dtype=bool), 1)
        tail = s[..., lk - lq :].reshape(*s.shape[:-2], g, lq, lq)
        tail[..., hidden] = -np.inf
        s[..., lk - lq :] = tail.reshape(*s.shape[:-2], g * lq, lq)
    s -= np.max(s, axis=-1, keepdims=True)
    np.exp(s, out=s)
    total = np.sum(s, axis=-1, keepdims=True)
    out = s @ v  # (..., Hkv, G*Lq, Dv)
    out /= total
    return out.reshape(*out.shape[:-3], hq, lq, int(v.shape[-1]))


def cached_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    xp: Namespace,
    scale: float,
    mask: Array | None = None,
    window: tuple[int, int] = NO_WINDOW,
    alibi_slopes: Array | None = None,
    softcap: float | None = None,
    dropout_p: float = 0.0,
    rng: np.random.Generator | None = None,
    block_size: int = 256,
    backend: str = "auto",
    engine: str = "auto",
) -> Array:
    """Causal attention of the last ``Lq`` positions over all ``Lk`` keys (bottom-right aligned).

    ``k``/``v`` are the cache's keys and values in time order, the newest last (heads-first, ``Hkv``
    heads dividing ``H``); ``window``, ``alibi_slopes``, ``softcap`` and ``mask`` as in
    :func:`.dense.sdpa`, aligned bottom-right. A single query (``Lq = 1``) needs no causal mask. NumPy
    inputs without those options take :func:`decode_numpy`; the rest :func:`.dense.sdpa`.
    """
    lq = int(q.shape[-2])
    if k.dtype != q.dtype:
        k, v = xp.astype(k, q.dtype), xp.astype(v, q.dtype)
    plain = mask is None and tuple(window) == NO_WINDOW and alibi_slopes is None and softcap is None and dropout_p == 0.0
    if (
        plain
        and backend != "generic"
        and is_numpy(xp)
        and type(q) is np.ndarray
        and q.dtype in (np.float32, np.float64)
        and lq <= int(k.shape[-2])
        and (int(q.shape[-3]) // int(k.shape[-3])) * lq <= DECODE_ROWS
        # logits or value sums past the dtype's range: sdpa's guarded path (a KV cache notes its maxima, so
        # this reads only the new tokens; see .overflow)
        and not overflow.at_risk(xp, q.dtype, logits=(q, k, q.shape[-1], scale), values=(v, k.shape[-2]))
    ):
        return decode_numpy(q, k, v, scale=scale)
    kw: dict[str, Any] = dict(window=tuple(window), alibi_slopes=alibi_slopes, softcap=softcap, engine=engine)
    return sdpa(q, k, v, xp=xp, scale=scale, mask=mask, causal=lq > 1, dropout_p=dropout_p, rng=rng, block_size=block_size, backend=backend, **kw)
