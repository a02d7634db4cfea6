"""κ-stereographic primitives against geoopt's ``Stereographic(k)`` and gyrovector identities.

Points are sampled per curvature in three regimes: the interior, near the boundary of the ball
(κ < 0: a fraction ``1 - r`` in [1e-3, 1e-2] of the radius ``1/sqrt(-κ)``) and, for κ > 0, pairs whose
second point lies near the antipode of the first. geoopt (float64) is the oracle; float32 results are
compared with it at float32 tolerances. geoopt's gyromidpoint clamps its denominator by ``1e-10``,
so that one comparison is at 1e-8.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from attnkit.kernels import stereographic as S

torch = pytest.importorskip("torch")
geoopt = pytest.importorskip("geoopt")
hypothesis = pytest.importorskip("hypothesis")
from geoopt.manifolds.stereographic import math as gm  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

KS = [-2.0, -1.0, -0.1, 0.0, 0.1, 1.0, 2.0]
D = 4


def T(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def man(k: float):
    return geoopt.Stereographic(k=torch.tensor(k, dtype=torch.float64))


def sample(rng: np.random.Generator, n: int, k: float, regime: str) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (x, y) of points for the curvature ``k`` in a regime."""

    def dirs():
        d = rng.standard_normal((n, D))
        return d / np.linalg.norm(d, axis=-1, keepdims=True)

    radius = 1.0 / math.sqrt(abs(k)) if k else 1.0
    if regime == "interior":
        return dirs() * (rng.uniform(0, 0.9, n) * radius)[:, None], dirs() * (rng.uniform(0, 0.9, n) * radius)[:, None]
    if regime == "boundary":  # κ < 0: both near the boundary of the ball
        r = lambda: (1.0 - 10.0 ** rng.uniform(-3.0, -2.0, n)) * radius  # noqa: E731
        return dirs() * r()[:, None], dirs() * r()[:, None]
    # "antipode" (κ > 0): y a small step away from the antipode -x/(κ|x|^2) of x
    x = dirs() * (rng.uniform(0.3, 1.5, n) * radius)[:, None]
    anti = -x / (k * np.sum(x * x, axis=-1, keepdims=True))
    return x, anti + 1e-3 * radius * rng.standard_normal((n, D))


def regimes(k: float) -> list[str]:
    return ["interior"] + (["boundary"] if k < 0 else []) + (["antipode"] if k > 0 else [])


CASES = [(k, reg) for k in KS for reg in regimes(k)]


def close(ours, ref, dtype, scale=1.0):
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert np.all(np.isfinite(ours))
    # near the boundary geoopt's own float64 formulas lose about 1e-5 (test_boundary_against_mpmath is exact)
    rtol = (1e-9 if scale == 1.0 else 1e-4) if dtype == np.float64 else 2e-3 * scale
    atol = rtol * max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0) * (1.0 if dtype == np.float64 else 1e-2)
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("k", "regime"), CASES)
def test_primitives_match_geoopt(k, regime, dtype):
    rng = np.random.default_rng(abs(hash((k, regime))) % 2**32)
    x, y = sample(rng, 16, k, regime)
    u = rng.standard_normal((16, D)) * 0.4
    m = man(k)
    kt = torch.tensor(k, dtype=torch.float64)
    xa, ya, ua = (a.astype(dtype) for a in (x, y, u))
    # the oracle sees the float32-rounded inputs too
    X, Y, U = T(xa), T(ya), T(ua)
    # boundary/antipode inputs amplify input rounding: float32 is compared at a looser tolerance there
    loose = 1.0 if regime == "interior" else 50.0
    close(S.mobius_add(xa, ya, k), m.mobius_add(X, Y), dtype, loose)
    close(S.gyration(xa, ya, ua, k), gm.gyration(X, Y, U, k=kt), dtype, loose)
    close(S.lambda_x(xa, k)[..., 0], m.lambda_x(X), dtype, loose)
    close(S.dist0(xa, k)[..., 0], m.dist0(X), dtype, loose)
    close(S.expmap0(ua, k), m.expmap0(U), dtype)
    close(S.logmap0(xa, k), m.logmap0(X), dtype, loose)
    close(S.mobius_scalar_mul(0.7, xa, k), m.mobius_scalar_mul(torch.tensor(0.7, dtype=torch.float64), X), dtype, loose)
    close(S.antipode(xa, k), gm.antipode(X, k=kt), dtype, loose)
    if regime != "antipode":  # geoopt clamps nothing here; near the antipode its tan overflows past pi/2
        close(S.dist(xa, ya, k)[..., 0], m.dist(X, Y), dtype, loose)
        close(S.logmap(xa, ya, k), m.logmap(X, Y), dtype, loose)
        close(S.expmap(xa, ua * 0.3, k), m.expmap(X, U * 0.3), dtype, loose)
        close(S.pairwise_dist(xa, ya, k), m.dist(X[:, None], Y[None]), dtype, loose)
    if k < 0:
        e = S.margin(xa.dtype)  # geoopt picks its margin from the (float64) oracle dtype
        close(S.project(xa * 1.2, k), gm.project(X * 1.2, k=kt, eps=e), dtype)


