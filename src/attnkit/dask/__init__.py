"""attnkit on Dask: lazy graphs over chunked arrays, from a laptop to a cluster.

Any mechanism given Dask arrays returns a Dask array and computes nothing in ``forward``
(:func:`lazy_forward`, called by :meth:`attnkit.Mechanism.forward`):

* batch dimensions keep their chunks; each block runs the mechanism's NumPy code (its fast path,
  its validation and its finiteness check), so a chunk holding NaN raises
  :class:`~attnkit.errors.NonFiniteError` when *it* is computed and the other chunks stay computable;
* linear attention over a sequence split into chunks reduces the key states ``(sum phi(k) [v, 1]^T,
  per-feature scale)`` of the shards in a tree (non-causal), or runs a prefix scan of them over the
  shards (causal, shards rounded up to multiples of ``chunk_size`` so the result is the single-machine
  one exactly) (:func:`split_linear_attention`);
* exact attention (``flash``) over a sequence split into several chunks runs split-K
  (:func:`split_k_attention`): each task computes one query block against one key shard, giving a
  partial output and its log-sum-exp, and a tree reduction merges the partials with the rule of
  :func:`attnkit.kernels.dense.merge_partials` (flash-decoding's split-K combine). No task holds more
  than one query block and one key shard, so memory per worker follows the chunk sizes, not ``L``.
  Causal attention skips the shards above the diagonal;
* local-global attention (``local_global``) over a chunked sequence runs the same split-K with its
  Longformer pattern as a per-tile mask: a query block reads only the key shards that hold a key it
  may see (its neighbours within the window radius, the shards of global keys, and every shard for a
  block that holds a global query).

Other mechanisms need the sequence axes in one chunk per block (they are rechunked so); their batch
chunks are mapped. Requires the ``dask`` extra (``pip install 'attnkit[dask]'``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ConfigError, ShapeError

__all__ = ["is_dask", "lazy_forward", "split_k_attention", "split_linear_attention"]

#: dimensions at the end of each input that belong to one item (the rest are batch dimensions)
_CORE = {"sequence": 3, "model": 2, "headless": 2, "graph": 2}
_QUERY_CORE = {"sequence": 3, "model": 2, "headless": 2, "graph": 1}
_MASK_CORE = {"sequence": 3, "model": 3, "headless": 2, "graph": 1}


def is_dask(x: object) -> bool:
    """Whether ``x`` is a Dask array (without importing Dask when it is not loaded)."""
    mod = type(x).__module__
    return mod.startswith("dask.") and type(x).__name__ == "Array"


def _da() -> Any:
    try:
        import dask.array as da
    except ImportError as exc:  # pragma: no cover - the extra is missing
        raise ConfigError("query: Dask arrays need the dask extra: pip install 'attnkit[dask]'") from exc
    return da


def _as_dask(x: Any, da: Any) -> Any:
    return x if x is None or is_dask(x) else da.asarray(np.asarray(x))


def _split(x: Any, core: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    core = min(core, x.ndim)
    return tuple(x.shape[: x.ndim - core]), tuple(x.shape[x.ndim - core :])


def _probe_shape(core_shape: tuple[int, ...], layout: str, role: str) -> tuple[int, ...]:
    """The core shape with its sequence axis cut to one position (cheap to run)."""
    if not core_shape:
        return core_shape
    seq_axis = {"sequence": -3, "model": -2, "headless": -2, "graph": -2}[layout]
    if role == "query" and layout == "graph":
        return core_shape
    if len(core_shape) < -seq_axis:  # a single head-less query (D,)
        return core_shape
    out = list(core_shape)
    out[seq_axis] = 1
    return tuple(out)


def _out_width(mech: Any, params: Mapping[str, Any], cores: dict[str, tuple[int, ...]], dtype: Any) -> int:
    """The width of the output's last axis, from one forward on zeros with one position (validates the widths)."""
    arrays = {name: np.zeros(_probe_shape(shape, mech.input_layout, name), dtype=dtype) for name, shape in cores.items()}
    extras = {n: a for n, a in arrays.items() if n not in ("query", "key", "value")}
    out = mech._forward(params, arrays["query"], arrays.get("key"), arrays.get("value"), mask=None, **extras)
    return int(np.shape(out)[-1])


