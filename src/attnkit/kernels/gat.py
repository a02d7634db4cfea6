r"""Graph attention (GAT and GATv2) as stateless kernels, with PyTorch Geometric's semantics.

For a message ``j -> i`` (source ``j``, target ``i``), head ``h`` and edge features ``e_ij``
(Veličković et al. 2018, "Graph Attention Networks"; Brody, Alon & Yahav 2022, "How Attentive are Graph
Attention Networks?"), with PyG's parameter names (``torch.nn.Linear`` layout ``(out, in)``):

* GAT (``GATConv``): ``h_j = W_src x_j``, ``h_i = W_dst x_i`` (one ``lin`` for both when sources and
  targets share a width, ``lin_src``/``lin_dst`` for bipartite inputs; no bias);
  ``s_ij = LeakyReLU(a_src . h_j + a_dst . h_i + a_edge . W_e e_ij)``, message ``h_j``;
* GATv2 (``GATv2Conv``): ``h_j = W_l x_j + b_l``, ``h_i = W_r x_i + b_r``;
  ``s_ij = a . LeakyReLU(h_j + h_i + W_e e_ij)``, message ``h_j``;

``alpha_ij = softmax_j(s_ij)`` over the incoming edges of ``i`` (a segment softmax), and
``out_i = concat_h / mean_h (sum_j alpha_ij m_j) + W_res x_i + bias`` (the residual term only with
``residual=True``). Self loops as PyG's ``add_self_loops``: existing ``i -> i`` edges are removed and
one loop per node ``i < min(N_src, N_dst)`` appended after the kept edges, with edge features
``fill_value``: a number or a vector (every loop the same), or ``"mean"``/``"add"``/``"max"``/``"min"``
of the node's incoming edge features (0 for a node without any).

Node features are projected once per node and then gathered per edge (PyG's order). The edge list is
host data (NumPy ``int64``): it fixes the shapes, so it is validated in Python; the arithmetic on features
and parameters is array-API code in the features' library, differentiable in torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import array_api_compat
import numpy as np

from .._array import Array, Namespace, is_torch, reshape_lead
from .._array import length as _dim
from . import overflow
from .segment import segment_max, segment_softmax, segment_sum

__all__ = [
    "LOOP_REDUCTIONS",
    "remove_and_add_self_loops",
    "loop_edge_attr",
    "project",
    "edge_logits",
    "aggregate",
    "finish",
]

#: the reductions PyG accepts as a string ``fill_value``
LOOP_REDUCTIONS = ("mean", "add", "sum", "max", "min")


def remove_and_add_self_loops(src: np.ndarray, dst: np.ndarray, num_loops: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PyG's ``remove_self_loops`` then ``add_self_loops(num_nodes=num_loops)`` on an edge list:
    ``(src, dst, kept)`` with ``kept`` the indices of the input edges that stay (loops come after them)."""
    kept = np.flatnonzero(src != dst)
    loops = np.arange(num_loops, dtype=np.int64)
    return np.concatenate([src[kept], loops]), np.concatenate([dst[kept], loops]), kept


def loop_edge_attr(edge_attr: Array, dst: np.ndarray, num_loops: int, fill_value: Any, xp: Namespace) -> Array:
    """Edge features ``(num_loops, F)`` of the self loops: ``fill_value`` a number, a length-``F`` vector,
    or a reduction (``"mean"``, ``"add"``/``"sum"``, ``"max"``, ``"min"``) of each node's incoming
    ``edge_attr (E, F)`` rows (targets ``dst``), 0 for a node without incoming edges (as PyG's ``scatter``)."""
    dev = array_api_compat.device(edge_attr)
    feat = tuple(edge_attr.shape[1:])
    if isinstance(fill_value, str):
        keep = dst < num_loops
        seg = xp.asarray(dst[keep], device=dev)
        rows = xp.take(edge_attr, xp.asarray(np.flatnonzero(keep), device=dev), axis=0)
        count = np.bincount(dst[keep], minlength=num_loops)[:num_loops].astype(np.float64)
        has = xp.asarray((count > 0).reshape((-1,) + (1,) * len(feat)), device=dev)
        if fill_value in ("mean", "add", "sum"):
            tot = segment_sum(rows, seg, num_loops, xp)
            if fill_value != "mean":
                return tot
            cnt = xp.asarray(np.maximum(count, 1.0).reshape((-1,) + (1,) * len(feat)), dtype=edge_attr.dtype, device=dev)
            return tot / cnt
        sign = 1.0 if fill_value == "max" else -1.0
        m = sign * segment_max(sign * rows, seg, num_loops, xp)
        return xp.where(has, m, xp.zeros_like(m))
    fill = xp.asarray(fill_value, dtype=edge_attr.dtype, device=dev)
    return xp.broadcast_to(fill, (num_loops, *feat)) * xp.ones((num_loops, *feat), dtype=edge_attr.dtype, device=dev)


