"""Bounded load test of the attnkit server on loopback: neighbour attention (d 128, k 100), JSON and binary.

    python benchmarks/load_server.py [--requests 5000] [--concurrency 32] [--workers 1] [--out benchmarks/results/server_load.json]

Starts ``python -m attnkit.server`` on a free port of 127.0.0.1 (nothing else is ever contacted), sends
``--requests`` requests per body format with ``--concurrency`` in flight (httpx, asyncio), and reports
requests per second and the p50/p99 latency of each format. The JSON request carries nested lists and
gets nested lists back; the binary one sends raw float32 with shape headers and gets raw float32 back.
Every answer is checked (status 200, shape, and the first one against the library); the script exits
with status 1 if any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

D, K = 128, 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, workers: int) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "attnkit.server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--queue",
        "1024",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start within 60 s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its live children, from /proc (0 where /proc is missing)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        pids = [pid] + [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and _ppid(int(e.name)) == pid]
        for p in pids:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    except OSError:
        return 0.0
    return total


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def requests_for(fmt: str, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> tuple[str, bytes, dict[str, str]]:
    url = f"/v1/attention/scaled_dot_product?dim={D}"
    if fmt == "json":
        body = json.dumps({"query": q.tolist(), "keys": k.tolist(), "values": v.tolist()}).encode()
        return url, body, {"Content-Type": "application/json", "Accept": "application/json"}
    body = q.tobytes() + k.tobytes() + v.tobytes()
    return (
        url,
        body,
        {
            "Content-Type": "application/octet-stream",
            "Accept": "application/octet-stream",
            "X-Attnkit-Query-Shape": str(D),
            "X-Attnkit-Keys-Shape": f"{K},{D}",
            "X-Attnkit-Values-Shape": f"{K},{D}",
        },
    )


def decode(fmt: str, r: httpx.Response) -> np.ndarray:
    if fmt == "json":
        return np.asarray(r.json()["output"], dtype=np.float32)
    return np.frombuffer(r.content, dtype="<f4").reshape([int(s) for s in r.headers["x-attnkit-shape"].split(",")])


async def run_format(
    server_pid: int, base: str, fmt: str, n: int, concurrency: int, expected: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray
) -> dict[str, Any]:
    url, body, headers = requests_for(fmt, q, k, v)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(n))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        r = await client.post(url, content=body, headers=headers)  # warm-up, and a correctness check
        r.raise_for_status()
        np.testing.assert_allclose(decode(fmt, r), expected, rtol=1e-5, atol=1e-6)

        async def worker() -> None:
            for _ in counter:
                t0 = time.perf_counter()
                try:
                    resp = await client.post(url, content=body, headers=headers)
                    ok = resp.status_code == 200 and decode(fmt, resp).shape == (D,)
                    key = "ok" if ok else f"status {resp.status_code}"
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                latencies.append(time.perf_counter() - t0)
                if key != "ok":
                    errors[key] = errors.get(key, 0) + 1

        load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        cpu0 = cpu_seconds(server_pid)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(server_pid) - cpu0
        load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    lat_ms = sorted(x * 1e3 for x in latencies)
    return {
        "format": fmt,
        "requests": n,
        "concurrency": concurrency,
        "request_bytes": len(body),
        "wall_s": round(wall, 3),
        "req_per_s": round(n / wall, 1),
        "p50_ms": round(statistics.median(lat_ms), 2),
        "p99_ms": round(lat_ms[min(len(lat_ms) - 1, int(0.99 * len(lat_ms)))], 2),
        "max_ms": round(lat_ms[-1], 2),
        "server_cpu_ms_per_request": round(cpu / n * 1e3, 3),
        "load_average_1min": [load_before, load_after],
        "errors": sum(errors.values()),
        "error_kinds": errors,
    }


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--formats", default="json,binary")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "server_load.json")
    ns = p.parse_args()
    if not (1 <= ns.requests <= 100_000 and 1 <= ns.concurrency <= 256):
        raise SystemExit("--requests must be 1..100000 and --concurrency 1..256 (the load is bounded)")
    rng = np.random.default_rng(0)
    q = rng.standard_normal(D).astype(np.float32)
    k = rng.standard_normal((K, D)).astype(np.float32)
    v = rng.standard_normal((K, D)).astype(np.float32)
    import attnkit

    expected = attnkit.ScaledDotProduct(dim=D).forward(q, k, v)
    port = free_port()
    proc = start_server(port, ns.workers)
    try:
        results = [
            asyncio.run(run_format(proc.pid, f"http://127.0.0.1:{port}", fmt, ns.requests, ns.concurrency, expected, q, k, v))
            for fmt in ns.formats.split(",")
        ]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    report = {
        "benchmark": "server_load",
        "request": f"POST /v1/attention/scaled_dot_product, one query d={D} over k={K} neighbours (values d={D})",
        "server": {"workers": ns.workers, "max_concurrency": os.cpu_count(), "host": "127.0.0.1"},
        "client": "httpx.AsyncClient in the same machine (shares the CPU with the server)",
        "json_parser": "orjson" if _has("orjson") else "json (standard library)",
        "http_parser": "httptools" if _has("httptools") else "h11",
        "event_loop": "uvloop" if _has("uvloop") else "asyncio",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "attnkit": attnkit.__version__,
        "results": results,
    }
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
