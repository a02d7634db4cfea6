"""Where computations run: worker processes that can be killed (default), or threads.

A computation that runs past the request's time limit must stop, or it keeps its slot (and its CPU)
and every later request times out behind it. NumPy kernels cannot be interrupted from another
thread, so :class:`ProcessRunner` runs each computation in a worker process, one per slot, and on a
timeout kills that worker (``SIGKILL``) and starts a fresh one in its place: the slot is free again as
soon as the kill lands. Workers are forked from a ``forkserver`` that has already imported attnkit and
every mechanism, so a replacement is ready in milliseconds. Each worker keeps its own
:class:`~.compute.Compute` (mechanism cache included), ignores ``SIGINT``/``SIGTERM`` (the server
decides when to stop it, after its in-flight requests) and exits when the server's end of its pipe
closes, so workers never outlive the server. ``worker_memory_bytes`` caps a worker's data segment
(``RLIMIT_DATA``): a computation past it fails with ``MemoryError`` (413) inside the worker.

Request bodies of at least :data:`SHM_MIN_BYTES` reach a worker through a buffer shared with it (Linux:
an anonymous ``memfd`` mapped by both processes, handed over once through the pipe and replaced by a
larger one when a body does not fit): one copy into the buffer, and a raw (octet-stream) body is read
there in place, instead of pickling it through the pipe (about 2 ms of CPU per MiB here). The buffer
has no name in ``/dev/shm``: the kernel frees it when the worker and the server have both let it go,
whether the worker exits, is killed or dies.

:class:`ThreadRunner` runs computations on a thread pool of the server process (``isolation =
"thread"``): cheaper to start, but a timed-out computation runs on, holding its slot, until it ends.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import multiprocessing
import multiprocessing.util  # registers its exit handler first, so that ours (below) runs before it
import os
import pickle
import signal
import sys
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .codec import ApiError
from .settings import Settings

__all__ = ["ThreadRunner", "ProcessRunner", "make_runner", "Runner"]

log = logging.getLogger("attnkit.server")

#: methods of Compute a runner may call
METHODS = frozenset({"attention", "batch", "kserve_parse", "model_forward", "kserve_encode"})  # the last three: issue 14
#: what a worker answers first, on receiving a request
_ACK = b"\x06"
#: request arguments (bodies) of at least this many bytes go through the worker's shared buffer
SHM_MIN_BYTES = 64 * 1024
#: the smallest shared buffer a worker is given (it grows in powers of two)
SHM_MIN_SIZE = 1 << 20
_SHM_OK = sys.platform.startswith("linux") and hasattr(os, "memfd_create")
#: a message that hands the worker a new shared buffer (its size follows, then the descriptor); a pickle never starts so
_SHM_CTL = b"\x00shm"


class _TimedOut(Exception):
    pass


def _internal(exc: BaseException) -> ApiError:
    return ApiError(500, "internal", f"internal server error ({type(exc).__name__}); this is a bug in attnkit", "body")


# ---------------------------------------------------------------------- threads
class ThreadRunner:
    """Computations on ``max_concurrency`` threads of this process (they cannot be stopped)."""

    def __init__(self, settings: Settings) -> None:
        from .compute import Compute

        self.compute = Compute(settings)
        self.executor = ThreadPoolExecutor(max_workers=settings.max_concurrency, thread_name_prefix="attnkit-compute")

    async def call(self, method: str, args: tuple[Any, ...], timeout: float, release: Callable[[], None]) -> Any:
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.executor, lambda: getattr(self.compute, method)(*args))

        def done(f: asyncio.Future[Any]) -> None:
            release()
            if not f.cancelled():
                f.exception()  # mark retrieved: a timed-out computation's error is not ours to report

        fut.add_done_callback(done)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout=timeout)
        except asyncio.TimeoutError:
            raise _TimedOut from None

    def close(self) -> None:
        # not waiting: a runaway computation must not hold up the shutdown of the server (its thread
        # still runs until it ends, which is why "process" isolation is the default)
        self.executor.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------- processes
def _worker_main(conn: Any, settings_json: str) -> None:
    """A worker process: answer ``(method, args)`` requests on ``conn`` until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    import json

    from .compute import Compute

    settings = Settings.from_mapping(json.loads(settings_json))
    limit = settings.worker_memory_limit()
    if limit:
        import resource

        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    compute = Compute(settings)
    shared: Any = None  # the buffer the server writes large bodies into (see _Worker.send)
    while True:
        try:
            data = conn.recv_bytes()
            if data[: len(_SHM_CTL)] == _SHM_CTL:
                shared = _map_shared(conn, int.from_bytes(data[len(_SHM_CTL) :], "little"))
                continue
            conn.send_bytes(_ACK)  # the request has arrived: from here on, losing this worker loses the request
        except (EOFError, OSError):
            return
        try:
            method, args, big = pickle.loads(data)
            if big:
                args = _shared_args(method, args, big, shared)
            if method not in METHODS:
                raise ValueError(f"unknown method {method!r}")
            reply: tuple[str, Any] = ("ok", getattr(compute, method)(*args))
        except ApiError as err:
            reply = ("api_error", (err.status, err.code, err.message, err.field, err.headers))
        except MemoryError:
            reply = ("api_error", (413, "too_large", "query: the computation does not fit in the worker's memory", "query", {}))
        except Exception as exc:  # noqa: BLE001 - reported to the server, which logs it as its own bug
            log.exception("internal error in a compute worker")
            reply = ("error", f"{type(exc).__name__}: {str(exc)[:300]}")
        try:
            conn.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
        except (OSError, ValueError):
            return


