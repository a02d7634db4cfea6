"""LocalGlobalAttention: sliding-window attention plus global tokens (Longformer), O(L * window) memory.

Beltagy, Peters & Cohan 2020, "Longformer: The Long-Document Transformer". Query ``i`` attends the keys
within ``window // 2`` positions of its own position ``i`` (so ``2 * (window // 2) + 1`` keys away from
the ends), every global token, and a global token attends to every position. With ``causal=True``
query ``i`` additionally sees only keys ``j <= i`` (a global token too). The output equals dense
attention with the equivalent boolean mask (:meth:`LocalGlobalAttention.dense_mask`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._array import Array, is_graph, nonzero_float, positive_int
from ..errors import ConfigError, ShapeError
from ..kernels.decode import cached_attention
from ..kernels.dense import NO_WINDOW, attention_weights
from ..kernels.local import local_global_allowed, local_global_attention, local_global_mask
from ..kernels.rope import RotaryEmbedding, apply_rope_qk, as_rope
from ._sequence import layout_option, prepare_sequence
from .base import Mechanism
from .kv_cache import KVCache, as_cache
from .registry import register

__all__ = ["LocalGlobalAttention"]


def _parse_globals(value: Any) -> int | tuple[int, ...]:
    """``global_tokens``: an int count (the first n tokens), a sequence of indices, or a string of either."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return 0
        try:
            if "," not in text and not text.startswith("["):
                value = int(text)
            else:
                value = [int(t) for t in text.strip("[]()").split(",") if t.strip()]
        except ValueError:
            raise ConfigError(f"global_tokens: expected a count or comma-separated indices, got {value!r}") from None
    if isinstance(value, bool):
        raise ConfigError(f"global_tokens: expected a count or a list of indices, got {value!r}")
    if isinstance(value, (int, np.integer)):
        if int(value) < 0:
            raise ConfigError(f"global_tokens: expected a count >= 0, got {value!r}")
        return int(value)
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, Sequence):
        raise ConfigError(f"global_tokens: expected a count or a list of indices, got {type(value).__name__}")
    idx = []
    for t in value:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or int(t) < 0:
            raise ConfigError(f"global_tokens: expected non-negative integer indices, got {t!r}")
        idx.append(int(t))
    return tuple(sorted(set(idx)))


