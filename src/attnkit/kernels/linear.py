"""Linear attention: kernel feature maps, non-causal and chunked causal forms.

Katharopoulos, Vyas, Pappas and Fleuret, "Transformers are RNNs: Fast Autoregressive Transformers
with Linear Attention" (ICML 2020) replace ``exp(q.k)`` by ``phi(q).phi(k)`` for a positive feature
map ``phi``, so attention becomes

    out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / (phi(q_i)^T sum_j phi(k_j) + eps)

which costs O(L * F * Dv) instead of O(L^2 * D) (F = feature dimension). With ``causal=True`` the
sums run over ``j <= i`` only (bottom-right aligned when ``Lq != Lk``, as everywhere in attnkit).

Feature maps (each formula lives in exactly one function below, written as ``log phi``):

* ``elu``:   ``phi(x) = elu(x) + 1`` (Katharopoulos et al. 2020), F = D.
* ``relu``:  ``phi(x) = max(x, 0)``, F = D. A query whose features are all zero attends to nothing
  and gets zeros (like a fully masked row): that is the map's exact value, not an underflow.
* ``dpfp``:  Schlag, Irie and Schmidhuber, "Linear Transformers Are Secretly Fast Weight
  Programmers" (ICML 2021): ``x' = [relu(x), relu(-x)]`` and
  ``phi(x) = concat_{i=1..nu} x' * roll(x', i)``, F = 2 * D * nu.
* ``favor``: Performer FAVOR+, Choromanski et al., "Rethinking Attention with Performers" (ICLR
  2021): positive orthogonal random features ``phi(x) = exp(W x' - |x'|^2 / 2) / sqrt(m)`` with
  ``x' = x * D**-0.25``, so that ``E[phi(q).phi(k)] = exp(q.k / sqrt(D))`` and the ratio estimates
  softmax attention with the usual ``1/sqrt(D)`` scale. ``W`` (m x D) is block-orthogonal Gaussian
  with chi-distributed row norms (:func:`orthogonal_random_features`), F = m.

Numerical stability (the upstream implementation had a feature map that underflowed to zero).
Every map is evaluated in the log domain and rescaled by positive constants that cancel in the
ratio: each key feature ``f`` is divided by its largest value over the keys (``M_f``), and each
query row is multiplied by ``M_f`` and divided by its own largest product. So the largest query
feature of every row is exactly 1 and, without ``causal``, every denominator is at least 1 before
``eps`` is added: no feature row underflows to zero, nothing overflows, for any input magnitude.
``eps`` is the paper's: the result is ``num / (den + eps)`` in the raw units of the formula above,
except for a query whose features are all tiny, ``max_f phi(q)_f max_j phi(k_j)_f < 1`` (there the
raw formula lets ``eps`` swamp them: that is how features "underflow to zero"); for such a row
``eps`` is added to its rescaled denominator instead. A row with no visible key (or, for
``relu``/``dpfp``, no positive feature) gives zeros, never NaN. With ``causal=True`` the key maxima
are running maxima over chunks (the prefix state is rescaled when they grow), so a denominator can
only underflow for a query whose visible keys are all ``~e^-87`` (float32) times smaller than a
later key of its own chunk, in every feature (``chunk_size=1`` rules even that out).

Causal form: chunked prefix sums. The causal region is cut into chunks of ``chunk_size``; within a
chunk the product ``tril(phi(Q_c) phi(K_c)^T) V_c`` is formed, across chunks a running state
``S_c = sum_{j < start(c)} phi(k_j) v_j^T`` carries the prefix. Memory is
O(L * (chunk_size + F * Dv / chunk_size)), never O(L^2). Row sums come from a ones column
appended to ``v`` (one GEMM gives numerator and denominator).

Layout here is heads-first: ``q: (..., H, Lq, D)``, ``k: (..., H, Lk, D)``, ``v: (..., H, Lk, Dv)``;
leading dimensions broadcast. Everything is generic over the Python array API (``xp``) and runs in
the caller's library, device and dtype.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat
import numpy as np

from .._array import Array, Namespace, broadcast_shapes, is_numpy, is_torch, is_traced
from .._array import length as _dim
from .._threads import BlasOneThread, get_num_threads, get_pool
from ..errors import ConfigError
from .gqa import group_keys, group_queries, needs_grouping, ungroup

__all__ = [
    "FEATURE_MAPS",
    "DEFAULT_CHUNK_SIZE",
    "default_nb_features",
    "feature_dim",
    "orthogonal_random_features",
    "elu_log_features",
    "relu_log_features",
    "dpfp_log_features",
    "favor_log_features",
    "log_features",
    "linear_attention",
    "key_state",
    "merge_key_states",
    "query_out",
    "causal_shard",
]

FEATURE_MAPS = ("elu", "relu", "dpfp", "favor")
DEFAULT_CHUNK_SIZE = 64

#: outside NumPy the causal prefix sums are vectorised (one cumulative sum over chunks) when the
#: running key maxima grow by less than this many nats over a block; otherwise a loop over chunks
#: rescales the state step by step, so nothing underflows (per dtype itemsize: float32 / float64)
_SCAN_RANGE = {4: 20.0, 8: 200.0}


# --------------------------------------------------------------------------- feature maps
def default_nb_features(dim: int) -> int:
    """Performer's default number of random features, ``m = ceil(D ln D)`` (at least ``D``): 267 for D = 64."""
    return max(int(dim), int(math.ceil(dim * math.log(dim)))) if dim > 1 else 1


