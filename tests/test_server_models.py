"""Issue 14: the model repository, options inferred from shapes and weights, the fixed default seed, the
admin weights route and the Open Inference Protocol (KServe v2), driven by ``tritonclient.http``.

The oracle is a plain float64 NumPy multi-head attention written here (torch's convention:
``y = x W^T + b``, heads split along the feature axis, ``softmax(q k^T / sqrt(d)) v``, output projection).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
from fastapi.testclient import TestClient  # noqa: E402
from safetensors.numpy import save, save_file  # noqa: E402

from attnkit.errors import ConfigError  # noqa: E402
from attnkit.mechanisms import registry  # noqa: E402
from attnkit.server.app import create_app  # noqa: E402
from attnkit.server.models import ModelRepository  # noqa: E402
from attnkit.server.settings import Settings  # noqa: E402

KEY = {"X-API-Key": "secret"}


def ref_mha(params: dict[str, np.ndarray], heads: int, q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Multi-head attention in float64 (torch.nn.MultiheadAttention's math, batch first)."""
    p = {n: a.astype(np.float64) for n, a in params.items()}

    def proj(x: np.ndarray, name: str) -> np.ndarray:
        return x.astype(np.float64) @ p[f"{name}.weight"].T + p[f"{name}.bias"]

    qp, kp, vp = proj(q, "q_proj"), proj(k, "k_proj"), proj(v, "v_proj")
    e = qp.shape[-1]
    d = e // heads

    def split(x: np.ndarray) -> np.ndarray:
        return x.reshape(*x.shape[:-1], heads, d).swapaxes(-2, -3)

    s = split(qp) @ split(kp).swapaxes(-1, -2) / np.sqrt(d)
    if mask is not None:  # (batch, Lq, Lk) bool, True = may attend, the same for every head
        s = np.where(mask[..., None, :, :], s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = (w @ split(vp)).swapaxes(-2, -3).reshape(*qp.shape[:-1], e)
    return o @ p["out_proj.weight"].T + p["out_proj.bias"]


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def rand_params(shapes: dict[str, tuple[int, ...]], seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: (rng.standard_normal(s) * 0.3).astype(np.float32) for n, s in shapes.items()}


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / max(1.0, float(np.max(np.abs(b)))))


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    """A repository: ``mha`` (TOML + weights, kdim 6 and vdim 5 from the weights) and ``plain`` (no weights)."""
    (tmp_path / "mha.toml").write_text('type = "multi_head"\n[options]\nheads = 2\n')
    shapes = registry.create("multi_head", model_dim=8, heads=2, kdim=6, vdim=5).param_shapes()
    save_file(rand_params(shapes), str(tmp_path / "mha.safetensors"))
    (tmp_path / "plain.toml").write_text('type = "self"\n[options]\nmodel_dim = 8\nheads = 4\n')
    return tmp_path


def client(repo: Path | None = None, **kw: Any) -> TestClient:
    return TestClient(create_app(Settings(models_dir=str(repo) if repo else None, api_key="secret", **kw)))


# ---------------------------------------------------------------------- the repository
def test_models_are_listed_with_type_options_layout_and_param_shapes(repo: Path) -> None:
    c = client(repo)
    listed = c.get("/v1/models", headers=KEY).json()["models"]
    assert [m["name"] for m in listed] == ["mha", "plain"]
    mha = c.get("/v1/models/mha", headers=KEY).json()
    assert mha["type"] == "multi_head" and mha["input_layout"] == "model"
    # model_dim, kdim and vdim were not in the TOML: the weights' shapes determine them
    assert (mha["options"]["model_dim"], mha["options"]["kdim"], mha["options"]["vdim"], mha["options"]["heads"]) == (8, 6, 5, 2)
    assert mha["param_shapes"]["k_proj.weight"] == [8, 6] and mha["param_shapes"]["v_proj.weight"] == [8, 5]
    assert [i["name"] for i in mha["inputs"]] == ["query", "key", "value", "mask"]
    assert mha["inputs"][1]["shape"] == [-1, 6]
    r = c.get("/v1/models/nope", headers=KEY)
    assert r.status_code == 404 and "nope" in r.json()["error"]["message"]


