"""The threads attnkit's NumPy kernels share: one persistent pool and a BLAS held to one thread.

NumPy's ufuncs and BLAS release the GIL, so kernels split work into tasks on a persistent
:class:`~concurrent.futures.ThreadPoolExecutor` (:func:`get_pool`). Inside it BLAS must run
single-threaded, or its own threads fight the pool's for the same cores; :class:`BlasOneThread`
holds it there, re-entrantly and from any thread, and gives the original count back when the last
kernel leaves. pthreads OpenBLAS is set through its C API, because threadpoolctl lets only one
"controlling" thread change OpenBLAS's process-wide count and silently ignores the others (a call
made from ``forward_async`` or a server worker); other BLAS libraries go through threadpoolctl
(the ``fast`` extra). Without threadpoolctl, :func:`blas_limiter_available` is False and kernels
run their tasks in the caller's thread.

``$ATTNKIT_NUM_THREADS`` or :func:`set_num_threads` sets how many threads kernels use.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

__all__ = [
    "BlasOneThread",
    "TaskFeed",
    "ThreadScratch",
    "blas_limiter_available",
    "get_num_threads",
    "get_pool",
    "run_tasks",
    "set_num_threads",
    "small_gemms",
]

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_num_threads: int | None = None
_controller: Any = None  # threadpoolctl.ThreadpoolController, or False when unavailable
_limit_depth = 0
_limiter: Any = None


def _after_fork() -> None:  # pragma: no cover - exercised only in forked children
    global _pool, _pool_size, _limit_depth, _limiter, _lock
    _pool, _pool_size, _limit_depth, _limiter = None, 0, 0, None
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _get_controller() -> Any:
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController

            _controller = ThreadpoolController()
        except Exception:  # threadpoolctl missing or unable to inspect the process
            _controller = False
    return _controller


def blas_limiter_available() -> bool:
    """True when threadpoolctl can hold BLAS to one thread inside the pool (the ``fast`` extra)."""
    ctl = _get_controller()
    return bool(ctl) and bool(ctl.select(user_api="blas").lib_controllers)


def _default_threads() -> int:
    env = os.environ.get("ATTNKIT_NUM_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            pass
    ctl = _get_controller()
    if ctl:
        blas = ctl.select(user_api="blas").lib_controllers
        if blas:
            return max(1, max(int(c.num_threads) for c in blas))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def set_num_threads(n: int | None) -> None:
    """Threads the NumPy fast path uses (``None``: ``$ATTNKIT_NUM_THREADS``, else BLAS's thread count)."""
    from ._array import positive_int

    global _num_threads
    _num_threads = None if n is None else positive_int(n, "num_threads")


def get_num_threads() -> int:
    """Threads the NumPy fast path will use for a large problem."""
    if not blas_limiter_available():
        return 1
    return _num_threads if _num_threads is not None else _default_threads()


def get_pool(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < workers:
            old = _pool
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="attnkit-sdpa")
            _pool_size = workers
            if old is not None:
                old.shutdown(wait=False)
        return _pool


_openblas: list[tuple[str, Any, Any]] | None = None  # (path, set, get) of each pthreads OpenBLAS


def _openblas_pthreads() -> list[tuple[str, Any, Any]]:
    """``openblas_set/get_num_threads`` of every OpenBLAS with its own (pthreads) thread pool.

    Its thread count is process-wide, and threadpoolctl lets only one 'controlling' thread change
    it (calls from other threads are silently ignored), so a fast-path call made from a worker
    thread (``forward_async``, a server) would leave BLAS threaded inside attnkit's pool: slower,
    and different in the last bits. The C API itself works from any thread.
    """
    global _openblas
    if _openblas is None:
        found = []
        ctl = _get_controller()
        for lib in ctl.select(internal_api="openblas").lib_controllers if ctl else []:
            if getattr(lib, "threading_layer", None) != "pthreads":
                continue
            try:
                dll = ctypes.CDLL(lib.filepath)
            except OSError:  # pragma: no cover - the library is loaded, so this should not happen
                continue
            for prefix, suffix in itertools.product(("", "scipy_"), ("", "64_", "_64")):
                setter = getattr(dll, f"{prefix}openblas_set_num_threads{suffix}", None)
                getter = getattr(dll, f"{prefix}openblas_get_num_threads{suffix}", None)
                if setter is not None and getter is not None:
                    setter.argtypes, setter.restype = [ctypes.c_int], None
                    getter.argtypes, getter.restype = [], ctypes.c_int
                    found.append((lib.filepath, setter, getter))
                    break
        _openblas = found
    return _openblas


class BlasOneThread:
    """Hold BLAS to one thread while any fast-path call is inside its pool (re-entrant, thread-safe).

    pthreads OpenBLAS is set through its C API (works from any thread); other BLAS libraries
    through threadpoolctl.
    """

    def __enter__(self) -> None:
        global _limit_depth, _limiter
        with _lock:
            if _limit_depth == 0:
                direct = _openblas_pthreads()
                saved = [(setter, getter()) for _, setter, getter in direct]
                for setter, _ in saved:
                    setter(1)
                rest = _get_controller().select(user_api="blas")
                rest.lib_controllers = [c for c in rest.lib_controllers if c.filepath not in {p for p, _, _ in direct}]
                _limiter = (saved, rest.limit(limits=1) if rest.lib_controllers else None)
            _limit_depth += 1

    def __exit__(self, *exc: object) -> None:
        global _limit_depth, _limiter
        with _lock:
            _limit_depth -= 1
            if _limit_depth == 0 and _limiter is not None:
                saved, limiter = _limiter
                for setter, n in saved:
                    setter(n)
                if limiter is not None:
                    limiter.restore_original_limits()
                _limiter = None


def small_gemms(xp: Any) -> Any:
    """A context for a loop of small GEMMs (tiles) on arrays of namespace ``xp``: BLAS held to one
    thread for NumPy (multi-threaded OpenBLAS gains nothing on tiles and, on a loaded machine, its
    spinning threads made them 10-50x slower), nothing for other libraries or without threadpoolctl."""
    import contextlib

    import array_api_compat

    if not array_api_compat.is_numpy_namespace(xp) or not blas_limiter_available():
        return contextlib.nullcontext()
    return BlasOneThread()


T = TypeVar("T")


class TaskFeed(Generic[T]):
    """Tasks handed out one at a time to whichever thread asks next (dynamic load balance)."""

    def __init__(self, tasks: Iterable[T]) -> None:
        self._it = iter(tasks)
        self._lock = threading.Lock()

    def __iter__(self) -> TaskFeed[T]:
        return self

    def __next__(self) -> T:
        with self._lock:
            return next(self._it)


def run_tasks(
    run: Callable[[Iterable[T]], None], tasks: Sequence[T], num_threads: int | None = None, run_here: Callable[[Iterable[T]], None] | None = None
) -> None:
    """``run`` over ``tasks`` on the persistent pool: each of ``num_threads`` threads (default
    :func:`get_num_threads`; the caller's thread is one, running ``run_here`` if given) takes the next task
    until none is left, with BLAS held to one thread (:class:`BlasOneThread`). Without threadpoolctl
    everything runs in the caller's thread (BLAS's own threads would fight the pool's)."""
    here = run if run_here is None else run_here
    threads = max(1, min(int(num_threads if num_threads is not None else get_num_threads()), len(tasks)))
    if not blas_limiter_available():
        here(tasks)
        return
    if threads == 1:
        with BlasOneThread():
            here(tasks)
        return
    feed = TaskFeed(tasks)
    pool = get_pool(threads - 1)
    with BlasOneThread():
        futures = [pool.submit(run, feed) for _ in range(threads - 1)]
        try:
            here(feed)
        finally:
            for f in futures:
                f.result()


class ThreadScratch:
    """Scratch arrays of each thread, by name and dtype, kept between calls and grown as needed (one object
    per kernel family, so two families never share a buffer)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, name: str, size: int, dtype: Any) -> Any:
        """This thread's array ``name`` of ``dtype`` viewed at ``size`` elements (its contents are stale)."""
        import numpy as np

        bufs = getattr(self._local, "bufs", None)
        if bufs is None:
            bufs = self._local.bufs = {}
        key = (name, np.dtype(dtype).str)
        buf = bufs.get(key)
        if buf is None or buf.size < size:
            buf = bufs[key] = np.empty(size, dtype=dtype)
        return buf[:size]
