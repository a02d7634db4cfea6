"""FlashAttention: exact multi-head attention tiled with the online softmax (memory O(L)).

    out = softmax(scale * q k^T + bias) v            (Dao et al. 2022, "FlashAttention")

Inputs are ``q: (..., Lq, H, D)``, ``k: (..., Lk, H, D)``, ``v: (..., Lk, H, Dv)``, or the spec's flat
arrays of length ``L*H*D``. ``causal=True`` is bottom-right aligned when ``Lq != Lk``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._array import Array, nonzero_float, positive_int, probability
from ..kernels.dense import attention_weights, sdpa
from ..kernels.rope import RotaryEmbedding, apply_rope_qk, as_rope
from ._sequence import prepare_sequence
from .base import Mechanism
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

    @property
    def effective_scale(self) -> float:
        return self.scale if self.scale is not None else 1.0 / math.sqrt(self.dim)

    def _forward(self, params: Mapping[str, Array], query: Any, key: Any, value: Any, *, mask: Any = None) -> Array:
        """Attention output ``(..., Lq, H, Dv)`` (flat in, flat out). ``key, value`` default to ``query``."""
        s = prepare_sequence(query, key, value, mask, heads=self.heads, dim=self.dim, check=self.check_finite)
        s.q, s.k = apply_rope_qk(self.rope, s.q, s.k)
        p = self.dropout if self.training else 0.0
        out = sdpa(
            s.q, s.k, s.v, xp=s.xp, scale=self.effective_scale, mask=s.mask, causal=self.causal,
            dropout_p=p, rng=self._rng() if p > 0 else None, block_size=self.block_size,
            backend="auto" if self.simd else "generic",
        )
        return s.finish(out)

    def _attention_weights(self, params: Mapping[str, Array], query: Any, key: Any, *, mask: Any = None) -> Array:
        """The attention probabilities ``(..., H, Lq, Lk)`` (the spec's ``attentionScores``; O(Lq*Lk))."""
        kk = query if key is None else key
        s = prepare_sequence(query, kk, kk, mask, heads=self.heads, dim=self.dim, check=self.check_finite)
        s.q, s.k = apply_rope_qk(self.rope, s.q, s.k)
        w = attention_weights(s.q, s.k, xp=s.xp, scale=self.effective_scale, mask=s.mask, causal=self.causal)
        if w.dtype != s.out_dtype:
            w = s.xp.astype(w, s.out_dtype)
        return s.xp.reshape(w, (-1,)) if s.flat else w

    def example_inputs(self, seq_len: int = 8, rng: np.random.Generator | None = None) -> tuple[np.ndarray, ...]:
        rng = rng or np.random.default_rng()
        shape = (seq_len, self.heads, self.dim)
        return tuple(rng.standard_normal(shape, dtype=np.float32) for _ in range(3))