def test_model_with_weights_matches_float64_reference_and_library(repo: Path) -> None:
    c = client(repo)
    from safetensors.numpy import load_file

    params = load_file(str(repo / "mha.safetensors"))
    q, k, v = rand(2, 5, 8, seed=1), rand(2, 4, 6, seed=2), rand(2, 4, 5, seed=3)
    body = {
        "inputs": [
            {"name": n, "shape": list(a.shape), "datatype": "FP32", "data": a.ravel().tolist()} for n, a in (("query", q), ("key", k), ("value", v))
        ]
    }
    r = c.post("/v2/models/mha/infer", json=body, headers=KEY)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    got = np.asarray(out["data"], np.float32).reshape(out["shape"])
    assert out["datatype"] == "FP32" and out["shape"] == [2, 5, 8]
    assert rel(got, ref_mha(params, 2, q, k, v)) < 1e-5
    lib = registry.create("multi_head", model_dim=8, heads=2, kdim=6, vdim=5)
    lib.load_parameters(params)
    np.testing.assert_array_equal(got, lib.forward(q, k, v))


def test_single_model_spec_takes_dims_from_weights_and_heads_from_metadata(tmp_path: Path) -> None:
    shapes = registry.create("cross", query_dim=8, key_dim=6, heads=2).param_shapes()
    params = rand_params(shapes, seed=3)
    (tmp_path / "w.safetensors").write_bytes(save(params, metadata={"heads": "2"}))
    repo = ModelRepository(None, [f"x=cross:{tmp_path / 'w.safetensors'}"])
    mech = repo.get("x").mechanism
    assert (mech.query_dim, mech.key_dim, mech.heads) == (8, 6, 2)
    q, k = rand(3, 8, seed=4), rand(5, 6, seed=5)
    lib = registry.create("cross", query_dim=8, key_dim=6, heads=2)
    lib.load_parameters(params)
    np.testing.assert_array_equal(mech.forward(q, k, k), lib.forward(q, k, k))


def test_options_that_disagree_with_the_weights_name_both(repo: Path) -> None:
    (repo / "mha.toml").write_text('type = "multi_head"\n[options]\nheads = 2\nmodel_dim = 16\n')
    with pytest.raises(ConfigError, match=r"model_dim.*16.*8"):
        ModelRepository(repo)
    with pytest.raises(ConfigError, match="NAME=TYPE"):
        ModelRepository(None, ["justaname"])


def test_models_without_weights_use_the_fixed_seed_across_instances_and_evictions(repo: Path) -> None:
    q = rand(1, 3, 8, seed=9)
    body = {"inputs": [{"name": "query", "shape": list(q.shape), "datatype": "FP32", "data": q.ravel().tolist()}]}
    a = client(repo).post("/v2/models/plain/infer", json=body, headers=KEY).content
    b = client(repo).post("/v2/models/plain/infer", json=body, headers=KEY).content
    assert a == b
    # the ad-hoc route too: no seed given, a cache of one entry evicted between the two requests
    c = client(None, cache_size=1)
    req = {"query": q[0].tolist(), "options": {"heads": 2}}
    raw = {**KEY, "Accept": "application/octet-stream"}  # the bytes of the output (JSON answers carry a timing)
    first = c.post("/v1/attention/self", json=req, headers=raw)
    assert first.status_code == 200, first.text
    assert c.post("/v1/attention/flash", json={"query": rand(3, 2, 4).tolist()}, headers=KEY).status_code == 200
    assert c.post("/v1/attention/self", json=req, headers=raw).content == first.content
    assert client(None).post("/v1/attention/self", json=req, headers=raw).content == first.content
    lib = registry.create("self", model_dim=8, heads=2, seed=0)
    np.testing.assert_array_equal(np.frombuffer(first.content, np.float32).reshape(3, 8), lib.forward(q[0]))


