"""Input handling shared by the sequence mechanisms (flash, linear, local-global, ...).

Layout (DESIGN.md): ``q: (..., Lq, H, D)``, ``k: (..., Lk, H, D)``, ``v: (..., Lk, H, Dv)``; leading
dimensions broadcast. A 1-D input of length ``L*H*D`` (the spec's flat ``Float32Array``) is accepted
and the result comes back flat; a flat mask of length ``Lq*Lk`` is read as ``(Lq, Lk)``.
Internally kernels see the heads-first layout ``(..., H, L, D)`` in the compute dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import array_api_compat
import numpy as np

from .._array import Array, Namespace, as_float_array, check_finite, common_float_dtype, compute_dtype, namespace, shape_str
from ..errors import ShapeError
from ..kernels.masks import prepare_mask, unflatten_mask

__all__ = ["SequenceInputs", "prepare_sequence"]


@dataclasses.dataclass
class SequenceInputs:
    """Validated sequence inputs in heads-first layout, and how to give the result back."""

    xp: Namespace
    q: Array
    k: Array
    v: Array
    mask: Array | None
    out_dtype: Any
    flat: bool
    device: Any

    @property
    def lq(self) -> int:
        return int(self.q.shape[-2])

    @property
    def lk(self) -> int:
        return int(self.k.shape[-2])

    def finish(self, out: Array) -> Array:
        """Heads-first ``(..., H, Lq, Dv)`` result -> caller layout ``(..., Lq, H, Dv)``, dtype and flatness."""
        xp = self.xp
        out = xp.moveaxis(out, -3, -2)
        if out.dtype != self.out_dtype:
            out = xp.astype(out, self.out_dtype)
        if self.flat:
            out = xp.reshape(out, (-1,))
        return out


def _unflatten(x: Array, name: str, heads: int, dim: int, xp: Namespace) -> Array:
    n = int(x.shape[0])
    per = heads * dim
    if n == 0 or n % per:
        raise ShapeError(f"{name}: a flat input needs a length that is a positive multiple of heads*dim = {per}, got {n}")
    return xp.reshape(x, (n // per, heads, dim))


def prepare_sequence(
    q: Any,
    k: Any,
    v: Any,
    mask: Any,
    *,
    heads: int,
    dim: int | None,
    check: bool = True,
    same_length: bool = False,
    grouped: bool = False,
) -> SequenceInputs:
    """Validate ``q, k, v, mask`` for a sequence mechanism with ``heads`` heads of width ``dim``.

    ``k`` and ``v`` default to ``q`` (self-attention). ``dim=None`` accepts any head width.
    ``same_length`` requires ``Lq == Lk`` (mechanisms defined on one sequence). ``grouped`` lets
    keys and values have ``Hkv`` heads where ``Hkv`` divides ``heads`` (grouped-query attention;
    multi-query with ``Hkv = 1``); query head ``h`` then uses key/value head ``h // (heads / Hkv)``.
    A flat key/value is then read with the query's ``heads``.
    """
    self_attention = k is None and v is None
    if not self_attention and (k is None or v is None):
        raise ShapeError("key, value: pass both keys and values, or neither (self-attention)")
    xp = namespace(q, k, v)
    q = as_float_array(q, "query", xp)
    if not self_attention:
        k = as_float_array(k, "key", xp)
        v = as_float_array(v, "value", xp)
    flat = q.ndim == 1
    if flat:
        d = dim or q.shape[0] // heads
        q = _unflatten(q, "query", heads, d, xp)
        if not self_attention:
            k = _unflatten(k, "key", heads, d, xp) if k.ndim == 1 else k
            v = _unflatten(v, "value", heads, d, xp) if v.ndim == 1 else v
    if self_attention:  # one array serves as q, k and v: converted, reshaped and checked once
        k = v = q
    for name, x in (("query", q), ("key", k), ("value", v)):
        if x.ndim < 3:
            raise ShapeError(f"{name}: expected shape (..., L, H={heads}, D) or a flat array, got {shape_str(x.shape)}")
        if name == "query" or not grouped:
            if x.shape[-2] != heads:
                raise ShapeError(f"{name}: expected H = heads = {heads} along axis -2, got {x.shape[-2]} (shape {shape_str(x.shape)})")
        elif x.shape[-2] == 0 or heads % x.shape[-2]:
            raise ShapeError(
                f"{name}: expected a number of key/value heads that divides heads = {heads} along axis -2 "
                f"(grouped-query attention), got {x.shape[-2]} (shape {shape_str(x.shape)})"
            )
    if v.shape[-2] != k.shape[-2]:
        raise ShapeError(f"value: expected {k.shape[-2]} heads (as key) along axis -2, got {v.shape[-2]} (shape {shape_str(v.shape)})")
    if dim is not None and q.shape[-1] != dim:
        raise ShapeError(f"query: expected head dim D = dim = {dim} along the last axis, got {q.shape[-1]} (shape {shape_str(q.shape)})")
    if k.shape[-1] != q.shape[-1]:
        raise ShapeError(f"key: expected head dim {q.shape[-1]} (as query) along the last axis, got {k.shape[-1]}")
    if v.shape[-3] != k.shape[-3]:
        raise ShapeError(f"value: expected Lk = {k.shape[-3]} (as key) along axis -3, got {v.shape[-3]}")
    if k.shape[-3] == 0:
        raise ShapeError("key: expected at least one key (Lk >= 1), got an empty key set")
    if same_length and k.shape[-3] != q.shape[-3]:
        raise ShapeError(f"key: expected Lk = Lq = {q.shape[-3]}, got {k.shape[-3]}")
    try:
        batch = np.broadcast_shapes(tuple(q.shape[:-3]), tuple(k.shape[:-3]), tuple(v.shape[:-3]))
    except ValueError:
        raise ShapeError(
            f"query, key, value: batch dimensions {shape_str(q.shape[:-3])}, {shape_str(k.shape[:-3])}, {shape_str(v.shape[:-3])} do not broadcast"
        ) from None
    if check:
        # each distinct array once (q is k is v in self-attention; k is v is common)
        check_finite(q, "query", xp)
        if k is not q:
            check_finite(k, "key", xp)
        if v is not q and v is not k:
            check_finite(v, "value", xp)
    out_dtype = common_float_dtype(xp, q, k, v)
    cdt = compute_dtype(xp, out_dtype)
    device = array_api_compat.device(q)
    qh, kh, vh = (xp.moveaxis(xp.astype(x, cdt) if x.dtype != cdt else x, -3, -2) for x in (q, k, v))
    lq, lk = int(q.shape[-3]), int(k.shape[-3])
    if flat:
        mask = unflatten_mask(mask, lq, lk)
    target = (*batch, heads, lq, lk)
    pm = prepare_mask(mask, xp, target, cdt, device=device)
    return SequenceInputs(xp=xp, q=qh, k=kh, v=vh, mask=pm, out_dtype=out_dtype, flat=flat, device=device)
