"""The server as a deployment runs it: ``python -m attnkit.server --workers 2`` in a subprocess on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to count worker processes")
def test_two_workers_serve_and_stop_cleanly_on_sigterm() -> None:
    port = _free_port()
    env = {**os.environ, "ATTNKIT_SERVER_MAX_BATCH_ITEMS": "3"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "attnkit.server",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
            "--api-key",
            "k",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        ready = 0
        while ready < 3:  # a few answers in a row, so both workers had time to boot
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "server did not start"
            try:
                ready = ready + 1 if httpx.get(url + "/health", timeout=2).status_code == 200 else 0
            except httpx.HTTPError:
                time.sleep(0.2)
        assert len(_children(proc.pid)) >= 2  # the supervisor and its two workers (plus uvicorn's helper, if any)
        q = np.arange(16, dtype=np.float32).reshape(2, 2, 4) / 10
        with httpx.Client(base_url=url, timeout=30, headers={"X-API-Key": "k"}) as c:
            for _ in range(6):  # fresh requests land on either worker; both have the same limits and key
                r = c.post("/v1/attention/flash", json={"query": q.tolist(), "options": {"heads": 2, "dim": 4}})
                assert r.status_code == 200, r.text
                item = {"mechanism": "flash", "query": q.tolist(), "options": {"heads": 2, "dim": 4}}
                assert c.post("/v1/batch", json={"requests": [item] * 4}).json()["error"]["code"] == "too_many_items"
            assert httpx.get(url + "/v1/mechanisms").status_code == 401
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_settings_exit_with_code_2() -> None:
    r = subprocess.run([sys.executable, "-m", "attnkit.server", "--port", "1", "--queue", "many"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "queue" in r.stderr


_NO_LIFESPAN = """
import numpy as np
from fastapi.testclient import TestClient
from attnkit.server.app import create_app
from attnkit.server.settings import Settings

if __name__ == "__main__":
    client = TestClient(create_app(Settings()))  # outside ``with``: the app's lifespan never closes its workers
    r = client.post("/v1/attention/flash", json={"query": np.ones((2, 2, 4)).tolist(), "options": {"heads": 2, "dim": 4}})
    print(r.status_code)
"""


def test_a_process_whose_app_never_closed_its_workers_still_exits(tmp_path: Path) -> None:
    """Workers ignore SIGTERM (the server decides when they stop), so multiprocessing's exit handler alone
    would wait forever for them; the runner closes them at exit (this hang once stalled CI after pytest)."""
    script = tmp_path / "no_lifespan.py"
    script.write_text(_NO_LIFESPAN)
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "200"
    assert time.monotonic() - t0 < 60
