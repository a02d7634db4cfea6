"""Issue 14, lower per-request overhead: both HTTP parsers (httptools, h11) behave alike, the settings that
choose them, the inline lane's cached plans (shapes, options and evictions), and a single-process server
that stops on its first SIGINT after load. Oracle: a float64 NumPy softmax attention written here."""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from test_server import live_server  # noqa: E402
from test_server_robust import MALFORMED_HTTP  # noqa: E402

from attnkit.errors import ConfigError  # noqa: E402
from attnkit.server import Settings, protocol  # noqa: E402

HAVE_HTTPTOOLS = importlib.util.find_spec("httptools") is not None
PARSERS = ["h11", pytest.param("httptools", marks=pytest.mark.skipif(not HAVE_HTTPTOOLS, reason="httptools not installed"))]
SDP = "/v1/attention/scaled_dot_product"


def ref_neighbour(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float | None = None) -> np.ndarray:
    """float64 softmax(k q * scale) v for one query (d,) over k neighbours (k, d); scale 1/sqrt(d) by default."""
    s = (k.astype(np.float64) @ q.astype(np.float64)) * (1.0 / np.sqrt(q.shape[-1]) if scale is None else scale)
    p = np.exp(s - s.max())
    return (p / p.sum()) @ v.astype(np.float64)


