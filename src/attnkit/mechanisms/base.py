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
import os
import statistics
import time
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Any, ClassVar

import numpy as np

from .._array import Array, namespace
from ..errors import DisposedError, ShapeError

__all__ = ["Mechanism", "MemoryInfo", "BenchmarkResult"]


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


class Mechanism:
    """Base class of attnkit's attention mechanisms.

    Subclasses set ``name`` (the registry key), implement ``forward(a, b, c, mask=None)`` and
    ``sample_inputs(seq_len, rng)``, and keep learned parameters in ``self._params`` (a dict of
    NumPy arrays).
    """

    name: ClassVar[str] = ""
    #: a one-line description for listings (CLI ``info``, server ``/v1/mechanisms``)
    summary: ClassVar[str] = ""

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

    def __enter__(self) -> Mechanism:
        self._check_alive()
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()

    def train(self, mode: bool = True) -> Mechanism:
        """Switch dropout on (``mode=True``) or off, like ``torch.nn.Module.train``."""
        self.training = bool(mode)
        return self

    def eval(self) -> Mechanism:
        return self.train(False)

    # ---------------------------------------------------------------- description
    def options(self) -> dict[str, Any]:
        """The constructor options of this object, as given (after validation)."""
        sig = inspect.signature(type(self).__init__)
        return {n: getattr(self, n) for n in list(sig.parameters)[1:] if hasattr(self, n)}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"

    def parameters(self) -> dict[str, np.ndarray]:
        """Learned parameters by name (empty for parameter-free mechanisms)."""
        self._check_alive()
        return dict(self._params)

    # ---------------------------------------------------------------- the contract
    def forward(self, a: Any, b: Any = None, c: Any = None, mask: Any = None) -> Array:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, *args: Any, **kwargs: Any) -> Array:
        return self.forward(*args, **kwargs)

    def sample_inputs(self, seq_len: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, ...]:
        """Random float32 inputs of length ``seq_len`` that ``forward`` accepts (benchmark, demo)."""
        raise NotImplementedError  # pragma: no cover

    # ---------------------------------------------------------------- shared helpers
    def _rng(self) -> np.random.Generator:
        rng = self._cache.get("rng")
        if rng is None:
            rng = np.random.default_rng(getattr(self, "seed", None))
            self._cache["rng"] = rng
        return rng

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
        out = None
        for _ in range(warmup):
            out = self.forward(*inputs)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = self.forward(*inputs)
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
    def forward_batch(self, queries: Sequence[Any], keys: Any = None, values: Any = None, mask: Any = None) -> list[Array]:
        """``[forward(q_i, k_i, v_i, mask_i) for i]``; keys/values/mask are shared or per-item lists."""
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

        return [
            self.forward(q, item(keys, "keys", i), item(values, "values", i), mask=item(mask, "mask", i))
            for i, q in enumerate(queries)
        ]

    async def forward_async(self, a: Any, b: Any = None, c: Any = None, mask: Any = None) -> Array:
        """``forward`` on a worker thread, off the event loop (NumPy releases the GIL, so calls overlap)."""
        self._check_alive()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: self.forward(a, b, c, mask=mask))

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
                pending.append(asyncio.ensure_future(self.forward_async(*item)))
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


def _retrieve(f: asyncio.Future[Any]) -> None:
    if not f.cancelled():
        f.exception()


def _is_number_list(x: Sequence[Any]) -> bool:
    """A flat list of numbers is one array, not a list of per-item arrays."""
    first = x[0]
    return isinstance(first, (int, float, np.number)) and not isinstance(first, bool)


def numpy_params(params: dict[str, np.ndarray], like: Array) -> dict[str, Array]:
    """The parameters converted to the library, device and dtype of ``like`` (no copy for NumPy)."""
    if isinstance(like, np.ndarray):
        return {k: v.astype(like.dtype, copy=False) for k, v in params.items()}
    import array_api_compat

    xp = namespace(like)
    dev = array_api_compat.device(like)
    return {k: xp.asarray(v, dtype=like.dtype, device=dev) for k, v in params.items()}
