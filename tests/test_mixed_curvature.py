"""MixedCurvatureAttention and DualSpaceAttention against float64 references (geoopt for the ball)."""

from __future__ import annotations

import geoopt
import numpy as np
import pytest
import torch

import attnkit
from attnkit import AttentionError, ConfigError, DisposedError, NonFiniteError, ShapeError
from attnkit.kernels import poincare as pc
from attnkit.mechanisms import registry
from attnkit.mechanisms.hyperbolic import HyperbolicAttention
from attnkit.mechanisms.mixed_curvature import DualSpaceAttention, MixedCurvatureAttention
from attnkit.mechanisms.neighbour import ScaledDotProduct


def ball(c):
    # c as a float64 tensor: geoopt's default float32 parameter costs ~1e-7 relative accuracy when c != 1
    return geoopt.PoincareBall(c=torch.tensor(c, dtype=torch.float64))


def geo_dist(x, y, c):
    """geoopt pairwise distances (M, N) in float64."""
    return ball(c).dist(torch.tensor(x)[:, None, :], torch.tensor(y)[None, :, :]).numpy()


def einstein(w, x, c):
    """Weighted Einstein midpoint written plainly: Klein model, Lorentz factors, back to the ball."""
    sq = np.sum(x * x, -1, keepdims=True)
    kl = 2 * x / (1 + c * sq)
    gamma = 1 / np.sqrt(1 - c * np.sum(kl * kl, -1, keepdims=True))
    m = (w @ (gamma * kl)) / (w @ gamma)
    return m / (1 + np.sqrt(1 - c * np.sum(m * m, -1, keepdims=True)))


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def points(rng, n, de, dh, c, scale=0.5):
    e = rng.standard_normal((n, de))
    h = ball(c).expmap0(torch.tensor(rng.standard_normal((n, dh)) * scale)).numpy()
    return np.concatenate([e, h], -1)