def binary(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> tuple[bytes, dict[str, str]]:
    headers = {
        "Content-Type": "application/octet-stream", "Accept": "application/octet-stream",
        "X-Attnkit-Query-Shape": ",".join(map(str, q.shape)), "X-Attnkit-Keys-Shape": ",".join(map(str, k.shape)),
        "X-Attnkit-Values-Shape": ",".join(map(str, v.shape)),
    }  # fmt: skip
    return q.tobytes() + k.tobytes() + v.tobytes(), headers


def _raw(url: str, data: bytes, timeout: float = 10.0) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            c = s.recv(65536)
            if not c:
                break
            chunks.append(c)
    return b"".join(chunks)


def _json_error(resp: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = resp.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), resp[:300]
    return int(head.split(b" ", 2)[1]), json.loads(body)["error"]


# ---------------------------------------------------------------------- both parsers
@pytest.fixture(scope="module", params=PARSERS)
def srv(request: pytest.FixtureRequest) -> Any:
    with live_server(Settings(max_concurrency=1, header_timeout_s=0.5, body_timeout_s=0.5, http=request.param, isolation="thread")) as s:
        assert s.server.config.http is protocol.http_protocol(request.param)
        yield s


@pytest.mark.parametrize("data", list(MALFORMED_HTTP.values()), ids=list(MALFORMED_HTTP))
def test_malformed_http_is_a_json_400_on_both_parsers(srv: Any, data: bytes) -> None:
    status, err = _json_error(_raw(srv.url, data))
    assert (status, err["code"], err["field"]) == (400, "bad_http", "request")


def test_slow_heads_and_bodies_are_a_json_408_on_both_parsers(srv: Any) -> None:
    status, err = _json_error(_raw(srv.url, b"POST /v1/attention/flash HTTP/1.1\r\nHost: x\r\n"))
    assert (status, err["code"], err["field"]) == (408, "header_timeout", "request")
    status, err = _json_error(_raw(srv.url, b"GET /health HTTP/1.1\r\nHo"))  # a head cut mid-line
    assert (status, err["code"]) == (408, "header_timeout")
    start = b"POST /v1/attention/flash HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    status, err = _json_error(_raw(srv.url, start))
    assert (status, err["code"], err["field"]) == (408, "body_timeout", "body")


def test_keep_alive_and_pipelined_requests_get_the_reference_answers(srv: Any) -> None:
    rng = np.random.default_rng(11)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((16,), (9, 16), (9, 16)))
    body, headers = binary(q, k, v)
    want = ref_neighbour(q, k, v)
    conn = http.client.HTTPConnection(*srv.url.removeprefix("http://").split(":"), timeout=30)
    got = []
    for _ in range(6):  # one connection, kept alive: the first in the worker thread, later ones may be inline
        conn.request("POST", SDP, body=body, headers=headers)
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("X-Attnkit-Shape") == "16"
        got.append(r.read())
        time.sleep(0.6)  # past the head deadline between requests: an idle keep-alive connection is not a slow head
    conn.close()
    assert all(g == got[0] for g in got)
    np.testing.assert_allclose(np.frombuffer(got[0], np.float32), want, rtol=1e-5, atol=1e-6)
    # two requests in one write (HTTP/1.1 pipelining): both answered, in order, then the connection closes
    one = f"POST {SDP} HTTP/1.1\r\nHost: x\r\n" + "".join(f"{a}: {b}\r\n" for a, b in headers.items())
    one_b = (one + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    health = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    resp = _raw(srv.url, one_b + health)
    first, rest = resp.split(b"\r\n\r\n", 1)
    assert first.startswith(b"HTTP/1.1 200") and rest[: len(got[0])] == got[0]
    assert b"HTTP/1.1 200" in rest[len(got[0]) :] and b'"status":"ok"' in rest.replace(b" ", b"")


def test_head_requests_and_expect_100_continue_on_both_parsers(srv: Any) -> None:
    """A response head with no body after it (HEAD) and a 100 Continue before the body both reach the
    client (the httptools protocol sends a response's head together with its body)."""
    host, port = srv.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(65536)
        # the route answers GET only (405, with its length), but the head arrives, and no body after it
        assert head.startswith((b"HTTP/1.1 200", b"HTTP/1.1 405")) and head.endswith(b"\r\n\r\n"), head
        rng = np.random.default_rng(15)
        q, k, v = (rng.standard_normal(sh).astype(np.float32) for sh in ((8,), (3, 8), (3, 8)))
        body, headers = binary(q, k, v)
        lines = "".join(f"{a}: {b}\r\n" for a, b in headers.items())
        s.sendall(f"POST {SDP} HTTP/1.1\r\nHost: x\r\n{lines}Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode())
        interim = s.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100"), interim  # sent at once, before the body
        s.sendall(body)
        resp = b""
        while len(resp.partition(b"\r\n\r\n")[2]) < 32:
            chunk = s.recv(65536)
            assert chunk
            resp += chunk
    assert resp.startswith(b"HTTP/1.1 200")
    np.testing.assert_allclose(np.frombuffer(resp.partition(b"\r\n\r\n")[2], np.float32), ref_neighbour(q, k, v), rtol=1e-5, atol=1e-6)


def test_json_and_binary_agree_with_the_reference(srv: Any) -> None:
    rng = np.random.default_rng(12)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((8,), (5, 8), (5, 8)))
    with srv.client() as c:
        r = c.post(SDP, json={"query": q.tolist(), "keys": k.tolist(), "values": v.tolist(), "options": {"scale": 0.25}})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.asarray(r.json()["output"]), ref_neighbour(q, k, v, 0.25), rtol=1e-5, atol=1e-6)
        body, headers = binary(q, k, v)
        r = c.post(SDP + "?scale=0.25", content=body, headers=headers)
        np.testing.assert_allclose(np.frombuffer(r.content, np.float32), ref_neighbour(q, k, v, 0.25), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- the settings that choose them
def test_http_and_loop_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (Settings().http, Settings().loop) == ("auto", "auto")
    want = protocol.JsonHttpToolsProtocol if HAVE_HTTPTOOLS else protocol.JsonH11Protocol
    assert protocol.http_protocol("auto") is want and protocol.http_protocol("h11") is protocol.JsonH11Protocol
    assert Settings.from_env({"ATTNKIT_SERVER_HTTP": " H11 ", "ATTNKIT_SERVER_LOOP": "asyncio"}).http == "h11"
    for field, bad in (("http", "h2"), ("loop", "trio")):
        with pytest.raises(ConfigError, match=rf"^{field}: expected one of .*got '{bad}'"):
            Settings(**{field: bad})
    monkeypatch.setattr(protocol, "_installed", lambda module: False)  # a machine without the compiled extras
    assert protocol.http_protocol("auto") is protocol.JsonH11Protocol and protocol.event_loop("auto") == "auto"
    with pytest.raises(ConfigError, match="http: 'httptools' is not installed"):
        Settings(http="httptools")
    with pytest.raises(ConfigError, match="loop: 'uvloop' is not installed"):
        Settings(loop="uvloop")


# ---------------------------------------------------------------------- the inline lane's plans
def test_inline_plans_follow_shapes_options_and_evictions() -> None:
    """Requests that differ only in shapes or options never share a plan, and a mechanism evicted from
    the cache (cache_size 1, two kinds alternating) is rebuilt and estimated again: every answer is
    the reference's."""
    rng = np.random.default_rng(13)
    with live_server(Settings(max_concurrency=1, cache_size=1, isolation="thread")) as srv, srv.client() as c:
        lane = srv.server.config.app.state.attnkit.inline
        for i in range(12):
            d, n = (16, 7) if i % 2 else (8, 20)  # dim inferred from the shapes (no ?dim)
            scale = None if i % 3 else 0.5
            q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((d,), (n, d), (n, d)))
            body, headers = binary(q, k, v)
            r = c.post(SDP + ("" if scale is None else f"?scale={scale}"), content=body, headers=headers)
            assert r.status_code == 200, r.text
            np.testing.assert_allclose(np.frombuffer(r.content, np.float32), ref_neighbour(q, k, v, scale), rtol=1e-5, atol=1e-6)
        assert lane.served > 0 and len(lane._plans) >= 2
        # options equal in Python but not as options (8, 8.0, True): each its own plan, the workers' answer
        q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((8,), (4, 8), (4, 8)))
        doc = {"query": q.tolist(), "keys": k.tolist(), "values": v.tolist()}
        served = lane.served
        for _ in range(4):
            r = c.post(SDP, json={**doc, "options": {"dim": 8}})
            np.testing.assert_allclose(np.asarray(r.json()["output"]), ref_neighbour(q, k, v), rtol=1e-5, atol=1e-6)
        assert lane.served > served  # the later ones inline, from the plan
        for bad in (8.0, True):
            r = c.post(SDP, json={**doc, "options": {"dim": bad}})
            assert r.status_code == 422 and r.json()["error"]["field"] == "options.dim", r.text
        # a shape that does not fit the cached kind's options: the same 422 inline as in a worker
        q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((8,), (20, 8), (20, 8)))
        body, headers = binary(q, k, v)
        r = c.post(SDP + "?dim=16", content=body, headers=headers)
        assert r.status_code == 422 and r.json()["error"]["field"] in ("query", "options.dim"), r.text


