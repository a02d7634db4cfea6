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
``eps`` is added to the denominator in these stabilised units (it guards a row with no visible
key or, for ``relu``/``dpfp``, no positive feature, which gives zeros, never NaN); for ordinary
inputs the result equals the paper's formula up to a relative ``O(eps)``. With ``causal=True`` the
key maxima are running maxima over chunks (the prefix state is rescaled when they grow), so a
denominator can only underflow for a query whose visible keys are all ``~e^-87`` (float32) times
smaller than a later key of its own chunk, in every feature.

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

import array_api_compat
import numpy as np

from .._array import Array, Namespace, is_numpy, is_torch

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
    "stabilised_features",
    "linear_attention",
]

FEATURE_MAPS = ("elu", "relu", "dpfp", "favor")
DEFAULT_CHUNK_SIZE = 64

#: the causal prefix sums are vectorised (one cumulative sum over chunks) when the running key
#: maxima grow by less than this many nats over the sequence; otherwise a loop over chunks rescales
#: the state step by step, so nothing underflows (per dtype: float32 / float64)
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
    raise ValueError(f"feature_map: unknown {feature_map!r}")


def orthogonal_random_features(nb_features: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """FAVOR+ projection ``W`` of shape ``(nb_features, dim)``, float64 (Choromanski et al. 2021, sec. 2.4).

    Rows come in blocks of ``dim`` exactly orthogonal directions (QR of a Gaussian matrix, signs
    fixed so the draw is uniform); each row is then scaled by an independent chi(dim) norm (the norm
    of a ``dim``-dimensional standard Gaussian), so every row is marginally ``N(0, I)``, which keeps
    the estimator unbiased, while orthogonality within a block lowers its variance.
    """
    blocks = []
    remaining = int(nb_features)
    while remaining > 0:
        g = rng.standard_normal((dim, dim))
        qmat, r = np.linalg.qr(g)
        qmat = qmat * np.sign(np.where(np.diag(r) == 0, 1.0, np.diag(r)))[None, :]
        blocks.append(qmat.T[: min(remaining, dim)])
        remaining -= dim
    w = np.concatenate(blocks, axis=0)
    norms = np.linalg.norm(rng.standard_normal((int(nb_features), dim)), axis=1)
    return w * norms[:, None]


def _log_relu(x: Array, xp: Namespace) -> Array:
    with np.errstate(divide="ignore"):
        return xp.log(xp.maximum(x, xp.zeros_like(x)))  # log 0 = -inf: an exact zero feature


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
    d = int(x.shape[-1])
    m = int(projection.shape[0])
    xs = x * (d**-0.25)
    return xs @ xp.matrix_transpose(projection) - 0.5 * xp.sum(xs * xs, axis=-1, keepdims=True) - 0.5 * math.log(m)


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
            raise ValueError("favor: a projection matrix is required")
        return favor_log_features(x, projection, xp)
    raise ValueError(f"feature_map: unknown {feature_map!r}")


# --------------------------------------------------------------------------- stabilisation helpers
def _finite_or(x: Array, fill: Array | float, xp: Namespace) -> Array:
    """``x`` with non-finite entries (the max of an all ``-inf`` set) replaced by ``fill``."""
    if not isinstance(fill, (int, float)):
        return xp.where(xp.isfinite(x), x, fill)
    return xp.where(xp.isfinite(x), x, xp.full_like(x, fill))


def _row_scaled_exp(lq: Array, xp: Namespace) -> Array:
    """``exp(lq - max_f lq)`` per row: the largest feature of each row becomes exactly 1."""
    r = _finite_or(xp.max(lq, axis=-1, keepdims=True), 0.0, xp)
    return xp.exp(lq - r)


def _apply_key_mask(lk: Array, key_mask: Array | None, xp: Namespace) -> Array:
    """Drop (bool False) or reweight (float, added to ``log phi(k)``) keys; mask is ``(..., Lk, 1)``."""
    if key_mask is None:
        return lk
    if xp.isdtype(key_mask.dtype, "bool"):
        return xp.where(key_mask, lk, xp.full_like(lk, -math.inf))
    return lk + key_mask


def stabilised_features(
    lq: Array, lk: Array, xp: Namespace
) -> tuple[Array, Array]:
    """Non-causal stabilised features from log features: ``(phi_q, phi_k)`` up to cancelling constants.

    ``phi_k[j, f] = exp(lk[j, f] - M_f)`` with ``M_f = max_j lk[j, f]``, and
    ``phi_q[i, f] = exp(lq[i, f] + M_f - r_i)`` with ``r_i = max_f (lq[i, f] + M_f)``. Every product
    ``phi_q[i, f] phi_k[j, f]`` is the exact one times ``exp(-r_i)``, a per-query constant.
    """
    mk = _finite_or(xp.max(lk, axis=-2, keepdims=True), 0.0, xp)
    return _row_scaled_exp(lq + mk, xp), xp.exp(lk - mk)


# --------------------------------------------------------------------------- attention
def _ones_column(v: Array, xp: Namespace) -> Array:
    ones = xp.ones((*v.shape[:-1], 1), dtype=v.dtype, device=array_api_compat.device(v))
    return xp.concat([v, ones], axis=-1)


def _divide(res: Array, eps: float, xp: Namespace) -> Array:
    """Split the ``[numerator | denominator]`` GEMM result and divide, adding ``eps``."""
    dv = int(res.shape[-1]) - 1
    return res[..., :dv] / (res[..., dv:] + eps)


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
) -> Array:
    """Linear attention ``(..., H, Lq, Dv)`` (see the module docstring for the formula and stability).

    ``key_mask`` (optional) broadcasts to ``(..., H, Lk, 1)``: bool, False drops a key for every
    query; float, added to ``log phi(k_j)`` (multiplies the key's weight by ``exp(mask_j)``; ``-inf``
    drops it), which for ``favor`` is exactly an additive key bias on the softmax scores.
    ``projection`` is the FAVOR+ matrix ``W`` (m x D) in the compute dtype and device.
    """
    if projection is not None and is_numpy(xp):
        projection = np.asarray(projection, dtype=q.dtype)
    lq = log_features(q, feature_map, xp, nu=nu, projection=projection)
    lk = _apply_key_mask(log_features(k, feature_map, xp, nu=nu, projection=projection), key_mask, xp)
    vv = _ones_column(v, xp)
    if not causal:
        fq, fk = stabilised_features(lq, lk, xp)
        state = xp.matrix_transpose(fk) @ vv  # (..., F, Dv + 1)
        return _divide(fq @ state, eps, xp)
    return _causal(lq, lk, vv, xp=xp, eps=eps, chunk_size=int(chunk_size))


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
    n = int(x.shape[axis])
    parts = []
    run = None
    for i in range(n):
        cur = xp.take(x, xp.asarray([i], device=array_api_compat.device(x)), axis=axis)
        run = cur if run is None else xp.maximum(run, cur)
        parts.append(run)
    return xp.concat(parts, axis=axis)