@register
class LocalGlobalAttention(Mechanism):
    """Longformer-style local-window + global-token attention over heads.

    Options: ``dim`` per head (64); ``heads`` (8); ``window`` (128): each query sees keys within
    ``window // 2`` positions of itself; ``global_tokens`` (0): an int ``n`` means the first ``n``
    tokens are global (clipped to the sequence length), a list gives their indices (each must be
    ``< L`` at call time); ``causal`` (False); ``scale`` (``1/sqrt(dim)``); ``rope``: a
    :class:`~attnkit.RotaryEmbedding` (or ``True``/``"half"``/``"interleaved"``) applied to q and k at
    positions ``0..L-1`` (or ``positions=`` given to :meth:`forward`); ``block_size``: query rows per
    tile (``None``: chosen from the window); ``check_finite`` rejects NaN/inf input.
    ``layout``: ``"bshd"`` (default, ``(..., L, H, D)``) or ``"bhsd"`` (``(..., H, L, D)``, torch's).

    Inputs ``q, k, v: (..., L, H, D)`` (one sequence: ``Lq == Lk``) or the spec's flat arrays.
    """

    name = "local_global"
    summary = "sliding-window + global-token attention (Longformer), O(L*window) memory"
    input_layout = "sequence"
    same_length = True
    shape_options = {"heads": ("query", -2), "dim": ("query", -1)}
    example_options = {"dim": 4, "heads": 2, "window": 4, "global_tokens": 1}

    def __init__(
        self,
        dim: int = 64,
        heads: int = 8,
        window: int = 128,
        global_tokens: int | str | list[int] = 0,
        causal: bool = False,
        scale: float | None = None,
        rope: RotaryEmbedding | str | bool | None = None,
        block_size: int | None = None,
        check_finite: bool = True,
        layout: str = "bshd",
    ) -> None:
        super().__init__()
        self.dim = positive_int(dim, "dim")
        self.heads = positive_int(heads, "heads")
        self.window = positive_int(window, "window")
        self.global_tokens = _parse_globals(global_tokens)
        self.causal = bool(causal)
        self.scale = None if scale is None else nonzero_float(scale, "scale")
        self.rope = as_rope(rope, self.dim)
        self.block_size = None if block_size is None else positive_int(block_size, "block_size")
        self.check_finite = bool(check_finite)
        self.layout = layout_option(layout)  # "bshd" (..., L, H, D) or "bhsd" (..., H, L, D)

    @property
    def radius(self) -> int:
        """``window // 2``: how far left and right of its own position a query sees."""
        return self.window // 2

    @property
    def effective_scale(self) -> float:
        return self.scale if self.scale is not None else 1.0 / math.sqrt(self.dim)

    def global_indices(self, seq_len: int | None) -> np.ndarray:
        """The sorted global positions for a sequence of ``seq_len`` tokens (``None``: a symbolic length,
        every position given; those past the end of a sequence never match)."""
        if seq_len is None:
            g = self.global_tokens
            return np.arange(g, dtype=np.int64) if isinstance(g, int) else np.asarray(g, dtype=np.int64)
        if isinstance(self.global_tokens, int):
            return np.arange(min(self.global_tokens, seq_len), dtype=np.int64)
        idx = np.asarray(self.global_tokens, dtype=np.int64)
        if idx.size and idx[-1] >= seq_len:
            raise ShapeError(f"global_tokens: index {int(idx[-1])} is outside a sequence of length {seq_len}")
        return idx

    def dense_mask(self, seq_len: int) -> np.ndarray:
        """The equivalent boolean ``(L, L)`` mask (True = may attend); O(L^2), for inspection and tests."""
        self._check_alive()
        n = positive_int(seq_len, "seq_len")
        return local_global_mask(n, self.radius, self.global_indices(n), self.causal)

    def _prepare(self, q: Any, k: Any, v: Any, mask: Any, positions: Any) -> Any:
        s = prepare_sequence(
            q, k, v, mask, heads=self.heads, dim=self.dim, check=self.check_finite, same_length=True, grouped=True, layout=self.layout
        )
        if self.rope is not None:
            s.q = self.rope.apply(s.q, positions, seq_axis=-2)
            s.k = self.rope.apply(s.k, positions, seq_axis=-2)
        return s

    def forward(
        self, query: Any, key: Any = None, value: Any = None, *, mask: Any = None, positions: Any = None, cache: KVCache | None = None
    ) -> Array:
        """Output ``(..., L, H, Dv)`` (flat in, flat out). ``key, value`` default to ``query``.

        ``positions``: token positions for ``rope`` (default ``0..L-1``); ignored without ``rope``.

        ``cache``: a :class:`~attnkit.KVCache` (incremental decoding, ``causal=True`` only): ``key``/
        ``value`` are the new tokens' (as many as queries); they are appended, and query ``i`` (at
        position ``p = cache.length - L + i`` after the append) attends the cached keys ``j <= p`` with
        ``p - j <= window // 2``, the global tokens among them, or all ``j <= p`` when ``p`` is global:
        the rows of the full causal forward. RoPE positions come from the cache.
        """
        if cache is None:
            return self._run_forward(query, key, value, mask=mask, positions=positions)
        return self._run_forward(query, key, value, mask=mask, positions=positions, cache=cache)

    def attention_weights(self, query: Any, key: Any = None, *, mask: Any = None, positions: Any = None) -> Array:
        """Dense probabilities ``(..., H, L, L)`` (zeros outside the pattern); O(L^2), for inspection."""
        return self._run_weights(query, key, mask=mask, positions=positions)

    def _forward(
        self, params: Mapping[str, Array], query: Any, key: Any, value: Any, *, mask: Any = None, positions: Any = None, cache: Any = None
    ) -> Array:
        if cache is not None:
            return self._forward_cached(query, key, value, mask, positions, as_cache(cache))
        s = self._prepare(query, key, value, mask, positions)
        out = local_global_attention(
            s.q,
            s.k,
            s.v,
            xp=s.xp,
            scale=self.effective_scale,
            radius=self.radius,
            global_idx=self.global_indices(s.lq),
            causal=self.causal,
            mask=s.mask,
            block=self.block_size,
        )
        return s.finish(out)

    def _forward_cached(self, query: Any, key: Any, value: Any, mask: Any, positions: Any, cache: KVCache) -> Array:
        """``forward(..., cache=cache)`` (see :meth:`forward`): the new rows of the causal pattern over the cache."""
        if not self.causal:
            raise ConfigError("cache: decoding with a KVCache needs causal=True (without it a query sees later tokens)")
        if mask is not None or positions is not None:
            raise ConfigError("cache: mask= and positions= are not taken with a KVCache (positions come from the cache)")
        s = prepare_sequence(
            query, key, value, None, heads=self.heads, dim=self.dim, check=self.check_finite, same_length=True, grouped=True, layout=self.layout
        )
        if is_graph(s.xp):
            raise ConfigError("cache: a KVCache is Python state and cannot be exported to ONNX; export the forward without cache=")
        xp, lq, p0 = s.xp, int(s.q.shape[-2]), cache.length
        total = p0 + lq
        g = self.global_indices(None)
        g = g[g < total]
        if g.size and cache.window is not None:
            raise ConfigError(f"cache: global tokens need every earlier key; use a KVCache without window (got window={cache.window})")
        s.q, s.k = apply_rope_qk(self.rope, s.q, s.k, start=p0)  # positions from the cache
        # one query over a ring no longer than its window sees every slot, in any order; otherwise keys in time order
        ordered = lq > 1 or (cache.window is not None and self.radius + 1 < cache.window)
        k_all, v_all, ring_left = cache.extend(s.k, s.v, ordered=ordered)
        lk = int(k_all.shape[-2])
        left = self.radius if ring_left is None else min(self.radius, ring_left)
        mask_arr = None
        if g.size == 0:
            keep = min(lk, left + lq)  # the keys any new query can see: a view of the newest ones
            k_all, v_all = k_all[..., lk - keep :, :], v_all[..., lk - keep :, :]
            window = (left, -1) if left < keep - 1 else NO_WINDOW
        else:  # the rows of local_global_mask(total, radius, globals, causal=True) for the new queries
            qpos = np.arange(total - lq, total)[:, None]
            kpos = np.arange(total - lk, total)[None, :]
            is_g = np.zeros(total, dtype=bool)
            is_g[g] = True
            allowed = ((qpos - kpos <= left) | is_g[kpos] | is_g[qpos]) & (kpos <= qpos)
            mask_arr = xp.asarray(allowed, device=s.device)
            window = NO_WINDOW
        out = cached_attention(s.q, k_all, v_all, xp=xp, scale=self.effective_scale, mask=mask_arr, window=window)
        return s.finish(out)

    def _attention_weights(self, params: Mapping[str, Array], query: Any, key: Any, *, mask: Any = None, positions: Any = None) -> Array:
        kk = query if key is None else key
        s = self._prepare(query, kk, kk, mask, positions)
        xp = s.xp
        # the pattern from index grids in xp (any length: a symbolic one in an exported graph too)
        m = local_global_allowed(s.q, s.k, xp=xp, radius=self.radius, global_idx=self.global_indices(s.lq), causal=self.causal, mask=s.mask)
        w = attention_weights(s.q, s.k, xp=xp, scale=self.effective_scale, mask=m)
        if w.dtype != s.out_dtype:
            w = xp.astype(w, s.out_dtype)
        return xp.reshape(w, (-1,)) if s.flat else w

    def example_inputs(self, seq_len: int = 8, rng: np.random.Generator | None = None) -> tuple[np.ndarray, ...]:
        rng = rng or np.random.default_rng()
        shape = (self.heads, seq_len, self.dim) if self.layout == "bhsd" else (seq_len, self.heads, self.dim)
        return tuple(rng.standard_normal(shape, dtype=np.float32) for _ in range(3))
