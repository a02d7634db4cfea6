"""Dynamic batching for named models (Triton's dynamic batcher, for the Open Inference Protocol route).

Requests to the same model whose inputs agree in everything but the leading batch axis (the same
inputs present, the same trailing shapes and dtypes) are merged into one forward pass over the
concatenated batch, and the output is split back. When a batch starts:

* a request that finds its model idle (no batch of its kind running) runs at once: no added latency
  at low load;
* requests that arrive while a batch of their kind computes wait in a queue. The next batch takes the
  queue (up to ``max_batch_size`` items) as soon as a running batch of the kind ends, or as soon as the
  queue holds ``max_batch_size`` items (a full batch gains nothing by waiting), or when the oldest has
  waited ``max_batch_delay_ms`` and fewer than ``max_in_flight`` batches of the kind run (the number of
  compute slots: a batch that would only wait for a slot keeps collecting requests instead).

Why the last rule is bounded: a batch that the delay starts while every compute slot is taken only
waits for a slot, holding fewer requests than it would have collected meanwhile, and each batch costs
the event loop a trip to a worker. (On the 2-core test machine, with 32 requests in flight, batches
held about as many requests with the bound as without it, 8.5 and 8.2: it matters where batches
outnumber the slots, as they did when the loop was slower.)

Every mechanism treats leading batch items independently, so the merged answer is the unbatched one;
with NumPy's kernels it is the same bits (tested for ``multi_head`` and ``flash``). If the merged
forward fails (one request's inputs are bad), each request runs alone and gets its own answer or error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np

from . import model_metrics

__all__ = ["DynamicBatcher"]

Key = tuple[Any, ...]


@dataclasses.dataclass
class _Item:
    tensors: Mapping[str, np.ndarray]
    size: int
    future: asyncio.Future[np.ndarray]
    since: float = dataclasses.field(default_factory=time.perf_counter)


@dataclasses.dataclass
class _Queue:
    items: list[_Item] = dataclasses.field(default_factory=list)
    queued: int = 0  # batch items (leading-axis rows) in ``items``
    running: int = 0
    timer: asyncio.TimerHandle | None = None


class DynamicBatcher:
    """Merge compatible concurrent forwards of one model (see the module docstring).

    ``run`` executes a blocking function off the event loop within the server's limits (``ServerState.run``);
    ``forward(mechanism, tensors)`` is the blocking forward of one (possibly merged) request.
    """

    def __init__(
        self,
        run: Callable[[Callable[[], Any]], Awaitable[Any]],
        forward: Callable[[Any, Mapping[str, np.ndarray]], np.ndarray],
        delay_s: float,
        max_batch_size: int,
        max_in_flight: int | None = None,
    ) -> None:
        self._run = run
        self._forward = forward
        self.delay_s = float(delay_s)
        self.max_batch_size = int(max_batch_size)
        #: the most batches of one kind that the delay may have running at once (``None``: no bound)
        self.max_in_flight = None if max_in_flight is None else max(1, int(max_in_flight))
        self._queues: dict[Key, _Queue] = {}
        #: sizes of the merged batches run so far (requests per forward), for tests and metrics
        self.batch_sizes: list[int] = []

    @staticmethod
    def key(model_id: Any, tensors: Mapping[str, np.ndarray]) -> Key | None:
        """The merge key of a request, or ``None`` if it cannot be merged (an input without a batch axis)."""
        parts: list[Any] = [model_id]
        batch = None
        for name in sorted(tensors):
            t = tensors[name]
            if t.ndim < 2 or (batch is not None and t.shape[0] != batch):
                return None
            batch = t.shape[0]
            parts.append((name, t.shape[1:], t.dtype.str))
        return tuple(parts)

    async def submit(self, model_id: Any, mechanism: Any, tensors: Mapping[str, np.ndarray]) -> np.ndarray:
        key = self.key(model_id, tensors)
        label = _label(model_id)
        if key is None or self.max_batch_size <= 1:
            since = time.perf_counter()

            def alone() -> np.ndarray:
                model_metrics.observe_queue(label, time.perf_counter() - since)
                return self._forward(mechanism, tensors)

            model_metrics.observe_batch(label, 1)
            return await self._run(alone)
        loop = asyncio.get_running_loop()
        item = _Item(tensors, int(next(iter(tensors.values())).shape[0]), loop.create_future())
        q = self._queues.setdefault(key, _Queue())
        q.items.append(item)
        q.queued += item.size
        if q.running == 0 or q.queued >= self.max_batch_size:  # idle, or a full batch waits: start it now
            self._start(key, mechanism)
        elif q.timer is None and self.delay_s > 0:
            q.timer = loop.call_later(self.delay_s, self._expired, key, mechanism)
        return await item.future

    def _expired(self, key: Key, mechanism: Any) -> None:
        """The oldest queued request of ``key`` has waited the delay: start a batch beside the running ones
        if fewer than ``max_in_flight`` run, else leave the queue to the next batch that ends."""
        q = self._queues.get(key)
        if q is None:
            return
        q.timer = None
        if self.max_in_flight is None or q.running < self.max_in_flight:
            self._start(key, mechanism)

    def _start(self, key: Key, mechanism: Any) -> None:
        """Take up to ``max_batch_size`` items of ``key``'s queue and run them as one forward."""
        q = self._queues.get(key)
        if q is None:
            return
        if q.timer is not None:
            q.timer.cancel()
            q.timer = None
        batch: list[_Item] = []
        total = 0
        while q.items and (not batch or total + q.items[0].size <= self.max_batch_size):
            it = q.items.pop(0)
            q.queued -= it.size
            if it.future.done():  # its client went away
                continue
            batch.append(it)
            total += it.size
        if not batch:
            if q.running == 0:
                self._queues.pop(key, None)
            return
        q.running += 1
        now, label = time.perf_counter(), _label(key[0])
        for it in batch:
            model_metrics.observe_queue(label, now - it.since)
        model_metrics.observe_batch(label, len(batch))
        task = asyncio.ensure_future(self._execute(mechanism, batch))

        def done(_: asyncio.Future[None]) -> None:
            q.running -= 1
            if q.items:  # a slot of this kind is free: the queue runs now, merged
                self._start(key, mechanism)
            elif q.running == 0 and self._queues.get(key) is q:
                self._queues.pop(key, None)

        task.add_done_callback(done)

    async def _execute(self, mechanism: Any, batch: list[_Item]) -> None:
        self.batch_sizes.append(len(batch))
        if len(batch) == 1:
            await self._settle(batch[0], lambda: self._forward(mechanism, batch[0].tensors))
            return
        names = list(batch[0].tensors)
        merged = {n: np.concatenate([it.tensors[n] for it in batch]) for n in names}
        try:
            out = await self._run(lambda: self._forward(mechanism, merged))
        except Exception:  # noqa: BLE001 - one bad request: every request runs alone and gets its own answer
            await asyncio.gather(*(self._settle(it, functools.partial(self._forward, mechanism, it.tensors)) for it in batch))
            return
        start = 0
        for it in batch:
            if not it.future.done():
                it.future.set_result(out[start : start + it.size])
            start += it.size

    async def _settle(self, item: _Item, fn: Callable[[], np.ndarray]) -> None:
        try:
            result = await self._run(fn)
        except Exception as exc:  # noqa: BLE001 - handed to the request that owns it
            if not item.future.done():
                item.future.set_exception(exc)
            return
        if not item.future.done():
            item.future.set_result(result)


def _label(model_id: Any) -> str:
    """The model name of a merge key's first part (``(name, id(mechanism))`` or a plain name)."""
    return str(model_id[0] if isinstance(model_id, tuple) else model_id)