def _map_shared(conn: Any, size: int) -> Any:
    """The worker's side of a new shared buffer: the descriptor that follows on ``conn``, mapped."""
    import mmap
    from multiprocessing import reduction

    fd = reduction.recv_handle(conn)
    try:
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


def _shared_args(method: str, args: tuple[Any, ...], big: list[tuple[int, int]], shared: Any) -> tuple[Any, ...]:
    """``args`` with the bodies the server put in the shared buffer, back to back: a raw (octet-stream)
    attention body is read in place (a view: decoding only wraps it in arrays), any other is copied out."""
    from . import codec

    out = list(args)
    view = memoryview(shared)
    pos = 0
    for index, length in big:
        part = view[pos : pos + length]
        in_place = method == "attention" and index == 2 and out[1] == codec.OCTET
        out[index] = part if in_place else bytes(part)
        pos += length
    return tuple(out)


class _Payload:
    """A request for a worker, pickled once: ``(method, args, big)`` where the ``bytes`` arguments of at
    least :data:`SHM_MIN_BYTES` are left out (``None``) and listed in ``big`` as ``(index, length)``;
    :meth:`_Worker.send` writes them into that worker's shared buffer."""

    __slots__ = ("data", "big")

    def __init__(self, method: str, args: tuple[Any, ...]) -> None:
        self.big: list[tuple[int, bytes]] = []
        if _SHM_OK:
            self.big = [(i, a) for i, a in enumerate(args) if type(a) is bytes and len(a) >= SHM_MIN_BYTES]
        if self.big:
            left = {i for i, _ in self.big}
            args = tuple(None if i in left else a for i, a in enumerate(args))
        self.data = pickle.dumps((method, args, [(i, len(a)) for i, a in self.big]), protocol=pickle.HIGHEST_PROTOCOL)


