"""Exact (dense) scaled dot-product attention, tiled with the online softmax.

    out = softmax(scale * q k^T + bias) v

computed block by block over keys with the running maximum / running sum recurrence of
FlashAttention (Dao et al., "FlashAttention: Fast and Memory-Efficient Exact Attention with
IO-Awareness", NeurIPS 2022; Milakov & Gimelshein 2018 for the online softmax), so memory is
O(Lq * block) per head and never O(Lq * Lk).

Layout here is heads-first, ``q: (..., H, Lq, D)``, ``k: (..., Hkv, Lk, D)``, ``v: (..., Hkv, Lk, Dv)``.
Batch dimensions broadcast. ``Hkv`` may divide ``H`` (grouped-query attention, Ainslie et al. 2023,
"GQA"; multi-query attention when ``Hkv = 1``, Shazeer 2019): query head ``h`` then attends with
key/value head ``h // (H / Hkv)``, as torch's ``scaled_dot_product_attention(..., enable_gqa=True)``
(see :mod:`.gqa`). Causal masking is bottom-right aligned (see :mod:`.masks`). Rows whose keys are
all masked give zeros. This module is generic over the array API; backend fast paths
(:mod:`.dense_numpy`, torch's fused kernel) are chosen by :func:`sdpa` and must agree with
:func:`sdpa_generic`.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import array_api_compat
import numpy as np

from .._array import Array, Namespace, check_scores, is_graph, is_numpy, is_torch
from .._threads import BlasOneThread, blas_limiter_available
from . import overflow
from .gqa import group_keys, group_queries, group_slopes, kv_groups, needs_grouping, ungroup
from .masks import alibi_bias, apply_mask_tile, causal_allowed, index_grid, window_allowed, window_skips
from .overflow import dtype_max, times_gain
from .softmax import safe_softmax

__all__ = ["sdpa", "sdpa_generic", "merge_partials", "attention_weights", "DEFAULT_Q_BLOCK", "NO_WINDOW"]

DEFAULT_Q_BLOCK = 256


def _dropout_keep(rng: np.random.Generator, shape: tuple[int, ...], p: float, xp: Namespace, like: Array) -> Array:
    keep = (rng.random(shape) >= p).astype(np.float64) / (1.0 - p)
    return xp.asarray(keep, dtype=like.dtype, device=array_api_compat.device(like))


NO_WINDOW = (-1, -1)


def _slopes4(slopes: Array | None, like: Array, xp: Namespace) -> Array | None:
    """ALiBi slopes ``(..., H)`` -> ``(..., H, 1, 1)`` in ``like``'s dtype and device."""
    if slopes is None:
        return None
    slopes = xp.asarray(slopes, dtype=like.dtype, device=array_api_compat.device(like))
    return slopes[..., None, None]


def _scores(
    s: Array,
    xp: Namespace,
    q0: int,
    q1: int | None,
    k0: int,
    k1: int | None,
    offset: int | None,
    causal: bool,
    window: tuple[int, int],
    slopes: Array | None,
    softcap: float | None,
) -> Array:
    """A tile of scaled scores ``s = scale q k^T`` -> ``softcap``, ALiBi, causal and window applied.

    Order as FlashAttention-2: ``cap * tanh(s / cap)`` (logit soft-capping, Gemma 2), then the ALiBi
    bias ``-slope * |i + offset - j|``, then the causal and window masks (``-inf``).
    """
    dev = array_api_compat.device(s)
    if softcap is not None:
        s = softcap * xp.tanh(s / softcap)
    if offset is None or q1 is None or k1 is None:  # symbolic lengths (a graph being exported): one whole tile
        return _scores_symbolic(s, xp, causal, window, slopes)
    if slopes is not None:
        s = s + alibi_bias(xp, slopes, q0, q1, k0, k1, offset)
    neg_inf = xp.asarray(-xp.inf, dtype=s.dtype, device=dev)
    if causal and k1 - 1 > q0 + offset:
        s = xp.where(causal_allowed(xp, q0, q1, k0, k1, offset, dev), s, neg_inf)
    allowed = window_allowed(xp, q0, q1, k0, k1, offset, window, dev)
    if allowed is not None:
        s = xp.where(allowed, s, neg_inf)
    return s


