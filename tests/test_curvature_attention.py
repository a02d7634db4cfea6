"""HyperbolicAttention at any curvature and MixedCurvatureAttention with Euclidean, hyperbolic and
spherical factors, against geoopt's Stereographic(k) and plain float64 references."""

from __future__ import annotations

import numpy as np
import pytest

from attnkit import HyperbolicAttention, MixedCurvatureAttention

torch = pytest.importorskip("torch")
geoopt = pytest.importorskip("geoopt")

KS = [-2.0, -1.0, -0.1, 0.0, 0.1, 1.0, 2.0]


def man(k):
    return geoopt.Stereographic(k=torch.tensor(k, dtype=torch.float64))


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def pts(rng, shape, k, scale=0.4):
    """Points of the κ-model near the origin (inside a hemisphere for κ > 0)."""
    u = rng.standard_normal(shape) * scale
    return man(k).expmap0(torch.tensor(u)).numpy() if k else u


def reference(q, keys, values, k, temperature):
    """softmax(-d_κ/T) with geoopt's distances and, row by row, geoopt's weighted gyromidpoint."""
    m = man(k)
    d = m.dist(torch.tensor(q)[:, None], torch.tensor(keys)[None]).numpy()
    w = softmax(-d / temperature)
    out = np.stack([m.weighted_midpoint(torch.tensor(values), torch.tensor(wi), reducedim=[0]).numpy() for wi in w])
    return w, out


