"""The HTTP server over a real socket on 127.0.0.1: routes, body formats, limits, auth, CORS, metrics.

Results are checked against a float64 reference written plainly here, and against the library
called directly (the server must add no math of its own).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

import attnkit  # noqa: E402
from attnkit.mechanisms import registry  # noqa: E402
from attnkit.mechanisms.base import Mechanism  # noqa: E402
from attnkit.server import Settings, create_app  # noqa: E402


# ---------------------------------------------------------------------- live server helper
@dataclass
class Live:
    url: str
    server: Any
    thread: threading.Thread

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0, **kw)


@contextlib.contextmanager
def live_server(settings: Settings | None = None, **kw: Any) -> Iterator[Live]:
    """Serve ``create_app(settings)`` with uvicorn on a free port of 127.0.0.1, in a thread."""
    app = create_app(settings or Settings(**kw))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    from attnkit.server.protocol import event_loop, http_protocol  # what attnkit.server.run serves with

    s = app.state.attnkit.settings
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=30, http=http_protocol(s.http), loop=event_loop(s.loop))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    try:
        yield Live(f"http://127.0.0.1:{port}", server, thread)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    with live_server(Settings(max_concurrency=2)) as srv:
        yield srv


@pytest.fixture()
def http(live: Live) -> Iterator[httpx.Client]:
    with live.client() as c:
        yield c


# ---------------------------------------------------------------------- references
def ref_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None, scale: float | None = None) -> np.ndarray:
    """float64 softmax(scale q k^T + mask) v for (L, H, D) inputs; mask (Lq, Lk) bool or additive."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = np.einsum("qhd,khd->hqk", q, k) * scale
    if mask is not None:
        s = np.where(mask, s, -np.inf) if mask.dtype == bool else s + mask.astype(np.float64)
    s = s - s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", p, v)


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def npy_bytes(*arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    for a in arrays:
        np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def b64(a: np.ndarray) -> dict[str, Any]:
    dtype = "bool" if a.dtype == bool else str(a.dtype)
    return {"data": base64.b64encode(np.ascontiguousarray(a).tobytes()).decode(), "shape": list(a.shape), "dtype": dtype}


def assert_error(r: httpx.Response, status: int, code: str | None = None, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"code", "message", "field"}
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code, err
    if field is not None:
        assert err["field"] == field, err
    return err


Q, K, V = rand(6, 2, 4, seed=1), rand(9, 2, 4, seed=2), rand(9, 2, 3, seed=3)
FLASH = {"heads": 2, "dim": 4}


# ---------------------------------------------------------------------- routes
def test_health_reports_status_and_version(http: httpx.Client) -> None:
    r = http.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["version"] == attnkit.__version__


def test_mechanisms_lists_registry_with_option_types_and_defaults(http: httpx.Client) -> None:
    body = http.get("/v1/mechanisms").json()
    by_name = {m["name"]: m for m in body["mechanisms"]}
    assert sorted(by_name) == registry.names()
    flash = {o["name"]: o for o in by_name["flash"]["options"]}
    assert flash["heads"] == {
        "name": "heads",
        "type": "int",
        "default": 8,
        "required": False,
        "aliases": ["num_heads", "n_heads", "nhead", "num_attention_heads"],
    }
    assert flash["scale"]["type"] == "float|None" and flash["scale"]["default"] is None
    assert flash["causal"]["default"] is False
    sdp = {o["name"]: o for o in by_name["scaled_dot_product"]["options"]}
    assert sdp["dim"]["required"] is True


def test_json_nested_lists_match_float64_reference(http: httpx.Client) -> None:
    r = http.post("/v1/attention/flash", json={"query": Q.tolist(), "keys": K.tolist(), "values": V.tolist(), "options": FLASH})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["shape"] == [6, 2, 3] and body["dtype"] == "float32" and body["mechanism"] == "flash"
    out = np.asarray(body["output"], dtype=np.float32)
    np.testing.assert_allclose(out, ref_attention(Q, K, V), rtol=2e-5, atol=2e-6)
    direct = attnkit.FlashAttention(**FLASH).forward(Q, K, V)
    np.testing.assert_array_equal(out, direct)


def test_json_base64_in_and_out_is_exact(http: httpx.Client) -> None:
    mask = np.ones((6, 9), dtype=bool)
    mask[:, 5:] = False
    r = http.post(
        "/v1/attention/flash",
        json={"query": b64(Q), "keys": b64(K), "values": b64(V), "mask": b64(mask), "options": FLASH, "encoding": "base64"},
    )
    assert r.status_code == 200, r.text
    o = r.json()["output"]
    out = np.frombuffer(base64.b64decode(o["data"]), dtype="<f4").reshape(o["shape"])
    np.testing.assert_array_equal(out, attnkit.FlashAttention(**FLASH).forward(Q, K, V, mask=mask))
    np.testing.assert_allclose(out, ref_attention(Q, K, V, mask), rtol=2e-5, atol=2e-6)
    # the masked-out keys really do not matter
    V2 = V.copy()
    V2[5:] = 100.0
    r2 = http.post(
        "/v1/attention/flash", json={"query": b64(Q), "keys": b64(K), "values": b64(V2), "mask": b64(mask), "options": FLASH, "encoding": "base64"}
    )
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(r2.json()["output"]["data"]), "<f4").reshape(o["shape"]), out)