def _scores_symbolic(s: Array, xp: Namespace, causal: bool, window: tuple[int, int], slopes: Array | None) -> Array:
    """:func:`_scores` over the whole score matrix when the lengths are symbolic: the same ALiBi, causal and
    window rules, with the indices ``i, j`` and ``offset = Lk - Lq`` counted from the scores (:func:`.masks.index_grid`)."""
    i, j = index_grid(s, xp)
    offset = (xp.max(j[:1, :]) + 1.0) - (xp.max(i[:, :1]) + 1.0)
    rel = j - (i + offset)  # j - i - offset
    if slopes is not None:
        s = s - slopes * xp.astype(xp.abs(rel), slopes.dtype)
    neg_inf = xp.asarray(-xp.inf, dtype=s.dtype)
    if causal:
        s = xp.where(rel <= 0.0, s, neg_inf)
    left, right = int(window[0]), int(window[1])
    if left >= 0:
        s = xp.where(rel >= -float(left), s, neg_inf)
    if right >= 0:
        s = xp.where(rel <= float(right), s, neg_inf)
    return s


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
    window: tuple[int, int] = NO_WINDOW,
    alibi_slopes: Array | None = None,
    softcap: float | None = None,
    offset: int | None = None,
    return_lse: bool = False,
    gain: tuple[float, ...] = (),
) -> Any:
    """Tiled online-softmax attention in any array-API namespace (heads-first layout).

    ``window``, ``alibi_slopes`` (``(..., H)``) and ``softcap``: see :func:`sdpa`. Key blocks wholly
    outside the window (or the causal triangle) are skipped, so a window costs O(Lq * (left + right)).

    ``offset``: causal masking lets query ``i`` see key ``j`` when ``j <= i + offset`` (default
    ``Lk - Lq``, bottom-right aligned); a block of a longer sequence passes its own (the window and
    ALiBi distances use the same offset). With ``return_lse=True`` the result is ``(out, lse)``,
    ``lse = log sum_j exp(s_ij)`` per query row (``-inf`` for a row with no visible key), which
    :func:`merge_partials` needs.

    ``gain``: powers of two whose product the true logits are of the computed ones (inputs rescaled by
    :func:`.overflow.rescale_factors` because the logits overflow the dtype; an additive mask and the
    ALiBi slopes must then be divided by it too, unless ``softcap`` is set, which bounds the logits):
    the exponentials become ``exp(g (s - m))`` (:func:`.overflow.times_gain`). Not with ``return_lse``.
    """
    if gain and return_lse:
        raise ValueError("sdpa_generic: return_lse with a logit gain is not supported")
    tile_gain = gain if softcap is None else ()
    lq, lk = q.shape[-2], k.shape[-2]
    dev = array_api_compat.device(q)
    offset = lk - lq if offset is None else int(offset)
    lse_parts = []
    slopes = _slopes4(alibi_slopes, q, xp)
    shapes = [tuple(q.shape[:-2]), tuple(k.shape[:-2]), tuple(v.shape[:-2])]
    batch = np.broadcast_shapes(*shapes, *([tuple(slopes.shape[:-2])] if slopes is not None else []))
    out_parts = []
    qs = q * scale
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
            if window_skips(q0, q1, k0, k1, offset, window):
                continue  # the whole block lies outside every query's window
            s = qt @ xp.matrix_transpose(k[..., k0:k1, :])
            if gain and softcap is not None:
                s = times_gain(s, gain, xp)  # the true logits (saturated at the dtype's max) before the cap
            s = _scores(s, xp, q0, q1, k0, k1, offset, causal, window, slopes, softcap)
            s = apply_mask_tile(s, mask, xp, q0, q1, k0, k1)
            m_new = xp.maximum(m, xp.max(s, axis=-1, keepdims=True))
            m_safe = xp.where(xp.isinf(m_new), xp.zeros_like(m_new), m_new)
            if tile_gain:
                p = xp.exp(times_gain(s - m_safe, tile_gain, xp))
                alpha = xp.exp(times_gain(m - m_safe, tile_gain, xp))
            else:
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
    q: Array,
    k: Array,
    *,
    xp: Namespace,
    scale: float,
    mask: Array | None = None,
    causal: bool = False,
    window: tuple[int, int] = NO_WINDOW,
    alibi_slopes: Array | None = None,
    softcap: float | None = None,
) -> Array:
    """The dense probabilities ``softmax(scale q k^T + bias)``, shape ``(..., H, Lq, Lk)`` (O(Lq*Lk) memory)."""
    if needs_grouping(q, k):  # grouped-query attention (see .gqa): key heads broadcast over their group
        hk = int(k.shape[-3])
        w = attention_weights(
            group_queries(q, hk, xp),
            group_keys(k, xp),
            xp=xp,
            scale=scale,
            mask=group_queries(mask, hk, xp),
            causal=causal,
            window=window,
            alibi_slopes=group_slopes(alibi_slopes, hk, xp),
            softcap=softcap,
        )
        return ungroup(w, xp)
    check_scores(q, k)
    if overflow.at_risk(xp, q.dtype, logits=(q, k, q.shape[-1], scale)):  # see .overflow: logits past the dtype's range
        if not overflow.can_widen(xp, q.dtype):
            return _weights_rescaled(q, k, xp, scale, mask, causal, window, alibi_slopes, softcap)
        return overflow.run_wider(
            lambda q, k, mask, sl: attention_weights(
                q, k, xp=xp, scale=scale, mask=mask, causal=causal, window=window, alibi_slopes=sl, softcap=softcap
            ),
            xp,
            (q, k, mask, alibi_slopes),
            dtype=q.dtype,
            names="query, key",
        )
    lq, lk = q.shape[-2], k.shape[-2]
    s = (q * scale) @ xp.matrix_transpose(k)
    s = _scores(s, xp, 0, lq, 0, lk, None if lq is None or lk is None else lk - lq, causal, window, _slopes4(alibi_slopes, q, xp), softcap)
    s = apply_mask_tile(s, mask, xp, 0, lq, 0, lk)
    return safe_softmax(s, xp)


