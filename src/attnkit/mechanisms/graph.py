"""Graph attention: GAT / GATv2 with edge features, and scaled dot-product graph attention with RoPE.

:class:`EdgeFeaturedAttention` is graph attention (Veličković et al. 2018, "Graph Attention Networks",
``version="v1"``; Brody, Alon & Yahav 2022, "How Attentive are Graph Attention Networks?",
``version="v2"``) with edge features entering the attention logits as in PyTorch Geometric's
``GATConv``/``GATv2Conv(edge_dim=...)``. For target node ``i``, neighbour ``j`` (an edge ``j -> i``) with
edge features ``e_ij`` and head ``h``:

* v1: ``s_ij = LeakyReLU(a_dst . W_dst x_i + a_src . W_src x_j + a_edge . W_e e_ij)``, message ``W_src x_j``;
* v2: ``s_ij = a . LeakyReLU(W_r x_i + b_r + W_l x_j + b_l + W_e e_ij)``, message ``W_l x_j + b_l``;

``alpha_ij = softmax_j(s_ij)`` over the incoming edges of ``i`` (a segment softmax over the edge list),
``out_i = sum_j alpha_ij m_j`` per head, heads concatenated (``concat=True``) or averaged, plus the
residual ``W_res x_i`` (``residual=True``) and a bias. The formulas live in :mod:`attnkit.kernels.gat`
with PyG's semantics (self loops and their ``fill_value``, bipartite inputs, 1-D edge weights), and
the layer is tested against PyG's layers option by option.

:class:`GraphRoPEAttention` is parameter-free scaled dot-product attention over graph neighbours in which
queries and keys are rotated by their nodes' positions with a rotary embedding (Su et al. 2021), so a
score depends on the features and the *difference* of the positions (hop distance, order in a
traversal, a coordinate along a path, ...): ``s_ij = scale <R(p_i) q_i, R(p_j) k_j>``.

Both take two forms: the neighbour form ``forward(query, key, ...)`` with ``key`` the neighbours (one or many
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
    finite_float,
    moveaxis,
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
from .._array import broadcast_shapes as _bshapes
from .._array import length as _dim
from ..errors import ConfigError, DTypeError, ShapeError
from ..kernels import gat, overflow
from ..kernels.masks import prepare_mask
from ..kernels.rope import RotaryEmbedding
from ..kernels.segment import segment_softmax, segment_sum
from ..kernels.softmax import safe_softmax
from ._learned import LearnedParams, glorot
from .base import Mechanism
from .registry import register

__all__ = ["EdgeFeaturedAttention", "GraphRoPEAttention", "edge_list"]


def _edge_index(edge_index: Any, num_src: int, num_dst: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``edge_index (2, E)`` (rows ``src``, ``dst``) against the node counts; int64 NumPy rows."""
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
    for row, name, n in ((0, "source", num_src), (1, "target", num_dst)):
        r = ei[row]
        if r.size and (r.min() < 0 or r.max() >= n):
            bad = int(r.min()) if r.min() < 0 else int(r.max())
            raise ShapeError(f"edge_index: {name} indices (row {row}) must lie in [0, {n}) (the number of {name} nodes), got {bad}")
    return ei[0], ei[1]