def test_json_float64_lists_compute_in_float64(http: httpx.Client) -> None:
    q64 = Q.astype(np.float64)
    r = http.post("/v1/attention/flash", json={"query": q64.tolist(), "options": FLASH, "dtype": "float64"})
    body = r.json()
    assert body["dtype"] == "float64"
    np.testing.assert_allclose(np.asarray(body["output"]), ref_attention(q64, q64, q64), rtol=1e-12, atol=1e-13)


def test_npy_body_and_npy_answer_with_additive_mask(http: httpx.Client) -> None:
    mask = np.zeros((6, 9), dtype=np.float32)
    mask[:, ::2] = -np.inf
    mask[:, 1] = 0.5
    r = http.post(
        "/v1/attention/flash?heads=2&dim=4",
        content=npy_bytes(Q, K, V, mask),
        headers={"Content-Type": "application/x-npy", "Accept": "application/x-npy", "X-Attnkit-Mask-Kind": "additive"},
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-npy")
    out = np.load(io.BytesIO(r.content), allow_pickle=False)
    np.testing.assert_allclose(out, ref_attention(Q, K, V, mask), rtol=2e-5, atol=2e-6)


def test_npy_float64_stays_float64(http: httpx.Client) -> None:
    q = Q.astype(np.float64)
    r = http.post(
        "/v1/attention/flash?heads=2&dim=4", content=npy_bytes(q), headers={"Content-Type": "application/x-npy", "Accept": "application/x-npy"}
    )
    out = np.load(io.BytesIO(r.content))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, ref_attention(q, q, q), rtol=1e-12, atol=1e-13)


def test_safetensors_in_and_out(http: httpx.Client) -> None:
    from safetensors.numpy import load, save

    body = save({"query": Q, "keys": K, "values": V})
    r = http.post(
        "/v1/attention/flash?heads=2&dim=4&causal=true",
        content=body,
        headers={"Content-Type": "application/x-safetensors", "Accept": "application/x-safetensors"},
    )
    assert r.status_code == 200, r.text
    out = load(r.content)["output"]
    # causal with Lq=6 < Lk=9 is bottom-right aligned: query i sees keys j <= i + 3
    allowed = np.arange(9)[None, :] <= np.arange(6)[:, None] + 3
    np.testing.assert_allclose(out, ref_attention(Q, K, V, allowed), rtol=2e-5, atol=2e-6)