def _rescaled_biases(mask: Array | None, slopes: Array | None, gain: tuple[float, float], softcap: float | None, xp: Namespace) -> tuple[Any, Any]:
    """An additive mask and ALiBi slopes in the units of logits held divided by ``prod(gain)`` (no
    change with ``softcap``, whose capped logits are used unscaled)."""
    if softcap is not None:
        return mask, slopes
    if mask is not None and not xp.isdtype(mask.dtype, "bool"):
        mask = mask / gain[0] / gain[1]
    if slopes is not None:
        slopes = slopes / gain[0] / gain[1]
    return mask, slopes


def _weights_rescaled(
    q: Array,
    k: Array,
    xp: Namespace,
    scale: float,
    mask: Array | None,
    causal: bool,
    window: tuple[int, int],
    slopes: Array | None,
    softcap: float | None,
) -> Array:
    """:func:`attention_weights` for logits past the dtype's range: ``q/a``, ``k/b`` and the gain ``a b``."""
    a, b, _ = overflow.rescale_factors(q, k, None, scale=scale, lk=int(k.shape[-2]), dtype=q.dtype)
    mask, slopes = _rescaled_biases(mask, slopes, (a, b), softcap, xp)
    lq, lk = q.shape[-2], k.shape[-2]
    s = ((q / a) * scale) @ xp.matrix_transpose(k / b)
    if softcap is not None:
        s = times_gain(s, (a, b), xp)
    s = _scores(s, xp, 0, lq, 0, lk, lk - lq, causal, window, _slopes4(slopes, q, xp), softcap)
    s = apply_mask_tile(s, mask, xp, 0, lq, 0, lk)
    return safe_softmax(s, xp, gain=() if softcap is not None else (a, b))


def _sdpa_rescaled(
    q: Array,
    k: Array,
    v: Array,
    xp: Namespace,
    scale: float,
    mask: Array | None,
    causal: bool,
    dropout_p: float,
    rng: np.random.Generator | None,
    block_size: int,
    window: tuple[int, int],
    slopes: Array | None,
    softcap: float | None,
) -> Array:
    """:func:`sdpa` for inputs whose logits or value sums overflow a dtype with nothing wider: the generic
    kernel on ``q/a``, ``k/b``, ``v/c`` (powers of two, exact) with the logit gain ``a b``, times ``c``."""
    a, b, c = overflow.rescale_factors(q, k, v, scale=scale, lk=int(k.shape[-2]), dtype=q.dtype)
    mask, slopes = _rescaled_biases(mask, slopes, (a, b), softcap, xp)
    gain = (a, b) if a * b != 1.0 else ()
    extra: dict[str, Any] = dict(window=tuple(window), softcap=softcap, gain=gain)
    out = _positional_generic(q / a, k / b, v / c, xp, scale, mask, causal, dropout_p, rng, block_size, slopes, extra)
    if c == 1.0:
        return out
    out = xp.clip(out, min=-dtype_max(out.dtype) / c, max=dtype_max(out.dtype) / c) * c  # a convex combination: |out| <= max|v|
    return out


