"""The inline lane: tiny requests computed on the event loop, without the trip to a worker process.

Most of the server CPU of a small request (one query over 100 neighbours of width 128) is not the
attention: it is handing the request to a compute worker and back (a dispatch thread, pickling, two
pipe round trips, two context switches). A request whose work is tiny gains nothing from running in a
worker that can be killed, so the server computes it itself, on the event loop, when all of these hold:

* ``inline_max_flops > 0`` and the request's admitted work (:func:`~.admission.estimate_work`, the
  same estimate that bounds every request) is at most ``inline_max_flops`` floating-point operations
  and :data:`MAX_BYTES` bytes of scores and buffers;
* the body is binary (read in place, no parsing) or JSON of at most :data:`MAX_JSON_BYTES` bytes;
* a worker has already built and run the mechanism for ``(name, options)`` within :data:`BUDGET_S`
  (a kind whose cost is unknown, such as large weights or a forward slower than its FLOPs say, runs
  in a worker first; being in a cache proves nothing);
* that ``(name, options)`` has not taken more than :data:`BUDGET_S` of CPU time inline in
  :data:`OVERRUNS` requests in a row (each inline request is timed; such a run sends its kind back to
  the workers for good). One overrun alone does not: on a shared machine a request's thread can be
  charged for time it did not use (a virtual CPU descheduled by its host), and one such hiccup would
  double the CPU of that kind's requests for the rest of the server's life;
* the time limit ``request_timeout_s`` is at least :data:`MIN_TIMEOUT_FACTOR` times :data:`BUDGET_S`.

Why the time-limit guarantee still holds: an inline request is decoded, checked and run by the same
code as in a worker, on at most ``inline_max_flops`` operations (default ``1e6``: well under a
millisecond of NumPy even at a pessimistic 1 GFLOP/s) over tensors of at most ``max_elements``
elements that are already in memory; its mechanism is either cached or was built by a worker within
the budget. So an inline request takes a few milliseconds at most, while the limit it must meet is
at least 20 times the budget: it cannot run past its limit. A mechanism whose real cost the estimate
misjudges (Python loops over tiny tensors) overruns the budget at most :data:`OVERRUNS` times in a row
per ``(name, options)`` before it is sent to the workers. What the lane gives up is only what the
workers add for large work: a kill on timeout and a memory cap, neither of which a request this small
can need.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Hashable, Mapping
from typing import Any

from . import codec
from .compute import Compute
from .settings import Settings

__all__ = ["InlineLane", "BUDGET_S", "MAX_BYTES", "MAX_JSON_BYTES", "MIN_TIMEOUT_FACTOR", "OVERRUNS"]

log = logging.getLogger("attnkit.server")

#: the most time an inline request (decode, build, forward, encode) may take; one that takes longer
#: sends its ``(name, options)`` to the workers from then on
BUDGET_S = 0.005
#: the most bytes of scores and buffers an inline request may need (the admission estimate)
MAX_BYTES = 8 * 1024 * 1024
#: the largest JSON body parsed on the event loop (binary bodies are read in place, at no cost)
MAX_JSON_BYTES = 32 * 1024
#: the inline lane is used only when ``request_timeout_s >= MIN_TIMEOUT_FACTOR * BUDGET_S``
MIN_TIMEOUT_FACTOR = 20
#: inline requests of one kind in a row over the budget that send the kind to the workers
OVERRUNS = 2
#: how often (in inline requests) the cached mechanisms are measured again
REFRESH_EVERY = 64
#: the most ``(name, options)`` kinds remembered as fast or slow
_MAX_KINDS = 4096


class _GcClock:
    """CPU time each thread has spent in Python's garbage collector (a full collection of the server's heap
    takes tens of milliseconds; it is not the cost of the request it interrupts, and charged to one it
    would send that request's kind to the workers for good)."""

    def __init__(self) -> None:
        self._local = threading.local()
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        local = self._local
        if phase == "start":
            local.began = time.thread_time()
        else:
            local.total = getattr(local, "total", 0.0) + time.thread_time() - getattr(local, "began", time.thread_time())

    def spent(self) -> float:
        """This thread's CPU seconds in the collector so far."""
        return getattr(self._local, "total", 0.0)


_GC_CLOCK = _GcClock()