def test_raw_float32_with_shape_headers(http: httpx.Client) -> None:
    mask = np.ones((6, 9), dtype=bool)
    mask[2, :] = False  # a fully masked row comes back as zeros
    body = Q.tobytes() + K.tobytes() + V.tobytes() + mask.astype(np.uint8).tobytes()
    r = http.post(
        "/v1/attention/flash?heads=2&dim=4",
        content=body,
        headers={
            "Content-Type": "application/octet-stream",
            "Accept": "application/octet-stream",
            "X-Attnkit-Query-Shape": "6,2,4",
            "X-Attnkit-Keys-Shape": "9,2,4",
            "X-Attnkit-Values-Shape": "9,2,3",
            "X-Attnkit-Mask-Shape": "6,9",
            "X-Attnkit-Mask-Dtype": "bool",
        },
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-attnkit-shape"] == "6,2,3" and r.headers["x-attnkit-dtype"] == "float32"
    out = np.frombuffer(r.content, dtype="<f4").reshape(6, 2, 3)
    np.testing.assert_array_equal(out[2], 0.0)
    rows = [0, 1, 3, 4, 5]
    np.testing.assert_allclose(out[rows], ref_attention(Q, K, V)[rows], rtol=2e-5, atol=2e-6)


def test_flat_spec_arrays_round_trip(http: httpx.Client) -> None:
    q = Q.reshape(-1)
    r = http.post(
        "/v1/attention/flash?heads=2&dim=4",
        content=q.tobytes(),
        headers={"Content-Type": "application/octet-stream", "Accept": "application/octet-stream", "X-Attnkit-Query-Shape": str(q.size)},
    )
    assert r.status_code == 200 and r.headers["x-attnkit-shape"] == str(q.size)
    np.testing.assert_allclose(np.frombuffer(r.content, "<f4"), ref_attention(Q, Q, Q).reshape(-1), rtol=2e-5, atol=2e-6)


def test_accept_negotiation(http: httpx.Client) -> None:
    doc = {"query": Q.tolist(), "options": FLASH}
    r = http.post("/v1/attention/flash", json=doc, headers={"Accept": "text/html;q=1, application/x-npy;q=0.5"})
    assert r.headers["content-type"].startswith("application/x-npy")
    r = http.post("/v1/attention/flash", json=doc, headers={"Accept": "*/*"})
    assert r.headers["content-type"].startswith("application/json")
    assert_error(http.post("/v1/attention/flash", json=doc, headers={"Accept": "text/html"}), 406, "not_acceptable", "Accept")


def test_neighbour_request(http: httpx.Client) -> None:
    rng = np.random.default_rng(5)
    q = rng.standard_normal(8).astype(np.float32)
    k = rng.standard_normal((10, 8)).astype(np.float32)
    v = rng.standard_normal((10, 3)).astype(np.float32)
    r = http.post("/v1/attention/scaled_dot_product", json={"query": q.tolist(), "keys": k.tolist(), "values": v.tolist(), "options": {"dim": 8}})
    assert r.status_code == 200, r.text
    s = k.astype(np.float64) @ q.astype(np.float64) / math.sqrt(8)
    p = np.exp(s - s.max())
    p /= p.sum()
    np.testing.assert_allclose(np.asarray(r.json()["output"]), p @ v, rtol=2e-5, atol=2e-6)


def test_multi_head_matches_library_and_torch_layout(http: httpx.Client) -> None:
    x = rand(5, 8, seed=9)
    opts = {"model_dim": 8, "heads": 2, "seed": 3}
    r = http.post("/v1/attention/multi_head", json={"query": x.tolist(), "options": opts})
    assert r.status_code == 200, r.text
    direct = registry.create("multi_head", **opts).forward(x)
    np.testing.assert_allclose(np.asarray(r.json()["output"], dtype=np.float32), direct, rtol=1e-6, atol=1e-6)


def test_mechanisms_are_cached_per_options_with_lru_bound() -> None:
    x = rand(4, 8, seed=2)
    with live_server(Settings(cache_size=2)) as srv, srv.client() as c:

        def out(seed_free_opts: dict[str, Any]) -> np.ndarray:
            r = c.post("/v1/attention/multi_head", json={"query": x.tolist(), "options": seed_free_opts})
            assert r.status_code == 200, r.text
            return np.asarray(r.json()["output"])

        a = {"model_dim": 8, "heads": 2}
        first = out(a)
        np.testing.assert_array_equal(out(a), first)  # same cached weights
        out({"model_dim": 8, "heads": 4})
        out({"model_dim": 8, "heads": 1})  # evicts a
        # issue 14: rebuilt from the fixed default seed, so the answer does not change after an eviction
        np.testing.assert_array_equal(out(a), first)


def test_batch_results_in_order_with_per_item_errors(http: httpx.Client) -> None:
    doc = {
        "requests": [
            {"mechanism": "flash", "query": Q.tolist(), "keys": K.tolist(), "values": V.tolist(), "options": FLASH},
            {"mechanism": "flash", "query": Q.tolist(), "options": {"heads": 3, "dim": 4}},
            {"mechanism": "nope", "query": [1.0]},
            {"mechanism": "flash", "query": b64(K), "options": FLASH, "encoding": "base64"},
            "not an object",
        ]
    }
    r = http.post("/v1/batch", json=doc)
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["status"] for x in res] == [200, 422, 404, 200, 422]
    np.testing.assert_allclose(np.asarray(res[0]["output"]), ref_attention(Q, K, V), rtol=2e-5, atol=2e-6)
    assert res[1]["error"]["code"] == "shape_error" and res[1]["error"]["field"] == "requests[1].query"
    assert res[2]["error"]["code"] == "unknown_mechanism" and res[2]["error"]["field"] == "requests[2].mechanism"
    o = res[3]["output"]
    np.testing.assert_allclose(np.frombuffer(base64.b64decode(o["data"]), "<f4").reshape(o["shape"]), ref_attention(K, K, K), rtol=2e-5, atol=2e-6)


