"""One decode step over a KV cache (issue 11): attnkit on NumPy and on torch against torch's SDPA.

    PYTHONPATH=src python -m benchmarks.decode_step [--repeats 31] [--lengths 4096 16384]

A step is what a causal model does per generated token: one new query (8 heads, d 128, float32,
batch 1) with its key and value (2 key/value heads: grouped-query attention) appended to a cache of
``n`` tokens, then attention over the ``n + 1``. Contenders, timed as medians of interleaved repeats
(each repeat runs all of them in turn, so load from other processes hits them alike; within a repeat a
contender runs once untimed, then three timed calls):

* ``attnkit_numpy``: ``FlashAttention.forward(q, k, v, cache=KVCache(..., dtype=np.float32))``
  (the NumPy decode kernel: one thin GEMM per key/value head over strided views of the cache);
* ``attnkit_torch``: the same call with torch tensors and a ``torch.float32`` cache (torch's SDPA
  inside, ``enable_gqa``);
* ``torch_sdpa``: the new key/value written into the same preallocated torch buffer, then
  ``torch.nn.functional.scaled_dot_product_attention(q, K[:, :, :n+1], V[:, :, :n+1], enable_gqa=True)``:
  the bare library call a hand-written decoder makes;
* ``torch_sdpa_1thread``: the same with torch held to one thread for the call (as attnkit's NumPy
  kernel holds BLAS: on a loaded machine spinning worker threads cost more than they bring).

After each step the caches roll back to ``n`` tokens (:meth:`attnkit.KVCache.truncate`), so every
repeat measures the same step. Ratios are ``torch_sdpa / contender`` (> 1: attnkit faster), from one
run. Writes ``benchmarks/results/decode_step.json`` with the CPU model and BLAS/thread settings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.machine import environment


def measure(n: int, repeats: int) -> dict[str, Any]:
    """One row: the three contenders at a cache of ``n`` tokens."""
    import torch
    import torch.nn.functional as F

    from attnkit import FlashAttention, KVCache

    h, hk, d = 8, 2, 128
    fa = FlashAttention(heads=h, dim=d, causal=True)
    rng = np.random.default_rng(n)
    prefix_k = rng.standard_normal((1, n, hk, d), dtype=np.float32)
    prefix_v = rng.standard_normal((1, n, hk, d), dtype=np.float32)
    q = rng.standard_normal((1, 1, h, d), dtype=np.float32)
    k = rng.standard_normal((1, 1, hk, d), dtype=np.float32)
    v = rng.standard_normal((1, 1, hk, d), dtype=np.float32)
    cache_np = KVCache(n + 1, hk, d, dtype=np.float32)
    cache_np.append(prefix_k, prefix_v)
    cache_t = KVCache(n + 1, hk, d, dtype=torch.float32)
    cache_t.append(torch.from_numpy(prefix_k), torch.from_numpy(prefix_v))
    qt, kt, vt = (torch.from_numpy(x) for x in (q, k, v))
    kbuf = torch.from_numpy(prefix_k).transpose(1, 2).contiguous()  # torch's own preallocated (1, Hkv, n+1, d) cache
    kbuf = torch.cat([kbuf, torch.zeros(1, hk, 1, d)], dim=2)
    vbuf = torch.cat([torch.from_numpy(prefix_v).transpose(1, 2), torch.zeros(1, hk, 1, d)], dim=2).contiguous()
    qh = qt.transpose(1, 2)  # (1, h, 1, d)
    kh, vh = kt.transpose(1, 2), vt.transpose(1, 2)

    def step_numpy() -> Any:
        out = fa.forward(q, k, v, cache=cache_np)
        cache_np.truncate(n)
        return out

    def step_torch() -> Any:
        out = fa.forward(qt, kt, vt, cache=cache_t)
        cache_t.truncate(n)
        return out

    def step_sdpa() -> Any:
        kbuf[:, :, n : n + 1] = kh
        vbuf[:, :, n : n + 1] = vh
        return F.scaled_dot_product_attention(qh, kbuf[:, :, : n + 1], vbuf[:, :, : n + 1], enable_gqa=True)

    def step_sdpa_1t() -> Any:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return step_sdpa()
        finally:
            torch.set_num_threads(threads)

    contenders = {"attnkit_numpy": step_numpy, "attnkit_torch": step_torch, "torch_sdpa": step_sdpa, "torch_sdpa_1thread": step_sdpa_1t}
    ref = step_sdpa().transpose(1, 2).numpy()
    agree = {name: float(np.max(np.abs(np.asarray(f()) - ref))) for name, f in contenders.items() if name.startswith("attnkit")}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(3):
        for f in contenders.values():
            f()
    for _ in range(repeats):
        for name, f in contenders.items():
            f()  # untimed: the previous contender's threads (torch's OpenMP team spins after a call) settle
            for _ in range(3):
                t0 = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    row = {
        "cache_len": n,
        "median_ms": med,
        "ratio_sdpa_over_numpy": med["torch_sdpa"] / med["attnkit_numpy"],
        "ratio_sdpa_over_attnkit_torch": med["torch_sdpa"] / med["attnkit_torch"],
        "ratio_sdpa_1thread_over_numpy": med["torch_sdpa_1thread"] / med["attnkit_numpy"],
        "max_abs_diff_vs_sdpa": agree,
    }
    print(f"cache {n:6d}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in med.items()) + f"  sdpa/numpy {row['ratio_sdpa_over_numpy']:.2f}")
    return row


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--repeats", type=int, default=31)
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "decode_step.json"))
    args = ap.parse_args()
    rows = [measure(n, args.repeats) for n in args.lengths]
    result = {
        "what": "one decode step: 1 query, 8 heads, 2 kv heads, d 128, float32, batch 1; median of interleaved repeats",
        "command": "PYTHONPATH=src python -m benchmarks.decode_step",
        "repeats": args.repeats,
        "environment": environment(),
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
