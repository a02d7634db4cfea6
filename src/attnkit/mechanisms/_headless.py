"""Input handling shared by the head-less mechanisms (hyperbolic, mixed-curvature, mixture-of-experts).

Layout (DESIGN.md): ``q: (..., Lq, D)`` or a single query ``(D,)`` (read as ``Lq = 1`` and squeezed
back by the caller), ``keys: (..., Lk, D)``, ``values: (..., Lk, Dv)``; leading dimensions broadcast.
``keys``/``values`` default to the query (self-attention). The spec's flat keys (``Lk*D``) and values
(``Lk*Dv``) are accepted. Masks are ``(..., Lq, Lk)``, or ``(..., Lk)`` for a single query.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import array_api_compat
import numpy as np

from .._array import Array, Namespace, as_float_array, check_finite, common_float_dtype, compute_dtype, namespace, shape_str
from .._array import broadcast_shapes as _bshapes
from .._array import length as _dim
from ..errors import ShapeError
from ..kernels.masks import prepare_mask

__all__ = ["HeadlessInputs", "prepare_headless"]


@dataclasses.dataclass
class HeadlessInputs:
    """Validated head-less inputs in the compute dtype, and how to give the result back."""

    xp: Namespace
    q: Array
    k: Array
    v: Array
    mask: Array | None
    out_dtype: Any
    single: bool
    batch: tuple[int, ...]

    def finish(self, out: Array) -> Array:
        """A result ``(..., Lq, X)`` -> the caller's dtype, with the query axis dropped for a single query."""
        if out.dtype != self.out_dtype:
            out = self.xp.astype(out, self.out_dtype)
        return out[..., 0, :] if self.single else out


def _unflatten(x: Array, name: str, per: int, what: str, xp: Namespace) -> Array:
    n = _dim(x.shape[0])
    if per == 0 or n == 0 or n % per:
        raise ShapeError(f"{name}: a flat array needs a length that is a positive multiple of {what} = {per}, got {n}")
    return xp.reshape(x, (n // per, per) if name == "key" else (per, n // per))


def prepare_headless(
    q: Any,
    keys: Any,
    values: Any,
    mask: Any,
    *,
    dim: int,
    check: bool = True,
    values_width: int | None = None,
    compute: Callable[[Namespace, Any], Any] = compute_dtype,
) -> HeadlessInputs:
    """Validate ``q, keys, values, mask`` for a head-less mechanism of width ``dim``.

    ``values_width`` requires ``Dv`` (values in the same space as the keys); ``compute`` maps the
    result dtype to the dtype of the computation (default: NumPy half precision -> float32).
    """
    if keys is None and values is not None:
        raise ShapeError("key: expected an array of keys when value is given, got None")
    xp = namespace(q, keys, values)
    qa = as_float_array(q, "query", xp)
    if qa.ndim < 1 or qa.shape[-1] != dim:
        raise ShapeError(f"query: expected shape (..., Lq, dim = {dim}) or ({dim},), got {shape_str(qa.shape)}")
    single = qa.ndim == 1
    if single:
        qa = xp.expand_dims(qa, axis=0)
    ka = qa if keys is None else as_float_array(keys, "key", xp)
    va = ka if values is None else as_float_array(values, "value", xp)
    if ka.ndim == 1:
        ka = _unflatten(ka, "key", dim, "dim", xp)
    if va.ndim == 1 and ka.ndim >= 2:
        va = _unflatten(va, "value", _dim(ka.shape[-2]), "Lk", xp)
    if ka.ndim < 2 or ka.shape[-1] != dim:
        raise ShapeError(f"key: expected shape (..., Lk, dim = {dim}), got {shape_str(ka.shape)}")
    if ka.shape[-2] == 0:
        raise ShapeError("key: expected at least one key (Lk >= 1), got an empty key set")
    if va.ndim < 2 or va.shape[-2] != ka.shape[-2] or va.shape[-1] < 1:
        raise ShapeError(f"value: expected shape (..., Lk = {ka.shape[-2]}, Dv >= 1), got {shape_str(va.shape)}")
    if values_width is not None and va.shape[-1] != values_width:
        raise ShapeError(f"value: expected points of the same space as the keys, width {values_width}, got {va.shape[-1]}")
    try:
        batch = tuple(_bshapes(tuple(qa.shape[:-2]), tuple(ka.shape[:-2]), tuple(va.shape[:-2])))
    except ValueError:
        raise ShapeError(
            f"query, key, value: batch dimensions {shape_str(qa.shape[:-2])}, {shape_str(ka.shape[:-2])}, {shape_str(va.shape[:-2])} do not broadcast"
        ) from None
    if check:
        check_finite(qa, "query", xp)
        if keys is not None:
            check_finite(ka, "key", xp)
        if values is not None:
            check_finite(va, "value", xp)
    out_dtype = common_float_dtype(xp, qa, ka, va)
    cdt = compute(xp, out_dtype)
    qa, ka, va = (x if x.dtype == cdt else xp.astype(x, cdt) for x in (qa, ka, va))
    m = None
    if mask is not None:
        if single:
            if not array_api_compat.is_array_api_obj(mask):
                try:
                    mask = np.asarray(mask)
                except (ValueError, TypeError) as exc:
                    raise ShapeError(f"mask: expected a rectangular array ({exc})") from exc
            if mask.ndim < 1:
                raise ShapeError(f"mask: expected shape (..., Lk = {ka.shape[-2]}) for a single query, got a scalar")
            mask = array_api_compat.array_namespace(mask).expand_dims(mask, axis=-2)
        target = (*batch, _dim(qa.shape[-2]), _dim(ka.shape[-2]))
        m = prepare_mask(mask, xp, target, cdt, device=array_api_compat.device(qa), layout="(..., Lq, Lk)")
    return HeadlessInputs(xp=xp, q=qa, k=ka, v=va, mask=m, out_dtype=out_dtype, single=single, batch=batch)
