"""Requests per second through ``tritonclient.http`` against ``python -m attnkit.server --models DIR``.

One server process (one worker) on 127.0.0.1 serves a ``multi_head`` model (model_dim 64, 8 heads, seeded
weights). For each body size (small: query (1, 16, 64); medium: (8, 128, 64)), each mode (JSON tensors,
the binary tensor extension) and each concurrency (1 and 8 requests in flight, tritonclient's own
connection pool with ``async_infer``), it sends ``--requests`` requests (an eighth of that for the medium
body), ``--repeats`` times, interleaving
the cells, and reports medians: req/s and the server's CPU time per request (utime + stime of the
server process from /proc, divided by the requests). Loopback only; other jobs on the machine make
these lower bounds.

    python benchmarks/kserve_tritonclient.py [--requests 200] [--repeats 3]

Results: ``benchmarks/results/kserve_tritonclient.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

RESULTS = Path(__file__).resolve().parent / "results" / "kserve_tritonclient.json"
BODIES = {"small": (1, 16, 64), "medium": (8, 128, 64)}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cell(client: httpclient.InferenceServerClient, pid: int, q: np.ndarray, binary: bool, concurrency: int, n: int) -> dict:
    inp = httpclient.InferInput("query", list(q.shape), "FP32")
    inp.set_data_from_numpy(q, binary_data=binary)
    out = [httpclient.InferRequestedOutput("output", binary_data=binary)]
    cpu0, t0 = _cpu_seconds(pid), time.perf_counter()
    if concurrency == 1:
        for _ in range(n):
            client.infer("mha", [inp], outputs=out)
    else:
        pending = [client.async_infer("mha", [inp], outputs=out) for _ in range(n)]
        for p in pending:
            p.get_result()
    wall, cpu = time.perf_counter() - t0, _cpu_seconds(pid) - cpu0
    return {"req_s": n / wall, "server_cpu_ms": cpu / n * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bodies", default="small,medium", help="comma-separated: small, medium")
    ap.add_argument("--max-batch-size", type=int, default=64, help="1 turns dynamic batching off")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    bodies = {b: BODIES[b] for b in args.bodies.split(",")}
    repo = Path(tempfile.mkdtemp())
    (repo / "mha.toml").write_text('type = "multi_head"\n[options]\nmodel_dim = 64\nheads = 8\n')
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "attnkit.server",
            "--port",
            str(port),
            "--models",
            str(repo),
            "--log-level",
            "warning",
            "--max-batch-size",
            str(args.max_batch_size),
        ]
    )
    url = f"127.0.0.1:{port}"
    try:
        clients = {c: httpclient.InferenceServerClient(url, concurrency=c) for c in (1, 8)}
        deadline = time.monotonic() + 60
        while True:
            try:
                if clients[1].is_server_ready():
                    break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.2)
            if time.monotonic() > deadline:
                raise SystemExit("server did not start")
        rng = np.random.default_rng(0)
        cells = [(b, m, c) for b in bodies for m in ("json", "binary") for c in (1, 8)]
        samples: dict[tuple, list[dict]] = {cell: [] for cell in cells}
        for b, m, c in cells:  # warm-up
            run_cell(clients[c], proc.pid, rng.standard_normal(BODIES[b]).astype(np.float32), m == "binary", c, 10)
        for _ in range(args.repeats):
            for b, m, c in cells:
                q = rng.standard_normal(BODIES[b]).astype(np.float32)
                n = args.requests if b == "small" else max(5, args.requests // 8)  # medium JSON runs at a few req/s
                samples[(b, m, c)].append(run_cell(clients[c], proc.pid, q, m == "binary", c, n))
        rows = []
        for (b, m, c), s in samples.items():
            rows.append(
                {
                    "body": b,
                    "query_shape": list(BODIES[b]),
                    "mode": m,
                    "concurrency": c,
                    "req_s": statistics.median(x["req_s"] for x in s),
                    "server_cpu_ms_per_request": statistics.median(x["server_cpu_ms"] for x in s),
                    "repeats": len(s),
                    "requests": args.requests if b == "small" else max(5, args.requests // 8),
                }
            )
        result = {"command": " ".join(["python", *sys.argv]), "load_average": os.getloadavg(), "cpus": os.cpu_count(), "rows": rows}
        out_path = Path(args.out)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=1))
        print(f"{'body':7} {'mode':6} {'conc':>4} {'req/s':>8} {'cpu ms/req':>10}")
        for r in rows:
            print(f"{r['body']:7} {r['mode']:6} {r['concurrency']:>4} {r['req_s']:>8.1f} {r['server_cpu_ms_per_request']:>10.2f}")
        for cl in clients.values():
            cl.close()
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
