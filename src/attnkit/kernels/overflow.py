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
learned output projection) :class:`~attnkit.errors.NonFiniteError` names the input. The check first
uses upper bounds of ``max |x|`` (:func:`abs_bound`): those the input check of the same call found in
its one pass over ``q``, ``k``, ``v`` (``sqrt(sum x^2)``, see :func:`attnkit._array.check_finite`), or
one BLAS pass each (O(L D) against the O(L^2 D) of attention); only where they do not clear the limit
does it compute ``max |x|`` itself. A :class:`~attnkit.KVCache` supplies the exact maximum of its keys
and values, kept per token, so a decode step reads only the new ones. The decision is the one the
exact maxima give, and the fast path is otherwise untouched, bit for bit.

Values whose contents are unknown while Python runs (:func:`attnkit._array.is_traced`: ``jax.jit``,
``torch.compile``, ONNX export) are not checked: there the kernels run unchanged, as in eager mode for
inputs in range (see :func:`at_risk`).

float64 inputs have no wider type: where their logits would overflow (``|q| |k| > ~1e150``),
:func:`raise_out_of_range` names the inputs instead of returning NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import numpy as np

from .._array import (
    Array,
    Namespace,
    all_finite,
    exact_max_abs_numpy,
    is_graph,
    is_traced,
    known_magnitude,
    magnitude_bound_numpy,
    magnitude_scope,
    note_magnitude,
    numpy_view,
)
from ..errors import NonFiniteError

__all__ = [
    "MARGIN",
    "max_abs",
    "abs_bound",
    "concrete",
    "dtype_max",
    "wider_dtype",
    "at_risk",
    "product_bound",
    "run_wider",
    "widen_if_at_risk",
    "finite_or_wider",
    "note_convex_combination",
    "can_widen",
    "pow2_at_least",
    "rescale_factors",
    "times_gain",
    "raise_out_of_range",
    "safe_logsumexp",
]

#: a bound within ``finfo.max / MARGIN`` counts as overflowing: room for the additive mask and ALiBi
#: biases, the differences ``s - max s`` (twice the bound) and the ``log2(e)`` factor of exp2 kernels
MARGIN = 2.0**16


def max_abs(x: Array | None) -> float:
    """``max |x|`` as a Python float (0 for ``None`` or an empty array); eager arrays only.

    Where this call already found it (:func:`attnkit._array.known_magnitude`), it is not recomputed.
    """
    if x is None:
        return 0.0
    known = known_magnitude(x)
    if known is not None and known[1]:
        return known[0]
    value = _max_abs(x)
    note_magnitude(x, value, True)
    return value


def _max_abs(x: Array) -> float:
    if type(x) is np.ndarray:
        return exact_max_abs_numpy(x)
    size = math.prod(int(s) for s in x.shape)
    if size == 0:
        return 0.0
    from .._array import namespace

    if hasattr(x, "detach"):  # torch: a bound on the values only, outside autograd
        x = x.detach()
        if hasattr(x, "aminmax") and x.dtype.is_floating_point:
            # one pass and no |x| temporary (half the time of max(abs(x))); one device sync for both ends
            import torch

            lo_f, hi_f = torch.stack(x.aminmax()).double().tolist()
            return max(hi_f, -lo_f)

    xp = namespace(x)
    return float(xp.max(xp.abs(x)))


def abs_bound(x: Array | None) -> float:
    """An upper bound on ``max |x|`` from at most one pass (0 for ``None``): the one this call noted (the
    input check's, :func:`attnkit._array.check_finite`), else ``sqrt(sum x^2)`` for NumPy / CPU torch
    float32/float64 arrays (one BLAS pass, :func:`attnkit._array.magnitude_bound_numpy`), else
    :func:`max_abs`. Never below ``max |x|``; where it is not finite it is ``max |x|`` itself."""
    if x is None:
        return 0.0
    known = known_magnitude(x)
    if known is not None and (known[1] or math.isfinite(known[0])):
        return known[0]
    view = numpy_view(x)
    if view is not None:
        bound, exact = magnitude_bound_numpy(view)
        if math.isfinite(bound):
            note_magnitude(x, bound, exact)
            return bound
    return max_abs(x)