def lazy_forward(mech: Any, params: Mapping[str, Any], query: Any, key: Any = None, value: Any = None, *, mask: Any = None, **extras: Any) -> Any:
    """``mech``'s forward as a Dask graph over the batch chunks (split-K for chunked exact attention).

    Computes nothing but a one-position probe that checks the widths; everything else (the finiteness
    check included) runs per block when the result is computed.
    """
    da = _da()
    if mech.name == "flash" and getattr(mech, "rope", None) is None and not (mech.training and mech.dropout > 0) and mask is None:
        q = _as_dask(query, da)
        k = q if key is None else _as_dask(key, da)
        v = k if value is None else _as_dask(value, da)
        if q.ndim >= 3 and (q.numblocks[-3] > 1 or k.numblocks[-3] > 1):
            return split_k_attention(q, k, v, heads=mech.heads, dim=mech.dim, scale=mech.effective_scale, causal=mech.causal)
    if mech.name == "local_global" and getattr(mech, "rope", None) is None and mask is None:  # positions only move RoPE
        q = _as_dask(query, da)
        k = q if key is None else _as_dask(key, da)
        v = k if value is None else _as_dask(value, da)
        shards = q.ndim >= 3 and (q.numblocks[-3] > 1 or k.numblocks[-3] > 1)
        if shards and k.ndim >= 3 and k.shape[-2] == mech.heads and q.shape[-3] == k.shape[-3]:
            pattern = _LocalGlobal(mech.radius, mech.global_indices(int(q.shape[-3])), mech.causal)
            return split_k_attention(q, k, v, heads=mech.heads, dim=mech.dim, scale=mech.effective_scale, causal=mech.causal, pattern=pattern)
    if mech.name == "linear" and mask is None:
        q = _as_dask(query, da)
        k = q if key is None else _as_dask(key, da)
        v = k if value is None else _as_dask(value, da)
        if q.ndim >= 3 and (q.numblocks[-3] > 1 or k.numblocks[-3] > 1):
            return split_linear_attention(mech, params, q, k, v)
    layout = mech.input_layout
    named: dict[str, Any] = {"query": query, "key": key, "value": value, **extras}
    named = {n: _as_dask(x, da) for n, x in named.items() if x is not None}
    qx = named["query"]
    batch_q, core_q = _split(qx, _QUERY_CORE[layout])
    if layout == "headless" and qx.ndim == 1:
        batch_q, core_q = (), tuple(qx.shape)
    cores = {"query": core_q}
    batches = [batch_q]
    for name, x in named.items():
        if name == "query":
            continue
        b, c = _split(x, _CORE[layout])
        cores[name] = c
        batches.append(b)
    try:
        batch = tuple(np.broadcast_shapes(*batches))
    except ValueError:
        shapes = ", ".join(f"{n} {tuple(x.shape)}" for n, x in named.items())
        raise ShapeError(f"query, key, value: batch dimensions do not broadcast ({shapes})") from None
    dtype = np.result_type(*(x.dtype for x in named.values()))
    if dtype.kind != "f":
        raise ShapeError(f"query: expected float arrays, got {dtype}")
    width = _out_width(mech, params, cores, dtype)
    nb = len(batch)
    # batch chunks: the query's where it has the dimension, else one chunk
    q_chunks = qx.chunks[: len(batch_q)]
    batch_chunks = tuple(
        q_chunks[i - (nb - len(batch_q))] if i >= nb - len(batch_q) and batch_q[i - (nb - len(batch_q))] == batch[i] else (batch[i],)
        for i in range(nb)
    )
    bidx = "".join(chr(ord("a") + i) for i in range(nb))
    letters = iter("nopqrstuvwxyz")
    args: list[Any] = []
    names: list[str] = []
    for name, x in named.items():
        core = cores[name]
        x = da.broadcast_to(x, batch + core)
        x = x.rechunk(batch_chunks + tuple((c,) for c in core))
        ind = bidx + "".join(next(letters) for _ in core)
        args += [x, ind]
        names.append(name)
    if mask is not None:
        m = _as_dask(mask, da)
        mb, mc = _split(m, _MASK_CORE[layout])
        if len(mb) > nb:
            raise ShapeError(f"mask: expected at most {nb} batch dimensions before its last {len(mc)}, got shape {tuple(m.shape)}")
        m = m.reshape((1,) * (nb - len(mb)) + tuple(m.shape))
        chunks = tuple(batch_chunks[i] if m.shape[i] == batch[i] else (m.shape[i],) for i in range(nb)) + tuple((c,) for c in mc)
        m = m.rechunk(chunks)
        args += [m, bidx + "".join(next(letters) for _ in mc)]
        names.append("mask")
    out_core = (*core_q[:-1], width)
    out_ind = bidx + "".join(next(letters) for _ in out_core)

    def block(*arrays: np.ndarray) -> np.ndarray:
        got = dict(zip(names, arrays, strict=True))
        m = got.pop("mask", None)  # its batch dimensions of size 1 broadcast inside the mechanism
        q = got.pop("query")
        return np.asarray(mech._forward(params, q, got.pop("key", None), got.pop("value", None), mask=m, **got))

    return da.blockwise(
        block,
        out_ind,
        *args,
        new_axes={c: s for c, s in zip(out_ind[nb:], out_core, strict=True)},
        concatenate=True,
        dtype=dtype,
        meta=np.empty((0,) * (nb + len(out_core)), dtype=dtype),
    )