@pytest.mark.parametrize("de,c,t,we,wh", [(3, 1.0, 1.0, 1.0, 1.0), (2, 0.5, 0.7, 0.3, 2.0), (4, 2.0, 1.5, 1.0, 0.0)])
def test_mixed_matches_product_space_reference(de, c, t, we, wh) -> None:
    rng = np.random.default_rng(0)
    dim = 6
    q, k, v = points(rng, 5, de, dim - de, c), points(rng, 7, de, dim - de, c), points(rng, 7, de, dim - de, c)
    mech = MixedCurvatureAttention(dim=dim, euclidean_dim=de, curvature=c, temperature=t, euclidean_weight=we, hyperbolic_weight=wh)
    de_sq = np.sum((q[:, None, :de] - k[None, :, :de]) ** 2, -1)
    dh = geo_dist(q[:, de:], k[:, de:], c)
    w = softmax(-np.sqrt(we * de_sq + wh * dh**2) / t)
    np.testing.assert_allclose(mech.attention_weights(q, k), w, rtol=1e-10, atol=1e-13)
    expect = np.concatenate([w @ v[:, :de], einstein(w, v[:, de:], c)], -1)
    np.testing.assert_allclose(mech(q, k, v), expect, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(mech.distance(q[0], k[1]), np.sqrt(we * de_sq[0, 1] + wh * dh[0, 1] ** 2), rtol=1e-12)


def test_mixed_extremes_are_hyperbolic_and_euclidean_attention() -> None:
    rng = np.random.default_rng(1)
    q, k, v = points(rng, 4, 0, 5, 1.0), points(rng, 6, 0, 5, 1.0), points(rng, 6, 0, 5, 1.0)
    hyp = MixedCurvatureAttention(dim=5, euclidean_dim=0, temperature=0.8)
    np.testing.assert_allclose(hyp(q, k, v), HyperbolicAttention(5, temperature=0.8)(q, k, v), atol=1e-14)
    e = rng.standard_normal((3, 3, 5))
    euc = MixedCurvatureAttention(dim=5, euclidean_dim=5)
    d = np.linalg.norm(e[0][:, None] - e[1][None], axis=-1)
    np.testing.assert_allclose(euc(e[0], e[1], e[2]), softmax(-d) @ e[2], rtol=1e-12)


def test_mixed_frechet_is_a_critical_point_and_tangent_space_inputs() -> None:
    rng = np.random.default_rng(2)
    q, k, v = points(rng, 3, 2, 3, 1.0), points(rng, 5, 2, 3, 1.0), points(rng, 5, 2, 3, 1.0, scale=1.5)
    mech = MixedCurvatureAttention(dim=5, euclidean_dim=2, aggregation="frechet")
    out = mech(q, k, v)
    w = mech.attention_weights(q, k)
    for i in range(3):  # the Riemannian gradient sum_j w_j log_mu(v_j) vanishes at the Fréchet mean
        grad = sum(w[i, j] * pc.log_map(out[i, 2:], v[j, 2:]) for j in range(5))
        assert np.linalg.norm(grad) < 1e-9
    tangent = MixedCurvatureAttention(dim=5, euclidean_dim=2, input_space="tangent")
    u = [rng.standard_normal((n, 5)) for n in (3, 5, 5)]
    mapped = [np.concatenate([x[:, :2], pc.to_poincare(x[:, 2:])], -1) for x in u]
    ref = MixedCurvatureAttention(dim=5, euclidean_dim=2)(*mapped)
    got = tangent(*u)
    np.testing.assert_allclose(got[:, :2], ref[:, :2], atol=1e-12)
    np.testing.assert_allclose(got[:, 2:], pc.from_poincare(ref[:, 2:]), atol=1e-10)


def test_mixed_masks_torch_and_self_attention_gradient() -> None:
    rng = np.random.default_rng(3)
    q, k, v = points(rng, 4, 2, 2, 1.0), points(rng, 5, 2, 2, 1.0), points(rng, 5, 2, 2, 1.0)
    mech = MixedCurvatureAttention(dim=4, euclidean_dim=2)
    keep = np.ones((4, 5), dtype=bool)
    keep[1, [0, 2]] = False
    keep[3] = False
    out = mech(q, k, v, mask=keep)
    idx = [1, 3, 4]
    np.testing.assert_allclose(out[1], mech(q[1], k[idx], v[idx]), atol=1e-12)
    np.testing.assert_array_equal(out[3], 0.0)  # no visible key: zero Euclidean part, the ball's origin
    tq = torch.tensor(q, dtype=torch.float32, requires_grad=True)
    res = mech(tq)  # self-attention: d(q_i, q_i) = 0 must not give NaN gradients
    assert isinstance(res, torch.Tensor) and res.dtype == torch.float32
    np.testing.assert_allclose(res.detach().numpy(), mech(q), atol=1e-5)
    res.sum().backward()
    assert torch.isfinite(tq.grad).all()


def test_dual_space_limits_and_mix() -> None:
    rng = np.random.default_rng(4)
    q, k, v = rng.standard_normal((4, 6)) * 0.5, rng.standard_normal((7, 6)) * 0.5, rng.standard_normal((7, 3))
    euc = DualSpaceAttention(dim=6, mix=0.0)(q, k, v)
    np.testing.assert_allclose(euc, ScaledDotProduct(6)(q, k, v), atol=1e-13)
    hyp = DualSpaceAttention(dim=6, mix=1.0, curvature=0.7, temperature=0.5)(q, k, v)
    h = HyperbolicAttention(6, curvature=0.7, temperature=0.5, input_space="tangent")
    np.testing.assert_allclose(hyp, pc.from_poincare(h(q, k, v), c=0.7), atol=1e-12)
    # float64 reference with geoopt for the ball
    c, t, mix = 0.7, 0.5, 0.3
    b = ball(c)
    qb, kb, vb = (b.expmap0(torch.tensor(x)).numpy() for x in (q, k, v))
    w = softmax(-geo_dist(qb, kb, c) / t)
    hyp_ref = b.logmap0(torch.tensor(einstein(w, vb, c))).numpy()
    euc_ref = softmax(q @ k.T / np.sqrt(6)) @ v
    got = DualSpaceAttention(dim=6, curvature=c, temperature=t, mix=mix)(q, k, v)
    np.testing.assert_allclose(got, (1 - mix) * euc_ref + mix * hyp_ref, rtol=1e-9, atol=1e-12)


def test_dual_space_mask_single_query_and_torch() -> None:
    rng = np.random.default_rng(5)
    q, k, v = rng.standard_normal(4) * 0.3, rng.standard_normal((5, 4)) * 0.3, rng.standard_normal((5, 4)) * 0.3
    mech = DualSpaceAttention(dim=4)
    m = np.array([True, False, True, True, False])
    np.testing.assert_allclose(mech(q, k, v, mask=m), mech(q, k[m], v[m]), atol=1e-12)
    assert mech(q, k, v).shape == (4,)
    t = mech(torch.tensor(q, requires_grad=True), torch.tensor(k), torch.tensor(v))
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.detach().numpy(), mech(q, k, v), atol=1e-12)


