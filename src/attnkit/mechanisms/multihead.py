"""Multi-head, cross and self attention with learned projections (Vaswani et al. 2017).

    MultiHead(Q, K, V) = Concat(head_1, ..., head_H) W_o^T + b_o
    head_h = softmax(scale * (Q W_q,h^T + b_q,h)(K W_k,h^T + b_k,h)^T + bias) (V W_v,h^T + b_v,h)

Inputs are ``(..., L, model_dim)`` like ``torch.nn.MultiheadAttention(batch_first=True)``; ``key`` and
``value`` default to the query (self-attention). Weights are interchangeable with torch's state dicts
(packed ``in_proj_weight`` and the kdim/vdim form) and with Hugging Face BERT self-attention, see
:mod:`attnkit.weights`.

Masks follow attnkit's convention — bool True = may attend, float = added — which is the opposite
of ``torch.nn.MultiheadAttention``'s bool ``attn_mask`` (True = masked): pass ``~mask`` when porting.
``key_padding_mask`` ``(..., Lk)`` keeps torch's own convention (True = padding, ignore), so torch code
passes it unchanged; it is the same as ``mask=~key_padding_mask[..., None, None, :]``.

torch's ``MultiheadAttention`` options are here too: ``add_bias_kv`` (learned ``bias_k``/``bias_v``
appended to the projected keys and values as one more position), ``add_zero_attn`` (a zero key and value
appended after that), and ``forward(..., need_weights=True, average_attn_weights=...)`` returning
``(output, weights)``. ``rope=`` rotates the projected queries and keys (Su et al. 2021), as in Llama.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, overload

import array_api_compat
import numpy as np

from .._array import (
    Array,
    as_float_array,
    broadcast_shapes,
    check_finite,
    common_float_dtype,
    compute_dtype,
    is_graph,
    namespace,
    positive_int,
    probability,
    shape_str,
)
from .._array import length as _dim
from ..errors import AttentionError, ConfigError, ShapeError
from ..kernels.decode import cached_attention
from ..kernels.dense import NO_WINDOW, attention_weights, sdpa
from ..kernels.gqa import group_keys, group_queries, ungroup
from ..kernels.masks import append_key_columns, causal_allowed, causal_like, combine_masks, prepare_mask, unflatten_mask
from ..kernels.masks import key_padding_mask as _key_padding_mask
from ..kernels.projection import linear, merge_heads, split_heads
from ..kernels.rope import RotaryEmbedding, apply_rope_qk, as_rope
from ..weights import PROJECTIONS, load_state, to_attnkit
from ._learned import LearnedParams
from .base import Mechanism, _lazy
from .kv_cache import KVCache, as_cache, cache_mask
from .registry import register

__all__ = ["MultiHeadAttention", "CrossAttention", "SelfAttention"]


@register
class MultiHeadAttention(LearnedParams, Mechanism):
    """Multi-head attention with W_q, W_k, W_v, W_o (the spec's ``MHAOptions``).

    ``model_dim`` (E) must be divisible by ``heads``; ``kdim``/``vdim`` are the key/value widths
    (default E); ``bias`` adds projection biases; ``causal`` masks future keys (bottom-right aligned);
    ``dropout`` acts on the attention probabilities while training. ``keep_weights=True`` stores the
    probabilities of the last forward for :meth:`get_attention_weights` (O(Lq*Lk) memory); with
    ``keep_weights=False`` the forward runs the O(L)-memory tiled kernel instead. Initialisation is
    torch's: Xavier-uniform projections, zero biases, seeded by ``seed``.

    ``kv_heads`` (default ``heads``) must divide ``heads``: the key and value projections then have
    ``kv_heads * head_dim`` outputs and each key/value head serves ``heads / kv_heads`` query heads
    (grouped-query attention, Ainslie et al. 2023; multi-query attention with ``kv_heads=1``,
    Shazeer 2019); query head ``h`` uses key/value head ``h // (heads / kv_heads)``, the convention
    of torch's ``scaled_dot_product_attention(..., enable_gqa=True)``.

    ``rope``: a :class:`~attnkit.RotaryEmbedding` (or ``True``/``"half"``/``"interleaved"`` for one over
    the head width) applied to the projected queries and keys of every head, keys at positions
    ``0 .. Lk-1`` and queries at ``Lk-Lq .. Lk-1`` (Su et al. 2021; as Llama and Mistral do).

    ``add_bias_kv`` and ``add_zero_attn`` are torch's (``torch.nn.MultiheadAttention``): the learned
    vectors ``bias_k``, ``bias_v`` (width ``kv_heads * head_dim``) are appended to the projected keys
    and values as one more position, then (``add_zero_attn``) a zero key and a zero value; every query
    may attend to these appended positions, whatever ``mask``, ``key_padding_mask`` and ``causal`` say
    of the real keys (torch pads its masks the same way), so attention weights have ``Lk + 1`` or
    ``Lk + 2`` columns. RoPE, when set, rotates the real keys only.
    """

    name = "multi_head"
    summary = "multi-head attention with learned Q/K/V/O projections (torch-compatible weights)"
    input_layout = "model"
    shape_options = {"model_dim": ("query", -1), "kdim": ("key", -1), "vdim": ("value", -1)}
    example_options = {"model_dim": 8, "heads": 2}

    def __init__(
        self,
        model_dim: int,
        heads: int = 8,
        dropout: float = 0.0,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        causal: bool = False,
        keep_weights: bool = True,
        seed: int | None = None,
        check_finite: bool = True,
        kv_heads: int | None = None,
        rope: RotaryEmbedding | str | bool | None = None,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
    ) -> None:
        super().__init__()
        self.model_dim = positive_int(model_dim, "model_dim")
        self.heads = positive_int(heads, "heads")
        if self.model_dim % self.heads:
            raise ConfigError(f"heads: expected a divisor of model_dim = {self.model_dim}, got {self.heads}")
        self.kv_heads = self.heads if kv_heads is None else positive_int(kv_heads, "kv_heads")
        if self.heads % self.kv_heads:
            raise ConfigError(f"kv_heads: expected a divisor of heads = {self.heads} (grouped-query attention), got {self.kv_heads}")
        self.dropout = probability(dropout, "dropout")
        self.bias = bool(bias)
        self.kdim = positive_int(kdim, "kdim") if kdim is not None else None
        self.vdim = positive_int(vdim, "vdim") if vdim is not None else None
        self.causal = bool(causal)
        self.keep_weights = bool(keep_weights)
        self.seed = seed
        self.check_finite = bool(check_finite)
        self.rope = as_rope(rope, self.head_dim)
        self.add_bias_kv = bool(add_bias_kv)
        self.add_zero_attn = bool(add_zero_attn)
        self._params = self._init_params(self._param_rng())

    # ------------------------------------------------------------------ weights
    @property
    def head_dim(self) -> int:
        return self.model_dim // self.heads

    @property
    def kv_dim(self) -> int:
        """Width of the key and value projections, ``kv_heads * head_dim`` (``model_dim`` without GQA)."""
        return self.kv_heads * self.head_dim

    def _out_dims(self) -> dict[str, int]:
        e = self.model_dim
        return {"q_proj": e, "k_proj": self.kv_dim, "v_proj": self.kv_dim, "out_proj": e}

    def _in_dims(self) -> dict[str, int]:
        e = self.model_dim
        return {"q_proj": e, "k_proj": self.kdim or e, "v_proj": self.vdim or e, "out_proj": e}

    def _init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        e = self.model_dim
        dims, outs = self._in_dims(), self._out_dims()
        p: dict[str, np.ndarray] = {}
        packed = dims["k_proj"] == e and dims["v_proj"] == e and self.kv_heads == self.heads
        for name in ("q_proj", "k_proj", "v_proj"):
            fan_out = 3 * e if packed else outs[name]  # torch applies xavier to the packed (3E, E) matrix
            bound = math.sqrt(6.0 / (dims[name] + fan_out))
            p[f"{name}.weight"] = rng.uniform(-bound, bound, (outs[name], dims[name])).astype(np.float32)
        bound = 1.0 / math.sqrt(e)  # torch's Linear default (kaiming_uniform, a=sqrt(5))
        p["out_proj.weight"] = rng.uniform(-bound, bound, (e, e)).astype(np.float32)
        if self.bias:
            for name in PROJECTIONS:
                p[f"{name}.bias"] = np.zeros(outs[name], dtype=np.float32)
        if self.add_bias_kv:  # torch: xavier_normal_ on a (1, 1, E) tensor, i.e. std sqrt(1 / E)
            for name in ("bias_k", "bias_v"):
                p[name] = rng.normal(0.0, math.sqrt(1.0 / self.kv_dim), self.kv_dim).astype(np.float32)
        return p

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        outs = self._out_dims()
        shapes: dict[str, tuple[int, ...]] = {f"{n}.weight": (outs[n], d) for n, d in self._in_dims().items()}
        if self.bias:
            shapes.update({f"{n}.bias": (outs[n],) for n in PROJECTIONS})
        if self.add_bias_kv:
            shapes.update({"bias_k": (self.kv_dim,), "bias_v": (self.kv_dim,)})
        return shapes

    def load_weights(self, weights: Any, prefix: str | None = None) -> None:
        """Load projections from safetensors bytes, a path, or a dict of arrays.

        Accepts attnkit's layout, a ``torch.nn.MultiheadAttention`` state dict (packed or kdim/vdim
        form, ``bias_k``/``bias_v`` of ``add_bias_kv=True``), or the attention of a Hugging Face BERT,
        GPT-2 or Llama/Mistral layer (``prefix`` picks the layer; see :mod:`attnkit.weights`).
        """
        self._check_alive()
        params = to_attnkit(load_state(weights), prefix=prefix)
        if "bias_k" in params and not self.add_bias_kv:
            raise ConfigError("weights: the state dict has bias_k/bias_v (torch's add_bias_kv=True); construct with add_bias_kv=True")
        self._set_params(params)

    @classmethod
    def from_torch(cls, module: Any, **options: Any) -> MultiHeadAttention:
        """A :class:`MultiHeadAttention` with the options and weights of a ``torch.nn.MultiheadAttention``
        (``embed_dim``, ``num_heads``, ``dropout``, biases, ``kdim``/``vdim``, ``add_bias_kv``,
        ``add_zero_attn``); ``options`` add or override constructor options (e.g. ``causal=True``)."""
        for attr in ("embed_dim", "num_heads", "in_proj_bias", "kdim", "vdim", "bias_k"):
            if not hasattr(module, attr):
                raise ConfigError(f"module: expected a torch.nn.MultiheadAttention, got {type(module).__name__}")
        e = int(module.embed_dim)
        kw: dict[str, Any] = dict(
            model_dim=e,
            heads=int(module.num_heads),
            dropout=float(module.dropout),
            bias=module.in_proj_bias is not None,
            kdim=None if int(module.kdim) == e else int(module.kdim),
            vdim=None if int(module.vdim) == e else int(module.vdim),
            add_bias_kv=module.bias_k is not None,
            add_zero_attn=bool(module.add_zero_attn),
        )
        kw.update(options)
        mech = MultiHeadAttention(**kw)
        mech.load_weights(dict(module.state_dict()))
        return mech

    # ------------------------------------------------------------------ forward
    def _input(self, x: Any, name: str, width: int, xp: Any) -> Array:
        x = as_float_array(x, name, xp)
        if x.ndim == 1:
            if x.shape[0] == 0 or x.shape[0] % width:
                raise ShapeError(f"{name}: a flat input needs a length that is a positive multiple of {width}, got {x.shape[0]}")
            x = xp.reshape(x, (-1, width))
        if x.ndim < 2 or x.shape[-1] != width:
            raise ShapeError(f"{name}: expected shape (..., L, {width}), got {shape_str(x.shape)}")
        if self.check_finite:
            check_finite(x, name, xp)
        return x

    def _project(
        self,
        params: Mapping[str, Array],
        query: Any,
        key: Any,
        value: Any,
        mask: Any,
        with_value: bool = True,
        key_padding_mask: Any = None,
        positional: bool = True,
    ) -> tuple:
        """Validated inputs projected and split into heads: ``(qh, kh, vh, mask, causal, w, out_dtype, flat, xp)``
        (``vh`` is ``None`` when ``with_value`` is false: attention weights need no values). ``mask`` is
        ``mask`` and ``key_padding_mask`` in one; RoPE and the appended ``bias_k``/zero positions are applied,
        and ``causal`` is what the kernel is left to do (folded into the mask when positions were appended).
        ``positional=False`` leaves RoPE and the appended positions out (decoding with a cache places them itself)."""
        if key is None and value is None:
            key = value = query
        elif value is None:
            value = key
        elif key is None:
            raise ShapeError("key: pass key when value is given")
        xp = namespace(query, key, value)
        dims = self._in_dims()
        query = as_float_array(query, "query", xp)  # lists become arrays here (np.ndim would choke on a ragged one)
        flat = query.ndim == 1
        q = self._input(query, "query", self.model_dim, xp)
        k = self._input(key, "key", dims["k_proj"], xp)
        v = self._input(value, "value", dims["v_proj"], xp) if with_value else k
        if k.shape[-2] != v.shape[-2]:
            raise ShapeError(f"value: expected Lk = {k.shape[-2]} (as key) along axis -2, got {v.shape[-2]}")
        if k.shape[-2] == 0:
            raise ShapeError("key: expected at least one key (Lk >= 1), got an empty key set")
        try:
            batch = broadcast_shapes(tuple(q.shape[:-2]), tuple(k.shape[:-2]), tuple(v.shape[:-2]))
        except ValueError:
            raise ShapeError(
                f"query, key, value: batch dimensions {shape_str(q.shape[:-2])}, {shape_str(k.shape[:-2])}, "
                f"{shape_str(v.shape[:-2])} do not broadcast"
            ) from None
        out_dtype = common_float_dtype(xp, q, k, v)
        cdt = compute_dtype(xp, out_dtype)
        q, k, v = (xp.astype(x, cdt) if x.dtype != cdt else x for x in (q, k, v))
        w = self._params_like(params, q)
        if not with_value:
            v = None
        lq, lk = _dim(q.shape[-2]), _dim(k.shape[-2])
        if flat:
            mask = unflatten_mask(mask, lq, lk)
        dev = array_api_compat.device(q)
        target = (*batch, self.heads, lq, lk)
        pm = prepare_mask(mask, xp, target, cdt, device=dev)
        pm = combine_masks(pm, _key_padding_mask(key_padding_mask, xp, target, cdt, device=dev), xp, cdt)
        qh = split_heads(linear(q, w["q_proj.weight"], w.get("q_proj.bias"), xp), self.heads, xp)
        kh = split_heads(linear(k, w["k_proj.weight"], w.get("k_proj.bias"), xp), self.kv_heads, xp)
        vh = None if v is None else split_heads(linear(v, w["v_proj.weight"], w.get("v_proj.bias"), xp), self.kv_heads, xp)
        if not positional:
            return qh, kh, vh, pm, self.causal, w, out_dtype, flat, xp
        qh, kh = apply_rope_qk(self.rope, qh, kh)
        causal = self.causal
        extra = int(self.add_bias_kv) + int(self.add_zero_attn)
        if extra:
            # the appended positions are visible to every query: causal becomes a mask over the real keys
            if causal:
                if lq is None or lk is None:  # symbolic lengths (a graph being exported): counted from a score-shaped array
                    allowed = causal_like(qh[..., :1, :, :1] @ xp.matrix_transpose(kh[..., :1, :, :1]), xp)
                else:
                    allowed = causal_allowed(xp, 0, lq, 0, lk, lk - lq, dev)
                pm = combine_masks(pm, allowed, xp, cdt)
                causal = False
            kh, vh = self._append_positions(w, kh, vh, xp)
            pm = append_key_columns(pm, xp, lk, extra)
        return qh, kh, vh, pm, causal, w, out_dtype, flat, xp

    def _append_positions(self, w: Mapping[str, Array], kh: Array, vh: Array | None, xp: Any) -> tuple[Array, Array | None]:
        """torch's ``add_bias_kv`` then ``add_zero_attn``: one more key/value position each, heads-first."""
        hk, d = self.kv_heads, self.head_dim
        zero_k = xp.zeros_like(kh[..., :1, :])  # (..., Hkv, 1, d): broadcasts by arithmetic, so lengths may be symbolic
        zero_v = None if vh is None else xp.zeros_like(vh[..., :1, :])
        ks, vs = [kh], [vh]
        if self.add_bias_kv:
            ks.append(zero_k + xp.reshape(w["bias_k"], (hk, 1, d)))
            vs.append(None if vh is None else zero_v + xp.reshape(w["bias_v"], (hk, 1, d)))
        if self.add_zero_attn:
            ks.append(zero_k)
            vs.append(zero_v)
        return xp.concat(ks, axis=-2), None if vh is None else xp.concat(vs, axis=-2)

    # ------------------------------------------------------------------ public calls
    @overload
    def forward(
        self,
        query: Any,
        key: Any = None,
        value: Any = None,
        *,
        mask: Any = None,
        key_padding_mask: Any = None,
        need_weights: Literal[False] = False,
        average_attn_weights: bool = True,
        cache: KVCache | None = None,
    ) -> Array: ...

    @overload
    def forward(
        self,
        query: Any,
        key: Any = None,
        value: Any = None,
        *,
        mask: Any = None,
        key_padding_mask: Any = None,
        need_weights: Literal[True],
        average_attn_weights: bool = True,
        cache: KVCache | None = None,
    ) -> tuple[Array, Array]: ...

    def forward(
        self,
        query: Any,
        key: Any = None,
        value: Any = None,
        *,
        mask: Any = None,
        key_padding_mask: Any = None,
        need_weights: bool = False,
        average_attn_weights: bool = True,
        cache: KVCache | None = None,
    ) -> Any:
        """Output ``(..., Lq, model_dim)``; ``key``/``value`` default to ``query``; flat in, flat out.

        ``mask``: attnkit's (bool True = may attend, float added), broadcasting to ``(..., H, Lq, Lk)``.
        ``key_padding_mask``: ``(..., Lk)`` in torch's convention (bool True = padding, ignored; float
        added). ``need_weights=True`` returns ``(output, weights)`` as torch does: the attention
        probabilities used (after dropout, when training), averaged over the heads, ``(..., Lq, Lk)``,
        or per head ``(..., H, Lq, Lk)`` with ``average_attn_weights=False``.

        ``cache``: a :class:`~attnkit.KVCache` of ``kv_heads`` heads of width ``head_dim``, for
        incremental decoding as self-attention (``forward(x, cache=cache)``, no ``key``/``value``):
        the projected keys and values of the new tokens ``x`` are appended and their queries attend
        causally over the cache (bottom-right aligned, whatever ``causal`` says; RoPE positions, where
        the layer has ``rope``, from the cache), as :meth:`attnkit.FlashAttention.forward` does.
        """
        extras: dict[str, Any] = {}
        if cache is not None:
            extras["cache"] = cache
        if need_weights:
            extras.update(need_weights=True, average_attn_weights=bool(average_attn_weights))
        if key_padding_mask is not None:
            extras["key_padding_mask"] = key_padding_mask
        if (need_weights or key_padding_mask is not None) and _lazy(query, key, value):
            if need_weights:
                raise ConfigError("need_weights: not available on Dask arrays (the weights are O(Lq*Lk)); compute the inputs first")
            mask = _fold_key_padding(mask, extras.pop("key_padding_mask"))
        return self._run_forward(query, key, value, mask=mask, **extras)

    def attention_weights(self, query: Any, key: Any = None, *, mask: Any = None, key_padding_mask: Any = None) -> Array:
        """The attention probabilities ``(..., H, Lq, Lk)`` of the projected ``query`` over ``key``
        (``key_padding_mask`` as in :meth:`forward`)."""
        extras = {} if key_padding_mask is None else {"key_padding_mask": key_padding_mask}
        return self._run_weights(query, key, mask=mask, **extras)

    def _forward(
        self,
        params: Mapping[str, Array],
        query: Any,
        key: Any,
        value: Any,
        *,
        mask: Any = None,
        key_padding_mask: Any = None,
        need_weights: bool = False,
        average_attn_weights: bool = True,
        cache: Any = None,
    ) -> Any:
        """Output ``(..., Lq, model_dim)`` (and the weights, with ``need_weights``); see :meth:`forward`."""
        if cache is not None:
            if need_weights or key_padding_mask is not None:
                what = "need_weights" if need_weights else "key_padding_mask"
                raise ConfigError(f"{what}: not available with cache= (decoding attends over the cache; pass a mask over its keys instead)")
            return self._forward_cached(params, query, key, value, mask, as_cache(cache))
        qh, kh, vh, pm, causal, w, out_dtype, flat, xp = self._project(params, query, key, value, mask, key_padding_mask=key_padding_mask)
        scale = 1.0 / math.sqrt(self.head_dim)
        p = self.dropout if self.training else 0.0
        probs = None
        if self.keep_weights or need_weights:
            probs = attention_weights(qh, kh, xp=xp, scale=scale, mask=pm, causal=causal)
            if self.keep_weights:
                self._cache["weights"] = probs
            if p > 0.0:
                keep = (self._rng().random(tuple(probs.shape)) >= p) / (1.0 - p)
                probs = probs * xp.asarray(keep, dtype=probs.dtype, device=array_api_compat.device(probs))
            if self.kv_heads == self.heads:
                heads_out = probs @ vh
            else:  # each key/value head serves a group of query heads (broadcast, see kernels.gqa)
                heads_out = ungroup(group_queries(probs, self.kv_heads, xp) @ group_keys(vh, xp), xp)
        else:
            self._cache.pop("weights", None)
            heads_out = sdpa(qh, kh, vh, xp=xp, scale=scale, mask=pm, causal=causal, dropout_p=p, rng=self._rng())
        out = linear(merge_heads(heads_out, xp), w["out_proj.weight"], w.get("out_proj.bias"), xp)
        if out.dtype != out_dtype:
            out = xp.astype(out, out_dtype)
        out = xp.reshape(out, (-1,)) if flat else out
        if not need_weights or probs is None:
            return out
        weights = xp.mean(probs, axis=-3) if average_attn_weights else probs
        return out, xp.astype(weights, out_dtype) if weights.dtype != out_dtype else weights

    def _forward_cached(self, params: Mapping[str, Array], query: Any, key: Any, value: Any, mask: Any, cache: KVCache) -> Array:
        """``forward(x, cache=cache)``: self-attention of the new tokens over the cache (see :meth:`forward`)."""
        if key is not None or value is not None:
            raise ConfigError("cache: decoding with a KVCache is self-attention; call forward(x, cache=cache) without key/value")
        if self._in_dims()["k_proj"] != self.model_dim or self._in_dims()["v_proj"] != self.model_dim:
            raise ConfigError("cache: decoding with a KVCache is self-attention; this layer's keys have another width (kdim/vdim)")
        if self.add_bias_kv or self.add_zero_attn:
            raise ConfigError("cache: decoding with a KVCache does not support add_bias_kv/add_zero_attn (torch's appended key positions)")
        qh, kh, vh, _, _, w, out_dtype, flat, xp = self._project(params, query, None, None, None, positional=False)
        if is_graph(xp):
            raise ConfigError("cache: a KVCache is Python state and cannot be exported to ONNX; export the forward without cache=")
        lq, p0 = int(qh.shape[-2]), cache.length
        qh, kh = apply_rope_qk(getattr(self, "rope", None), qh, kh, start=p0)  # positions from the cache
        batch = broadcast_shapes(tuple(qh.shape[:-3]), tuple(kh.shape[:-3]))
        if flat:
            mask = unflatten_mask(mask, lq, p0 + lq)
        pm = cache_mask(mask, cache, xp, batch, self.heads, lq, p0 + lq, qh.dtype, array_api_compat.device(qh))
        k_all, v_all, left = cache.extend(kh, vh, ordered=mask is not None)
        lk = int(k_all.shape[-2])
        window = (left, -1) if left is not None and left < lk - 1 else NO_WINDOW
        p = self.dropout if self.training else 0.0
        self._cache.pop("weights", None)
        scale = 1.0 / math.sqrt(self.head_dim)
        heads_out = cached_attention(qh, k_all, v_all, xp=xp, scale=scale, mask=pm, window=window, dropout_p=p, rng=self._rng())
        out = linear(merge_heads(heads_out, xp), w["out_proj.weight"], w.get("out_proj.bias"), xp)
        if out.dtype != out_dtype:
            out = xp.astype(out, out_dtype)
        return xp.reshape(out, (-1,)) if flat else out

    def _attention_weights(self, params: Mapping[str, Array], query: Any, key: Any, *, mask: Any = None, key_padding_mask: Any = None) -> Array:
        """The attention probabilities ``(..., H, Lq, Lk)`` of the projected ``query`` over ``key``."""
        qh, kh, _, pm, causal, _, out_dtype, flat, xp = self._project(
            params, query, key, None, mask, with_value=False, key_padding_mask=key_padding_mask
        )
        probs = attention_weights(qh, kh, xp=xp, scale=1.0 / math.sqrt(self.head_dim), mask=pm, causal=causal)
        if probs.dtype != out_dtype:
            probs = xp.astype(probs, out_dtype)
        return xp.reshape(probs, (-1,)) if flat else probs

    def get_attention_weights(self) -> Array:
        """Attention probabilities of the last forward, shape ``(..., H, Lq, Lk)`` (before dropout)."""
        self._check_alive()
        if "weights" not in self._cache:
            why = "construct with keep_weights=True" if not self.keep_weights else "call forward first"
            raise AttentionError(f"get_attention_weights: no weights stored; {why}")
        return self._cache["weights"]

    def example_inputs(self, seq_len: int = 8, rng: np.random.Generator | None = None) -> tuple[np.ndarray, ...]:
        rng = rng or np.random.default_rng()
        dims = self._in_dims()
        x = rng.standard_normal((seq_len, self.model_dim), dtype=np.float32)
        if dims["k_proj"] == self.model_dim and dims["v_proj"] == self.model_dim:
            return (x,)
        k = rng.standard_normal((seq_len, dims["k_proj"]), dtype=np.float32)
        v = rng.standard_normal((seq_len, dims["v_proj"]), dtype=np.float32)
        return (x, k, v)


