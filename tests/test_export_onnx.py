"""ONNX export (attnkit.export_onnx): every mechanism that exports runs in ONNX Runtime with attnkit's numbers.

Oracles: attnkit's NumPy forward of the same mechanism (float32 tolerance), and a float64 NumPy reference
of masked/causal softmax attention written here. Models are exported at length 8 and run at other
lengths (5, and 300 > one 256-key tile), so nothing was unrolled for the example's length.
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
from attnkit.errors import ConfigError, ShapeError  # noqa: E402
from attnkit.mechanisms import registry  # noqa: E402

#: every registered mechanism exports (its example configuration)
EXPORTED = list(registry.names())
RTOL, ATOL = 2e-4, 2e-5


def _session(path: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _make(name: str, **over: object) -> attnkit.Mechanism:
    cls = registry.get(name)
    return cls(**{**cls.example_options, **over})


def _feeds(info: attnkit.export.ExportInfo, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    return dict(zip(info.inputs, arrays, strict=True))


@pytest.mark.parametrize("name", EXPORTED)
def test_every_mechanism_exports_and_matches_numpy_at_other_lengths(name: str, tmp_path) -> None:
    m = _make(name)
    path = str(tmp_path / f"{name}.onnx")
    info = attnkit.export_onnx(m, path)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert info.inputs[: len(m.example_inputs(8))] == ("query", "key", "value")[: len(m.example_inputs(8))]
    # weights stored unchanged, under their names
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for k, v in m.parameters().items():
        np.testing.assert_array_equal(inits[k], v.astype(np.float32))
    sess = _session(path)
    for length in (5, 300):
        ex = m.example_inputs(length, np.random.default_rng(length))
        extras = m.example_extras(length, np.random.default_rng(length + 1))
        got = sess.run(None, _feeds(info, [*ex, *extras.values()]))[0]
        ref = np.asarray(m.forward(*ex, **extras))
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL, err_msg=f"{name} at L={length}")


def _ref_attention(q, k, v, mask=None, causal=False):
    """float64 softmax(q k^T / sqrt(D) + mask) v, (L, H, D) layout; causal bottom-right aligned."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(q.shape[-1])
    lq, lk = q.shape[0], k.shape[0]
    if causal:
        s = np.where(np.arange(lk)[None, :] <= np.arange(lq)[:, None] + (lk - lq), s, -np.inf)
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    top = s.max(-1, keepdims=True)
    p = np.exp(s - np.where(np.isinf(top), 0.0, top))
    z = p.sum(-1, keepdims=True)
    p = p / np.where(z == 0, 1.0, z)  # a row with no visible key gives zeros (attnkit's convention)
    return np.einsum("hqk,khd->qhd", p, v)


@pytest.mark.parametrize("causal", [False, True])
def test_flash_mask_and_causal_against_float64_reference(causal: bool, tmp_path) -> None:
    m = attnkit.FlashAttention(heads=2, dim=8, causal=causal)
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((6, 2, 8), dtype=np.float32) for _ in range(3))
    mask = rng.random((6, 6)) > 0.3
    np.fill_diagonal(mask, True)
    path = str(tmp_path / "flash.onnx")
    info = attnkit.export_onnx(m, path, q, k, v, mask=mask)
    assert info.inputs == ("query", "key", "value", "mask")
    onnx.checker.check_model(onnx.load(path), full_check=True)
    sess = _session(path)
    for lq, lk in ((7, 7), (260, 300)):  # Lq != Lk: causal is bottom-right aligned
        q = rng.standard_normal((lq, 2, 8), dtype=np.float32)
        k, v = (rng.standard_normal((lk, 2, 8), dtype=np.float32) for _ in range(2))
        mk = rng.random((lq, lk)) > 0.3
        mk[:, -1] = True  # every row sees a key
        got = sess.run(None, {"query": q, "key": k, "value": v, "mask": mk})[0]
        np.testing.assert_allclose(got, _ref_attention(q, k, v, mk, causal), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(got, m.forward(q, k, v, mask=mk), rtol=RTOL, atol=ATOL)


def test_float_mask_multihead_causal_and_dynamic_batch(tmp_path) -> None:
    m = attnkit.MultiHeadAttention(model_dim=8, heads=2, causal=True)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 8), dtype=np.float32)
    fm = np.zeros((5, 5), np.float32)
    path = str(tmp_path / "mha.onnx")
    info = attnkit.export_onnx(m, path, x, mask=fm)
    assert info.inputs == ("query", "mask")
    sess = _session(path)
    x = rng.standard_normal((3, 290, 8), dtype=np.float32)
    fm = rng.standard_normal((290, 290)).astype(np.float32)
    got = sess.run(None, {"query": x, "mask": fm})[0]
    np.testing.assert_allclose(got, m.forward(x, mask=fm), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("lq", "lk"), [(5, 13), (13, 5)])