@pytest.mark.parametrize("k", KS)
def test_hyperbolic_attention_any_curvature_matches_geoopt(k):
    rng = np.random.default_rng(int(abs(k) * 10) + (k > 0))
    q, keys, values = pts(rng, (5, 3), k), pts(rng, (7, 3), k), pts(rng, (7, 3), k)
    mech = HyperbolicAttention(3, kappa=k, temperature=0.7)
    w, out = reference(q, keys, values, k, 0.7)
    np.testing.assert_allclose(mech.attention_weights(q, keys), w, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(mech(q, keys, values), out, rtol=1e-8, atol=1e-10)  # geoopt clamps by 1e-10
    if k == 0:  # flat: softmax(-2|q - k|/T) @ v
        d = 2 * np.linalg.norm(q[:, None] - keys[None], axis=-1)
        np.testing.assert_allclose(mech(q, keys, values), softmax(-d / 0.7) @ values, rtol=1e-12)
    # the Fréchet aggregation is a critical point of the weighted squared distances
    fr = HyperbolicAttention(3, kappa=k, temperature=0.7, aggregation="frechet", frechet_tol=1e-13)
    mu = fr(q, keys, values)
    grad = np.einsum("mn,mnd->md", w, man(k).logmap(torch.tensor(mu)[:, None], torch.tensor(values)[None]).numpy())
    assert np.max(np.abs(grad)) < 1e-9


def test_hyperbolic_curvature_signs():
    rng = np.random.default_rng(1)
    q, keys, values = pts(rng, (4, 3), -2.0), pts(rng, (6, 3), -2.0), pts(rng, (6, 3), -2.0)
    same = [HyperbolicAttention(3, curvature=2.0), HyperbolicAttention(3, curvature=-2.0), HyperbolicAttention(3, kappa=-2.0)]
    outs = [m(q, keys, values) for m in same]
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    assert [m.kappa for m in same] == [-2.0, -2.0, -2.0]
    flat = HyperbolicAttention(3, curvature=0.0)
    assert flat.kappa == 0.0
    np.testing.assert_array_equal(flat(q, keys, values), HyperbolicAttention(3, kappa=0.0)(q, keys, values))
    # κ = 1 is the sphere: no curvature value selects it, kappa does
    assert HyperbolicAttention(3, curvature=1.0, kappa=1.0).kappa == 1.0


@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_hyperbolic_attention_continuous_through_zero(sign):
    rng = np.random.default_rng(2)
    q, keys, values = (rng.standard_normal((4, 3)) * 0.3 for _ in range(3))
    flat = HyperbolicAttention(3, kappa=0.0)(q, keys, values)
    prev = np.inf
    for mag in [1e-1, 1e-2, 1e-4, 1e-6, 1e-9]:
        err = np.max(np.abs(HyperbolicAttention(3, kappa=sign * mag)(q, keys, values) - flat))
        assert err <= 10 * mag and err <= prev
        prev = err


def test_spherical_attention_torch_gradients():
    rng = np.random.default_rng(3)
    q = torch.tensor(pts(rng, (4, 3), 1.0), requires_grad=True)
    keys = torch.tensor(pts(rng, (6, 3), 1.0), requires_grad=True)
    out = HyperbolicAttention(3, kappa=1.0)(q, keys, keys)
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(keys.grad).all() and q.grad.abs().sum() > 0


def test_mixed_product_of_three_kinds_matches_reference():
    rng = np.random.default_rng(4)
    factors = [(3, 0.0), (2, -1.0), (3, 1.5)]
    fw = [0.5, 1.0, 2.0]
    mech = MixedCurvatureAttention(dim=8, factors="3:0, 2:-1, 3:1.5", factor_weights="0.5,1,2", temperature=0.9)
    assert mech.factors == factors and mech.factor_weights == fw
    parts = lambda n: [pts(rng, (n, w), k) for w, k in factors]  # noqa: E731
    qp, kp, vp = parts(4), parts(6), parts(6)
    sq = 0.0
    for (_, k), f, a, b in zip(factors, fw, qp, kp, strict=True):
        sq = sq + f * man(k).dist(torch.tensor(a)[:, None], torch.tensor(b)[None]).numpy() ** 2
    w = softmax(-np.sqrt(sq) / 0.9)
    ref = []
    for (_, k), v in zip(factors, vp, strict=True):
        ref.append(np.stack([man(k).weighted_midpoint(torch.tensor(v), torch.tensor(wi), reducedim=[0]).numpy() for wi in w]))
    cat = lambda ps: np.concatenate(ps, -1)  # noqa: E731
    np.testing.assert_allclose(mech.attention_weights(cat(qp), cat(kp)), w, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(mech(cat(qp), cat(kp), cat(vp)), cat(ref), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(mech.distance(cat(qp), cat(kp)[:4]), np.sqrt(np.diag(sq[:, :4])), rtol=1e-12)


def test_mixed_legacy_options_are_a_two_factor_product():
    rng = np.random.default_rng(5)
    legacy = MixedCurvatureAttention(dim=6, euclidean_dim=2, curvature=-1.5, euclidean_weight=0.7, hyperbolic_weight=0.4)
    explicit = MixedCurvatureAttention(dim=6, factors=[(2, 0.0), (4, -1.5)], factor_weights=[0.7 / 4, 0.4])
    x = np.concatenate([rng.standard_normal((5, 2)), pts(rng, (5, 4), -1.5)], -1)
    np.testing.assert_allclose(legacy(x), explicit(x), rtol=1e-13)
    # w_E |x_E - y_E|^2 + w_H d^2: the Euclidean factor keeps its plain distance
    d = legacy.distance(x[:1], x[1:2])
    dh = man(-1.5).dist(torch.tensor(x[0, 2:]), torch.tensor(x[1, 2:])).item()
    np.testing.assert_allclose(d, np.sqrt(0.7 * np.sum((x[0, :2] - x[1, :2]) ** 2) + 0.4 * dh**2), rtol=1e-12)


# ------------------------------------------------------------------------------------------------
# learnable curvature (a parameter through functional_call)
# ------------------------------------------------------------------------------------------------
def test_learnable_curvature_is_a_parameter_kept_in_range():
    import attnkit
    from attnkit import ConfigError
    from attnkit.kernels import stereographic as S

    rng = np.random.default_rng(6)
    q, keys = pts(rng, (4, 3), -1.0, scale=0.1), pts(rng, (6, 3), -1.0, scale=0.1)  # inside every ball of the range
    m = HyperbolicAttention(3, kappa=-1.0, learn_curvature=True)
    assert m.param_shapes() == {"curvature_raw": (1,)} and (m.kappa_min, m.kappa_max) == (-4.0, 4.0)
    assert abs(m.kappa + 1.0) < 1e-15
    np.testing.assert_allclose(m(q, keys, keys), HyperbolicAttention(3, kappa=-1.0)(q, keys, keys), rtol=1e-13)
    # any raw value maps into (kappa_min, kappa_max)
    for raw in (-50.0, -3.0, 0.0, 3.0, 50.0):
        m.load_parameters({"curvature_raw": np.array([raw])})
        assert -4.0 <= m.kappa <= 4.0
        np.testing.assert_allclose(m(q, keys, keys), HyperbolicAttention(3, kappa=m.kappa)(q, keys, keys), rtol=1e-12, atol=1e-14)
    # functional_call with another raw value computes at that curvature without changing the layer
    before = m.kappa
    raw = np.array([S.raw_from_curvature(0.5, -4.0, 4.0)])
    np.testing.assert_allclose(
        attnkit.functional_call(m, {"curvature_raw": raw}, q, keys, keys), HyperbolicAttention(3, kappa=0.5)(q, keys, keys), rtol=1e-12
    )
    assert m.kappa == before
    with pytest.raises(ConfigError, match="kappa_min, kappa_max"):
        HyperbolicAttention(3, kappa=-1.0, learn_curvature=True, kappa_max=-2.0)


@pytest.mark.parametrize("k0", [-1.0, 0.0, 0.7])
def test_learnable_curvature_gradient_matches_finite_differences(k0):
    """d(loss)/d(raw) through torch equals the chain rule over a central difference in κ (also at κ = 0)."""
    import attnkit

    rng = np.random.default_rng(7)
    q, keys, vals = (rng.standard_normal((n, 3)) * 0.3 for n in (4, 6, 6))
    m = HyperbolicAttention(3, kappa=k0, learn_curvature=True, input_space="tangent")
    raw = torch.tensor(m.parameters()["curvature_raw"], requires_grad=True)
    out = attnkit.functional_call(m, {"curvature_raw": raw}, torch.tensor(q), torch.tensor(keys), torch.tensor(vals))
    wts = rng.standard_normal(tuple(out.shape))
    (out * torch.tensor(wts)).sum().backward()
    h = 1e-6

    def loss(k):
        return float(np.sum(HyperbolicAttention(3, kappa=k, input_space="tangent")(q, keys, vals) * wts))

    sig = 1.0 / (1.0 + np.exp(-float(raw.detach()[0])))
    dk_draw = (m.kappa_max - m.kappa_min) * sig * (1.0 - sig)
    fd = (loss(k0 + h) - loss(k0 - h)) / (2 * h) * dk_draw
    assert torch.isfinite(raw.grad).all()
    np.testing.assert_allclose(float(raw.grad[0]), fd, rtol=1e-5, atol=1e-8)


def test_learnable_curvature_under_jax_grad():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    import attnkit

    rng = np.random.default_rng(8)
    q, keys = (rng.standard_normal((n, 3)) * 0.3 for n in (4, 6))
    # check_finite tests data in Python, which a jit trace cannot: off here
    m = HyperbolicAttention(3, kappa=-0.5, learn_curvature=True, input_space="tangent", check_finite=False)
    raw0 = m.parameters()["curvature_raw"]
    f = jax.jit(jax.grad(lambda r: jnp.sum(attnkit.functional_call(m, {"curvature_raw": r}, q, keys, keys) ** 2)))
    g = f(jnp.asarray(raw0))
    rt = torch.tensor(raw0, requires_grad=True)
    (attnkit.functional_call(m, {"curvature_raw": rt}, torch.tensor(q), torch.tensor(keys), torch.tensor(keys)) ** 2).sum().backward()
    np.testing.assert_allclose(np.asarray(g), rt.grad.numpy(), rtol=1e-9)


def test_mixed_learnable_curvatures_keep_their_kind():
    import attnkit
    from attnkit import ConfigError

    rng = np.random.default_rng(9)
    m = MixedCurvatureAttention(dim=8, factors="3:0,2:-1,3:1.5", learn_curvature=True, input_space="tangent")
    assert m.param_shapes() == {"curvature_raw": (2,)}
    np.testing.assert_allclose(m.curvatures(), [0.0, -1.0, 1.5], rtol=1e-14)
    x = rng.standard_normal((5, 8)) * 0.3
    fixed = MixedCurvatureAttention(dim=8, factors="3:0,2:-1,3:1.5", input_space="tangent")
    np.testing.assert_allclose(m(x), fixed(x), rtol=1e-12)
    for raw in ([-60.0, 60.0], [60.0, -60.0]):
        m.load_parameters({"curvature_raw": np.array(raw)})
        ks = m.curvatures()
        assert ks[0] == 0.0 and -4.0 <= ks[1] <= 0.0 and 0.0 <= ks[2] <= 6.0
    raw = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    attnkit.functional_call(m, {"curvature_raw": raw}, torch.tensor(x)).sum().backward()
    assert torch.isfinite(raw.grad).all() and (raw.grad != 0).all()
    with pytest.raises(ConfigError, match="learn_curvature"):
        MixedCurvatureAttention(dim=4, factors="4:0", learn_curvature=True)
