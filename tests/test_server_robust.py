"""The server under hostile input (issue 13): no 5xx, every error a JSON body naming its field, masks
that cannot be misread, an OpenAPI document that validates, offline docs, protocol errors and slow
clients answered in JSON, bounded work and a cache bounded in bytes. Oracles: a float64 NumPy
attention written here; openapi-spec-validator; hypothesis for the fuzz part."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from test_server import live_server  # noqa: E402

from attnkit.server import Settings  # noqa: E402
from attnkit.server.admission import estimate_work  # noqa: E402
from attnkit.server.cache import MechanismCache, held_bytes  # noqa: E402
from attnkit.server.compute import Compute  # noqa: E402
from attnkit.server.scores import weights_layout  # noqa: E402

FLASH = "/v1/attention/flash"
RNG = np.random.default_rng(3)
Q = RNG.standard_normal((5, 2, 4)).astype(np.float32)
K = RNG.standard_normal((7, 2, 4)).astype(np.float32)
V = RNG.standard_normal((7, 2, 4)).astype(np.float32)
OPTS = {"heads": 2, "dim": 4}


def ref_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """float64 softmax(q k^T / sqrt(D) + bias) v for (L, H, D) inputs and a (Lq, Lk) additive bias."""
    s = np.einsum("qhd,khd->hqk", q.astype(np.float64), k.astype(np.float64)) / np.sqrt(q.shape[-1]) + bias
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", p, v.astype(np.float64))


@pytest.fixture(scope="module")
def srv() -> Iterator[Any]:
    with live_server(Settings(max_concurrency=2, header_timeout_s=0.5, body_timeout_s=0.5, request_timeout_s=20)) as s:
        yield s


@pytest.fixture(scope="module")
def client(srv: Any) -> Iterator[httpx.Client]:
    with srv.client() as c:
        yield c


def assert_json_error(r: httpx.Response, status: int | None = None, code: str | None = None) -> dict[str, Any]:
    assert r.status_code < 500 or r.status_code in (503, 504), r.text
    if status is not None:
        assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    err = r.json()["error"]
    assert set(err) == {"code", "message", "field"} and err["message"] and err["field"], err
    if code is not None:
        assert err["code"] == code, err
    return err


# ------------------------------------------------------------------ documents
def test_openapi_document_is_valid(client: httpx.Client) -> None:
    from openapi_spec_validator import validate

    doc = client.get("/openapi.json").json()
    validate(doc)
    assert "AttentionRequest" in doc["components"]["schemas"] and "ErrorDetail" in doc["components"]["schemas"]
    assert "mask_kind" in doc["components"]["schemas"]["AttentionRequest"]["properties"]


def test_docs_work_offline(client: httpx.Client) -> None:
    html = client.get("/docs").text
    assert "cdn" not in html.lower() and "https://" not in html
    assert "/docs/assets/swagger-ui-bundle.js" in html
    js = client.get("/docs/assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000 and b"SwaggerUIBundle" in js.content
    assert client.get("/docs/assets/swagger-ui.css").status_code == 200


# ------------------------------------------------------------------ masks
def test_bool_and_marked_additive_masks_agree_with_the_reference(client: httpx.Client) -> None:
    allowed = RNG.random((5, 7)) > 0.3
    allowed[:, 0] = True
    bias = np.where(allowed, 0.0, -1e9).astype(np.float32)
    base = {"query": Q.tolist(), "keys": K.tolist(), "values": V.tolist(), "options": OPTS}
    r_bool = client.post(FLASH, json={**base, "mask": allowed.tolist()})
    r_add = client.post(FLASH, json={**base, "mask": bias.tolist(), "mask_kind": "additive"})
    assert r_bool.status_code == 200 and r_add.status_code == 200, (r_bool.text, r_add.text)
    ref = ref_attention(Q, K, V, bias.astype(np.float64))
    np.testing.assert_allclose(np.array(r_bool.json()["output"]), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(r_add.json()["output"]), ref, rtol=1e-5, atol=1e-6)
    octet = Q.tobytes() + K.tobytes() + V.tobytes() + bias.tobytes()
    shapes = {f"X-Attnkit-{f}-Shape": ",".join(map(str, a.shape)) for f, a in (("Query", Q), ("Keys", K), ("Values", V), ("Mask", bias))}
    r = client.post(
        FLASH + "?heads=2&dim=4", content=octet, headers={"Content-Type": "application/octet-stream", **shapes, "X-Attnkit-Mask-Kind": "additive"}
    )
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()["output"]), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "mask, extra",
    [
        ([[1, 0, 1, 1, 1, 1, 1]] * 5, {}),  # integer 0/1: would be added to the scores as 0 and 1
        ([[1, 0, 1, 1, 1, 1, 1]] * 5, {"mask_kind": "bool"}),
        ([[0.0, -1e9, 0.0, 0.0, 0.0, 0.0, 0.0]] * 5, {}),  # float, not marked additive
        ({"data": base64.b64encode(np.zeros((5, 7), "f4").tobytes()).decode(), "shape": [5, 7], "dtype": "float32"}, {}),
    ],
)
def test_ambiguous_masks_are_refused(client: httpx.Client, mask: Any, extra: dict) -> None:
    body = {"query": Q.tolist(), "keys": K.tolist(), "values": V.tolist(), "options": OPTS, "mask": mask, **extra}
    err = assert_json_error(client.post(FLASH, json=body), 422, "bad_mask")
    assert err["field"] == "mask"
    batch = client.post("/v1/batch", json={"requests": [{"mechanism": "flash", **body}]}).json()["results"][0]
    assert batch["status"] == 422 and batch["error"]["field"] == "requests[0].mask"


def test_octet_float_mask_needs_the_mark(client: httpx.Client) -> None:
    m = np.ones((5, 7), "f4")
    r = client.post(
        FLASH + "?heads=2&dim=4",
        content=Q.tobytes() + K.tobytes() + V.tobytes() + m.tobytes(),
        headers={
            "Content-Type": "application/octet-stream",
            "X-Attnkit-Query-Shape": "5,2,4",
            "X-Attnkit-Keys-Shape": "7,2,4",
            "X-Attnkit-Values-Shape": "7,2,4",
            "X-Attnkit-Mask-Shape": "5,7",
        },
    )
    assert "X-Attnkit-Mask-Kind" in assert_json_error(r, 422, "bad_mask")["message"]


# ------------------------------------------------------------------ named hostile cases
def _b(text: str) -> dict[str, Any]:
    return {"content": text.encode(), "headers": {"Content-Type": "application/json"}}


HOSTILE = [
    ("surrogate-key", FLASH, _b('{"\\ud800": 1, "query": [[1.0]]}'), 400),
    ("surrogate-option-name", FLASH, _b('{"query": [[[1.0]]], "options": {"\\udc00x": 1}}'), 400),
    ("surrogate-option-value", FLASH, _b('{"query": [[[1.0]]], "options": {"heads": "\\ud800"}}'), 400),
    ("surrogate-batch-mechanism", "/v1/batch", _b('{"requests": [{"mechanism": "\\udc80", "query": [1.0]}]}'), 400),
    (
        "npy-header-tokenize",
        FLASH + "?heads=2&dim=4",
        {"content": b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4',\n", "headers": {"Content-Type": "application/x-npy"}},
        400,
    ),
    ("b64-shape-overflow", FLASH, {"json": {"query": {"data": "", "shape": [2**63, 2**63, 0], "dtype": "float32"}}}, 413),
    ("b64-shape-2^64", FLASH, {"json": {"query": {"data": "", "shape": [0, 2**64], "dtype": "float32"}}}, 400),
    ("json-int-5000-digits", FLASH, _b('{"query": [[[' + "9" * 5000 + "]]]}"), 422),
    ("json-deep", FLASH, _b("[" * 50_000 + "]" * 50_000), 400),
    ("bool-option-string", FLASH, {"json": {"query": Q.tolist(), "options": {**OPTS, "causal": "maybe"}}}, 422),
    ("unknown-option", FLASH, {"json": {"query": Q.tolist(), "options": {**OPTS, "nope": 1}}}, 422),
    (
        "safetensors-bogus-header",
        FLASH,
        {"content": (2**62).to_bytes(8, "little") + b"{}", "headers": {"Content-Type": "application/x-safetensors"}},
        400,
    ),
]


@pytest.mark.parametrize(("path", "kwargs", "status"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_requests_are_json_4xx(client: httpx.Client, path: str, kwargs: dict, status: int) -> None:
    assert_json_error(client.post(path, **kwargs), status)
    assert client.get("/health").status_code == 200


def test_too_much_work_is_refused_before_computing(client: httpx.Client) -> None:
    n = 1_000_000
    r = client.post(
        FLASH + "?heads=1&dim=1",
        content=bytes(12 * n),
        headers={"Content-Type": "application/octet-stream", **{f"X-Attnkit-{f}-Shape": f"1,{n},1,1" for f in ("Query", "Keys", "Values")}},
    )
    err = assert_json_error(r, 413, "too_much_work")
    assert "floating-point operations" in err["message"] and err["field"] == "query"


def test_route_and_method_errors_name_a_field(client: httpx.Client) -> None:
    assert assert_json_error(client.get("/v2/nothing"), 404)["field"] == "path"
    assert assert_json_error(client.delete(FLASH), 405)["field"] == "method"


# ------------------------------------------------------------------ protocol level
def _raw(srv: Any, data: bytes, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    host, port = srv.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            c = s.recv(65536)
            if not c:
                break
            chunks.append(c)
    resp = b"".join(chunks)
    head, _, body = resp.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), resp[:300]
    return int(head.split(b" ", 2)[1]), json.loads(body)["error"]


#: request bytes no HTTP parser may accept (each answered with a JSON 400); test_server_overhead runs them on both parsers
MALFORMED_HTTP = {
    "request-line": b"GARBAGE\r\n\r\n",
    "header-line": b"POST /v1/attention/flash HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    "non-ascii-target": b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    "two-lengths": b"POST /v1/attention/flash HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "bad-length": b"POST /v1/attention/flash HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
}


@pytest.mark.parametrize("data", list(MALFORMED_HTTP.values()), ids=list(MALFORMED_HTTP))
def test_malformed_http_gets_the_json_error_body(srv: Any, data: bytes) -> None:
    status, err = _raw(srv, data)
    assert status == 400 and err["code"] == "bad_http" and err["field"] == "request"


def test_slow_clients_are_cut_off_with_408(srv: Any) -> None:
    status, err = _raw(srv, b"POST /v1/attention/flash HTTP/1.1\r\nHost: x\r\n")  # the head never ends
    assert (status, err["code"], err["field"]) == (408, "header_timeout", "request")
    body_start = b"POST /v1/attention/flash HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    status, err = _raw(srv, body_start)
    assert (status, err["code"], err["field"]) == (408, "body_timeout", "body")
    # the routes behind FastAPI read their bodies the same way (app.read_body)
    status, err = _raw(srv, body_start.replace(b"/v1/attention/flash", b"/v1/batch"))
    assert (status, err["code"], err["field"]) == (408, "body_timeout", "body")
    status, err = _raw(srv, b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 999999999999\r\n\r\n{")
    assert (status, err["code"], err["field"]) == (413, "body_too_large", "body")


# ------------------------------------------------------------------ cache and admission, in-process
def test_mechanism_cache_is_bounded_in_bytes() -> None:
    from attnkit.mechanisms import registry

    one = held_bytes(registry.create("multi_head", heads=2, model_dim=64))
    assert one >= 4 * 64 * 64 * 4  # four float32 projection matrices at least
    budget = 3 * one + 100  # room for three
    compute = Compute(Settings(cache_size=32, cache_bytes=budget, isolation="thread"))
    for seed in range(8):
        compute.mechanism("multi_head", {"heads": 2, "model_dim": 64, "seed": seed})
    assert len(compute.cache) == 3 and compute.cache.nbytes <= budget
    big = compute.mechanism("multi_head", {"heads": 2, "model_dim": 128})[0]  # larger than the whole budget: never kept
    assert held_bytes(big) > budget and compute.cache.nbytes <= budget and len(compute.cache) <= 3


def test_cache_refresh_tracks_growth_and_evicts() -> None:
    class Growing:
        def __init__(self) -> None:
            self.n = 10

        def memory_usage(self) -> Any:
            return type("M", (), {"heap_used": self.n})()

    cache = MechanismCache(max_entries=10, max_bytes=100)
    a, b = Growing(), Growing()
    cache.put("a", a)
    cache.put("b", b)
    assert cache.nbytes == 20
    assert cache.get("a") is a  # a used (as a request does), then it grew while computing
    a.n = 95
    cache.refresh("a")  # 105 bytes > 100: b, now the least recently used, goes
    assert cache.get("b") is None and cache.get("a") is a and cache.nbytes == 95


def test_work_estimate_matches_the_flop_count_of_dense_attention() -> None:
    import attnkit

    mech = attnkit.FlashAttention(heads=4, dim=8)
    q = np.zeros((3, 100, 4, 8), np.float32)
    k = np.zeros((3, 60, 4, 8), np.float32)
    layout = weights_layout(mech)
    work = estimate_work(mech, layout, q, k, k, None)
    assert (work.batch, work.lq, work.lk) == (3, 100, 60)
    assert work.flops == pytest.approx(2 * 3 * 4 * 100 * 60 * 8 * 2)  # Q K^T and P V over 4 heads of dim 8
    empty = estimate_work(mech, layout, np.zeros((0, 2**20, 4, 8), np.float32), None, None, None)
    assert empty.flops == 0


# ------------------------------------------------------------------ fuzz over the routes
tensors = st.one_of(
    st.floats(allow_nan=True, width=32),
    st.lists(st.floats(-10, 10, width=32), max_size=8),
    st.lists(
        st.lists(st.lists(st.floats(-10, 10, width=32) | st.integers(-3, 3) | st.booleans(), min_size=1, max_size=4), min_size=1, max_size=3),
        min_size=1,
        max_size=4,
    ),
    st.fixed_dictionaries(
        {
            "data": st.text(max_size=12),
            "shape": st.lists(st.integers(-1, 2**64), max_size=4),
            "dtype": st.sampled_from(["float32", "bool", "float16", "int8"]) | st.just({}) | st.just([1]),
        }
    ),
    st.text(max_size=4),
    st.none(),
)
option_values = st.one_of(
    st.integers(-5, 10**20), st.floats(allow_nan=True), st.booleans(), st.text(max_size=6), st.none(), st.lists(st.integers(0, 4), max_size=3)
)
requests_ = st.fixed_dictionaries(
    {"query": tensors},
    optional={
        "keys": tensors,
        "values": tensors,
        "mask": tensors,
        "mask_kind": st.sampled_from(["bool", "additive", "other", 1]),
        "options": st.dictionaries(
            st.sampled_from(["heads", "dim", "causal", "scale", "block_size", "seed", "dropout", "x\udc80", "nope"]), option_values, max_size=4
        ),
        "encoding": st.sampled_from(["list", "base64", "hex"]),
        "dtype": st.sampled_from(["float32", "float64", "int8"]) | st.just({}),
    },
)


def _dump(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode("utf-8", "surrogatepass")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(doc=requests_, mechanism=st.sampled_from(["flash", "multi_head", "linear", "hyperbolic", "scaled_dot_product", "nope"]))
def test_fuzz_attention_route(client: httpx.Client, doc: dict, mechanism: str) -> None:
    r = client.post(f"/v1/attention/{mechanism}", content=_dump(doc), headers={"Content-Type": "application/json"})
    if r.status_code == 200:
        out = r.json()["output"]
        assert np.isfinite(np.asarray(out["data"] if isinstance(out, dict) else out, dtype=object if isinstance(out, dict) else None)).all()
    else:
        assert_json_error(r)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(items=st.lists(requests_.map(lambda d: {**d, "mechanism": "flash"}) | st.integers() | st.text(max_size=3), max_size=4))
def test_fuzz_batch_route(client: httpx.Client, items: list) -> None:
    r = client.post("/v1/batch", content=_dump({"requests": items}), headers={"Content-Type": "application/json"})
    if r.status_code != 200:
        assert_json_error(r)
        return
    for res in r.json()["results"]:
        if res["status"] != 200:
            assert res["error"]["field"], res


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    body=st.binary(max_size=200),
    ctype=st.sampled_from(["application/x-npy", "application/x-safetensors", "application/octet-stream", "application/json", "text/plain"]),
    shape=st.none() | st.text(alphabet="0123456789,x-", max_size=12),
    mask_dtype=st.none() | st.sampled_from(["bool", "float32", "int8"]),
)
def test_fuzz_binary_bodies(client: httpx.Client, body: bytes, ctype: str, shape: str | None, mask_dtype: str | None) -> None:
    headers = {"Content-Type": ctype}
    if shape is not None:
        headers["X-Attnkit-Query-Shape"] = shape
    if mask_dtype is not None:
        headers["X-Attnkit-Mask-Dtype"] = mask_dtype
    r = client.post(FLASH + "?heads=2&dim=4", content=body, headers=headers)
    if r.status_code != 200:
        assert_json_error(r)
