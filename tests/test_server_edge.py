"""Issue 14: ``edge_featured`` takes its ``edge_features`` over every protocol.

On the ad-hoc route as a JSON field, a raw float32 tensor with ``X-Attnkit-Edge-Features-Shape``, or a
safetensors tensor named ``edge_features`` (``edge_dim`` inferred from its last axis); on the Open
Inference Protocol as an input tensor listed in the model's metadata. The oracle is the library's own
``EdgeFeaturedAttention`` with the same options and the server's fixed seed (its agreement with PyG's
``GATConv`` is tested in ``tests/test_graph_pyg.py``), answers compared bit for bit, and a float64 NumPy
GAT v1 (one head) written here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from safetensors.numpy import save  # noqa: E402

from attnkit.mechanisms import registry  # noqa: E402
from attnkit.server.app import create_app  # noqa: E402
from attnkit.server.models import DEFAULT_SEED  # noqa: E402
from attnkit.server.settings import Settings  # noqa: E402

OCTET = "application/octet-stream"


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


Q, K, EF = rand(3, 4, seed=1), rand(3, 5, 4, seed=2), rand(3, 5, 2, seed=3)


def library(**options: int) -> object:
    return registry.create("edge_featured", seed=DEFAULT_SEED, **options)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    repo = tmp_path_factory.mktemp("models")
    (repo / "edges.toml").write_text('type = "edge_featured"\n[options]\ndim = 4\nedge_dim = 2\nheads = 2\n')
    with TestClient(create_app(Settings(models_dir=str(repo), max_concurrency=1, max_batch_delay_ms=0))) as c:
        yield c


def gat_v1_reference(params: dict[str, np.ndarray], q: np.ndarray, k: np.ndarray, ef: np.ndarray, slope: float = 0.2) -> np.ndarray:
    """One-head GAT v1 with edge features and a self loop (edge feature: the mean of the target's), float64:
    ``a_j = softmax_j(leaky_relu(att_src.W x_j + att_dst.W x_i + att_edge.W_e e_ij))``, ``y_i = sum_j a_j W x_j + b``."""
    p = {n: v.astype(np.float64) for n, v in params.items()}
    w, we = p["lin.weight"], p["lin_edge.weight"]
    hs = k.astype(np.float64) @ w.T  # (n, k, C)
    hi = q.astype(np.float64) @ w.T  # (n, C)
    e = ef.astype(np.float64)
    hs = np.concatenate([hs, hi[:, None]], axis=1)  # the self loop
    e = np.concatenate([e, e.mean(axis=1, keepdims=True)], axis=1)
    he = e @ we.T
    score = hs @ p["att_src"][0] + (hi @ p["att_dst"][0])[:, None] + he @ p["att_edge"][0]
    score = np.where(score > 0, score, slope * score)
    a = np.exp(score - score.max(axis=1, keepdims=True))
    a /= a.sum(axis=1, keepdims=True)
    return np.einsum("nk,nkc->nc", a, hs) + p["bias"]


def test_json_octet_and_safetensors_bodies_carry_edge_features(client: TestClient) -> None:
    lib = library(dim=4, edge_dim=2, heads=2)
    want = lib.forward(Q, K, edge_features=EF)  # type: ignore[attr-defined]
    r = client.post(
        "/v1/attention/edge_featured",
        json={"query": Q.tolist(), "keys": K.tolist(), "edge_features": EF.tolist(), "options": {"heads": 2}, "encoding": "base64"},
    )
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(np.asarray(r.json()["output"] if isinstance(r.json()["output"], list) else _b64(r.json()["output"])), want)
    headers = {
        "Content-Type": OCTET, "Accept": OCTET, "X-Attnkit-Query-Shape": "3,4", "X-Attnkit-Keys-Shape": "3,5,4",
        "X-Attnkit-Edge-Features-Shape": "3,5,2",
    }  # fmt: skip
    for _ in range(3):  # the first runs in a worker, the later ones may run inline: the same bytes
        r = client.post("/v1/attention/edge_featured?heads=2", content=Q.tobytes() + K.tobytes() + EF.tobytes(), headers=headers)
        assert r.status_code == 200, r.text
        np.testing.assert_array_equal(np.frombuffer(r.content, np.float32).reshape(3, 4), want)
    body = save({"query": Q, "keys": K, "edge_features": EF})
    r = client.post("/v1/attention/edge_featured?heads=2", content=body, headers={"Content-Type": "application/x-safetensors", "Accept": OCTET})
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(np.frombuffer(r.content, np.float32).reshape(3, 4), want)


def _b64(t: dict[str, object]) -> np.ndarray:
    import base64

    return np.frombuffer(base64.b64decode(str(t["data"])), np.float32).reshape([int(s) for s in t["shape"]])  # type: ignore[attr-defined]


def test_one_head_matches_a_float64_gat_reference(client: TestClient) -> None:
    lib = library(dim=4, edge_dim=2, heads=1, out_dim=4)
    r = client.post(
        "/v1/attention/edge_featured",
        json={"query": Q.tolist(), "keys": K.tolist(), "edge_features": EF.tolist(), "options": {"out_dim": 4}},
    )
    assert r.status_code == 200, r.text
    got = np.asarray(r.json()["output"], dtype=np.float32)
    ref = gat_v1_reference(lib.parameters(), Q, K, EF)  # type: ignore[attr-defined]
    assert np.abs(got - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


def test_scores_take_edge_features(client: TestClient) -> None:
    lib = library(dim=4, edge_dim=2, heads=2)
    r = client.post(
        "/v1/attention/edge_featured/scores?heads=2",
        content=Q.tobytes() + K.tobytes() + EF.tobytes(),
        headers={
            "Content-Type": OCTET,
            "Accept": OCTET,
            "X-Attnkit-Query-Shape": "3,4",
            "X-Attnkit-Keys-Shape": "3,5,4",
            "X-Attnkit-Edge-Features-Shape": "3,5,2",
        },
    )
    assert r.status_code == 200, r.text
    want = lib.attention_weights(Q, K, edge_features=EF)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(np.frombuffer(r.content, np.float32).reshape(want.shape), want)


def test_edge_features_errors_name_the_field(client: TestClient) -> None:
    r = client.post("/v1/attention/scaled_dot_product", json={"query": [[1.0, 2.0]], "edge_features": [[1.0]]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "edge_features", r.text
    assert "edge_featured" in r.json()["error"]["message"]
    r = client.post(
        "/v1/attention/edge_featured", json={"query": Q.tolist(), "keys": K.tolist(), "edge_features": EF[:, :4].tolist(), "options": {"edge_dim": 2}}
    )
    assert r.status_code == 422 and "edge_features" in r.json()["error"]["message"], r.text
    r = client.post("/v1/attention/edge_featured", json={"query": Q.tolist(), "keys": K.tolist(), "options": {"edge_dim": 2}})
    assert r.status_code == 422 and "edge_features" in r.json()["error"]["message"], r.text


def test_open_inference_protocol_lists_and_takes_edge_features(client: TestClient) -> None:
    meta = client.get("/v2/models/edges").json()
    inputs = {i["name"]: i for i in meta["inputs"]}
    assert inputs["edge_features"]["shape"] == [-1, -1, 2] and inputs["edge_features"]["parameters"]["optional"] is False
    assert inputs["key"]["shape"] == [-1, -1, 4]
    want = library(dim=4, edge_dim=2, heads=2).forward(Q, K, edge_features=EF)  # type: ignore[attr-defined]
    doc = {
        "inputs": [
            {"name": "query", "shape": [3, 4], "datatype": "FP32", "data": Q.ravel().tolist()},
            {"name": "key", "shape": [3, 5, 4], "datatype": "FP32", "data": K.ravel().tolist()},
            {"name": "edge_features", "shape": [3, 5, 2], "datatype": "FP32", "data": EF.ravel().tolist()},
        ]
    }
    r = client.post("/v2/models/edges/infer", json=doc)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    np.testing.assert_array_equal(np.asarray(out["data"], np.float32).reshape(out["shape"]), want)
    # the binary tensor extension
    raws = [Q.tobytes(), K.tobytes(), EF.tobytes()]
    for t, raw in zip(doc["inputs"], raws, strict=True):
        del t["data"]
        t["parameters"] = {"binary_data_size": len(raw)}
    doc["outputs"] = [{"name": "output", "parameters": {"binary_data": True}}]
    head = json.dumps(doc).encode()
    r = client.post("/v2/models/edges/infer", content=head + b"".join(raws), headers={"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    np.testing.assert_array_equal(np.frombuffer(r.content[n:], np.float32).reshape(3, 4), want)
    # a model with edge_dim > 0 called without them: a protocol error naming the input
    plain = [
        {"name": "query", "shape": [3, 4], "datatype": "FP32", "data": Q.ravel().tolist()},
        {"name": "key", "shape": [3, 5, 4], "datatype": "FP32", "data": K.ravel().tolist()},
    ]
    r = client.post("/v2/models/edges/infer", json={"inputs": plain})
    assert r.status_code == 400 and "edge_features" in r.json()["error"], r.text


def test_repository_listing_shows_edge_features(client: TestClient, tmp_path: Path) -> None:
    model = client.get("/v1/models/edges").json()
    assert {"name": "edge_features", "shape": [-1, 2], "optional": False} in model["inputs"]
