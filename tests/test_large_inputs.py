"""Large finite inputs never give NaN (issue 13, "Numerics"): kernels.overflow and its callers.

Oracles: a float64 NumPy softmax-attention written here (logits of 1e40..1e60 fit float64), the same
mechanism run on the same values in float64 (where nothing overflows), mpmath for the router
softmax, geoopt's Poincaré distance for the nearest key at a tiny temperature. At normal scale the
result must be bit-for-bit the one of the unguarded path (``overflow.at_risk`` forced to False).
"""

from __future__ import annotations

import warnings

import mpmath
import numpy as np
import pytest

import attnkit
from attnkit.errors import AttentionError, NonFiniteError
from attnkit.kernels import overflow
from attnkit.kernels.dense import sdpa
from attnkit.mechanisms import registry

BALL = {"hyperbolic", "mixed_curvature"}  # inputs are points of a ball: scaling them up leaves it


def _ref_sdpa(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """softmax(scale q k^T) v in float64, heads-first (..., H, L, D)."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    s = scale * (q @ np.swapaxes(k, -1, -2))
    s = s - s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    return (p / p.sum(axis=-1, keepdims=True)) @ v


def _scaled(arrays: tuple, factor: float, dtype: type) -> list:
    return [np.asarray(a, dtype=dtype) * dtype(factor) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in arrays]


def _mechanism(name: str):
    cls = registry.get(name)
    return cls(**cls.example_options)


@pytest.mark.parametrize("name", registry.names())
@pytest.mark.parametrize("factor", [1e20, 1e30])
def test_every_mechanism_large_inputs_finite_and_exact(name: str, factor: float) -> None:
    m = _mechanism(name)
    m.eval()
    rng = np.random.default_rng(0)
    ex = m.example_inputs(rng=rng)
    extras = m.example_extras(rng=np.random.default_rng(1))
    x32 = _scaled(ex, factor, np.float32)
    e32 = {k: v for k, v in zip(extras, _scaled(tuple(extras.values()), factor, np.float32), strict=True)}
    if name in BALL:  # points far outside the unit ball: a named error, never NaN
        with pytest.raises(AttentionError, match="query"):
            m.forward(*x32, **e32)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # e.g. dual_space's tangent map squares |u| ~ 1e20 (tanh(inf) = 1 is exact)
        out = np.asarray(m.forward(*x32, **e32))
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    # the same values in float64: logits of ~1e40..1e60 fit, so this is the plain, exact computation
    x64 = [np.asarray(a, dtype=np.float64) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in x32]
    e64 = {k: np.asarray(v, dtype=np.float64) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v for k, v in e32.items()}
    ref = np.asarray(m.forward(*x64, **e64))
    assert np.isfinite(ref).all()
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-5 * float(np.abs(ref).max()))


@pytest.mark.parametrize("factor", [1e20, 1e30])
@pytest.mark.parametrize("backend", ["auto", "numpy", "generic"])
def test_flash_matches_float64_reference(factor: float, backend: str) -> None:
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((2, 3, 40, 8)).astype(np.float32) * np.float32(factor) for _ in range(3))
    out = sdpa(q, k, v, xp=np, scale=8**-0.5, backend=backend, block_size=16)
    ref = _ref_sdpa(q, k, v, 8**-0.5)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6 * factor)
    fa = attnkit.FlashAttention(heads=3, dim=8)
    out2 = np.asarray(fa.forward(*(np.swapaxes(x, -2, -3) for x in (q, k, v))))
    np.testing.assert_allclose(np.swapaxes(out2, -2, -3), ref, rtol=1e-6, atol=1e-6 * factor)


def test_values_near_float32_max() -> None:
    """Uniform-ish weights over values ~3e38: the running sum overflows float32 but the average fits."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 2, 64, 8)).astype(np.float32) * np.float32(1e-3)
    k = rng.standard_normal((1, 2, 64, 8)).astype(np.float32)
    v = np.full((1, 2, 64, 4), 3.2e38, dtype=np.float32)
    v[..., 1::2, :] = np.float32(3.0e38)
    for backend in ("auto", "numpy", "generic"):
        out = sdpa(q, k, v, xp=np, scale=8**-0.5, backend=backend)
        ref = _ref_sdpa(q, k, v, 8**-0.5)
        assert np.isfinite(out).all(), backend
        np.testing.assert_allclose(out, ref, rtol=1e-6)


def test_float64_logits_out_of_range_raise_named() -> None:
    """float64 has no wider type: logits past its range are a NonFiniteError naming the inputs, not NaN."""
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal((1, 2, 16, 8)) * 1e160 for _ in range(3))
    with pytest.raises(NonFiniteError, match="query, key"):
        sdpa(q, k, v, xp=np, scale=8**-0.5)
    fa = attnkit.FlashAttention(heads=2, dim=8)
    with pytest.raises(NonFiniteError, match="query"):
        fa.forward(*(np.swapaxes(x, -2, -3) for x in (q, k, v)))