def test_rope_places_queries_bottom_right_at_every_length(causal: bool, lq: int, lk: int, tmp_path) -> None:
    """Queries sit at positions Lk-Lq .. Lk-1 (as the library has them): a model exported at Lq = Lk must
    count the shift in the graph, not bake in the example's (a silent mismatch once)."""
    rng = np.random.default_rng(lq * lk)
    flash = attnkit.FlashAttention(heads=2, dim=4, rope=True, causal=causal)
    cross = attnkit.CrossAttention(query_dim=8, key_dim=8, heads=2, rope=True, causal=causal)
    for mech, width in ((flash, (2, 4)), (cross, (8,))):
        ex = tuple(rng.standard_normal((8, *width), dtype=np.float32) for _ in range(3))
        path = str(tmp_path / f"{mech.name}.onnx")
        info = attnkit.export_onnx(mech, path, *ex)
        q = rng.standard_normal((lq, *width), dtype=np.float32)
        k, v = (rng.standard_normal((lk, *width), dtype=np.float32) for _ in range(2))
        got = _session(path).run(None, _feeds(info, [q, k, v]))[0]
        np.testing.assert_allclose(got, mech.forward(q, k, v), rtol=RTOL, atol=ATOL)


def test_flash_batched_rope_and_linear_key_mask(tmp_path) -> None:
    rng = np.random.default_rng(2)
    m = attnkit.FlashAttention(heads=2, dim=4, rope=True)
    ex = tuple(rng.standard_normal((2, 8, 2, 4), dtype=np.float32) for _ in range(3))
    path = str(tmp_path / "rope.onnx")
    attnkit.export_onnx(m, path, *ex)
    xs = [rng.standard_normal((3, 270, 2, 4), dtype=np.float32) for _ in range(3)]
    got = _session(path).run(None, dict(zip(("query", "key", "value"), xs, strict=True)))[0]
    np.testing.assert_allclose(got, m.forward(*xs), rtol=RTOL, atol=ATOL)

    lin = attnkit.LinearAttention(heads=2, dim=4)
    km = np.ones(8, bool)
    path = str(tmp_path / "lin.onnx")
    q, k, v = (rng.standard_normal((8, 2, 4), dtype=np.float32) for _ in range(3))
    attnkit.export_onnx(lin, path, q, k, v, mask=km)
    q, k, v = (rng.standard_normal((300, 2, 4), dtype=np.float32) for _ in range(3))
    km = rng.random(300) > 0.5
    got = _session(path).run(None, {"query": q, "key": k, "value": v, "mask": km})[0]
    np.testing.assert_allclose(got, lin.forward(q, k, v, mask=km), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("hyperbolic", {"aggregation": "frechet", "frechet_tol": 0.0, "frechet_iters": 8}),
        ("mixed_curvature", {"aggregation": "frechet", "frechet_tol": 0.0, "frechet_iters": 8}),
        ("flash", {"rope": "interleaved", "causal": True}),
        ("linear", {"feature_map": "favor"}),
        ("flash", {"window": (3, 1), "alibi_slopes": "default", "softcap": 5.0}),
        ("flash", {"window": (4, -1), "causal": True}),
    ],
)
def test_exporting_forms_of_options(name: str, options: dict, tmp_path) -> None:
    """Fréchet aggregation with a fixed iteration count (frechet_tol=0), interleaved RoPE, FAVOR+ weights."""
    m = _make(name, **options)
    path = str(tmp_path / "m.onnx")
    info = attnkit.export_onnx(m, path)
    x = m.example_inputs(270, np.random.default_rng(4))
    got = _session(path).run(None, _feeds(info, list(x)))[0]
    np.testing.assert_allclose(got, m.forward(*x), rtol=RTOL, atol=ATOL)
    if name != "flash" and name != "linear":  # the default tolerance stops on data: refused, with the way out
        with pytest.raises(ConfigError, match="frechet_tol=0"):
            attnkit.export_onnx(_make(name, aggregation="frechet"), path)