def test_unknown_route_and_method_are_json_errors(http: httpx.Client) -> None:
    assert_error(http.get("/nope"), 404, "not_found")
    assert_error(http.get("/v1/attention/flash"), 405, "method_not_allowed")
    assert_error(http.post("/v1/attention/nope", json={"query": [1.0]}), 404, "unknown_mechanism", "mechanism")


def test_docs_and_openapi(http: httpx.Client) -> None:
    r = http.get("/docs")
    assert r.status_code == 200 and "swagger" in r.text.lower()
    spec = http.get("/openapi.json").json()
    assert {"/health", "/v1/mechanisms", "/v1/attention/{mechanism}", "/v1/batch", "/metrics"} <= set(spec["paths"])
    content = spec["paths"]["/v1/attention/{mechanism}"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/x-npy", "application/x-safetensors", "application/octet-stream"} <= set(content)


def test_metrics_prometheus_text() -> None:
    with live_server() as srv, srv.client() as c:
        c.get("/health")
        c.post("/v1/attention/flash", json={"query": Q.tolist(), "options": FLASH})
        c.post("/v1/attention/flash", json={"query": Q.tolist(), "options": {"heads": 3, "dim": 4}})
        c.get("/nope")
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = prom_samples(r.text)
    route = "/v1/attention/{mechanism}"
    assert samples["attnkit_requests_total", ("method", "POST"), ("route", route), ("status", "200")] == 1
    assert samples["attnkit_requests_total", ("method", "POST"), ("route", route), ("status", "422")] == 1
    assert samples["attnkit_request_errors_total", ("code", "shape_error"), ("route", route)] == 1
    assert samples["attnkit_request_errors_total", ("code", "not_found"), ("route", "unmatched")] == 1
    assert samples["attnkit_request_duration_seconds_count", ("route", route)] == 2
    assert samples["attnkit_request_duration_seconds_bucket", ("le", "+Inf"), ("route", route)] == 2
    buckets = [v for k, v in samples.items() if k[0] == "attnkit_request_duration_seconds_bucket" and ("route", route) in k]
    assert buckets == sorted(buckets)  # cumulative
    assert samples["attnkit_computations_running",] == 0


def prom_samples(text: str) -> dict[tuple[Any, ...], float]:
    """The samples of a Prometheus text page, keyed by ``(name, *sorted label pairs)`` (parsed by prometheus_client)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(smp.name, *sorted(smp.labels.items())): smp.value for fam in text_string_to_metric_families(text) for smp in fam.samples}


# ---------------------------------------------------------------------- limits
def test_body_size_limit_with_and_without_content_length() -> None:
    with live_server(Settings(max_body_bytes=1000)) as srv, srv.client() as c:
        big = npy_bytes(rand(40, 2, 4))
        assert_error(c.post("/v1/attention/flash?heads=2&dim=4", content=big, headers={"Content-Type": "application/x-npy"}), 413, "body_too_large")

        def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
            for i in range(0, len(big), 256):
                yield big[i : i + 256]

        assert_error(
            c.post("/v1/attention/flash?heads=2&dim=4", content=chunks(), headers={"Content-Type": "application/x-npy"}), 413, "body_too_large"
        )
        small = npy_bytes(rand(2, 2, 4))
        assert c.post("/v1/attention/flash?heads=2&dim=4", content=small, headers={"Content-Type": "application/x-npy"}).status_code == 200
        assert c.get("/health").status_code == 200


def test_element_and_batch_limits() -> None:
    with live_server(Settings(max_elements=100, max_batch_items=2)) as srv, srv.client() as c:
        assert_error(c.post("/v1/attention/flash", json={"query": rand(13, 2, 4).tolist(), "options": FLASH}), 413, "too_many_elements", "query")
        # a header that claims a huge shape is refused before anything is allocated
        assert_error(
            c.post(
                "/v1/attention/flash",
                content=b"",
                headers={"Content-Type": "application/octet-stream", "X-Attnkit-Query-Shape": "100000,100000,1000"},
            ),
            413,
            "too_many_elements",
            "query",
        )
        item = {"mechanism": "flash", "query": rand(2, 2, 4).tolist(), "options": FLASH}
        assert c.post("/v1/batch", json={"requests": [item, item]}).status_code == 200
        assert_error(c.post("/v1/batch", json={"requests": [item, item, item]}), 413, "too_many_items", "requests")


def test_option_limit_protects_memory(http: httpx.Client) -> None:
    assert_error(
        http.post("/v1/attention/multi_head", json={"query": [[1.0, 2.0]], "options": {"model_dim": 10**6}}),
        422,
        "option_too_large",
        "options.model_dim",
    )
    assert_error(
        http.post("/v1/attention/multi_head?model_dim=1000000", content=npy_bytes(rand(1, 2)), headers={"Content-Type": "application/x-npy"}),
        422,
        "option_too_large",
        "options.model_dim",
    )


class _Gate(Mechanism):
    """A test mechanism whose forward blocks until the test opens the gate (identity output)."""

    name = "test_gate"
    gate = threading.Event()

    def __init__(self, tag: int = 0) -> None:
        super().__init__()
        self.tag = tag

    def _forward(self, params: Any, query: Any, key: Any = None, value: Any = None, *, mask: Any = None) -> np.ndarray:
        _Gate.gate.wait(20)
        return np.asarray(query, dtype=np.float32)


@pytest.fixture()
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    registry.names()
    monkeypatch.setitem(registry._REGISTRY, "test_gate", _Gate)
    _Gate.gate = threading.Event()
    try:
        yield _Gate.gate
    finally:
        _Gate.gate.set()


def _gauges(c: httpx.Client) -> tuple[float, float]:
    text = c.get("/metrics").text
    vals = dict(line.split() for line in text.splitlines() if line.startswith("attnkit_computations_"))
    return float(vals["attnkit_computations_running"]), float(vals["attnkit_computations_waiting"])


def _wait_for(pred: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_concurrency_queue_then_503_with_retry_after(gate: threading.Event) -> None:
    with live_server(Settings(max_concurrency=1, queue=1, request_timeout_s=30, isolation="thread")) as srv, srv.client() as c:
        results: dict[str, httpx.Response] = {}

        def send(tag: str) -> None:
            with srv.client() as cc:
                results[tag] = cc.post("/v1/attention/test_gate", json={"query": [[1.0, 2.0]]})

        ta = threading.Thread(target=send, args=("a",))
        ta.start()
        _wait_for(lambda: _gauges(c) == (1, 0), "the first request to run")
        tb = threading.Thread(target=send, args=("b",))
        tb.start()
        _wait_for(lambda: _gauges(c) == (1, 1), "the second request to queue")
        r = c.post("/v1/attention/test_gate", json={"query": [[1.0]]})
        assert_error(r, 503, "overloaded")
        assert r.headers["retry-after"] == "1"
        assert c.get("/health").status_code == 200
        gate.set()
        ta.join(20)
        tb.join(20)
        assert results["a"].status_code == 200 and results["b"].status_code == 200
        assert results["b"].json()["output"] == [[1.0, 2.0]]


def test_request_timeout_gives_504_and_server_recovers(gate: threading.Event) -> None:
    with live_server(Settings(max_concurrency=1, request_timeout_s=0.3, isolation="thread")) as srv, srv.client() as c:
        assert_error(c.post("/v1/attention/test_gate", json={"query": [[1.0]]}), 504, "timeout")
        assert c.get("/health").status_code == 200
        gate.set()
        _wait_for(lambda: _gauges(c) == (0, 0), "the timed-out computation to finish")
        r = c.post("/v1/attention/flash", json={"query": Q.tolist(), "options": FLASH})
        assert r.status_code == 200


def test_graceful_shutdown_finishes_in_flight_request(gate: threading.Event) -> None:
    with live_server(Settings(max_concurrency=1, isolation="thread")) as srv:
        result: dict[str, Any] = {}

        def send() -> None:
            with srv.client() as cc:
                result["r"] = cc.post("/v1/attention/test_gate", json={"query": [[3.0, 4.0]]})

        t = threading.Thread(target=send)
        t.start()
        with srv.client() as c:
            _wait_for(lambda: _gauges(c) == (1, 0), "the request to run")
        srv.server.should_exit = True  # what SIGTERM does
        time.sleep(0.3)
        assert srv.thread.is_alive()  # still waiting for the in-flight request
        gate.set()
        t.join(20)
        srv.thread.join(20)
        assert not srv.thread.is_alive()
        assert result["r"].status_code == 200 and result["r"].json()["output"] == [[3.0, 4.0]]


# ---------------------------------------------------------------------- auth and CORS
def test_api_key_required_and_compared_exactly() -> None:
    with live_server(Settings(api_key="s3cret")) as srv, srv.client() as c:
        assert c.get("/health").status_code == 200  # liveness stays open
        err = assert_error(c.get("/v1/mechanisms"), 401, "unauthorized")
        assert "API key" in err["message"]
        assert_error(c.get("/v1/mechanisms", headers={"Authorization": "Bearer s3cre"}), 401)
        assert_error(c.get("/v1/mechanisms", headers={"Authorization": "Bearer s3cret2"}), 401)
        assert_error(c.post("/v1/attention/flash", json={"query": Q.tolist(), "options": FLASH}), 401)
        assert c.get("/v1/mechanisms", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/metrics", headers={"X-API-Key": "s3cret"}).status_code == 200
        r = c.post("/v1/attention/flash", json={"query": Q.tolist(), "options": FLASH}, headers={"X-API-Key": "s3cret"})
        assert r.status_code == 200


def test_cors_off_by_default_and_on_for_configured_origins(http: httpx.Client) -> None:
    r = http.options("/v1/attention/flash", headers={"Origin": "http://127.0.0.1:9", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers
    r = http.get("/health", headers={"Origin": "http://127.0.0.1:9"})
    assert "access-control-allow-origin" not in r.headers
    with live_server(Settings(cors_origins=("http://127.0.0.1:9",), api_key="k")) as srv, srv.client() as c:
        pre = c.options(
            "/v1/attention/flash",
            headers={
                "Origin": "http://127.0.0.1:9",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-attnkit-query-shape",
            },
        )
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://127.0.0.1:9"
        r = c.post("/v1/attention/flash", json={"query": Q.tolist(), "options": FLASH}, headers={"Origin": "http://127.0.0.1:9", "X-API-Key": "k"})
        assert r.headers["access-control-allow-origin"] == "http://127.0.0.1:9"
        assert "x-attnkit-shape" in r.headers["access-control-expose-headers"].lower()
        other = c.options("/v1/attention/flash", headers={"Origin": "http://evil.test", "Access-Control-Request-Method": "POST"})
        assert other.headers.get("access-control-allow-origin") != "http://evil.test"


# ---------------------------------------------------------------------- settings
def test_settings_from_env_and_validation() -> None:
    s = Settings.from_env(
        {"ATTNKIT_SERVER_MAX_BODY_BYTES": "123", "ATTNKIT_SERVER_CORS_ORIGINS": "http://a, http://b", "ATTNKIT_SERVER_REQUEST_TIMEOUT_S": "2.5"},
        queue=3,
    )
    assert (s.max_body_bytes, s.cors_origins, s.request_timeout_s, s.queue) == (123, ("http://a", "http://b"), 2.5, 3)
    assert Settings.from_mapping(json.loads(s.to_json())) == s
    with pytest.raises(attnkit.ConfigError, match="max_body_bytes"):
        Settings(max_body_bytes=0)
    with pytest.raises(attnkit.ConfigError, match="nope"):
        Settings.from_mapping({"nope": 1})
    with pytest.raises(attnkit.ConfigError, match="queue"):
        Settings.from_env({"ATTNKIT_SERVER_QUEUE": "many"})


def test_readme_server_example_gives_the_documented_output(http: httpx.Client) -> None:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("<!-- section:server -->") :]
    m = re.search(r"curl -s \S+(/v1/attention/\w+) -H 'Content-Type: application/json' \\\n\s+-d '(.*?)'\n# (.*?)\n", section)
    assert m, "README server example not found"
    r = http.post(m.group(1), content=m.group(2), headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    documented = [float(x) for x in re.findall(r"\d+\.\d+", m.group(3).split('"output":')[1].split("]")[0])]
    np.testing.assert_allclose(r.json()["output"], documented, atol=1e-4)


# ---------------------------------------------------------------------- the inline lane (issue 14)
class _Sleepy(Mechanism):
    """A test mechanism of tiny FLOPs whose forward sleeps 30 ms: its cost is not what its shapes say."""

    name = "test_sleepy"

    def _forward(self, params: Any, query: Any, key: Any = None, value: Any = None, *, mask: Any = None) -> np.ndarray:
        time.sleep(0.03)
        return np.asarray(query, dtype=np.float32)


def test_tiny_requests_run_inline_with_the_workers_answer_and_slow_kinds_never_do(monkeypatch: pytest.MonkeyPatch) -> None:
    import attnkit

    q, k = rand(128, seed=5), rand(100, 128, seed=6)
    headers = {
        "Content-Type": "application/octet-stream", "Accept": "application/octet-stream",
        "X-Attnkit-Query-Shape": "128", "X-Attnkit-Keys-Shape": "100,128", "X-Attnkit-Values-Shape": "100,128",
    }  # fmt: skip
    want = attnkit.ScaledDotProduct(dim=128).forward(q, k, k)
    with live_server(Settings(max_concurrency=1)) as srv, srv.client() as c:  # process isolation
        lane = srv.server.config.app.state.attnkit.inline
        answers = []
        for _ in range(8):
            r = c.post("/v1/attention/scaled_dot_product", content=q.tobytes() + k.tobytes() + k.tobytes(), headers=headers)
            assert r.status_code == 200, r.text
            answers.append(r.content)
        # the first ran in a worker (its cost unknown), later ones inline once a worker ran one within the
        # budget (wall time: on a busy machine that may take a few tries): the same bytes, the library's
        assert 1 <= lane.served <= 7
        assert all(a == answers[0] for a in answers)
        np.testing.assert_array_equal(np.frombuffer(answers[0], np.float32), want)
        # errors found inline are the workers' errors
        assert_error(c.post("/v1/attention/scaled_dot_product", content=q.tobytes(), headers={**headers, "X-Attnkit-Query-Shape": "3"}), 400)
    registry.names()
    monkeypatch.setitem(registry._REGISTRY, "test_sleepy", _Sleepy)
    with live_server(Settings(max_concurrency=1, isolation="thread")) as srv, srv.client() as c:
        lane = srv.server.config.app.state.attnkit.inline
        for _ in range(3):  # 30 ms in the worker, past the budget: never computed on the event loop
            r = c.post("/v1/attention/test_sleepy", json={"query": [[1.0, 2.0]]})
            assert r.status_code == 200 and r.json()["output"] == [[1.0, 2.0]]
        assert lane.served == 0
    with live_server(Settings(max_concurrency=1, inline_max_flops=0)) as srv, srv.client() as c:  # the lane switched off
        for _ in range(3):
            assert c.post("/v1/attention/scaled_dot_product", content=q.tobytes() + k.tobytes() + k.tobytes(), headers=headers).status_code == 200
        assert srv.server.config.app.state.attnkit.inline.served == 0


def test_garbage_collection_inside_an_inline_request_does_not_send_its_kind_to_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inline budget is the request's own CPU time: a collection of the heap that a request happens to
    trigger (tens of ms on a large heap) is not charged to it; the request's own overruns are, and
    OVERRUNS of them in a row send its kind to the workers (one alone does not)."""
    import gc

    from attnkit.server import codec
    from attnkit.server.inline import BUDGET_S, OVERRUNS, InlineLane

    q, k = rand(128, seed=5), rand(100, 128, seed=6)
    body = q.tobytes() + k.tobytes() + k.tobytes()
    headers = {"x-attnkit-query-shape": "128", "x-attnkit-keys-shape": "100,128", "x-attnkit-values-shape": "100,128"}
    want = attnkit.ScaledDotProduct(dim=128).forward(q, k, k)

    def burn(seconds: float) -> None:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    def slow_collector(phase: str, info: dict) -> None:
        if phase == "start":
            burn(4 * BUDGET_S)

    lane = InlineLane(Settings())
    first, key = lane.attention("scaled_dot_product", codec.OCTET, body, headers, {}, codec.OCTET, False)
    assert first is None and key is not None  # a kind's first request runs in a worker
    lane.worker_done(key, {"X-Attnkit-Elapsed-Ms": "0.5"})
    respond = lane.compute.respond

    def respond_with_gc(*args: Any, **kwargs: Any) -> Any:
        gc.collect()
        return respond(*args, **kwargs)

    monkeypatch.setattr(lane.compute, "respond", respond_with_gc)
    gc.callbacks.append(slow_collector)
    try:
        answer, _ = lane.attention("scaled_dot_product", codec.OCTET, body, headers, {}, codec.OCTET, False)
    finally:
        gc.callbacks.remove(slow_collector)
    assert answer is not None
    np.testing.assert_array_equal(np.frombuffer(answer[0], np.float32), want)
    answer, _ = lane.attention("scaled_dot_product", codec.OCTET, body, headers, {}, codec.OCTET, False)
    assert answer is not None and lane.served == 2  # still inline

    def respond_slowly(*args: Any, **kwargs: Any) -> Any:
        burn(4 * BUDGET_S)
        return respond(*args, **kwargs)

    def once() -> Any:
        return lane.attention("scaled_dot_product", codec.OCTET, body, headers, {}, codec.OCTET, False)

    monkeypatch.setattr(lane.compute, "respond", respond_slowly)
    assert once()[0] is not None  # one overrun (a hiccup of a shared machine looks the same): still inline
    monkeypatch.setattr(lane.compute, "respond", respond)
    assert once()[0] is not None  # within the budget: the count starts again
    monkeypatch.setattr(lane.compute, "respond", respond_slowly)
    for _ in range(OVERRUNS):
        assert once()[0] is not None  # answered inline, while it overruns ...
    assert once() == (None, None)  # ... OVERRUNS times in a row: to the workers for good
