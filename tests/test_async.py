"""forward_async / forward_batch / forward_stream: the same result as forward, bit for bit, for every
registered mechanism; async calls really overlap; streaming keeps order and bounded buffering."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import numpy as np
import pytest

from attnkit import ShapeError
from attnkit.errors import DisposedError
from attnkit.mechanisms import registry
from attnkit.sdk import Attention

#: required constructor options of the registered mechanisms, where the generic value 16 would not do
_REQUIRED = {"cross": {"query_dim": 16, "key_dim": 12}}


def make(name: str):
    """The mechanism ``name`` with its required options filled in (16 for a required int)."""
    opts = dict(_REQUIRED.get(name, {}))
    for spec in registry.option_specs(name):
        if spec.required and spec.name not in opts:
            assert spec.type == "int", f"{name}: add its required option {spec.name!r} ({spec.type}) to _REQUIRED"
            opts[spec.name] = 16
    if "heads" in {s.name for s in registry.option_specs(name)}:
        opts.setdefault("heads", 4)
    if "seed" in {s.name for s in registry.option_specs(name)}:
        opts.setdefault("seed", 7)
    return registry.create(name, **opts)


def inputs(mech, n: int, seq_len: int = 12) -> list[tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(123)
    return [tuple(mech.sample_inputs(seq_len + i, rng)) for i in range(n)]


def same(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


NAMES = registry.names()


@pytest.mark.parametrize("name", NAMES)
def test_every_mechanism_is_an_attention(name: str) -> None:
    assert isinstance(make(name), Attention)


@pytest.mark.parametrize("name", NAMES)
def test_async_batch_stream_equal_forward_bit_for_bit(name: str) -> None:
    mech = make(name)
    items = inputs(mech, 3)
    expected = [mech.forward(*it) for it in items]
    assert all(np.isfinite(e).all() for e in expected)

    got_async = asyncio.run(_gather(mech, items))
    n_args = {len(it) for it in items}
    assert len(n_args) == 1
    per_item = [[it[j] for it in items] if j < len(items[0]) else None for j in range(4)]
    got_batch = mech.forward_batch(per_item[0], per_item[1], per_item[2], mask=per_item[3])
    got_stream = asyncio.run(_collect(mech.forward_stream(_agen(items), max_pending=2)))
    for e, a, b, s in zip(expected, got_async, got_batch, got_stream, strict=True):
        assert same(e, a), f"{name}: forward_async differs from forward"
        assert same(e, b), f"{name}: forward_batch differs from forward"
        assert same(e, s), f"{name}: forward_stream differs from forward"
    # forward is deterministic: a second run gives the same bits (so the checks above mean something)
    assert same(expected[0], mech.forward(*items[0]))


async def _gather(mech, items):
    return await asyncio.gather(*(mech.forward_async(*it) for it in items))


async def _agen(items, delay: float = 0.0):
    for it in items:
        if delay:
            await asyncio.sleep(delay)
        yield it


async def _collect(agen):
    return [x async for x in agen]


def test_forward_batch_shares_keys_and_values() -> None:
    mech = make("flash")
    rng = np.random.default_rng(0)
    qs = [rng.standard_normal((5 + i, 4, 64)).astype(np.float32) for i in range(3)]
    k = rng.standard_normal((9, 4, 64)).astype(np.float32)
    v = rng.standard_normal((9, 4, 64)).astype(np.float32)
    out = mech.forward_batch(qs, k, v)
    for q, o in zip(qs, out, strict=True):
        assert same(o, mech.forward(q, k, v))
    with pytest.raises(ShapeError, match="key"):
        mech.forward_batch(qs, [k, k], v)
    with pytest.raises(ShapeError, match="queries"):
        mech.forward_batch(qs[0], k, v)


def test_two_forward_async_calls_overlap_in_time() -> None:
    """Timestamps taken inside forward: the second call starts before the first one ends."""
    mech = make("flash")
    real = mech.forward
    stamps: dict[int, tuple[float, float, int]] = {}
    lock = threading.Lock()

    def timed(a, b=None, c=None, mask=None):
        t0 = time.perf_counter()
        out = real(a, b, c, mask=mask)
        t1 = time.perf_counter()
        with lock:
            stamps[id(a)] = (t0, t1, threading.get_ident())
        return out

    mech.forward = timed  # forward_async calls self.forward
    rng = np.random.default_rng(1)
    # big enough that one forward takes tens of milliseconds on any machine
    q1, q2 = (rng.standard_normal((768, 4, 64)).astype(np.float32) for _ in range(2))

    async def main():
        loop_thread = threading.get_ident()
        r = await asyncio.gather(mech.forward_async(q1), mech.forward_async(q2))
        return loop_thread, r

    loop_thread, (o1, o2) = asyncio.run(main())
    (s1, e1, t1), (s2, e2, t2) = stamps[id(q1)], stamps[id(q2)]
    assert max(s1, s2) < min(e1, e2), f"calls did not overlap: [{s1:.4f}, {e1:.4f}] and [{s2:.4f}, {e2:.4f}]"
    assert t1 != t2 and loop_thread not in (t1, t2), "forward must run on worker threads, off the event loop"
    assert o1.shape == q1.shape and o2.shape == q2.shape


def _clear_blas_control() -> None:
    try:
        from threadpoolctl import OpenBLASController
    except ImportError:  # threadpoolctl missing or older: no controlling-thread rule
        return
    clear = getattr(OpenBLASController, "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)


@pytest.fixture
def blas_threads():
    """BLAS as in a fresh process: its default thread count, no thread controlling the limit yet."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    ctl = threadpoolctl.ThreadpoolController()
    if not ctl.select(user_api="blas").lib_controllers:
        pytest.skip("no BLAS library that threadpoolctl can see")
    _clear_blas_control()
    ctl.limit(limits=os.cpu_count() or 1, user_api="blas")
    _clear_blas_control()
    yield lambda: [c.num_threads for c in ctl.select(user_api="blas").lib_controllers]
    _clear_blas_control()