def _with_positional(mask: Array | None, xp: Namespace, like: Array, lq: int, lk: int, window: tuple[int, int], slopes: Array | None) -> Array | None:
    """``mask`` combined with the window (bool) and ALiBi bias (float) into one ``(..., H, Lq, Lk)`` mask.

    Materialises O(Lq * Lk) per head: used only to hand these options to a backend that takes a mask
    (torch's fused kernel) instead of computing them per tile.
    """
    dev = array_api_compat.device(like)
    allowed = window_allowed(xp, 0, lq, 0, lk, lk - lq, window, dev)
    s4 = _slopes4(slopes, like, xp)
    if s4 is None:
        if allowed is None or mask is None:
            return allowed if mask is None else mask
        if xp.isdtype(mask.dtype, "bool"):
            return xp.logical_and(mask, allowed)
        return xp.where(allowed, mask, xp.asarray(-xp.inf, dtype=mask.dtype, device=dev))
    bias = alibi_bias(xp, s4, 0, lq, 0, lk, lk - lq)
    neg_inf = xp.asarray(-xp.inf, dtype=bias.dtype, device=dev)
    if allowed is not None:
        bias = xp.where(allowed, bias, neg_inf)
    if mask is None:
        return bias
    if xp.isdtype(mask.dtype, "bool"):
        return xp.where(mask, bias, neg_inf)
    return bias + xp.astype(mask, bias.dtype)


def _blas_one_thread(active: bool) -> Any:
    """Hold BLAS to one thread around the generic kernel's many small per-tile GEMMs (NumPy only).

    Multi-threaded BLAS gains nothing on ``q_block x block_size`` tiles, and on a loaded machine its
    spinning threads made a windowed forward ~10x slower. No-op without threadpoolctl.
    """
    if not active or not blas_limiter_available():
        return contextlib.nullcontext()
    return BlasOneThread()