class _Worker:
    def __init__(self, ctx: Any, settings_json: str) -> None:
        parent, child = ctx.Pipe(duplex=True)
        self.conn = parent
        self.shared: Any = None  # the buffer shared with this worker (an mmap of a memfd), made on first use
        self.process = ctx.Process(target=_worker_main, args=(child, settings_json), daemon=True, name="attnkit-worker")
        self.process.start()
        child.close()
        self.killed = False  # killed by the server (a timeout)
        self.dead = False  # found dead (its pipe broke)

    @property
    def alive(self) -> bool:
        return not self.killed and not self.dead and self.process.is_alive()

    def send(self, payload: _Payload) -> None:
        """Send a request: its large bodies into the shared buffer (a new, larger one first if they do not
        fit), the rest through the pipe. Raises ``OSError``/``ValueError`` when the worker is gone."""
        if payload.big:
            need = sum(len(a) for _, a in payload.big)
            if self.shared is None or len(self.shared) < need:
                self._share(max(SHM_MIN_SIZE, 1 << (need - 1).bit_length()))
            pos = 0
            for _, body in payload.big:
                self.shared[pos : pos + len(body)] = body
                pos += len(body)
        self.conn.send_bytes(payload.data)

    def _share(self, size: int) -> None:
        import mmap
        from multiprocessing import reduction

        fd = os.memfd_create("attnkit-body", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            shared = mmap.mmap(fd, size)
            self.conn.send_bytes(_SHM_CTL + size.to_bytes(8, "little"))
            reduction.send_handle(self.conn, fd, self.process.pid)
        finally:
            os.close(fd)  # the mapping (and the worker's) keep the buffer
        old, self.shared = self.shared, shared
        if old is not None:
            old.close()

    def kill(self) -> None:
        self.killed = True
        with contextlib.suppress(Exception):
            self.process.kill()

    def close(self, timeout: float = 2.0) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()  # the worker sees EOF and returns
        self.process.join(timeout)
        if self.process.is_alive():
            self.kill()
            self.process.join(1.0)
        if self.shared is not None:
            with contextlib.suppress(Exception):
                self.shared.close()
            self.shared = None


class _Job:
    """One computation in flight: which worker runs it, and whether it was given up."""

    def __init__(self) -> None:
        self.worker: _Worker | None = None
        self.cancelled = False
        self.lock = threading.Lock()

    def cancel(self) -> None:
        with self.lock:
            self.cancelled = True
            if self.worker is not None:
                self.worker.kill()


def _preload_modules() -> list[str]:
    from ..mechanisms import registry

    mods = {registry.get(n).__module__ for n in registry.names()}
    return ["attnkit.server.compute", *sorted(mods)]


#: every runner not closed yet: closed at interpreter exit. Workers ignore SIGTERM, so multiprocessing's
#: own exit handler (terminate, then join every daemon child) would wait forever on a runner that was
#: never closed (an app used without its lifespan, e.g. a TestClient outside ``with``).
_OPEN_RUNNERS: weakref.WeakSet[ProcessRunner] = weakref.WeakSet()


@atexit.register
def _close_open_runners() -> None:
    for runner in list(_OPEN_RUNNERS):
        runner.close()


class ProcessRunner:
    """Computations in ``max_concurrency`` worker processes; a timed-out or dead one is replaced.

    The pool's size is kept by one rule: the workers that exist plus the ones being started never
    exceed ``max_concurrency``, and once the pool has started, a *watcher* thread waits on every
    worker's exit sentinel and starts a replacement as soon as one ends, busy or idle, killed by the
    server or from outside. A dead worker is therefore never left sitting in the idle list until a
    request happens to pick it, and no count of the dead can see one death twice.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._settings_json = settings.to_json()
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(_preload_modules())
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._starting = 0  # workers being started (a reserved place in the pool)
        self._cond = threading.Condition()
        self._closed = False
        self._started = False  # the first worker was asked for: from then on the pool is kept full
        self.replaced = 0  # workers started in place of killed or dead ones
        self._wake_r, self._wake_w = multiprocessing.Pipe(duplex=False)
        self._watcher: threading.Thread | None = None
        self.executor = ThreadPoolExecutor(max_workers=settings.max_concurrency, thread_name_prefix="attnkit-dispatch")
        _OPEN_RUNNERS.add(self)

    def start(self) -> None:
        """Start every worker now (otherwise they start on first use)."""
        with self._cond:
            self._started = True
        self._fill()

    @property
    def pids(self) -> list[int]:
        with self._cond:
            return [w.process.pid for w in self._all if w.process.pid is not None]

    # -- pool bookkeeping (every change under ``self._cond``)
    def _reserve(self) -> bool:
        """Reserve a place for one more worker, if the pool has one free."""
        if self._closed or len(self._all) + self._starting >= self.settings.max_concurrency:
            return False
        self._starting += 1
        return True

    def _spawn(self) -> _Worker | None:
        """Start a worker in a reserved place (the lock is not held: starting takes milliseconds)."""
        try:
            w = _Worker(self._ctx, self._settings_json)
        except BaseException:
            with self._cond:
                self._starting -= 1
            raise
        with self._cond:
            self._starting -= 1
            if self._closed:
                w.kill()
                return None
            self._all.add(w)
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch, name="attnkit-pool-watcher", daemon=True)
                self._watcher.start()
        with contextlib.suppress(OSError):
            self._wake_w.send_bytes(b"")  # the watcher waits on the new worker's sentinel too
        return w

    def _forget(self, w: _Worker) -> bool:
        """Drop a worker that ended; True if it was still counted (the first to notice it)."""
        if w not in self._all:
            return False
        self._all.discard(w)
        with contextlib.suppress(ValueError):
            self._idle.remove(w)
        if not self._closed:
            self.replaced += 1
        self._cond.notify_all()
        return True

    def _fill(self) -> None:
        """Start workers until the pool is full again."""
        while True:
            with self._cond:
                if not self._started or not self._reserve():
                    return
            w = self._spawn()
            if w is None:
                return
            with self._cond:
                self._idle.append(w)
                self._cond.notify()

    def _watch(self) -> None:
        """Wait on every worker's exit; replace the ones that end while the runner is open."""
        from multiprocessing.connection import wait

        while True:
            with self._cond:
                if self._closed:
                    return
                by_sentinel = {w.process.sentinel: w for w in self._all}
            ready = wait([self._wake_r, *by_sentinel])
            ended = []
            with self._cond:
                if self._closed:
                    return
                for s in ready:
                    if s is self._wake_r:
                        with contextlib.suppress(OSError, EOFError):
                            while self._wake_r.poll():
                                self._wake_r.recv_bytes()
                    elif self._forget(by_sentinel[s]):
                        ended.append(by_sentinel[s])
            for w in ended:
                w.close(timeout=0.1)
            if ended:
                with contextlib.suppress(Exception):  # a failed start is retried by the next request
                    self._fill()

    def _take(self) -> _Worker:
        """An idle live worker, a newly started one, or (the pool full and busy) the next one freed."""
        while True:
            dead: list[_Worker] = []
            found = None
            with self._cond:
                self._started = True
                while self._idle:
                    w = self._idle.pop()
                    if w.alive:
                        found = w
                        break
                    self._forget(w)  # died while idle, before the watcher saw it
                    dead.append(w)
                reserved = found is None and self._reserve()
                if found is None and not reserved:
                    if self._closed:
                        raise ApiError(503, "shutting_down", "body: the server is shutting down", "body")
                    self._cond.wait(timeout=0.5)  # a worker is being returned or started
            for d in dead:
                d.close(timeout=0.1)
            if found is not None:
                return found
            if not reserved:
                continue
            started = self._spawn()
            if started is None:
                raise ApiError(503, "shutting_down", "body: the server is shutting down", "body")
            return started

    def _give_back(self, w: _Worker) -> None:
        with self._cond:
            if w.alive and not self._closed and w in self._all:
                self._idle.append(w)
                self._cond.notify()
                return
            self._forget(w)
        w.close(timeout=0.5)
        self._fill()  # in the dispatch thread: the pool is whole before this request's answer leaves

    def _dispatch(self, job: _Job, payload: _Payload) -> tuple[str, Any]:
        for _ in range(3):
            w = self._take()
            with job.lock:
                if job.cancelled:
                    self._give_back(w)
                    raise _TimedOut
                job.worker = w
            try:
                try:
                    w.send(payload)
                    if w.conn.recv_bytes() != _ACK:
                        raise EOFError("no acknowledgement")
                except (OSError, ValueError, EOFError):
                    # the worker died before it took the request (a broken pipe, or it went away before its
                    # acknowledgement): nothing ran, so another worker may take it
                    if job.cancelled or w.killed:
                        raise _TimedOut from None
                    w.dead = True
                    continue
                try:
                    return pickle.loads(w.conn.recv_bytes())
                except (EOFError, OSError, ConnectionError) as exc:
                    if job.cancelled or w.killed:
                        raise _TimedOut from None
                    code = w.process.exitcode
                    log.error("compute worker %s died (exit code %s) during a request", w.process.pid, code)
                    raise ApiError(
                        503, "worker_lost", f"query: the computation's worker process ended unexpectedly (exit code {code}); retry",
                        "query", headers={"Retry-After": "1"},
                    ) from exc  # fmt: skip
            finally:
                self._give_back(w)
        raise ApiError(503, "worker_lost", "query: no compute worker could take the request; retry", "query", headers={"Retry-After": "1"})

    async def call(self, method: str, args: tuple[Any, ...], timeout: float, release: Callable[[], None]) -> Any:
        payload = _Payload(method, args)
        job = _Job()
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.executor, self._dispatch, job, payload)

        def done(f: asyncio.Future[Any]) -> None:
            release()
            if not f.cancelled():
                f.exception()

        fut.add_done_callback(done)
        try:
            kind, value = await asyncio.wait_for(asyncio.shield(fut), timeout=timeout)
        except asyncio.TimeoutError:
            job.cancel()  # kills the worker; the dispatch thread then returns and frees the slot
            raise _TimedOut from None
        except _TimedOut:
            raise
        if kind == "ok":
            return value
        if kind == "api_error":
            status, code, message, field, headers = value
            raise ApiError(status, code, message, field, headers)
        log.error("internal error in a compute worker: %s", value)
        raise ApiError(500, "internal", f"internal server error ({value.split(':', 1)[0]}); this is a bug in attnkit", "body")

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            workers = list(self._all)
            self._all.clear()
            self._idle.clear()
            self._cond.notify_all()
        _OPEN_RUNNERS.discard(self)
        with contextlib.suppress(OSError):
            self._wake_w.send_bytes(b"")  # the watcher returns
        for w in workers:  # every worker sees EOF at once, then each is joined
            with contextlib.suppress(Exception):
                w.conn.close()
        for w in workers:
            w.close()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(2.0)
        self.executor.shutdown(wait=False, cancel_futures=True)


Runner = ThreadRunner | ProcessRunner


def make_runner(settings: Settings) -> Runner:
    return ProcessRunner(settings) if settings.isolation == "process" else ThreadRunner(settings)