# ---------------------------------------------------------------------- ad-hoc options from shapes
def test_adhoc_options_are_inferred_from_shapes_and_conflicts_name_both() -> None:
    c = client()
    q = rand(2, 5, 3, 4, seed=1)  # (B, L, H=3, D=4): heads and dim come from the shape
    r = c.post("/v1/attention/flash", json={"query": q.tolist()}, headers=KEY)
    assert r.status_code == 200, r.text
    qt = q.astype(np.float64).transpose(0, 2, 1, 3)
    s = qt @ qt.swapaxes(-1, -2) / 2.0
    w = np.exp(s - s.max(-1, keepdims=True))
    ref = ((w / w.sum(-1, keepdims=True)) @ qt).transpose(0, 2, 1, 3)
    assert rel(np.asarray(r.json()["output"]), ref) < 1e-5
    bad = c.post("/v1/attention/flash", json={"query": q.tolist(), "options": {"heads": 4}}, headers=KEY)
    assert bad.status_code == 422
    err = bad.json()["error"]
    assert err["code"] == "shape_error" and err["field"] == "query"
    assert "options.heads is 4" in err["message"] and "size 3" in err["message"]
    # query-string options of a binary body are compared after conversion: ?dim=4 agrees with the shape
    buf = q.tobytes()
    ok = c.post(
        "/v1/attention/flash?dim=4", content=buf, headers={**KEY, "Content-Type": "application/octet-stream", "X-Attnkit-Query-Shape": "2,5,3,4"}
    )
    assert ok.status_code == 200, ok.text
    # model layout: model_dim from the query, kdim from the key
    mq, mk = rand(4, 8, seed=2), rand(6, 6, seed=3)
    r = c.post(
        "/v1/attention/multi_head", json={"query": mq.tolist(), "keys": mk.tolist(), "values": mk.tolist(), "options": {"heads": 2}}, headers=KEY
    )
    assert r.status_code == 200, r.text
    lib = registry.create("multi_head", model_dim=8, kdim=6, vdim=6, heads=2, seed=0)
    np.testing.assert_allclose(np.asarray(r.json()["output"], np.float32), lib.forward(mq, mk, mk), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------- admin
def test_admin_replaces_weights_atomically_and_other_workers_follow(repo: Path) -> None:
    c, other = client(repo), client(repo)  # two processes' views of one repository
    q = rand(1, 3, 8, seed=4)
    body = {
        "inputs": [{"name": "query", "shape": list(q.shape), "datatype": "FP32", "data": q.ravel().tolist()}],
        "outputs": [{"name": "output", "parameters": {"binary_data": False}}],
    }
    before = other.post("/v2/models/mha/infer", json=body, headers=KEY)
    assert before.status_code == 400 and "error" in before.json()  # mha's key has kdim 6: the query cannot be the key
    shapes = {k: tuple(v) for k, v in c.get("/v1/models/plain", headers=KEY).json()["param_shapes"].items()}
    new = rand_params(shapes, seed=11)
    blob = save(new)
    assert c.put("/v1/models/plain/weights", content=blob).status_code == 401
    wrong = save({**new, "q_proj.weight": np.zeros((4, 4), np.float32)})
    r = c.put("/v1/models/plain/weights", content=wrong, headers={**KEY, "Content-Type": "application/x-safetensors"})
    assert r.status_code == 422 and "q_proj.weight" in r.json()["error"]["message"]
    assert not (repo / "plain.safetensors").exists()
    r = c.put("/v1/models/plain/weights", content=blob, headers={**KEY, "Content-Type": "application/x-safetensors"})
    assert r.status_code == 200, r.text
    assert (repo / "plain.safetensors").read_bytes() == blob
    assert sorted(p.name for p in repo.iterdir()) == ["mha.safetensors", "mha.toml", "plain.safetensors", "plain.toml"]
    ref = ref_mha(new, 4, q, q, q)
    for cl in (c, other):  # the other instance notices the new file and reloads
        out = cl.post("/v2/models/plain/infer", json=body, headers=KEY).json()["outputs"][0]
        assert rel(np.asarray(out["data"]).reshape(out["shape"]), ref) < 1e-5
    r = c.put("/v1/models/plain/weights", content=b"not safetensors", headers={**KEY, "Content-Type": "application/x-safetensors"})
    assert r.status_code == 422 and "safetensors" in r.json()["error"]["message"]
    assert (repo / "plain.safetensors").read_bytes() == blob
    # a model from --model without a weights file or repository has nowhere to write: 409
    with pytest.raises(ConfigError):  # (self needs model_dim: the spec alone cannot build it)
        ModelRepository(None, ["lone=self"])
    lone = TestClient(create_app(Settings(models=("lone=flash",), api_key="secret")))
    r = lone.put("/v1/models/lone/weights", content=save({}), headers=KEY)
    assert r.status_code == 409 and "--models" in r.json()["error"]["message"]
    # without an API key on the server, the admin route is closed
    open_app = TestClient(create_app(Settings(models_dir=str(repo))))
    assert open_app.put("/v1/models/plain/weights", content=blob).status_code == 403


# ---------------------------------------------------------------------- Open Inference Protocol
def test_protocol_health_metadata_and_errors(repo: Path) -> None:
    c = client(repo)
    assert c.get("/v2/health/live").json() == {"live": True}
    assert c.get("/v2/health/ready").status_code == 200
    meta = c.get("/v2/models/mha", headers=KEY).json()
    assert [i["name"] for i in meta["inputs"]] == ["query", "key", "value", "mask"]
    assert meta["inputs"][0]["shape"] == [-1, -1, 8] and meta["inputs"][1]["shape"] == [-1, -1, 6]
    assert meta["outputs"][0]["name"] == "output"
    assert c.get("/v2/models/mha/ready", headers=KEY).status_code == 200
    r = c.get("/v2/models/nope/ready", headers=KEY)
    assert r.status_code == 404 and "nope" in r.json()["error"]
    q = rand(1, 2, 8)
    cases = [
        ({"inputs": [{"name": "queries", "shape": [1, 2, 8], "datatype": "FP32", "data": q.ravel().tolist()}]}, "query, key"),
        ({"inputs": [{"name": "query", "shape": [1, 2, 8], "datatype": "FP8", "data": [0]}]}, "datatype"),
        ({"inputs": [{"name": "query", "shape": [1, 2, 8], "datatype": "FP32", "data": [1.0, 2.0]}]}, "2 values"),
        ({"inputs": [{"name": "query", "shape": [1, 2, 7], "datatype": "FP32", "data": [0.0] * 14}]}, "query"),
        ({"inputs": []}, "inputs"),
    ]
    for body, words in cases:
        r = c.post("/v2/models/plain/infer", json=body, headers=KEY)
        assert r.status_code == 400, r.text
        assert set(r.json()) == {"error"} and words in r.json()["error"]
    r = c.post("/v2/models/plain/infer", content=b'{"inputs": [', headers={**KEY, "Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = c.post("/v2/models/nope/infer", json=cases[0][0], headers=KEY)
    assert r.status_code == 404 and set(r.json()) == {"error"}
    # the versioned forms: the one version is "1"
    assert c.get("/v2/models/mha/versions/1", headers=KEY).json() == meta
    assert c.get("/v2/models/mha/versions/1/ready", headers=KEY).status_code == 200
    good = {"inputs": [{"name": "query", "shape": [1, 2, 8], "datatype": "FP32", "data": q.ravel().tolist()}]}
    assert c.post("/v2/models/plain/versions/1/infer", json=good, headers=KEY).json() == (
        c.post("/v2/models/plain/infer", json=good, headers=KEY).json()
    )
    r = c.post("/v2/models/plain/versions/2/infer", json=good, headers=KEY)
    assert r.status_code == 404 and "version" in r.json()["error"]
    metrics = c.get("/metrics", headers=KEY).text
    assert 'attnkit_model_requests_total{model="plain",status="400"}' in metrics
    assert 'attnkit_model_requests_total{model="_unknown",status="404"}' in metrics
    assert 'attnkit_batch_size_bucket{le="1.0",model="plain"}' in metrics
    paths = c.get("/openapi.json").json()["paths"]
    assert "/v2/models/{name}/infer" in paths and "/v1/models/{name}/weights" in paths
    assert all(p["name"] != "version" for p in paths["/v2/models/{name}/infer"]["post"]["parameters"])


def test_the_raw_infer_handler_answers_as_the_fastapi_route(repo: Path) -> None:
    """``POST /v2/models/.../infer`` is answered ahead of FastAPI's middleware (CORS off) and by the FastAPI
    route (CORS on): the same status, body and headers for answers and errors, the key checked, and the
    same route and per-model metrics."""
    fast, routed = client(repo), client(repo, cors_origins=("http://example.org",))
    assert fast.app.attnkit_fast is not None and routed.app.attnkit_fast is None
    q = rand(2, 3, 8, seed=4)
    raw = q.tobytes()
    head = json.dumps({"inputs": [{"name": "query", "shape": [2, 3, 8], "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}],
                       "outputs": [{"name": "output", "parameters": {"binary_data": True}}]}).encode()  # fmt: skip
    binary = {"content": head + raw, "headers": {**KEY, "Inference-Header-Content-Length": str(len(head))}}
    good = {"json": {"inputs": [{"name": "query", "shape": [2, 3, 8], "datatype": "FP32", "data": q.ravel().tolist()}]}, "headers": KEY}
    requests = [
        ("/v2/models/plain/infer", binary), ("/v2/models/plain/infer", good), ("/v2/models/plain/versions/1/infer", good),
        ("/v2/models/plain/versions/2/infer", good), ("/v2/models/nope/infer", good), ("/v2/models/plain/infer", {"json": good["json"]}),
        ("/v2/models/plain/infer", {"content": b'{"inputs": [', "headers": KEY}),
        ("/v2/models/plain/infer", {"content": head + raw[:-4], "headers": binary["headers"]}),
    ]  # fmt: skip
    for path, kw in requests:
        a, b = fast.post(path, **kw), routed.post(path, **kw)
        assert (a.status_code, a.content) == (b.status_code, b.content), path
        for h in ("content-type", "inference-header-content-length", "www-authenticate"):
            assert a.headers.get(h) == b.headers.get(h), (path, h)
    out = fast.post("/v2/models/plain/infer", **binary)
    n = int(out.headers["inference-header-content-length"])
    np.testing.assert_array_equal(
        np.frombuffer(out.content[n:], np.float32).reshape(2, 3, 8), registry.create("self", model_dim=8, heads=4, seed=0).forward(q)
    )
    for c, answered in ((fast, 3), (routed, 2)):  # route metrics are the app's own
        metrics = c.get("/metrics", headers=KEY).text
        assert f'attnkit_requests_total{{method="POST",route="/v2/models/{{name}}/infer",status="200"}} {answered}.0' in metrics
        assert 'attnkit_requests_total{method="POST",route="/v2/models/{name}/versions/{version}/infer",status="404"} 1.0' in metrics

    def model_count() -> float:  # the per-model metrics are the process's
        line = next(
            x for x in fast.get("/metrics", headers=KEY).text.splitlines() if x.startswith('attnkit_model_requests_total{model="plain",status="200"}')
        )
        return float(line.rsplit(" ", 1)[1])

    before = model_count()
    assert fast.post("/v2/models/plain/infer", **binary).status_code == 200
    assert model_count() == before + 1


@contextlib.contextmanager
def live_server(settings: Settings) -> Iterator[str]:
    app = create_app(settings)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_infers_like_the_library(repo: Path, binary: bool) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    from safetensors.numpy import load_file
    from tritonclient.utils import InferenceServerException

    params = load_file(str(repo / "mha.safetensors"))
    lib = registry.create("multi_head", model_dim=8, heads=2, kdim=6, vdim=5)
    lib.load_parameters(params)
    with live_server(Settings(models_dir=str(repo), api_key="secret")) as url:
        tc = httpclient.InferenceServerClient(url)
        try:
            assert tc.is_server_live() and tc.is_server_ready()
            assert tc.is_model_ready("mha", headers=KEY)
            meta = tc.get_model_metadata("mha", headers=KEY)
            assert [i["name"] for i in meta["inputs"]] == ["query", "key", "value", "mask"]
            q, k, v = rand(3, 4, 8, seed=1), rand(3, 6, 6, seed=2), rand(3, 6, 5, seed=3)
            inputs = []
            for name, a in (("query", q), ("key", k), ("value", v)):
                t = httpclient.InferInput(name, list(a.shape), "FP32")
                t.set_data_from_numpy(a, binary_data=binary)
                inputs.append(t)
            outputs = [httpclient.InferRequestedOutput("output", binary_data=binary)]
            res = tc.infer("mha", inputs, outputs=outputs, headers=KEY)
            got = res.as_numpy("output")
            assert got.dtype == np.float32 and got.shape == (3, 4, 8)
            np.testing.assert_array_equal(got, lib.forward(q, k, v))
            assert rel(got, ref_mha(params, 2, q, k, v)) < 1e-5
            # no requested outputs: tritonclient asks for binary output (binary_data_output)
            np.testing.assert_array_equal(tc.infer("mha", inputs, headers=KEY).as_numpy("output"), got)
            # a BOOL mask (batch, Lq, Lk) for every head: batch items see different key prefixes
            mask = np.arange(6)[None, None, :] < np.array([2, 4, 6])[:, None, None]
            mask = np.broadcast_to(mask, (3, 4, 6)).copy()
            m = httpclient.InferInput("mask", list(mask.shape), "BOOL")
            m.set_data_from_numpy(mask, binary_data=binary)
            masked = tc.infer("mha", [*inputs, m], outputs=outputs, headers=KEY).as_numpy("output")
            np.testing.assert_array_equal(masked, lib.forward(q, k, v, mask=mask[:, None]))
            assert rel(masked, ref_mha(params, 2, q, k, v, mask)) < 1e-5
            assert rel(masked[0], ref_mha(params, 2, q[:1], k[:1, :2], v[:1, :2])[0]) < 1e-5
            bad = httpclient.InferInput("query", [3, 4, 7], "FP32")
            bad.set_data_from_numpy(rand(3, 4, 7), binary_data=binary)
            with pytest.raises(InferenceServerException, match="query"):
                tc.infer("mha", [bad], headers=KEY)
            with pytest.raises(InferenceServerException, match="unknown model"):
                tc.infer("nope", inputs, headers=KEY)
        finally:
            tc.close()


def test_model_repository_toml_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('type = "multi_head"\nextra = 1\n')
    with pytest.raises(ConfigError, match="bad.toml.*extra"):
        ModelRepository(tmp_path)
    (tmp_path / "bad.toml").write_text('type = "nonesuch"\n')
    with pytest.raises(ConfigError, match="bad.toml.*nonesuch"):
        ModelRepository(tmp_path)


def test_settings_carry_models_to_workers(repo: Path) -> None:
    s = Settings(models_dir=str(repo), models=("a=flash",))
    again = Settings.from_env({"ATTNKIT_SERVER_SETTINGS_JSON": s.to_json()})
    assert again.models_dir == str(repo) and again.models == ("a=flash",)
    assert json.loads(s.to_json())["models"] == ["a=flash"]
    assert os.fspath(repo) in s.to_json()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["-m", "attnkit.server", "--models", "/nonexistent-dir"], "no such directory"),
        (["-m", "attnkit.cli", "serve", "--model", "x=multi_head:/nonexistent.safetensors"], "no such weights file"),
        (["-m", "attnkit.cli", "serve", "--model", "bogus"], "NAME=TYPE"),
    ],
)
def test_bad_models_exit_2_with_one_line_before_binding(args: list[str], words: str) -> None:
    import subprocess
    import sys

    pytest.importorskip("typer")
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_torch_multihead_state_dict_is_served_like_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    state = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
    (tmp_path / "t.safetensors").write_bytes(save(state, metadata={"heads": "4"}))
    model = ModelRepository(None, [f"t=multi_head:{tmp_path / 't.safetensors'}"]).get("t")
    assert model.mechanism.model_dim == 16 and model.mechanism.heads == 4
    q = rand(2, 5, 16, seed=8)
    with torch.no_grad():
        want = ref(torch.from_numpy(q), torch.from_numpy(q), torch.from_numpy(q), need_weights=False)[0].numpy()
    assert rel(model.mechanism.forward(q), want.astype(np.float64)) < 1e-5
