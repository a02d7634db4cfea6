"""Input handling shared by the sequence mechanisms (flash, linear, local-global, ...).

Layout (DESIGN.md): ``layout="bshd"`` (the default) is ``q: (..., Lq, H, D)``, ``k: (..., Lk, H, D)``,
``v: (..., Lk, H, Dv)``; ``layout="bhsd"`` (torch's SDPA layout) is ``q: (..., H, Lq, D)`` and so on, and
the result comes back in the same layout. Leading dimensions broadcast. A 1-D input of length
``L*H*D`` (the spec's flat ``Float32Array``, read in the given layout) is accepted and the result comes
back flat; a flat mask of length ``Lq*Lk`` is read as ``(Lq, Lk)``. Internally kernels see the
heads-first layout ``(..., H, L, D)`` in the compute dtype: ``bhsd`` inputs reach them as they are
(no transpose, no copy), ``bshd`` inputs as transposed views.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import array_api_compat

from .._array import Array, Namespace, as_float_array, check_finite, common_float_dtype, compute_dtype, length, moveaxis, namespace, shape_str
from .._array import broadcast_shapes as _bshapes
from ..errors import ShapeError
from ..kernels.masks import prepare_mask, unflatten_mask

__all__ = ["SequenceInputs", "prepare_sequence", "LAYOUTS", "layout_option"]

#: the input layouts: batch dims, then sequence / heads / head dim in this order
LAYOUTS = ("bshd", "bhsd")


def layout_option(value: object) -> str:
    """The ``layout`` option: ``"bshd"`` (``(..., L, H, D)``) or ``"bhsd"`` (``(..., H, L, D)``, torch's)."""
    from .._array import one_of

    return one_of(value, "layout", LAYOUTS)


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
    layout: str = "bshd"

    @property
    def lq(self) -> int | None:
        return length(self.q.shape[-2])

    @property
    def lk(self) -> int | None:
        return length(self.k.shape[-2])

    def finish(self, out: Array) -> Array:
        """Heads-first ``(..., H, Lq, Dv)`` result -> caller layout (``(..., Lq, H, Dv)`` for ``bshd``), dtype and flatness."""
        xp = self.xp
        if self.layout == "bshd":
            out = moveaxis(out, -3, -2, xp)
        if out.dtype != self.out_dtype:
            out = xp.astype(out, self.out_dtype)
        if self.flat:
            out = xp.reshape(out, (-1,))
        return out


def _unflatten(x: Array, name: str, heads: int, dim: int, xp: Namespace, layout: str = "bshd") -> Array:
    n = int(x.shape[0])
    per = heads * dim
    if n == 0 or n % per:
        raise ShapeError(f"{name}: a flat input needs a length that is a positive multiple of heads*dim = {per}, got {n}")
    return xp.reshape(x, (heads, n // per, dim) if layout == "bhsd" else (n // per, heads, dim))


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
    layout: str = "bshd",
) -> SequenceInputs:
    """Validate ``q, k, v, mask`` for a sequence mechanism with ``heads`` heads of width ``dim``.

    ``k`` and ``v`` default to ``q`` (self-attention). ``dim=None`` accepts any head width.
    ``same_length`` requires ``Lq == Lk`` (mechanisms defined on one sequence). ``grouped`` lets
    keys and values have ``Hkv`` heads where ``Hkv`` divides ``heads`` (grouped-query attention;
    multi-query with ``Hkv = 1``); query head ``h`` then uses key/value head ``h // (heads / Hkv)``.
    A flat key/value is then read with the query's ``heads``. ``layout``: ``"bshd"`` or ``"bhsd"``
    (see the module docstring).
    """
    bhsd = layout == "bhsd"
    hax, lax = (-3, -2) if bhsd else (-2, -3)  # the heads axis and the sequence axis
    form = f"(..., H={heads}, L, D)" if bhsd else f"(..., L, H={heads}, D)"
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
        q = _unflatten(q, "query", heads, d, xp, layout)
        if not self_attention:
            k = _unflatten(k, "key", heads, d, xp, layout) if k.ndim == 1 else k
            v = _unflatten(v, "value", heads, d, xp, layout) if v.ndim == 1 else v
    if self_attention:  # one array serves as q, k and v: converted, reshaped and checked once
        k = v = q
    for name, x in (("query", q), ("key", k), ("value", v)):
        if x.ndim < 3:
            raise ShapeError(f"{name}: expected shape {form} (layout {layout!r}) or a flat array, got {shape_str(x.shape)}")
        if name == "query" or not grouped:
            if x.shape[hax] != heads:
                raise ShapeError(
                    f"{name}: expected H = heads = {heads} along axis {hax} (layout {layout!r}), got {x.shape[hax]} (shape {shape_str(x.shape)})"
                )
        elif x.shape[hax] == 0 or heads % x.shape[hax]:
            raise ShapeError(
                f"{name}: expected a number of key/value heads that divides heads = {heads} along axis {hax} "
                f"(grouped-query attention, layout {layout!r}), got {x.shape[hax]} (shape {shape_str(x.shape)})"
            )
    if v.shape[hax] != k.shape[hax]:
        raise ShapeError(f"value: expected {k.shape[hax]} heads (as key) along axis {hax}, got {v.shape[hax]} (shape {shape_str(v.shape)})")
    if dim is not None and q.shape[-1] != dim:
        raise ShapeError(f"query: expected head dim D = dim = {dim} along the last axis, got {q.shape[-1]} (shape {shape_str(q.shape)})")
    if k.shape[-1] != q.shape[-1]:
        raise ShapeError(f"key: expected head dim {q.shape[-1]} (as query) along the last axis, got {k.shape[-1]}")
    if v.shape[lax] != k.shape[lax]:
        raise ShapeError(f"value: expected Lk = {k.shape[lax]} (as key) along axis {lax}, got {v.shape[lax]}")
    if k.shape[lax] == 0:
        raise ShapeError("key: expected at least one key (Lk >= 1), got an empty key set")
    if same_length and k.shape[lax] != q.shape[lax]:
        raise ShapeError(f"key: expected Lk = Lq = {q.shape[lax]}, got {k.shape[lax]}")
    try:
        batch = _bshapes(tuple(q.shape[:-3]), tuple(k.shape[:-3]), tuple(v.shape[:-3]))
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
    if bhsd:
        qh, kh, vh = (xp.astype(x, cdt) if x.dtype != cdt else x for x in (q, k, v))
    else:
        qh, kh, vh = (moveaxis(xp.astype(x, cdt) if x.dtype != cdt else x, -3, -2, xp) for x in (q, k, v))
    lq, lk = length(q.shape[lax]), length(k.shape[lax])
    if flat:
        mask = unflatten_mask(mask, lq, lk)
    target = (*batch, heads, lq, lk)
    pm = prepare_mask(mask, xp, target, cdt, device=device)
    return SequenceInputs(xp=xp, q=qh, k=kh, v=vh, mask=pm, out_dtype=out_dtype, flat=flat, device=device, layout=layout)