# ------------------------------------------------------------------------------------------- split-K
def _partial(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, causal: bool, offset: int,
    pattern: _LocalGlobal | None = None, q0: int = 0, k0: int = 0,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """One query block against one key shard: heads-last blocks in, (out heads-first, lse) out.

    ``pattern``: a local-global pattern, applied as the boolean tile of the block's rows ``q0 + i`` and
    the shard's keys ``k0 + j`` (the causal condition then folds into it)."""
    from .._threads import BlasOneThread
    from ..kernels import overflow
    from ..kernels.dense import sdpa_generic

    qh, kh, vh = (np.moveaxis(x, -2, -3) for x in (q, k, v))
    cdt = np.result_type(q.dtype, np.float32)
    if overflow.at_risk(np, cdt, logits=(qh, kh, qh.shape[-1], scale), values=(vh, kh.shape[-2])):
        # logits (and so lse) or value sums past the dtype's range: this shard in float64 (see kernels.overflow);
        # merge_partials promotes the other shards' partials, _finish casts back
        if not overflow.can_widen(np, cdt):
            overflow.raise_out_of_range("query, key", cdt)
        cdt = np.dtype(np.float64)
    qh, kh, vh = (x.astype(cdt, copy=False) for x in (qh, kh, vh))
    mask = None if pattern is None else pattern.tile(q0, int(qh.shape[-2]), k0, int(kh.shape[-2]))
    # whole-shard key blocks and 512-row query tiles: few, large GEMMs (a tile's scores stay within L2/L3 sizes)
    # Dask runs one task per worker thread: BLAS held to one thread, so workers do not oversubscribe the cores
    with BlasOneThread():
        return sdpa_generic(
            qh, kh, vh, xp=np, scale=scale, mask=mask, causal=causal and mask is None, offset=offset, return_lse=True,
            block_size=max(1, int(kh.shape[-2])), q_block=512,
        )  # fmt: skip


class _LocalGlobal:
    """Longformer's pattern on one sequence (:func:`attnkit.kernels.local.local_global_mask`), by shard.

    Query ``i`` sees key ``j`` iff ``|i - j| <= radius`` or ``j`` or ``i`` is global (and ``j <= i`` when
    causal). :meth:`needs` decides from the index ranges alone whether a (query block, key shard) pair
    holds any visible key, so a block reads only its neighbouring shards, the shards holding global
    keys, and (for a block holding global queries) every shard.
    """

    def __init__(self, radius: int, global_idx: np.ndarray, causal: bool) -> None:
        self.radius = int(radius)
        self.globals = np.asarray(global_idx, dtype=np.int64)
        self.causal = bool(causal)

    def needs(self, q0: int, q1: int, k0: int, k1: int) -> bool:
        last_key = min(k1 - 1, q1 - 1) if self.causal else k1 - 1  # the last key any row of the block may see
        if last_key < k0:
            return False
        if k0 <= q1 - 1 + self.radius and last_key >= q0 - self.radius:
            return True  # the band crosses the pair
        g = self.globals
        if np.any((g >= k0) & (g <= last_key)):
            return True  # a global key every row sees (causal: one at or before the block's last row)
        rows = g[(g >= q0) & (g < q1)]  # global queries, which see every key (causal: every earlier one)
        return bool(rows.size and (not self.causal or rows.max() >= k0))

    def tile(self, q0: int, nq: int, k0: int, nk: int) -> np.ndarray:
        from ..kernels.local import local_global_tile

        return local_global_tile(q0, nq, k0, nk, self.radius, self.globals, self.causal)


def _merge(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    from ..kernels.dense import merge_partials

    return merge_partials(a[0], a[1], b[0], b[1], np)


def _finish(part: tuple[np.ndarray, np.ndarray], dtype: np.dtype) -> np.ndarray:
    return np.moveaxis(part[0], -3, -2).astype(dtype, copy=False)


def _check(x: np.ndarray, name: str) -> np.ndarray:
    from .._array import check_finite

    check_finite(x, name, np)
    return x


def _check_shards(q: Any, k: Any, v: Any, heads: int, dim: int) -> None:
    """The shapes split-K and sharded linear attention need: ``(..., L, H, D)`` with matching widths."""
    for name, x in (("query", q), ("key", k), ("value", v)):
        if x.ndim < 3 or x.shape[-2] != heads:
            raise ShapeError(f"{name}: expected shape (..., L, H={heads}, D), got {tuple(x.shape)}")
    if q.shape[-1] != dim or k.shape[-1] != dim:
        raise ShapeError(f"key: expected head dim {dim} in query and key, got {q.shape[-1]} and {k.shape[-1]}")
    if v.shape[-3] != k.shape[-3]:
        raise ShapeError(f"value: expected Lk = {k.shape[-3]} (as key) along axis -3, got {v.shape[-3]}")


def _broadcast_batch(q: Any, k: Any, v: Any) -> tuple[Any, Any, Any, tuple[int, ...], np.dtype]:
    """``q, k, v`` broadcast to their common batch dimensions; the batch shape and the result dtype."""
    import dask.array as da

    batch = tuple(np.broadcast_shapes(q.shape[:-3], k.shape[:-3], v.shape[:-3]))
    dtype = np.result_type(q.dtype, k.dtype, v.dtype)
    q, k, v = (da.broadcast_to(x, batch + tuple(x.shape[-3:])) for x in (q, k, v))
    return q, k, v, batch, dtype


def _finiteness_layer(layer: dict[Any, Any], token: str, q: Any, k: Any, v: Any) -> dict[str, str]:
    """One task per input block that checks it for NaN/inf (:func:`_check`); the checked blocks' names."""
    names = {}
    for arr, label in ((q, "query"), (k, "key"), (v, "value")):
        cname = f"attnkit-finite-{label}-{token}"
        for idx in np.ndindex(*arr.numblocks):
            ckey = (cname, *idx)
            layer[ckey] = (_check, (arr.name, *idx), label)
        names[label] = cname
    return names


def _tree(layer: dict[Any, Any], parts: list[Any], merge: Any, prefix: str, where: tuple[int, ...]) -> Any:
    """Merge ``parts`` pairwise in a binary tree of ``merge`` tasks; the root's key (``None`` if no part)."""
    level = 0
    while len(parts) > 1:
        nxt = []
        for t in range(0, len(parts) - 1, 2):
            mkey = (f"{prefix}-merge{level}", *where, t)
            layer[mkey] = (merge, parts[t], parts[t + 1])
            nxt.append(mkey)
        if len(parts) % 2:
            nxt.append(parts[-1])
        parts, level = nxt, level + 1
    return parts[0] if parts else None


def split_k_attention(
    q: Any, k: Any, v: Any, *, heads: int, dim: int, scale: float | None = None, causal: bool = False, pattern: _LocalGlobal | None = None
) -> Any:
    """Exact attention of Dask arrays ``q (..., Lq, H, D)``, ``k (..., Lk, H, D)``, ``v (..., Lk, H, Dv)``,
    split into query blocks (``q``'s chunks along ``Lq``) and key shards (``k``'s chunks along ``Lk``).

    Each task holds one query block and one key shard; partials merge in a binary tree with the
    log-sum-exp rule. ``causal`` (bottom-right aligned) skips the shards entirely above the diagonal.
    Each input block is checked for NaN/inf when computed. ``pattern`` (local-global attention, ``Lq ==
    Lk``): each query block reads only the key shards that hold a key it may see.
    """
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph
    from dask.tokenize import tokenize

    _check_shards(q, k, v, heads, dim)
    if k.shape[-3] == 0:
        raise ShapeError("key: expected at least one key (Lk >= 1), got an empty key set")
    scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)
    q, k, v, batch, dtype = _broadcast_batch(q, k, v)
    nb = len(batch)
    bchunks = q.chunks[:nb]
    q = q.rechunk(bchunks + (q.chunks[-3], (heads,), (dim,)))
    k = k.rechunk(bchunks + (k.chunks[-3], (heads,), (dim,)))
    v = v.rechunk(bchunks + (k.chunks[-3], (heads,), (int(v.shape[-1]),)))
    lq, lk = int(q.shape[-3]), int(k.shape[-3])
    offset = lk - lq
    qs = np.cumsum((0,) + q.chunks[-3])
    ks = np.cumsum((0,) + k.chunks[-3])
    token = tokenize(q, k, v, scale, causal, None if pattern is None else (pattern.radius, pattern.globals.tolist(), pattern.causal))
    name = f"attnkit-splitk-{token}"
    layer: dict[Any, Any] = {}
    chk = _finiteness_layer(layer, token, q, k, v)
    for bi in np.ndindex(*q.numblocks[:nb]):
        for i in range(q.numblocks[-3]):
            q0, q1 = int(qs[i]), int(qs[i + 1])
            parts = []
            for j in range(k.numblocks[-3]):
                k0, k1 = int(ks[j]), int(ks[j + 1])
                if pattern is not None:
                    if not pattern.needs(q0, q1, k0, k1):
                        continue  # no row of the block sees a key of this shard
                elif causal and k0 > q1 - 1 + offset:
                    continue  # every key of this shard is in the future of every query of the block
                pkey = (f"{name}-part", *bi, i, j)
                layer[pkey] = (
                    _partial,
                    (chk["query"], *bi, i, 0, 0),
                    (chk["key"], *bi, j, 0, 0),
                    (chk["value"], *bi, j, 0, 0),
                    scale,
                    causal and k1 - 1 > q0 + offset,
                    q0 - k0 + offset,
                    pattern,
                    q0,
                    k0,
                )
                parts.append(pkey)
            root = _tree(layer, parts, _merge, name, (*bi, i))
            okey = (name, *bi, i, 0, 0)
            if root is None:  # causal with Lq > Lk: a block that sees no key at all returns zeros
                shape = tuple(bchunks[d][bi[d]] for d in range(nb)) + (q1 - q0, heads, int(v.shape[-1]))
                layer[okey] = (np.zeros, shape, dtype)
            else:
                layer[okey] = (_finish, root, dtype)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[q, k, v])
    chunks = bchunks + (q.chunks[-3], (heads,), (int(v.shape[-1]),))
    return da.Array(graph, name, chunks, dtype=dtype)


