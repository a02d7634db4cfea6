"""Array helpers: namespace lookup, dtype policy, shape, finiteness and option validation.

attnkit computes in the caller's array library through the Python array API
(``array_api_compat``). NumPy arrays, plain Python sequences and scalars go to NumPy; torch, JAX,
CuPy and Dask arrays stay in their library and on their device.

Dtype policy: float32 and float64 compute as given. NumPy float16 computes in float32 and is cast
back; other libraries compute half precision as given. Integer, bool, complex and object input is a
:class:`~attnkit.errors.DTypeError` (a ``TypeError``).
"""

from __future__ import annotations

import numbers
import sys
from collections.abc import Sequence
from typing import Any

import array_api_compat
import numpy as np

from .errors import ConfigError, DTypeError, NonFiniteError, ShapeError

Array = Any
Namespace = Any

__all__ = [
    "Array",
    "Namespace",
    "namespace",
    "as_float_array",
    "common_float_dtype",
    "compute_dtype",
    "check_finite",
    "positive_int",
    "non_negative_int",
    "probability",
    "positive_float",
    "finite_float",
    "one_of",
    "is_numpy",
    "is_torch",
    "is_graph",
    "broadcast_shapes",
    "reshape_lead",
    "length",
    "to_numpy",
    "shape_str",
]


def _is_array(x: object) -> bool:
    return array_api_compat.is_array_api_obj(x)


_NUMPY_NS = array_api_compat.array_namespace(np.empty(0))


def namespace(*arrays: object) -> Namespace:
    """The array-API namespace shared by ``arrays`` (``None`` and Python sequences count as NumPy)."""
    if all(type(a) is np.ndarray or a is None for a in arrays):
        return _NUMPY_NS  # the common case, without array_api_compat's dispatch cost
    real = [a for a in arrays if a is not None and _is_array(a) and not isinstance(a, np.generic)]
    if not real:
        return _NUMPY_NS
    try:
        return array_api_compat.array_namespace(*real)
    except TypeError as exc:  # arrays from two libraries
        kinds = sorted({type(a).__module__.split(".")[0] + "." + type(a).__name__ for a in real})
        raise DTypeError(f"inputs mix array libraries ({', '.join(kinds)}); pass arrays of one library") from exc


def is_numpy(xp: Namespace) -> bool:
    return xp is _NUMPY_NS or array_api_compat.is_numpy_namespace(xp)


def is_torch(xp: Namespace) -> bool:
    return array_api_compat.is_torch_namespace(xp)


def is_graph(xp: Namespace) -> bool:
    """Whether ``xp`` builds a graph instead of computing (``ndonnx``, used by :func:`attnkit.export_onnx`).

    Values are unknown there and lengths may be symbolic (``None`` in ``shape``): kernels take their
    whole-sequence (non-tiled) form, so no Python loop over tiles is unrolled for one length, and
    checks that read values (finiteness) are skipped.
    """
    return array_api_compat.is_ndonnx_namespace(xp)


def length(d: Any) -> int | None:
    """An axis length as an int, or ``None`` where it is symbolic (a graph being exported)."""
    return None if d is None else int(d)


def reshape_lead(x: Array, keep: int, tail: Sequence[int], xp: Namespace) -> Array:
    """``reshape(x, (*x.shape[:keep], *tail))``: keep the first ``keep`` axes, give the rest the shape ``tail``.

    Works when kept axes are symbolic (``None``, a graph being exported): one unknown becomes ``-1``;
    more read the graph's dynamic shape.
    """
    lead = tuple(x.shape[:keep])
    unknown = sum(d is None for d in lead)
    if unknown == 0:
        return xp.reshape(x, (*lead, *tail))
    if unknown == 1 and -1 not in tail:
        return xp.reshape(x, tuple(-1 if d is None else int(d) for d in lead) + tuple(tail))
    dyn = x.dynamic_shape[:keep]  # ndonnx: the runtime shape as an int64 array
    return xp.reshape(x, xp.concat([dyn, xp.asarray(list(tail), dtype=dyn.dtype)]))


def broadcast_shapes(*shapes: Sequence[int | None]) -> tuple[int | None, ...]:
    """``np.broadcast_shapes`` in plain Python (``ValueError`` when they do not broadcast).

    ``torch.compile`` traces plain integer arithmetic, where NumPy's version is opaque to it. An unknown
    (``None``, symbolic: a graph being exported) length broadcasts against anything and stays unknown
    unless a known length other than 1 meets it.
    """
    ndim = 0
    for s in shapes:
        ndim = max(ndim, len(s))
    out: list[int | None] = [1] * ndim
    unknown = [False] * ndim
    for s in shapes:
        for i, d in enumerate(s, start=ndim - len(s)):
            if d is None:
                unknown[i] = True
                continue
            d = int(d)
            if d != 1 and out[i] not in (1, d):
                raise ValueError(f"shapes {[tuple(x) for x in shapes]} do not broadcast")
            if d != 1:
                out[i] = d
    return tuple(None if unknown[i] and out[i] == 1 else out[i] for i in range(ndim))


def _dtype_name(dtype: object) -> str:
    return str(dtype).replace("torch.", "")


