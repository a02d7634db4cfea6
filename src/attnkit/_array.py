"""Array helpers: namespace lookup, dtype policy, shape, finiteness and option validation.

attnkit computes in the caller's array library through the Python array API
(``array_api_compat``). NumPy arrays, plain Python sequences and scalars go to NumPy; torch, JAX,
CuPy and Dask arrays stay in their library and on their device.

Dtype policy: float32 and float64 compute as given. NumPy float16 computes in float32 and is cast
back; other libraries compute half precision as given. Integer, bool, complex and object input is a
:class:`~attnkit.errors.DTypeError` (a ``TypeError``).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import math
import numbers
import sys
from collections.abc import Mapping, Sequence
from typing import Any, overload

import array_api_compat
import numpy as np

from .errors import ArgumentError, ConfigError, DTypeError, NonFiniteError, ShapeError

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
    "all_finite",
    "magnitude_scope",
    "note_magnitude",
    "note_alias",
    "known_magnitude",
    "numpy_view",
    "flat_view",
    "magnitude_bound_numpy",
    "exact_max_abs_numpy",
    "is_traced",
    "positive_int",
    "non_negative_int",
    "probability",
    "positive_float",
    "finite_float",
    "one_of",
    "bool_option",
    "int_option",
    "seed_option",
    "check_option",
    "option_kinds",
    "checked_options",
    "allocation_limit",
    "check_allocation",
    "is_numpy",
    "is_torch",
    "is_graph",
    "broadcast_shapes",
    "reshape_lead",
    "broadcast_lead",
    "moveaxis",
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
    if _TORCH_TENSOR is None:
        _torch_types()
    if _TORCH_TENSOR is not None and all(type(a) is _TORCH_TENSOR[0] or a is None for a in arrays):
        return _torch_namespace()  # plain torch tensors: the same, without the dispatch
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


@overload
def length(d: None) -> None: ...
@overload
def length(d: int) -> int: ...
@overload
def length(d: Any) -> int | None: ...
def length(d: Any) -> int | None:
    """An axis length as an int, or ``None`` where it is symbolic (a graph being exported).

    Typed by its argument: an ``int`` gives an ``int``, ``None`` gives ``None``; an entry of an array's
    ``shape`` (``Array`` is ``Any``) gives what the array library says.
    """
    return None if d is None else int(d)


def reshape_lead(x: Array, keep: int, tail: Sequence[int], xp: Namespace, like: Array | None = None) -> Array:
    """``reshape(x, (*like.shape[:keep], *tail))`` (``like`` defaults to ``x``): keep the first ``keep``
    axes of ``like``, give the rest the shape ``tail``.

    Works when kept axes are symbolic (``None``, a graph being exported): one unknown becomes ``-1``;
    more read the graph's dynamic shape.
    """
    like = x if like is None else like
    lead = tuple(like.shape[:keep])
    unknown = sum(d is None for d in lead)
    if unknown == 0:
        return xp.reshape(x, (*lead, *tail))
    if unknown == 1 and -1 not in tail:
        return xp.reshape(x, tuple(-1 if d is None else int(d) for d in lead) + tuple(tail))
    if like is x:
        kept = _graph_reshape_keep(x, keep, tail)
        if kept is not None:
            return kept
    dyn = like.dynamic_shape[:keep]  # ndonnx: the runtime shape as an int64 array
    return xp.reshape(x, xp.concat([dyn, xp.asarray(list(tail), dtype=dyn.dtype)]))


def _graph_reshape_keep(x: Array, keep: int, tail: Sequence[int]) -> Array | None:
    """ndonnx: ONNX ``Reshape(x, [0]*keep + tail)`` with ``allowzero=0`` (a 0 copies the input's axis), so
    shape inference keeps the kept axes' symbols and the tail's lengths (a shape read from the graph
    at run time would leave every axis unknown, and a later shape check could not read the tail).
    ``None`` where this ndonnx has another layout (the caller then reads the run-time shape)."""
    if any(int(t) == 0 for t in tail):
        return None
    try:
        from ndonnx._typed_array import onnx as typed
    except ImportError:  # pragma: no cover - another ndonnx layout
        return None
    ty: Any = getattr(x, "_tyarray", None)
    var = getattr(ty, "_var", None)
    if var is None:  # pragma: no cover - not a plain tensor
        return None
    shape = typed.op.const(np.array([0] * keep + [int(t) for t in tail], dtype=np.int64))
    return type(x)._from_tyarray(type(ty)(typed.op.reshape(var, shape, allowzero=False)))


def moveaxis(x: Array, source: int, destination: int, xp: Namespace) -> Array:
    """``xp.moveaxis(x, source, destination)`` with both axes made non-negative (``axis % x.ndim``).

    The same result; but a graph exporter that copies the axes into a permutation (torch.onnx's
    TorchScript exporter writes ``Transpose(perm=[1, -3, 2])`` for ``movedim(x, -3, -2)``) then writes a
    valid one: ONNX requires ``perm`` entries in ``[0, rank)``.
    """
    n = x.ndim
    return xp.moveaxis(x, int(source) % n, int(destination) % n)


def broadcast_lead(arrays: Sequence[Array], tails: Sequence[int], xp: Namespace) -> list[Array]:
    """Broadcast the leading (batch) axes of ``arrays`` together, keeping the last ``tails[i]`` axes of each.

    ``ValueError`` when the leading shapes do not broadcast. Symbolic lengths (``None``, a graph being
    exported) take the batch shape from the graph at run time.
    """
    leads = [tuple(x.shape[: x.ndim - t]) for x, t in zip(arrays, tails, strict=True)]
    batch = broadcast_shapes(*leads)
    if not any(d is None for x in arrays for d in x.shape):
        return [xp.broadcast_to(x, (*batch, *x.shape[x.ndim - t :])) for x, t in zip(arrays, tails, strict=True)]
    if not batch:
        return list(arrays)
    # one element of each array's batch (its feature axes indexed at 0), broadcast: the batch's run-time shape
    stubs = xp.broadcast_arrays(*(x[(...,) + (0,) * t] for x, t in zip(arrays, tails, strict=True)))
    dyn = stubs[0].dynamic_shape
    return [xp.broadcast_to(x, xp.concat([dyn, x.dynamic_shape[x.ndim - t :]])) for x, t in zip(arrays, tails, strict=True)]


def broadcast_shapes(*shapes: Sequence[int | None]) -> tuple[Any, ...]:
    """``np.broadcast_shapes`` in plain Python (``ValueError`` when they do not broadcast).

    The result's entries are ``int``, or ``None`` for a symbolic length while a graph is exported
    (typed ``Any`` so that the eager code, where every length is an ``int``, reads them as ints).

    ``torch.compile`` traces plain integer arithmetic, where NumPy's version is opaque to it. An unknown
    (``None``, symbolic: a graph being exported) length broadcasts against anything and stays unknown
    unless a known length other than 1 meets it.
    """
    if shapes and all(s == shapes[0] for s in shapes[1:]) and None not in shapes[0]:
        return tuple(shapes[0])  # equal shapes (the common case)
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


def as_float_array(x: Any, name: str, xp: Namespace | None = None) -> Array:
    """Return ``x`` as a floating array of ``xp`` (NumPy for Python sequences).

    Raises ``DTypeError`` for integer, bool, complex or object data and ``ShapeError`` for ragged
    sequences.
    """
    if type(x) is np.ndarray and x.dtype.kind == "f" and x.dtype != np.longdouble:
        return x
    if _TORCH_TENSOR is not None and type(x) is _TORCH_TENSOR[0] and x.dtype.is_floating_point and x.layout is _TORCH_TENSOR[2]:
        return x  # a dense float torch tensor (plain type: not a subclass, such as a nested or fake tensor)
    if x is None:
        raise ShapeError(f"{name}: expected an array, got None")
    if isinstance(x, np.ndarray):  # subclasses (masked arrays, matrix, memmap) and longdouble
        return _plain_numpy(x, name, xp)
    if not _is_array(x) or isinstance(x, np.generic):
        if isinstance(x, (str, bytes)):
            raise DTypeError(f"{name}: expected a float array, got {type(x).__name__}")
        if isinstance(x, bool) or (isinstance(x, np.generic) and x.dtype.kind == "b"):
            raise DTypeError(f"{name}: expected a float array, got bool")
        if isinstance(x, Mapping) or not isinstance(x, (Sequence, numbers.Number, np.generic)):
            raise DTypeError(f"{name}: expected an array or a nested list of numbers, got {type(x).__name__}")
        try:
            arr = np.asarray(x, dtype=np.float32) if not isinstance(x, np.generic) else np.asarray(x)
        except OverflowError as exc:  # a Python int beyond float range
            raise NonFiniteError(f"{name}: expected finite values, found a number too large for a float ({exc})") from None
        except TypeError as exc:  # complex, strings or other objects among the numbers
            raise DTypeError(f"{name}: expected real numbers ({exc})") from None
        except ValueError as exc:
            raise ShapeError(f"{name}: expected a rectangular array of numbers ({exc})") from None
        if arr.dtype.kind != "f":
            raise DTypeError(f"{name}: expected a float array, got {arr.dtype}")
        if arr.dtype == np.longdouble:
            arr = arr.astype(np.float64)
        # a Python sequence given beside arrays of another library joins that library
        return arr if xp is None or is_numpy(xp) else xp.asarray(arr)
    if is_torch(xp or namespace(x)) and getattr(x, "layout", None) is not None and str(x.layout) != "torch.strided":
        x = x.to_dense()  # a sparse tensor: attention reads every element, so compute on the dense form
    xp = xp or namespace(x)
    dtype = x.dtype
    if not xp.isdtype(dtype, "real floating"):
        raise DTypeError(f"{name}: expected a float dtype (float16/bfloat16/float32/float64), got {_dtype_name(dtype)}")
    return x


def _plain_numpy(x: np.ndarray, name: str, xp: Namespace | None) -> Array:
    """A NumPy array subclass or a longdouble array as a plain float array (:func:`as_float_array`).

    A masked array (``numpy.ma``) with masked entries is refused: attnkit masks attention with ``mask=``,
    and which value a masked entry stands for is not known; without masked entries its data is used.
    ``longdouble`` computes in float64 (the widest type BLAS and every array library share).
    """
    if isinstance(x, np.ma.MaskedArray):
        hidden = np.ma.getmaskarray(x)
        if hidden.any():
            at = tuple(int(i) for i in np.argwhere(hidden)[0])
            raise DTypeError(
                f"{name}: expected a plain array, got a masked array with {int(hidden.sum())} masked entries "
                f"(first at {at}); fill them (x.filled(value)) or mask attention with mask="
            )
        x = np.ma.getdata(x)
    arr = np.asarray(x)
    if arr.dtype.kind != "f":  # object arrays too: their elements may be anything
        raise DTypeError(f"{name}: expected a float dtype (float16/float32/float64), got {arr.dtype}")
    if arr.dtype == np.longdouble:
        arr = arr.astype(np.float64)
    return arr if xp is None or is_numpy(xp) else xp.asarray(arr)


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


_TORCH_COMPILER: Any = None


def torch_compiling() -> bool:
    """Whether ``torch.compile`` (dynamo) is tracing this call (never imports torch itself).

    ``torch.compiler`` is looked up once torch is loaded (every eager forward asks a dozen times);
    ``is_compiling`` is read from it at each call, so a patched one is seen.
    """
    global _TORCH_COMPILER
    compiler = _TORCH_COMPILER
    if compiler is None:
        compiler = getattr(sys.modules.get("torch"), "compiler", None)
        if getattr(compiler, "is_compiling", None) is None:  # torch not loaded (yet), or older than 2.3
            return False
        _TORCH_COMPILER = compiler
    return bool(compiler.is_compiling())


def is_traced(x: object) -> bool:
    """Whether ``x`` is a traced value whose contents are unknown while Python runs.

    True for a JAX tracer (under ``jax.jit``, ``jax.grad``, ``jax.vmap``), for an ``ndonnx`` array (a
    graph being exported, :func:`is_graph`), for any torch tensor while
    ``torch.compile`` traces (``torch.compiler.is_compiling()``), and for torch fake or meta tensors.
    A traced value cannot be converted to a Python ``bool``/``float`` and a check on it cannot raise
    inside the compiled graph, so checks on data values are skipped for it. Neither library is
    imported here: each is consulted only when already loaded (``sys.modules``).
    """
    if type(x) is np.ndarray or x is None:
        return False
    if _TORCH_TENSOR is not None and type(x) is _TORCH_TENSOR[0]:  # a plain tensor (fake tensors are a subclass)
        return bool(x.is_meta) or torch_compiling()  # type: ignore[attr-defined]
    mod = type(x).__module__
    if mod.startswith("ndonnx"):  # an ONNX graph being built (attnkit.export_onnx): no values at all
        return True
    if mod.startswith("jax") or mod.startswith("jaxlib"):
        jax = sys.modules.get("jax")
        return jax is not None and isinstance(x, jax.core.Tracer)
    if mod.startswith("torch"):
        torch = sys.modules.get("torch")
        if torch is None:  # pragma: no cover - a torch type without torch loaded
            return False
        if torch_compiling():
            return True
        if getattr(x, "is_meta", False):
            return True
        fake = sys.modules.get("torch._subclasses.fake_tensor")
        return fake is not None and isinstance(x, fake.FakeTensor)
    return False


def check_finite(x: Array, name: str, xp: Namespace) -> None:
    """Raise ``NonFiniteError`` naming ``name`` if ``x`` holds NaN or infinity.

    One pass over ``x`` that also bounds its magnitude: the bound is noted for the rest of the call
    (:func:`magnitude_scope`), where the overflow guard of the kernels (:mod:`attnkit.kernels.overflow`)
    needs ``max |x|`` and so reads ``x`` no second time. NumPy arrays and CPU float32/float64 torch
    tensors (through a shared NumPy view: a torch reduction opens a parallel region, which costs a
    scheduler time slice whenever another process holds a core) take one BLAS pass ``s = sum x^2``:
    a finite ``s`` proves every element finite and bounds ``max |x| <= sqrt(s)``; other arrays one
    ``max |x|`` reduction (NaN and infinity propagate through it).

    This is the one input check skipped on traced values (:func:`is_traced`: JAX tracers under
    ``jax.jit``/``jax.grad``, torch tensors under ``torch.compile``, fake and meta tensors): their
    values are unknown while Python runs, and a check cannot raise from inside a compiled graph.
    A concrete array used inside a traced function (a constant captured by ``jax.jit``) is skipped
    too, since its reductions are traced there. Check concrete inputs before tracing if non-finite
    values are possible.
    """
    if torch_compiling():
        return
    if type(x) is np.ndarray:
        xp = np
    elif is_graph(xp):
        return  # a graph being built (ONNX export) has no values to check
    elif is_traced(x):
        return
    memo = _MAGNITUDES.get()
    if memo is not None:
        known = memo.get(x)
        if known is not None and math.isfinite(known[0]):
            return  # a finite bound on max |x| noted in this call: every element is finite
    view = numpy_view(x)
    if view is not None:
        bound, exact = magnitude_bound_numpy(view)
        if not math.isfinite(bound):
            _raise_non_finite(view, name)
            bound, exact = exact_max_abs_numpy(view), True  # finite values whose squares overflow
    else:
        if _size(x) == 0:
            return
        m = _max_abs_reduction(x, xp)
        if is_traced(m):  # a concrete array used inside a traced function: its reduction is traced
            return
        bound, exact = float(m), True
        if not math.isfinite(bound):
            raise NonFiniteError(f"{name}: expected finite values, found NaN or infinity")
    if memo is not None:
        memo.put(x, bound, exact)


def _raise_non_finite(view: np.ndarray, name: str) -> None:
    """Raise ``NonFiniteError`` for the first non-finite element of ``view``; return if there is none
    (a sum of squares can overflow on finite values)."""
    if np.isfinite(view).all():
        return
    bad = np.argwhere(~np.isfinite(view))[0]
    raise NonFiniteError(f"{name}: expected finite values, found {float(view[tuple(bad)])} at index {tuple(int(i) for i in bad)}")


def _size(x: Array) -> int:
    return math.prod(int(s) for s in x.shape)


def _max_abs_reduction(x: Array, xp: Namespace) -> Any:
    """``max |x|`` as a 0-d array of ``xp`` (NaN where ``x`` holds NaN): torch's ``aminmax`` (one pass, no
    ``|x|`` temporary), else ``max(abs(x))``. ``x`` must not be empty."""
    if hasattr(x, "detach"):  # torch: a bound on the values only, outside autograd
        x = x.detach()
        if hasattr(x, "aminmax") and x.dtype.is_floating_point:
            lo, hi = x.aminmax()
            return xp.maximum(hi, -lo).double()
    return xp.max(xp.abs(x))


# ----------------------------------------------------------------- magnitudes: one pass per input
#
# The finiteness check and the overflow guard of the kernels both need a pass over each input: the
# first ``isfinite``, the second ``max |x|``. One pass serves both: a finite upper bound of ``max |x|``
# proves every element finite. The bound found by :func:`check_finite` is noted, keyed by the memory
# the array covers, for the rest of one mechanism call (:func:`magnitude_scope`, opened by
# ``Mechanism.forward``), and :mod:`attnkit.kernels.overflow` reads it there instead of reading the
# array again; the heads-first views the kernels see of the caller's arrays cover the same memory,
# so they find it. A :class:`~attnkit.KVCache` notes the exact maximum of the keys/values it hands
# out (kept per token as they are appended), so a decode step does not read the whole cache for it.
# A note stands for the memory's contents at the time: it relies on no array being written in place
# between its check and the end of the call (attnkit's kernels write only into arrays they allocated
# after the checks; a cache's buffers are noted after the step's append).


class _Notes:
    """The magnitudes noted in one scope: by identity (an entry holds its array, so the id is not reused),
    and by the memory read (:func:`_storage_key`), computed only when an identity lookup misses."""

    __slots__ = ("by_id", "by_key", "unkeyed", "tags")

    def __init__(self) -> None:
        self.by_id: dict[int, tuple[float, bool, Any]] = {}
        self.by_key: dict[Any, tuple[float, bool, Any]] = {}
        self.unkeyed: list[tuple[float, bool, Any]] = []
        self.tags: set[int] | None = set()  # the noted arrays' memory tags (:func:`_memory_tag`; None: one has none)

    def get(self, x: Any) -> tuple[float, bool, Any] | None:
        hit = self.by_id.get(id(x))
        if hit is not None:
            return hit
        if not self.by_id:
            return None
        if self.tags is not None:  # another tag: not worth computing memory keys for (see _memory_tag)
            tag = _memory_tag(x)
            if tag is not None and tag not in self.tags:
                return None
        for entry in self.unkeyed:  # key the entries noted so far (once each)
            key = _storage_key(entry[2])
            if key is not None:
                self.by_key[key] = entry
        self.unkeyed.clear()
        key = _storage_key(x)
        hit = self.by_key.get(key) if key is not None else None
        if hit is not None:
            self.by_id[id(x)] = hit = (hit[0], hit[1], x)  # a view of noted memory: by identity from now on
        return hit

    def put(self, x: Any, bound: float, exact: bool) -> None:
        entry = (float(bound), bool(exact), x)
        self.by_id[id(x)] = entry
        self.unkeyed.append(entry)
        if self.tags is not None:
            tag = _memory_tag(x)
            if tag is None:
                self.tags = None
            else:
                self.tags.add(tag)

    def alias(self, view: Any, base: Any) -> None:
        hit = self.by_id.get(id(base))
        if hit is not None and view is not base:
            self.by_id[id(view)] = (hit[0], hit[1], view)


_MAGNITUDES: contextvars.ContextVar[_Notes | None] = contextvars.ContextVar("attnkit_magnitudes", default=None)

#: ``sqrt`` of the smallest normal number: an element whose square underflows is below it
_SQRT_TINY = {np.dtype(np.float32): math.sqrt(float(np.finfo(np.float32).tiny)), np.dtype(np.float64): math.sqrt(float(np.finfo(np.float64).tiny))}


_TORCH_TENSOR: tuple[Any, Any, Any] | None = None


@functools.cache
def _torch_namespace() -> Namespace:
    import torch

    return array_api_compat.array_namespace(torch.empty(0))


def _torch_types() -> None:
    global _TORCH_TENSOR
    torch = sys.modules.get("torch")
    if _TORCH_TENSOR is None and torch is not None and hasattr(torch, "Tensor") and hasattr(torch, "strided"):
        _TORCH_TENSOR = (torch.Tensor, (torch.float32, torch.float64), torch.strided)


class magnitude_scope:  # noqa: N801 - used like a function: ``with magnitude_scope():``
    """Within it, :func:`note_magnitude` records the magnitudes found (nested scopes share the outer one)."""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _MAGNITUDES.set(_Notes()) if not torch_compiling() and _MAGNITUDES.get() is None else None

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _MAGNITUDES.reset(self._token)


def _memory_tag(x: Any) -> int | None:
    """A cheap tag that arrays reading the same memory usually share (``None``: none): the object owning a
    NumPy array's memory (``x.base``, which NumPy keeps pointing at the owner through views of views;
    the data pointer costs 2 us a call) and a strided torch tensor's data pointer. Only a filter before
    :func:`_storage_key`: two arrays that read the same memory under different tags (a NumPy view of a
    torch tensor) are merely not recognised, which costs a second pass, never a wrong bound."""
    if type(x) is np.ndarray:
        base = x.base
        return id(x if base is None else base)
    if _TORCH_TENSOR is not None and type(x) is _TORCH_TENSOR[0] and x.layout is _TORCH_TENSOR[2]:
        try:
            return int(x.data_ptr())
        except (RuntimeError, TypeError, ValueError, NotImplementedError):  # symbolic or storage-less tensors
            return None
    return None


def _storage_key(x: Any) -> Any:
    """The set of memory locations ``x`` reads, as a hashable key: the data pointer, dtype, device and
    the (length, stride) pairs of its axes (sorted: an axis permutation reads the same elements;
    length-1 and stride-0 axes add none). Arrays without a data pointer (JAX: immutable) key by identity."""
    if _TORCH_TENSOR is None:
        _torch_types()
    if type(x) is np.ndarray:
        ptr, pairs, tag = x.__array_interface__["data"][0], zip(x.shape, x.strides, strict=True), x.dtype
    elif _TORCH_TENSOR is not None and isinstance(x, _TORCH_TENSOR[0]):
        if x.is_nested:
            return None
        try:
            ptr, tag = x.data_ptr(), (x.dtype, x.get_device())
            return (ptr, tag, tuple(sorted(p for p in zip(x.shape, x.stride(), strict=True) if p[0] != 1 and p[1] != 0)))
        except (RuntimeError, TypeError, ValueError, NotImplementedError):  # sparse or symbolic tensors
            return None
    else:
        return ("id", id(x))
    return (ptr, tag, tuple(sorted(p for p in pairs if p[0] != 1 and p[1] != 0)))


def note_magnitude(x: Any, bound: float, exact: bool) -> None:
    """Record ``bound >= max |x|`` (``exact``: equal to it) for the rest of the :func:`magnitude_scope`;
    nothing outside one. The array is held until the scope ends, so its memory is not reused meanwhile."""
    if torch_compiling():  # nothing to note in a traced graph (and dynamo cannot trace a ContextVar)
        return
    memo = _MAGNITUDES.get()
    if memo is not None and x is not None:
        memo.put(x, bound, exact)


def note_alias(view: Any, base: Any) -> None:
    """``view`` reads the memory of ``base`` (an axis permutation or reshape of it): what was noted for
    ``base`` in this scope holds for ``view`` (found without computing either's memory)."""
    if torch_compiling():
        return
    memo = _MAGNITUDES.get()
    if memo is not None:
        memo.alias(view, base)


def known_magnitude(x: Any) -> tuple[float, bool] | None:
    """``(bound, exact)`` noted for the memory ``x`` reads in this scope, or ``None``."""
    if torch_compiling():
        return None
    memo = _MAGNITUDES.get()
    if memo is None or x is None:
        return None
    hit = memo.get(x)
    return None if hit is None else (hit[0], hit[1])


def numpy_view(x: Any) -> np.ndarray | None:
    """``x`` as a NumPy array sharing its memory when it is a NumPy array or a CPU float32/float64 torch
    tensor, else ``None``. For eager values (callers test :func:`is_traced` first)."""
    if type(x) is np.ndarray:
        return x
    if _TORCH_TENSOR is None:
        _torch_types()
    if _TORCH_TENSOR is not None and isinstance(x, _TORCH_TENSOR[0]):
        if x.dtype not in _TORCH_TENSOR[1] or x.is_cuda or x.is_meta or x.layout is not _TORCH_TENSOR[2]:
            return None
        try:
            return x.detach().numpy()
        except (RuntimeError, TypeError):  # e.g. a tensor with the negative or conjugate bit set, or not on the CPU
            return None
    return None


def flat_view(a: np.ndarray) -> np.ndarray | None:
    """A 1-D view of the elements of ``a`` (any order) where its axes can be permuted into a C-contiguous
    array (e.g. the heads-first views of a ``(B, L, H, D)`` array), else ``None``; never a copy."""
    if a.flags.c_contiguous:
        return a.reshape(-1)
    if any(s < 0 for s in a.strides):
        return None
    t = a.transpose(sorted(range(a.ndim), key=lambda i: -a.strides[i]))
    return t.reshape(-1) if t.flags.c_contiguous else None


def magnitude_bound_numpy(a: np.ndarray) -> tuple[float, bool]:
    """``(bound, exact)`` with ``bound >= max |a|`` from one pass: ``sqrt(sum a^2)`` (a BLAS dot product;
    float32/float64 arrays whose elements lie in contiguous memory), else ``max |a|`` exactly (two strided
    reductions, no copy). NaN or infinity in ``a`` gives a non-finite bound; so may squares beyond
    the dtype's range (then the caller computes ``max |a|``, :func:`exact_max_abs_numpy`).

    Why it bounds: the terms are non-negative, so every rounded partial sum is at least its largest
    rounded term ``x_i^2 (1 - u)`` (rounding is monotone), whatever the summation order of the BLAS;
    the factor ``1 + 2^-10`` covers ``u``; squares that underflow come from elements below
    ``sqrt(tiny)``, which floors the bound.
    """
    if a.size == 0:
        return 0.0, True
    flat = flat_view(a) if a.dtype in _SQRT_TINY else None
    if flat is None:
        return exact_max_abs_numpy(a), True
    s = sum_of_squares(flat)
    if not math.isfinite(s):
        return s, False
    return max(math.sqrt(s) * (1.0 + 2.0**-10), _SQRT_TINY[a.dtype]), False


def sum_of_squares(flat: np.ndarray) -> float:
    """``sum flat^2`` of a 1-D float array as one BLAS dot product: non-finite where an element is, or where
    squares pass the dtype's range (without a warning)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.dot(flat, flat))


def exact_max_abs_numpy(a: np.ndarray) -> float:
    """``max |a|`` (0 for an empty array; NaN where ``a`` holds NaN), without an ``|a|`` temporary."""
    if a.size == 0:
        return 0.0
    with np.errstate(invalid="ignore"):
        return float(max(a.max(), -a.min()))


def all_finite(x: Any) -> bool:
    """Whether every element of the eager array ``x`` is finite (one BLAS pass for NumPy / CPU torch
    float32/float64: a finite sum of squares proves it; the elementwise test only where it does not)."""
    view = numpy_view(x)
    if view is not None:
        if view.size == 0:
            return True
        flat = flat_view(view) if view.dtype in _SQRT_TINY else None
        if flat is not None and math.isfinite(sum_of_squares(flat)):  # squares past the range are not an error here
            return True
        return bool(np.isfinite(view).all())
    xp = namespace(x)
    x = x.detach() if hasattr(x, "detach") else x
    if getattr(x, "is_nested", False) is True:  # ragged: no plain size or reduction
        return bool(xp.all(xp.isfinite(x)))
    if _size(x) == 0:
        return True
    if bool(xp.isfinite(xp.sum(x))):
        return True
    return bool(xp.all(xp.isfinite(x)))


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


def bool_option(value: object, name: str) -> bool:
    """A bool option: ``True``/``False`` (or a NumPy bool) only. ``"false"``, ``0`` and ``1`` are refused,
    since ``bool("false")`` is True and an integer may be a mistyped count."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ConfigError(f"{name}: expected True or False, got {value!r}")


def int_option(value: object, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer option: Python or NumPy integers only (bools and floats, even ``2.0``, are refused),
    within ``[minimum, maximum]`` where given."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name}: expected an integer, got {type(value).__name__} {value!r}")
    v = int(value)
    if minimum is not None and v < minimum:
        raise ConfigError(f"{name}: expected an integer >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ConfigError(f"{name}: expected an integer <= {maximum}, got {v}")
    return v


def seed_option(value: object, name: str = "seed") -> int | None:
    """A random seed: ``None`` or an integer in ``[0, 2**64)`` (what ``numpy.random.default_rng`` takes)."""
    if value is None:
        return None
    return int_option(value, name, minimum=0, maximum=2**64 - 1)


#: default bound on what one option set may allocate: this fraction of the physical memory, and at most
#: :data:`_DEFAULT_ALLOC_CAP`; ``ATTNKIT_MAX_ALLOC_BYTES`` overrides both
_DEFAULT_ALLOC_FRACTION = 0.5
#: 4 GiB: far above any published attention layer (a 8192-wide multi-head layer is 1 GiB in float32)
_DEFAULT_ALLOC_CAP = 4 << 30


def allocation_limit() -> int:
    """Most bytes one mechanism (or one intermediate of one call) may allocate for its options:
    ``ATTNKIT_MAX_ALLOC_BYTES`` (bytes, e.g. ``16e9``) when set, else half of the physical memory capped at
    4 GiB (4 GiB where the memory size cannot be read). Checked by :func:`check_allocation` before anything
    is allocated, so options that cannot fit fail at once with an estimate instead of swapping or being
    killed."""
    import os

    raw = os.environ.get("ATTNKIT_MAX_ALLOC_BYTES", "").strip()
    if raw:
        try:
            value = int(float(raw))
        except (ValueError, OverflowError):
            raise ConfigError(f"ATTNKIT_MAX_ALLOC_BYTES: expected a number of bytes, got {raw!r}") from None
        if value < 1:
            raise ConfigError(f"ATTNKIT_MAX_ALLOC_BYTES: expected a positive number of bytes, got {raw!r}")
        return value
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 2 * _DEFAULT_ALLOC_CAP
    return min(int(total * _DEFAULT_ALLOC_FRACTION), _DEFAULT_ALLOC_CAP)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def check_allocation(nbytes: int | float, name: str, what: str, limit: int | None = None) -> int:
    """Refuse, before allocating, options whose memory cost ``nbytes`` exceeds ``limit`` (default
    :func:`allocation_limit`). ``name`` is the option(s) to blame and ``what`` what would be allocated,
    e.g. ``check_allocation(4 * heads * dim * dim, "heads, dim", "projection weights")``.
    Skipped while ``torch.compile`` traces (reading the memory size, ``os.sysconf``, does not trace), as
    :func:`check_finite` is; the eager call checks the same sizes."""
    if limit is None and torch_compiling():
        return int(nbytes)
    limit = allocation_limit() if limit is None else int(limit)
    if not nbytes <= limit:  # also refuses NaN
        raise ConfigError(
            f"{name}: {what} would need about {_fmt_bytes(float(nbytes))} ({nbytes:.0f} bytes), more than the "
            f"{_fmt_bytes(float(limit))} allowed (ATTNKIT_MAX_ALLOC_BYTES); choose smaller values"
        )
    return int(nbytes)


#: how each constructor option is checked, by its annotation (the registry's option table reads the same
#: annotations): ``bool`` -> :func:`bool_option`, ``int`` -> :func:`int_option`, ``int | None`` -> ``None`` or
#: an int, ``seed`` -> :func:`seed_option`. Other annotations (floats, strings, unions) are the constructor's.
_OPTION_KINDS = {"bool": "bool", "int": "int", "int|None": "int?", "Optional[int]": "int?", "None|int": "int?"}


def option_kinds(init: Any) -> dict[str, str]:
    """Option name -> kind (see :data:`_OPTION_KINDS`) from ``init``'s annotations (strings or types)."""
    kinds: dict[str, str] = {}
    for name, ann in getattr(init, "__annotations__", {}).items():
        if name == "return":
            continue
        text = ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))
        kind = _OPTION_KINDS.get(text.replace(" ", "").replace("typing.", ""))
        if name == "seed" and kind in ("int", "int?"):
            kind = "seed"
        if kind is not None:
            kinds[name] = kind
    return kinds


