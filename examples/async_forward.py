"""Run several attention calls at once with forward_async (NumPy releases the GIL, so they overlap).

Run: python examples/async_forward.py
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from attnkit import AttentionBuilder


async def main() -> None:
    attn = AttentionBuilder().type("flash").heads(8).dim(64).build()
    rng = np.random.default_rng(0)
    requests = [rng.standard_normal((512, 8, 64)).astype(np.float32) for _ in range(4)]

    t0 = time.perf_counter()
    sequential = [attn.forward(q) for q in requests]
    t_seq = time.perf_counter() - t0

    t0 = time.perf_counter()
    concurrent = await asyncio.gather(*(attn.forward_async(q) for q in requests))
    t_async = time.perf_counter() - t0

    diff = max(float(np.abs(a - b).max()) for a, b in zip(sequential, concurrent, strict=True))
    assert diff <= 1e-5
    print(f"{len(requests)} requests of shape {requests[0].shape}")
    print(f"  one after another: {t_seq * 1e3:.1f} ms; with forward_async and asyncio.gather: {t_async * 1e3:.1f} ms")
    print(f"  largest difference from forward: {diff:.1e}")

    # the event loop stays free while forward_async computes
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.ensure_future(ticker())
    await attn.forward_async(requests[0])
    task.cancel()
    print(f"  the event loop ran {ticks} other steps during one forward_async call")


if __name__ == "__main__":
    asyncio.run(main())
