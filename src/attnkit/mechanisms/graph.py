"""Graph attention: GAT / GATv2 with edge features, and scaled dot-product graph attention with RoPE.

:class:`EdgeFeaturedAttention` is graph attention (Veličković et al. 2018, "Graph Attention Networks",
``version="v1"``; Brody, Alon & Yahav 2022, "How Attentive are Graph Attention Networks?",
``version="v2"``) with edge features entering the attention logits as in PyTorch Geometric's
``GATConv``/``GATv2Conv(edge_dim=...)``. For target node ``i``, neighbour ``j`` (an edge ``j -> i``) with
edge features ``e_ij`` and head ``h``:

* v1: ``s_ij = LeakyReLU(a_dst . W x_i + a_src . W x_j + a_edge . W_e e_ij)``, message ``W x_j``;
* v2: ``s_ij = a . LeakyReLU(W_r x_i + W_l x_j + W_e e_ij)``, message ``W_l x_j``;

``alpha_ij = softmax_j(s_ij)`` over the incoming edges of ``i`` (a segment softmax over the edge list),
``out_i = sum_j alpha_ij m_j`` per head, heads concatenated (``concat=True``) or averaged, plus a bias.

:class:`GraphRoPEAttention` is parameter-free scaled dot-product attention over graph neighbours in which
queries and keys are rotated by their nodes' positions with a rotary embedding (Su et al. 2021), so a
score depends on the features and the *difference* of the positions (hop distance, order in a
traversal, a coordinate along a path, ...): ``s_ij = scale <R(p_i) q_i, R(p_j) k_j>``.

Both take two forms: the neighbour form ``forward(query, neighbours, third, mask)`` (one or many
target nodes, each with its own or a shared set of ``k`` neighbours, like ``ScaledDotProduct``), and the
whole-graph form ``forward_graph(..., edge_index)`` with ``edge_index (2, E)`` holding ``(src, dst)``
rows: messages flow from ``src`` to ``dst``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import array_api_compat
import numpy as np

from .._array import (
    Array,
    Namespace,
    as_float_array,
    check_finite,
    common_float_dtype,
    compute_dtype,
    namespace,
    non_negative_float,
    non_negative_int,
    nonzero_float,
    one_of,
    positive_float,
    positive_int,
    shape_str,
    to_numpy,
)
from ..errors import ConfigError, DTypeError, ShapeError
from ..kernels.masks import prepare_mask
from ..kernels.rope import RotaryEmbedding
from ..kernels.segment import segment_softmax, segment_sum
from ..kernels.softmax import safe_softmax
from ._learned import LearnedParams, glorot
from .base import Mechanism
from .registry import register

__all__ = ["EdgeFeaturedAttention", "GraphRoPEAttention", "edge_list"]


def edge_list(edge_index: Any, num_nodes: int, self_loops: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate ``edge_index (2, E)`` and return ``(src, dst, original)`` int64 NumPy arrays.

    With ``self_loops`` every existing ``i -> i`` edge is removed and one self loop per node appended;
    ``original`` indexes the kept input edges (the appended loops come after them).
    """
    try:
        raw = to_numpy(edge_index) if array_api_compat.is_array_api_obj(edge_index) else np.asarray(edge_index)
    except (TypeError, ValueError) as exc:
        raise ShapeError(f"edge_index: expected an integer array of shape (2, E) ({exc})") from exc
    if raw.size == 0:
        raw = raw.reshape(2, 0) if raw.ndim <= 1 or raw.shape[0] == 2 else raw
    if raw.ndim != 2 or raw.shape[0] != 2:
        raise ShapeError(f"edge_index: expected shape (2, E) with rows (src, dst), got {shape_str(raw.shape)}")
    if raw.size and raw.dtype.kind not in "iu":
        raise DTypeError(f"edge_index: expected integer node indices, got dtype {raw.dtype}")
    ei = raw.astype(np.int64)
    if ei.size and (ei.min() < 0 or ei.max() >= num_nodes):
        bad = int(ei.min()) if ei.min() < 0 else int(ei.max())
        raise ShapeError(f"edge_index: node indices must lie in [0, {num_nodes}) (the number of nodes), got {bad}")
    src, dst = ei[0], ei[1]
    original = np.arange(src.shape[0])
    if self_loops:
        keep = src != dst
        src, dst, original = src[keep], dst[keep], original[keep]
        loops = np.arange(num_nodes, dtype=np.int64)
        src = np.concatenate([src, loops])
        dst = np.concatenate([dst, loops])
    return src, dst, original