class InlineLane:
    """Decide, and run, the requests the server computes itself (see the module docstring)."""

    def __init__(self, settings: Settings, compute: Compute | None = None) -> None:
        self.settings = settings
        self.compute = compute or Compute(settings)
        self.enabled = settings.inline_max_flops > 0 and settings.request_timeout_s >= MIN_TIMEOUT_FACTOR * BUDGET_S
        self._fast: set[Hashable] = set()  # kinds a worker built and ran within the budget
        self._slow: set[Hashable] = set()  # kinds that ran past the budget inline (OVERRUNS times in a row)
        self._overran: dict[Hashable, int] = {}  # kinds whose last inline requests ran past the budget: how many
        self.served = 0  # requests answered inline (for tests and metrics)

    @property
    def _plans(self) -> dict[Hashable, Any]:
        """The compute's plans (``(name, options, shapes)`` -> what they resolve to; see :meth:`Compute.plan`)."""
        return self.compute._plans

    def _remember(self, kinds: set[Hashable], key: Hashable) -> None:
        if len(kinds) >= _MAX_KINDS:
            kinds.clear()
        kinds.add(key)

    def attention(
        self, name: str, media: str, body: bytes, headers: Mapping[str, str], query: Mapping[str, str], accept: str, scores: bool
    ) -> tuple[tuple[bytes, dict[str, str]] | None, Hashable | None]:
        """The answer if this request is computed inline, else ``(None, key)``: ``key`` names its kind for
        :meth:`worker_done` (``None`` when it can never be inline). Client errors found while deciding are
        raised as :class:`~.codec.ApiError`, exactly as a worker would raise them."""
        if not self.enabled or (media == codec.JSON and len(body) > MAX_JSON_BYTES):
            return None, None
        t0 = time.perf_counter()
        cpu0, gc0 = time.thread_time(), _GC_CLOCK.spent()
        c = self.compute
        tensors, options, encoding = c.decode_body(media, body, headers, query)
        # what (name, options, shapes) resolve to is the same every time: the options inferred from the
        # shapes, validated, the cache key and the admission estimate are looked up, not recomputed
        plan = c.plan(name, options, tensors)
        key = plan.key
        if key in self._slow:
            return None, None
        if key not in self._fast:  # even when cached (thread isolation shares the cache): its cost is not known yet
            return None, key
        mech = c.planned_mechanism(plan)
        work = c.plan_work(plan, mech, tensors)
        if work is None or work.flops > self.settings.inline_max_flops or work.nbytes > MAX_BYTES:
            return None, None
        # the cached mechanism is measured again every REFRESH_EVERY inline requests (measuring reads
        # /proc): what a tiny forward can add to it is at most MAX_BYTES, so the cache bound holds meanwhile
        answer = c.respond(mech, plan.names, key, tensors, encoding, accept, scores, t0, work, refresh=self.served % REFRESH_EVERY == 0)
        # CPU time (being preempted on a busy machine is not work), less any garbage collection it triggered
        took = time.thread_time() - cpu0 - (_GC_CLOCK.spent() - gc0)
        if took > BUDGET_S:
            overran = self._overran.pop(key, 0) + 1
            if overran >= OVERRUNS:
                self._remember(self._slow, key)
                log.info("%s took %.1f ms inline (budget %.1f ms): later ones run in the workers", plan.cls.name, took * 1e3, BUDGET_S * 1e3)
            else:
                if len(self._overran) >= _MAX_KINDS:
                    self._overran.clear()
                self._overran[key] = overran
        elif self._overran:
            self._overran.pop(key, None)
        self.served += 1
        return answer, key

    def worker_done(self, key: Hashable | None, headers: Mapping[str, str]) -> None:
        """A worker answered a request of kind ``key`` in ``X-Attnkit-Elapsed-Ms``: within the budget, later
        ones may be built and computed inline."""
        if key is None or key in self._fast or key in self._slow:
            return
        try:
            elapsed_s = float(headers.get("X-Attnkit-Elapsed-Ms", "inf")) / 1e3
        except ValueError:
            return
        if elapsed_s <= BUDGET_S:
            self._remember(self._fast, key)

    def knows(self, key: Any) -> bool:
        return key in self._fast or key in self._slow