# ---------------------------------------------------------------------- SIGINT after load
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("loop", ["auto", "asyncio"])
def test_single_process_server_stops_on_the_first_sigint_after_load(loop: str) -> None:
    """Inline and worker requests, an idle keep-alive connection left open, then one SIGINT: the process
    exits (the bound below is a hang detector, not a timing)."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), *sys.path) if p)}
    cmd = [sys.executable, "-m", "attnkit.server", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--loop", loop]
    proc = subprocess.Popen([*cmd, "--max-concurrency", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    conns: list[http.client.HTTPConnection] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                c.request("GET", "/health")
                if c.getresponse().read():
                    conns.append(c)
                    break
            except OSError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        rng = np.random.default_rng(14)
        small = [rng.standard_normal(s).astype(np.float32) for s in ((32,), (50, 32), (50, 32))]
        medium = [rng.standard_normal(s).astype(np.float32) for s in ((24, 32), (200, 32), (200, 32))]
        for _ in range(15):  # small ones go inline once a worker ran one, medium ones always to a worker
            for q, k, v in (small, medium):
                body, headers = binary(q, k, v)
                conns[0].request("POST", SDP, body=body, headers=headers)
                r = conns[0].getresponse()
                assert r.status == 200
                r.read()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            pytest.fail("the server ignored its first SIGINT after load")
        assert proc.returncode in (0, -signal.SIGINT, 130), proc.stderr.read() if proc.stderr else ""
    finally:
        for c in conns:
            c.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------- large bodies through shared memory
def _memfd_maps() -> int:
    """Mappings of the workers' shared buffers in this (the server's) process."""
    with open("/proc/self/maps") as f:
        return sum("attnkit-body" in line for line in f)


def _dev_shm() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if "attnkit" in n or n.startswith(("psm_", "wnsm_"))} if os.path.isdir("/dev/shm") else set()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the shared buffer is a Linux memfd; elsewhere bodies go through the pipe")
def test_large_bodies_reach_the_workers_bit_for_bit_and_leave_nothing_behind() -> None:
    import attnkit
    from attnkit.server import isolation

    before, maps0 = _dev_shm(), _memfd_maps()  # (other servers of this test session may hold buffers of their own)
    settings = Settings(max_concurrency=1, inline_max_flops=0)
    with live_server(settings) as srv, srv.client() as c:
        runner = srv.server.config.app.state.attnkit.runner
        # sizes below the threshold (pipe), just above it (1 MiB buffer), past it (the buffer grows), then small again
        for n in (40, isolation.SHM_MIN_BYTES // 512 + 1, 700, 3000, 100):
            q, k, v = (np.random.default_rng(n).standard_normal(s).astype(np.float32) for s in ((n, 64), (n, 64), (n, 64)))
            body, headers = binary(q, k, v)
            want = attnkit.ScaledDotProduct(dim=64).forward(q, k, v)
            r = c.post(SDP, content=body, headers=headers)  # raw: read in place in the worker
            assert r.status_code == 200, r.text
            assert r.content == want.astype("<f4").tobytes(), n  # the library's bytes
            s = q.astype(np.float64) @ k.astype(np.float64).T / 8.0
            p = np.exp(s - s.max(-1, keepdims=True))
            np.testing.assert_allclose(want, (p / p.sum(-1, keepdims=True)) @ v, rtol=2e-4, atol=2e-5)  # and the reference's
            npy_headers = {"Content-Type": "application/x-npy", "Accept": "application/octet-stream"}
            npy = c.post(SDP, content=b"".join(_npy(a) for a in (q, k, v)), headers=npy_headers)
            assert npy.status_code == 200 and npy.content == r.content  # .npy bodies: copied out of the buffer
        assert _memfd_maps() - maps0 == 1  # one worker, one buffer (the smaller ones it outgrew are unmapped)
        # a request that errors in the worker (shapes that do not add up), then its worker killed (SIGKILL)
        bad = c.post(SDP, content=body, headers={**headers, "X-Attnkit-Keys-Shape": "99,64"})
        assert bad.status_code == 400 and bad.json()["error"]["field"] == "body"
        (pid,) = runner.pids
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # the dead worker's buffer is unmapped when the runner finds it; its replacement gets its own
        q, k, v = (np.random.default_rng(2).standard_normal(s).astype(np.float32) for s in ((500, 64), (500, 64), (500, 64)))
        body, headers = binary(q, k, v)
        r = c.post(SDP, content=body, headers=headers)
        assert r.status_code == 200 and r.content == attnkit.ScaledDotProduct(dim=64).forward(q, k, v).astype("<f4").tobytes()
        assert runner.replaced >= 1 and runner.pids != [pid] and _memfd_maps() - maps0 == 1
    assert _memfd_maps() == maps0  # the server stopped: every buffer unmapped
    assert _dev_shm() <= before  # and nothing was ever named in /dev/shm


def _npy(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


# ---------------------------------------------------------------------- what run() hands uvicorn
@pytest.mark.parametrize(("level", "access"), [("info", False), ("warning", False), ("debug", True)])
def test_run_chooses_parser_loop_and_access_log(monkeypatch: pytest.MonkeyPatch, level: str, access: bool) -> None:
    import uvicorn

    import attnkit.server as server

    got: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: got.append(kw))
    server.run("127.0.0.1", 0, 1, settings=Settings(http="h11", loop="asyncio"), log_level=level)
    (kw,) = got
    assert kw["access_log"] is access  # one line per request at debug level only
    assert kw["http"] is protocol.JsonH11Protocol and kw["loop"] == "asyncio"
    server.run("127.0.0.1", 0, 1, settings=Settings(), log_level=level)
    assert got[1]["http"] is protocol.http_protocol("auto") and got[1]["loop"] == "auto"