@register
class CrossAttention(MultiHeadAttention):
    """Attention of a query sequence of width ``query_dim`` over keys/values of width ``key_dim``.

    ``forward(query, key, value=None, mask=None)``: ``value`` defaults to ``key``.
    """

    name = "cross"
    summary = "multi-head attention of one sequence over another of a different width"
    key_required = True
    shape_options = {"query_dim": ("query", -1), "key_dim": ("key", -1)}
    example_options = {"query_dim": 8, "key_dim": 6, "heads": 2}

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        heads: int = 8,
        dropout: float = 0.0,
        bias: bool = True,
        causal: bool = False,
        keep_weights: bool = True,
        seed: int | None = None,
        check_finite: bool = True,
        kv_heads: int | None = None,
        rope: RotaryEmbedding | str | bool | None = None,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
    ) -> None:
        self.query_dim = positive_int(query_dim, "query_dim")
        self.key_dim = positive_int(key_dim, "key_dim")
        super().__init__(
            self.query_dim,
            heads=heads,
            dropout=dropout,
            bias=bias,
            kdim=self.key_dim,
            vdim=self.key_dim,
            causal=causal,
            keep_weights=keep_weights,
            seed=seed,
            check_finite=check_finite,
            kv_heads=kv_heads,
            rope=rope,
            add_bias_kv=add_bias_kv,
            add_zero_attn=add_zero_attn,
        )

    def _in_dims(self) -> dict[str, int]:
        e = self.model_dim
        return {"q_proj": e, "k_proj": self.key_dim, "v_proj": self.key_dim, "out_proj": e}

    def _forward(self, params: Mapping[str, Array], query: Any, key: Any, value: Any, *, mask: Any = None, **extras: Any) -> Any:
        if extras.get("cache") is not None:
            raise ConfigError("cache: a KVCache serves self-attention; CrossAttention attends fixed keys (project them once instead)")
        if key is None:
            raise ShapeError(f"key: CrossAttention needs keys of width key_dim = {self.key_dim}")
        return super()._forward(params, query, key, key if value is None else value, mask=mask, **extras)

    def _attention_weights(self, params: Mapping[str, Array], query: Any, key: Any, *, mask: Any = None, **extras: Any) -> Array:
        if key is None:
            raise ShapeError(f"key: CrossAttention needs keys of width key_dim = {self.key_dim}")
        return super()._attention_weights(params, query, key, mask=mask, **extras)

    def example_inputs(self, seq_len: int = 8, rng: np.random.Generator | None = None) -> tuple[np.ndarray, ...]:
        rng = rng or np.random.default_rng()
        q = rng.standard_normal((seq_len, self.query_dim), dtype=np.float32)
        kv = rng.standard_normal((seq_len, self.key_dim), dtype=np.float32)
        return (q, kv, kv)