def _positional_generic(
    q: Array,
    k: Array,
    v: Array,
    xp: Namespace,
    scale: float,
    mask: Array | None,
    causal: bool,
    dropout_p: float,
    rng: np.random.Generator | None,
    block_size: int,
    alibi_slopes: Array | None,
    extra: dict[str, Any],
) -> Array:
    """:func:`sdpa_generic` with the window / ALiBi / softcap options, key/value heads grouped if needed."""
    kw: dict[str, Any] = dict(xp=xp, scale=scale, causal=causal, dropout_p=dropout_p, rng=rng, block_size=block_size, **extra)
    if needs_grouping(q, k, v):
        hk = int(k.shape[-3])
        out = sdpa_generic(
            group_queries(q, hk, xp),
            group_keys(k, xp),
            group_keys(v, xp),
            mask=group_queries(mask, hk, xp),
            alibi_slopes=group_slopes(alibi_slopes, hk, xp),
            **kw,
        )
        return ungroup(out, xp)
    return sdpa_generic(q, k, v, mask=mask, alibi_slopes=alibi_slopes, **kw)


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
    window: tuple[int, int] = NO_WINDOW,
    alibi_slopes: Array | None = None,
    softcap: float | None = None,
    engine: str = "auto",
) -> Array:
    """Dispatch to the fastest exact kernel whose semantics match; all agree with :func:`sdpa_generic`.

    ``backend``: ``"auto"`` (default), ``"generic"``, ``"numpy"`` (the NumPy fast path) or ``"torch"``
    (torch's fused ``scaled_dot_product_attention``).

    Options of FlashAttention-2 (Dao 2023), all aligned bottom-right when ``Lq != Lk`` (query ``i``
    sits at key position ``i + Lk - Lq``):

    * ``window = (left, right)``: query ``i`` sees keys ``i - left .. i + right``; a negative side is
      unbounded, ``(-1, -1)`` is no window (Beltagy et al. 2020, Longformer's sliding window);
    * ``alibi_slopes`` ``(..., H)``: the bias ``-slope_h * |i - j|`` is added to the scores of head
      ``h`` (Press et al. 2022, ALiBi);
    * ``softcap``: the scaled scores become ``softcap * tanh(s / softcap)`` before the biases (logit
      soft-capping, Gemma 2, Gemma Team 2024).

    NumPy inputs run them in the NumPy fast path (:func:`.dense_numpy.sdpa_numpy`, key blocks outside
    the window never computed); torch inputs without ``softcap`` in torch's fused kernel, a narrow
    window as a batch of query blocks with only their window's keys (:func:`.dense_torch.sdpa_torch_window`,
    O(Lq * window)), otherwise with the window and ALiBi as one dense mask; the rest in the generic
    tiled kernel (which also skips key blocks outside the window).

    ``engine`` (for NumPy inputs under ``backend="auto"``): ``"numpy"``, ``"torch"`` (torch's fused
    kernel on zero-copy views) or ``"auto"`` (calibrated per machine; see :mod:`.engine`).

    In a graph-building namespace (``ndonnx``, for :func:`attnkit.export_onnx`) the whole-sequence form
    ``attention_weights(q, k) @ v`` is used: the same formula without the Python loop over tiles, so an
    exported graph takes any length.
    """
    if is_graph(xp):
        if dropout_p > 0.0:
            from ..errors import ConfigError

            raise ConfigError("dropout: a random dropout mask cannot be exported; export in eval mode (dropout off)")
        if needs_grouping(q, k, v):  # grouped-query attention: query head h reads key/value head h // G
            g = kv_groups(q, k, v)
            k, v = xp.repeat(k, g, axis=-3), xp.repeat(v, g, axis=-3)
        w = attention_weights(q, k, xp=xp, scale=scale, mask=mask, causal=causal, window=window, alibi_slopes=alibi_slopes, softcap=softcap)
        return w @ v
    qb, kb, vb = tuple(q.shape[:-2]), tuple(k.shape[:-2]), tuple(v.shape[:-2])
    lead = qb if qb == kb == vb or needs_grouping(q, k, v) else np.broadcast_shapes(qb, kb, vb)
    out_shape = (*lead, int(q.shape[-2]), int(v.shape[-1]))
    if 0 in out_shape:  # an empty batch or query: nothing to compute (and no tile loop over a long empty axis)
        return xp.zeros(out_shape, dtype=q.dtype, device=array_api_compat.device(q))
    if overflow.at_risk(xp, q.dtype, logits=(q, k, q.shape[-1], scale), values=(v, k.shape[-2])):
        # logits or the weighted value sum past the dtype's range (see .overflow): the same kernel, one dtype
        # wider, or (float64, JAX without x64) the generic kernel on inputs rescaled by powers of two
        if not overflow.can_widen(xp, q.dtype):
            return _sdpa_rescaled(q, k, v, xp, scale, mask, causal, dropout_p, rng, block_size, window, alibi_slopes, softcap)
        return overflow.run_wider(
            lambda q, k, v, mask, sl: sdpa(
                q,
                k,
                v,
                xp=xp,
                scale=scale,
                mask=mask,
                causal=causal,
                dropout_p=dropout_p,
                rng=rng,
                block_size=block_size,
                backend=backend,
                window=window,
                alibi_slopes=sl,
                softcap=softcap,
                engine=engine,
            ),
            xp,
            (q, k, v, mask, alibi_slopes),
            dtype=q.dtype,
            names="query, key",
        )
    out = _sdpa_in_range(q, k, v, xp, scale, mask, causal, dropout_p, rng, block_size, backend, window, alibi_slopes, softcap, engine)
    plain = dropout_p == 0.0 and softcap is None and alibi_slopes is None and tuple(window) == NO_WINDOW
    if plain and (mask is None or str(mask.dtype).endswith("bool")):
        # softmax weights of logits in range over value rows in range: |out| <= max|v| up to rounding, so the
        # caller's output check (overflow.finite_or_wider) has nothing to find (a float mask could overflow)
        overflow.note_convex_combination(out, v, int(k.shape[-2]))
    return out


