"""Server memory before and after many requests: the resident set size of the server process and of
its compute workers (the whole process tree), sampled after a warm-up and after N more requests.

    PYTHONPATH=src python benchmarks/robustness/server_rss.py [--requests 5000] [--isolation process]

Requests cycle through small valid forwards of several mechanisms (each with a few option sets, so the
mechanism cache fills), attention-weights requests, batches, and hostile bodies (4xx). Results go to
benchmarks/results/server_rss.json.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def requests(i: int) -> tuple[str, dict]:
    rng = np.random.default_rng(i)
    q = rng.standard_normal((8, 2, 4)).astype("f4")
    kind = i % 8
    if kind in (0, 1):
        return "/v1/attention/flash", {"json": {"query": q.tolist(), "options": {"heads": 2, "dim": 4, "causal": bool(i % 2)}}}
    if kind == 2:
        return "/v1/attention/multi_head", {
            "json": {"query": rng.standard_normal((6, 16)).tolist(), "options": {"heads": 2, "model_dim": 16, "seed": i % 40}}
        }
    if kind == 3:
        return "/v1/attention/flash/scores", {"json": {"query": q.tolist(), "options": {"heads": 2, "dim": 4}}}
    if kind == 4:
        return "/v1/batch", {"json": {"requests": [{"mechanism": "flash", "query": q.tolist(), "options": {"heads": 2, "dim": 4}}] * 3}}
    if kind == 5:
        return "/v1/attention/linear", {"json": {"query": q.tolist(), "options": {"heads": 2, "dim": 4}}}
    if kind == 6:
        return "/v1/attention/flash", {"content": b'{"\\ud800": [' * 50 + b"]", "headers": {"Content-Type": "application/json"}}
    return "/v1/attention/flash", {"json": {"query": q.tolist(), "options": {"heads": 2, "dim": 4}, "mask": [[1, 0] * 4] * 8}}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--isolation", default="process")
    args = ap.parse_args()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "attnkit.server", "--port", str(port), "--log-level", "warning", "--isolation", args.isolation,
         "--max-concurrency", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=url, timeout=60) as c:
        for i in range(200):  # warm-up: caches, allocator pools
            path, kw = requests(i)
            c.post(path, **kw)
        before = {p: rss(p) for p in tree(proc.pid)}
        t0 = time.perf_counter()
        for i in range(args.requests):
            path, kw = requests(1000 + i)
            r = c.post(path, **kw)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        elapsed = time.perf_counter() - t0
        after = {p: rss(p) for p in tree(proc.pid)}
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    result = {
        "requests": args.requests,
        "isolation": args.isolation,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds": round(elapsed, 2),
        "rss_before_mib": round(sum(before.values()) / 2**20, 1),
        "rss_after_mib": round(sum(after.values()) / 2**20, 1),
        "server_rss_before_mib": round(before.get(proc.pid, 0) / 2**20, 1),
        "server_rss_after_mib": round(after.get(proc.pid, 0) / 2**20, 1),
        "processes_before": len(before),
        "processes_after": len(after),
        "command": f"PYTHONPATH=src python benchmarks/robustness/server_rss.py --requests {args.requests} --isolation {args.isolation}",
    }
    out = Path(__file__).resolve().parents[1] / "results" / f"server_rss_{args.isolation}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
