"""Large finite inputs never give NaN (issue 13, "Numerics"): kernels.overflow and its callers.

Oracles: a float64 NumPy softmax-attention written here (logits of 1e40..1e60 fit float64), the same
mechanism run on the same values in float64 (where nothing overflows), mpmath for the router
softmax, geoopt's Poincaré distance for the nearest key at a tiny temperature. At normal scale the
result must be bit-for-bit the one of the unguarded path (``overflow.at_risk`` forced to False).
"""

from __future__ import annotations

import math
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


def _mp_sdpa(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """softmax(scale q k^T) v in 60-digit arithmetic (logits of any size), heads-first."""
    mpmath.mp.dps = 60
    out = np.zeros((*q.shape[:-1], v.shape[-1]))
    for idx in np.ndindex(*q.shape[:-1]):
        head = idx[:-1]
        s = [
            mpmath.mpf(scale) * mpmath.fsum(mpmath.mpf(float(a)) * mpmath.mpf(float(b)) for a, b in zip(q[idx], k[(*head, j)], strict=True))
            for j in range(k.shape[-2])
        ]
        top = max(s)
        w = [mpmath.exp(x - top) for x in s]
        z = mpmath.fsum(w)
        for c in range(v.shape[-1]):
            out[(*idx, c)] = float(mpmath.fsum(wj * mpmath.mpf(float(v[(*head, j, c)])) for j, wj in enumerate(w)) / z)
    return out


@pytest.mark.parametrize("factor", [1e160, 1e300])
def test_float64_logits_past_the_range(factor: float) -> None:
    """float64 has no wider type: q/a, k/b rescaled by powers of two, the gain applied to the differences."""
    rng = np.random.default_rng(4)
    q, k = (rng.standard_normal((1, 2, 6, 4)) * factor for _ in range(2))
    v = rng.standard_normal((1, 2, 6, 3)) * 1e300
    ref = _mp_sdpa(q, k, v, 0.5)
    for backend in ("auto", "generic"):
        np.testing.assert_allclose(sdpa(q, k, v, xp=np, scale=0.5, backend=backend), ref, rtol=1e-12)
    w = attnkit.kernels.dense.attention_weights(q, k, xp=np, scale=0.5)
    np.testing.assert_allclose(w @ v, ref, rtol=1e-12)
    fa = attnkit.FlashAttention(heads=2, dim=4)
    out = fa.forward(*(np.swapaxes(x, -2, -3) for x in (q, k, v)))
    np.testing.assert_allclose(np.swapaxes(out, -2, -3), ref, rtol=1e-12)


def test_unrepresentable_output_is_a_named_error() -> None:
    """edge_featured at inputs ~3e38: its exact output (float64) exceeds float32's range -> NonFiniteError naming the inputs."""
    m = _mechanism("edge_featured")
    ex = m.example_inputs(rng=np.random.default_rng(0))
    extras = m.example_extras(rng=np.random.default_rng(1))
    x32 = [np.asarray(a, dtype=np.float32) / np.float32(np.abs(a).max()) * np.float32(3e38) for a in ex]
    ref = np.asarray(m.forward(*(a.astype(np.float64) for a in x32), **extras))
    assert np.isfinite(ref).all() and np.abs(ref).max() > np.finfo(np.float32).max
    with pytest.raises(NonFiniteError, match="query, key, value"):
        m.forward(*x32, **extras)


@pytest.mark.parametrize("name", ["multi_head", "cross", "linear", "moe", "flash", "graph_rope"])
def test_inputs_near_float32_max(name: str) -> None:
    """Inputs up to 3e38: projections, linear-attention states and expert mixes overflow float32 on the
    way, the exact outputs fit: recomputed in float64 and equal to the float64 run."""
    m = _mechanism(name)
    ex = m.example_inputs(rng=np.random.default_rng(0))
    extras = m.example_extras(rng=np.random.default_rng(1))
    x32 = [np.asarray(a, dtype=np.float32) / np.float32(np.abs(a).max()) * np.float32(3e38) for a in ex]
    ref = np.asarray(m.forward(*(a.astype(np.float64) for a in x32), **extras))
    assert np.abs(ref).max() < np.finfo(np.float32).max
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = np.asarray(m.forward(*x32, **extras))
    assert out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))


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
    # with jax_enable_x64 computed in float64; without it, on power-of-two rescaled float32 inputs
    out = np.asarray(fa.forward(*args))
    ref = _ref_sdpa(*(np.swapaxes(x, -2, -3) for x in (q, k, v)), 8**-0.5)
    np.testing.assert_allclose(np.swapaxes(out, -2, -3), ref, rtol=1e-5, atol=1e-5 * 1e20)


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


