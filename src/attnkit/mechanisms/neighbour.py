"""ScaledDotProduct: attention of one or many queries over their own neighbours (the spec's
``ScaledDotProduct(dim)`` with ``forward(query, keys, values, num_neighbors)``).

Shapes: ``query (..., d)``, ``keys (..., k, d)``, ``values (..., k, dv)``, ``mask (..., k)``; the output
is ``(..., dv)``. Batch dimensions broadcast: ``query (n, d)`` with ``keys (n, k, d)`` gives each query
its own neighbours; ``query (n, d)`` with ``keys (k, d)`` lets them share one key set. The spec's flat
arrays work too: ``query (d,)``, ``keys (k*d,)``, ``values (k*dv,)`` with ``num_neighbors=k``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._array import (
    Array,
    as_float_array,
    check_finite,
    common_float_dtype,
    compute_dtype,
    namespace,
    nonzero_float,
    positive_int,
    shape_str,
)
from .._array import broadcast_shapes as _bshapes
from .._array import length as _dim
from ..errors import ShapeError
from ..kernels.neighbour import neighbour_attention, neighbour_weights
from .base import Mechanism
from .registry import register

__all__ = ["ScaledDotProduct"]


@register
class ScaledDotProduct(Mechanism):
    """Scaled dot-product attention over neighbour sets; ``dim`` is the query/key width d.

    ``scale`` defaults to ``1/sqrt(dim)``; ``check_finite`` rejects NaN/inf input.
    """

    name = "scaled_dot_product"
    summary = "scaled dot-product attention of queries over their own neighbour sets"
    input_layout = "graph"  # each query over its own neighbour set: (..., D) over (..., k, D)
    key_required = True
    shape_options = {"dim": ("query", -1)}
    example_options = {"dim": 4}

    def __init__(self, dim: int, scale: float | None = None, check_finite: bool = True) -> None:
        super().__init__()
        self.dim = positive_int(dim, "dim")
        self.scale = None if scale is None else nonzero_float(scale, "scale")
        self.check_finite = bool(check_finite)

    @property
    def effective_scale(self) -> float:
        return self.scale if self.scale is not None else 1.0 / math.sqrt(self.dim)

    def _prepare(self, query: Any, keys: Any, values: Any, mask: Any, num_neighbors: int | None) -> tuple:
        if keys is None:
            raise ShapeError(f"key: expected an array of neighbours of shape (..., k, {self.dim}), got None")
        if values is None:
            values = keys
        xp = namespace(query, keys, values)
        q = as_float_array(query, "query", xp)
        k = as_float_array(keys, "key", xp)
        v = as_float_array(values, "value", xp)
        if num_neighbors is not None:
            n = positive_int(num_neighbors, "num_neighbors")
            if k.ndim == 1:
                if k.shape[0] != n * self.dim:
                    raise ShapeError(f"key: expected a flat length num_neighbors*dim = {n * self.dim}, got {k.shape[0]}")
                k = xp.reshape(k, (n, self.dim))
            if v.ndim == 1:
                if v.shape[0] == 0 or v.shape[0] % n:
                    raise ShapeError(f"value: expected a flat length that is a multiple of num_neighbors = {n}, got {v.shape[0]}")
                v = xp.reshape(v, (n, v.shape[0] // n))
            if k.shape[-2] != n:
                raise ShapeError(f"key: expected num_neighbors = {n} keys along axis -2, got {k.shape[-2]}")
        if q.ndim < 1 or q.shape[-1] != self.dim:
            raise ShapeError(f"query: expected shape (..., {self.dim}), got {shape_str(q.shape)}")
        if k.ndim < 2 or k.shape[-1] != self.dim:
            raise ShapeError(f"key: expected shape (..., k, {self.dim}), got {shape_str(k.shape)}")
        if v.ndim < 2 or v.shape[-2] != k.shape[-2]:
            raise ShapeError(f"value: expected shape (..., k={k.shape[-2]}, dv), got {shape_str(v.shape)}")
        if k.shape[-2] == 0:
            raise ShapeError("key: expected at least one neighbour (k >= 1), got an empty key set")
        try:
            lead = (tuple(q.shape[:-1]), tuple(k.shape[:-2]), tuple(v.shape[:-2]))
            batch = _bshapes(*lead) if any(lead) else ()
        except ValueError:
            raise ShapeError(
                f"query, key, value: batch dimensions {shape_str(q.shape[:-1])}, {shape_str(k.shape[:-2])}, "
                f"{shape_str(v.shape[:-2])} do not broadcast"
            ) from None
        if self.check_finite:
            check_finite(q, "query", xp)
            check_finite(k, "key", xp)
            check_finite(v, "value", xp)
        out_dtype = common_float_dtype(xp, q, k, v)
        cdt = compute_dtype(xp, out_dtype)
        q, k, v = (xp.astype(x, cdt) if x.dtype != cdt else x for x in (q, k, v))
        m = self._mask(mask, xp, (*batch, _dim(k.shape[-2])), cdt, q)
        return xp, q, k, v, m, out_dtype

    @staticmethod
    def _mask(mask: Any, xp: Any, target: tuple[int, ...], dtype: Any, like: Array) -> Array | None:
        if mask is None:
            return None
        import array_api_compat

        from ..kernels.masks import prepare_mask

        return prepare_mask(mask, xp, target, dtype, device=array_api_compat.device(like), layout="(..., k)")

    def forward(self, query: Any, key: Any = None, value: Any = None, *, mask: Any = None, num_neighbors: int | None = None) -> Array:
        """Attention output ``(..., dv)`` (a single query ``(d,)`` gives ``(dv,)``).

        ``key (..., k, d)`` are each query's neighbours, ``value (..., k, dv)`` (default ``key``);
        ``num_neighbors`` reads flat keys/values of the spec as ``k`` rows.
        """
        return self._run_forward(query, key, value, mask=mask, num_neighbors=num_neighbors)

    def attention_weights(self, query: Any, key: Any = None, *, mask: Any = None, num_neighbors: int | None = None) -> Array:
        """The softmax weights ``(..., k)`` of each query over its neighbours."""
        return self._run_weights(query, key, mask=mask, num_neighbors=num_neighbors)

    def _forward(self, params: Mapping[str, Array], query: Any, key: Any, value: Any, *, mask: Any = None, num_neighbors: int | None = None) -> Array:
        xp, q, k, v, m, out_dtype = self._prepare(query, key, value, mask, num_neighbors)
        out = neighbour_attention(q, k, v, xp=xp, scale=self.effective_scale, mask=m)
        return xp.astype(out, out_dtype) if out.dtype != out_dtype else out

    def _attention_weights(self, params: Mapping[str, Array], query: Any, key: Any, *, mask: Any = None, num_neighbors: int | None = None) -> Array:
        xp, q, k, _, m, out_dtype = self._prepare(query, key, key, mask, num_neighbors)
        w = neighbour_weights(q, k, xp=xp, scale=self.effective_scale, mask=m)
        return xp.astype(w, out_dtype) if w.dtype != out_dtype else w

    def example_inputs(self, seq_len: int = 8, rng: np.random.Generator | None = None) -> tuple[np.ndarray, ...]:
        """``seq_len`` queries sharing ``seq_len`` neighbours (a natural 'sequence' for benchmarks)."""
        rng = rng or np.random.default_rng()
        q = rng.standard_normal((seq_len, self.dim), dtype=np.float32)
        k = rng.standard_normal((seq_len, self.dim), dtype=np.float32)
        v = rng.standard_normal((seq_len, self.dim), dtype=np.float32)
        return (q, k, v)
