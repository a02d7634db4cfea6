"""The tiled NumPy float32 path of MixedCurvatureAttention (kernels/product_numpy.py, issue 16) against an
independent float64 formula of the product-space attention and against the mechanism's generic path."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attnkit import MixedCurvatureAttention
from attnkit.kernels import product_numpy

L = 150  # 150 x 150 scores: above the kernel's small-problem cut, so the tiled path runs


def oracle(q, k, v, factors, weights, temperature, mask=None):
    """Product-space attention in float64 from its definition (Gu et al. 2019; Gulcehre et al. 2019):
    ``d^2 = sum_f w_f d_f^2`` (flat ``d_f = 2|x - y|``, ball ``arcosh(1 + 2c|x-y|^2 / ((1-c|x|^2)(1-c|y|^2)))/sqrt(c)``),
    weights ``softmax(-d/T + mask)``, the weighted mean per flat factor and the Einstein midpoint per ball
    (Klein points ``2x/(1+c|x|^2)``, Lorentz factors ``1/sqrt(1 - c|k|^2)``)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    d2 = 0.0
    start = 0
    cols = []
    for (width, kappa), w in zip(factors, weights, strict=True):
        sl = slice(start, start + width)
        cols.append(sl)
        a, b = q[..., :, None, sl], k[..., None, :, sl]
        diff2 = ((a - b) ** 2).sum(-1)
        if kappa == 0:
            df2 = 4.0 * diff2
        else:
            c = -kappa
            arg = 1 + 2 * c * diff2 / ((1 - c * (a**2).sum(-1)) * (1 - c * (b**2).sum(-1)))
            df2 = (np.arccosh(arg) / math.sqrt(c)) ** 2
        d2 = d2 + w * df2
        start += width
    logits = -np.sqrt(d2) / temperature
    if mask is not None:
        logits = np.where(mask, logits, -np.inf) if mask.dtype == bool else logits + mask
    mx = logits.max(-1, keepdims=True)
    e = np.exp(logits - np.where(np.isfinite(mx), mx, 0))
    z = e.sum(-1, keepdims=True)
    alpha = np.where(z > 0, e / np.where(z > 0, z, 1), 0)
    out = []
    for (_, kappa), sl in zip(factors, cols, strict=True):
        x = v[..., sl]
        if kappa == 0:
            out.append(alpha @ x)
            continue
        c = -kappa
        kl = 2 * x / (1 + c * (x**2).sum(-1, keepdims=True))
        gamma = 1 / np.sqrt(1 - c * (kl**2).sum(-1, keepdims=True))
        num, den = alpha @ (gamma * kl), alpha @ gamma
        mk = np.where(den > 0, num / np.where(den > 0, den, 1), 0)
        out.append(mk / (1 + np.sqrt(np.clip(1 - c * (mk**2).sum(-1, keepdims=True), 0, None))))
    return np.concatenate(out, -1)


CONFIGS = [
    (dict(dim=32), [(16, 0.0), (16, -1.0)], [1.0 / 4, 1.0]),  # the legacy E x B: w_E/4 on d_0 = 2|x - y|
    (dict(dim=32, temperature=0.5, curvature=2.0), [(16, 0.0), (16, -2.0)], [1.0 / 4, 1.0]),
    (dict(dim=24, factors="8:0,8:-1,8:-0.5", factor_weights="1,2,0.5"), [(8, 0.0), (8, -1.0), (8, -0.5)], [1.0, 2.0, 0.5]),
    (dict(dim=16, factors="16:-1.5"), [(16, -1.5)], [1.0]),
    (dict(dim=16, factors="16:0"), [(16, 0.0)], [1.0]),
    (dict(dim=24, factors="8:0,8:-1,8:0", factor_weights="0,1,1"), [(8, 0.0), (8, -1.0), (8, 0.0)], [0.0, 1.0, 1.0]),
]


@pytest.fixture
def fast_calls(monkeypatch):
    calls = []
    real = product_numpy.product_attention_numpy
    monkeypatch.setattr(product_numpy, "product_attention_numpy", lambda *a, **kw: calls.append(r := real(*a, **kw)) or r)
    return calls


def masks(rng, lead):
    bool_mask = rng.random((*lead, L, L)) < 0.7
    bool_mask[..., 3, :] = False  # a fully masked query: zeros in flat factors, the origin in balls
    return [None, bool_mask, rng.standard_normal((L, L)).astype(np.float32)]


@pytest.mark.parametrize("config", range(len(CONFIGS)))
@pytest.mark.parametrize("lead", [(), (2,)])
def test_fast_path_matches_the_float64_definition(config, lead, fast_calls):
    opts, factors, weights = CONFIGS[config]
    mech = MixedCurvatureAttention(**opts)
    rng = np.random.default_rng(config)
    q, k, v = (np.broadcast_to(a, (*lead, *a.shape)).copy() for a in mech.example_inputs(L, rng))
    for mask in masks(rng, lead):
        before = len(fast_calls)
        got = mech.forward(q, k, v, mask=mask)
        assert len(fast_calls) == before + 1 and fast_calls[-1] is not None  # the tiled path ran
        assert got.dtype == np.float32 and got.shape == (*lead, L, opts["dim"])
        want = oracle(q, k, v, factors, weights, mech.temperature, mask)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
        if mask is not None and mask.dtype == bool:
            assert not got[..., 3, :].any()  # zeros and the origin are both all-zero coordinates


