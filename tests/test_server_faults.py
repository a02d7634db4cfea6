"""Faults under load, on a real server process (``python -m attnkit.server`` on 127.0.0.1):

* a computation past its time limit is killed and frees its slot at once (a request sent right after
  the 504, with a time limit of its own of one second, is answered);
* SIGTERM in the middle of a load finishes every request the server had accepted, then stops;
* a compute worker that dies (killed, idle or mid-request) is replaced; the request it was running
  gets a JSON 503 naming its field;
* a uvicorn worker process (``--workers 2``) that is killed is replaced by uvicorn's supervisor.

No test asserts a duration: each check is an outcome (status codes, process counts) with generous
deadlines for the machine to get there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find worker processes")

SMALL = {"query": np.ones((3, 2, 4)).tolist(), "options": {"heads": 2, "dim": 4}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    """Live (not zombie) child processes of ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
                out.append(int(entry.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _compute_workers(server_pid: int) -> list[int]:
    """Worker processes: children of the forkserver, itself a child of a server process."""
    found = []
    for child in _children(server_pid):
        if "forkserver" in _cmdline(child):
            found.extend(_children(child))
    return found


def _wait_for(pred, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def server(*args: str) -> Iterator[tuple[subprocess.Popen, str]]:
    port = _free_port()
    cmd = [sys.executable, "-m", "attnkit.server", "--port", str(port), "--log-level", "warning", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError("server exited: " + proc.stderr.read().decode()[-2000:])  # type: ignore[union-attr]
        try:
            return httpx.get(url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait_for(up, "the server to start", 60)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _slow_octet(n: int = 16384, heads: int = 4, dim: int = 32) -> dict:
    """A legitimate flash request of about 2 * 2 * n^2 * heads * dim FLOPs (1.4e11 here): seconds of work."""
    q = np.random.default_rng(0).standard_normal((1, n, heads, dim)).astype(np.float32)
    return {
        "url": f"/v1/attention/flash?heads={heads}&dim={dim}",
        "content": q.tobytes(),
        "headers": {"Content-Type": "application/octet-stream", "X-Attnkit-Query-Shape": f"1,{n},{heads},{dim}"},
    }


def _metrics(c: httpx.Client) -> tuple[float, float]:
    vals = dict(line.split() for line in c.get("/metrics").text.splitlines() if line.startswith("attnkit_computations_"))
    return float(vals["attnkit_computations_running"]), float(vals["attnkit_computations_waiting"])


BIG = ("--max-elements", "4194304", "--max-body-bytes", "20000000", "--max-flops", "1e13", "--max-work-bytes", "20000000000")


def test_a_request_past_its_time_limit_frees_its_slot() -> None:
    with (
        server("--max-concurrency", "1", "--queue", "4", "--request-timeout-s", "1", *BIG) as (proc, url),
        httpx.Client(base_url=url, timeout=60) as c,
    ):
        r = c.post(**_slow_octet())
        assert r.status_code == 504 and r.json()["error"]["field"], r.text
        # the slot is free again: a request with a one-second limit (queue time included) is answered
        ok = c.post("/v1/attention/flash", json=SMALL)
        assert ok.status_code == 200, ok.text
        assert _metrics(c) == (0.0, 0.0)
        # the killed worker was replaced: the pool is full again
        _wait_for(lambda: len(_compute_workers(proc.pid)) == 1, "the replacement worker")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled


def test_the_empty_query_flash_request_of_the_issue_does_not_keep_its_slot() -> None:
    headers = {"Content-Type": "application/octet-stream", "X-Attnkit-Query-Shape": "0,1048576,2,4"}
    with server("--max-concurrency", "1", "--request-timeout-s", "1") as (proc, url), httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/attention/flash?heads=2&dim=4", content=b"", headers=headers)
        if r.status_code == 200:  # mechanisms that return an empty result at once
            assert r.json()["shape"][0] == 0
        else:
            assert r.status_code == 504, r.text
        assert c.post("/v1/attention/flash", json=SMALL).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) in (0, -signal.SIGTERM)


def test_sigterm_mid_load_finishes_the_accepted_requests() -> None:
    n_req = 6
    with server("--max-concurrency", "2", "--queue", "16", "--request-timeout-s", "120", *BIG) as (proc, url):
        results: dict[int, int] = {}

        def send(i: int) -> None:
            with httpx.Client(base_url=url, timeout=120) as cc:
                results[i] = cc.post(**_slow_octet(n=2048)).status_code

        threads = [threading.Thread(target=send, args=(i,)) for i in range(n_req)]
        for t in threads:
            t.start()
        with httpx.Client(base_url=url, timeout=10) as c:
            _wait_for(lambda: sum(_metrics(c)) == n_req, "every request to be accepted (running or waiting)")
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        assert results == dict.fromkeys(range(n_req), 200)
        assert proc.wait(60) in (0, -signal.SIGTERM)


def test_a_dead_compute_worker_is_replaced() -> None:
    # every request through the workers (no inline lane for tiny requests): this is about the worker pool
    args = ("--max-concurrency", "2", "--request-timeout-s", "60", "--inline-max-flops", "0", *BIG)
    with server(*args) as (proc, url), httpx.Client(base_url=url, timeout=60) as c:
        _wait_for(lambda: len(_compute_workers(proc.pid)) == 2, "two compute workers")
        for pid in _compute_workers(proc.pid):  # idle workers killed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for _ in range(4):
            assert c.post("/v1/attention/flash", json=SMALL).status_code == 200
        # a worker killed while it computes: that request is a JSON 503, the next ones are served
        box: dict[str, httpx.Response] = {}
        t = threading.Thread(target=lambda: box.setdefault("r", c.post(**_slow_octet())))
        t.start()
        with httpx.Client(base_url=url, timeout=10) as m:
            _wait_for(lambda: _metrics(m)[0] == 1, "the slow request to run")
        workers = _compute_workers(proc.pid)
        ticks = {p: _cpu_ticks(p) for p in workers}
        # the worker computing is the one whose CPU time grows (by 0.2 s: decoding alone takes far less)
        _wait_for(lambda: any(_cpu_ticks(p) > ticks[p] + 20 for p in workers), "the busy worker to show")
        busy = max(workers, key=lambda p: _cpu_ticks(p) - ticks[p])
        os.kill(busy, signal.SIGKILL)
        t.join(60)
        r = box["r"]
        assert r.status_code == 503 and r.json()["error"]["code"] == "worker_lost" and r.json()["error"]["field"] == "query", (
            r.status_code,
            r.text[:300],
            workers,
            busy,
            ticks,
        )
        assert r.headers["retry-after"] == "1"
        pair: list[int] = []
        both = [
            threading.Thread(target=lambda: pair.append(httpx.post(url + "/v1/attention/flash", json=SMALL, timeout=60).status_code))
            for _ in range(2)
        ]
        for th in both:
            th.start()
        for th in both:
            th.join(60)
        assert pair == [200, 200]
        _wait_for(lambda: len(_compute_workers(proc.pid)) == 2, "the pool to be full again (two workers, not fewer or more)", timeout=120.0)
        assert busy not in _compute_workers(proc.pid)


def test_an_idle_worker_killed_from_outside_is_replaced_without_a_request() -> None:
    # the pool watches its workers: a dead idle one is not left in the idle list until a request picks it
    args = ("--max-concurrency", "2", "--inline-max-flops", "0", *BIG)
    with server(*args) as (proc, url), httpx.Client(base_url=url, timeout=60) as c:
        _wait_for(lambda: len(_compute_workers(proc.pid)) == 2, "two compute workers")
        first = _compute_workers(proc.pid)
        os.kill(first[0], signal.SIGKILL)
        _wait_for(lambda: first[0] not in _compute_workers(proc.pid) and len(_compute_workers(proc.pid)) == 2, "a replacement")
        for _ in range(3):  # sequential requests, each served, the pool stays at two
            assert c.post("/v1/attention/flash", json=SMALL).status_code == 200
        assert len(_compute_workers(proc.pid)) == 2


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except OSError:
        return 0


def test_a_killed_uvicorn_worker_is_replaced() -> None:
    with server("--workers", "2", "--max-concurrency", "1") as (proc, url), httpx.Client(base_url=url, timeout=30) as c:

        def uvicorn_workers() -> list[int]:
            return [p for p in _children(proc.pid) if "forkserver" not in _cmdline(p) and "resource_tracker" not in _cmdline(p)]

        _wait_for(lambda: len(uvicorn_workers()) == 2, "two uvicorn workers")
        victim = uvicorn_workers()[0]
        os.kill(victim, signal.SIGKILL)
        _wait_for(lambda: victim not in uvicorn_workers() and len(uvicorn_workers()) == 2, "uvicorn to replace the worker", 60)
        for _ in range(6):
            assert c.post("/v1/attention/flash", json=SMALL).status_code == 200


def test_options_past_the_worker_memory_cap_are_a_413_not_a_dead_machine() -> None:
    heavy = {"query": np.ones((2, 4096)).tolist(), "options": {"heads": 2, "model_dim": 4096}}  # four 64 MiB matrices
    with (
        server("--max-concurrency", "1", "--worker-memory-bytes", str(400 << 20)) as (proc, url),
        httpx.Client(base_url=url, timeout=60) as c,
    ):
        r = c.post("/v1/attention/multi_head", json=heavy)
        assert r.status_code == 413 and r.json()["error"]["code"] in ("too_large",) and r.json()["error"]["field"], r.text
        assert c.post("/v1/attention/flash", json=SMALL).status_code == 200
        assert (
            c.post("/v1/attention/multi_head", json={"query": np.ones((2, 16)).tolist(), "options": {"heads": 2, "model_dim": 16}}).status_code == 200
        )