def as_float_array(x: object, name: str, xp: Namespace | None = None) -> Array:
    """Return ``x`` as a floating array of ``xp`` (NumPy for Python sequences).

    Raises ``DTypeError`` for integer, bool, complex or object data and ``ShapeError`` for ragged
    sequences.
    """
    if type(x) is np.ndarray and x.dtype.kind == "f":
        return x
    if x is None:
        raise ShapeError(f"{name}: expected an array, got None")
    if not _is_array(x) or isinstance(x, np.generic):
        if isinstance(x, (str, bytes)):
            raise DTypeError(f"{name}: expected a float array, got {type(x).__name__}")
        if isinstance(x, bool) or (isinstance(x, np.generic) and x.dtype.kind == "b"):
            raise DTypeError(f"{name}: expected a float array, got bool")
        try:
            arr = np.asarray(x, dtype=np.float32) if not isinstance(x, np.generic) else np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise ShapeError(f"{name}: expected a rectangular array of numbers ({exc})") from exc
        if arr.dtype.kind != "f":
            raise DTypeError(f"{name}: expected a float array, got {arr.dtype}")
        # a Python sequence given beside arrays of another library joins that library
        return arr if xp is None or is_numpy(xp) else xp.asarray(arr)
    xp = xp or namespace(x)
    dtype = x.dtype
    if not xp.isdtype(dtype, "real floating"):
        raise DTypeError(f"{name}: expected a float dtype (float16/bfloat16/float32/float64), got {_dtype_name(dtype)}")
    return x


def common_float_dtype(xp: Namespace, *arrays: Array) -> Any:
    """The floating dtype all ``arrays`` promote to (the result dtype of the computation)."""
    present = [a for a in arrays if a is not None]
    first = present[0].dtype
    if all(a.dtype == first for a in present[1:]):
        return first
    return xp.result_type(*present)


def compute_dtype(xp: Namespace, dtype: Any) -> Any:
    """The dtype attnkit computes in for a result of ``dtype`` (NumPy half -> float32)."""
    if is_numpy(xp) and dtype == np.float16:
        return np.float32
    return dtype


def torch_compiling() -> bool:
    """Whether ``torch.compile`` (dynamo) is tracing this call (never imports torch itself)."""
    is_compiling = getattr(getattr(sys.modules.get("torch"), "compiler", None), "is_compiling", None)  # torch >= 2.3
    return is_compiling is not None and bool(is_compiling())


def check_finite(x: Array, name: str, xp: Namespace) -> None:
    """Raise ``NonFiniteError`` naming ``name`` if ``x`` holds NaN or infinity.

    Skipped while ``torch.compile`` traces (:func:`torch_compiling`): the check branches on the
    array's values, which a traced graph cannot (``fullgraph=True`` would fail, and otherwise the
    graph would break at every input); eager calls of the same module still check.
    """
    if torch_compiling():
        return
    if type(x) is np.ndarray:
        xp = np
    elif is_graph(xp):
        return  # a graph being built (ONNX export) has no values to check
    elif is_torch(xp) and x.device.type == "cpu" and str(x.dtype) in ("torch.float32", "torch.float64"):
        # the NumPy check on a shared view: each torch reduction opens a parallel region, which
        # costs a scheduler time slice whenever another process holds a core
        try:
            x, xp = x.detach().numpy(), np
        except (RuntimeError, TypeError):  # e.g. a tensor with the negative bit set
            pass
    if xp is np or is_numpy(xp):
        # one BLAS pass without a temporary mask: a finite sum of squares proves every element
        # finite; only a non-finite one (NaN/inf present, or an overflow) needs the elementwise check
        if x.size and not np.isfinite(np.vdot(x, x)) and not np.isfinite(x).all():
            bad = np.argwhere(~np.isfinite(x))[0]
            raise NonFiniteError(f"{name}: expected finite values, found {float(x[tuple(bad)])} at index {tuple(int(i) for i in bad)}")
        return
    # one reduction first (a finite sum proves every element finite; NaN/inf or an overflow falls
    # through to the elementwise check): torch's isfinite + all costs 10-100x more
    if bool(xp.isfinite(xp.sum(x))):
        return
    if not bool(xp.all(xp.isfinite(x))):
        raise NonFiniteError(f"{name}: expected finite values, found NaN or infinity")


def shape_str(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("?" if s is None else str(int(s)) for s in shape) + ")"


def _real_number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    return float(value)


def positive_int(value: object, name: str) -> int:
    """``value`` as an int >= 1, or ``ConfigError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ConfigError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def non_negative_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise ConfigError(f"{name}: expected a non-negative integer, got {value!r}")
    return int(value)


def probability(value: object, name: str) -> float:
    """A dropout-like probability in [0, 1)."""
    p = _real_number(value, name)
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"{name}: expected a value in [0, 1), got {value!r}")
    return p


def positive_float(value: object, name: str) -> float:
    f = _real_number(value, name)
    if not (f > 0.0 and np.isfinite(f)):
        raise ConfigError(f"{name}: expected a finite number > 0, got {value!r}")
    return f


def finite_float(value: object, name: str) -> float:
    f = _real_number(value, name)
    if not np.isfinite(f):
        raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    return f


def nonzero_float(value: object, name: str) -> float:
    """A finite number other than 0 (an attention ``scale``), or ``ConfigError``."""
    f = finite_float(value, name)
    if f == 0.0:
        raise ConfigError(f"{name}: expected a non-zero number, got 0")
    return f


def non_negative_float(value: object, name: str) -> float:
    """A finite number >= 0 (a learning rate, a weight decay, a slope), or ``ConfigError``."""
    f = finite_float(value, name)
    if f < 0:
        raise ConfigError(f"{name}: expected a number >= 0, got {value!r}")
    return f


def one_of(value: object, name: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value.lower() not in choices:
        raise ConfigError(f"{name}: expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value.lower()


def to_numpy(x: Array) -> np.ndarray:
    """Copy any array-API array to a NumPy array on the host (detaching torch tensors)."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):
        x = x.detach()
    if hasattr(x, "cpu"):
        x = x.cpu()
    return np.asarray(x)
