"""Stream inputs through a mechanism with forward_stream: in order, with bounded buffering.

A producer yields (query, keys, values) tuples as they arrive (here: chunks of a long document,
each attending to itself); forward_stream runs at most ``max_pending`` forwards at once and yields
the outputs in the order the inputs came.

Run: python examples/streaming.py
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np

from attnkit.sdk import for_generation


async def chunks(n: int, length: int, heads: int, dim: int) -> AsyncIterator[tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(0)
    for i in range(n):
        await asyncio.sleep(0.001)  # e.g. waiting for the network
        q = rng.standard_normal((length + 16 * i, heads, dim)).astype(np.float32)
        yield (q, q, q)


async def main() -> None:
    builder = for_generation(256, max_len=1024, heads=4)  # causal, exact attention at this length
    attn = builder.build()
    print(builder.explain().splitlines()[0])
    received = 0
    async for out in attn.forward_stream(chunks(6, 64, 4, 64), max_pending=2):
        received += 1
        print(f"  chunk {received}: output {out.shape}, mean |out| {float(np.abs(out).mean()):.4f}")
    print(f"streamed {received} chunks in order")


if __name__ == "__main__":
    asyncio.run(main())