@pytest.mark.parametrize("name", ["flash", "multi_head", "scaled_dot_product", "local_global", "moe", "graph_rope", "edge_featured"])
def test_normal_scale_bitwise_unchanged(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """At normal scale the guard is not taken and the result is exactly the unguarded path's."""
    m = _mechanism(name)
    m.eval()
    ex = m.example_inputs(seq_len=32, rng=np.random.default_rng(5))
    extras = m.example_extras(seq_len=32, rng=np.random.default_rng(6))
    new = np.asarray(m.forward(*ex, **extras))
    calls = []
    real = overflow.at_risk

    def spy(*a, **kw):
        calls.append(real(*a, **kw))
        return False

    monkeypatch.setattr(overflow, "at_risk", spy)
    old = np.asarray(m.forward(*ex, **extras))
    assert calls and not any(calls)
    assert np.array_equal(new, old)


def test_torch_large_inputs() -> None:
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 24, 2, 8, generator=g) * 1e20 for _ in range(3))
    fa = attnkit.FlashAttention(heads=2, dim=8)
    out = fa.forward(q, k, v)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    ref = _ref_sdpa(*(np.swapaxes(x.numpy(), -2, -3) for x in (q, k, v)), 8**-0.5)
    np.testing.assert_allclose(np.swapaxes(out.numpy(), -2, -3), ref, rtol=1e-6, atol=1e-6 * 1e20)


def test_jax_large_inputs() -> None:
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rng = np.random.default_rng(8)
    q, k, v = (rng.standard_normal((16, 2, 8)).astype(np.float32) * np.float32(1e20) for _ in range(3))
    fa = attnkit.FlashAttention(heads=2, dim=8)
    args = [jnp.asarray(x) for x in (q, k, v)]
    if jax.config.jax_enable_x64:
        out = np.asarray(fa.forward(*args))
        ref = _ref_sdpa(*(np.swapaxes(x, -2, -3) for x in (q, k, v)), 8**-0.5)
        np.testing.assert_allclose(np.swapaxes(out, -2, -3), ref, rtol=1e-6, atol=1e-6 * 1e20)
    else:  # no float64 to widen into: a named error rather than NaN
        with pytest.raises(NonFiniteError, match="query, key"):
            fa.forward(*args)


def test_moe_router_probs_match_mpmath() -> None:
    m = _mechanism("moe")
    rng = np.random.default_rng(9)
    q = rng.standard_normal((5, m.dim)).astype(np.float32) * np.float32(1e20)
    p = np.asarray(m.router_probs(q))
    assert np.isfinite(p).all()
    w, b = (np.asarray(m.parameters()[n], dtype=np.float64) for n in ("router.weight", "router.bias"))
    mpmath.mp.dps = 50
    for row, x in zip(p, q.astype(np.float64), strict=True):
        logits = [mpmath.mpf(float(x @ w[e])) + mpmath.mpf(float(b[e])) for e in range(w.shape[0])]
        top = max(logits)
        z = mpmath.fsum(mpmath.exp(s - top) for s in logits)
        ref = np.array([float(mpmath.exp(s - top) / z) for s in logits])
        np.testing.assert_allclose(row, ref, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hyperbolic_tiny_and_huge_temperature(dtype: type) -> None:
    geoopt = pytest.importorskip("geoopt")
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(10)
    q = (rng.standard_normal((6, 4)) * 0.2).astype(dtype)
    k = (rng.standard_normal((9, 4)) * 0.2).astype(dtype)
    d = geoopt.PoincareBall(c=1.0).dist(torch.as_tensor(q, dtype=torch.float64)[:, None], torch.as_tensor(k, dtype=torch.float64)[None]).numpy()
    for name in ("hyperbolic", "mixed_curvature"):
        cold = registry.get(name)(dim=4, temperature=1e-300)
        w = np.asarray(cold.attention_weights(q, k))
        assert np.isfinite(w).all()
        np.testing.assert_array_equal(w, np.eye(9)[d.argmin(axis=1)].astype(dtype)) if name == "hyperbolic" else None
        np.testing.assert_allclose(w.sum(axis=-1), 1.0, rtol=1e-6)
        out = np.asarray(cold.forward(q, k, k))
        assert np.isfinite(out).all()
        hot = registry.get(name)(dim=4, temperature=1e300)
        np.testing.assert_allclose(np.asarray(hot.attention_weights(q, k)), np.full((6, 9), 1 / 9), rtol=1e-6)