def _leaky_relu(x: Array, slope: float, xp: Namespace) -> Array:
    return xp.where(x >= 0, x, x * slope)


@register
class EdgeFeaturedAttention(LearnedParams, Mechanism):
    """Graph attention (GAT v1 / GATv2) with edge features; learned, seeded weights.

    Options: ``dim`` node feature width (64); ``edge_dim`` edge feature width (0, as PyG's ``edge_dim=None``: no edge features);
    ``heads`` (1); ``out_dim`` output width (default ``dim``; with ``concat=True`` each head has
    ``out_dim // heads`` channels, which must divide); ``version`` ``"v1"`` or ``"v2"``;
    ``negative_slope`` of the LeakyReLU (0.2); ``self_loops`` (True): every node also attends to itself,
    with the mean of its incoming edges' features as the loop's edge features (zeros if it has none),
    and existing self loops in an edge list are replaced; ``concat`` heads (True) or average them;
    ``bias`` (True); ``seed`` for the Glorot initialisation; ``check_finite``.

    Parameters (``torch.nn.Linear`` layout, ``C`` channels per head): v1 ``lin.weight (H*C, dim)``,
    ``att_src``, ``att_dst``, ``att_edge (H, C)``; v2 ``lin_l.weight``, ``lin_r.weight (H*C, dim)``,
    ``att (H, C)``; both ``lin_edge.weight (H*C, edge_dim)`` (when ``edge_dim > 0``) and ``bias``.
    """

    name = "edge_featured"
    summary = "graph attention (GAT v1/v2) with edge features, edge-list or neighbour form"
    input_layout = "graph"
    key_required = True
    shape_options = {"dim": ("query", -1), "edge_dim": ("edge_features", -1)}
    example_options = {"dim": 4, "edge_dim": 2, "heads": 2}

    def __init__(
        self,
        dim: int = 64,
        edge_dim: int = 0,
        heads: int = 1,
        out_dim: int | None = None,
        version: str = "v1",
        negative_slope: float = 0.2,
        self_loops: bool = True,
        concat: bool = True,
        bias: bool = True,
        seed: int | None = 0,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        self.dim = positive_int(dim, "dim")
        self.edge_dim = non_negative_int(edge_dim, "edge_dim")
        self.heads = positive_int(heads, "heads")
        self.out_dim = self.dim if out_dim is None else positive_int(out_dim, "out_dim")
        self.concat = bool(concat)
        if self.concat and self.out_dim % self.heads:
            raise ConfigError(f"out_dim: with concat=True it must be a multiple of heads = {self.heads}, got {self.out_dim}")
        self.version = one_of(version, "version", ("v1", "v2"))
        self.negative_slope = non_negative_float(negative_slope, "negative_slope")
        self.self_loops = bool(self_loops)
        self.bias = bool(bias)
        self.seed = seed
        self.check_finite = bool(check_finite)
        self._params = self._init_params(np.random.default_rng(seed))

    @property
    def channels(self) -> int:
        """Channels per head ``C``."""
        return self.out_dim // self.heads if self.concat else self.out_dim

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        h, c = self.heads, self.channels
        shapes: dict[str, tuple[int, ...]] = {}
        if self.version == "v1":
            shapes.update({"lin.weight": (h * c, self.dim), "att_src": (h, c), "att_dst": (h, c)})
            if self.edge_dim:
                shapes["att_edge"] = (h, c)
        else:
            shapes.update({"lin_l.weight": (h * c, self.dim), "lin_r.weight": (h * c, self.dim), "att": (h, c)})
        if self.edge_dim:
            shapes["lin_edge.weight"] = (h * c, self.edge_dim)
        if self.bias:
            shapes["bias"] = (self.out_dim,)
        return shapes

    def _init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        p: dict[str, np.ndarray] = {}
        for key, shape in self.param_shapes().items():
            if key == "bias":
                p[key] = np.zeros(shape, dtype=np.float32)
            elif key.endswith(".weight"):
                p[key] = glorot(rng, shape, shape[1], shape[0])
            else:  # attention vectors (H, C), Glorot over (1, C) like PyG
                p[key] = glorot(rng, shape, 1, shape[1])
        return p

    # ------------------------------------------------------------------ helpers
    def _lin(self, x: Array, w: Array, xp: Namespace) -> Array:
        """``x W^T`` reshaped to ``(..., H, C)``."""
        y = x @ xp.matrix_transpose(w)
        return xp.reshape(y, (*y.shape[:-1], self.heads, self.channels))

    def _finish(self, out: Array, p: dict[str, Array], xp: Namespace) -> Array:
        """``(..., H, C)`` -> concatenated or averaged heads, plus bias."""
        if self.concat:
            out = xp.reshape(out, (*out.shape[:-2], self.heads * self.channels))
        else:
            out = xp.mean(out, axis=-2)
        if self.bias:
            out = out + p["bias"]
        return out

    def _input(self, x: Any, name: str, width: int, xp: Namespace, min_ndim: int, layout: str) -> Array:
        x = as_float_array(x, name, xp)
        if x.ndim < min_ndim or x.shape[-1] != width:
            raise ShapeError(f"{name}: expected shape {layout} with last axis {width}, got {shape_str(x.shape)}")
        if self.check_finite:
            check_finite(x, name, xp)
        return x

    def _logits_and_messages(
        self, xi: Array, xj: Array, ef: Array | None, p: dict[str, Array], xp: Namespace
    ) -> tuple[Array, Array]:
        """Per-edge logits ``(..., H)`` and messages ``(..., H, C)`` from target ``xi`` / source ``xj`` rows."""
        ew = self._lin(ef, p["lin_edge.weight"], xp) if ef is not None else None
        if self.version == "v1":
            wj = self._lin(xj, p["lin.weight"], xp)
            wi = self._lin(xi, p["lin.weight"], xp)
            s = xp.sum(wj * p["att_src"], axis=-1) + xp.sum(wi * p["att_dst"], axis=-1)
            if ew is not None:
                s = s + xp.sum(ew * p["att_edge"], axis=-1)
            return _leaky_relu(s, self.negative_slope, xp), wj
        wj = self._lin(xj, p["lin_l.weight"], xp)
        z = wj + self._lin(xi, p["lin_r.weight"], xp)
        if ew is not None:
            z = z + ew
        return xp.sum(_leaky_relu(z, self.negative_slope, xp) * p["att"], axis=-1), wj

    # ------------------------------------------------------------------ neighbour form
    def forward(self, query: Any, key: Any = None, value: Any = None, *, mask: Any = None, edge_features: Any = None) -> Array:
        """Neighbour form: ``query (..., dim)`` target node(s), ``key (..., k, dim)`` their neighbours
        (which also carry the messages, so ``value`` must be left out), ``edge_features (..., k,
        edge_dim)`` of the edges neighbour -> target, ``mask (..., k)`` (True = a real neighbour). Batch
        dimensions broadcast. Returns ``(..., out_dim)``; a target with no neighbour left (and no self
        loop) gets zeros (plus the bias).
        """
        return super().forward(query, key, value, mask=mask, edge_features=edge_features)

    def attention_weights(self, query: Any, key: Any = None, *, mask: Any = None, edge_features: Any = None) -> Array:
        """Neighbour form: the attention ``(..., H, k')`` of each target over its neighbours, with its self
        loop first when ``self_loops`` (``k' = k + 1``); each row sums to 1."""
        return super().attention_weights(query, key, mask=mask, edge_features=edge_features)

    def _forward(self, params: Mapping[str, Array], query: Any, key: Any, value: Any, *, mask: Any = None, edge_features: Any = None) -> Array:
        alpha, msg, p, xp, out_dtype = self._neighbour_attention(params, query, key, value, mask, edge_features)
        out = self._finish(xp.sum(alpha[..., None] * msg, axis=-3), p, xp)
        return xp.astype(out, out_dtype) if out.dtype != out_dtype else out

    def _attention_weights(self, params: Mapping[str, Array], query: Any, key: Any, *, mask: Any = None, edge_features: Any = None) -> Array:
        alpha, _, _, xp, out_dtype = self._neighbour_attention(params, query, key, None, mask, edge_features)
        alpha = xp.moveaxis(alpha, -1, -2)  # (..., H, k'): each row sums to 1, as every mechanism's weights
        return xp.astype(alpha, out_dtype) if alpha.dtype != out_dtype else alpha

    def _neighbour_attention(self, params: Mapping[str, Array], query: Any, key: Any, value: Any, mask: Any, edge_features: Any) -> tuple:
        """``(alpha (..., k', H), messages (..., k', H, C), params, xp, out_dtype)`` of the neighbour form."""
        neighbours = key
        if neighbours is None:
            raise ShapeError(f"key: expected the neighbours, an array of shape (..., k, {self.dim}), got None")
        if value is not None:
            raise ShapeError("value: graph attention sends messages from the neighbours (key); pass no value")
        xp = namespace(query, neighbours, edge_features)
        q = self._input(query, "query", self.dim, xp, 1, "(..., dim)")
        nb = self._input(neighbours, "key", self.dim, xp, 2, "(..., k, dim)")
        k = int(nb.shape[-2])
        ef = None
        if self.edge_dim:
            if edge_features is None:
                raise ShapeError(f"edge_features: expected an array of shape (..., k, {self.edge_dim}) (edge_dim = {self.edge_dim}), got None")
            ef = self._input(edge_features, "edge_features", self.edge_dim, xp, 2, "(..., k, edge_dim)")
            if ef.shape[-2] != k:
                raise ShapeError(f"edge_features: expected k = {k} rows along axis -2 (as neighbours), got {ef.shape[-2]}")
        elif edge_features is not None:
            raise ShapeError("edge_features: this layer has edge_dim = 0; pass None or build it with edge_dim > 0")
        arrays = [q, nb] + ([ef] if ef is not None else [])
        try:
            batch = np.broadcast_shapes(tuple(q.shape[:-1]), tuple(nb.shape[:-2]), *([tuple(ef.shape[:-2])] if ef is not None else []))
        except ValueError:
            raise ShapeError(
                f"query, neighbours, edge_features: batch dimensions {shape_str(q.shape[:-1])}, {shape_str(nb.shape[:-2])}"
                f"{', ' + shape_str(ef.shape[:-2]) if ef is not None else ''} do not broadcast"
            ) from None
        out_dtype = common_float_dtype(xp, *arrays)
        cdt = compute_dtype(xp, out_dtype)
        q, nb = (xp.astype(x, cdt) if x.dtype != cdt else x for x in (q, nb))
        if ef is not None and ef.dtype != cdt:
            ef = xp.astype(ef, cdt)
        dev = array_api_compat.device(q)
        m = prepare_mask(mask, xp, (*batch, k), cdt, device=dev, layout="(..., k)") if mask is not None else None
        if m is not None and not xp.isdtype(m.dtype, "bool"):
            raise DTypeError(f"mask: expected a bool mask (True = a real neighbour), got {m.dtype}")
        p = self._params_like(params, q)
        nb = xp.broadcast_to(nb, (*batch, k, self.dim))
        qb = xp.broadcast_to(q, (*batch, self.dim))
        if ef is not None:
            ef = xp.broadcast_to(ef, (*batch, k, self.edge_dim))
        if m is not None:
            m = xp.broadcast_to(m, (*batch, k))
        if self.self_loops:
            nb = xp.concat([xp.expand_dims(qb, axis=-2), nb], axis=-2)
            if ef is not None:
                if m is None:
                    loop_e = xp.mean(ef, axis=-2, keepdims=True)
                else:
                    w = xp.astype(m, cdt)[..., None]
                    cnt = xp.sum(w, axis=-2, keepdims=True)
                    loop_e = xp.sum(ef * w, axis=-2, keepdims=True) / xp.where(cnt == 0, xp.ones_like(cnt), cnt)
                ef = xp.concat([loop_e, ef], axis=-2)
            if m is not None:
                m = xp.concat([xp.ones((*batch, 1), dtype=xp.bool, device=dev), m], axis=-1)
        s, msg = self._logits_and_messages(xp.expand_dims(qb, axis=-2), nb, ef, p, xp)  # (..., k', H), (..., k', H, C)
        if m is not None:
            s = xp.where(m[..., None], s, xp.asarray(-xp.inf, dtype=s.dtype, device=dev))
        alpha = safe_softmax(s, xp, axis=-2)
        return alpha, msg, p, xp, out_dtype

    # ------------------------------------------------------------------ whole-graph form
    def _graph_inputs(self, x: Any, edge_index: Any, edge_attr: Any) -> tuple:
        xp = namespace(x, edge_attr)
        x = self._input(x, "x", self.dim, xp, 2, "(N, dim)")
        if x.ndim != 2:
            raise ShapeError(f"x: expected node features of shape (N, {self.dim}), got {shape_str(x.shape)}")
        n = int(x.shape[0])
        src, dst, orig = edge_list(edge_index, n, self.self_loops)
        e_in = int(np.asarray(to_numpy(edge_index) if array_api_compat.is_array_api_obj(edge_index) else edge_index).reshape(2, -1).shape[1])
        ef = None
        if self.edge_dim:
            if edge_attr is None:
                raise ShapeError(f"edge_attr: expected an array of shape (E={e_in}, {self.edge_dim}) (edge_dim = {self.edge_dim}), got None")
            ef = self._input(edge_attr, "edge_attr", self.edge_dim, xp, 2, "(E, edge_dim)")
            if ef.ndim != 2 or ef.shape[0] != e_in:
                raise ShapeError(f"edge_attr: expected shape (E={e_in}, {self.edge_dim}) (one row per edge), got {shape_str(ef.shape)}")
        elif edge_attr is not None:
            raise ShapeError("edge_attr: this layer has edge_dim = 0; pass None or build it with edge_dim > 0")
        out_dtype = common_float_dtype(xp, *([x] + ([ef] if ef is not None else [])))
        cdt = compute_dtype(xp, out_dtype)
        x = xp.astype(x, cdt) if x.dtype != cdt else x
        dev = array_api_compat.device(x)
        if ef is not None:
            ef = xp.astype(ef, cdt) if ef.dtype != cdt else ef
            ef = xp.take(ef, xp.asarray(orig, device=dev), axis=0)
            if self.self_loops:  # loop features: mean of each node's incoming (kept) edge features
                kept_dst = xp.asarray(dst[: orig.shape[0]], device=dev)
                tot = segment_sum(ef, kept_dst, n, xp)
                cnt = np.bincount(dst[: orig.shape[0]], minlength=n).astype(np.float64)
                cnt_x = xp.asarray(np.maximum(cnt, 1.0)[:, None], dtype=cdt, device=dev)
                ef = xp.concat([ef, tot / cnt_x], axis=0)
        return xp, x, src, dst, ef, out_dtype, dev

    def forward_graph(self, x: Any, edge_index: Any, edge_attr: Any = None) -> Array:
        """Whole-graph form: ``x (N, dim)`` node features, ``edge_index (2, E)`` rows ``(src, dst)``
        (messages flow ``src -> dst``), ``edge_attr (E, edge_dim)``. Returns ``(N, out_dim)``; the
        attention of node ``i`` is a segment softmax over its incoming edges.
        """
        self._check_alive()
        xp, x, src, dst, ef, out_dtype, dev = self._graph_inputs(x, edge_index, edge_attr)
        n = int(x.shape[0])
        p = self._weights_like(x)
        src_x, dst_x = xp.asarray(src, device=dev), xp.asarray(dst, device=dev)
        s, msg = self._logits_and_messages(xp.take(x, dst_x, axis=0), xp.take(x, src_x, axis=0), ef, p, xp)
        alpha = segment_softmax(s, dst_x, n, xp)  # (E, H)
        out = self._finish(segment_sum(alpha[..., None] * msg, dst_x, n, xp), p, xp)
        return xp.astype(out, out_dtype) if out.dtype != out_dtype else out

    def graph_attention_weights(self, x: Any, edge_index: Any, edge_attr: Any = None) -> tuple[np.ndarray, Array]:
        """``(edges, alpha)``: the edges actually used (``(2, E')`` NumPy, self loops included) and their
        attention ``(E', H)``; for each target node the weights of its incoming edges sum to 1."""
        self._check_alive()
        xp, x, src, dst, ef, out_dtype, dev = self._graph_inputs(x, edge_index, edge_attr)
        p = self._weights_like(x)
        dst_x = xp.asarray(dst, device=dev)
        s, _ = self._logits_and_messages(xp.take(x, dst_x, axis=0), xp.take(x, xp.asarray(src, device=dev), axis=0), ef, p, xp)
        alpha = segment_softmax(s, dst_x, int(x.shape[0]), xp)
        return np.stack([src, dst]), (xp.astype(alpha, out_dtype) if alpha.dtype != out_dtype else alpha)

    def example_inputs(self, seq_len: int = 8, rng: np.random.Generator | None = None) -> tuple[np.ndarray, ...]:
        """``seq_len`` target nodes sharing ``seq_len`` neighbours (neighbour form; see :meth:`example_extras`)."""
        rng = rng or np.random.default_rng()
        q = rng.standard_normal((seq_len, self.dim), dtype=np.float32)
        nb = rng.standard_normal((seq_len, self.dim), dtype=np.float32)
        return (q, nb)

    def example_extras(self, seq_len: int = 8, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """The edge features of the example neighbours (when ``edge_dim > 0``)."""
        if not self.edge_dim:
            return {}
        rng = rng or np.random.default_rng()
        return {"edge_features": rng.standard_normal((seq_len, self.edge_dim), dtype=np.float32)}


@register
class GraphRoPEAttention(Mechanism):
    """Scaled dot-product graph attention with rotary position embeddings of the nodes' positions.

    Options: ``dim`` query/key width (64; even, all of it rotated); ``base`` (10000), ``scaling`` (1.0),
    ``layout`` (``"half"``/``"interleaved"``) of the :class:`~attnkit.RotaryEmbedding`; ``scale``
    (``1/sqrt(dim)``); ``self_loops`` (False) for the whole-graph form; ``check_finite``.
    """

    name = "graph_rope"
    summary = "scaled dot-product graph attention with rotary embeddings of node positions"
    input_layout = "graph"
    key_required = True
    shape_options = {"dim": ("query", -1)}
    example_options = {"dim": 4}

    def __init__(
        self,
        dim: int = 64,
        base: float = 10000.0,
        scaling: float = 1.0,
        layout: str = "half",
        scale: float | None = None,
        self_loops: bool = False,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        self.dim = positive_int(dim, "dim")
        self.base = positive_float(base, "base")
        self.scaling = positive_float(scaling, "scaling")
        self.layout = one_of(layout, "layout", ("half", "interleaved"))
        self.rope = RotaryEmbedding(self.dim, self.base, self.scaling, self.layout)
        self.scale = None if scale is None else nonzero_float(scale, "scale")
        self.self_loops = bool(self_loops)
        self.check_finite = bool(check_finite)

    @property
    def effective_scale(self) -> float:
        return self.scale if self.scale is not None else 1.0 / math.sqrt(self.dim)

    def _sdp(self) -> Any:
        sdp = self._cache.get("sdp")
        if sdp is None:
            from .neighbour import ScaledDotProduct

            sdp = ScaledDotProduct(self.dim, scale=self.effective_scale, check_finite=self.check_finite)
            self._cache["sdp"] = sdp
        return sdp

    def _check_width(self, x: Any, name: str, min_ndim: int, layout: str, xp: Namespace) -> Array:
        x = as_float_array(x, name, xp)
        if x.ndim < min_ndim or x.shape[-1] != self.dim:
            raise ShapeError(f"{name}: expected shape {layout} with last axis dim = {self.dim}, got {shape_str(x.shape)}")
        return x

    def forward(
        self, query: Any, key: Any = None, value: Any = None, *, mask: Any = None, query_positions: Any = None, key_positions: Any = None
    ) -> Array:
        """Neighbour form: ``query (..., dim)``, ``key (..., k, dim)``, ``value (..., k, dv)`` (default
        ``key``), ``mask (..., k)``. ``query_positions`` broadcast to ``query.shape[:-1]`` (default 0);
        ``key_positions`` are ``(k,)`` or broadcast to ``key.shape[:-1]`` (default ``0..k-1``, the
        neighbours' rank). Returns ``(..., dv)``.
        """
        return super().forward(query, key, value, mask=mask, query_positions=query_positions, key_positions=key_positions)

    def attention_weights(
        self, query: Any, key: Any = None, *, mask: Any = None, query_positions: Any = None, key_positions: Any = None
    ) -> Array:
        """The softmax weights ``(..., k)`` of each query over its rotated neighbours."""
        return super().attention_weights(query, key, mask=mask, query_positions=query_positions, key_positions=key_positions)

    def _rotated(self, query: Any, key: Any, query_positions: Any, key_positions: Any) -> tuple[Array, Array, Array]:
        if key is None:
            raise ShapeError(f"key: expected the neighbours, an array of shape (..., k, {self.dim}), got None")
        xp = namespace(query, key)
        q = self._check_width(query, "query", 1, "(..., dim)", xp)
        k = self._check_width(key, "key", 2, "(..., k, dim)", xp)
        if self.check_finite:
            check_finite(q, "query", xp)
            check_finite(k, "key", xp)
        qr = self.rope.apply(q, 0.0 if query_positions is None else query_positions)
        kr = self.rope.apply(k, key_positions, seq_axis=-2)
        return qr, kr, k

    def _forward(
        self, params: Mapping[str, Array], query: Any, key: Any, value: Any, *, mask: Any = None,
        query_positions: Any = None, key_positions: Any = None,
    ) -> Array:
        qr, kr, k = self._rotated(query, key, query_positions, key_positions)
        return self._sdp()._forward({}, qr, kr, k if value is None else value, mask=mask)

    def _attention_weights(
        self, params: Mapping[str, Array], query: Any, key: Any, *, mask: Any = None, query_positions: Any = None, key_positions: Any = None
    ) -> Array:
        qr, kr, _ = self._rotated(query, key, query_positions, key_positions)
        return self._sdp()._attention_weights({}, qr, kr, mask=mask)

    def forward_graph(self, q: Any, edge_index: Any, k: Any = None, v: Any = None, positions: Any = None) -> Array:
        """Whole-graph form: node arrays ``q (N, dim)``, ``k (N, dim)``, ``v (N, dv)`` (``k``, ``v`` default
        to ``q``), ``edge_index (2, E)`` rows ``(src, dst)``, ``positions (N,)`` (default ``0..N-1``).
        ``out_i = sum_{j -> i} softmax_j(scale <R(p_i) q_i, R(p_j) k_j>) v_j``; zeros for a node without
        incoming edges."""
        self._check_alive()
        k = q if k is None else k
        v = k if v is None else v
        xp = namespace(q, k, v)
        q = self._check_width(q, "q", 2, "(N, dim)", xp)
        k = self._check_width(k, "k", 2, "(N, dim)", xp)
        v = as_float_array(v, "v", xp)
        n = int(q.shape[0])
        for name, x in (("q", q), ("k", k), ("v", v)):
            if x.ndim != 2 or x.shape[0] != n:
                raise ShapeError(f"{name}: expected node rows (N={n}, width), got {shape_str(x.shape)}")
            if self.check_finite:
                check_finite(x, name, xp)
        if positions is not None:
            pos = np.asarray(to_numpy(positions) if array_api_compat.is_array_api_obj(positions) else positions)
            if pos.shape != (n,):
                raise ShapeError(f"positions: expected one position per node, shape ({n},), got {shape_str(pos.shape)}")
        src, dst, _ = edge_list(edge_index, n, self.self_loops)
        out_dtype = common_float_dtype(xp, q, k, v)
        cdt = compute_dtype(xp, out_dtype)
        q, k, v = (xp.astype(x, cdt) if x.dtype != cdt else x for x in (q, k, v))
        qr = self.rope.apply(q, positions)
        kr = self.rope.apply(k, positions)
        dev = array_api_compat.device(q)
        src_x, dst_x = xp.asarray(src, device=dev), xp.asarray(dst, device=dev)
        s = xp.sum(xp.take(qr, dst_x, axis=0) * xp.take(kr, src_x, axis=0), axis=-1) * self.effective_scale
        alpha = segment_softmax(s, dst_x, n, xp)
        out = segment_sum(alpha[:, None] * xp.take(v, src_x, axis=0), dst_x, n, xp)
        return xp.astype(out, out_dtype) if out.dtype != out_dtype else out

    def example_inputs(self, seq_len: int = 8, rng: np.random.Generator | None = None) -> tuple[np.ndarray, ...]:
        """``seq_len`` queries sharing ``seq_len`` neighbours (ranked 0..seq_len-1)."""
        rng = rng or np.random.default_rng()
        return tuple(rng.standard_normal((seq_len, self.dim), dtype=np.float32) for _ in range(3))