@pytest.mark.parametrize("config", range(len(CONFIGS)))
def test_fast_path_agrees_with_the_generic_path(config, monkeypatch, fast_calls):
    opts, _, _ = CONFIGS[config]
    rng = np.random.default_rng(10 + config)
    mech = MixedCurvatureAttention(**opts)
    q, k, v = mech.example_inputs(L, rng)
    kb = k[None]  # keys with a broadcast batch axis
    fast = mech.forward(q[None].repeat(2, 0), kb, v[None])
    assert fast_calls and fast_calls[-1] is not None
    monkeypatch.setattr(MixedCurvatureAttention, "_fast_aggregates", lambda *a: None)
    generic = mech.forward(q[None].repeat(2, 0), kb, v[None])
    np.testing.assert_allclose(fast, generic, rtol=0, atol=1e-6)


def test_tangent_inputs_take_the_fast_path_between_the_maps(fast_calls):
    mech = MixedCurvatureAttention(dim=32, input_space="tangent")
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((L, 32)).astype(np.float32) * 0.3 for _ in range(3))
    got = mech.forward(q, k, v)
    assert fast_calls and fast_calls[-1] is not None

    # tangent vectors are mapped by exp_0 (in) and log_0 (out) around the same attention
    def exp0(u):  # exp_0 of the ball c = 1: tanh(|u|) u / |u|
        n = np.linalg.norm(u.astype(np.float64), axis=-1, keepdims=True)
        return np.tanh(n) * u / n

    points = [np.concatenate([x[:, :16], exp0(x[:, 16:])], -1) for x in (q, k, v)]
    out = oracle(*points, [(16, 0.0), (16, -1.0)], [0.25, 1.0], 1.0)
    h = out[:, 16:]
    n = np.linalg.norm(h, axis=-1, keepdims=True)
    want = np.concatenate([out[:, :16], np.arctanh(n) * h / n], -1)
    np.testing.assert_allclose(got, want, rtol=0, atol=3e-6)


def test_threads_give_the_same_bits():
    rng = np.random.default_rng(7)
    mech = MixedCurvatureAttention(dim=32)
    q, k, v = mech.example_inputs(300, rng)
    parts = [(q[:, :16], q[:, 16:]), (k[:, :16], k[:, 16:]), (v[:, :16], v[:, 16:])]
    args = ([p for p in parts[0]], [p for p in parts[1]], [p for p in parts[2]], [(0.0, 0.25), (1.0, 1.0)], 1.0, None, 1e-5)
    one = product_numpy.product_attention_numpy(*args, num_threads=1)
    two = product_numpy.product_attention_numpy(*args, num_threads=2)
    assert one is not None and two is not None
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "opts",
    [dict(dim=16, factors="8:0,8:1"), dict(dim=16, learn_curvature=True), dict(dim=16, aggregation="frechet"), dict(dim=16, temperature=1e-4)],
)
def test_cases_outside_the_fast_path_keep_the_generic_one(opts, fast_calls):
    mech = MixedCurvatureAttention(**opts)
    q, k, v = mech.example_inputs(L, np.random.default_rng(3))
    out = mech.forward(q, k, v)
    assert not any(r is not None for r in fast_calls) and np.isfinite(out).all()


def test_float64_and_small_inputs_keep_the_generic_path(fast_calls):
    mech = MixedCurvatureAttention(dim=16)
    q, k, v = mech.example_inputs(L, np.random.default_rng(4))
    mech.forward(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64))
    mech.forward(q[:20], k[:20], v[:20])
    assert fast_calls and all(r is None for r in fast_calls)


def test_the_compiled_exp_pass_gives_the_same_attention(monkeypatch):
    """With Numba (the optional extra) the tile's exp pass is the compiled one: same results to float32 rounding."""
    from attnkit.kernels import _accel

    if _accel.exp_rowsum() is None:
        pytest.skip("numba not installed (or ATTNKIT_NUMBA=0)")
    opts, factors, weights = CONFIGS[2]
    mech = MixedCurvatureAttention(**opts)
    q, k, v = mech.example_inputs(L, np.random.default_rng(8))
    mask = masks(np.random.default_rng(9), ())[1]
    plain = mech.forward(q, k, v, mask=mask)
    monkeypatch.setattr(_accel, "wanted", lambda scores, dtype: True)
    real, calls = _accel.exp_rowsum(), []
    monkeypatch.setattr(_accel, "exp_rowsum", lambda: lambda s, z: calls.append(s.shape) or real(s, z))
    compiled = mech.forward(q, k, v, mask=mask)
    assert calls  # the compiled pass ran on the tiles
    np.testing.assert_allclose(compiled, oracle(q, k, v, factors, weights, mech.temperature, mask), rtol=0, atol=2e-6)
    np.testing.assert_allclose(compiled, plain, rtol=0, atol=1e-6)