@pytest.mark.parametrize("k", [kk for kk in KS if kk < 0])
def test_boundary_against_mpmath(k):
    """Near the boundary Möbius addition and distance are exact to about 1e-13 (50-digit mpmath reference)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    rng = np.random.default_rng(10)
    x, y = sample(rng, 12, k, "boundary")

    def ref(a, b):
        a, b = [mpmath.mpf(float(v)) for v in a], [mpmath.mpf(float(v)) for v in b]
        a2, b2 = sum(v * v for v in a), sum(v * v for v in b)
        ab = sum(p * q for p, q in zip(a, b, strict=True))
        den = 1 - 2 * k * ab + k * k * a2 * b2
        add = [((1 - 2 * k * ab - k * b2) * p + (1 + k * a2) * q) / den for p, q in zip(a, b, strict=True)]
        # d = 2 artan_k |(-a) (+) b|
        dn = 1 + 2 * k * ab + k * k * a2 * b2
        w = [((1 + 2 * k * ab - k * b2) * -p + (1 + k * a2) * q) / dn for p, q in zip(a, b, strict=True)]
        wn = mpmath.sqrt(sum(v * v for v in w))
        sc = mpmath.sqrt(-k)
        return [float(v) for v in add], float(2 * mpmath.atanh(sc * wn) / sc)

    refs = [ref(a, b) for a, b in zip(x, y, strict=True)]
    np.testing.assert_allclose(S.mobius_add(x, y, k), np.array([r[0] for r in refs]), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(S.dist(x, y, k)[..., 0], np.array([r[1] for r in refs]), rtol=1e-11)


@pytest.mark.parametrize("k", [kk for kk in KS if kk > 0])
def test_distance_near_antipode_against_sphere(k):
    """Near the antipode the distance tends to pi R: checked against the great-circle distance on the sphere."""
    rng = np.random.default_rng(1)
    x, y = sample(rng, 32, k, "antipode")

    def lift(p):  # inverse stereographic projection onto the sphere of radius R
        lam = 2.0 / (1.0 + k * np.sum(p * p, -1, keepdims=True))
        return np.concatenate([lam * p, (lam - 1.0) / math.sqrt(k)], axis=-1)

    px, py = lift(x), lift(y)
    R = 1.0 / math.sqrt(k)
    chord = np.linalg.norm(px - py, axis=-1)
    ref = 2.0 * R * np.arcsin(np.clip(chord / (2 * R), 0, 1))
    np.testing.assert_allclose(S.dist(x, y, k)[..., 0], ref, rtol=1e-10)
    assert np.all(ref > 0.99 * math.pi * R)


@pytest.mark.parametrize("k", KS)
def test_weighted_midpoint_matches_geoopt(k):
    rng = np.random.default_rng(2)
    # points within a hemisphere (κ > 0) / well inside the ball, where geoopt's antipode rule agrees
    x, _ = sample(rng, 7, k, "interior")
    x = x * 0.6
    w = rng.uniform(0.1, 1.0, 7)
    ref = man(k).weighted_midpoint(T(x), T(w), reducedim=[0]).numpy()
    np.testing.assert_allclose(S.weighted_midpoint(x, w, k), ref, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("k", [0.5, 1.0, 2.0])
def test_midpoint_sphere_is_projected_extrinsic_mean(k):
    """For κ > 0 the midpoint is the stereographic image of the normalised weighted sum on the sphere, even
    when points lie beyond the equator (where the plain gyromidpoint formula needs the antipode choice)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 9, D)) * 2.0 / math.sqrt(k)
    w = rng.uniform(0.0, 1.0, (5, 9))
    lam = 2.0 / (1.0 + k * np.sum(x * x, -1, keepdims=True))
    P = np.concatenate([lam * x, (lam - 1.0) / math.sqrt(k)], -1)
    s = np.einsum("bn,bnd->bd", w, P)
    s = s / np.linalg.norm(s, axis=-1, keepdims=True) / math.sqrt(k)
    ref = s[:, :D] / (1.0 + math.sqrt(k) * s[:, D:])
    np.testing.assert_allclose(S.weighted_midpoint(x, w, k), ref, rtol=1e-9, atol=1e-12)