def _sdpa_in_range(
    q: Array,
    k: Array,
    v: Array,
    xp: Namespace,
    scale: float,
    mask: Array | None,
    causal: bool,
    dropout_p: float,
    rng: np.random.Generator | None,
    block_size: int,
    backend: str,
    window: tuple[int, int],
    alibi_slopes: Array | None,
    softcap: float | None,
    engine: str,
) -> Array:
    """:func:`sdpa` once the overflow guard found the logits and value sums in range: the kernel dispatch."""
    window = (int(window[0]), int(window[1]))
    positional = window != NO_WINDOW or alibi_slopes is not None
    extra: dict[str, Any] = dict(window=window, alibi_slopes=alibi_slopes, softcap=softcap)
    kw: dict[str, Any] = dict(scale=scale, mask=mask, causal=causal)
    grouped = needs_grouping(q, k, v)
    if positional or softcap is not None:
        if backend in ("auto", "torch") and is_torch(xp) and dropout_p == 0.0 and softcap is None:
            from .dense_torch import sdpa_torch, sdpa_torch_window

            out = sdpa_torch_window(q, k, v, scale=scale, mask=mask, causal=causal, window=window, alibi_slopes=alibi_slopes)
            if out is not None:  # a narrow window: key blocks outside it are never computed
                return out
            pm = _with_positional(mask, xp, q, int(q.shape[-2]), int(k.shape[-2]), window, alibi_slopes)
            out = sdpa_torch(q, k, v, scale=scale, mask=pm, causal=causal)
            if out is not None:
                return out
        if not (backend in ("auto", "numpy") and is_numpy(xp) and dropout_p == 0.0):
            if is_numpy(xp):
                # BLAS wants each tile contiguous: the (..., L, H, D) -> (..., H, L, D) views make NumPy's
                # matmul fall back to a loop 10-100x slower. One O(L * D) copy each.
                q, k, v = np.ascontiguousarray(q), np.ascontiguousarray(k), np.ascontiguousarray(v)
            with _blas_one_thread(is_numpy(xp)):
                return _positional_generic(
                    q, k, v, xp, scale, mask, causal, dropout_p, rng, block_size, alibi_slopes, dict(window=window, softcap=softcap)
                )
    elif backend == "auto" and is_numpy(xp) and dropout_p == 0.0 and engine != "numpy" and not grouped:
        from .engine import choose_engine, sdpa_torch_numpy

        work = 4.0 * math.prod(np.broadcast_shapes(q.shape[:-2], k.shape[:-2])) * q.shape[-2] * k.shape[-2] * q.shape[-1]
        if choose_engine(engine, work=work, dtype=q.dtype, causal=causal) == "torch":
            out = sdpa_torch_numpy(q, k, v, **kw)
            if out is not None:
                return out
    if backend in ("auto", "torch") and is_torch(xp) and dropout_p == 0.0 and not (positional or softcap is not None):
        from .dense_torch import sdpa_torch

        out = sdpa_torch(q, k, v, **kw)  # grouped heads go to torch's kernel with enable_gqa=True
        if out is not None:
            return out
    if grouped:
        # grouped-query attention (see .gqa) as attention over (..., Hkv, G, L, D) with K/V
        # broadcast along the group axis (views, never copies): every kernel below serves it as is
        hk = int(k.shape[-3])
        out = sdpa(
            group_queries(q, hk, xp),
            group_keys(k, xp),
            group_keys(v, xp),
            xp=xp,
            scale=scale,
            mask=group_queries(mask, hk, xp),
            causal=causal,
            dropout_p=dropout_p,
            rng=rng,
            block_size=block_size,
            backend="generic" if backend == "torch" else backend,
            window=window,
            alibi_slopes=group_slopes(alibi_slopes, hk, xp),
            softcap=softcap,
            engine=engine,
        )
        return ungroup(out, xp)
    if backend in ("auto", "numpy") and is_numpy(xp) and dropout_p == 0.0:
        from .dense_numpy import sdpa_numpy

        out = sdpa_numpy(q, k, v, block_size=block_size, **kw, **extra)
        if out is not None:
            return out
    if positional or softcap is not None:
        with _blas_one_thread(is_numpy(xp)):
            return _positional_generic(
                q, k, v, xp, scale, mask, causal, dropout_p, rng, block_size, alibi_slopes, dict(window=window, softcap=softcap)
            )
    return sdpa_generic(q, k, v, xp=xp, dropout_p=dropout_p, rng=rng, block_size=block_size, **kw)
