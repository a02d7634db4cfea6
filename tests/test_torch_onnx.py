"""torch.onnx.export of attnkit's torch path (``attnkit.torch.AttentionModule``, or torch tensors through a
mechanism): the files pass ``onnx.checker`` and ONNX Runtime computes attnkit's numbers.

The TorchScript exporter (``dynamo=False``) copied ``movedim(x, -3, -2)`` into ``Transpose(perm=[1, -3,
2])``, which ONNX Runtime refused (issue 12); attnkit's array code now moves axes by non-negative indices
(``attnkit._array.moveaxis``). The dynamo exporter (``dynamo=True``) needs ``onnxscript`` and is checked
where it is installed. Oracles: attnkit's NumPy forward (float32 tolerance) and, for flash, a float64
softmax attention written here.
"""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import attnkit  # noqa: E402
from attnkit.torch import AttentionModule  # noqa: E402

RTOL, ATOL = 2e-4, 2e-5
EXPORTERS = [
    pytest.param(False, id="torchscript"),
    pytest.param(
        True, id="dynamo", marks=pytest.mark.skipif(importlib.util.find_spec("onnxscript") is None, reason="torch.onnx dynamo=True needs onnxscript")
    ),
]


def _cases() -> list[tuple[str, attnkit.Mechanism, tuple[int, ...], int]]:
    """(id, mechanism, input shape, number of inputs)."""
    return [
        ("flash", attnkit.FlashAttention(heads=2, dim=4), (8, 2, 4), 3),
        ("flash_causal", attnkit.FlashAttention(heads=2, dim=4, causal=True), (8, 2, 4), 3),
        ("multi_head", attnkit.MultiHeadAttention(model_dim=8, heads=2), (8, 8), 1),
        ("linear", attnkit.LinearAttention(heads=2, dim=4), (8, 2, 4), 3),
    ]


def _export(module: torch.nn.Module, xs: tuple, path: str, dynamo: bool, dynamic: bool = False) -> list[str]:
    names = ["query", "key", "value"][: len(xs)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        if dynamo:
            torch.onnx.export(module, xs, path, dynamo=True, input_names=names)
        else:
            axes = {n: {0: "L"} for n in names} if dynamic else None
            torch.onnx.export(module, xs, path, dynamo=False, input_names=names, dynamic_axes=axes)
    return names


def _check_file(path: str) -> ort.InferenceSession:
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    for node in model.graph.node:
        if node.op_type == "Transpose":
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [])
            assert all(p >= 0 for p in perm), f"{node.name}: perm {perm}"
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("case", [c[0] for c in _cases()])
def test_attention_module_exports_through_torch_onnx_and_runs_in_onnxruntime(case: str, dynamo: bool, tmp_path) -> None:
    _, mech, shape, n = next(c for c in _cases() if c[0] == case)
    rng = np.random.default_rng(0)
    xs = tuple(rng.standard_normal(shape).astype(np.float32) for _ in range(n))
    path = str(tmp_path / f"{case}.onnx")
    names = _export(AttentionModule(mech).eval(), tuple(torch.from_numpy(x) for x in xs), path, dynamo)
    got = _check_file(path).run(None, dict(zip(names, xs, strict=True)))[0]
    np.testing.assert_allclose(got, mech.forward(*xs), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case", ["flash_causal", "multi_head"])
def test_torchscript_export_with_dynamic_length_runs_at_other_lengths(case: str, tmp_path) -> None:
    _, mech, shape, n = next(c for c in _cases() if c[0] == case)
    ex = tuple(torch.randn(*shape) for _ in range(n))
    path = str(tmp_path / f"{case}.onnx")
    names = _export(AttentionModule(mech).eval(), ex, path, dynamo=False, dynamic=True)
    sess = _check_file(path)
    for length in (5, 300):
        rng = np.random.default_rng(length)
        xs = [rng.standard_normal((length, *shape[1:])).astype(np.float32) for _ in range(n)]
        got = sess.run(None, dict(zip(names, xs, strict=True)))[0]
        np.testing.assert_allclose(got, mech.forward(*xs), rtol=RTOL, atol=ATOL, err_msg=f"L={length}")


def test_torch_tensors_through_a_mechanism_export_and_match_a_float64_reference(tmp_path) -> None:
    """A module whose forward hands torch tensors to ``mechanism.forward`` (the mechanism's own torch path)."""
    mech = attnkit.FlashAttention(heads=2, dim=4, causal=True)

    class Wrapped(torch.nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return mech.forward(q, k, v)

    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((7, 2, 4)).astype(np.float32) for _ in range(3))
    path = str(tmp_path / "flash.onnx")
    names = _export(Wrapped(), tuple(torch.from_numpy(x) for x in (q, k, v)), path, dynamo=False)
    got = _check_file(path).run(None, dict(zip(names, (q, k, v), strict=True)))[0]
    s = np.einsum("qhd,khd->hqk", q.astype(np.float64), k.astype(np.float64)) / 2.0
    s = np.where(np.tril(np.ones((7, 7), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    ref = np.einsum("hqk,khd->qhd", p / p.sum(-1, keepdims=True), v.astype(np.float64))
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)


def test_moveaxis_gives_non_negative_axes_and_the_same_result() -> None:
    from attnkit._array import moveaxis, namespace

    x = torch.arange(24.0).reshape(2, 3, 4)
    xp = namespace(x)
    for src, dst in ((-3, -2), (-1, 0), (0, -1), (1, 2)):
        np.testing.assert_array_equal(moveaxis(x, src, dst, xp).numpy(), np.moveaxis(x.numpy(), src, dst))