def _lin(x: Array, w: Array, b: Array | None, heads: int, xp: Namespace) -> Array:
    """``x W^T (+ b)`` reshaped to ``(..., H, C)``."""
    y = x @ xp.matrix_transpose(w)
    if b is not None:
        y = y + b
    return reshape_lead(y, y.ndim - 1, (heads, _dim(w.shape[0]) // heads), xp)


def project(p: Mapping[str, Array], x_src: Array, x_dst: Array, heads: int, xp: Namespace) -> tuple[Array, Array]:
    """Node projections ``(h_src (..., Ns, H, C), h_dst (..., Nd, H, C))``: GAT's ``lin`` (or ``lin_src``,
    ``lin_dst``), GATv2's ``lin_l``/``lin_r`` with their biases (``lin_r`` absent = shared with ``lin_l``)."""
    if "lin_l.weight" in p:
        wl, bl = p["lin_l.weight"], p.get("lin_l.bias")
        wr, br = (p["lin_r.weight"], p.get("lin_r.bias")) if "lin_r.weight" in p else (wl, bl)
        return _lin(x_src, wl, bl, heads, xp), _lin(x_dst, wr, br, heads, xp)
    if "lin.weight" in p:
        return _lin(x_src, p["lin.weight"], None, heads, xp), _lin(x_dst, p["lin.weight"], None, heads, xp)
    return _lin(x_src, p["lin_src.weight"], None, heads, xp), _lin(x_dst, p["lin_dst.weight"], None, heads, xp)


def _leaky(x: Array, slope: float, xp: Namespace) -> Array:
    return xp.where(x >= 0, x, x * slope)


def edge_logits(p: Mapping[str, Array], hs: Array, hd: Array, ef: Array | None, heads: int, negative_slope: float, xp: Namespace) -> Array:
    """Per-edge scores ``s (..., H)`` from the gathered projections ``hs`` (sources) and ``hd`` (targets),
    ``(..., H, C)``, and raw edge features ``ef (..., F)`` (None without edge features).

    Logits past the dtype's range (bounded by ``C max|att| (max|hs| + max|hd| + F max|W_e| max|ef|)``)
    come back one dtype wider (see :mod:`.overflow`), so their softmax is exact, never NaN.
    """
    if overflow.concrete(xp, (hs, hd, ef)):
        att = max(overflow.max_abs(p[n]) for n in ("att", "att_src", "att_dst", "att_edge") if n in p)
        ef_bound = overflow.product_bound(ef, p["lin_edge.weight"], int(ef.shape[-1])) if ef is not None else 0.0
        bound = int(hs.shape[-1]) * att * (overflow.max_abs(hs) + overflow.max_abs(hd) + ef_bound)
        hs, hd, ef = overflow.widen_if_at_risk(xp, (hs, hd, ef), names="query, key", bounds=(bound,))
    ew = _lin(ef, p["lin_edge.weight"], None, heads, xp) if ef is not None else None
    if "att" in p:  # GATv2
        z = hs + hd if ew is None else hs + hd + ew
        return xp.sum(_leaky(z, negative_slope, xp) * p["att"], axis=-1)
    s = xp.sum(hs * p["att_src"], axis=-1) + xp.sum(hd * p["att_dst"], axis=-1)
    if ew is not None:
        s = s + xp.sum(ew * p["att_edge"], axis=-1)
    return _leaky(s, negative_slope, xp)


def aggregate(scores: Array, messages: Array, dst: Any, num_dst: int, xp: Namespace) -> tuple[Array, Array]:
    """``(alpha (E, H), out (num_dst, H, C))``: the segment softmax of ``scores (E, H)`` over each target's
    incoming edges and the weighted sums of ``messages (E, H, C)``; a target without edges gets zeros."""
    alpha = segment_softmax(scores, dst, num_dst, xp)
    return alpha, segment_sum(alpha[..., None] * messages, dst, num_dst, xp)


def finish(p: Mapping[str, Array], agg: Array, x_dst: Array, concat: bool, xp: Namespace) -> Array:
    """``(..., H, C)`` -> heads concatenated ``(..., H*C)`` or averaged ``(..., C)``, plus the residual
    ``x_dst W_res^T`` (when ``res.weight`` is present) and the bias (when ``bias`` is)."""
    h, c = agg.shape[-2], agg.shape[-1]  # known from the weights even in an exported graph
    # the width spelled out, not -1: with no rows (an empty query) -1 is ambiguous
    out = reshape_lead(agg, agg.ndim - 2, (-1,) if h is None or c is None else (int(h) * int(c),), xp) if concat else xp.mean(agg, axis=-2)
    if "res.weight" in p:
        out = out + x_dst @ xp.matrix_transpose(p["res.weight"])
    if "bias" in p:
        out = out + p["bias"]
    return out


def index(idx: np.ndarray, like: Array, xp: Namespace) -> Array:
    """Host indices on ``like``'s device (int64)."""
    if is_torch(xp):
        import torch

        return torch.as_tensor(idx, device=like.device)
    return xp.asarray(idx, device=array_api_compat.device(like))