@register
class SelfAttention(MultiHeadAttention):
    """Multi-head attention of ``x`` over itself: ``forward(x, mask=None)``.

    Takes the options of :class:`MultiHeadAttention` except kdim/vdim.
    """

    name = "self"
    summary = "multi-head self-attention of a sequence over itself"
    same_length = True
    shape_options = {"model_dim": ("query", -1)}
    example_options = {"model_dim": 8, "heads": 2}

    def __init__(
        self,
        model_dim: int,
        heads: int = 8,
        dropout: float = 0.0,
        bias: bool = True,
        causal: bool = False,
        keep_weights: bool = True,
        seed: int | None = None,
        check_finite: bool = True,
        kv_heads: int | None = None,
        rope: RotaryEmbedding | str | bool | None = None,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
    ) -> None:
        super().__init__(
            model_dim,
            heads=heads,
            dropout=dropout,
            bias=bias,
            causal=causal,
            keep_weights=keep_weights,
            seed=seed,
            check_finite=check_finite,
            kv_heads=kv_heads,
            rope=rope,
            add_bias_kv=add_bias_kv,
            add_zero_attn=add_zero_attn,
        )

    def _forward(self, params: Mapping[str, Array], query: Any, key: Any, value: Any, *, mask: Any = None, **extras: Any) -> Any:
        if key is not None or value is not None:
            raise ConfigError("key: SelfAttention attends the query over itself; use MultiHeadAttention or CrossAttention for other keys")
        return super()._forward(params, query, None, None, mask=mask, **extras)

    def _attention_weights(self, params: Mapping[str, Array], query: Any, key: Any, *, mask: Any = None, **extras: Any) -> Array:
        if key is not None:
            raise ConfigError("key: SelfAttention attends the query over itself; use MultiHeadAttention or CrossAttention for other keys")
        return super()._attention_weights(params, query, None, mask=mask, **extras)


def _fold_key_padding(mask: Any, key_padding_mask: Any) -> Any:
    """``mask`` and torch's ``key_padding_mask`` ``(..., Lk)`` (True = padding) as one attnkit mask, for
    Dask inputs (the lazy adapter chunks ``mask`` along the batch, as it does the inputs)."""
    import dask.array as da

    kpm = da.asarray(key_padding_mask)
    allowed = ~kpm[..., None, None, :] if kpm.dtype == bool else kpm[..., None, None, :]
    if mask is None:
        return allowed
    m = da.asarray(mask)
    if m.dtype == bool and allowed.dtype == bool:
        return m & allowed
    add = [da.where(x, 0.0, -np.inf).astype(np.result_type(m.dtype, allowed.dtype, np.float32)) if x.dtype == bool else x for x in (m, allowed)]
    return add[0] + add[1]