def test_registry_and_sample_inputs() -> None:
    feats = attnkit.supported_features()
    assert "mixed_curvature" in feats and "dual_space" in feats
    for name in ("mixed_curvature", "dual_space"):
        mech = registry.create(name, dim="8")
        out = mech(*mech.sample_inputs(10, np.random.default_rng(0)))
        assert out.shape == (10, 8) and out.dtype == np.float32 and np.isfinite(out).all()
    assert attnkit.MixedCurvatureAttention is MixedCurvatureAttention and attnkit.DualSpaceAttention is DualSpaceAttention


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="euclidean_dim"):
        MixedCurvatureAttention(dim=4, euclidean_dim=5)
    with pytest.raises(ConfigError, match="curvature"):
        MixedCurvatureAttention(curvature=float("nan"))
    with pytest.raises(ConfigError, match="factors"):
        MixedCurvatureAttention(dim=4, factors="2:0,1:-1")
    with pytest.raises(ConfigError, match="factors"):
        MixedCurvatureAttention(dim=4, factors="2:zero,2:-1")
    with pytest.raises(ConfigError, match="factor_weights"):
        MixedCurvatureAttention(dim=4, factors="2:0,2:-1", factor_weights="1")
    with pytest.raises(ConfigError, match="factor_weights"):
        MixedCurvatureAttention(dim=4, factors="2:0,2:-1", factor_weights="1,x")
    with pytest.raises(ConfigError, match="factor_weights"):
        MixedCurvatureAttention(dim=4, factor_weights="1,1")
    with pytest.raises(ConfigError, match="hyperbolic_weight"):
        MixedCurvatureAttention(euclidean_weight=0, hyperbolic_weight=0)
    with pytest.raises(ConfigError, match="euclidean_weight"):
        MixedCurvatureAttention(euclidean_weight=-1)
    with pytest.raises(ConfigError, match="aggregation"):
        MixedCurvatureAttention(aggregation="mean")
    with pytest.raises(ConfigError, match="mix"):
        DualSpaceAttention(mix=1.5)
    with pytest.raises(ConfigError, match="temperature"):
        DualSpaceAttention(temperature=0)
    mech = MixedCurvatureAttention(dim=4, euclidean_dim=2)
    outside = np.array([[0.0, 0.0, 0.9, 0.9]])
    with pytest.raises(AttentionError, match="q"):
        mech(outside, np.zeros((2, 4)))
    with pytest.raises(ShapeError, match="value"):
        mech(np.zeros((1, 4)), np.zeros((2, 4)), np.zeros((2, 3)))
    with pytest.raises(ShapeError, match="key"):
        mech(np.zeros((1, 4)), np.zeros((2, 3)))
    with pytest.raises(ShapeError, match="mask"):
        mech(np.zeros((1, 4)), np.zeros((2, 4)), mask=np.ones((1, 3), dtype=bool))
    with pytest.raises(NonFiniteError, match="key"):
        mech(np.zeros((1, 4)), np.full((2, 4), np.nan))
    dual = DualSpaceAttention(dim=4)
    with pytest.raises(ShapeError, match="q"):
        dual(np.zeros((2, 5)))
    with pytest.raises(TypeError, match="q"):
        dual(np.zeros((2, 4), dtype=np.int32))
    dual.dispose()
    with pytest.raises(DisposedError):
        dual(np.zeros((2, 4)))