@pytest.mark.parametrize("key_heads", [2, 1])
def test_grouped_query_flash_exports(key_heads: int, tmp_path) -> None:
    """Fewer key/value heads than query heads (GQA, MQA): query head h reads key head h // G."""
    m = attnkit.FlashAttention(heads=4, dim=4, causal=True, alibi_slopes="default")
    rng = np.random.default_rng(6)
    q, kv = rng.standard_normal((8, 4, 4), dtype=np.float32), rng.standard_normal((8, key_heads, 4), dtype=np.float32)
    path = str(tmp_path / "gqa.onnx")
    attnkit.export_onnx(m, path, q, kv, kv)
    q = rng.standard_normal((300, 4, 4), dtype=np.float32)
    k, v = (rng.standard_normal((290, key_heads, 4), dtype=np.float32) for _ in range(2))
    got = _session(path).run(None, {"query": q, "key": k, "value": v})[0]
    np.testing.assert_allclose(got, m.forward(q, k, v), rtol=RTOL, atol=ATOL)
    ref = _ref_attention(q, np.repeat(k, 4 // key_heads, axis=1), np.repeat(v, 4 // key_heads, axis=1), causal=True)
    # the float64 reference (keys repeated per group) has no ALiBi: compare a model without it
    attnkit.export_onnx(attnkit.FlashAttention(heads=4, dim=4, causal=True), path, q[:8], k[:8], v[:8])
    got0 = _session(path).run(None, {"query": q, "key": k, "value": v})[0]
    np.testing.assert_allclose(got0, ref, rtol=RTOL, atol=ATOL)


def test_swapped_initializers_give_the_mechanism_with_those_weights(tmp_path) -> None:
    m = attnkit.CrossAttention(query_dim=8, key_dim=6, heads=2)
    path = str(tmp_path / "cross.onnx")
    info = attnkit.export_onnx(m, path)
    assert set(info.initializers) == set(m.param_shapes())
    model = onnx.load(path)
    rng = np.random.default_rng(3)
    new = {k: rng.standard_normal(s).astype(np.float32) for k, s in m.param_shapes().items()}
    for t in model.graph.initializer:
        t.CopyFrom(onnx.numpy_helper.from_array(new[t.name], t.name))
    swapped = str(tmp_path / "swapped.onnx")
    onnx.save(model, swapped)
    ex = m.example_inputs(11, rng)
    got = _session(swapped).run(None, _feeds(info, list(ex)))[0]
    want = attnkit.functional_call(m, new, *ex)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert not np.allclose(got, m.forward(*ex), atol=1e-3)  # the swap changed the output


def test_fixed_shapes_and_opset(tmp_path) -> None:
    m = attnkit.FlashAttention(heads=2, dim=4)
    path = str(tmp_path / "fixed.onnx")
    info = attnkit.export_onnx(m, path, dynamic=False, opset=22)
    model = onnx.load(path)
    assert info.opset == 22
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [8, 2, 4]
    onnx.checker.check_model(model, full_check=True)
    x = m.example_inputs(8, np.random.default_rng(5))
    got = _session(path).run(None, dict(zip(("query", "key", "value"), x, strict=True)))[0]
    np.testing.assert_allclose(got, m.forward(*x), rtol=RTOL, atol=ATOL)


def test_errors_name_the_argument(tmp_path) -> None:
    path = str(tmp_path / "x.onnx")
    with pytest.raises(ConfigError, match="mechanism"):
        attnkit.export_onnx("flash", path)
    m = attnkit.FlashAttention(heads=2, dim=4)
    with pytest.raises(ShapeError, match="query"):
        attnkit.export_onnx(m, path, np.zeros((8, 3, 4), np.float32))
    with pytest.raises(ConfigError, match="opset"):
        attnkit.export_onnx(m, path, opset=3)
    with pytest.raises(ConfigError, match=r"jitter_noise.*\.eval\(\)"):
        attnkit.export_onnx(_make("moe", jitter_noise=0.1).train(), path)
    with pytest.raises(ConfigError, match="causal"):
        attnkit.export_onnx(attnkit.LinearAttention(heads=2, dim=4, causal=True), path)
    with pytest.raises(ConfigError, match="dropout"):
        attnkit.export_onnx(attnkit.FlashAttention(heads=2, dim=4, dropout=0.1).train(), path)
    disposed = attnkit.FlashAttention(heads=2, dim=4)
    disposed.dispose()
    with pytest.raises(attnkit.DisposedError):
        attnkit.export_onnx(disposed, path)


def _cli(*args: str, cwd) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ATTNKIT_CONFIG"} | {"XDG_CONFIG_HOME": str(cwd), "HOME": str(cwd)}
    return subprocess.run([sys.executable, "-m", "attnkit.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_cli_export_takes_compute_flags_and_matches_the_mechanism(tmp_path) -> None:
    path = tmp_path / "flash.onnx"
    proc = _cli("export", "--type", "flash", "--heads", "2", "--dim", "8", "--causal", "-O", "block_size=16", "-o", str(path), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["inputs"] == ["query", "key", "value"] and summary["size_bytes"] == path.stat().st_size
    m = attnkit.FlashAttention(heads=2, dim=8, causal=True, block_size=16)
    x = m.example_inputs(40, np.random.default_rng(9))
    got = _session(str(path)).run(None, dict(zip(("query", "key", "value"), x, strict=True)))[0]
    np.testing.assert_allclose(got, m.forward(*x), rtol=RTOL, atol=ATOL)
    # example inputs from a file fix the widths; a mechanism that cannot export exits 2 with one line
    np.save(tmp_path / "q.npy", np.zeros((4, 6), np.float32))
    proc = _cli("export", "-t", "self", "--model-dim", "6", "--heads", "3", "-q", str(tmp_path / "q.npy"), "-o", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["query"]
    proc = _cli("export", "-t", "hyperbolic", "--dim", "4", "-O", "aggregation=frechet", "-o", str(tmp_path / "h.onnx"), cwd=tmp_path)
    assert proc.returncode == 2 and "frechet_tol=0" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


MOE_EXPERTS = "flash,linear,hyperbolic,scaled_dot_product"


@pytest.mark.parametrize(
    ("options", "drops"),
    [
        ({"expert_capacity": 0.6}, True),  # tokens over capacity dropped
        ({"expert_capacity": 0.6, "overflow": "pass_through"}, True),  # ... and passed through
        ({"expert_capacity": None}, False),  # unlimited capacity: no token dropped
    ],
)
def test_moe_routing_and_capacity_are_computed_in_the_graph(options: dict, drops: bool, tmp_path) -> None:
    """Exported at batch 2, length 8; run at other batches and lengths (Lq != Lk) with a key mask: the
    capacity ceil(factor * T * k / E) comes from the run-time T, routing is argsort / cumulative sums, and
    every expert kind (sequence, headless, hyperbolic, neighbour sets) computes the whole batch at once."""
    m = attnkit.MoEAttention(dim=8, num_experts=4, top_k=2, experts=MOE_EXPERTS, **options)
    rng = np.random.default_rng(11)
    ex = [rng.standard_normal((2, 8, 8), dtype=np.float32) * 0.4 for _ in range(3)]
    path = str(tmp_path / "moe.onnx")
    info = attnkit.export_onnx(m, path, *ex, mask=np.ones((2, 8), bool))
    assert info.inputs == ("query", "key", "value", "mask")
    onnx.checker.check_model(onnx.load(path), full_check=True)
    sess = _session(path)
    for b, lq, lk in ((3, 5, 7), (1, 37, 20)):
        q = rng.standard_normal((b, lq, 8), dtype=np.float32) * 0.4
        k, v = (rng.standard_normal((b, lk, 8), dtype=np.float32) * 0.4 for _ in range(2))
        km = rng.random((b, lk)) > 0.3
        km[:, 0] = True
        got = sess.run(None, {"query": q, "key": k, "value": v, "mask": km})[0]
        want = m.forward(q, k, v, mask=km)
        assert got.shape == want.shape == (b, lq, 8)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"B={b} Lq={lq}")
        assert (not m.last_routing["keep"].all()) == drops


@pytest.mark.parametrize("length", [5, 37])
def test_moe_capacity_follows_the_run_time_length(length: int, tmp_path) -> None:
    """Every token prefers expert 0 (router bias): it serves exactly the first ceil(T / 2) tokens at each
    length (4 at the example's 8, 3 at 5, 19 at 37); the rest are dropped (zeros). Float64 reference of
    the served rows: plain softmax attention."""
    m = attnkit.MoEAttention(dim=4, num_experts=2, top_k=1, expert_capacity=1.0, experts="scaled_dot_product")
    m.load_weights({"router.weight": np.zeros((2, 4), np.float32), "router.bias": np.array([5.0, 0.0], np.float32)})
    path = str(tmp_path / "moe.onnx")
    info = attnkit.export_onnx(m, path)
    q, k, v = m.example_inputs(length, np.random.default_rng(length))
    got = _session(path).run(None, _feeds(info, [q, k, v]))[0]
    cap = -(-length // 2)
    s = q.astype(np.float64) @ k.astype(np.float64).T / 2.0
    p = np.exp(s - s.max(-1, keepdims=True))
    ref = (p / p.sum(-1, keepdims=True)) @ v.astype(np.float64)
    np.testing.assert_allclose(got[:cap], ref[:cap], rtol=RTOL, atol=ATOL)
    assert np.all(got[cap:] == 0)
    np.testing.assert_allclose(got, m.forward(q, k, v), rtol=RTOL, atol=ATOL)
