"""One exported FlashAttention model in ONNX Runtime: Python against onnxruntime-node and onnxruntime-web.

    python benchmarks/js_engines.py [--lengths 512,2048,4096] [--repeats 5] [--threads 2]

FlashAttention with 8 heads of width 64 is exported once (``attnkit.export_onnx`` at length 8, dynamic
axes) and the same file runs float32 self-attention ``(L, 8, 64)`` in ONNX Runtime from Python
(``intra_op_num_threads = threads``), in the JS ``LocalEngine`` on ``onnxruntime-node`` (same thread count)
and in ``LocalEngine`` on ``onnxruntime-web`` in headless Chromium (``numThreads = threads``, page
cross-origin isolated so wasm threads are on; served from ``clients/js/node_modules`` on 127.0.0.1).
``benchmarks/js_engines.mjs`` hosts both JS engines; each round makes one call in each of the three,
interleaved, so a neighbour's load hits all alike; one warm-up round per length. Medians and ratios
(JS / Python) come from this one run. Writes ``benchmarks/results/js_engines.json``. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="512,2048,4096")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "js_engines.json"))
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]

    import onnxruntime as ort

    import attnkit

    sys.path.insert(0, str(HERE.parent))  # `python benchmarks/js_engines.py` from anywhere
    from benchmarks.machine import environment

    tmp = Path(tempfile.mkdtemp())
    models, data = tmp / "models", tmp / "data"
    models.mkdir()
    data.mkdir()
    info = attnkit.export_onnx(attnkit.FlashAttention(heads=8, dim=64), models / "flash.onnx")
    (models / "index.json").write_text(json.dumps({"models": ["flash.onnx"]}))
    rng = np.random.default_rng(0)
    qs = {L: rng.standard_normal((L, 8, 64)).astype(np.float32) for L in lengths}
    for L, q in qs.items():
        q.tofile(data / f"q{L}.bin")

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(models / "flash.onnx"), so, providers=["CPUExecutionProvider"])

    node = shutil.which("node")
    if node is None:
        raise SystemExit("node is not installed")
    js = subprocess.Popen(
        [node, str(HERE / "js_engines.mjs"), str(models), str(data), str(args.threads)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
    )  # fmt: skip
    assert js.stdin is not None and js.stdout is not None
    hello = json.loads(js.stdout.readline())

    def js_call(L: int) -> dict[str, Any]:
        assert js.stdin is not None and js.stdout is not None
        js.stdin.write(json.dumps({"L": L}) + "\n")
        js.stdin.flush()
        return dict(json.loads(js.stdout.readline()))

    results: dict[str, Any] = {}
    for L in lengths:
        feed = {"query": qs[L], "key": qs[L], "value": qs[L]}
        sess.run(None, feed)
        js_call(L)  # warm-up (the first call also compiles the model)
        times: dict[str, list[float]] = {"python": [], "node": [], "web": []}
        errors: list[str] = []
        for r in range(args.repeats):
            if r % 2 == 0:
                t0 = time.perf_counter()
                sess.run(None, feed)
                times["python"].append((time.perf_counter() - t0) * 1e3)
                res = js_call(L)
            else:
                res = js_call(L)
                t0 = time.perf_counter()
                sess.run(None, feed)
                times["python"].append((time.perf_counter() - t0) * 1e3)
            times["node"].append(res["node"])
            if "web" in res:
                times["web"].append(res["web"])
            if "webError" in res:
                errors.append(res["webError"])
        med = {k: statistics.median(v) for k, v in times.items() if v}
        results[str(L)] = {
            "median_ms": med,
            "node_over_python": med["node"] / med["python"],
            "web_over_python": med["web"] / med["python"] if "web" in med else None,
            "samples_ms": times,
            "web_errors": sorted(set(errors)),
        }
        print(f"L={L}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in med.items()), flush=True)
    js.stdin.write(json.dumps({"quit": True}) + "\n")
    js.stdin.flush()
    js.wait(timeout=60)

    doc = {
        "what": "FlashAttention (8 heads, dim 64) exported once by attnkit.export_onnx; the same file in ONNX Runtime "
        "from Python, onnxruntime-node and onnxruntime-web (headless Chromium), float32 self-attention (L, 8, 64)",
        "threads": args.threads,
        "repeats": args.repeats,
        "environment": environment(args.threads),
        "note": "one run on a machine shared with other jobs: compare the ratios, not the milliseconds",
        "onnxruntime_python": ort.__version__,
        "js": hello,
        "model_bytes": info.size_bytes,
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
