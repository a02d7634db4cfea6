"""Bounded load test of the attnkit server on loopback (issue 14's figures).

    python benchmarks/load_server.py [--requests 300] [--repeats 3] [--out benchmarks/results/load_server.json]
    git archive c46c13b src | tar -x -C /tmp/old && python benchmarks/load_server.py --baseline-src /tmp/old/src --only-overhead

Starts ``python -m attnkit.server`` processes on free ports of 127.0.0.1 (nothing else is contacted) and
measures, with a client on the same machine (``--client raw``, the default: keep-alive sockets with the
request bytes built once, about a tenth of the client CPU of ``--client httpx``, an ``httpx.AsyncClient``;
with httpx the client, not the server, saturates a 2-core machine at concurrency 8 and 32, the
queue of the dynamic batcher then rarely holds two requests, and batching cannot show):

* **overhead**: server CPU per small binary request at concurrency 1 (``POST /v1/attention/
  scaled_dot_product``, one query of width 128 over 100 neighbours, raw float32), with the inline lane
  on (the default) and off (``--inline-max-flops 0``: every request goes to a compute worker), beside
  ``GET /health`` (what the HTTP stack alone costs) in the same run; ``--repeats`` interleaved
  repeats, medians;
* **unbatched**: req/s, p50 latency and server CPU per request at concurrency 1, 8 and 32 for small
  (1 x 100 x 128) and medium (32 queries over 256 keys of width 128) bodies, JSON and binary;
* **dynamic batching**: the Open Inference Protocol route (binary tensor extension) of a ``multi_head``
  model (model_dim 128, 4 heads; query (1, 16, 128) per request) at concurrency 1, 8 and 32, with
  batching on (``--max-batch-delay-ms 2``) and off (``--max-batch-size 1``), interleaved repeats, with
  the mean number of requests per forward (from the server's ``attnkit_batch_size`` histogram); with
  ``--baseline-src``, also batching on with the older tree's batcher (``on_baseline``).

"Server CPU" is user + system time of the server process and every process under it (its compute
workers and their forkserver), from psutil, over the requests, divided by their number; "client CPU"
the same for the benchmark process, and each "share" is CPU seconds per wall second (a share near 1 for
the server's event loop means the server is what limits req/s). Every answer is
checked (status 200 and shape, the first against the library); the script exits 1 if any failed. The
machine is shared with other jobs: compare figures of one run (ratios), not across runs.
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
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

D = 128
SMALL = (1, 100)  # queries, keys
MEDIUM = (32, 256)
MODEL_QUERY = (1, 16, 128)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A ``python -m attnkit.server`` subprocess, stopped (and its workers with it) on exit."""

    def __init__(self, *args: str, src: str | None = None) -> None:
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": src} if src else None
        cmd = [sys.executable, "-m", "attnkit.server", "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning", "--queue", "1024"]
        self.proc = subprocess.Popen([*cmd, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 90
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}")
            try:
                if httpx.get(self.base + "/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit("server did not start within 90 s")
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        try:
            p = psutil.Process(self.proc.pid)
            total = 0.0
            for q in [p, *p.children(recursive=True)]:
                try:
                    t = q.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
            return total
        except psutil.Error:
            return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


Request = tuple[str, bytes, dict[str, str], Callable[[httpx.Response], np.ndarray], np.ndarray]


def v1_request(fmt: str, size: tuple[int, int], rng: np.random.Generator) -> Request:
    import attnkit

    nq, nk = size
    q = rng.standard_normal((nq, D) if nq > 1 else (D,)).astype(np.float32)
    k = rng.standard_normal((nk, D)).astype(np.float32)
    v = rng.standard_normal((nk, D)).astype(np.float32)
    expected = attnkit.ScaledDotProduct(dim=D).forward(q, k, v)
    url = f"/v1/attention/scaled_dot_product?dim={D}"
    if fmt == "json":
        body = json.dumps({"query": q.tolist(), "keys": k.tolist(), "values": v.tolist()}).encode()
        return (
            url,
            body,
            {"Content-Type": "application/json", "Accept": "application/json"},
            lambda r: np.asarray(r.json()["output"], np.float32),
            expected,
        )
    headers = {
        "Content-Type": "application/octet-stream", "Accept": "application/octet-stream",
        "X-Attnkit-Query-Shape": ",".join(map(str, q.shape)), "X-Attnkit-Keys-Shape": f"{nk},{D}", "X-Attnkit-Values-Shape": f"{nk},{D}",
    }  # fmt: skip
    return url, q.tobytes() + k.tobytes() + v.tobytes(), headers, lambda r: np.frombuffer(r.content, "<f4").reshape(expected.shape), expected


def kserve_request(rng: np.random.Generator) -> Request:
    from attnkit.mechanisms import registry

    q = rng.standard_normal(MODEL_QUERY).astype(np.float32)
    expected = registry.create("self", model_dim=D, heads=4, seed=0).forward(q)
    raw = q.tobytes()
    doc = {
        "inputs": [{"name": "query", "shape": list(q.shape), "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
    }
    head = json.dumps(doc).encode()

    def decode(r: httpx.Response) -> np.ndarray:
        n = int(r.headers["inference-header-content-length"])
        return np.frombuffer(r.content[n:], "<f4").reshape(expected.shape)

    return "/v2/models/mha/infer", head + raw, {"Inference-Header-Content-Length": str(len(head))}, decode, expected


CLIENTS = {"raw": "keep-alive sockets, requests written and answers read by hand", "httpx": "httpx.AsyncClient"}


class RawResponse:
    """What the checks read of an answer (``status_code``, ``headers`` in lower case, ``content``, ``json()``)."""

    def __init__(self, status_code: int, headers: dict[str, str], content: bytes) -> None:
        self.status_code, self.headers, self.content = status_code, headers, content

    def json(self) -> Any:
        return json.loads(self.content)


class RawConnection:
    """One keep-alive HTTP/1.1 connection written and read by hand: the request bytes are built once, an
    answer is read by its Content-Length (or chunks). About a tenth of the client CPU of ``httpx`` per
    request, so that on a machine with few cores the server, not the client, is what saturates."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> RawResponse:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            content = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                parts.append(await self.reader.readexactly(size + 2))
                if size == 0:
                    break
            content = b"".join(p[:-2] for p in parts)
        else:
            raise ConnectionError("an answer without Content-Length or chunks")
        return RawResponse(status, headers, content)

    def close(self) -> None:
        self.writer.close()


def raw_request(port: int, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> bytes:
    head = [f"{method} {url} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: keep-alive"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    if body is not None:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")


async def load(server: Server, method: str, url: str, body: bytes | None, headers: dict[str, str], n: int, concurrency: int,
               decode: Callable[[Any], np.ndarray] | None, expected: np.ndarray | None, client: str = "raw") -> dict[str, Any]:  # fmt: skip
    """``n`` requests over ``concurrency`` keep-alive connections (``client``: ``raw`` sockets or ``httpx``)."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(n))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.base, timeout=120, limits=limits) as hx:
        r = await hx.request(method, url, content=body, headers=headers)  # warm-up (builds the mechanism), checked
        r.raise_for_status()
        if decode is not None and expected is not None:
            np.testing.assert_allclose(decode(r), expected, rtol=1e-5, atol=1e-6)
        raw = raw_request(server.port, method, url, body, headers)
        conns = [await RawConnection.open(server.port) for _ in range(concurrency)] if client == "raw" else []
        for i in range(3):
            if conns:
                resp = await conns[i % len(conns)].request(raw)
                if resp.status_code != 200 or (decode is not None and expected is not None and not np.array_equal(decode(resp), decode(r))):
                    raise SystemExit(f"the raw client's answer differs from httpx's: {resp.status_code} {resp.content[:200]!r}")
            else:
                await hx.request(method, url, content=body, headers=headers)

        async def worker(i: int) -> None:
            nonlocal errors
            conn = conns[i] if conns else None
            for _ in counter:
                t0 = time.perf_counter()
                try:
                    resp = await (conn.request(raw) if conn is not None else hx.request(method, url, content=body, headers=headers))
                    ok = resp.status_code == 200 and (decode is None or expected is None or decode(resp).shape == expected.shape)
                except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, ValueError):
                    ok = False
                latencies.append(time.perf_counter() - t0)
                errors += not ok

        cpu0, client0 = server.cpu_seconds(), time.process_time()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        wall = time.perf_counter() - t0
        cpu, client_cpu = server.cpu_seconds() - cpu0, time.process_time() - client0
        for c in conns:
            c.close()
    lat = sorted(x * 1e3 for x in latencies)
    return {
        "requests": n, "concurrency": concurrency, "request_bytes": len(body or b""), "req_per_s": n / wall,
        "p50_ms": statistics.median(lat), "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        "server_cpu_ms_per_request": cpu / n * 1e3, "client_cpu_ms_per_request": client_cpu / n * 1e3,
        "server_cpu_share": cpu / wall, "client_cpu_share": client_cpu / wall, "errors": errors,
    }  # fmt: skip


def median_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(rows[0])
    for key in ("req_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_request", "client_cpu_ms_per_request", "server_cpu_share", "client_cpu_share"):
        out[key] = round(statistics.median(r[key] for r in rows), 3)
    out["errors"] = sum(r["errors"] for r in rows)
    out["repeats"] = len(rows)
    return out


def batch_sizes(server: Server) -> tuple[float, float]:
    """The sum and count of the server's ``attnkit_batch_size`` histogram (requests per forward)."""
    text = httpx.get(server.base + "/metrics", timeout=10).text
    found = {}
    for line in text.splitlines():
        for part in ("sum", "count"):
            if line.startswith(f"attnkit_batch_size_{part}{{"):
                found[part] = found.get(part, 0.0) + float(line.rsplit(" ", 1)[1])
    return found.get("sum", 0.0), found.get("count", 0.0)


class _Done(Exception):
    pass


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--baseline-src", default=None, help="a src/ directory of an older attnkit (git archive REV src) to compare the overhead with")
    p.add_argument("--only-overhead", action="store_true", help="measure the overhead cells only")
    p.add_argument("--client", choices=("raw", "httpx"), default="raw", help="raw keep-alive sockets (default: cheap) or httpx.AsyncClient")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "load_server.json")
    ns = p.parse_args()
    concs = [int(c) for c in ns.concurrency.split(",")]
    if not (1 <= ns.requests <= 20_000 and 1 <= ns.repeats <= 10 and all(1 <= c <= 64 for c in concs)):
        raise SystemExit("--requests 1..20000, --repeats 1..10, concurrency 1..64 (the load is bounded)")
    rng = np.random.default_rng(0)
    load_avg = [os.getloadavg()[0]]
    report: dict[str, Any] = {
        "benchmark": "load_server",
        "command": "python benchmarks/load_server.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "client": f"{ns.client} ({CLIENTS[ns.client]}) on the same machine (shares the CPU with the server)",
        "client_cpu": "CPU seconds of the benchmark process (the client) per request; *_cpu_share: CPU seconds per wall second",
        "server_cpu": "user+system seconds of the server process and all its descendants (compute workers), per request",
    }
    small_bin = v1_request("binary", SMALL, rng)
    with tempfile.TemporaryDirectory() as repo:
        Path(repo, "mha.toml").write_text(f'type = "self"\n[options]\nmodel_dim = {D}\nheads = 4\n')
        servers = {
            "default": Server("--models", repo),
            "inline_off": Server("--models", repo, "--inline-max-flops", "0"),
            "batching_off": Server("--models", repo, "--max-batch-size", "1"),
        }
        if ns.baseline_src:
            servers["baseline"] = Server(src=ns.baseline_src)
            if not ns.only_overhead:  # the older batcher, batching on, beside ours
                servers["baseline_models"] = Server("--models", repo, src=ns.baseline_src)
        try:
            # 1. overhead of a small binary request, inline lane on/off, beside GET /health; interleaved repeats
            cells: dict[str, list[dict[str, Any]]] = {}
            for _ in range(ns.repeats):
                for name in ("default", "inline_off", *(["baseline"] if ns.baseline_src else [])):
                    url, body, headers, decode, expected = small_bin
                    cells.setdefault(f"small_binary_c1_{name}", []).append(
                        asyncio.run(load(servers[name], "POST", url, body, headers, ns.requests, 1, decode, expected, ns.client))
                    )
                cells.setdefault("health_c1", []).append(
                    asyncio.run(load(servers["default"], "GET", "/health", None, {}, ns.requests, 1, None, None, ns.client))
                )
            overhead = {k: median_rows(v) for k, v in cells.items()}
            on, off, health = (
                overhead[k]["server_cpu_ms_per_request"] for k in ("small_binary_c1_default", "small_binary_c1_inline_off", "health_c1")
            )
            report["overhead"] = {
                "cells": overhead,
                "ratio_inline_off_over_on": round(off / on, 2) if on else None,
                "ratio_small_binary_over_health": round(on / health, 2) if health else None,
            }
            if ns.baseline_src:
                base = overhead["small_binary_c1_baseline"]["server_cpu_ms_per_request"]
                report["overhead"]["baseline_src"] = ns.baseline_src
                report["overhead"]["ratio_baseline_over_now"] = round(base / on, 2) if on else None
            if ns.only_overhead:
                report["unbatched"], report["dynamic_batching"] = [], []
                raise _Done
            # 2. unbatched v1 route: sizes x formats x concurrency (one pass each; medium JSON gets fewer requests)
            rows = []
            for size_name, size in (("small", SMALL), ("medium", MEDIUM)):
                for fmt in ("json", "binary"):
                    url, body, headers, decode, expected = v1_request(fmt, size, rng)
                    n = ns.requests if size_name == "small" else max(20, ns.requests // (8 if fmt == "json" else 2))
                    for c in concs:
                        row = asyncio.run(load(servers["default"], "POST", url, body, headers, n, c, decode, expected, ns.client))
                        rows.append({"body": size_name, "shape": f"{size[0]} queries x {size[1]} keys x {D}", "format": fmt, **row})
            report["unbatched"] = rows
            # 3. dynamic batching on/off, Open Inference Protocol binary, interleaved
            url, body, headers, decode, expected = kserve_request(rng)
            batch_rows = []
            for c in concs:
                kinds = [("default", "on"), ("batching_off", "off"), *([("baseline_models", "on_baseline")] if "baseline_models" in servers else [])]
                runs: dict[str, list[dict[str, Any]]] = {label: [] for _, label in kinds}
                for _ in range(ns.repeats):
                    for name, label in kinds:
                        before = batch_sizes(servers[name])
                        row = asyncio.run(load(servers[name], "POST", url, body, headers, ns.requests, c, decode, expected, ns.client))
                        after = batch_sizes(servers[name])
                        row["mean_batch_size"] = (after[0] - before[0]) / max(after[1] - before[1], 1)
                        runs[label].append(row)
                for label, rows_ in runs.items():
                    med = median_rows(rows_)
                    med["mean_batch_size"] = round(statistics.median(r["mean_batch_size"] for r in rows_), 2)
                    batch_rows.append({"batching": label, "query_shape": list(MODEL_QUERY), **med})
                cell = {r["batching"]: r for r in batch_rows[-len(kinds) :]}
                for label, row in cell.items():
                    if label != "off" and cell["off"]["req_per_s"]:
                        row["ratio_req_per_s_over_off"] = round(row["req_per_s"] / cell["off"]["req_per_s"], 2)
            report["dynamic_batching"] = batch_rows
        except _Done:
            pass
        finally:
            for s in servers.values():
                s.stop()
    load_avg.append(os.getloadavg()[0])
    report["load_average_1min_before_after"] = load_avg
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    failed = sum(r["errors"] for r in [*report["unbatched"], *report["dynamic_batching"], *report["overhead"]["cells"].values()])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
