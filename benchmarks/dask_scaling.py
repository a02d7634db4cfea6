"""Exact attention on a Dask LocalCluster (split-K) against NumPy in one process: time and peak memory.

    python -m benchmarks.dask_scaling [--lengths 8192,16384] [--heads 8] [--dim 64] [--chunk 2048]

For each L: NumPy's fast path in this process (time, peak RSS growth of a fresh subprocess), then
split-K on fresh LocalClusters of 1 and 2 worker processes (1 thread each): wall time of the compute
and each worker's peak RSS above its start-up. Writes ``benchmarks/results/dask_scaling.json`` with the
CPU model and BLAS, and the per-task cost that the paper estimate for larger L is made from.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import environment

RESULTS = Path(__file__).resolve().parent / "results"


def _peak_rss() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


_NUMPY_CHILD = """
import resource, sys, time, numpy as np, attnkit
L, H, D = map(int, sys.argv[1:4])
rng = np.random.default_rng(0)
q = rng.standard_normal((L, H, D), dtype=np.float32)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
m = attnkit.FlashAttention(heads=H, dim=D)
t0 = time.perf_counter(); out = m.forward(q); t = time.perf_counter() - t0
print(t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base, float(out.sum()))
"""


def numpy_run(L: int, H: int, D: int) -> dict[str, float]:
    r = subprocess.run([sys.executable, "-c", _NUMPY_CHILD, str(L), str(H), str(D)], capture_output=True, text=True, check=True)
    t, mem, _ = r.stdout.split()
    return {"seconds": float(t), "peak_bytes_above_start": int(mem)}


def dask_run(L: int, H: int, D: int, chunk: int, workers: int) -> dict[str, object]:
    import dask.array as da
    import distributed

    import attnkit

    with (
        distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
            memory_limit="8GiB",
        ) as lc,
        distributed.Client(lc) as client,
    ):
        base = client.run(_peak_rss)
        q = da.random.default_rng(0).standard_normal((L, H, D), chunks=(chunk, H, D), dtype=np.float32)
        q = client.persist(q)
        distributed.wait(q)
        out = attnkit.FlashAttention(heads=H, dim=D).forward(q)
        tasks = sum(1 for k in out.__dask_graph__() if isinstance(k, tuple) and str(k[0]).endswith("-part"))
        t0 = time.perf_counter()
        total = float(client.compute(out.sum()).result())
        seconds = time.perf_counter() - t0
        peaks = client.run(_peak_rss)
    assert math.isfinite(total)
    growth = {w: peaks[w] - base[w] for w in peaks}
    return {"workers": workers, "seconds": seconds, "partial_tasks": tasks, "peak_bytes_above_start_per_worker": sorted(growth.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="8192,16384")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--name", default="dask_scaling")
    args = ap.parse_args()
    rows = []
    for L in (int(x) for x in args.lengths.split(",")):
        row: dict[str, object] = {"L": L, "numpy": numpy_run(L, args.heads, args.dim)}
        row["dask"] = [dask_run(L, args.heads, args.dim, args.chunk, w) for w in (1, 2)]
        rows.append(row)
        print(json.dumps(row), flush=True)
    # paper estimate: the measured seconds per partial task (query block x key shard) on one worker
    last = rows[-1]
    one = last["dask"][0]  # type: ignore[index]
    per_task = one["seconds"] / one["partial_tasks"]  # type: ignore[index,operator]
    target_L, machines, cores = 10**6, 16, 2
    tasks = math.ceil(target_L / args.chunk) ** 2
    estimate = {
        "L": target_L,
        "machines": machines,
        "cores_per_machine": cores,
        "chunk": args.chunk,
        "partial_tasks": tasks,
        "seconds_per_task_measured": per_task,
        "seconds_estimate": tasks * per_task / (machines * cores),
        "note": "compute only, perfect scaling of independent partial tasks; merges and transfers of (chunk x H x Dv) partials excluded",
    }
    result = {"environment": environment(), "heads": args.heads, "dim": args.dim, "chunk": args.chunk, "rows": rows, "estimate": estimate}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(estimate, indent=2))


if __name__ == "__main__":
    main()