def test_midpoint_euclidean_and_zero_weights():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 6, D))
    w = rng.uniform(0, 1, (3, 6))
    np.testing.assert_allclose(S.weighted_midpoint(x, w, 0.0), (w[..., None] * x).sum(1) / w.sum(1)[:, None], rtol=1e-12)
    for k in KS:
        out = S.weighted_midpoint(x * 0.1, np.zeros((3, 6)), k)
        np.testing.assert_array_equal(out, np.zeros((3, D)))


# ------------------------------------------------------------------------------------------------
# continuity through κ = 0
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_approaches_euclidean_as_kappa_shrinks(sign):
    rng = np.random.default_rng(5)
    x, y, u = (rng.standard_normal((8, D)) * 0.5 for _ in range(3))
    euclid = {
        "add": x + y,
        "dist": 2.0 * np.linalg.norm(x - y, axis=-1, keepdims=True),
        "exp": x + u,
        "log": y - x,
        "exp0": u,
        "log0": y,
        "smul": 0.7 * x,
        "gyr": u,
        "mid": (x * 1.0).mean(0),
    }

    def at(k):
        return {
            "add": S.mobius_add(x, y, k),
            "dist": S.dist(x, y, k),
            "exp": S.expmap(x, u, k),
            "log": S.logmap(x, y, k),
            "exp0": S.expmap0(u, k),
            "log0": S.logmap0(y, k),
            "smul": S.mobius_scalar_mul(0.7, x, k),
            "gyr": S.gyration(x, y, u, k),
            "mid": S.weighted_midpoint(x, None, k),
        }

    for name, ref in euclid.items():
        np.testing.assert_allclose(at(0.0)[name], ref, rtol=1e-14, atol=1e-14)
    prev = None
    for mag in [1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-9, 1e-12]:
        vals = at(sign * mag)
        err = max(float(np.max(np.abs(vals[n] - euclid[n]))) for n in euclid)
        assert err <= 50.0 * mag + 1e-14, (mag, err)  # first order in κ
        if prev is not None:
            assert err <= prev
        prev = err


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_series_switch_is_seamless(dtype):
    """tan_κ / artan_κ just below and above the series threshold |κ r^2| = 1e-3 agree to rounding."""
    r = np.asarray([1.0], dtype=dtype)
    eps = float(np.finfo(dtype).eps)
    for s in (1e-3, -1e-3):
        inner, outer = float(np.nextafter(s, 0.0)), s  # the series, then the closed form
        for f in (S.tan_k, S.artan_k):
            a, b = f(r, inner)[0], f(r, outer)[0]
            assert abs(a - b) <= 8 * eps * abs(a)


def test_gradient_in_kappa_at_zero():
    """d/dκ at κ = 0 exists and equals the series' first coefficient: tan_κ(r) ~ r + κ r^3 / 3."""
    r = torch.tensor([0.8], dtype=torch.float64)
    k = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(S.tan_k(r, k)[0], k)
    assert abs(float(g) - 0.8**3 / 3) < 1e-12
    k = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(S.artan_k(r, k)[0], k)
    assert abs(float(g) + 0.8**3 / 3) < 1e-12
    # gradients through every map at the origin and at κ = 0 are finite
    x = torch.zeros((2, D), dtype=torch.float64, requires_grad=True)
    kk = torch.zeros((2, 1), dtype=torch.float64, requires_grad=True)
    out = S.dist(x, x, kk).sum() + S.expmap0(x, kk).sum() + S.logmap0(x, kk).sum() + S.mobius_scalar_mul(2.0, x, kk).sum()
    out.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(kk.grad).all()