def note_convex_combination(out: Array, v: Array, lk: int) -> None:
    """Note ``max|v| * max(Lk, 2)`` as a bound of ``max|out|`` (:func:`attnkit._array.note_magnitude`) for the
    result of a softmax-weighted average over ``Lk`` rows of ``v`` computed with :func:`at_risk` false:
    exactly ``|out| <= max|v|``, and rounding adds at most ``(Lk + 2) u`` relative. The guard bounded
    ``Lk max|v|`` within the dtype, so the note is finite and the output check of the call
    (:func:`finite_or_wider`) need not read ``out``. Nothing is noted where ``max|v|`` is unknown."""
    known = known_magnitude(v)
    if known is not None and math.isfinite(known[0]) and not is_traced(out):
        note_magnitude(out, known[0] * max(int(lk), 2), False)


_DTYPE_MAX: dict[Any, float] = {}


def dtype_max(dtype: Any) -> float:
    """The largest finite value of a floating dtype of any array library (remembered per dtype: every
    eager forward asks, and ``str(dtype)`` + ``finfo`` cost microseconds)."""
    key = (type(dtype), dtype)  # the type first: dtypes of two libraries are never compared with each other
    try:
        return _DTYPE_MAX[key]
    except (KeyError, TypeError):  # not seen yet, or a dtype object that cannot be hashed
        pass
    name = str(dtype).rsplit(".", 1)[-1]
    value = 3.3895313892515355e38 if name == "bfloat16" else float(np.finfo(np.dtype(name)).max)
    try:
        if len(_DTYPE_MAX) < 64:
            _DTYPE_MAX[key] = value
    except TypeError:
        pass
    return value


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
    return _product(max_abs(a), max_abs(b), inner, scale)


def _product(ma: float, mb: float, inner: int, scale: float) -> float:
    """``|scale| * inner * ma * mb`` in logarithms (the product itself may exceed the float64 range);
    non-decreasing in ``ma`` and ``mb``."""
    if ma == 0.0 or mb == 0.0:
        return 0.0
    # in logarithms: the product itself may exceed the float64 range
    return math.exp(min(709.0, math.log(abs(scale) or 1.0) + math.log(max(inner, 1)) + math.log(ma) + math.log(mb)))