@pytest.mark.parametrize("seq_len", [12, 768])
def test_async_equals_forward_from_the_main_thread(seq_len: int, blas_threads) -> None:
    """forward in the caller's thread, then forward_async on worker threads: the same bits.

    768 tokens take the threaded NumPy fast path, whose BLAS thread limit must hold whichever
    thread calls it (threadpoolctl lets only one 'controlling' thread limit OpenBLAS).
    """
    mech = make("flash")
    rng = np.random.default_rng(6)
    qs = [rng.standard_normal((seq_len, 4, 64)).astype(np.float32) for _ in range(3)]
    expected = [mech.forward(q) for q in qs]  # the main thread first

    async def main():
        return await asyncio.gather(*(mech.forward_async(q) for q in qs))

    got = asyncio.run(main())
    for e, g in zip(expected, got, strict=True):
        assert same(e, g), f"max |forward - forward_async| = {float(np.abs(e - g).max()):.3e}"
    assert all(same(e, mech.forward(q)) for e, q in zip(expected, qs, strict=True))


def test_concurrent_forward_async_leaves_blas_threads_as_they_were(blas_threads) -> None:
    """The fast path holds BLAS to one thread inside its pool and must give the threads back."""
    before = blas_threads()
    mech = make("flash")
    rng = np.random.default_rng(7)
    qs = [rng.standard_normal((768, 4, 64)).astype(np.float32) for _ in range(3)]

    async def main():
        return await asyncio.gather(*(mech.forward_async(q) for q in qs))

    asyncio.run(main())
    assert blas_threads() == before
    mech.forward(qs[0])
    assert blas_threads() == before