# ------------------------------------------------------------------------------------- linear, sharded
def _lin_kw(mech: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    proj = params.get("favor_projection")
    return {"feature_map": mech.feature_map, "nu": mech.nu, "projection": None if proj is None else np.asarray(proj)}


def _heads_first(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, -2, -3)


def _lin_state(k: np.ndarray, v: np.ndarray, kw: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    from ..kernels.linear import key_state

    kh = _heads_first(k)
    pr = kw["projection"]
    return key_state(
        kh,
        _heads_first(v).astype(kh.dtype, copy=False),
        xp=np,
        feature_map=kw["feature_map"],
        nu=kw["nu"],
        projection=None if pr is None else pr.astype(kh.dtype),
    )


def _lin_merge(a: Any, b: Any) -> Any:
    from ..kernels.linear import merge_key_states

    if a is None:
        return b
    return merge_key_states(a, b, np)


def _lin_query(q: np.ndarray, state: Any, kw: dict[str, Any], eps: float, dtype: np.dtype) -> np.ndarray:
    from ..kernels.linear import query_out

    qh = _heads_first(q)
    pr = kw["projection"]
    out = query_out(qh, state, xp=np, feature_map=kw["feature_map"], eps=eps, nu=kw["nu"], projection=None if pr is None else pr.astype(qh.dtype))
    return np.moveaxis(out, -3, -2).astype(dtype, copy=False)


def _lin_causal(q: np.ndarray, k: np.ndarray, v: np.ndarray, prefix: Any, kw: dict[str, Any], eps: float, chunk: int, dtype: np.dtype) -> np.ndarray:
    from ..kernels.linear import causal_shard

    qh, kh = _heads_first(q), _heads_first(k)
    pr = kw["projection"]
    out = causal_shard(
        qh,
        kh,
        _heads_first(v).astype(kh.dtype, copy=False),
        prefix,
        xp=np,
        feature_map=kw["feature_map"],
        eps=eps,
        chunk=chunk,
        nu=kw["nu"],
        projection=None if pr is None else pr.astype(qh.dtype),
    )
    return np.moveaxis(out, -3, -2).astype(dtype, copy=False)


def split_linear_attention(mech: Any, params: Mapping[str, Any], q: Any, k: Any, v: Any) -> Any:
    """``mech`` (a :class:`~attnkit.LinearAttention`) over Dask arrays whose sequence runs in several chunks.

    Non-causal: one key state per key shard, merged in a binary tree, then every query block against the
    total. Causal (``Lq == Lk``): the shards' states form a prefix scan, and each shard computes its rows
    after the state of the shards before it; shard sizes are rounded up to multiples of ``chunk_size`` so
    the chunks (and the result) are those of the single-machine form.
    """
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph
    from dask.tokenize import tokenize

    heads, dim = mech.heads, mech.dim
    _check_shards(q, k, v, heads, dim)
    if mech.causal and q.shape[-3] != k.shape[-3]:
        raise ShapeError(f"key: sharded causal linear attention needs Lk = Lq = {q.shape[-3]}, got {k.shape[-3]}")
    q, k, v, batch, dtype = _broadcast_batch(q, k, v)
    nb = len(batch)
    bchunks = q.chunks[:nb]
    dv = int(v.shape[-1])
    if mech.causal:
        c = mech.chunk_size
        seq = tuple(-(-n // c) * c for n in q.chunks[-3])
        sizes, left = [], int(q.shape[-3])
        for n in seq:
            if left <= 0:
                break
            sizes.append(min(n, left))
            left -= sizes[-1]
        qchunks = kchunks = tuple(sizes)
    else:
        qchunks, kchunks = q.chunks[-3], k.chunks[-3]
    q = q.rechunk(bchunks + (qchunks, (heads,), (dim,)))
    k = k.rechunk(bchunks + (kchunks, (heads,), (dim,)))
    v = v.rechunk(bchunks + (kchunks, (heads,), (dv,)))
    kw = _lin_kw(mech, params)
    token = tokenize(q, k, v, mech.feature_map, mech.causal, mech.eps, mech.nu, kw["projection"])
    name = f"attnkit-linear-{token}"
    layer: dict[Any, Any] = {}
    chk = _finiteness_layer(layer, token, q, k, v)
    for bi in np.ndindex(*q.numblocks[:nb]):
        states = []
        for j in range(k.numblocks[-3]):
            skey = (f"{name}-state", *bi, j)
            layer[skey] = (_lin_state, (chk["key"], *bi, j, 0, 0), (chk["value"], *bi, j, 0, 0), kw)
            states.append(skey)
        if mech.causal:
            prev: Any = None
            for i in range(q.numblocks[-3]):
                okey = (name, *bi, i, 0, 0)
                layer[okey] = (
                    _lin_causal,
                    (chk["query"], *bi, i, 0, 0),
                    (chk["key"], *bi, i, 0, 0),
                    (chk["value"], *bi, i, 0, 0),
                    prev,
                    kw,
                    mech.eps,
                    mech.chunk_size,
                    dtype,
                )
                pkey = (f"{name}-prefix", *bi, i)
                layer[pkey] = (_lin_merge, prev, states[i])  # the scan: state of shards 0..i
                prev = pkey
            continue
        total = _tree(layer, states, _lin_merge, name, bi)
        for i in range(q.numblocks[-3]):
            okey = (name, *bi, i, 0, 0)
            layer[okey] = (_lin_query, (chk["query"], *bi, i, 0, 0), total, kw, mech.eps, dtype)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[q, k, v])
    return da.Array(graph, name, bchunks + (q.chunks[-3], (heads,), (dv,)), dtype=dtype)
