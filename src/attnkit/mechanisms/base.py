"""What every mechanism shares: lifecycle, memory info, benchmark, batch, async and stream forms.

A mechanism is a small stateful object (options, weights, a seeded random generator for dropout)
around stateless kernels. ``forward`` is the one thing each subclass defines; ``forward_batch``,
``forward_async`` and ``forward_stream`` are built on it here and return exactly what ``forward``
returns for the same inputs.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import inspect
import math
import os
import statistics
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import array_api_compat
import numpy as np

from .._array import Array, check_allocation, checked_options, is_traced, namespace, option_kinds, shape_str, to_numpy, torch_compiling
from ..errors import ConfigError, DisposedError, ShapeError
from ..kernels.overflow import finite_or_wider

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Mechanism", "MemoryInfo", "BenchmarkResult", "LAYOUTS", "cast_params"]


@dataclasses.dataclass(frozen=True)
class MemoryInfo:
    """Memory held by a mechanism (the spec's ``MemoryInfo``).

    ``heap_used``: bytes of the arrays this object holds (weights, cached attention weights);
    ``heap_total``: the resident set size of the process, in bytes; ``param_count``: learned parameters.
    """

    heap_used: int
    heap_total: int
    param_count: int


@dataclasses.dataclass(frozen=True)
class BenchmarkResult:
    """A real timing of ``forward`` (the spec's ``BenchmarkResult``).

    ``latency_ms``: median wall time of one forward; ``ops_per_second``: forwards per second
    (1000 / latency_ms); ``throughput_gbps``: bytes of inputs and output moved per second, in GB/s;
    ``simd_enabled``: whether NumPy's SIMD dispatch was on and the mechanism was allowed to use it.
    """

    ops_per_second: float
    latency_ms: float
    throughput_gbps: float
    simd_enabled: bool


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover - non-Linux
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


#: the input layouts a mechanism can declare (see :attr:`Mechanism.input_layout`)
LAYOUTS = ("sequence", "model", "headless", "graph")


class Mechanism:
    """Base class of attnkit's attention mechanisms: the one contract every mechanism keeps.

    **Calling.** ``forward(query, key=None, value=None, *, mask=None, **extras)`` under those names
    (``extras`` are a mechanism's own keyword-only arguments, such as ``positions=``), and, where
    the mechanism has them, ``attention_weights(query, key=None, *, mask=None, **extras)``: the
    attention probabilities for those inputs. Liveness is checked here, once, for every entry point.

    **Parameters.** Learned (or drawn) arrays live in ``self._params`` as NumPy arrays, under the
    names :meth:`param_shapes` declares. A subclass computes only through
    ``_forward(params, query, key, value, *, mask, **extras)`` (and ``_attention_weights``), which
    read parameters from ``params``, never from ``self._params``: so
    :func:`attnkit.functional_call` runs the same code with any parameter arrays (torch tensors that
    require grad, JAX tracers), and nothing in the mechanism changes.

    **Metadata** (class attributes, read by the CLI, the server, the SDK and the tests instead of
    guessing):

    * ``name`` (registry key) and ``summary`` (one line);
    * ``input_layout``: ``"sequence"`` (``query (..., Lq, H, D)``, ``key (..., Lk, H, D)``, ``value (..., Lk,
      H, Dv)``), ``"model"`` (``(..., L, E)`` like ``torch.nn.MultiheadAttention(batch_first=True)``),
      ``"headless"`` (``(..., Lq, D)`` or one query ``(D,)`` over ``(..., Lk, D)``) or ``"graph"``
      (the neighbour form: each target node or query ``(..., D)`` over its own neighbours ``(..., k,
      D)``; graph layers add ``forward_graph`` over an edge list);
    * ``has_attention_weights``: whether :meth:`attention_weights` is available (set automatically
      from whether the class implements ``_attention_weights``);
    * ``key_required``: whether ``key`` must be given (it defaults to the query otherwise);
    * ``same_length``: whether ``Lq == Lk`` is required (one sequence);
    * ``shape_options``: option name -> ``(input name, axis)`` for options the input shapes
      determine (``heads`` of a sequence query is its axis -2), so front ends can infer them;
    * ``example_options``: small options that build a working instance (tests, docs, server probes);
    * :meth:`param_shapes` (per instance, since shapes follow the options) and :meth:`example_inputs`.
    """

    name: ClassVar[str] = ""
    #: a one-line description for listings (CLI ``info``, server ``/v1/mechanisms``)
    summary: ClassVar[str] = ""
    input_layout: ClassVar[str] = "sequence"
    has_attention_weights: ClassVar[bool] = False
    key_required: ClassVar[bool] = False
    same_length: ClassVar[bool] = False
    shape_options: ClassVar[dict[str, tuple[str, int]]] = {}
    example_options: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.input_layout not in LAYOUTS:
            raise TypeError(f"{cls.__name__}.input_layout: expected one of {LAYOUTS}, got {cls.input_layout!r}")
        if "has_attention_weights" not in cls.__dict__:
            cls.has_attention_weights = getattr(cls, "_attention_weights", None) is not Mechanism._attention_weights
        _check_signature(cls, "forward", ("query", "key", "value"))
        _check_signature(cls, "attention_weights", ("query", "key"))
        init = cls.__dict__.get("__init__")
        if init is not None and not hasattr(init, "__wrapped__"):
            cls.__init__ = checked_options(init)  # type: ignore[method-assign]

    def __init__(self) -> None:
        self._disposed = False
        self._params: dict[str, np.ndarray] = {}
        self._cache: dict[str, Any] = {}
        self.training = False

    # ---------------------------------------------------------------- lifecycle
    def _check_alive(self) -> None:
        if self._disposed:
            raise DisposedError(f"{type(self).__name__}: this object was disposed; create a new one")

    def dispose(self) -> None:
        """Free weights and caches. Any later use raises :class:`~attnkit.errors.DisposedError`."""
        self._params = {}
        self._cache = {}
        self._disposed = True

    @property
    def disposed(self) -> bool:
        return self._disposed

    def __enter__(self) -> Self:
        self._check_alive()
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()

    def train(self, mode: bool = True) -> Self:
        """Switch dropout on (``mode=True``) or off, like ``torch.nn.Module.train``."""
        self.training = bool(mode)
        return self

    def eval(self) -> Self:
        return self.train(False)

    # ---------------------------------------------------------------- description
    def options(self) -> dict[str, Any]:
        """The constructor options of this object, as given (after validation)."""
        sig = inspect.signature(type(self).__init__)
        return {n: getattr(self, n) for n in list(sig.parameters)[1:] if hasattr(self, n)}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"

    # ---------------------------------------------------------------- parameters
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The parameters this instance has: name -> shape (empty for parameter-free mechanisms)."""
        return {k: tuple(int(d) for d in v.shape) for k, v in self._params.items()}

    def parameters(self) -> dict[str, np.ndarray]:
        """The parameters by name, in this object's own storage (NumPy arrays, not copies).

        The names are those of :meth:`param_shapes`; :func:`attnkit.functional_call` takes a dict with
        the same names in any array library.
        """
        self._check_alive()
        return dict(self._params)

    def load_parameters(self, params: Mapping[str, Any]) -> None:
        """Adopt ``params`` (any array library; copied to NumPy) after checking names, shapes, dtypes, finiteness."""
        self._check_alive()
        self._set_params({k: to_numpy(v) for k, v in params.items()})

    def _set_params(self, params: Mapping[str, Any]) -> None:
        """Check ``params`` against :meth:`param_shapes` (names, shapes, float, finite) and adopt them."""
        expected = self.param_shapes()
        extra = sorted(set(params) - set(expected))
        if extra:
            hint = " (this layer has bias=False)" if extra[0].endswith(".bias") and getattr(self, "bias", True) is False else ""
            listed = ", ".join(sorted(expected)) or "none (this mechanism has no parameters)"
            raise ConfigError(f"weights: unexpected tensor {extra[0]!r}{hint}; expected {listed}")
        new: dict[str, np.ndarray] = {}
        for key, shape in expected.items():
            if key not in params:
                raise ConfigError(f"weights: tensor {key!r} is missing (expected shape {shape_str(shape)})")
            arr = np.asarray(params[key])
            if tuple(arr.shape) != tuple(shape):
                raise ShapeError(f"weights: {key} expected shape {shape_str(shape)}, got {shape_str(arr.shape)}")
            if arr.dtype.kind != "f":
                raise ConfigError(f"weights: {key} expected a float tensor, got {arr.dtype}")
            if not np.isfinite(arr).all():
                raise ConfigError(f"weights: {key} holds NaN or infinity")
            new[key] = np.array(arr, dtype=np.float64 if arr.dtype == np.float64 else np.float32)
        self._params = new
        self._cache.pop("converted", None)

    def _check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` for :func:`functional_call`: exactly the names of :meth:`param_shapes`, those shapes."""
        if not isinstance(params, Mapping):
            raise ConfigError(f"params: expected a dict of arrays by name, got {type(params).__name__}")
        expected = self.param_shapes()
        extra = sorted(set(params) - set(expected))
        if extra:
            raise ConfigError(f"params: unexpected name {extra[0]!r}; expected {', '.join(sorted(expected)) or 'none'}")
        missing = sorted(set(expected) - set(params))
        if missing:
            raise ConfigError(f"params: {missing[0]!r} is missing (expected shape {shape_str(expected[missing[0]])})")
        for key, shape in expected.items():
            got = tuple(int(d) for d in getattr(params[key], "shape", ()))
            if got != tuple(shape):
                raise ShapeError(f"params: {key} expected shape {shape_str(shape)}, got {shape_str(got)}")
        return dict(params)

    def _params_like(self, params: Mapping[str, Any], like: Array) -> dict[str, Array]:
        """``params`` in ``like``'s library, device and dtype (this object's own are converted once and cached)."""
        if params is self._params:
            key = (type(like), str(getattr(like, "device", "cpu")), str(like.dtype))
            cached = self._cache.get("converted")
            if cached is None or cached[0] != key:
                cached = (key, cast_params(self._params, like))
                self._cache["converted"] = cached
            return cached[1]
        return cast_params(params, like)

    # ---------------------------------------------------------------- the contract
    def forward(self, query: Any, key: Any = None, value: Any = None, *, mask: Any = None) -> Array:
        """The attention output for ``query`` over ``key``/``value`` (see the class's docstring for shapes).

        A mechanism with keyword-only extras overrides this with its own signature (so type checkers
        see them) and calls :meth:`_run_forward` with them.
        """
        return self._run_forward(query, key, value, mask=mask)

    def _run_forward(self, query: Any, key: Any, value: Any, *, mask: Any = None, **extras: Any) -> Array:
        """Liveness, then ``_forward`` with this object's parameters (or the lazy Dask adapter)."""
        self._check_alive()
        if _lazy(query, key, value):
            if extras.get("cache") is not None:
                raise ConfigError("cache: a KVCache is filled step by step and cannot take Dask arrays; compute the chunk first")
            from ..dask import lazy_forward  # the Dask adapter: a graph over the chunks, nothing computed here

            return lazy_forward(self, self._own_params(), query, key, value, mask=mask, **extras)
        empty = self._empty_result(query, key, value, extras)
        if empty is not None:
            return empty
        # large finite inputs never come back as inf/NaN: recomputed wider, or a named error (kernels.overflow);
        # a step that fills a KV cache is never run twice (the rerun would append its keys again)
        return finite_or_wider(
            self._forward,
            (self._own_params(), query, key, value),
            dict(mask=mask, **extras),
            names="query, key, value (their magnitude)",
            rerun=extras.get("cache") is None,
        )

    def _empty_result(self, query: Any, key: Any, value: Any, extras: Mapping[str, Any]) -> Array | None:
        """The result for a query with no rows (a zero-length batch or query axis), without computing over the
        other axes; ``None`` when the query is not empty (or not a concrete array).

        Every layout's result keeps the query's leading axes and ends in :data:`_FEATURE_AXES` feature axes,
        so the mechanism runs once on a stand-in query whose leading axes are all 1 (same dtype, device and
        keys), which validates options and keys and gives the result's feature axes and dtype; the result
        is then an empty array of the query's leading shape. (``FlashAttention(heads=2, dim=4)`` on
        ``(0, 2**20, 2, 4)`` used to loop over 2**20 empty rows.)
        """
        shape = getattr(query, "shape", None)
        if shape is None or any(v is not None for v in extras.values()) or is_traced(query) or torch_compiling():
            return None
        nf = _FEATURE_AXES[self.input_layout]
        try:
            dims = tuple(int(d) for d in shape)
        except (TypeError, ValueError):  # symbolic lengths
            return None
        if len(dims) <= nf or 0 not in dims[:-nf] or 0 in dims[-nf:]:
            return None
        lead = dims[:-nf]
        try:
            xp = namespace(query)
            dev = array_api_compat.device(query)
            stand_in = xp.zeros((1,) * len(lead) + dims[-nf:], dtype=query.dtype, device=dev)
        except Exception:  # noqa: BLE001 - not an array we can build a stand-in for: the full path decides
            return None
        out = self._forward(self._own_params(), stand_in, key, value, mask=None)
        if not hasattr(out, "shape") or out.ndim < len(lead) + nf:
            return None
        extra = out.ndim - nf - len(lead)  # leading axes the keys' batch added
        got = tuple(int(d) for d in out.shape)
        merged = []
        for i, d in enumerate(lead):
            o = got[extra + i]
            if o != 1 and d not in (1, o):
                raise ShapeError(
                    f"query: batch dimensions {shape_str(lead)} do not broadcast with the keys' {shape_str(got[extra : extra + len(lead)])}"
                )
            merged.append(o if d == 1 else d)
        return xp.zeros((*got[:extra], *merged, *got[-nf:]), dtype=out.dtype, device=array_api_compat.device(out))

    def attention_weights(self, query: Any, key: Any = None, *, mask: Any = None) -> Array:
        """The attention probabilities of ``query`` over ``key`` (rows sum to 1; masked rows are zeros)."""
        return self._run_weights(query, key, mask=mask)

    def _run_weights(self, query: Any, key: Any, *, mask: Any = None, **extras: Any) -> Array:
        self._check_alive()
        if not self.has_attention_weights:
            raise ConfigError(f"mechanism: {self.name!r} has no attention weights (its output is not a softmax-weighted sum)")
        return self._attention_weights(self._own_params(), query, key, mask=mask, **extras)

    def attention_scores(self, query: Any, key: Any = None, *, mask: Any = None, **extras: Any) -> Array:
        """The spec's name (``attentionScores``) for :meth:`attention_weights`."""
        return self.attention_weights(query, key, mask=mask, **extras)

    def _export_blocker(self) -> str | None:
        """``None`` when this mechanism (as configured) exports to ONNX, else why not (:func:`attnkit.export_onnx`)."""
        return None

    def _own_params(self) -> Mapping[str, Array]:
        """The parameters ``forward`` passes to ``_forward``: this object's own (a composite adds its parts')."""
        return self._params

    def _forward(self, params: Mapping[str, Array], query: Any, key: Any, value: Any, *, mask: Any = None) -> Array:
        """The math, with ``params`` in any array library; a mechanism adds its own keyword-only extras."""
        raise NotImplementedError  # pragma: no cover

    def _attention_weights(self, params: Mapping[str, Array], query: Any, key: Any, *, mask: Any = None) -> Array:
        raise NotImplementedError  # pragma: no cover

    def __call__(self, *args: Any, **kwargs: Any) -> Array:
        return self.forward(*args, **kwargs)

    def example_inputs(self, seq_len: int = 8, rng: np.random.Generator | None = None) -> tuple[np.ndarray, ...]:
        """Random float32 inputs ``(query[, key[, value]])`` of length ``seq_len`` that ``forward`` accepts."""
        raise NotImplementedError  # pragma: no cover

    def example_extras(self, seq_len: int = 8, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Keyword-only inputs that ``forward`` needs beside :meth:`example_inputs` (e.g. edge features); usually none."""
        return {}

    def sample_inputs(self, seq_len: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, ...]:
        """Alias of :meth:`example_inputs` (benchmark, demo)."""
        return self.example_inputs(seq_len, rng)

    # ---------------------------------------------------------------- shared helpers
    def _rng(self) -> np.random.Generator:
        rng = self._cache.get("rng")
        if rng is None:
            rng = np.random.default_rng(getattr(self, "seed", None))
            self._cache["rng"] = rng
        return rng

    def _param_rng(self, extra_bytes: float = 0, what: str = "parameters") -> np.random.Generator:
        """The seeded generator that draws this object's parameters, handed out only after
        :meth:`_check_param_memory` found that they fit (so nothing is allocated for options that cannot)."""
        self._check_param_memory(extra_bytes, what)
        return np.random.default_rng(getattr(self, "seed", None))

    def _check_param_memory(self, extra_bytes: float = 0, what: str = "parameters") -> int:
        """Refuse (``ConfigError``) options whose parameters, as :meth:`param_shapes` declares them (float32,
        4 bytes each), plus ``extra_bytes`` would exceed :func:`attnkit._array.allocation_limit` (half the
        physical memory, or ``ATTNKIT_MAX_ALLOC_BYTES``). The message names the integer options that set the
        size and gives the estimate. Computed from the shapes only: call it before allocating."""
        count = sum(math.prod(int(d) for d in shape) for shape in self.param_shapes().values())
        return check_allocation(4.0 * count + float(extra_bytes), _size_options(self), f"{self.name or type(self).__name__} {what}")

    # ---------------------------------------------------------------- memory and timing
    def memory_usage(self) -> MemoryInfo:
        """Bytes this object holds, the process RSS and the learned parameter count."""
        self._check_alive()
        held = sum(int(p.nbytes) for p in self._params.values())
        for v in self._cache.values():
            held += int(getattr(v, "nbytes", 0) or 0)
        count = sum(int(p.size) for p in self._params.values())
        return MemoryInfo(heap_used=held, heap_total=_rss_bytes(), param_count=count)

    def benchmark(self, seq_len: int = 128, repeats: int = 10, warmup: int = 2) -> BenchmarkResult:
        """Time ``forward`` on random inputs of length ``seq_len``: median of ``repeats`` runs."""
        from .._array import positive_int
        from ..system import check_simd_support

        self._check_alive()
        seq_len = positive_int(seq_len, "seq_len")
        repeats = positive_int(repeats, "repeats")
        inputs = self.sample_inputs(seq_len, np.random.default_rng(0))
        extras = self.example_extras(seq_len, np.random.default_rng(1))
        out = None
        for _ in range(warmup):
            out = self.forward(*inputs, **extras)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = self.forward(*inputs, **extras)
            times.append(time.perf_counter() - t0)
        lat = statistics.median(times)
        nbytes = sum(int(getattr(x, "nbytes", 0)) for x in inputs) + int(getattr(out, "nbytes", 0))
        lat = max(lat, 1e-9)
        return BenchmarkResult(
            ops_per_second=1.0 / lat,
            latency_ms=lat * 1e3,
            throughput_gbps=nbytes / lat / 1e9,
            simd_enabled=bool(check_simd_support()) and bool(getattr(self, "simd", True)),
        )

    # ---------------------------------------------------------------- batch, async, stream
    def forward_batch(self, queries: Sequence[Any], key: Any = None, value: Any = None, *, mask: Any = None) -> list[Array]:
        """``[forward(q_i, k_i, v_i, mask=mask_i) for i]``; key/value/mask are shared or per-item lists."""
        self._check_alive()
        if not isinstance(queries, (list, tuple)):
            raise ShapeError(f"queries: expected a list of arrays, got {type(queries).__name__}")
        n = len(queries)

        def item(x: Any, name: str, i: int) -> Any:
            if isinstance(x, (list, tuple)) and len(x) > 0 and not _is_number_list(x):
                if len(x) != n:
                    raise ShapeError(f"{name}: expected a single value or a list of {n} items, got a list of {len(x)}")
                return x[i]
            return x

        return [self.forward(q, item(key, "key", i), item(value, "value", i), mask=item(mask, "mask", i)) for i, q in enumerate(queries)]

    async def forward_async(self, query: Any, key: Any = None, value: Any = None, *, mask: Any = None, **extras: Any) -> Array:
        """``forward`` on a worker thread, off the event loop (NumPy releases the GIL, so calls overlap)."""
        self._check_alive()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: self.forward(query, key, value, mask=mask, **extras))

    async def forward_stream(self, inputs: AsyncIterable[tuple[Any, ...]], max_pending: int = 2) -> AsyncIterator[Array]:
        """Yield ``forward(*item)`` for each tuple ``(q, k, v[, mask])`` of ``inputs``, in order.

        At most ``max_pending`` forwards run or wait at once, so a fast producer cannot fill memory.
        """
        from .._array import positive_int

        self._check_alive()
        max_pending = positive_int(max_pending, "max_pending")
        pending: collections.deque[asyncio.Future[Array]] = collections.deque()
        try:
            async for item in inputs:
                if not isinstance(item, (tuple, list)) or not 1 <= len(item) <= 4:
                    raise ShapeError(f"inputs: expected tuples (q, k, v[, mask]), got {type(item).__name__}")
                args, item_mask = (item[:3], item[3]) if len(item) == 4 else (item, None)
                pending.append(asyncio.ensure_future(self.forward_async(*args, mask=item_mask)))
                if len(pending) >= max_pending:
                    yield await pending.popleft()
            while pending:
                yield await pending.popleft()
        finally:
            # stopped early (aclose, break) or a forward failed: drop the work still queued, and
            # retrieve its outcome so asyncio does not warn about an exception never retrieved
            for f in pending:
                f.cancel()
                f.add_done_callback(_retrieve)


def _size_options(mech: Any) -> str:
    """The integer options of ``mech`` that set its size (for messages): ``"model_dim=8, heads=2"``."""
    kinds = option_kinds(getattr(type(mech).__init__, "__wrapped__", type(mech).__init__))
    parts = [f"{n}={getattr(mech, n)}" for n, k in kinds.items() if k in ("int", "int?") and isinstance(getattr(mech, n, None), int)]
    return ", ".join(parts) or "options"


#: trailing feature axes of the query (and of the result) per input layout: ``(H, D)`` for sequences, ``(E,)`` or
#: ``(D,)`` otherwise; the axes before them are rows (batch and query positions)
_FEATURE_AXES = {"sequence": 2, "model": 1, "headless": 1, "graph": 1}


def _retrieve(f: asyncio.Future[Any]) -> None:
    if not f.cancelled():
        f.exception()


def _is_number_list(x: Sequence[Any]) -> bool:
    """A flat list of numbers is one array, not a list of per-item arrays."""
    first = x[0]
    return isinstance(first, (int, float, np.number)) and not isinstance(first, bool)


def _lazy(*arrays: object) -> bool:
    """Whether any of ``arrays`` is a Dask array (checked by type name: Dask need not be imported)."""
    return any(type(a).__module__.startswith("dask.") and type(a).__name__ == "Array" for a in arrays)


def _check_signature(cls: type, method: str, names: tuple[str, ...]) -> None:
    """The contract's argument names: ``method(self, *names, *, mask=None, ...)`` (checked when a class is defined)."""
    f = cls.__dict__.get(method)
    if f is None:
        return
    params = list(inspect.signature(f).parameters.values())[1:]
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if tuple(positional) != names:
        raise TypeError(f"{cls.__name__}.{method}: positional arguments must be {names}, got {tuple(positional)}")
    m = next((p for p in params if p.name == "mask"), None)
    if m is None or m.kind is not m.KEYWORD_ONLY:
        raise TypeError(f"{cls.__name__}.{method}: takes mask as a keyword-only argument")


def cast_params(params: Mapping[str, Any], like: Array) -> dict[str, Array]:
    """The parameters in the library, device and dtype of ``like``.

    NumPy parameters are converted (no copy when ``like`` is NumPy of the same dtype); parameters already
    in ``like``'s library are cast with ``astype``, which keeps them in the autograd graph (torch) or
    traced (JAX).
    """
    if isinstance(like, np.ndarray):
        return {k: np.asarray(v).astype(like.dtype, copy=False) for k, v in params.items()}
    import array_api_compat

    xp = namespace(like)
    dev = array_api_compat.device(like)
    out: dict[str, Array] = {}
    for k, v in params.items():
        if isinstance(v, np.ndarray) or not array_api_compat.is_array_api_obj(v):
            out[k] = xp.asarray(np.asarray(v), dtype=like.dtype, device=dev)
            continue
        if v.dtype != like.dtype:
            v = xp.astype(v, like.dtype)
        if array_api_compat.device(v) != dev:
            v = array_api_compat.to_device(v, dev)
        out[k] = v
    return out


#: the old name of :func:`cast_params`
numpy_params = cast_params
