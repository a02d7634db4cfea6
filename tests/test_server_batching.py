"""Issue 14: dynamic batching merges concurrent compatible requests into one forward and splits the answer;
each request gets exactly the bits of its own unbatched forward, and a bad request only fails itself."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping

import numpy as np
import pytest

pytest.importorskip("fastapi")

from attnkit.errors import AttentionError, NonFiniteError  # noqa: E402
from attnkit.mechanisms import registry  # noqa: E402
from attnkit.server.batching import DynamicBatcher  # noqa: E402


def _batcher(mech: object, delay_s: float, max_batch: int = 64, max_in_flight: int | None = None) -> tuple[DynamicBatcher, list[int]]:
    calls: list[int] = []
    gate = threading.Event()

    def forward(m: object, tensors: Mapping[str, np.ndarray]) -> np.ndarray:
        calls.append(int(tensors["query"].shape[0]))
        if len(calls) == 1:  # the first forward is slow, so the next requests queue behind it
            gate.wait(2.0)
        q = tensors["query"]
        if not np.isfinite(q).all():
            raise NonFiniteError("query: holds NaN or infinity")
        return m.forward(q, tensors.get("key"), tensors.get("key"))  # type: ignore[attr-defined]

    async def run(fn):  # type: ignore[no-untyped-def]
        return await asyncio.get_running_loop().run_in_executor(None, fn)

    b = DynamicBatcher(run, forward, delay_s, max_batch, max_in_flight)
    b._gate = gate  # type: ignore[attr-defined]
    return b, calls


@pytest.mark.parametrize(
    "name,opts,shape", [("multi_head", {"model_dim": 16, "heads": 4, "seed": 0}, (5, 16)), ("flash", {"heads": 2, "dim": 8}, (5, 2, 8))]
)
def test_merged_batches_give_the_unbatched_bits(name: str, opts: dict, shape: tuple[int, ...]) -> None:
    mech = registry.create(name, **opts)
    rng = np.random.default_rng(0)
    queries = [rng.standard_normal((b, *shape)).astype(np.float32) for b in (1, 2, 1, 3, 1, 2)]

    async def main() -> list[np.ndarray]:
        b, calls = _batcher(mech, delay_s=5.0)
        first = asyncio.ensure_future(b.submit("m", mech, {"query": queries[0]}))
        await asyncio.sleep(0.05)  # the first runs alone (its model was idle) and blocks
        rest = [asyncio.ensure_future(b.submit("m", mech, {"query": q})) for q in queries[1:]]
        await asyncio.sleep(0.05)
        b._gate.set()  # type: ignore[attr-defined]
        out = await asyncio.gather(first, *rest)
        assert calls == [1, 9] and b.batch_sizes == [1, 5]  # the five queued requests (9 items) ran as one
        return out

    outs = asyncio.run(main())
    for q, o in zip(queries, outs, strict=True):
        np.testing.assert_array_equal(o, mech.forward(q))


def test_incompatible_shapes_do_not_merge_and_a_bad_request_fails_alone() -> None:
    mech = registry.create("multi_head", model_dim=8, heads=2, seed=0)
    rng = np.random.default_rng(1)
    good = [rng.standard_normal((2, 4, 8)).astype(np.float32) for _ in range(3)]
    bad = good[1].copy()
    bad[0, 0, 0] = np.nan
    other_len = rng.standard_normal((1, 6, 8)).astype(np.float32)

    async def main() -> list[object]:
        b, calls = _batcher(mech, delay_s=5.0, max_batch=64)
        first = asyncio.ensure_future(b.submit("m", mech, {"query": good[0]}))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(b.submit("m", mech, {"query": q})) for q in (good[1], bad, good[2], other_len)]
        await asyncio.sleep(0.05)
        b._gate.set()  # type: ignore[attr-defined]
        out = await asyncio.gather(first, *rest, return_exceptions=True)
        assert 6 in calls  # the three (2, 4, 8) requests were tried as one batch, then one by one
        return out

    res = asyncio.run(main())
    assert isinstance(res[2], AttentionError) and "query" in str(res[2])
    for q, r in zip([good[0], good[1], None, good[2], other_len], res, strict=True):
        if q is not None:
            np.testing.assert_array_equal(r, mech.forward(q))


def test_max_batch_size_bounds_a_merge() -> None:
    mech = registry.create("flash", heads=1, dim=4)
    qs = [np.full((2, 3, 1, 4), i, np.float32) for i in range(5)]

    async def main() -> list[int]:
        b, calls = _batcher(mech, delay_s=5.0, max_batch=4)
        first = asyncio.ensure_future(b.submit("m", mech, {"query": qs[0]}))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(b.submit("m", mech, {"query": q})) for q in qs[1:]]
        await asyncio.sleep(0.05)
        b._gate.set()  # type: ignore[attr-defined]
        outs = await asyncio.gather(first, *rest)
        for q, o in zip(qs, outs, strict=True):
            np.testing.assert_array_equal(o, mech.forward(q))
        return calls

    calls = asyncio.run(main())
    assert calls[0] == 2 and max(calls) <= 4 and sum(calls) == 10


def test_a_full_queue_starts_at_once_and_the_delay_respects_max_in_flight() -> None:
    """The dispatch rules: a queue that holds max_batch_size items runs without waiting for the running batch
    or the delay; an expired delay starts no batch beyond max_in_flight (the queue runs, merged, when the
    running batch ends); answers are the unbatched bits."""
    mech = registry.create("multi_head", model_dim=8, heads=2, seed=0)
    rng = np.random.default_rng(3)
    qs = [rng.standard_normal((1, 4, 8)).astype(np.float32) for _ in range(9)]

    async def full_queue() -> list[np.ndarray]:
        b, calls = _batcher(mech, delay_s=5.0, max_batch=4)
        first = asyncio.ensure_future(b.submit("m", mech, {"query": qs[0]}))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(b.submit("m", mech, {"query": q})) for q in qs[1:5]]
        await asyncio.sleep(0.05)
        assert calls == [1, 4]  # four queued: ran beside the blocked first one, long before the 5 s delay
        b._gate.set()  # type: ignore[attr-defined]
        return await asyncio.gather(first, *rest)

    async def bounded_delay(max_in_flight: int | None) -> tuple[list[int], list[int], list[np.ndarray]]:
        b, calls = _batcher(mech, delay_s=0.01, max_in_flight=max_in_flight)
        first = asyncio.ensure_future(b.submit("m", mech, {"query": qs[0]}))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(b.submit("m", mech, {"query": q})) for q in qs[1:4]]
        await asyncio.sleep(0.1)  # the delay has expired ten times over
        before = list(calls)
        b._gate.set()  # type: ignore[attr-defined]
        return before, calls, await asyncio.gather(first, *rest)

    outs = asyncio.run(full_queue())
    before, calls, outs_bounded = asyncio.run(bounded_delay(1))
    assert before == [1] and calls == [1, 3]  # one batch in flight at most: the three waited and ran as one
    unbounded_before, _, _ = asyncio.run(bounded_delay(None))
    assert unbounded_before == [1, 3]  # without the bound the delay starts them beside the running batch
    for q, o in zip(qs[:5], outs, strict=True):
        np.testing.assert_array_equal(o, mech.forward(q))
    for q, o in zip(qs[:4], outs_bounded, strict=True):
        np.testing.assert_array_equal(o, mech.forward(q))


def test_live_server_concurrent_tritonclient_requests_match_the_library(tmp_path) -> None:  # type: ignore[no-untyped-def]
    httpclient = pytest.importorskip("tritonclient.http")
    from test_server_models import live_server

    from attnkit.server.settings import Settings

    (tmp_path / "mha.toml").write_text('type = "multi_head"\n[options]\nmodel_dim = 16\nheads = 4\n')
    lib = registry.create("multi_head", model_dim=16, heads=4, seed=0)
    rng = np.random.default_rng(2)
    qs = [rng.standard_normal((1, 8, 16)).astype(np.float32) for _ in range(24)]
    with live_server(Settings(models_dir=str(tmp_path), max_batch_delay_ms=20)) as url:
        tc = httpclient.InferenceServerClient(url, concurrency=8)
        try:
            pending = []
            for q in qs:
                t = httpclient.InferInput("query", list(q.shape), "FP32")
                t.set_data_from_numpy(q, binary_data=True)
                pending.append(tc.async_infer("mha", [t]))
            outs = [p.get_result().as_numpy("output") for p in pending]
        finally:
            tc.close()
    for q, o in zip(qs, outs, strict=True):
        np.testing.assert_array_equal(o, lib.forward(q))
    # (how the 24 requests were grouped depends on timing: the answers are what is asserted)
