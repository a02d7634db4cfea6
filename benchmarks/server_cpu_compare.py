"""Server CPU per request of server variants, measured in one interleaved run (issue 14's overhead work).

    python benchmarks/server_cpu_compare.py [--requests 400] [--repeats 5] [--kinds health,small,medium]
        [--baseline-src DIR] [--variant LABEL:KEY=VALUE[,KEY=VALUE]] ...

Starts ``python -m attnkit.server`` processes on free ports of 127.0.0.1 (one per variant; nothing else is
contacted): ``now`` (this tree, default settings), ``inline_off`` (``ATTNKIT_SERVER_INLINE_MAX_FLOPS=0``),
``baseline`` (``--baseline-src``, e.g. ``git archive main src | tar -x -C /tmp/main``) and any
``--variant`` (settings as ``ATTNKIT_SERVER_*`` variables, e.g. ``h11:HTTP=h11,LOOP=asyncio``). Each is sent
the same requests over one keep-alive connection by a plain ``http.client`` client (lighter than
``load_server.py``'s httpx, so the client disturbs the server less on a small machine):

* ``health``: ``GET /health`` (what the HTTP stack and FastAPI cost);
* ``small``: ``POST /v1/attention/scaled_dot_product`` raw float32, one query of width 128 over 100
  neighbours (the issue's example; 102 KiB body);
* ``medium``: the same with 32 queries over 256 keys (272 KiB body: a compute worker, through the shared
  buffer).

"Server CPU" is user + system time of the server process and every process under it, from psutil,
divided by the requests; ``--repeats`` rounds, variants interleaved within each round, medians. Every
answer is checked (status 200). Compare figures of one run (ratios): the machine may be shared.
"""

from __future__ import annotations

import argparse
import http.client
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

import numpy as np
import psutil

KINDS = ("health", "small", "medium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(nq: int, nk: int, d: int = 128) -> tuple[bytes, dict[str, str]]:
    rng = np.random.default_rng(0)
    q = rng.standard_normal((nq, d) if nq > 1 else (d,)).astype(np.float32)
    k = rng.standard_normal((nk, d)).astype(np.float32)
    headers = {
        "Content-Type": "application/octet-stream", "Accept": "application/octet-stream",
        "X-Attnkit-Query-Shape": ",".join(map(str, q.shape)), "X-Attnkit-Keys-Shape": f"{nk},{d}", "X-Attnkit-Values-Shape": f"{nk},{d}",
    }  # fmt: skip
    return q.tobytes() + k.tobytes() + k.tobytes(), headers


BODIES = {"small": _request(1, 100), "medium": _request(32, 256)}


def _cpu(pid: int) -> float:
    total = 0.0
    try:
        p = psutil.Process(pid)
        for q in [p, *p.children(recursive=True)]:
            try:
                t = q.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


def _send(port: int, kind: str, n: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        for _ in range(n):
            if kind == "health":
                conn.request("GET", "/health")
            else:
                body, headers = BODIES[kind]
                conn.request("POST", "/v1/attention/scaled_dot_product", body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            if r.status != 200:
                raise SystemExit(f"{kind}: HTTP {r.status}: {data[:300]!r}")
    finally:
        conn.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--baseline-src", default=None, help="a src/ directory of another attnkit to compare with")
    p.add_argument(
        "--variant", action="append", default=[], metavar="LABEL:KEY=VALUE[,KEY=VALUE]", help="ATTNKIT_SERVER_* settings of one more variant"
    )
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "server_cpu_compare.json")
    ns = p.parse_args()
    kinds = [k for k in ns.kinds.split(",") if k]
    if not (1 <= ns.requests <= 20_000 and 1 <= ns.repeats <= 10 and kinds and set(kinds) <= set(KINDS)):
        raise SystemExit(f"--requests 1..20000, --repeats 1..10, --kinds from {','.join(KINDS)} (the load is bounded)")
    variants: dict[str, dict[str, Any]] = {"now": {}, "inline_off": {"env": {"ATTNKIT_SERVER_INLINE_MAX_FLOPS": "0"}}}
    if ns.baseline_src:
        variants["baseline"] = {"src": ns.baseline_src}
    for spec in ns.variant:
        label, _, pairs = spec.partition(":")
        env = dict(kv.split("=", 1) for kv in pairs.split(",") if kv)
        variants[label] = {"env": {f"ATTNKIT_SERVER_{k.upper()}": v for k, v in env.items()}}
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for label, v in variants.items():
            port = _free_port()
            env = {**os.environ, **v.get("env", {})}
            if v.get("src"):
                env["PYTHONPATH"] = v["src"]
            cmd = [sys.executable, "-m", "attnkit.server", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
            servers[label] = (subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), port)
        for label, (proc, port) in servers.items():
            deadline = time.monotonic() + 90
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"{label}: the server exited ({proc.returncode})")
                try:
                    _send(port, "health", 1)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{label}: the server did not start") from None
                    time.sleep(0.1)
            for kind in kinds:
                _send(port, kind, 30)  # warm-up: builds the mechanism, lets the inline lane learn its kind
        load = [os.getloadavg()[0]]
        cells: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(ns.repeats):
            for kind in kinds:
                for label, (proc, port) in servers.items():
                    c0, t0 = _cpu(proc.pid), time.perf_counter()
                    _send(port, kind, ns.requests)
                    wall, cpu = time.perf_counter() - t0, _cpu(proc.pid) - c0
                    cells.setdefault((kind, label), []).append((cpu / ns.requests * 1e3, ns.requests / wall))
        load.append(os.getloadavg()[0])
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    rows = [
        {
            "kind": kind, "variant": label, "server_cpu_ms_per_request": round(statistics.median(c for c, _ in v), 3),
            "req_per_s": round(statistics.median(r for _, r in v), 1), "repeats": len(v),
        }
        for (kind, label), v in cells.items()
    ]  # fmt: skip
    report = {
        "benchmark": "server_cpu_compare",
        "command": "python benchmarks/server_cpu_compare.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "client": "http.client, one keep-alive connection, on the same machine",
        "load_average_1min_before_after": load,
        "rows": rows,
    }
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(report, indent=2) + "\n")
    for r in rows:
        print(f"{r['kind']:7s} {r['variant']:12s} server CPU {r['server_cpu_ms_per_request']:.3f} ms/request  {r['req_per_s']:.0f} req/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