def edge_list(edge_index: Any, num_nodes: int, self_loops: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate ``edge_index (2, E)`` and return ``(src, dst, original)`` int64 NumPy arrays.

    With ``self_loops`` every existing ``i -> i`` edge is removed and one self loop per node appended
    (PyG's ``remove_self_loops`` + ``add_self_loops``); ``original`` indexes the kept input edges.
    """
    src, dst = _edge_index(edge_index, num_nodes, num_nodes)
    if self_loops:
        return gat.remove_and_add_self_loops(src, dst, num_nodes)
    return src, dst, np.arange(src.shape[0])


@register
class EdgeFeaturedAttention(LearnedParams, Mechanism):
    """Graph attention (GAT v1 / GATv2) with edge features and PyTorch Geometric's options; learned, seeded weights.

    It computes what PyG's ``GATConv`` (``version="v1"``) and ``GATv2Conv`` (``version="v2"``) compute,
    with the same parameter names (see :mod:`attnkit.kernels.gat` for the formulas), so their state dicts
    load as they are (:func:`attnkit.weights.from_pyg_gat` / :func:`~attnkit.weights.to_pyg_gat`).

    Options: ``dim`` source node width (64; a pair ``(src, dst)`` as PyG's ``in_channels`` tuple sets
    ``dst_dim`` too); ``dst_dim`` target node width for bipartite graphs (default ``dim``: one node set;
    given, GAT uses separate ``lin_src``/``lin_dst`` as PyG does for a tuple ``in_channels``);
    ``edge_dim`` edge feature width (0, as PyG's ``edge_dim=None``: none); ``heads`` (1); ``out_dim`` output width (default
    ``dim``; with ``concat=True`` each head has ``out_dim // heads`` channels, which must divide);
    ``version`` ``"v1"``/``"v2"``; ``negative_slope`` (0.2); ``self_loops`` (PyG's ``add_self_loops``,
    True): existing ``i -> i`` edges are dropped and a loop added for every node ``i < min(N_src, N_dst)``;
    ``fill_value`` the loops' edge features: ``"mean"`` (PyG's default), ``"add"``, ``"max"``, ``"min"`` of
    the node's incoming edge features, or a number (or, from Python, a length-``edge_dim`` vector);
    ``concat`` heads (True) or average them; ``bias`` (True: the output bias, and for v2 the biases of
    ``lin_l``/``lin_r``, as PyG); ``residual`` (False: adds ``res.weight @ x_dst``); ``share_weights`` (v2
    only, False: one ``lin_l`` for sources and targets); ``seed`` of the Glorot initialisation; ``check_finite``.

    Parameters (``C`` channels per head, ``O`` = ``H*C`` with concat, else ``C``): v1 ``lin.weight
    (H*C, dim)`` (or ``lin_src.weight (H*C, dim)`` and ``lin_dst.weight (H*C, dst_dim)``), ``att_src``,
    ``att_dst``, ``att_edge`` ``(H, C)``; v2 ``lin_l.weight (H*C, dim)``, ``lin_r.weight (H*C, dst_dim)``,
    ``lin_l.bias``, ``lin_r.bias`` ``(H*C,)``, ``att (H, C)``; both ``lin_edge.weight (H*C, edge_dim)``,
    ``res.weight (O, dst_dim)``, ``bias (O,)``.
    """

    name = "edge_featured"
    summary = "graph attention (GAT v1/v2, PyG GATConv/GATv2Conv options) with edge features, edge-list or neighbour form"
    input_layout = "graph"
    key_required = True
    shape_options = {"dim": ("key", -1), "edge_dim": ("edge_features", -1)}
    example_options = {"dim": 4, "edge_dim": 2, "heads": 2}

    def __init__(
        self,
        dim: int | tuple[int, int] = 64,
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
        dst_dim: int | None = None,
        fill_value: float | str = "mean",
        residual: bool = False,
        share_weights: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(dim, (tuple, list)):
            if len(dim) != 2 or dst_dim is not None:
                raise ConfigError(f"dim: expected an int or a pair (src_dim, dst_dim) (and then no dst_dim), got {dim!r}")
            dim, dst_dim = dim
        self.dim = positive_int(dim, "dim")
        self.bipartite = dst_dim is not None
        self.dst_dim = self.dim if dst_dim is None else positive_int(dst_dim, "dst_dim")
        self.edge_dim = non_negative_int(edge_dim, "edge_dim")
        self.heads = positive_int(heads, "heads")
        self.out_dim = self.dim if out_dim is None else positive_int(out_dim, "out_dim")
        self.concat = bool(concat)
        if self.concat and self.out_dim % self.heads:
            raise ConfigError(f"out_dim: with concat=True it must be a multiple of heads = {self.heads}, got {self.out_dim}")
        self.version = one_of(version, "version", ("v1", "v2"))
        self.negative_slope = non_negative_float(negative_slope, "negative_slope")
        self.self_loops = bool(self_loops)
        self.fill_value = self._fill(fill_value)
        self.bias = bool(bias)
        self.residual = bool(residual)
        self.share_weights = bool(share_weights)
        if self.share_weights and (self.version != "v2" or self.dst_dim != self.dim):
            raise ConfigError("share_weights: needs version='v2' and sources and targets of one width (dst_dim == dim)")
        self.seed = seed
        self.check_finite = bool(check_finite)
        self._params = self._init_params(self._param_rng())

    def _fill(self, value: Any) -> Any:
        if isinstance(value, str):
            return one_of(value, "fill_value", gat.LOOP_REDUCTIONS)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return finite_float(value, "fill_value")
        arr = np.asarray(to_numpy(value) if array_api_compat.is_array_api_obj(value) else value, dtype=np.float64)
        if arr.shape != (self.edge_dim,) or not np.isfinite(arr).all():
            raise ConfigError(
                f"fill_value: expected 'mean', 'add', 'max', 'min', a finite number or a finite vector of length "
                f"edge_dim = {self.edge_dim}, got {value!r}"
            )
        return arr

    @property
    def channels(self) -> int:
        """Channels per head ``C``."""
        return self.out_dim // self.heads if self.concat else self.out_dim

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        h, c = self.heads, self.channels
        hc = h * c
        shapes: dict[str, tuple[int, ...]] = {}
        if self.version == "v1":
            if self.bipartite:
                shapes.update({"lin_src.weight": (hc, self.dim), "lin_dst.weight": (hc, self.dst_dim)})
            else:
                shapes["lin.weight"] = (hc, self.dim)
            shapes.update({"att_src": (h, c), "att_dst": (h, c)})
            if self.edge_dim:
                shapes["att_edge"] = (h, c)
        else:
            shapes["lin_l.weight"] = (hc, self.dim)
            if self.bias:
                shapes["lin_l.bias"] = (hc,)
            if not self.share_weights:
                shapes["lin_r.weight"] = (hc, self.dst_dim)
                if self.bias:
                    shapes["lin_r.bias"] = (hc,)
            shapes["att"] = (h, c)
        if self.edge_dim:
            shapes["lin_edge.weight"] = (hc, self.edge_dim)
        if self.residual:
            shapes["res.weight"] = (self.out_dim if self.concat else c, self.dst_dim)
        if self.bias:
            shapes["bias"] = (self.out_dim,)
        return shapes

    def _init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        p: dict[str, np.ndarray] = {}
        for key, shape in self.param_shapes().items():
            if key.endswith("bias"):
                p[key] = np.zeros(shape, dtype=np.float32)
            elif key.endswith(".weight"):
                p[key] = glorot(rng, shape, shape[1], shape[0])
            else:  # attention vectors (H, C): PyG's Glorot over (1, H, C)
                p[key] = glorot(rng, shape, shape[0], shape[1])
        return p

    def _set_params(self, params: Mapping[str, Any]) -> None:
        """Accept PyG's ``(1, H, C)`` attention vectors and a ``share_weights`` GATv2's duplicate ``lin_r``."""
        from ..weights import from_pyg_gat, is_pyg_gat

        params = dict(params)
        if is_pyg_gat(params):
            params = from_pyg_gat(params)
            if self.share_weights and "lin_r.weight" in params:
                for part in ("weight", "bias"):
                    r = params.pop(f"lin_r.{part}", None)
                    if r is not None and not np.array_equal(np.asarray(r), np.asarray(params.get(f"lin_l.{part}"))):
                        raise ConfigError(f"weights: lin_r.{part} differs from lin_l.{part}, but this layer has share_weights=True")
        super()._set_params(params)

    def pyg_state_dict(self) -> dict[str, np.ndarray]:
        """The parameters as a PyG ``GATConv``/``GATv2Conv`` state dict (``att_*`` of shape ``(1, H, C)``;
        with ``share_weights`` PyG's ``lin_r`` is ``lin_l`` again)."""
        from ..weights import to_pyg_gat

        self._check_alive()
        p = dict(self._params)
        if self.share_weights:
            p.update({k.replace("lin_l.", "lin_r."): v for k, v in self._params.items() if k.startswith("lin_l.")})
        return to_pyg_gat(p)

    # ------------------------------------------------------------------ helpers
    def _input(self, x: Any, name: str, width: int, xp: Namespace, min_ndim: int, layout: str) -> Array:
        x = as_float_array(x, name, xp)
        if x.ndim < min_ndim or x.shape[-1] != width:
            raise ShapeError(f"{name}: expected shape {layout} with last axis {width}, got {shape_str(x.shape)}")
        if self.check_finite:
            check_finite(x, name, xp)
        return x

    # ------------------------------------------------------------------ neighbour form
    def forward(self, query: Any, key: Any = None, value: Any = None, *, mask: Any = None, edge_features: Any = None) -> Array:
        """Neighbour form: ``query (..., dst_dim)`` target node(s), ``key (..., k, dim)`` their neighbours
        (the sources, which also carry the messages, so ``value`` must be left out), ``edge_features
        (..., k, edge_dim)`` of the edges neighbour -> target, ``mask (..., k)`` (True = a real
        neighbour). Batch dimensions broadcast. Returns ``(..., out_dim)``; a target with no neighbour
        left (and no self loop) gets zeros (plus residual and bias). The self loop takes the query as its
        own source (so it needs ``dst_dim == dim``) with the ``fill_value`` edge features.
        """
        return self._run_forward(query, key, value, mask=mask, edge_features=edge_features)

    def attention_weights(self, query: Any, key: Any = None, *, mask: Any = None, edge_features: Any = None) -> Array:
        """Neighbour form: the attention ``(..., H, k')`` of each target over its neighbours, with its self
        loop first when ``self_loops`` (``k' = k + 1``); each row sums to 1."""
        return self._run_weights(query, key, mask=mask, edge_features=edge_features)

    def _forward(self, params: Mapping[str, Array], query: Any, key: Any, value: Any, *, mask: Any = None, edge_features: Any = None) -> Array:
        alpha, hs, qb, p, xp, out_dtype = self._neighbour_attention(params, query, key, value, mask, edge_features)
        out = gat.finish(p, xp.sum(alpha[..., None] * hs, axis=-3), qb, self.concat, xp)
        return xp.astype(out, out_dtype) if out.dtype != out_dtype else out

    def _attention_weights(self, params: Mapping[str, Array], query: Any, key: Any, *, mask: Any = None, edge_features: Any = None) -> Array:
        alpha, _, _, _, xp, out_dtype = self._neighbour_attention(params, query, key, None, mask, edge_features)
        alpha = moveaxis(alpha, -1, -2, xp)  # (..., H, k'): each row sums to 1, as every mechanism's weights
        return xp.astype(alpha, out_dtype) if alpha.dtype != out_dtype else alpha

    def _neighbour_attention(self, params: Mapping[str, Array], query: Any, key: Any, value: Any, mask: Any, edge_features: Any) -> tuple:
        """``(alpha (..., k', H), source projections (..., k', H, C), targets, params, xp, out_dtype)``."""
        neighbours = key
        if neighbours is None:
            raise ShapeError(f"key: expected the neighbours, an array of shape (..., k, {self.dim}), got None")
        if value is not None:
            raise ShapeError("value: graph attention sends messages from the neighbours (key); pass no value")
        xp = namespace(query, neighbours, edge_features)
        q = self._input(query, "query", self.dst_dim, xp, 1, "(..., dst_dim)")
        nb = self._input(neighbours, "key", self.dim, xp, 2, "(..., k, dim)")
        k = _dim(nb.shape[-2])
        ef = None
        if self.edge_dim:
            if edge_features is None:
                raise ShapeError(f"edge_features: expected an array of shape (..., k, {self.edge_dim}) (edge_dim = {self.edge_dim}), got None")
            ef = self._input(edge_features, "edge_features", self.edge_dim, xp, 2, "(..., k, edge_dim)")
            if ef.shape[-2] != k:
                raise ShapeError(f"edge_features: expected k = {k} rows along axis -2 (as neighbours), got {ef.shape[-2]}")
        elif edge_features is not None:
            raise ShapeError("edge_features: this layer has edge_dim = 0; pass None or build it with edge_dim > 0")
        if self.self_loops and self.dst_dim != self.dim:
            raise ConfigError("self_loops: a bipartite layer (dst_dim != dim) has self loops only in forward_graph; build it with self_loops=False")
        arrays = [q, nb] + ([ef] if ef is not None else [])
        try:
            batch = _bshapes(tuple(q.shape[:-1]), tuple(nb.shape[:-2]), *([tuple(ef.shape[:-2])] if ef is not None else []))
        except ValueError:
            raise ShapeError(
                f"query, key, edge_features: batch dimensions {shape_str(q.shape[:-1])}, {shape_str(nb.shape[:-2])}"
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
        zero = None
        if None in batch or k is None:  # symbolic lengths (a graph being exported): broadcast by adding zeros
            zero = xp.zeros_like(q[..., 0]) + xp.zeros_like(nb[..., 0, 0])
            if ef is not None:
                zero = zero + xp.zeros_like(ef[..., 0, 0])
        nb = _broadcast(nb, (*batch, k, self.dim), xp, zero)
        qb = _broadcast(q, (*batch, self.dst_dim), xp, zero)
        if ef is not None:
            ef = _broadcast(ef, (*batch, k, self.edge_dim), xp, zero)
        if m is not None:
            m = _broadcast(m, (*batch, k), xp, zero)
        if self.self_loops:
            nb = xp.concat([xp.expand_dims(qb, axis=-2), nb], axis=-2)
            if ef is not None:
                ef = xp.concat([self._neighbour_loop_attr(ef, m, xp), ef], axis=-2)
            if m is not None:
                m = xp.concat([xp.ones_like(m[..., :1]), m], axis=-1)
        hs, hd = gat.project(p, nb, xp.expand_dims(qb, axis=-2), self.heads, xp)  # (..., k', H, C), (..., 1, H, C)
        s = gat.edge_logits(p, hs, hd, ef, self.heads, self.negative_slope, xp)  # (..., k', H)
        if m is not None:
            s = xp.where(m[..., None], s, xp.asarray(-xp.inf, dtype=s.dtype, device=dev))
        return safe_softmax(s, xp, axis=-2), hs, qb, p, xp, out_dtype

    def _neighbour_loop_attr(self, ef: Array, m: Array | None, xp: Namespace) -> Array:
        """The self loop's edge features ``(..., 1, edge_dim)`` from the (unmasked) neighbours' ones."""
        fv = self.fill_value
        if not isinstance(fv, str):
            fill = xp.asarray(fv, dtype=ef.dtype, device=array_api_compat.device(ef))
            return xp.zeros_like(ef[..., :1, :]) + fill
        w = xp.ones_like(ef[..., :1]) if m is None else xp.astype(m, ef.dtype)[..., None]
        if fv in ("mean", "add", "sum"):
            tot = xp.sum(ef * w, axis=-2, keepdims=True)
            if fv != "mean":
                return tot
            cnt = xp.sum(w, axis=-2, keepdims=True)
            return tot / xp.where(cnt == 0, xp.ones_like(cnt), cnt)
        sign = 1.0 if fv == "max" else -1.0
        neg = xp.asarray(-xp.inf, dtype=ef.dtype, device=array_api_compat.device(ef))
        best = xp.max(xp.where(w > 0, sign * ef, neg), axis=-2, keepdims=True)
        return xp.where(xp.isinf(best), xp.zeros_like(best), sign * best)

    # ------------------------------------------------------------------ whole-graph form
    def _graph_inputs(self, x: Any, edge_index: Any, edge_attr: Any) -> tuple:
        pair = isinstance(x, (tuple, list))
        if pair and len(x) != 2:
            raise ShapeError(f"x: expected node features (N, dim) or a pair (x_src, x_dst), got a sequence of {len(x)}")
        xs_in, xd_in = (x[0], x[1]) if pair else (x, None)
        xp = namespace(xs_in, xd_in, edge_attr)
        xs = self._input(xs_in, "x_src" if pair else "x", self.dim, xp, 2, "(N, dim)")
        if xs.ndim != 2:
            raise ShapeError(f"{'x_src' if pair else 'x'}: expected node features of shape (N, {self.dim}), got {shape_str(xs.shape)}")
        if xd_in is None:
            if self.dst_dim != self.dim:
                raise ShapeError(f"x: this layer is bipartite (dim {self.dim}, dst_dim {self.dst_dim}); pass x = (x_src, x_dst)")
            xd = xs
        else:
            xd = self._input(xd_in, "x_dst", self.dst_dim, xp, 2, "(N_dst, dst_dim)")
            if xd.ndim != 2:
                raise ShapeError(f"x_dst: expected node features of shape (N_dst, {self.dst_dim}), got {shape_str(xd.shape)}")
        ns, nd = _dim(xs.shape[0]), _dim(xd.shape[0])
        src, dst = _edge_index(edge_index, ns, nd)
        e_in = _dim(src.shape[0])
        ef = None
        if self.edge_dim:
            if edge_attr is None:
                raise ShapeError(f"edge_attr: expected an array of shape (E={e_in}, {self.edge_dim}) (edge_dim = {self.edge_dim}), got None")
            ef = as_float_array(edge_attr, "edge_attr", xp)
            if ef.ndim == 1 and self.edge_dim == 1:  # PyG: 1-D edge weights for edge_dim = 1
                ef = xp.reshape(ef, (-1, 1))
            if ef.ndim != 2 or ef.shape[0] != e_in or ef.shape[1] != self.edge_dim:
                raise ShapeError(f"edge_attr: expected shape (E={e_in}, {self.edge_dim}) (one row per edge), got {shape_str(ef.shape)}")
            if self.check_finite:
                check_finite(ef, "edge_attr", xp)
        elif edge_attr is not None:
            raise ShapeError("edge_attr: this layer has edge_dim = 0; pass None or build it with edge_dim > 0")
        out_dtype = common_float_dtype(xp, *([xs, xd] + ([ef] if ef is not None else [])))
        cdt = compute_dtype(xp, out_dtype)
        xs, xd = (xp.astype(a, cdt) if a.dtype != cdt else a for a in (xs, xd))
        if self.self_loops:
            nloops = min(ns, nd)
            src, dst, kept = gat.remove_and_add_self_loops(src, dst, nloops)
            if ef is not None:
                ef = xp.astype(ef, cdt) if ef.dtype != cdt else ef
                ef = xp.take(ef, gat.index(kept, ef, xp), axis=0)
                loops = gat.loop_edge_attr(ef, dst[: kept.shape[0]], nloops, self.fill_value, xp)
                ef = xp.concat([ef, loops], axis=0)
        elif ef is not None and ef.dtype != cdt:
            ef = xp.astype(ef, cdt)
        return xp, xs, xd, src, dst, ef, out_dtype

    def _graph(self, params: Mapping[str, Array], x: Any, edge_index: Any, edge_attr: Any) -> tuple:
        xp, xs, xd, src, dst, ef, out_dtype = self._graph_inputs(x, edge_index, edge_attr)
        p = self._params_like(params, xs)
        hs, hd = gat.project(p, xs, xd, self.heads, xp)
        src_x, dst_x = gat.index(src, xs, xp), gat.index(dst, xs, xp)
        hs_e = xp.take(hs, src_x, axis=0)
        s = gat.edge_logits(p, hs_e, xp.take(hd, dst_x, axis=0), ef, self.heads, self.negative_slope, xp)
        alpha, agg = gat.aggregate(s, hs_e, dst_x, _dim(xd.shape[0]), xp)
        return xp, p, xd, src, dst, alpha, agg, out_dtype

    def forward_graph(self, x: Any, edge_index: Any, edge_attr: Any = None) -> Array:
        """Whole-graph form: ``x (N, dim)`` node features, or a pair ``(x_src (N_src, dim), x_dst (N_dst,
        dst_dim))`` for a bipartite graph; ``edge_index (2, E)`` rows ``(src, dst)`` (messages flow ``src
        -> dst``); ``edge_attr (E, edge_dim)`` (or ``(E,)`` when ``edge_dim = 1``). Returns ``(N_dst,
        out_dim)``, as PyG's ``GATConv``/``GATv2Conv`` ``forward(x, edge_index, edge_attr)``.
        """
        self._check_alive()
        xp, p, xd, _, _, _, agg, out_dtype = self._graph(self._params, x, edge_index, edge_attr)
        out = gat.finish(p, agg, xd, self.concat, xp)
        return xp.astype(out, out_dtype) if out.dtype != out_dtype else out

    def graph_attention_weights(self, x: Any, edge_index: Any, edge_attr: Any = None) -> tuple[np.ndarray, Array]:
        """``(edges, alpha)``: the edges actually used (``(2, E')`` NumPy, self loops appended after the
        kept edges, as PyG's ``return_attention_weights``) and their attention ``(E', H)``; for each target
        node the weights of its incoming edges sum to 1."""
        self._check_alive()
        xp, _, _, src, dst, alpha, _, out_dtype = self._graph(self._params, x, edge_index, edge_attr)
        return np.stack([src, dst]), (xp.astype(alpha, out_dtype) if alpha.dtype != out_dtype else alpha)

    def example_inputs(self, seq_len: int = 8, rng: np.random.Generator | None = None) -> tuple[np.ndarray, ...]:
        """``seq_len`` target nodes sharing ``seq_len`` neighbours (neighbour form; see :meth:`example_extras`)."""
        rng = rng or np.random.default_rng()
        q = rng.standard_normal((seq_len, self.dst_dim), dtype=np.float32)
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
        return self._run_forward(query, key, value, mask=mask, query_positions=query_positions, key_positions=key_positions)

    def attention_weights(self, query: Any, key: Any = None, *, mask: Any = None, query_positions: Any = None, key_positions: Any = None) -> Array:
        """The softmax weights ``(..., k)`` of each query over its rotated neighbours."""
        return self._run_weights(query, key, mask=mask, query_positions=query_positions, key_positions=key_positions)

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
        self,
        params: Mapping[str, Array],
        query: Any,
        key: Any,
        value: Any,
        *,
        mask: Any = None,
        query_positions: Any = None,
        key_positions: Any = None,
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
        n = _dim(q.shape[0])
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
        # logits or weighted value sums past the dtype's range: computed one dtype wider (see kernels.overflow)
        qr, kr, v = overflow.widen_if_at_risk(
            xp, (qr, kr, v), names="query, key", logits=(qr, kr, qr.shape[-1], self.effective_scale), values=(v, max(len(src), 1))
        )
        s = xp.sum(xp.take(qr, dst_x, axis=0) * xp.take(kr, src_x, axis=0), axis=-1) * self.effective_scale
        alpha = segment_softmax(s, dst_x, n, xp)
        out = segment_sum(alpha[:, None] * xp.take(v, src_x, axis=0), dst_x, n, xp)
        return xp.astype(out, out_dtype) if out.dtype != out_dtype else out

    def example_inputs(self, seq_len: int = 8, rng: np.random.Generator | None = None) -> tuple[np.ndarray, ...]:
        """``seq_len`` queries sharing ``seq_len`` neighbours (ranked 0..seq_len-1)."""
        rng = rng or np.random.default_rng()
        return tuple(rng.standard_normal((seq_len, self.dim), dtype=np.float32) for _ in range(3))


def _broadcast(x: Array, shape: tuple[int | None, ...], xp: Namespace, zero: Array | None) -> Array:
    """``broadcast_to(x, shape)``; with symbolic lengths (a graph being exported) by adding ``zero``, the
    zeros of the broadcast batch shape, with as many trailing axes as ``shape`` has beyond the batch."""
    if zero is None:
        return xp.broadcast_to(x, shape)
    z = zero
    for _ in range(len(shape) - zero.ndim):
        z = xp.expand_dims(z, axis=-1)
    return xp.logical_and(x, z == 0) if xp.isdtype(x.dtype, "bool") else x + z
