"""ONNX Runtime (Python) against attnkit's NumPy path and torch SDPA, for exported FlashAttention.

    python -m benchmarks.onnx_bench [--lengths 512,2048,4096] [--repeats 7] [--threads 2]

FlashAttention with 8 heads of width 64 is exported once (``attnkit.export_onnx`` at length 8, dynamic
axes) and run at each length L in ONNX Runtime (``intra_op_num_threads = threads``), in attnkit's NumPy
forward (BLAS and attnkit's pool limited to ``threads``) and in torch's
``scaled_dot_product_attention`` (``torch.set_num_threads(threads)``), all float32 self-attention
``(L, 8, 64)``. Repeats are interleaved (one call of each per round, order rotated) so a neighbour's
load hits all three alike; medians and ratios are from this one run. Writes
``benchmarks/results/onnx.json`` with the CPU model and the exported file sizes. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import environment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="512,2048,4096")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "onnx.json"))
    args = ap.parse_args()
    threads = args.threads
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))

    import onnxruntime as ort
    import torch
    from threadpoolctl import threadpool_limits

    import attnkit
    from attnkit.mechanisms import registry

    torch.set_num_threads(threads)
    heads, dim = 8, 64
    # engine="numpy": attnkit's own NumPy kernel (engine="auto" may hand NumPy inputs to torch's kernel)
    mech = attnkit.FlashAttention(heads=heads, dim=dim, check_finite=False, engine="numpy")
    tmp = Path(tempfile.mkdtemp())
    info = attnkit.export_onnx(mech, tmp / "flash.onnx")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(info.path, so, providers=["CPUExecutionProvider"])

    # sizes of every exported mechanism's file (example options; flash at the benchmark's options)
    sizes = {"flash(heads=8, dim=64)": info.size_bytes}
    for name in registry.names():
        cls = registry.get(name)
        m = cls(**cls.example_options)
        if m._export_blocker() is not None:
            continue
        sizes[f"{name}{cls.example_options}"] = attnkit.export_onnx(m, tmp / f"{name}.onnx").size_bytes
    mha = attnkit.MultiHeadAttention(model_dim=512, heads=8)
    sizes["multi_head(model_dim=512, heads=8)"] = attnkit.export_onnx(mha, tmp / "mha512.onnx").size_bytes

    rows = []
    for length in [int(x) for x in args.lengths.split(",")]:
        rng = np.random.default_rng(length)
        q, k, v = (rng.standard_normal((length, heads, dim), dtype=np.float32) for _ in range(3))
        tq, tk, tv = (torch.from_numpy(x).transpose(0, 1).contiguous() for x in (q, k, v))  # (H, L, D)
        feeds = {"query": q, "key": k, "value": v}

        def run_ort(feeds: dict = feeds) -> np.ndarray:
            return sess.run(None, feeds)[0]

        def run_numpy(qkv: tuple = (q, k, v)) -> np.ndarray:
            with threadpool_limits(threads):
                return np.asarray(mech.forward(*qkv))

        def run_torch(tqkv: tuple = (tq, tk, tv)) -> np.ndarray:
            with torch.inference_mode():
                return torch.nn.functional.scaled_dot_product_attention(*tqkv).transpose(0, 1).numpy()

        fns = {"onnxruntime": run_ort, "attnkit_numpy": run_numpy, "torch_sdpa": run_torch}
        ref = run_numpy()
        err = {n: float(np.abs(f() - ref).max()) for n, f in fns.items()}  # also warms each path up
        times: dict[str, list[float]] = {n: [] for n in fns}
        order = list(fns)
        for r in range(args.repeats):
            for n in order[r % 3 :] + order[: r % 3]:
                t0 = time.perf_counter()
                fns[n]()
                times[n].append(time.perf_counter() - t0)
        med = {n: statistics.median(t) * 1e3 for n, t in times.items()}
        rows.append({
            "L": length,
            "median_ms": med,
            "ort_over_numpy": med["onnxruntime"] / med["attnkit_numpy"],
            "ort_over_torch": med["onnxruntime"] / med["torch_sdpa"],
            "max_abs_diff_vs_numpy": err,
        })  # fmt: skip
        print(f"L={length}: " + ", ".join(f"{n} {t:.1f} ms" for n, t in med.items()), flush=True)

    result = {
        "benchmark": "onnx_export_flash",
        "environment": environment(threads),
        "threads": threads,
        "repeats": args.repeats,
        "heads": heads,
        "dim": dim,
        "versions": {"onnxruntime": ort.__version__, "torch": torch.__version__, "numpy": np.__version__, "attnkit": attnkit.__version__},
        "command": "python -m benchmarks.onnx_bench " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
        "rows": rows,
        "exported_file_bytes": sizes,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(sizes, indent=1))


if __name__ == "__main__":
    main()