# ---------------------------------------------------------------- curvature extremes


@pytest.mark.parametrize("name", ["hyperbolic", "mixed_curvature", "dual_space"])
@pytest.mark.parametrize("curvature", [1e-300, -1e-300])
def test_tiny_curvature_is_the_flat_limit(name: str, curvature: float) -> None:
    """|κ| = 1e-300 (0 in float32): finite, and equal to the real curved code at κ = 1e-12 (flat to 1e-12)."""
    cls = registry.get(name)
    ex = cls(**cls.example_options).example_inputs(rng=np.random.default_rng(11))
    tiny = cls(**{**cls.example_options, "curvature": curvature})
    near = cls(**{**cls.example_options, "curvature": 1e-12 if curvature > 0 else -1e-12})
    ref = np.asarray(near.forward(*(np.asarray(a, dtype=np.float64) for a in ex)))
    for dtype, tol in ((np.float64, 1e-9), (np.float32, 2e-5)):
        out = np.asarray(tiny.forward(*(np.asarray(a, dtype=dtype) for a in ex)))
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out, ref, atol=tol * max(1.0, float(np.abs(ref).max())))


@pytest.mark.parametrize("curvature", [1e60, 1e300])
def test_huge_curvature_by_isometry(curvature: float) -> None:
    """The ball of curvature -c is the unit ball scaled by 1/sqrt(c): out_c(x; T) = out_1(sqrt(c) x; T sqrt(c)) / sqrt(c)."""
    rng = np.random.default_rng(12)
    q, k, v = (rng.standard_normal((5, 4)) * 0.2 for _ in range(3))
    s = float(np.sqrt(curvature))
    H = registry.get("hyperbolic")
    out = np.asarray(H(dim=4, curvature=curvature).forward(q / s, k / s, v / s)) * s
    ref = np.asarray(H(dim=4, curvature=1.0, temperature=s).forward(q, k, v))
    np.testing.assert_allclose(out, ref, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- training


def _mp_info_nce(a: np.ndarray, p: np.ndarray, n: np.ndarray, t: float) -> mpmath.mpf:
    """Mean InfoNCE loss with the negatives n (B, N, D), dot similarity, in 60-digit arithmetic."""
    mpmath.mp.dps = 60
    total = mpmath.mpf(0)
    for b in range(a.shape[0]):
        dot = lambda x, y: mpmath.fsum(mpmath.mpf(float(u)) * mpmath.mpf(float(w)) for u, w in zip(x, y, strict=True))  # noqa: E731
        z = [dot(a[b], p[b]) / t] + [dot(a[b], n[b, j]) / t for j in range(n.shape[1])]
        top = max(z)
        total += top + mpmath.log(mpmath.fsum(mpmath.exp(zi - top) for zi in z)) - z[0]
    return total / a.shape[0]


def test_info_nce_dot_beyond_float64_logits() -> None:
    from attnkit.training import InfoNCELoss

    rng = np.random.default_rng(13)
    a = rng.standard_normal((4, 8))
    p = a + 0.1 * rng.standard_normal((4, 8))
    n = rng.standard_normal((4, 3, 8))
    loss = InfoNCELoss(similarity="dot")
    for f in (1.0, 1e152):  # logits ~1e305 / 0.07: past float64, the loss (~1e304) is not
        val, grads = loss.compute_with_gradients(a * f, p * f, n * f)
        ref = _mp_info_nce(a * f, p * f, n * f, 0.07)
        assert math.isfinite(val) and all(np.isfinite(g).all() for g in grads.values())
        assert abs(val - float(ref)) <= 1e-9 * abs(float(ref)) + 1e-12
    assert loss.compute(a * 1e200, p * 1e200, n * 1e200) == 0.0  # the positive wins every row by ~1e400: exact 0
    n_near = n.copy()
    n_near[:, 0] = 2.0 * a  # a negative beats the positive by ~|a|^2 1e400 / T: the loss exceeds float64
    with pytest.raises(NonFiniteError, match="anchor"):
        loss.compute(a * 1e200, p * 1e200, n_near * 1e200)
    # the positive is the most similar: the exact loss is 0 (exp(-1e400) terms) and so are the gradients
    n_far = -np.abs(n) * np.sign(a)[:, None, :]
    val, grads = loss.compute_with_gradients(a * 1e200, a * 1e200, n_far * 1e200)
    assert val == 0.0 and all(np.isfinite(g).all() for g in grads.values())
    assert float(_mp_info_nce(a * 1e200, a * 1e200, n_far * 1e200, 0.07)) < 1e-300


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_triplet_loss_at_1e200(distance: str) -> None:
    from attnkit.training import InfoNCELoss, TripletLoss

    rng = np.random.default_rng(14)
    a, p, n = rng.standard_normal((4, 8)), rng.standard_normal((4, 2, 8)), rng.standard_normal((4, 3, 8))
    f = 1e200
    big, grads = TripletLoss(margin=0.0, distance=distance).compute_with_gradients(a * f, p * f, n * f)
    small = TripletLoss(margin=0.0, distance=distance).compute(a, p, n)
    # euclidean distances scale by f, cosine ones not at all
    np.testing.assert_allclose(big, small * (f if distance == "euclidean" else 1.0), rtol=1e-12)
    assert all(np.isfinite(g).all() for g in grads.values())
    if distance == "cosine":
        np.testing.assert_allclose(InfoNCELoss().compute(a * f, a * f, n * f), InfoNCELoss().compute(a, a, n), rtol=1e-12)
    with pytest.raises(NonFiniteError, match="squared"):
        TripletLoss(distance="squared").compute(a * f, p * f, n * f)


def test_sgd_update_overflow_is_named_and_atomic() -> None:
    from attnkit.training import SGD

    params = {"w": np.ones(3), "b": np.zeros(2, dtype=np.float32)}
    opt = SGD(lr=1e308, momentum=0.9)
    with pytest.raises(NonFiniteError, match=r"params\['w'\].*lr = 1e\+308"):
        opt.step(params, {"w": np.full(3, 10.0), "b": np.zeros(2)})
    assert np.array_equal(params["w"], np.ones(3)) and opt.step_count == 0 and opt.state == {}
    opt.step(params, {"w": np.full(3, 0.5), "b": np.zeros(2)})  # lr * g = 5e307 fits: the exact update
    np.testing.assert_array_equal(params["w"], 1.0 - 1e308 * 0.5)
    with pytest.raises(NonFiniteError, match=r"params\['b'\].*float32"):  # fits float64, not the float32 parameter
        SGD(lr=1e300).step(params, {"w": np.zeros(3), "b": np.ones(2)})


@pytest.mark.parametrize("chunk", [64, 16])
def test_dask_split_k_large_inputs(chunk: int) -> None:
    """Dask's split-K merge (lse of ~1e40 per shard) at 1e20 float32 inputs equals the float64 reference."""
    da = pytest.importorskip("dask.array")
    rng = np.random.default_rng(15)
    q, k, v = (rng.standard_normal((64, 2, 8)).astype(np.float32) * np.float32(1e20) for _ in range(3))
    fa = attnkit.FlashAttention(heads=2, dim=8)
    out = fa.forward(*(da.from_array(x, chunks=(chunk, 2, 8)) for x in (q, k, v))).compute()
    ref = _ref_sdpa(*(np.swapaxes(x, -2, -3) for x in (q, k, v)), 8**-0.5)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.swapaxes(out, -2, -3), ref, rtol=1e-6, atol=1e-6 * 1e20)
