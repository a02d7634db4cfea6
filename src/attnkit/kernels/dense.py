"""Exact (dense) scaled dot-product attention, tiled with the online softmax.

    out = softmax(scale * q k^T + bias) v

computed block by block over keys with the running maximum / running sum recurrence of
FlashAttention (Dao et al., "FlashAttention: Fast and Memory-Efficient Exact Attention with
IO-Awareness", NeurIPS 2022; Milakov & Gimelshein 2018 for the online softmax), so memory is
O(Lq * block) per head and never O(Lq * Lk).

Layout here is heads-first, ``q: (..., H, Lq, D)``, ``k: (..., H, Lk, D)``, ``v: (..., H, Lk, Dv)``.
Batch dimensions broadcast. Causal masking is bottom-right aligned (see :mod:`.masks`). Rows whose
keys are all masked give zeros. This module is generic over the array API; backend fast paths
(:mod:`.dense_numpy`, torch's fused kernel) are chosen by :func:`sdpa` and must agree with
:func:`sdpa_generic`.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from .._array import Array, Namespace, is_graph, is_numpy, is_torch
from .masks import apply_mask_tile, causal_allowed, causal_allowed_like
from .softmax import safe_softmax

__all__ = ["sdpa", "sdpa_generic", "merge_partials", "attention_weights", "DEFAULT_Q_BLOCK"]

DEFAULT_Q_BLOCK = 256


def _dropout_keep(rng: np.random.Generator, shape: tuple[int, ...], p: float, xp: Namespace, like: Array) -> Array:
    keep = (rng.random(shape) >= p).astype(np.float64) / (1.0 - p)
    return xp.asarray(keep, dtype=like.dtype, device=array_api_compat.device(like))


def sdpa_generic(
    q: Array,
    k: Array,
    v: Array,
    *,
    xp: Namespace,
    scale: float,
    mask: Array | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
    rng: np.random.Generator | None = None,
    block_size: int = 256,
    q_block: int = DEFAULT_Q_BLOCK,
    offset: int | None = None,
    return_lse: bool = False,
) -> Any:
    """Tiled online-softmax attention in any array-API namespace (heads-first layout).

    ``offset``: causal masking lets query ``i`` see key ``j`` when ``j <= i + offset`` (default
    ``Lk - Lq``, bottom-right aligned); a block of a longer sequence passes its own. With
    ``return_lse=True`` the result is ``(out, lse)``, ``lse = log sum_j exp(s_ij)`` per query row
    (``-inf`` for a row with no visible key), which :func:`merge_partials` needs.
    """
    lq, lk = q.shape[-2], k.shape[-2]
    dev = array_api_compat.device(q)
    offset = lk - lq if offset is None else int(offset)
    lse_parts = []
    batch = np.broadcast_shapes(tuple(q.shape[:-2]), tuple(k.shape[:-2]), tuple(v.shape[:-2]))
    out_parts = []
    qs = q * scale
    neg_inf = xp.asarray(-xp.inf, dtype=q.dtype, device=dev)
    for q0 in range(0, lq, q_block):
        q1 = min(q0 + q_block, lq)
        qt = qs[..., q0:q1, :]
        m = xp.full((*batch, q1 - q0, 1), -xp.inf, dtype=q.dtype, device=dev)
        l = xp.zeros((*batch, q1 - q0, 1), dtype=q.dtype, device=dev)
        acc = xp.zeros((*batch, q1 - q0, v.shape[-1]), dtype=q.dtype, device=dev)
        for k0 in range(0, lk, block_size):
            k1 = min(k0 + block_size, lk)
            if causal and k0 > q1 - 1 + offset:
                break  # every later key block is hidden from this query tile
            s = qt @ xp.matrix_transpose(k[..., k0:k1, :])
            if causal and k1 - 1 > q0 + offset:
                s = xp.where(causal_allowed(xp, q0, q1, k0, k1, offset, dev), s, neg_inf)
            s = apply_mask_tile(s, mask, xp, q0, q1, k0, k1)
            m_new = xp.maximum(m, xp.max(s, axis=-1, keepdims=True))
            m_safe = xp.where(xp.isinf(m_new), xp.zeros_like(m_new), m_new)
            p = xp.exp(s - m_safe)
            alpha = xp.exp(m - m_safe)
            l = alpha * l + xp.sum(p, axis=-1, keepdims=True)
            if dropout_p > 0.0:
                p = p * _dropout_keep(rng or np.random.default_rng(), tuple(p.shape), dropout_p, xp, p)
            acc = alpha * acc + p @ v[..., k0:k1, :]
            m = m_new
        out_parts.append(acc / xp.where(l == 0, xp.ones_like(l), l))
        if return_lse:
            m_fin = xp.where(xp.isinf(m), xp.zeros_like(m), m)
            lse_parts.append(xp.where(l == 0, xp.full_like(l, -xp.inf), m_fin + xp.log(xp.where(l == 0, xp.ones_like(l), l)))[..., 0])
    out = out_parts[0] if len(out_parts) == 1 else xp.concat(out_parts, axis=-2)
    if return_lse:
        return out, (lse_parts[0] if len(lse_parts) == 1 else xp.concat(lse_parts, axis=-1))
    return out


def merge_partials(out_a: Array, lse_a: Array, out_b: Array, lse_b: Array, xp: Namespace) -> tuple[Array, Array]:
    """Combine two partial attentions over disjoint key sets (the split-K rule of flash-decoding).

    With ``o_x = sum_{j in X} p_j v_j / sum_{j in X} p_j`` and ``lse_x = log sum_{j in X} exp(s_j)``:
    ``lse = logaddexp(lse_a, lse_b)`` and ``o = o_a exp(lse_a - lse) + o_b exp(lse_b - lse)``. Rows
    that see no key in either part stay zero with ``lse = -inf``. ``out``: ``(..., Lq, Dv)``, ``lse``:
    ``(..., Lq)``.
    """
    hi = xp.maximum(lse_a, lse_b)
    none = xp.isinf(hi) & (hi < 0)
    hi_safe = xp.where(none, xp.zeros_like(hi), hi)
    wa = xp.exp(lse_a - hi_safe)
    wb = xp.exp(lse_b - hi_safe)
    tot = wa + wb
    tot_safe = xp.where(none, xp.ones_like(tot), tot)
    out = out_a * (wa / tot_safe)[..., None] + out_b * (wb / tot_safe)[..., None]
    lse = xp.where(none, hi, hi_safe + xp.log(tot_safe))
    return out, lse


def attention_weights(
    q: Array, k: Array, *, xp: Namespace, scale: float, mask: Array | None = None, causal: bool = False
) -> Array:
    """The dense probabilities ``softmax(scale q k^T + bias)``, shape ``(..., H, Lq, Lk)`` (O(Lq*Lk) memory)."""
    lq, lk = q.shape[-2], k.shape[-2]
    s = (q * scale) @ xp.matrix_transpose(k)
    if causal:
        if lq is None or lk is None:  # symbolic lengths (a graph being exported): indices from the scores
            allowed = causal_allowed_like(s, xp)
        else:
            allowed = causal_allowed(xp, 0, lq, 0, lk, lk - lq, array_api_compat.device(q))
        s = xp.where(allowed, s, xp.asarray(-xp.inf, dtype=s.dtype))
    s = apply_mask_tile(s, mask, xp, 0, lq, 0, lk)
    return safe_softmax(s, xp)


def sdpa(
    q: Array,
    k: Array,
    v: Array,
    *,
    xp: Namespace,
    scale: float,
    mask: Array | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
    rng: np.random.Generator | None = None,
    block_size: int = 256,
    backend: str = "auto",
) -> Array:
    """Dispatch to the fastest exact kernel whose semantics match; all agree with :func:`sdpa_generic`.

    ``backend``: ``"auto"`` (default), ``"generic"``, ``"numpy"`` (the NumPy fast path) or ``"torch"``
    (torch's fused ``scaled_dot_product_attention``). In a graph-building namespace (``ndonnx``, for
    :func:`attnkit.export_onnx`) the whole-sequence form ``attention_weights(q, k) @ v`` is used: the
    same formula without the Python loop over tiles, so an exported graph takes any length.
    """
    if is_graph(xp):
        if dropout_p > 0.0:
            from ..errors import ConfigError

            raise ConfigError("dropout: a random dropout mask cannot be exported; export in eval mode (dropout off)")
        return attention_weights(q, k, xp=xp, scale=scale, mask=mask, causal=causal) @ v
    kw: dict[str, Any] = dict(scale=scale, mask=mask, causal=causal)
    if backend in ("auto", "torch") and is_torch(xp) and dropout_p == 0.0:
        from .dense_torch import sdpa_torch

        out = sdpa_torch(q, k, v, **kw)
        if out is not None:
            return out
    if backend in ("auto", "numpy") and is_numpy(xp) and dropout_p == 0.0:
        from .dense_numpy import sdpa_numpy

        out = sdpa_numpy(q, k, v, block_size=block_size, **kw)
        if out is not None:
            return out
    return sdpa_generic(q, k, v, xp=xp, dropout_p=dropout_p, rng=rng, block_size=block_size, **kw)
