"""Cost of the overflow guard (attnkit.kernels.overflow) on the normal-scale fast path.

For FlashAttention float32 forwards at L = 1024 and 4096 (H = 2, D = 64, NumPy), times the call as
shipped ("new") and with both guards skipped ("old": ``overflow.at_risk`` replaced by a function
returning False and the mechanism's ``finite_or_wider`` output check by a plain call, which is the
code path main had), interleaved, and reports the ratio of the
medians new/old. Results go to ``benchmarks/results/overflow_cost.json``.

    PYTHONPATH=src python benchmarks/overflow_cost.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

import attnkit
from attnkit.kernels import overflow
from attnkit.mechanisms import base


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    args = ap.parse_args()
    real, real_fw = overflow.at_risk, base.finite_or_wider

    def plain(run, args, kwargs, *, names):  # type: ignore[no-untyped-def]
        return run(*args, **kwargs)

    rows = []
    for length in args.lengths:
        rng = np.random.default_rng(0)
        q, k, v = (rng.standard_normal((length, 2, 64)).astype(np.float32) for _ in range(3))
        fa = attnkit.FlashAttention(heads=2, dim=64)
        fa.forward(q, k, v)  # warm-up (engine calibration, scratch buffers)
        times: dict[str, list[float]] = {"new": [], "old": []}
        for _ in range(args.repeats):
            for mode in ("new", "old"):
                overflow.at_risk = real if mode == "new" else (lambda *a, **kw: False)  # type: ignore[assignment]
                base.finite_or_wider = real_fw if mode == "new" else plain  # type: ignore[assignment]
                t0 = time.perf_counter()
                fa.forward(q, k, v)
                times[mode].append(time.perf_counter() - t0)
        overflow.at_risk, base.finite_or_wider = real, real_fw  # type: ignore[assignment]
        new, old = statistics.median(times["new"]), statistics.median(times["old"])
        # the guards alone (what "new" adds), timed in isolation: far less noisy than the difference
        out = fa.forward(q, k, v)
        guard = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            overflow.at_risk(np, q.dtype, logits=(q, k, q.shape[-1], 0.125), values=(v, length))
            overflow._all_finite(out)
            guard.append(time.perf_counter() - t0)
        g = statistics.median(guard)
        rows.append(
            {
                "L": length,
                "median_new_s": new,
                "median_old_s": old,
                "ratio_new_over_old": new / old,
                "guard_s": g,
                "guard_over_old": g / old,
                "repeats": args.repeats,
            }
        )
        print(
            f"L={length}: new {new * 1e3:.2f} ms, old {old * 1e3:.2f} ms, ratio {new / old:.3f}; guards alone {g * 1e3:.3f} ms = {g / old:.2%} of old"
        )
    out = Path(__file__).parent / "results" / "overflow_cost.json"
    out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
