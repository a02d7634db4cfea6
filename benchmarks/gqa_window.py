"""Grouped-query attention and sliding windows in FlashAttention (issue 11), NumPy float32.

    PYTHONPATH=src python -m benchmarks.gqa_window

Writes ``benchmarks/results/gqa_window.json``. Every time is the median of ``--repeats`` interleaved
repeats (contenders alternate within a repeat, so load from other processes hits them alike).

* ``gqa``: ``FlashAttention(heads=8)`` with keys/values of 2 heads (shared by groups of 4 query
  heads, broadcast without copies) against the same call with the key/value heads repeated to 8
  (what a library without GQA makes its user do). Ratio = repeated / grouped.
* ``window``: ``window=(w, 0)`` (causal sliding window, generic tiled kernel with whole key blocks
  outside the window skipped) at L and 2L: O(L * w) means the time about doubles, where full causal
  attention (NumPy fast path) grows about 4x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from attnkit import FlashAttention


def _time(fn, *args) -> float:  # noqa: ANN001
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def _medians(contenders: dict, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for fn, args in contenders.values():  # warm-up
        fn(*args)
    for _ in range(repeats):
        for name, (fn, args) in contenders.items():
            times[name].append(_time(fn, *args))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--window", type=int, default=128)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    length, h, hk, d = args.length, 8, 2, 64
    q = rng.standard_normal((1, length, h, d), dtype=np.float32)
    k = rng.standard_normal((1, length, hk, d), dtype=np.float32)
    v = rng.standard_normal((1, length, hk, d), dtype=np.float32)
    kr, vr = np.repeat(k, h // hk, axis=-2), np.repeat(v, h // hk, axis=-2)
    fa = FlashAttention(heads=h, dim=d, causal=True)
    gqa = _medians({"grouped": (fa, (q, k, v)), "repeated": (fa, (q, kr, vr))}, args.repeats)
    out: dict = {
        "gqa": {
            "L": length,
            "heads": h,
            "kv_heads": hk,
            "dim": d,
            "causal": True,
            **gqa,
            "ratio_repeated_over_grouped": gqa["repeated"] / gqa["grouped"],
        }
    }
    win = FlashAttention(heads=h, dim=d, window=(args.window, 0), block_size=128)
    full = FlashAttention(heads=h, dim=d, causal=True)
    rows = {}
    for n in (length, 2 * length):
        x = rng.standard_normal((1, n, h, d), dtype=np.float32)
        rows[n] = _medians({"window": (win, (x,)), "causal_full": (full, (x,))}, args.repeats)
    out["window"] = {
        "w": args.window,
        "times": {str(n): r for n, r in rows.items()},
        "window_growth_2L_over_L": rows[2 * length]["window"] / rows[length]["window"],
        "causal_full_growth_2L_over_L": rows[2 * length]["causal_full"] / rows[length]["causal_full"],
    }
    path = Path(__file__).parent / "results" / "gqa_window.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
