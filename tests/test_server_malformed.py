"""Malformed requests: every one is answered 4xx with the JSON error body, and the server stays healthy."""

from __future__ import annotations

import base64
import io
import json
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from test_server import live_server  # noqa: E402

from attnkit.server import Settings  # noqa: E402

OPTS = "?heads=2&dim=4"
FLASH = "/v1/attention/flash"
Q = np.random.default_rng(0).standard_normal((3, 2, 4)).astype(np.float32)
GOOD = {"query": Q.tolist(), "options": {"heads": 2, "dim": 4}}


def npy(*arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    for a in arrays:
        np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def js(doc: Any) -> dict[str, Any]:
    return {"content": json.dumps(doc), "headers": {"Content-Type": "application/json"}}


def raw(body: bytes, ctype: str, **headers: str) -> dict[str, Any]:
    return {"content": body, "headers": {"Content-Type": ctype, **headers}}


def b64(a: np.ndarray, **override: Any) -> dict[str, Any]:
    return {"data": base64.b64encode(a.tobytes()).decode(), "shape": list(a.shape), "dtype": str(a.dtype), **override}


def with_(**kw: Any) -> dict[str, Any]:
    return {**GOOD, **kw}


GOOD_NPY = npy(Q)
_fortran_header = GOOD_NPY.replace(b"'fortran_order': False", b"'fortran_order': 7")
_obj_npy = GOOD_NPY.replace(b"'<f4'", b"'|O8'")
_st_header = json.dumps({"query": {"dtype": "F32", "shape": [3, 2, 4], "data_offsets": [0, 999999]}}).encode()
_st_bad_offsets = struct.pack("<Q", len(_st_header)) + _st_header + Q.tobytes()
_st_int_header = json.dumps({"query": {"dtype": "I32", "shape": [3, 2, 4], "data_offsets": [0, 96]}}).encode()
_st_int = struct.pack("<Q", len(_st_int_header)) + _st_int_header + Q.tobytes()
_st_extra_header = json.dumps({"weights": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
_st_extra = struct.pack("<Q", len(_st_extra_header)) + _st_extra_header + b"\0\0\0\0"
_octet = {"X-Attnkit-Query-Shape": "3,2,4"}

# (id, method, path, request kwargs, expected status, expected code or None)
CASES: list[tuple[str, str, str, dict[str, Any], int, str | None]] = [
    # --- bad JSON
    ("empty-json", "POST", FLASH, raw(b"", "application/json"), 400, "bad_json"),
    ("truncated-json", "POST", FLASH, raw(b'{"query": [[1.0, 2.0', "application/json"), 400, "bad_json"),
    ("not-utf8", "POST", FLASH, raw(b'{"query": "\xff\xfe"}', "application/json"), 400, "bad_json"),
    ("trailing-garbage", "POST", FLASH, raw(b'{"query": [1]} xx', "application/json"), 400, "bad_json"),
    ("deep-nesting", "POST", FLASH, raw(b"[" * 40000 + b"]" * 40000, "application/json"), 400, "bad_json"),
    ("json-array-body", "POST", FLASH, js([1, 2, 3]), 422, "bad_request"),
    ("json-string-body", "POST", FLASH, js("hello"), 422, "bad_request"),
    ("missing-query", "POST", FLASH, js({"options": {"heads": 2}}), 422, "bad_request"),
    ("unknown-key", "POST", FLASH, js(with_(qeury=[1.0])), 422, "bad_request"),
    ("options-not-object", "POST", FLASH, js(with_(options=[1, 2])), 422, "bad_request"),
    ("bad-encoding", "POST", FLASH, js(with_(encoding="hex")), 422, "bad_request"),
    ("bad-dtype-field", "POST", FLASH, js(with_(dtype="int8")), 422, "bad_request"),
    # --- wrong values and shapes
    ("ragged-lists", "POST", FLASH, js(with_(query=[[1.0, 2.0], [3.0]])), 422, "bad_tensor"),
    ("strings-in-tensor", "POST", FLASH, js(with_(query=[["a", "b"]])), 422, "bad_tensor"),
    ("query-is-string", "POST", FLASH, js(with_(query="1,2,3")), 422, "bad_tensor"),
    ("query-is-bool", "POST", FLASH, js(with_(query=True)), 422, "bad_tensor"),
    ("nan-in-query", "POST", FLASH, raw(json.dumps(with_(query=[[[float("nan")] * 4] * 2] * 3)).encode(), "application/json"),
     422, "non_finite"),
    ("inf-in-keys", "POST", FLASH, raw(json.dumps(with_(keys=[[[float("inf")] * 4] * 2] * 3, values=Q.tolist())).encode(),
                                       "application/json"), 422, "non_finite"),
    ("huge-number-overflows", "POST", FLASH, js(with_(query=[[[1e300] * 4] * 2] * 3)), 422, "non_finite"),
    ("wrong-heads", "POST", FLASH, js(with_(options={"heads": 3, "dim": 4})), 422, "shape_error"),
    ("wrong-head-dim", "POST", FLASH, js(with_(options={"heads": 2, "dim": 5})), 422, "shape_error"),
    ("keys-without-values", "POST", FLASH, js(with_(keys=Q.tolist())), 422, "bad_request"),
    ("keys-values-length-mismatch", "POST", FLASH, js(with_(keys=Q.tolist(), values=Q[:2].tolist())), 422, "shape_error"),
    ("mask-wrong-shape", "POST", FLASH, js(with_(mask=[[True, False]])), 422, "shape_error"),
    ("mask-nan", "POST", FLASH, raw(json.dumps(with_(mask=[[float("nan")] * 3] * 3, mask_kind="additive")).encode(), "application/json"),
     422, "non_finite"),
    ("mask-int-01", "POST", FLASH, js(with_(mask=[[1, 0, 1]] * 3)), 422, "bad_mask"),
    ("mask-float-unmarked", "POST", FLASH, js(with_(mask=[[0.0, -1e9, 0.0]] * 3)), 422, "bad_mask"),
    ("mask-bool-marked-additive", "POST", FLASH, js(with_(mask=[[True] * 3] * 3, mask_kind="additive")), 422, "bad_mask"),
    ("mask-kind-unknown", "POST", FLASH, js(with_(mask=[[True] * 3] * 3, mask_kind="multiplicative")), 422, "bad_request"),
    ("too-many-dims", "POST", FLASH, js(with_(query=[[[[[[[[[[1.0]]]]]]]]]])), 400, "bad_shape"),
    ("empty-query", "POST", FLASH, js(with_(query=[])), 422, None),
    ("scalar-query", "POST", FLASH, js(with_(query=1.5)), 422, "shape_error"),
    ("neighbour-dim-mismatch", "POST", "/v1/attention/scaled_dot_product",
     js({"query": [1.0, 2.0], "keys": [[1.0, 2.0, 3.0]], "values": [[1.0]], "options": {"dim": 2}}), 422, "shape_error"),
    # --- bad options
    ("unknown-option", "POST", FLASH, js(with_(options={"heads": 2, "dim": 4, "colour": "red"})), 422, "config_error"),
    ("negative-heads", "POST", FLASH, js(with_(options={"heads": -2, "dim": 4})), 422, "config_error"),
    ("string-heads", "POST", FLASH, js(with_(options={"heads": "two", "dim": 4})), 422, "config_error"),
    ("object-option", "POST", FLASH, js(with_(options={"heads": {"n": 2}, "dim": 4})), 422, "config_error"),
    ("nan-scale", "POST", FLASH, raw(json.dumps(with_(options={"heads": 2, "dim": 4, "scale": float("nan")})).encode(),
                                     "application/json"), 422, "config_error"),
    ("huge-dim-option", "POST", FLASH, js(with_(options={"heads": 2, "dim": 10**12})), 422, "option_too_large"),
    ("huge-int-option-in-query", "POST", FLASH + "?heads=99999999999999999999", raw(GOOD_NPY, "application/x-npy"), 422,
     "option_too_large"),
    ("dropout-out-of-range", "POST", FLASH, js(with_(options={"heads": 2, "dim": 4, "dropout": 1.5})), 422, "config_error"),
    ("missing-required-option", "POST", "/v1/attention/multi_head", js({"query": [[1.0, 2.0]]}), 422, "config_error"),
    ("unknown-mechanism", "POST", "/v1/attention/does-not-exist", js(GOOD), 404, "unknown_mechanism"),
    # --- base64 tensors
    ("b64-invalid", "POST", FLASH, js(with_(query={"data": "@@@", "shape": [3, 2, 4]})), 400, "bad_base64"),
    ("b64-short", "POST", FLASH, js(with_(query=b64(Q[:2], shape=[3, 2, 4]))), 400, "bad_tensor"),
    ("b64-negative-shape", "POST", FLASH, js(with_(query=b64(Q, shape=[-3, 2, 4]))), 400, "bad_shape"),
    ("b64-bad-dtype", "POST", FLASH, js(with_(query=b64(Q, dtype="complex64"))), 422, "bad_dtype"),
    ("b64-huge-shape", "POST", FLASH, js(with_(query=b64(Q, shape=[10**9, 10**9]))), 413, "too_many_elements"),
    ("b64-no-shape", "POST", FLASH, js(with_(query={"data": base64.b64encode(Q.tobytes()).decode()})), 422, "bad_tensor"),
    ("b64-bool-not-01", "POST", FLASH, js(with_(mask={"data": base64.b64encode(bytes([2] * 9)).decode(), "shape": [3, 3],
                                                      "dtype": "bool"})), 422, "bad_tensor"),
    # --- content types
    ("no-content-type", "POST", FLASH, {"content": json.dumps(GOOD)}, 415, "unsupported_media_type"),
    ("text-plain", "POST", FLASH, raw(json.dumps(GOOD).encode(), "text/plain"), 415, "unsupported_media_type"),
    ("form-urlencoded", "POST", FLASH, {"data": {"query": "1"}}, 415, "unsupported_media_type"),
    ("multipart", "POST", FLASH, {"files": {"query": ("q.npy", GOOD_NPY)}}, 415, "unsupported_media_type"),
    ("bad-accept", "POST", FLASH, {**js(GOOD), "headers": {"Content-Type": "application/json", "Accept": "image/png"}}, 406,
     "not_acceptable"),
    ("batch-as-npy", "POST", "/v1/batch", raw(GOOD_NPY, "application/x-npy"), 415, "unsupported_media_type"),
    # --- npy
    ("npy-empty", "POST", FLASH + OPTS, raw(b"", "application/x-npy"), 400, "bad_npy"),
    ("npy-not-npy", "POST", FLASH + OPTS, raw(b"hello world, not an array", "application/x-npy"), 400, "bad_npy"),
    ("npy-truncated-data", "POST", FLASH + OPTS, raw(GOOD_NPY[:-7], "application/x-npy"), 400, "bad_npy"),
    ("npy-truncated-header", "POST", FLASH + OPTS, raw(GOOD_NPY[:40], "application/x-npy"), 400, "bad_npy"),
    ("npy-bad-header", "POST", FLASH + OPTS, raw(_fortran_header, "application/x-npy"), 400, "bad_npy"),
    ("npy-object-dtype", "POST", FLASH + OPTS, raw(_obj_npy, "application/x-npy"), 422, "bad_dtype"),
    ("npy-int-dtype", "POST", FLASH + OPTS, raw(npy(np.ones((3, 2, 4), dtype=np.int32)), "application/x-npy"), 422, "dtype_error"),
    ("npy-five-arrays", "POST", FLASH + OPTS, raw(npy(Q, Q, Q, Q, Q), "application/x-npy"), 400, "bad_npy"),
    ("npy-trailing-bytes", "POST", FLASH + OPTS, raw(GOOD_NPY + b"xyz", "application/x-npy"), 400, "bad_npy"),
    ("npy-string-dtype", "POST", FLASH + OPTS, raw(npy(np.array(["a", "b"])), "application/x-npy"), 422, "bad_dtype"),
    # --- safetensors
    ("st-empty", "POST", FLASH + OPTS, raw(b"", "application/x-safetensors"), 400, "bad_safetensors"),
    ("st-garbage", "POST", FLASH + OPTS, raw(b"\xff" * 64, "application/x-safetensors"), 400, "bad_safetensors"),
    ("st-bad-offsets", "POST", FLASH + OPTS, raw(_st_bad_offsets, "application/x-safetensors"), 400, "bad_safetensors"),
    ("st-int-dtype", "POST", FLASH + OPTS, raw(_st_int, "application/x-safetensors"), 422, "bad_dtype"),
    ("st-unknown-tensor", "POST", FLASH + OPTS, raw(_st_extra, "application/x-safetensors"), 422, "bad_tensor"),
    # --- raw float32
    ("octet-no-shape", "POST", FLASH + OPTS, raw(Q.tobytes(), "application/octet-stream"), 400, "missing_shape"),
    ("octet-truncated", "POST", FLASH + OPTS, raw(Q.tobytes()[:-4], "application/octet-stream", **_octet), 400, "truncated_body"),
    ("octet-extra-bytes", "POST", FLASH + OPTS, raw(Q.tobytes() + b"\0" * 4, "application/octet-stream", **_octet), 400, "bad_body"),
    ("octet-bad-shape-header", "POST", FLASH + OPTS, raw(Q.tobytes(), "application/octet-stream", **{"X-Attnkit-Query-Shape": "a,b"}),
     400, "bad_shape"),
    ("octet-bad-dtype", "POST", FLASH + OPTS, raw(Q.tobytes(), "application/octet-stream", **_octet, **{"X-Attnkit-Dtype": "int8"}),
     422, "bad_dtype"),
    ("octet-huge-shape", "POST", FLASH + OPTS, raw(b"", "application/octet-stream", **{"X-Attnkit-Query-Shape": "99999,99999,99"}),
     413, "too_many_elements"),
    ("octet-nan", "POST", FLASH + OPTS, raw(np.full((3, 2, 4), np.nan, np.float32).tobytes(), "application/octet-stream", **_octet),
     422, "non_finite"),
    ("json-null-body", "POST", FLASH, js(None), 422, "bad_request"),
    # --- batch
    ("batch-not-list", "POST", "/v1/batch", js({"requests": {"a": 1}}), 422, "bad_request"),
    ("batch-unknown-key", "POST", "/v1/batch", js({"requests": [], "extra": 1}), 422, "bad_request"),
    ("batch-bad-json", "POST", "/v1/batch", raw(b'{"requests": [', "application/json"), 400, "bad_json"),
    ("batch-too-big", "POST", "/v1/batch", js({"requests": [GOOD] * 9}), 413, "too_many_items"),
    # --- routes
    ("unknown-route", "GET", "/v2/everything", {}, 404, "not_found"),
    ("wrong-method", "DELETE", "/health", {}, 405, "method_not_allowed"),
    ("body-too-large", "POST", FLASH, raw(b"[" + b"1.0," * 40000 + b"1.0]", "application/json"), 413, "body_too_large"),
]


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with live_server(Settings(max_elements=50_000, max_body_bytes=100_000, max_batch_items=8)) as srv, srv.client() as c:
        yield c


def test_enough_cases() -> None:
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_request_is_a_json_4xx(client: httpx.Client, method: str, path: str, kwargs: dict[str, Any], status: int,
                                         code: str | None) -> None:
    r = client.request(method, path, **kwargs)
    assert 400 <= r.status_code < 500
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    err = r.json()["error"]
    assert set(err) == {"code", "message", "field"} and err["message"] and err["field"], err
    if code is not None:
        assert err["code"] == code, err
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_server_still_computes_after_all_the_bad_requests(client: httpx.Client) -> None:
    r = client.post(FLASH, json=GOOD)
    assert r.status_code == 200
    metrics = client.get("/metrics").text
    assert 'status="500"' not in metrics


def test_errors_name_the_field(client: httpx.Client) -> None:
    r = client.post(FLASH, json=with_(options={"heads": 3, "dim": 4}))
    assert r.json()["error"]["field"] == "query"
    r = client.post(FLASH, json=with_(options={"heads": -1, "dim": 4}))
    assert r.json()["error"]["field"] == "options.heads"
    r = client.post(FLASH, json=with_(keys=Q.tolist(), values=Q[:2].tolist()))
    assert r.json()["error"]["field"] == "values"
    r = client.post(FLASH, content=json.dumps(with_(query=[[[float("inf")] * 4] * 2] * 3)), headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "query"


@pytest.mark.parametrize("body", [b'{"a": NaN}', b"[1e999, -Infinity]", b'{"n": 123456789012345678901234567890}', b'{"x": [1.5, 2]}',
                                  b"[18446744073709551615, 18446744073709551616, -9223372036854775808, -9223372036854775809]",
                                  b"[" * 3000 + b"]" * 3000, b'{"a": 1', b"\xff"])
def test_json_parsing_does_not_depend_on_orjson(body: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    from attnkit.server import codec

    def outcome() -> Any:
        try:
            return ("ok", json.dumps(codec.parse_json(body)))
        except codec.ApiError as err:
            return ("error", err.status, err.code, err.message)

    with_fast = outcome()
    monkeypatch.setattr(codec, "_orjson", None)
    assert outcome() == with_fast