def test_forward_async_leaves_the_event_loop_free() -> None:
    mech = make("flash")
    q = np.random.default_rng(2).standard_normal((768, 4, 64)).astype(np.float32)
    ticks = 0

    async def ticker(stop: asyncio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    async def main():
        stop = asyncio.Event()
        t = asyncio.ensure_future(ticker(stop))
        out = await mech.forward_async(q)
        stop.set()
        await t
        return out

    out = asyncio.run(main())
    assert ticks > 1, "the event loop did not run while forward_async computed"
    assert same(out, mech.forward(q))


def test_forward_stream_keeps_order_and_bounded_buffering() -> None:
    mech = make("flash")
    rng = np.random.default_rng(3)
    items = [tuple(rng.standard_normal((4 + i, 4, 64)).astype(np.float32) for _ in range(3)) for i in range(8)]
    pulled = 0
    lead: list[int] = []

    async def source():
        nonlocal pulled
        for it in items:
            pulled += 1
            yield it

    async def main(max_pending: int):
        nonlocal pulled
        pulled = 0
        lead.clear()
        out = []
        async for y in mech.forward_stream(source(), max_pending=max_pending):
            lead.append(pulled - len(out))  # items taken from the source but not yet handed out, incl. this one
            out.append(y)
            await asyncio.sleep(0.001)  # a slow consumer
        return out

    for max_pending in (1, 2, 3):
        out = asyncio.run(main(max_pending))
        assert len(out) == len(items)
        for it, y in zip(items, out, strict=True):
            assert same(y, mech.forward(*it))  # in order: each output matches its own input
        assert max(lead) <= max_pending, f"buffered {max(lead)} items with max_pending={max_pending}"


def test_forward_stream_with_masks_and_bad_items() -> None:
    mech = make("flash")
    rng = np.random.default_rng(4)
    q = rng.standard_normal((6, 4, 64)).astype(np.float32)
    mask = np.tril(np.ones((6, 6), dtype=bool))
    out = asyncio.run(_collect(mech.forward_stream(_agen([(q, q, q, mask)]))))
    assert same(out[0], mech.forward(q, q, q, mask=mask))
    with pytest.raises(ShapeError, match="inputs"):
        asyncio.run(_collect(mech.forward_stream(_agen([(q, q, q), "not a tuple"]))))
    with pytest.raises(Exception, match="max_pending"):
        asyncio.run(_collect(mech.forward_stream(_agen([(q,)]), max_pending=0)))


def test_stream_stopped_early_cancels_pending_work() -> None:
    mech = make("flash")
    rng = np.random.default_rng(5)
    items = [tuple(rng.standard_normal((8, 4, 64)).astype(np.float32) for _ in range(3)) for _ in range(6)]
    problems: list[dict] = []

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: problems.append(ctx))
        agen = mech.forward_stream(_agen(items), max_pending=3)
        first = await agen.__anext__()
        await agen.aclose()
        await asyncio.sleep(0.05)
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return first, left

    first, left = asyncio.run(main())
    assert same(first, mech.forward(*items[0]))
    assert left == [], f"tasks still pending after aclose: {left}"
    assert problems == []


def test_stream_failure_is_raised_in_order_and_nothing_leaks() -> None:
    mech = make("flash")
    rng = np.random.default_rng(8)
    good = tuple(rng.standard_normal((8, 4, 64)).astype(np.float32) for _ in range(3))
    bad = (rng.standard_normal((8, 3, 64)).astype(np.float32),)  # 3 heads where 4 are expected
    problems: list[dict] = []
    got: list[np.ndarray] = []

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: problems.append(ctx))
        with pytest.raises(ShapeError):
            async for y in mech.forward_stream(_agen([good, bad, good, bad]), max_pending=3):
                got.append(y)
        await asyncio.sleep(0.05)

    asyncio.run(main())
    assert len(got) == 1 and same(got[0], mech.forward(*good))  # the outputs before the failure, in order
    assert problems == [], problems


def test_disposed_mechanism_refuses_async_forms() -> None:
    mech = make("flash")
    q = np.zeros((2, 4, 64), dtype=np.float32)
    mech.dispose()
    with pytest.raises(DisposedError):
        asyncio.run(mech.forward_async(q))
    with pytest.raises(DisposedError):
        asyncio.run(_collect(mech.forward_stream(_agen([(q,)]))))
    with pytest.raises(DisposedError):
        mech.forward_batch([q])
