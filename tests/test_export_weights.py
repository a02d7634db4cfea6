"""ONNX export of the attention weights (``export_onnx(..., output="weights")``, ``attnkit export
--attention-weights``) and the metadata every exported file carries (read by the JS ``LocalEngine``).

Oracles: attnkit's NumPy ``attention_weights`` of the same mechanism, and a float64 NumPy softmax written
here for flash with a causal bool mask. Models are exported at length 8 and run at 5 and 19.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("ndonnx")

import attnkit  # noqa: E402
from attnkit.errors import ConfigError  # noqa: E402
from attnkit.mechanisms import registry  # noqa: E402

WEIGHTED = ["flash", "multi_head", "cross", "hyperbolic", "scaled_dot_product", "local_global"]


def _run(path: str, feed: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return np.asarray(sess.run(None, {k: v for k, v in feed.items() if k in names})[0])


@pytest.mark.parametrize("name", WEIGHTED)
def test_weights_graph_equals_attention_weights_at_other_lengths(name: str, tmp_path) -> None:
    cls = registry.get(name)
    mech = cls(**cls.example_options)
    path = str(tmp_path / "w.onnx")
    info = attnkit.export_onnx(mech, path, *mech.example_inputs(8, np.random.default_rng(0)), output="weights")
    onnx.checker.check_model(onnx.load(path), full_check=True)
    assert "value" not in info.inputs
    for length in (5, 19):
        q, k, *_ = (*mech.example_inputs(length, np.random.default_rng(length)), None)
        got = _run(path, {"query": q, "key": k} if k is not None else {"query": q})
        want = np.asarray(mech.attention_weights(q, k))
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6)
        np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    # the weights graph keeps only the parameters it reads, unchanged
    model = onnx.load(path)
    for init in model.graph.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(init), np.asarray(mech.parameters()[init.name]))
    if name == "multi_head":
        assert {i.name for i in model.graph.initializer}.isdisjoint({"v_proj.weight", "out_proj.weight"})


def test_flash_weights_with_causal_bool_mask_against_float64(tmp_path) -> None:
    mech = attnkit.FlashAttention(heads=2, dim=4)
    path = str(tmp_path / "w.onnx")
    ex = mech.example_inputs(8, np.random.default_rng(0))
    attnkit.export_onnx(mech, path, ex[0], ex[1], mask=np.tril(np.ones((8, 8), dtype=bool)), output="weights")
    rng = np.random.default_rng(3)
    q, k = rng.standard_normal((2, 11, 2, 4)).astype(np.float32)
    mask = np.tril(np.ones((11, 11), dtype=bool))
    got = _run(path, {"query": q, "key": k, "mask": mask})
    s = np.einsum("qhd,khd->hqk", q.astype(np.float64), k.astype(np.float64)) / 2.0
    s = np.where(mask, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(got, p, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "options",
    [
        {"window": 4, "global_tokens": [0, 6], "causal": True},
        {"window": 2, "global_tokens": 12},  # more global tokens than the shorter length
    ],
)
def test_local_global_weights_pattern_is_built_in_the_graph(options: dict, tmp_path) -> None:
    """The sliding-window + global pattern comes from index comparisons in the graph: at lengths other than
    the example's it equals attention_weights and is zero exactly outside local_global_mask, with a bool
    key mask on top (float64 reference: softmax over the pattern and the mask)."""
    mech = attnkit.LocalGlobalAttention(dim=4, heads=2, **options)
    rng = np.random.default_rng(5)
    ex = mech.example_inputs(8, rng)
    path = str(tmp_path / "w.onnx")
    attnkit.export_onnx(mech, path, ex[0], ex[1], mask=np.ones((8, 8), bool), output="weights")
    onnx.checker.check_model(onnx.load(path), full_check=True)
    for length in (7, 19):
        q, k, _ = mech.example_inputs(length, rng)
        mask = rng.random((length, length)) > 0.2
        np.fill_diagonal(mask, True)
        got = _run(path, {"query": q, "key": k, "mask": mask})
        want = np.asarray(mech.attention_weights(q, k, mask=mask))
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6)
        allowed = mech.dense_mask(length) & mask
        s = np.einsum("qhd,khd->hqk", q.astype(np.float64), k.astype(np.float64)) / 2.0
        s = np.where(allowed, s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        np.testing.assert_allclose(got, p / p.sum(-1, keepdims=True), rtol=2e-4, atol=2e-6)
        assert np.all(got[:, ~allowed] == 0)


def test_metadata_records_mechanism_options_and_output(tmp_path) -> None:
    mech = attnkit.LocalGlobalAttention(dim=4, heads=2, window=3, global_tokens=1)
    attnkit.export_onnx(mech, tmp_path / "f.onnx")
    meta = {p.key: p.value for p in onnx.load(tmp_path / "f.onnx").metadata_props}
    assert meta["attnkit.mechanism"] == "local_global"
    assert meta["attnkit.output"] == "forward"
    assert meta["attnkit.inputs"] == "query,key,value"
    assert meta["attnkit.version"] == attnkit.__version__
    opts = json.loads(meta["attnkit.options"])
    assert (opts["dim"], opts["heads"], opts["window"], opts["global_tokens"]) == (4, 2, 3, 1)


def test_weights_errors_name_the_argument(tmp_path) -> None:
    with pytest.raises(ConfigError, match="output: 'linear' has no attention weights"):
        attnkit.export_onnx(attnkit.LinearAttention(dim=4, heads=2), tmp_path / "x.onnx", output="weights")
    with pytest.raises(ConfigError, match="output: expected 'forward' or 'weights'"):
        attnkit.export_onnx(attnkit.FlashAttention(heads=2, dim=4), tmp_path / "x.onnx", output="scores")


def test_cli_attention_weights_flag(tmp_path) -> None:
    out = tmp_path / "w.onnx"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run(
        [sys.executable, "-m", "attnkit.cli", "export", "--type", "flash", "-O", "heads=2", "-O", "dim=4",
         "--attention-weights", "-o", str(out), "--json"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["inputs"] == ["query", "key"]
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert meta["attnkit.output"] == "weights"
    q = np.random.default_rng(0).standard_normal((6, 2, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(str(out), {"query": q, "key": q}), attnkit.FlashAttention(heads=2, dim=4).attention_weights(q), atol=2e-6)


def test_edge_featured_graphs_take_edge_features_as_an_input(tmp_path) -> None:
    """With edge_dim > 0 the forward and weights graphs (``attnkit export``, values defaulted to the keys
    and dropped: graph attention takes none) have an ``edge_features`` input after query and key; ONNX
    Runtime equals attnkit's forward / attention_weights given the same edge features at other lengths."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    mech = attnkit.EdgeFeaturedAttention(dim=8, heads=2, edge_dim=3)
    for flag, stem in (([], "f"), (["--attention-weights"], "w")):
        out = tmp_path / f"{stem}.onnx"
        r = subprocess.run(
            [sys.executable, "-m", "attnkit.cli", "export", "--type", "edge_featured", "--dim", "8", "-O", "heads=2", "-O", "edge_dim=3",
             *flag, "-o", str(out), "--json"],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["inputs"] == ["query", "key", "edge_features"]
        onnx.checker.check_model(onnx.load(out), full_check=True)
        for length in (5, 19):
            rng = np.random.default_rng(length)
            q, k = mech.example_inputs(length, rng)
            ef = mech.example_extras(length, rng)["edge_features"]
            got = _run(str(out), {"query": q, "key": k, "edge_features": ef})
            want = mech.forward(q, k, edge_features=ef) if stem == "f" else mech.attention_weights(q, k, edge_features=ef)
            np.testing.assert_allclose(got, np.asarray(want), rtol=2e-4, atol=2e-6)
            other = _run(str(out), {"query": q, "key": k, "edge_features": ef + 1.0})
            assert not np.allclose(other, got, atol=1e-4)  # the edge features are read, not baked in
