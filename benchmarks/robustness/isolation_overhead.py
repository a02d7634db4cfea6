"""Per-request cost of process isolation: the same small flash request (64 x 4 x 16, base64) sent
sequentially to a thread-isolated and a process-isolated server, 7 interleaved rounds of 100.

    PYTHONPATH=src python benchmarks/robustness/isolation_overhead.py
"""

import signal
import socket
import statistics
import subprocess
import sys
import time

import httpx
import numpy as np


def port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


res = {}
procs = {}
for iso in ("thread", "process"):
    p = port()
    pr = subprocess.Popen(
        [sys.executable, "-m", "attnkit.server", "--port", str(p), "--log-level", "warning", "--isolation", iso, "--max-concurrency", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{p}"
    for _ in range(300):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except Exception:
            time.sleep(0.1)
    procs[iso] = (pr, url)
q = np.random.default_rng(0).standard_normal((64, 4, 16)).astype("f4")
body = {
    "query": {"data": __import__("base64").b64encode(q.tobytes()).decode(), "shape": [64, 4, 16]},
    "options": {"heads": 4, "dim": 16},
    "encoding": "base64",
}
times = {k: [] for k in procs}
clients = {k: httpx.Client(base_url=u, timeout=30) for k, (p, u) in procs.items()}
for c in clients.values():
    for _ in range(30):
        c.post("/v1/attention/flash", json=body)
for _rep in range(7):
    for k, c in clients.items():
        t = time.perf_counter()
        for _ in range(100):
            assert c.post("/v1/attention/flash", json=body).status_code == 200
        times[k].append((time.perf_counter() - t) / 100 * 1e3)
for k in times:
    print(k, "median ms/request", round(statistics.median(times[k]), 3))
print("process/thread ratio", round(statistics.median([p / t for p, t in zip(times["process"], times["thread"], strict=False)]), 3))
for pr, _u in procs.values():
    pr.send_signal(signal.SIGTERM)
    pr.wait(30)