def _causal(lq: Array, lk: Array, vv: Array, *, xp: Namespace, eps: float, chunk_size: int) -> Array:
    """Chunked causal linear attention on log features (bottom-right aligned)."""
    n_q, n_k = int(lq.shape[-2]), int(lk.shape[-2])
    offset = n_k - n_q
    skip = max(-offset, 0)  # leading queries that see no key at all
    prefix = max(offset, 0)  # leading keys every query sees
    n = n_q - skip  # length of the causal (diagonal) region
    dev = array_api_compat.device(lq)
    dt = lq.dtype
    batch = np.broadcast_shapes(tuple(lq.shape[:-2]), tuple(lk.shape[:-2]), tuple(vv.shape[:-2]))
    f_dim, dv1 = int(lq.shape[-1]), int(vv.shape[-1])
    if n <= 0:
        return xp.zeros((*batch, n_q, dv1 - 1), dtype=dt, device=dev)
    c = max(1, min(chunk_size, n))
    n_chunks = -(-n // c)
    pad = n_chunks * c - n
    lq_c = _chunks(_pad_rows(lq[..., skip:, :], pad, 0.0, xp), n_chunks, c, xp)
    lk_c = _chunks(_pad_rows(lk[..., prefix:, :], pad, -math.inf, xp), n_chunks, c, xp)
    v_c = _chunks(_pad_rows(vv[..., prefix:, :], pad, 0.0, xp), n_chunks, c, xp)

    # running per-feature key maxima: index 0 is the prefix, index t + 1 is through chunk t
    m_prefix = (
        xp.max(lk[..., :prefix, :], axis=-2, keepdims=True)
        if prefix
        else xp.full((*lk.shape[:-2], 1, f_dim), -math.inf, dtype=dt, device=dev)
    )
    m_chunks = xp.max(lk_c, axis=-2)  # (..., n_chunks, F)
    run = _cummax(xp.concat([m_prefix, m_chunks], axis=-2), -2, xp)  # (..., n_chunks + 1, F)
    # leading -inf (no key yet) -> the first finite value, so the maxima stay finite and monotone
    first = _finite_or(xp.min(_finite_or(run, math.inf, xp), axis=-2, keepdims=True), 0.0, xp)
    run = _finite_or(run, first, xp)
    r_chunk = run[..., 1:, :]  # (..., n_chunks, F): the scale of chunk t

    fk_c = xp.exp(lk_c - r_chunk[..., None, :])  # (..., n_chunks, c, F), each <= 1
    fq_c = _row_scaled_exp(lq_c + r_chunk[..., None, :], xp)
    kv = xp.matrix_transpose(fk_c) @ v_c  # (..., n_chunks, F, Dv + 1): chunk t at scale r_chunk[t]
    if prefix:
        fk_p = xp.exp(lk[..., :prefix, :] - run[..., :1, :])
        kv0 = xp.matrix_transpose(fk_p) @ vv[..., :prefix, :]  # (..., F, Dv + 1) at scale run[0]
    else:
        kv0 = None
    states = _prefix_states(kv0, kv, run, xp)  # state before chunk t, at scale r_chunk[t]

    tril = xp.asarray(np.tril(np.ones((c, c), dtype=bool)), device=dev)
    scores = fq_c @ xp.matrix_transpose(fk_c)
    scores = xp.where(tril, scores, xp.zeros_like(scores))
    res = scores @ v_c + fq_c @ states  # (..., n_chunks, c, Dv + 1)
    res = xp.reshape(res, (*res.shape[:-3], n_chunks * c, dv1))[..., :n, :]
    out = _divide(res, eps, xp)
    if skip:
        out = xp.concat([xp.zeros((*out.shape[:-2], skip, dv1 - 1), dtype=dt, device=dev), out], axis=-2)
    return out


def _prefix_states(kv0: Array | None, kv: Array, run: Array, xp: Namespace) -> Array:
    """Exclusive prefix sums of the chunk states, each expressed at its chunk's scale.

    ``kv[t]`` is at scale ``run[t + 1]`` (per feature, ``(..., F)``), ``kv0`` at ``run[0]``. Returns
    ``S[t] = exp(-run[t+1]) * (exp(run[0]) kv0 + sum_{s < t} exp(run[s+1]) kv[s])`` for every chunk.
    """
    n_chunks = int(kv.shape[-3])
    dt = kv.dtype
    dev = array_api_compat.device(kv)
    start = run[..., :1, :]  # (..., 1, F)
    r = run[..., 1:, :]  # (..., n_chunks, F)
    spread = float(xp.max(r[..., -1:, :] - start)) if n_chunks else 0.0
    limit = _SCAN_RANGE[8 if "float64" in str(dt) else 4]
    if spread <= limit:
        # vectorised: express everything at the final scale, cumulative sum, then rescale back
        ref = r[..., -1:, :]
        scaled = kv * xp.exp(r - ref)[..., :, None]
        zero = xp.zeros((*scaled.shape[:-3], 1, *scaled.shape[-2:]), dtype=dt, device=dev)
        excl = xp.concat([zero, scaled[..., :-1, :, :]], axis=-3)
        csum = xp.cumulative_sum(excl, axis=-3)
        if kv0 is not None:
            csum = csum + (kv0 * xp.exp(start - ref)[..., 0, :, None])[..., None, :, :]
        return csum * xp.exp(ref - r)[..., :, None]
    # step by step: S[t+1] = (S[t] + kv[t]) * exp(r[t] - r[t+1]), factors <= 1, so nothing underflows needlessly
    shape = np.broadcast_shapes(tuple(kv.shape[:-3]), tuple(run.shape[:-2]))
    state = xp.zeros((*shape, *kv.shape[-2:]), dtype=dt, device=dev)
    if kv0 is not None:
        state = state + kv0 * xp.exp(start - r[..., :1, :])[..., 0, :, None]
    out = [state]
    for t in range(n_chunks - 1):
        factor = xp.exp(r[..., t, :] - r[..., t + 1, :])[..., :, None]
        state = (state + kv[..., t, :, :]) * factor
        out.append(state)
    return xp.stack(out, axis=-3)
