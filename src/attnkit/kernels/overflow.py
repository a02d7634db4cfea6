"""Large finite inputs never turn into NaN: a cheap range check and a wider re-run, shared by the kernels.

Softmax attention ``softmax(s) v`` with ``s = scale q k^T`` is well defined for every finite input: the
weights depend only on the differences ``s_j - max_i s_i`` and the output is a convex combination of
value rows, so ``|out| <= max |v|``. A float32 kernel can still produce NaN: ``q, k ~ 1e20`` give
logits ``~1e40`` that overflow to ``inf`` and ``inf - inf = NaN``; values near the float32 maximum
overflow the running sum ``sum_j p_j v_j`` (up to ``L_k max|v|``) although the normalised result fits.

The remedy here is the one of mixed-precision BLAS (Higham, "Accuracy and Stability of Numerical
Algorithms", 2nd ed., 2002, section 3.1: a wider accumulator): bound the intermediates a priori,

    |s_ij| <= scale * ||q_i|| ||k_j|| <= scale * D * max|q| * max|k|        (Cauchy-Schwarz)
    |sum_j p_j v_j| <= L_k * max|v|                                           (0 <= p_j <= 1)

and only when a bound comes within :data:`MARGIN` of the dtype's largest finite value run the same
kernel on inputs cast one step wider (float16/bfloat16 -> float32 -> float64), then cast the result back.
Casting up is exact, so the result is the correctly computed one rounded to the caller's dtype; if it
does not fit there (it cannot happen for a convex combination of finite values but can for a
learned output projection) :class:`~attnkit.errors.NonFiniteError` names the input. The check costs
two reductions over ``q``, ``k`` and ``v`` (O(L D) against the O(L^2 D) of attention) and the fast
path is otherwise untouched, bit for bit.

Values whose contents are unknown while Python runs (:func:`attnkit._array.is_traced`: ``jax.jit``,
``torch.compile``, ONNX export) are not checked: there the kernels run unchanged, as in eager mode for
inputs in range (see :func:`at_risk`).

float64 inputs have no wider type: where their logits would overflow (``|q| |k| > ~1e150``),
:func:`raise_out_of_range` names the inputs instead of returning NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .._array import Array, Namespace, is_graph, is_traced
from ..errors import NonFiniteError

__all__ = [
    "MARGIN",
    "max_abs",
    "concrete",
    "dtype_max",
    "wider_dtype",
    "at_risk",
    "product_bound",
    "run_wider",
    "widen_if_at_risk",
    "raise_out_of_range",
    "safe_logsumexp",
]

#: a bound within ``finfo.max / MARGIN`` counts as overflowing: room for the additive mask and ALiBi
#: biases, the differences ``s - max s`` (twice the bound) and the ``log2(e)`` factor of exp2 kernels
MARGIN = 2.0**16


def max_abs(x: Array | None) -> float:
    """``max |x|`` as a Python float (0 for ``None`` or an empty array); eager arrays only."""
    if x is None:
        return 0.0
    if type(x) is np.ndarray:
        if x.size == 0:
            return 0.0
        return float(max(x.max(), -x.min()))
    size = math.prod(int(s) for s in x.shape)
    if size == 0:
        return 0.0
    from .._array import namespace

    xp = namespace(x)
    return float(xp.max(xp.abs(x)))


def dtype_max(dtype: Any) -> float:
    """The largest finite value of a floating dtype of any array library."""
    name = str(dtype).rsplit(".", 1)[-1]
    if name == "bfloat16":
        return 3.3895313892515355e38
    return float(np.finfo(np.dtype(name)).max)


def wider_dtype(xp: Namespace, dtype: Any) -> Any | None:
    """The next wider floating dtype of ``xp`` (``float16``/``bfloat16`` -> ``float32`` -> ``float64``), or ``None``."""
    name = str(dtype).rsplit(".", 1)[-1]
    if name in ("float16", "bfloat16"):
        return xp.float32
    if name == "float32":
        return getattr(xp, "float64", None)
    return None


def concrete(xp: Namespace, arrays: Sequence[Array | None]) -> bool:
    """Whether every array has values now (not traced, not a graph being exported), so they can be checked."""
    if is_graph(xp):
        return False
    return not any(a is not None and is_traced(a) for a in arrays)


def product_bound(a: Array, b: Array, inner: int, scale: float = 1.0) -> float:
    """A priori bound on ``|scale * a_i . b_j|``: ``|scale| * inner * max|a| * max|b|`` (computed without overflow)."""
    ma, mb = max_abs(a), max_abs(b)
    if ma == 0.0 or mb == 0.0:
        return 0.0
    # in logarithms: the product itself may exceed the float64 range
    return math.exp(min(709.0, math.log(abs(scale) or 1.0) + math.log(max(inner, 1)) + math.log(ma) + math.log(mb)))


def at_risk(
    xp: Namespace,
    dtype: Any,
    *,
    logits: tuple[Array, Array, int, float] | None = None,
    values: tuple[Array, int] | None = None,
    bounds: Sequence[float] = (),
) -> bool:
    """Whether a softmax-attention kernel in ``dtype`` could overflow on these (eager) inputs.

    ``logits = (q, k, D, scale)`` bounds ``|scale q.k|`` (:func:`product_bound`); ``values = (v, Lk)``
    bounds the weighted sum ``Lk max|v|``; ``bounds``: further bounds already computed. Traced or
    graph inputs give ``False`` (no check is possible there).
    """
    arrays: list[Array | None] = []
    if logits is not None:
        arrays += [logits[0], logits[1]]
    if values is not None:
        arrays.append(values[0])
    if not concrete(xp, arrays):
        return False
    limit = dtype_max(dtype) / MARGIN
    if logits is not None and product_bound(logits[0], logits[1], logits[2], logits[3]) > limit:
        return True
    if values is not None and max_abs(values[0]) * max(int(values[1]), 1) > limit:
        return True
    return any(bd > limit for bd in bounds)


def raise_out_of_range(names: str, dtype: Any) -> None:
    """Raise :class:`NonFiniteError`: the inputs ``names`` are too large for any dtype this backend computes in."""
    raise NonFiniteError(
        f"{names}: expected magnitudes whose products fit {str(dtype).rsplit('.', 1)[-1]} (the largest finite value is "
        f"{dtype_max(dtype):.3g}; no wider type is available to compute the logits in), got values that overflow it"
    )


def run_wider(fn: Callable[..., Array], xp: Namespace, arrays: Sequence[Array | None], *, dtype: Any, names: str, output: str = "value") -> Array:
    """``fn(*arrays)`` computed on the floating ``arrays`` cast one step wider, the result cast back to ``dtype``.

    Raises :class:`NonFiniteError` naming ``names`` when no wider dtype exists and naming ``output``
    when the result does not fit ``dtype``.
    """
    cast = _cast_wider(xp, arrays, dtype, names)
    out = xp.astype(fn(*cast), dtype)
    if not bool(xp.all(xp.isfinite(out))):
        raise NonFiniteError(
            f"{output}: the attention output does not fit {str(dtype).rsplit('.', 1)[-1]} (largest finite value "
            f"{dtype_max(dtype):.3g}); pass the inputs in a wider dtype"
        )
    return out


def _cast_wider(xp: Namespace, arrays: Sequence[Array | None], dtype: Any, names: str) -> list[Any]:
    wide = wider_dtype(xp, dtype)
    if wide is None:
        raise_out_of_range(names, dtype)
    cast = [a if a is None or not xp.isdtype(a.dtype, "real floating") else xp.astype(a, wide) for a in arrays]
    if any(a is not None and c.dtype == a.dtype == dtype for a, c in zip(arrays, cast, strict=True)):
        raise_out_of_range(names, dtype)  # e.g. JAX without jax_enable_x64: float64 arrays stay float32
    return cast


def widen_if_at_risk(
    xp: Namespace,
    arrays: Sequence[Array | None],
    *,
    names: str,
    logits: tuple[Array, Array, int, float] | None = None,
    values: tuple[Array, int] | None = None,
    bounds: Sequence[float] = (),
) -> list[Any]:
    """``arrays`` cast one dtype wider when :func:`at_risk` says the computation would overflow, else as given.

    For code that already casts its result to the caller's dtype at the end: everything computed from
    the widened arrays runs in the wider dtype.
    """
    first = next(a for a in arrays if a is not None)
    if not at_risk(xp, first.dtype, logits=logits, values=values, bounds=bounds):
        return list(arrays)
    return _cast_wider(xp, arrays, first.dtype, names)


def safe_logsumexp(s: Array, xp: Namespace, axis: int = -1, keepdims: bool = False) -> Array:
    """``log sum_j exp(s_j)`` along ``axis`` without overflow: ``m + log sum_j exp(s_j - m)``, ``m = max_j s_j``.

    A row of ``-inf`` gives ``-inf``; the shift is exact, so any finite row gives a finite result up
    to the dtype's range.
    """
    m = xp.max(s, axis=axis, keepdims=True)
    m_safe = xp.where(xp.isinf(m), xp.zeros_like(m), m)
    out = m_safe + xp.log(xp.sum(xp.exp(s - m_safe), axis=axis, keepdims=True))
    return out if keepdims else xp.squeeze(out, axis=axis)
