"""Hostile requests against a live attnkit server (a subprocess on 127.0.0.1): one line per case with
the status, the error code and field, and the verdict (clean 4xx with a field / 5xx / hang / bad body).

    PYTHONPATH=src python benchmarks/robustness/probe_server.py [--isolation process|thread]
"""

from __future__ import annotations

import argparse
import io
import json
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(port: int, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "attnkit.server", "--port", str(port), "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start: " + proc.stderr.read().decode()[-2000:])


def npy(*arrays: np.ndarray) -> bytes:
    out = b""
    for a in arrays:
        buf = io.BytesIO()
        np.save(buf, a)
        out += buf.getvalue()
    return out


def raw_http(port: int, data: bytes, wait: float = 5.0) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        chunks = []
        try:
            while True:
                c = s.recv(65536)
                if not c:
                    break
                chunks.append(c)
        except TimeoutError:
            pass
    resp = b"".join(chunks)
    status = int(resp.split(b" ", 2)[1]) if resp.startswith(b"HTTP/") else 0
    return status, resp.split(b"\r\n\r\n", 1)[-1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--isolation", default="process")
    args = ap.parse_args()
    port = free_port()
    proc = start(
        port,
        "--isolation",
        args.isolation,
        "--request-timeout-s",
        "2",
        "--max-concurrency",
        "1",
        "--queue",
        "4",
        "--header-timeout-s",
        "1",
        "--body-timeout-s",
        "1",
    )
    base = f"http://127.0.0.1:{port}"
    q = np.random.default_rng(0).standard_normal((6, 2, 4)).astype("f4")
    good = {"query": q.tolist(), "options": {"heads": 2, "dim": 4}}
    H = {"Content-Type": "application/json"}
    cases: list[tuple[str, str, str, dict]] = [
        ("lone surrogate key", "POST", "/v1/attention/flash", {"content": b'{"\\ud800": 1, "query": [[1.0]]}', "headers": H}),
        ("lone surrogate option", "POST", "/v1/attention/flash", {"content": b'{"query": [[[1.0]]], "options": {"\\udc00x": 1}}', "headers": H}),
        ("lone surrogate mechanism", "POST", "/v1/attention/%ED%A0%80", {"json": good}),
        ("lone surrogate value", "POST", "/v1/attention/flash", {"content": b'{"query": [[[1.0]]], "options": {"heads": "\\ud800"}}', "headers": H}),
        (
            "npy header tokenize",
            "POST",
            "/v1/attention/flash?heads=2&dim=4",
            {"content": b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4',\n", "headers": {"Content-Type": "application/x-npy"}},
        ),
        (
            "npy header unclosed",
            "POST",
            "/v1/attention/flash?heads=2&dim=4",
            {"content": b"\x93NUMPY\x01\x00\x10\x00{'descr': (((((\n", "headers": {"Content-Type": "application/x-npy"}},
        ),
        ("b64 shape overflow", "POST", "/v1/attention/flash", {"json": {"query": {"data": "", "shape": [2**63, 2**63, 0], "dtype": "float32"}}}),
        ("b64 shape 2^64", "POST", "/v1/attention/flash", {"json": {"query": {"data": "", "shape": [0, 2**64], "dtype": "float32"}}}),
        ("int 0/1 mask", "POST", "/v1/attention/flash", {"json": {**good, "mask": [[1, 0] * 3] * 6}}),
        ("float mask unmarked", "POST", "/v1/attention/flash", {"json": {**good, "mask": [[0.0, -1e9] * 3] * 6}}),
        ("huge int in JSON", "POST", "/v1/attention/flash", {"content": b'{"query": [[[' + b"9" * 5000 + b"]]]}", "headers": H}),
        ("deep JSON", "POST", "/v1/attention/flash", {"content": b"[" * 100000 + b"]" * 100000, "headers": H}),
        (
            "too much work",
            "POST",
            "/v1/attention/flash?heads=1&dim=1",
            {
                "content": bytes(12_000_000),
                "headers": {
                    "Content-Type": "application/octet-stream",
                    "X-Attnkit-Query-Shape": "1,1000000,1,1",
                    "X-Attnkit-Keys-Shape": "1,1000000,1,1",
                    "X-Attnkit-Values-Shape": "1,1000000,1,1",
                },
            },
        ),
        ("huge options", "POST", "/v1/attention/multi_head", {"json": {"query": [[1.0] * 8], "options": {"heads": 4096, "model_dim": 4096}}}),
        ("bool option as string", "POST", "/v1/attention/flash", {"json": {**good, "options": {"heads": 2, "dim": 4, "causal": "maybe"}}}),
        ("unknown route", "GET", "/v2/nothing", {}),
        ("wrong method", "DELETE", "/v1/attention/flash", {}),
        (
            "empty-query flash (0,2^20,2,4)",
            "POST",
            "/v1/attention/flash?heads=2&dim=4",
            {"content": b"", "headers": {"Content-Type": "application/octet-stream", "X-Attnkit-Query-Shape": "0,1048576,2,4"}},
        ),
        ("after it: normal request", "POST", "/v1/attention/flash", {"json": good}),
        (
            "batch with bad items",
            "POST",
            "/v1/batch",
            {"content": json.dumps({"requests": [{"mechanism": "flash", **good}, {"mechanism": "\udc80"}, 3]}).encode(), "headers": H},
        ),
    ]
    rows = []
    with httpx.Client(base_url=base, timeout=30) as c:
        for label, method, path, kw in cases:
            t0 = time.monotonic()
            try:
                r = c.request(method, path, **kw)
                status, body = r.status_code, r.content
            except httpx.HTTPError as exc:
                status, body = 0, str(exc).encode()
            rows.append((label, status, body, time.monotonic() - t0))
    raws = [
        ("malformed request line", b"GARBAGE\r\n\r\n"),
        ("bad header", b"POST /v1/attention/flash HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"),
        ("non-ascii target", b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("bad content-length", b"POST /v1/attention/flash HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}"),
        ("two content-lengths", b"POST /v1/attention/flash HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
        ("slow headers (slowloris)", b"POST /v1/attention/flash HTTP/1.1\r\nHost: x\r\n"),
        ("slow body", b"POST /v1/attention/flash HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"),
    ]
    for label, data in raws:
        t0 = time.monotonic()
        status, body = raw_http(port, data, wait=5.0)
        rows.append((label, status, body, time.monotonic() - t0))
    print(f"{'case':34s} {'status':>6s}  verdict   code/field")
    bad = 0
    for label, status, body, dt in rows:
        try:
            err = json.loads(body)["error"]
            info = f"{err['code']} / {err['field']}"
            has_field = bool(err.get("field"))
        except (ValueError, KeyError, TypeError):
            info, has_field = (body[:60].decode("utf-8", "replace") if status != 200 else "ok"), False
        if status == 0:
            verdict = "hang"
        elif status >= 500 and status != 503 and status != 504:
            verdict = "5xx"
        elif status in (503, 504) or 400 <= status < 500:
            verdict = "clean" if has_field else "no-field"
        else:
            verdict = "ok"
        bad += verdict in ("hang", "5xx", "no-field")
        print(f"{label:34s} {status:6d}  {verdict:8s}  {info[:70]}  ({dt:.2f} s)")
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = "did not stop on SIGTERM"
    print(f"SIGTERM -> exit {rc}; {bad} bad outcomes of {len(rows)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
