"""Issue 14: the same request gives the same bytes after a restart and across ``--workers 2`` processes.

Two ``attnkit serve`` processes are started one after the other on 127.0.0.1 (the second with two
workers); a model without weights file (drawn from the fixed default seed), the ad-hoc route without a
seed, and the Open Inference Protocol's binary answer are each asked several times over fresh
connections, so that both workers answer; the per-model and per-route metrics of any worker count
every request.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("typer")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(repo: Path, workers: int, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "attnkit.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--models",
            str(repo),
            "--model",
            "solo=multi_head:" + str(repo / "solo.weights.safetensors"),
        ],
        env={**os.environ, "ATTNKIT_SERVER_MAX_CONCURRENCY": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    ready = 0
    while ready < 3:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert time.monotonic() < deadline, "server did not start"
        try:
            ready = ready + 1 if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200 else 0
        except httpx.HTTPError:
            time.sleep(0.2)
    return proc, url


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _answers(url: str, repeats: int) -> list[bytes]:
    q = np.random.default_rng(3).standard_normal((2, 5, 8)).astype(np.float32)
    raw = q.tobytes()
    doc = {
        "inputs": [{"name": "query", "shape": [2, 5, 8], "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
    }
    header = json.dumps(doc).encode()
    out = []
    for _ in range(repeats):
        for path in ("/v2/models/plain/infer", "/v2/models/solo/infer"):
            with httpx.Client(timeout=30) as c:  # a fresh connection each time: either worker may answer
                r = c.post(url + path, content=header + raw, headers={"Inference-Header-Content-Length": str(len(header))})
                assert r.status_code == 200, r.text
                out.append(r.content)
        with httpx.Client(timeout=30) as c:
            r = c.post(
                url + "/v1/attention/multi_head?heads=2",
                content=raw,
                headers={"Content-Type": "application/octet-stream", "X-Attnkit-Query-Shape": "2,5,8", "Accept": "application/octet-stream"},
            )
            assert r.status_code == 200, r.text
            out.append(r.content)
    return out


def test_same_bytes_after_restart_and_across_two_workers(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    from attnkit.mechanisms import registry

    (tmp_path / "plain.toml").write_text('type = "self"\n[options]\nmodel_dim = 8\nheads = 2\n')
    solo = registry.create("multi_head", model_dim=8, heads=2, seed=123)
    save_file({k: np.ascontiguousarray(v) for k, v in solo.parameters().items()}, str(tmp_path / "solo.weights.safetensors"), metadata={"heads": "2"})
    proc, url = _serve(tmp_path, 1)
    try:
        first = _answers(url, 1)
    finally:
        _stop(proc)
    prom_dir = tmp_path / "prometheus"
    prom_dir.mkdir()
    proc, url = _serve(tmp_path, 2, {"PROMETHEUS_MULTIPROC_DIR": str(prom_dir)})
    try:
        later = _answers(url, 4)
        # the per-route HTTP metrics add up over both workers too: GET /health over fresh connections until
        # both workers have answered some (each writes its own counter file), then every scrape (either
        # worker may answer it) counts all of them
        sent = 0
        while sent < 12 or len({f.stem.rsplit("_", 1)[1] for f in prom_dir.glob("counter_*.db")}) < 2:
            assert sent < 400, "one worker answered every connection"
            with httpx.Client(timeout=30) as c:
                assert c.get(url + "/health").status_code == 200
            sent += 1
        for _ in range(4):
            with httpx.Client(timeout=30) as c:
                text = c.get(url + "/metrics").text
            assert f'attnkit_requests_total{{method="GET",route="/health",status="200"}} {sent}.0' in text, text[:3000]
            assert f'attnkit_request_duration_seconds_count{{route="/health"}} {sent}.0' in text
        # per-model metrics add up over both workers: every scrape (either worker may answer) counts all 4
        for _ in range(4):
            with httpx.Client(timeout=30) as c:
                text = c.get(url + "/metrics").text
            for model in ("plain", "solo"):
                assert f'attnkit_model_requests_total{{model="{model}",status="200"}} 4.0' in text, text[-3000:]
                assert f'attnkit_batch_size_count{{model="{model}"}} 4.0' in text
                assert f'attnkit_queue_seconds_count{{model="{model}"}} 4.0' in text
    finally:
        _stop(proc)
    assert len(first) == 3 and len(later) == 12
    for i, answer in enumerate(later):
        assert answer == first[i % 3], f"answer {i} differs"
    # and the bytes are the library's: the seeded model, the given weights
    q = np.random.default_rng(3).standard_normal((2, 5, 8)).astype(np.float32)
    n = int(first[0].split(b'"binary_data_size":')[1].split(b"}")[0])
    plain = np.frombuffer(first[0][-n:], np.float32).reshape(2, 5, 8)
    np.testing.assert_array_equal(plain, registry.create("self", model_dim=8, heads=2, seed=0).forward(q))
    np.testing.assert_array_equal(np.frombuffer(first[1][-n:], np.float32).reshape(2, 5, 8), solo.forward(q))
