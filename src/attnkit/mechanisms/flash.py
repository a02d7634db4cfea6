"""FlashAttention: exact multi-head attention tiled with the online softmax (memory O(L)).

    out = softmax(scale * q k^T + bias) v            (Dao et al. 2022, "FlashAttention")

Inputs are ``q: (..., Lq, H, D)``, ``k: (..., Lk, H, D)``, ``v: (..., Lk, H, Dv)``, or the spec's flat
arrays of length ``L*H*D``. ``causal=True`` is bottom-right aligned when ``Lq != Lk``.

Keys and values may have ``Hkv`` heads where ``Hkv`` divides ``H`` (grouped-query attention, Ainslie
et al. 2023; multi-query with ``Hkv = 1``, Shazeer 2019), inferred from the shapes as torch's
``enable_gqa``: query head ``h`` uses key/value head ``h // (H / Hkv)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._array import Array, broadcast_shapes, check_allocation, is_graph, nonzero_float, positive_float, positive_int, probability
from ..errors import ConfigError, ShapeError
from ..kernels.decode import cached_attention
from ..kernels.dense import NO_WINDOW, attention_weights, sdpa
from ..kernels.engine import check_engine
from ..kernels.masks import alibi_slopes, unflatten_mask
from ..kernels.rope import RotaryEmbedding, apply_rope_qk, as_rope
from ._sequence import layout_option, prepare_sequence
from ._varlen import is_nested, varlen_forward
from .base import Mechanism
from .kv_cache import KVCache, as_cache, cache_mask
from .registry import register

__all__ = ["FlashAttention"]


@register
class FlashAttention(Mechanism):
    """Exact scaled dot-product attention over heads, computed in key blocks of ``block_size``.

    Options follow the spec's ``FlashAttentionOptions``: ``heads`` (8), ``dim`` per head (64),
    ``block_size`` (256), ``causal`` (False), ``dropout`` on the probabilities while training (0.0),
    ``scale`` (``1/sqrt(dim)``), ``simd`` (True: allow the vectorised NumPy fast path).
    ``seed`` seeds the dropout generator; ``check_finite`` rejects NaN/inf input; ``rope``: a
    :class:`~attnkit.RotaryEmbedding` (or ``True``/``"half"``/``"interleaved"``) applied to q and k
    (keys at positions ``0..Lk-1``, queries bottom-right aligned at ``Lk-Lq..Lk-1``).

    FlashAttention-2's options (Dao 2023), bottom-right aligned when ``Lq != Lk`` like ``causal``:
    ``window=(left, right)`` (``window_size``): query ``i`` sees keys ``i-left .. i+right``, a negative
    side unbounded, ``(-1, -1)`` no window (a string ``"left,right"`` is accepted); ``alibi_slopes``:
    ``heads`` slopes, the score of head ``h`` gets ``-slope_h * |i - j|`` (Press et al. 2022, ALiBi;
    ``"default"`` or ``True`` takes the paper's geometric slopes);
    ``softcap``: scores become ``softcap * tanh(s / softcap)`` before biases and masks (Gemma 2).

    ``engine`` (NumPy inputs): ``"auto"`` (default: torch's fused kernel through zero-copy views where
    a cached per-machine calibration finds it faster and torch is already imported or the call is
    large), ``"numpy"`` (attnkit's NumPy path) or ``"torch"``; ``$ATTNKIT_ENGINE`` overrides ``"auto"``.
    See :mod:`attnkit.kernels.engine`.

    ``layout``: ``"bshd"`` (default: ``(..., L, H, D)`` in and out) or ``"bhsd"`` (torch's SDPA layout
    ``(..., H, L, D)``, passed to torch's kernel as is, without a transpose or a copy).
    """

    name = "flash"
    summary = "exact multi-head attention, tiled with the online softmax (O(L) memory)"
    input_layout = "sequence"
    shape_options = {"heads": ("query", -2), "dim": ("query", -1)}
    example_options = {"heads": 2, "dim": 4}

    def __init__(
        self,
        heads: int = 8,
        dim: int = 64,
        block_size: int = 256,
        causal: bool = False,
        dropout: float = 0.0,
        scale: float | None = None,
        simd: bool = True,
        seed: int | None = None,
        check_finite: bool = True,
        rope: RotaryEmbedding | str | bool | None = None,
        window: tuple[int, int] | str | None = NO_WINDOW,
        alibi_slopes: Sequence[float] | str | None = None,
        softcap: float | None = None,
        engine: str = "auto",
        layout: str = "bshd",
    ) -> None:
        super().__init__()
        self.heads = positive_int(heads, "heads")
        self.dim = positive_int(dim, "dim")
        self.block_size = positive_int(block_size, "block_size")
        self.causal = bool(causal)
        self.dropout = probability(dropout, "dropout")
        self.scale = None if scale is None else nonzero_float(scale, "scale")
        self.simd = bool(simd)
        self.seed = seed
        self.check_finite = bool(check_finite)
        self.rope = as_rope(rope, self.dim)  # rotary embedding of q/k (see attnkit.kernels.rope.apply_rope_qk)
        self.window = _window(window)
        self.alibi_slopes = _slopes(alibi_slopes, self.heads)
        self.softcap = None if softcap is None else positive_float(softcap, "softcap")
        self.engine = check_engine(engine)
        self.layout = layout_option(layout)  # "bshd" (..., L, H, D) or "bhsd" (..., H, L, D)

    def _extras(self) -> dict[str, Any]:
        return dict(window=self.window, alibi_slopes=self.alibi_slopes, softcap=self.softcap)

    @property
    def effective_scale(self) -> float:
        return self.scale if self.scale is not None else 1.0 / math.sqrt(self.dim)

    def forward(
        self,
        query: Any,
        key: Any = None,
        value: Any = None,
        *,
        mask: Any = None,
        cache: KVCache | None = None,
        cu_seqlens_q: Any = None,
        cu_seqlens_k: Any = None,
        max_seqlen_q: int | None = None,
        max_seqlen_k: int | None = None,
    ) -> Array:
        """Attention output ``(..., Lq, H, Dv)`` (``(..., H, Lq, Dv)`` with ``layout="bhsd"``; flat in, flat out).

        ``key, value`` default to ``query``.

        ``cache``: a :class:`~attnkit.KVCache` (incremental decoding). ``key``/``value`` are then the
        keys and values of the new tokens only: they are appended to the cache, and the queries attend
        over everything it holds, causally (query ``i`` of ``Lq`` sits at position
        ``cache.length - Lq + i`` after the append; bottom-right aligned, whatever ``causal`` says),
        with RoPE positions taken from the cache. So a prefill chunk followed by one token per call
        equals the full causal forward.

        Packed variable-length batches (FlashAttention-2's varlen API; see
        :mod:`attnkit.mechanisms._varlen`): ``cu_seqlens_q`` / ``cu_seqlens_k``, the ``B + 1`` offsets of
        the sequences packed in ``(total, H, D)`` inputs (``max_seqlen_*``: optional, checked); each
        sequence attends only within itself. A torch nested tensor of the jagged layout is read the same
        way and gives a nested result.
        """
        extras: dict[str, Any] = {}
        if cache is not None:
            extras["cache"] = cache
        if cu_seqlens_q is not None or cu_seqlens_k is not None or max_seqlen_q is not None or max_seqlen_k is not None:
            extras.update(cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k)
        return self._run_forward(query, key, value, mask=mask, **extras)

    def _forward(
        self, params: Mapping[str, Array], query: Any, key: Any, value: Any, *, mask: Any = None, cache: KVCache | None = None, **varlen: Any
    ) -> Array:
        """Attention output ``(..., Lq, H, Dv)`` (flat in, flat out). ``key, value`` default to ``query``."""
        if cache is not None:
            if varlen or is_nested(query, key, value):
                raise ConfigError("cache: not used with packed sequences (cu_seqlens or nested tensors); decode one sequence per cache")
            return self._forward_cached(query, key, value, mask, as_cache(cache))
        if varlen or is_nested(query, key, value):
            return varlen_forward(lambda q, k, v: self._forward(params, q, k, v), query, key, value, mask=mask, layout=self.layout, **varlen)
        s = prepare_sequence(query, key, value, mask, heads=self.heads, dim=self.dim, check=self.check_finite, grouped=True, layout=self.layout)
        s.q, s.k = apply_rope_qk(self.rope, s.q, s.k)
        p = self.dropout if self.training else 0.0
        out = sdpa(
            s.q,
            s.k,
            s.v,
            xp=s.xp,
            scale=self.effective_scale,
            mask=s.mask,
            causal=self.causal,
            dropout_p=p,
            rng=self._rng() if p > 0 else None,
            block_size=self.block_size,
            backend="auto" if self.simd else "generic",
            **self._extras(),
            engine=self.engine,
        )
        return s.finish(out)

    def _forward_cached(self, query: Any, key: Any, value: Any, mask: Any, cache: KVCache) -> Array:
        """``forward(..., cache=cache)``: append the new keys/values, attend causally over the cache (see :meth:`forward`)."""
        s = prepare_sequence(query, key, value, None, heads=self.heads, dim=self.dim, check=self.check_finite, grouped=True, layout=self.layout)
        if is_graph(s.xp):
            raise ConfigError("cache: a KVCache is Python state and cannot be exported to ONNX; export the forward without cache=")
        lq, lnew, p0 = int(s.q.shape[-2]), int(s.k.shape[-2]), cache.length
        s.q, s.k = apply_rope_qk(self.rope, s.q, s.k, start=p0)  # positions from the cache: the new keys follow the cached ones
        left = self.window[0]
        if lq > p0 + lnew:
            raise ShapeError(f"query: expected at most as many queries as keys so far ({p0 + lnew}), got Lq = {lq}")
        # checked before anything is appended (a ring buffer takes no mask)
        batch = broadcast_shapes(tuple(s.q.shape[:-3]), tuple(s.k.shape[:-3]))
        lk = p0 + lnew
        pm = cache_mask(unflatten_mask(mask, lq, lk) if s.flat else mask, cache, s.xp, batch, self.heads, lq, lk, s.q.dtype, s.device)
        k_all, v_all, ring_left = cache.extend(s.k, s.v, ordered=mask is not None or self.alibi_slopes is not None or left >= 0)
        left = _combine_left(left, ring_left, lq, int(k_all.shape[-2]))
        p = self.dropout if self.training else 0.0
        out = cached_attention(
            s.q,
            k_all,
            v_all,
            xp=s.xp,
            scale=self.effective_scale,
            mask=pm,
            window=(left, -1) if left >= 0 else NO_WINDOW,
            alibi_slopes=self.alibi_slopes,
            softcap=self.softcap,
            dropout_p=p,
            rng=self._rng() if p > 0 else None,
            block_size=self.block_size,
            backend="auto" if self.simd else "generic",
            engine=self.engine,
        )
        return s.finish(out)

    def _attention_weights(self, params: Mapping[str, Array], query: Any, key: Any, *, mask: Any = None) -> Array:
        """The attention probabilities ``(..., H, Lq, Lk)`` (the spec's ``attentionScores``; O(Lq*Lk))."""
        kk = query if key is None else key
        s = prepare_sequence(query, kk, kk, mask, heads=self.heads, dim=self.dim, check=self.check_finite, grouped=True, layout=self.layout)
        s.q, s.k = apply_rope_qk(self.rope, s.q, s.k)
        w = attention_weights(s.q, s.k, xp=s.xp, scale=self.effective_scale, mask=s.mask, causal=self.causal, **self._extras())
        if w.dtype != s.out_dtype:
            w = s.xp.astype(w, s.out_dtype)
        return s.xp.reshape(w, (-1,)) if s.flat else w

    def example_inputs(self, seq_len: int = 8, rng: np.random.Generator | None = None) -> tuple[np.ndarray, ...]:
        rng = rng or np.random.default_rng()
        shape = (self.heads, seq_len, self.dim) if self.layout == "bhsd" else (seq_len, self.heads, self.dim)
        return tuple(rng.standard_normal(shape, dtype=np.float32) for _ in range(3))


def _combine_left(own: int, ring: int | None, lq: int, lk: int) -> int:
    """The left window of cached attention: the tighter of the mechanism's own (``-1``: none) and the ring
    buffer's; ``-1`` when it hides nothing (every one of the ``Lq`` queries already sees all ``Lk`` keys)."""
    sides = [x for x in (own, ring) if x is not None and x >= 0]
    if not sides:
        return -1
    left = min(sides)
    return -1 if left >= lk - 1 else left  # the last query, at lk - 1, sees key 0 already


def _window(value: object) -> tuple[int, int]:
    """``window`` as ``(left, right)`` ints >= -1 (-1: unbounded), from a pair, ``None`` or ``"left,right"``."""
    if value is None:
        return NO_WINDOW
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        try:
            value = tuple(int(p) for p in parts)
        except ValueError:
            raise ConfigError(f"window: expected 'left,right' (two integers, -1 = unbounded), got {value!r}") from None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ConfigError(f"window: expected (left, right), two integers >= -1 (-1 = unbounded), got {value!r}")
    out = []
    for side in value:
        if isinstance(side, bool) or not isinstance(side, (int, np.integer)) or int(side) < -1:
            raise ConfigError(f"window: expected (left, right), two integers >= -1 (-1 = unbounded), got {value!r}")
        out.append(int(side))
    return (out[0], out[1])


def _slopes(value: object, heads: int) -> np.ndarray | None:
    """``alibi_slopes`` as a float64 array of ``heads`` finite numbers (or ``"s1,s2,..."``), or ``None``;
    ``True`` (or ``"default"``) gives the paper's geometric slopes (:func:`~attnkit.kernels.masks.alibi_slopes`)."""
    if value is None or value is False:
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() in ("true", "default")):
        check_allocation(8.0 * heads, "heads", "ALiBi slopes (one float64 per head)")
        return alibi_slopes(heads)
    if isinstance(value, str):
        try:
            value = [float(p) for p in value.split(",")]
        except ValueError:
            raise ConfigError(f"alibi_slopes: expected {heads} comma-separated numbers, got {value!r}") from None
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"alibi_slopes: expected {heads} numbers (one per head), got {value!r}") from None
    if arr.shape != (heads,):
        raise ConfigError(f"alibi_slopes: expected {heads} numbers (one per head), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ConfigError("alibi_slopes: expected finite numbers, got NaN or infinity")
    return arr