# ------------------------------------------------------------------------------------------------
# gyrovector identities
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", KS)
def test_gyrovector_identities(k):
    rng = np.random.default_rng(6)
    x, y = sample(rng, 32, k, "interior")
    _, w = sample(rng, 32, k, "interior")
    x, y, w = x * 0.7, y * 0.7, w * 0.7
    # left cancellation (-x) (+) (x (+) y) = y
    np.testing.assert_allclose(S.mobius_add(-x, S.mobius_add(x, y, k), k), y, atol=1e-12)
    # gyrocommutativity x (+) y = gyr[x, y](y (+) x)
    np.testing.assert_allclose(S.mobius_add(x, y, k), S.gyration(x, y, S.mobius_add(y, x, k), k), atol=1e-12)
    # gyration as defined: gyr[x, y]w = (-(x (+) y)) (+) (x (+) (y (+) w))
    ref = S.mobius_add(-S.mobius_add(x, y, k), S.mobius_add(x, S.mobius_add(y, w, k), k), k)
    np.testing.assert_allclose(S.gyration(x, y, w, k), ref, atol=1e-11)
    # gyrations are isometries of the norm
    np.testing.assert_allclose(np.linalg.norm(S.gyration(x, y, w, k), axis=-1), np.linalg.norm(w, axis=-1), rtol=1e-11)
    # exp and log are inverse, and distance is the Riemannian length of the log
    u = S.logmap(x, y, k)
    np.testing.assert_allclose(S.expmap(x, u, k), y, atol=1e-11)
    np.testing.assert_allclose(S.dist(x, y, k), S.lambda_x(x, k) * np.linalg.norm(u, axis=-1, keepdims=True), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(S.expmap0(S.logmap0(x, k), k), x, atol=1e-12)
    # scalar multiplication: 2 (x) x = x (+) x, and it scales the distance from the origin
    np.testing.assert_allclose(S.mobius_scalar_mul(2.0, x, k), S.mobius_add(x, x, k), atol=1e-11)


@pytest.mark.parametrize("fn", ["mobius_add", "dist", "expmap", "logmap", "expmap0", "logmap0", "gyration", "scalar", "project"])
def test_per_row_curvature_matches_loop(fn):
    rng = np.random.default_rng(7)
    ks = np.asarray(KS)[:, None]  # (B, 1)
    B = ks.shape[0]
    x = rng.standard_normal((B, D)) * 0.2
    y = rng.standard_normal((B, D)) * 0.2
    u = rng.standard_normal((B, D)) * 0.2
    calls = {
        "mobius_add": lambda k, i: S.mobius_add(x[i], y[i], k),
        "dist": lambda k, i: S.dist(x[i], y[i], k),
        "expmap": lambda k, i: S.expmap(x[i], u[i], k),
        "logmap": lambda k, i: S.logmap(x[i], y[i], k),
        "expmap0": lambda k, i: S.expmap0(u[i], k),
        "logmap0": lambda k, i: S.logmap0(x[i], k),
        "gyration": lambda k, i: S.gyration(x[i], y[i], u[i], k),
        "scalar": lambda k, i: S.mobius_scalar_mul(1.7, x[i], k),
        "project": lambda k, i: S.project(x[i] * 5, k),
    }
    rows = np.stack([calls[fn](float(ks[i, 0]), i) for i in range(B)])
    batched = calls[fn](ks, slice(None))
    np.testing.assert_allclose(batched, rows, rtol=1e-13, atol=1e-15)


def test_per_batch_curvature_pairwise_and_midpoint():
    rng = np.random.default_rng(8)
    ks = np.asarray(KS)
    B = ks.shape[0]
    a = rng.standard_normal((B, 3, D)) * 0.2
    b = rng.standard_normal((B, 5, D)) * 0.2
    w = rng.uniform(0, 1, (B, 3, 5))
    pd = S.pairwise_dist(a, b, ks[:, None, None])
    mp = S.midpoint_aggregate(w, b, ks[:, None, None])
    for i, k in enumerate(ks):
        np.testing.assert_allclose(pd[i], S.pairwise_dist(a[i], b[i], float(k)), rtol=1e-13)
        np.testing.assert_allclose(mp[i], S.midpoint_aggregate(w[i], b[i], float(k)), rtol=1e-13)


def test_jax_jit_traces_per_row_curvature():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    rng = np.random.default_rng(9)
    x = rng.standard_normal((7, D)) * 0.2
    y = rng.standard_normal((7, D)) * 0.2
    ks = np.asarray(KS)[:, None]
    f = jax.jit(lambda x, y, k: S.dist(x, S.expmap(x, S.logmap(x, y, k), k), k) + S.pairwise_dist(x, y, k[:, :, None][0])[:, :1])
    out = f(jnp.asarray(x), jnp.asarray(y), jnp.asarray(ks))
    ref = S.dist(x, S.expmap(x, S.logmap(x, y, ks), ks), ks) + S.pairwise_dist(x, y, ks[0, 0])[:, :1]
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# properties
# ------------------------------------------------------------------------------------------------
vec = st.lists(st.floats(-1.0, 1.0, allow_nan=False), min_size=D, max_size=D).map(np.asarray)
kappa = st.floats(-3.0, 3.0, allow_nan=False)


def inside(v, k, frac):
    """Scale v into the ball (κ < 0) or a bounded region (κ >= 0)."""
    n = np.linalg.norm(v)
    radius = 1.0 / math.sqrt(abs(k)) if k < 0 else 1.0
    return v if n == 0 else v / max(n, 1.0) * frac * radius


@settings(max_examples=60, deadline=None)
@given(vec, vec, vec, kappa)
def test_distance_properties(a, b, c, k):
    x, y, z = (inside(v, k, 0.9) for v in (a, b, c))
    dxy, dyx = S.dist(x, y, k)[0], S.dist(y, x, k)[0]
    assert dxy >= 0
    assert abs(dxy - dyx) <= 1e-9 * max(1.0, dxy)
    assert S.dist(x, x, k)[0] == 0.0
    # triangle inequality (on the sphere the chart's points are within distance pi R)
    assert dxy <= S.dist(x, z, k)[0] + S.dist(z, y, k)[0] + 1e-9
    # Möbius addition is an isometry: d(w (+) x, w (+) y) = d(x, y)
    np.testing.assert_allclose(S.dist(S.mobius_add(z, x, k), S.mobius_add(z, y, k), k)[0], dxy, rtol=1e-7, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(vec, vec, kappa, st.floats(-2.0, 2.0))
def test_scalar_mul_scales_distance(a, b, k, r):
    x = inside(a, k, 0.8)
    if k > 0:  # keep r * distance below pi R/2 so the point does not wrap round the sphere
        r = r * 0.5
    np.testing.assert_allclose(S.dist0(S.mobius_scalar_mul(r, x, k), k)[0], abs(r) * S.dist0(x, k)[0], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("k", KS)
def test_frechet_mean_is_stationary(k):
    """At the Fréchet mean the weighted sum of logarithms (minus the gradient of the objective) vanishes;
    at κ = 0 it is the weighted mean, and for κ < 0 it agrees with the expanded (M, N, D) computation."""
    rng = np.random.default_rng(12)
    x, _ = sample(rng, 6, k, "interior")
    x = x * 0.5
    w = rng.uniform(0.1, 1.0, (3, 6))
    w = w / w.sum(-1, keepdims=True)
    mu = S.frechet_aggregate(w, x, k, iters=200, tol=1e-14)
    grad = np.einsum("mn,mnd->md", w, S.logmap(mu[:, None, :], x[None], k))
    assert np.max(np.abs(grad)) < 1e-10
    if k == 0:
        np.testing.assert_allclose(mu, w @ x, rtol=1e-12, atol=1e-14)
    # the Fréchet mean minimises the weighted sum of squared distances: nudging it only increases it
    f = lambda m: np.sum(w * S.pairwise_dist(m, x, k) ** 2, -1)  # noqa: E731
    for _ in range(5):
        nudged = S.expmap(mu, rng.standard_normal(mu.shape) * 1e-3, k)
        assert np.all(f(nudged) >= f(mu) - 1e-12)


def test_frechet_traces_under_jit_with_fixed_steps():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 5, D)) * 0.15  # inside the unit ball
    w = rng.dirichlet(np.ones(5), size=(2, 3))
    ks = np.asarray([-1.0, 1.0])[:, None, None]
    f = jax.jit(lambda w, x, k: S.frechet_aggregate(w, x, k, iters=30))
    np.testing.assert_allclose(np.asarray(f(w, x, ks)), S.frechet_aggregate(w, x, ks, iters=30), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("k", KS)
def test_number_and_array_curvature_agree(k):
    """A Python-number κ evaluates only its sign's branch; an array κ picks per element: the same values."""
    rng = np.random.default_rng(14)
    x, y = sample(rng, 9, k, "interior")
    u = rng.standard_normal((9, D)) * 0.3
    w = rng.uniform(0, 1, (4, 9))
    ka = np.asarray(k)
    pairs = [
        (S.mobius_add(x, y, k), S.mobius_add(x, y, ka)),
        (S.dist(x, y, k), S.dist(x, y, ka)),
        (S.expmap(x, u, k), S.expmap(x, u, ka)),
        (S.logmap(x, y, k), S.logmap(x, y, ka)),
        (S.mobius_scalar_mul(1.3, x, k), S.mobius_scalar_mul(1.3, x, ka)),
        (S.gyration(x, y, u, k), S.gyration(x, y, u, ka)),
        (S.pairwise_dist(x, y, k), S.pairwise_dist(x, y, ka)),
        (S.frechet_aggregate(w / w.sum(-1, keepdims=True), x, k, iters=5), S.frechet_aggregate(w / w.sum(-1, keepdims=True), x, ka, iters=5)),
    ]
    for a, b in pairs:
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15)