def feature_dim(feature_map: str, dim: int, nu: int = 1, nb_features: int | None = None) -> int:
    """The feature dimension F of ``feature_map`` for head width ``dim``."""
    if feature_map in ("elu", "relu"):
        return int(dim)
    if feature_map == "dpfp":
        return 2 * int(dim) * int(nu)
    if feature_map == "favor":
        return int(nb_features) if nb_features is not None else default_nb_features(dim)
    raise ConfigError(f"feature_map: expected one of {', '.join(FEATURE_MAPS)}, got {feature_map!r}")


def orthogonal_random_features(nb_features: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """FAVOR+ projection ``W`` of shape ``(nb_features, dim)``, float64 (Choromanski et al. 2021, sec. 2.4).

    Rows come in blocks of ``dim`` exactly orthogonal directions (QR of a Gaussian matrix, signs
    fixed so the draw is uniform); each row is then scaled by an independent chi(dim) norm (the norm
    of a ``dim``-dimensional standard Gaussian), so every row is marginally ``N(0, I)``, which keeps
    the estimator unbiased, while orthogonality within a block lowers its variance.
    """
    # all blocks in one draw and one batched QR: the same numbers, in the same order, as one block at a time
    n_blocks = -(-int(nb_features) // dim)
    g = rng.standard_normal((n_blocks, dim, dim))
    qmat, r = np.linalg.qr(g)
    diag = np.diagonal(r, axis1=-2, axis2=-1)
    qmat = qmat * np.sign(np.where(diag == 0, 1.0, diag))[:, None, :]
    w = np.swapaxes(qmat, -1, -2).reshape(n_blocks * dim, dim)[: int(nb_features)]
    norms = np.linalg.norm(rng.standard_normal((int(nb_features), dim)), axis=1)
    return w * norms[:, None]


def _log_relu(x: Array, xp: Namespace) -> Array:
    """``log(max(x, 0))``: ``-inf`` (an exact zero feature) where ``x <= 0``.

    Computed as ``where(x > 0, log(where(x > 0, x, 1)), -inf)``, so the logarithm never sees 0: its
    gradient is ``1/x`` where ``x > 0`` and exactly 0 elsewhere (the subgradient of relu at 0), never
    the ``inf * 0 = NaN`` that ``log(maximum(x, 0))`` gives for entries exactly 0 (zero padding).
    """
    pos = x > 0
    one = xp.ones_like(x)
    return xp.where(pos, xp.log(xp.where(pos, x, one)), xp.full_like(x, -math.inf))


def elu_log_features(x: Array, xp: Namespace) -> Array:
    """``log(elu(x) + 1)``: ``log(1 + x)`` for ``x > 0`` and ``x`` otherwise (Katharopoulos et al. 2020)."""
    zero = xp.zeros_like(x)
    return xp.minimum(x, zero) + xp.log(1 + xp.maximum(x, zero))


def relu_log_features(x: Array, xp: Namespace) -> Array:
    """``log(relu(x))`` (``-inf`` where ``x <= 0``: the feature is exactly zero)."""
    return _log_relu(x, xp)


def dpfp_log_features(x: Array, xp: Namespace, nu: int = 1) -> Array:
    """``log`` of DPFP (Schlag et al. 2021): ``x' = [relu(x), relu(-x)]``, ``phi = concat_{i=1..nu} x' * roll(x', i)``.

    Dimension ``2 * D * nu``; the product of two features is a sum of logs here.
    """
    lx = _log_relu(xp.concat([x, -x], axis=-1), xp)
    return xp.concat([lx + xp.roll(lx, i, axis=-1) for i in range(1, int(nu) + 1)], axis=-1)


def favor_log_features(x: Array, projection: Array, xp: Namespace) -> Array:
    """``log`` of FAVOR+ positive random features (Choromanski et al. 2021, Lemma 1).

    ``phi(x) = exp(W x' - |x'|^2 / 2) / sqrt(m)`` with ``x' = x * D**-0.25`` and ``W = projection``
    (m x D), so ``E[phi(q).phi(k)] = exp(q.k / sqrt(D))``.
    """
    d = _dim(x.shape[-1])
    m = _dim(projection.shape[0])
    xs = x * (d**-0.25)
    sq = (xs * xs) @ xp.ones((d, 1), dtype=xs.dtype, device=array_api_compat.device(xs))  # |x'|^2 (a GEMV: fast)
    return xs @ xp.matrix_transpose(projection) - 0.5 * sq - 0.5 * math.log(m)


def log_features(x: Array, feature_map: str, xp: Namespace, *, nu: int = 1, projection: Array | None = None) -> Array:
    """``log phi(x)`` for the named feature map, shape ``(..., L, F)`` (``-inf`` = an exact zero feature)."""
    if feature_map == "elu":
        return elu_log_features(x, xp)
    if feature_map == "relu":
        return relu_log_features(x, xp)
    if feature_map == "dpfp":
        return dpfp_log_features(x, xp, nu)
    if feature_map == "favor":
        if projection is None:
            raise ConfigError("projection: feature_map='favor' needs the random projection matrix W (m x D)")
        return favor_log_features(x, projection, xp)
    raise ConfigError(f"feature_map: expected one of {', '.join(FEATURE_MAPS)}, got {feature_map!r}")


# --------------------------------------------------------------------------- stabilisation blocks
# All blocks work on log features with rows on axis -2 and any leading (batch, head) dimensions.
# A key "state" is ``(S, M)``: ``M`` (..., 1, F) the running per-feature maximum of ``log phi(k)``
# (``-inf`` while a feature has seen no key) and ``S = sum_j exp(lk_j - M) vv_j^T`` (..., F, Dv + 1).
def _finite_or(x: Array, fill: Array | float, xp: Namespace) -> Array:
    """``x`` with non-finite entries (the max of an all ``-inf`` set) replaced by ``fill``."""
    if not isinstance(fill, (int, float)):
        return xp.where(xp.isfinite(x), x, fill)
    return xp.where(xp.isfinite(x), x, xp.full_like(x, fill))


def _max_last(x: Array, xp: Namespace) -> Array:
    """``max`` over axis -1, keepdims (NumPy: argmax + gather, ~4x faster than ``max`` on short rows)."""
    if is_numpy(xp):
        return np.take_along_axis(x, np.argmax(x, axis=-1)[..., None], axis=-1)
    return xp.max(x, axis=-1, keepdims=True)


def _max_rows(x: Array, xp: Namespace) -> Array:
    """``max`` over axis -2, keepdims (NumPy: pairwise halving over contiguous blocks, ~2x faster)."""
    if not is_numpy(xp):
        return xp.max(x, axis=-2, keepdims=True)
    n = _dim(x.shape[-2])
    while n > 1:
        h = n // 2
        m = np.maximum(x[..., :h, :], x[..., h : 2 * h, :])
        if n % 2:
            np.maximum(m[..., :1, :], x[..., 2 * h :, :], out=m[..., :1, :])
        x, n = m, h
    return x


def _row_scaled_exp(lq: Array, xp: Namespace) -> tuple[Array, Array]:
    """``(exp(lq - r), r)`` with ``r = max_f lq`` per row: the largest feature of each row becomes exactly 1.

    A row of ``-inf`` (no feature) gives zeros and ``r = 0``.
    """
    r = _finite_or(_max_last(lq, xp), 0.0, xp)
    return xp.exp(lq - r), r


def _row_eps(eps: float, r: Array, xp: Namespace) -> Array:
    """``eps`` in the units of a query row that was scaled by ``exp(-r)``.

    ``eps * exp(-r)``, so the result is the paper's ``num / (den + eps)``; but never more than ``eps``
    (``r < 0``: features that are all tiny are not swamped by ``eps``, the upstream underflow) and
    never below the dtype's smallest normal number (so a row without any visible feature gives
    ``0 / eps = 0``, never ``0 / 0``).
    """
    tiny = float(xp.finfo(r.dtype).smallest_normal)
    return xp.maximum(eps * xp.exp(-xp.clip(r, min=0.0, max=-math.log(tiny))), xp.full_like(r, tiny))


def _apply_key_mask(lk: Array, key_mask: Array | None, xp: Namespace) -> Array:
    """Drop (bool False) or reweight (float, added to ``log phi(k)``) keys; mask broadcasts to ``(..., Lk, 1)``."""
    if key_mask is None:
        return lk
    if xp.isdtype(key_mask.dtype, "bool"):
        return xp.where(key_mask, lk, xp.full_like(lk, -math.inf))
    return lk + key_mask


def _key_state(lk: Array, vv: Array, xp: Namespace, state: Array | None = None, scale: Array | None = None) -> tuple[Array, Array]:
    """Add keys ``lk`` (log features) with values ``vv`` to the state ``(state, scale)``, rescaling online."""
    m = _max_rows(lk, xp)
    if scale is not None:
        m = xp.maximum(m, scale)
    safe = _finite_or(m, 0.0, xp)
    new = xp.matrix_transpose(xp.exp(lk - safe)) @ vv
    if state is not None:
        new = new + state * xp.matrix_transpose(xp.exp(scale - safe))  # factors <= 1 (0 while scale is -inf)
    return new, m


def _query_out(lq: Array, state: Array, scale: Array, eps: float, xp: Namespace) -> Array:
    """Outputs of queries ``lq`` (log features) against a key state: ``phi_q S[:, :Dv] / (phi_q S[:, Dv] + eps)``."""
    fq, r = _row_scaled_exp(lq + scale, xp)
    return _divide(fq @ state, _row_eps(eps, r, xp), xp)


def _ones_column(v: Array, xp: Namespace) -> Array:
    ones = xp.ones_like(v[..., :1])
    return xp.concat([v, ones], axis=-1)


def _divide(res: Array, eps: Array | float, xp: Namespace) -> Array:
    """Split the ``[numerator | denominator]`` GEMM result and divide, adding ``eps`` (per row)."""
    return res[..., :-1] / (res[..., -1:] + eps)


# --------------------------------------------------------------------------- causal blocks
def _pad_rows(x: Array, n: int, value: float, xp: Namespace) -> Array:
    """Append ``n`` rows filled with ``value`` along axis -2."""
    if n == 0:
        return x
    pad = xp.full((*x.shape[:-2], n, x.shape[-1]), value, dtype=x.dtype, device=array_api_compat.device(x))
    return xp.concat([x, pad], axis=-2)


def _chunks(x: Array, n_chunks: int, size: int, xp: Namespace) -> Array:
    return xp.reshape(x, (*x.shape[:-2], n_chunks, size, x.shape[-1]))


def _cummax(x: Array, axis: int, xp: Namespace) -> Array:
    """Running maximum along ``axis`` (not in the array API standard)."""
    if is_numpy(xp):
        return np.maximum.accumulate(x, axis=axis)
    if is_torch(xp):
        import torch

        return torch.cummax(x, dim=axis).values
    n = _dim(x.shape[axis])
    parts = []
    run = None
    for i in range(n):
        cur = xp.take(x, xp.asarray([i], device=array_api_compat.device(x)), axis=axis)
        run = cur if run is None else xp.maximum(run, cur)
        parts.append(run)
    return xp.concat(parts, axis=axis)


def _causal_block(
    lq: Array, lk: Array, vv: Array, state: Array | None, scale: Array | None, *, xp: Namespace, chunk: int
) -> tuple[Array, Array, Array, Array]:
    """Causal linear attention of ``n`` aligned query/key rows after a prefix state ``(state, scale)``.

    Query row ``i`` sees the prefix and keys ``0..i`` of this block. Returns the ``[num | den]`` rows
    ``(..., n, Dv + 1)``, the log scale of each query row ``(..., n, 1)`` and the state after the block.
    """
    n = _dim(lq.shape[-2])
    dev = array_api_compat.device(lq)
    c = max(1, min(chunk, n))
    n_chunks = -(-n // c)
    pad = n_chunks * c - n
    lq_c = _chunks(_pad_rows(lq, pad, 0.0, xp), n_chunks, c, xp)
    lk_c = _chunks(_pad_rows(lk, pad, -math.inf, xp), n_chunks, c, xp)
    v_c = _chunks(_pad_rows(vv, pad, 0.0, xp), n_chunks, c, xp)

    # running per-feature key maxima: index 0 is the incoming scale, index t + 1 is through chunk t
    m_chunks = _max_rows(lk_c, xp)[..., 0, :]  # (..., n_chunks, F)
    if scale is None:
        scale = xp.full((*m_chunks.shape[:-2], 1, m_chunks.shape[-1]), -math.inf, dtype=lk.dtype, device=dev)
    shape = broadcast_shapes(tuple(m_chunks.shape[:-2]), tuple(scale.shape[:-2]))
    run_raw = _cummax(
        xp.concat([xp.broadcast_to(scale, (*shape, *scale.shape[-2:])), xp.broadcast_to(m_chunks, (*shape, *m_chunks.shape[-2:]))], axis=-2),
        -2,
        xp,
    )
    # leading -inf (no key yet) -> the first finite value, so the scales used for the states stay finite and
    # monotone; the states there are zero, so nothing changes
    first = _finite_or(xp.min(_finite_or(run_raw, math.inf, xp), axis=-2, keepdims=True), 0.0, xp)
    run = _finite_or(run_raw, first, xp)
    r = run[..., 1:, :]  # (..., n_chunks, F): the scale of chunk t

    fk_c = xp.exp(lk_c - r[..., None, :])  # (..., n_chunks, c, F), each <= 1
    kv = xp.matrix_transpose(fk_c) @ v_c  # (..., n_chunks, F, Dv + 1): chunk t at scale r[t]
    states = _prefix_states(state, kv, run, xp)  # the state before chunk t, at scale r[t]
    fq_c, r_q = _row_scaled_exp(lq_c + run_raw[..., 1:, None, :], xp)

    tril = xp.asarray(np.tril(np.ones((c, c), dtype=bool)), device=dev)
    scores = fq_c @ xp.matrix_transpose(fk_c)
    scores = xp.where(tril, scores, xp.zeros_like(scores))
    res = scores @ v_c + fq_c @ states  # (..., n_chunks, c, Dv + 1)
    res = xp.reshape(res, (*res.shape[:-3], n_chunks * c, res.shape[-1]))[..., :n, :]
    r_q = xp.reshape(r_q, (*r_q.shape[:-3], n_chunks * c, 1))[..., :n, :]
    end = states[..., -1, :, :] + kv[..., -1, :, :]  # at scale r[-1] (= run_raw[-1] where finite)
    return res, r_q, end, run_raw[..., -1:, :]


def _prefix_states(state: Array | None, kv: Array, run: Array, xp: Namespace) -> Array:
    """Exclusive prefix sums of the chunk states, each expressed at its chunk's scale.

    ``kv[t]`` is at scale ``run[t + 1]`` (per feature), ``state`` at ``run[0]``. Returns
    ``S[t] = exp(-run[t+1]) * (exp(run[0]) state + sum_{s < t} exp(run[s+1]) kv[s])`` for every chunk.
    """
    n_chunks = _dim(kv.shape[-3])
    dt = kv.dtype
    dev = array_api_compat.device(kv)
    start = run[..., :1, :]  # (..., 1, F)
    r = run[..., 1:, :]  # (..., n_chunks, F)
    spread = xp.max(r[..., -1:, :] - start)
    # a traced spread (jax.jit, torch.compile) has no value to choose by: take the step-by-step form,
    # which is exact for any range of scales
    if (
        not is_numpy(xp)
        and not is_traced(spread)
        and float(spread.detach() if hasattr(spread, "detach") else spread) <= _SCAN_RANGE[8 if "float64" in str(dt) else 4]
    ):
        # vectorised: express everything at the final scale, cumulative sum, then rescale back
        ref = r[..., -1:, :]
        scaled = kv * xp.exp(r - ref)[..., :, None]
        zero = xp.zeros((*scaled.shape[:-3], 1, *scaled.shape[-2:]), dtype=dt, device=dev)
        csum = xp.cumulative_sum(xp.concat([zero, scaled[..., :-1, :, :]], axis=-3), axis=-3)
        if state is not None:
            csum = csum + (state * xp.exp(start - ref)[..., 0, :, None])[..., None, :, :]
        return csum * xp.exp(ref - r)[..., :, None]
    # NumPy (whose cumsum along an outer axis is slow) and wide-ranging scales: step by step,
    # S[t+1] = (S[t] + kv[t]) * exp(r[t] - r[t+1]); factors <= 1, nothing underflows needlessly
    shape = broadcast_shapes(tuple(kv.shape[:-3]), tuple(run.shape[:-2]))
    cur = xp.zeros((*shape, *kv.shape[-2:]), dtype=dt, device=dev)
    if state is not None:
        cur = cur + state * xp.exp(start - r[..., :1, :])[..., 0, :, None]
    out = [cur]
    for t in range(n_chunks - 1):
        cur = (cur + kv[..., t, :, :]) * xp.exp(r[..., t, :] - r[..., t + 1, :])[..., :, None]
        out.append(cur)
    return xp.stack(out, axis=-3)


# --------------------------------------------------------------------------- drivers
def _rows(
    q: Array,
    k: Array,
    v: Array,
    key_mask: Array | None,
    *,
    xp: Namespace,
    feature_map: str,
    nu: int,
    projection: Array | None,
    eps: float,
    causal: bool,
    chunk: int,
    tile: int,
    out: Array | None = None,
) -> Array:
    """Linear attention over rows (axis -2), ``tile`` rows at a time (the state carries between tiles).

    The one algorithm behind every backend: the generic path calls it once on whole arrays, the
    NumPy path once per (batch, head) with cache-sized tiles on a thread pool.
    """
    n_q, n_k = _dim(q.shape[-2]), _dim(k.shape[-2])
    dev = array_api_compat.device(q)

    def lq_of(s: int, e: int) -> Array:
        return log_features(q[..., s:e, :], feature_map, xp, nu=nu, projection=projection)

    def lk_vv_of(s: int, e: int) -> tuple[Array, Array]:
        km = None if key_mask is None else (key_mask if key_mask.shape[-2] == 1 else key_mask[..., s:e, :])
        lk = _apply_key_mask(log_features(k[..., s:e, :], feature_map, xp, nu=nu, projection=projection), km, xp)
        return lk, _ones_column(v[..., s:e, :], xp)

    parts: list[Array] = []

    def emit(s: int, e: int, block: Array) -> None:
        if out is not None:
            out[..., s:e, :] = block
        else:
            parts.append(block)

    state = scale = None
    if n_q is None or n_k is None:  # symbolic lengths (a graph being exported): one whole-sequence tile
        if causal:
            raise ConfigError(
                "causal: causal linear attention is a scan over chunks whose count depends on the sequence length, "
                "which an ONNX graph cannot unroll; export causal=False, or FlashAttention(causal=True) for causal attention"
            )
        state, scale = _key_state(*lk_vv_of(0, n_k), xp, state, scale)
        return _query_out(lq_of(0, n_q), state, scale, eps, xp)
    if not causal:
        for s in range(0, n_k, tile):
            state, scale = _key_state(*lk_vv_of(s, min(s + tile, n_k)), xp, state, scale)
        assert state is not None and scale is not None
        for s in range(0, n_q, tile):
            e = min(s + tile, n_q)
            emit(s, e, _query_out(lq_of(s, e), state, scale, eps, xp))
    else:
        offset = n_k - n_q  # bottom-right: query i sees keys j <= i + offset
        skip = max(-offset, 0)  # leading queries that see no key at all
        prefix = max(offset, 0)  # leading keys that every query sees
        if skip:
            batch = broadcast_shapes(tuple(q.shape[:-2]), tuple(k.shape[:-2]), tuple(v.shape[:-2]))
            emit(0, skip, xp.zeros((*batch, skip, int(v.shape[-1])), dtype=q.dtype, device=dev))
        for s in range(0, prefix, tile):
            state, scale = _key_state(*lk_vv_of(s, min(s + tile, prefix)), xp, state, scale)
        for s in range(skip, n_q, tile):
            e = min(s + tile, n_q)
            lk, vv = lk_vv_of(s + offset, e + offset)
            res, r_q, state, scale = _causal_block(lq_of(s, e), lk, vv, state, scale, xp=xp, chunk=chunk)
            emit(s, e, _divide(res, _row_eps(eps, r_q, xp), xp))
    if out is not None:
        return out
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=-2)


def linear_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    xp: Namespace,
    feature_map: str = "elu",
    eps: float = 1e-6,
    causal: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    key_mask: Array | None = None,
    nu: int = 1,
    projection: Array | None = None,
    backend: str = "auto",
) -> Array:
    """Linear attention ``(..., H, Lq, Dv)`` (see the module docstring for the formula and stability).

    ``k, v`` may have ``Hkv`` heads dividing ``H`` (grouped-query attention, see :mod:`.gqa`).

    ``key_mask`` (optional) broadcasts to ``(..., H, Lk, 1)``: bool, False drops a key for every
    query; float, added to ``log phi(k_j)`` (multiplies the key's weight by ``exp(mask_j)``; ``-inf``
    drops it), which for ``favor`` is exactly an additive key bias on the softmax scores.
    ``projection`` is the FAVOR+ matrix ``W`` (m x D) in the compute dtype and device.
    ``backend``: ``"auto"``, ``"generic"`` (whole-array ops in ``xp``) or ``"numpy"`` (tiles on a
    thread pool, one task per batch element and head); both run the same algorithm (:func:`_rows`).
    """
    if feature_map not in FEATURE_MAPS:
        raise ConfigError(f"feature_map: expected one of {', '.join(FEATURE_MAPS)}, got {feature_map!r}")
    if needs_grouping(q, k, v):  # grouped-query attention (see .gqa): k/v heads broadcast over their group
        hk = int(k.shape[-3])
        out = linear_attention(
            group_queries(q, hk, xp),
            group_keys(k, xp),
            group_keys(v, xp),
            xp=xp,
            feature_map=feature_map,
            eps=eps,
            causal=causal,
            chunk_size=chunk_size,
            key_mask=group_queries(key_mask, hk, xp),
            nu=nu,
            projection=projection,
            backend=backend,
        )
        return ungroup(out, xp)
    chunk = max(1, int(chunk_size))
    kw: dict[str, Any] = dict(feature_map=feature_map, nu=int(nu), projection=projection, eps=float(eps), causal=bool(causal), chunk=chunk)
    if is_numpy(xp) and backend in ("auto", "numpy"):
        if projection is not None:
            kw["projection"] = np.asarray(projection, dtype=q.dtype)
        f_dim = feature_dim(feature_map, _dim(q.shape[-1]), int(nu), None if projection is None else _dim(projection.shape[0]))
        tile = _numpy_tile(f_dim, _dim(v.shape[-1]), np.dtype(q.dtype).itemsize, chunk)
        if backend == "numpy" or _dim(q.shape[-2]) + _dim(k.shape[-2]) > 2 * tile:
            return _numpy_tasks(q, k, v, key_mask, xp=xp, tile=tile, **kw)
    if q.shape[-2] is None or k.shape[-2] is None:  # symbolic lengths (a graph being exported)
        return _rows(q, k, v, key_mask, xp=xp, tile=chunk, **kw)
    n = max(_dim(q.shape[-2]), _dim(k.shape[-2]), 1)
    return _rows(q, k, v, key_mask, xp=xp, tile=-(-n // chunk) * chunk, **kw)


# --------------------------------------------------------------------------- NumPy: tiles on a thread pool
def _numpy_tile(f_dim: int, dv: int, itemsize: int, chunk: int) -> int:
    """Rows per tile: a tile of features stays below 128 KB (in L2, and under glibc's mmap threshold,
    so temporaries are not fresh page-faulting mappings), at least 128 rows, a multiple of ``chunk``."""
    rows = max(128, (1 << 17) // (max(f_dim, dv + 1) * itemsize))
    return max(chunk, rows // chunk * chunk)


def _numpy_tasks(q: Array, k: Array, v: Array, key_mask: Array | None, *, xp: Namespace, tile: int, **kw: Any) -> Array:
    """One :func:`_rows` task per (batch..., head) on the thread pool, writing into one output array.

    The output is allocated in the caller's sequence layout ``(..., Lq, H, Dv)`` and returned as a
    heads-first view, so handing it back costs no copy.
    """
    lead = broadcast_shapes(tuple(q.shape[:-2]), tuple(k.shape[:-2]), tuple(v.shape[:-2]))
    if key_mask is not None:
        lead = broadcast_shapes(lead, tuple(key_mask.shape[:-2]))
    n_q, dv = int(q.shape[-2]), int(v.shape[-1])
    if len(lead) >= 1:
        out_seq = np.empty((*lead[:-1], n_q, lead[-1], dv), dtype=q.dtype)
        out = np.moveaxis(out_seq, -2, -3)
    else:
        out = np.empty((n_q, dv), dtype=q.dtype)

    def view(x: Array, idx: tuple[int, ...]) -> Array:
        x = x[(None,) * (len(lead) - (x.ndim - 2))]
        return x[tuple(0 if x.shape[d] == 1 else i for d, i in enumerate(idx))]

    def task(idx: tuple[int, ...]) -> None:
        km = None if key_mask is None else view(key_mask, idx)
        _rows(view(q, idx), view(k, idx), view(v, idx), km, xp=xp, tile=tile, out=out[idx], **kw)

    indices = list(np.ndindex(*lead)) if lead else [()]
    threads = get_num_threads()
    if len(indices) == 1 or threads == 1:
        for idx in indices:
            task(idx)
        return out
    with BlasOneThread():
        for f in [get_pool(threads).submit(task, idx) for idx in indices]:
            f.result()
    return out


# --------------------------------------------------------------------------- shards (distributed forms)
def key_state(k: Array, v: Array, *, xp: Namespace, feature_map: str, nu: int = 1, projection: Array | None = None) -> tuple[Array, Array]:
    """The key state of one shard of keys: ``(S, M)`` with ``S = sum_j exp(log phi(k_j) - M) [v_j, 1]^T``
    ``(..., F, Dv + 1)`` and ``M`` the per-feature maximum ``(..., 1, F)`` (heads-first layout).

    States of disjoint shards combine with :func:`merge_key_states`; :func:`query_out` reads them.
    """
    lk = log_features(k, feature_map, xp, nu=nu, projection=projection)
    return _key_state(lk, _ones_column(v, xp), xp)


def merge_key_states(a: tuple[Array, Array], b: tuple[Array, Array], xp: Namespace) -> tuple[Array, Array]:
    """``(S, M)`` of the union of two disjoint key sets: both states rescaled to ``M = max(M_a, M_b)``."""
    (sa, ma), (sb, mb) = a, b
    m = xp.maximum(ma, mb)
    safe = _finite_or(m, 0.0, xp)
    return sa * xp.matrix_transpose(xp.exp(ma - safe)) + sb * xp.matrix_transpose(xp.exp(mb - safe)), m


def query_out(
    q: Array, state: tuple[Array, Array], *, xp: Namespace, feature_map: str, eps: float, nu: int = 1, projection: Array | None = None
) -> Array:
    """Non-causal linear attention of the queries ``q`` against a key state (see :func:`key_state`)."""
    lq = log_features(q, feature_map, xp, nu=nu, projection=projection)
    return _query_out(lq, state[0], state[1], eps, xp)


def causal_shard(
    q: Array,
    k: Array,
    v: Array,
    prefix: tuple[Array, Array] | None,
    *,
    xp: Namespace,
    feature_map: str,
    eps: float,
    chunk: int = DEFAULT_CHUNK_SIZE,
    nu: int = 1,
    projection: Array | None = None,
) -> Array:
    """Causal linear attention of one shard of aligned rows (query ``i`` sees keys ``<= i`` of the shard)
    after the ``prefix`` state of every earlier shard (``None`` for the first)."""
    lq = log_features(q, feature_map, xp, nu=nu, projection=projection)
    lk = log_features(k, feature_map, xp, nu=nu, projection=projection)
    state, scale = (None, None) if prefix is None else prefix
    res, r_q, _, _ = _causal_block(lq, lk, _ones_column(v, xp), state, scale, xp=xp, chunk=max(1, int(chunk)))
    return _divide(res, _row_eps(eps, r_q, xp), xp)