def check_option(kind: str, value: Any, name: str) -> Any:
    """``value`` checked as an option of ``kind`` (``bool``, ``int``, ``int?``, ``seed``); ``ConfigError`` naming ``name``."""
    if kind == "bool":
        return bool_option(value, name)
    if kind == "seed":
        return seed_option(value, name)
    if kind == "int?" and value is None:
        return None
    # a count or a length beyond int64 cannot index any array (2**70 heads is a mistake, not a size)
    return int_option(value, name, maximum=2**63 - 1)


def checked_options(init: Any) -> Any:
    """Wrap a constructor: every option is checked by its annotation's kind (:data:`_OPTION_KINDS`) before
    the body runs; a missing or unknown argument is an :class:`~attnkit.errors.ArgumentError` (a
    ``ConfigError`` and the ``TypeError`` Python raises for it).

    The one place where bool, integer and seed options are validated: every mechanism's constructor is
    wrapped when its class is defined (``Mechanism.__init_subclass__``), and the training helpers use it
    as a decorator. The body then sees only valid values.
    """
    sig = inspect.signature(init)
    kinds: dict[str, str] | None = None

    @functools.wraps(init)
    def checked(self: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal kinds
        if kinds is None:
            kinds = option_kinds(init)
        try:
            bound = sig.bind(self, *args, **kwargs)
        except TypeError as exc:
            raise ArgumentError(f"{type(self).__name__}: {exc}") from None
        for name, value in list(bound.arguments.items()):
            kind = kinds.get(name)
            if kind is not None and not (value is None and sig.parameters[name].default is None):
                bound.arguments[name] = check_option(kind, value, name)
        init(*bound.args, **bound.kwargs)  # a MemoryError no estimate foresaw stays one (the server answers 413)

    return checked


def check_scores(q: Array, k: Array, name: str = "query, key", copies: int = 3) -> None:
    """Refuse, before computing, a dense score matrix ``(..., Lq, Lk)`` of ``q (..., Lq, D)`` and ``k (..., Lk, D)``
    whose ``copies`` live arrays (scores, exponentials, probabilities) would exceed :func:`allocation_limit`.

    Reads static shapes only: skipped for symbolic lengths (a graph being exported) and while
    ``torch.compile`` traces, so it never touches data and never breaks a graph.
    """
    if torch_compiling():
        return
    qs, ks = tuple(q.shape), tuple(k.shape)
    if any(d is None for d in (*qs, *ks)):
        return
    try:
        lead = broadcast_shapes(qs[:-2], ks[:-2])
    except ValueError:
        return  # the caller reports shapes that do not broadcast
    count = float(qs[-2]) * float(ks[-2])
    for d in lead:
        count *= float(d)
    itemsize = float(getattr(getattr(q, "dtype", None), "itemsize", 4) or 4)
    check_allocation(copies * count * itemsize, name, f"the dense ({', '.join(str(int(d)) for d in (*lead, qs[-2], ks[-2]))}) attention scores")


def one_of(value: object, name: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value.lower() not in choices:
        raise ConfigError(f"{name}: expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value.lower()


def to_numpy(x: Array) -> np.ndarray:
    """Copy any array-API array to a NumPy array on the host (detaching torch tensors; torch
    bfloat16, which NumPy lacks, comes as float32).

    For output and host bookkeeping only (statistics, plots, files): computations stay in the
    caller's library and on its device.
    """
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):
        x = x.detach()
    if hasattr(x, "cpu"):
        x = x.cpu()
        if str(x.dtype) == "torch.bfloat16":  # NumPy has no bfloat16: widen (exactly) to float32
            x = x.float()
    if array_api_compat.is_array_api_strict_namespace(array_api_compat.array_namespace(x)):
        import array_api_strict

        x = x.to_device(array_api_strict.Device("CPU_DEVICE"))  # a simulated second device
    return np.asarray(x)