def at_risk(
    xp: Namespace,
    dtype: Any,
    *,
    logits: tuple[Array, Array, Any, float] | None = None,
    values: tuple[Array, Any] | None = None,
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
    if any(bd > limit for bd in bounds):
        return True

    def over(magnitude: Callable[[Array], float]) -> bool:
        if logits is not None and _product(magnitude(logits[0]), magnitude(logits[1]), int(logits[2]), logits[3]) > limit:
            return True
        return values is not None and magnitude(values[0]) / limit * max(int(values[1]), 1) > 1.0

    # first with upper bounds of max|x| (one pass each, or none where the input check found them): the
    # test only grows with them, so "in range" is final; otherwise it is decided on max|x| itself
    return over(abs_bound) and over(max_abs)


def raise_out_of_range(names: str, dtype: Any) -> NoReturn:
    """Raise :class:`NonFiniteError`: the inputs ``names`` are too large for any dtype this backend computes in."""
    raise NonFiniteError(
        f"{names}: expected magnitudes whose products fit {str(dtype).rsplit('.', 1)[-1]} (the largest finite value is "
        f"{dtype_max(dtype):.3g}; no wider type is available to compute the logits in), got values that overflow it"
    )


def run_wider(fn: Callable[..., Array], xp: Namespace, arrays: Sequence[Array | None], *, dtype: Any, names: str) -> Array:
    """``fn(*arrays)`` computed on the floating ``arrays`` cast one step wider, the result cast back to ``dtype``.

    Raises :class:`NonFiniteError` naming ``names`` when no wider dtype exists. A softmax-weighted
    average of finite values always fits ``dtype``; a non-finite result can only come from non-finite
    inputs (an overflowed projection upstream), which the mechanism's :func:`finite_or_wider` handles.
    """
    cast = _cast_wider(xp, arrays, dtype, names)
    with np.errstate(over="ignore"):
        return xp.astype(fn(*cast), dtype)


def _cast_wider(xp: Namespace, arrays: Sequence[Array | None], dtype: Any, names: str) -> list[Any]:
    wide = wider_dtype(xp, dtype)
    if wide is None:
        raise_out_of_range(names, dtype)
    cast = [a if a is None or not xp.isdtype(a.dtype, "real floating") else xp.astype(a, wide) for a in arrays]
    if any(a is not None and c is not None and c.dtype == a.dtype == dtype for a, c in zip(arrays, cast, strict=True)):
        raise_out_of_range(names, dtype)  # e.g. JAX without jax_enable_x64: float64 arrays stay float32
    return cast


def widen_if_at_risk(
    xp: Namespace,
    arrays: Sequence[Array | None],
    *,
    names: str,
    logits: tuple[Array, Array, Any, float] | None = None,
    values: tuple[Array, Any] | None = None,
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


def can_widen(xp: Namespace, dtype: Any) -> bool:
    """Whether ``xp`` computes in a dtype wider than ``dtype`` (JAX without ``jax_enable_x64`` has no float64)."""
    wide = wider_dtype(xp, dtype)
    if wide is None:
        return False
    return bool(xp.astype(xp.zeros((1,), dtype=dtype), wide).dtype == wide)


def pow2_at_least(x: float) -> float:
    """The smallest power of two ``>= x`` (``1.0`` for ``x <= 1``); dividing by it is exact."""
    if not x > 1.0:
        return 1.0
    m, e = math.frexp(x)  # x = m 2^e, 0.5 <= m < 1
    return math.ldexp(1.0, e - 1 if m == 0.5 else e)


def rescale_factors(q: Array, k: Array, v: Array | None, *, scale: float, lk: int, dtype: Any) -> tuple[float, float, float]:
    """Powers of two ``(a, b, c)`` for computing attention in ``dtype`` from ``q/a``, ``k/b``, ``v/c``.

    The logits become ``s = a b s'`` with ``s' = scale (q/a) . (k/b)``, ``|s'| <= |scale| D`` (as
    ``|q/a|, |k/b| <= 1``); the softmax needs only ``a b (s'_j - max s')``, which
    :func:`times_gain` forms without overflow; the output is ``c`` times the attention over ``v/c``.
    Each factor is 1 where its input is in range. Raises :class:`NonFiniteError` when even the
    rescaled logits overflow (``|scale| D`` itself beyond the dtype).
    """
    limit = dtype_max(dtype) / MARGIN
    d = int(q.shape[-1])
    a = b = 1.0
    if product_bound(q, k, d, scale) > limit:
        a, b = pow2_at_least(max_abs(q)), pow2_at_least(max_abs(k))
        if abs(scale) * d > limit:
            raise_out_of_range("query, key (and scale)", dtype)
    c = 1.0
    if v is not None and max_abs(v) / limit * max(lk, 1) > 1.0:  # divided first: max|v| Lk may exceed float64
        c = pow2_at_least(max_abs(v) / limit * max(lk, 1))
    return a, b, c


def times_gain(x: Array, gain: Sequence[float], xp: Namespace) -> Array:
    """``x * prod(gain)`` for powers of two ``gain`` whose product may exceed the dtype: ``x`` is first
    clipped to ``+-max / prod(gain)`` (computed factor by factor), so the result saturates at the
    largest finite value (``exp`` of which is 0 or ``tanh`` of which is +-1, as of the exact value)
    instead of overflowing; ``-inf`` stays ``-inf``-like (``-max``). ``gain = ()`` returns ``x``."""
    if not gain:
        return x
    big = dtype_max(x.dtype)
    bound = big
    for g in gain:
        bound = bound / g
    out = xp.clip(x, min=-bound, max=bound)
    for g in gain:
        out = out * g
    return out


def _proven_finite(x: Any) -> bool:
    """Whether this call noted a finite bound of ``max|x|`` (a kernel's :func:`note_convex_combination`)."""
    known = known_magnitude(x)
    return known is not None and math.isfinite(known[0])


def _all_finite(x: Any) -> bool:
    return all_finite(x)


def finite_or_wider(run: Callable[..., Array], args: Sequence[Any], kwargs: dict[str, Any], *, names: str, rerun: bool = True) -> Array:
    """``run(*args, **kwargs)``, recomputed one dtype wider when its (eager) result is not finite.

    The last line of defence of every mechanism's ``forward``: an intermediate the kernels do not
    bound (a projection, a linear-attention state, an expert's mix) can overflow the dtype for
    large finite inputs. The result is then recomputed with the floating inputs cast wider and cast
    back; if it still does not fit, or nothing wider exists, :class:`NonFiniteError` names
    ``names`` instead of returning inf or NaN. Costs one ``isfinite`` pass over the output.
    ``rerun=False`` (a call with side effects, such as filling a KV cache): the error at once.
    The call runs in a :func:`attnkit._array.magnitude_scope`: the magnitudes its input checks find
    serve its overflow guards.
    """
    with magnitude_scope():
        return _finite_or_wider(run, args, kwargs, names=names, rerun=rerun)


def _finite_or_wider(run: Callable[..., Array], args: Sequence[Any], kwargs: dict[str, Any], *, names: str, rerun: bool) -> Array:
    out = run(*args, **kwargs)
    if not hasattr(out, "dtype") or is_traced(out) or _proven_finite(out) or _all_finite(out):
        return out
    from .._array import namespace

    xp = namespace(out)
    floating = [a for a in [*args, *kwargs.values()] if hasattr(a, "dtype") and hasattr(a, "shape") and not isinstance(a, (str, bytes))]
    if any(is_traced(a) for a in floating) or not all(_all_finite(a) for a in floating if xp.isdtype(a.dtype, "real floating")):
        return out  # non-finite inputs (checks turned off): not an overflow of ours
    dtype = out.dtype
    if not rerun:
        raise NonFiniteError(
            f"{names}: the result overflows {str(dtype).rsplit('.', 1)[-1]} (largest finite value {dtype_max(dtype):.3g}); "
            "this call has side effects (a KV cache step) so it is not recomputed wider: pass the inputs in a wider dtype"
        )
    if not can_widen(xp, dtype):
        raise NonFiniteError(
            f"{names}: the result overflows {str(dtype).rsplit('.', 1)[-1]} (largest finite value {dtype_max(dtype):.3g}) "
            "and no wider dtype is available; expected smaller inputs"
        )
    wide = wider_dtype(xp, dtype)

    def up(a: Any) -> Any:
        if hasattr(a, "dtype") and hasattr(a, "shape") and xp.isdtype(a.dtype, "real floating") and a.dtype == dtype:
            return xp.astype(a, wide)
        return a

    res = run(*(up(a) for a in args), **{k: up(v) for k, v in kwargs.items()})
    with np.errstate(over="ignore"):
        res = xp.astype(res, dtype)
    if not _all_finite(res):
        raise NonFiniteError(
            f"{names}: the result does not fit {str(dtype).rsplit('.', 1)[-1]} (largest finite value {dtype_max(dtype):.3g}); "
            "pass the inputs in a wider dtype or smaller"
        )
    return res


def safe_logsumexp(s: Array, xp: Namespace, axis: int = -1, keepdims: bool = False) -> Array:
    """``log sum_j exp(s_j)`` along ``axis`` without overflow: ``m + log sum_j exp(s_j - m)``, ``m = max_j s_j``.

    A row of ``-inf`` gives ``-inf``; the shift is exact, so any finite row gives a finite result up
    to the dtype's range.
    """
    m = xp.max(s, axis=axis, keepdims=True)
    m_safe = xp.where(xp.isinf(m), xp.zeros_like(m), m)
    out = m_safe + xp.log(xp.sum(xp.exp(s - m_safe), axis=axis, keepdims=True))
    return out if keepdims else xp.squeeze(out, axis=axis)
