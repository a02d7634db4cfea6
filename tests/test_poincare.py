"""Poincaré ball primitives against geoopt's PoincareBall (float64 torch) and independent formulas.

Sampling: points are drawn as a random direction times a radius fraction ``r`` of the ball radius
``1/sqrt(c)``, in three regimes: near the origin (``r <= 1e-6``, plus the origin itself), the interior
(``r <= 0.9``) and near the boundary (``1 - r`` between 1e-3 and 1e-2). geoopt clamps its artanh
argument at ``1 - 1e-7``, so where two near-boundary points are nearly antipodal its distance is
capped; keeping ``1 - r >= 1e-3`` keeps every geoopt value exact, and closer points are checked against
mpmath at 50 digits instead.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import attnkit
from attnkit import AttentionError, ConfigError, DTypeError, NonFiniteError, ShapeError
from attnkit.kernels import poincare as P

torch = pytest.importorskip("torch")
geoopt = pytest.importorskip("geoopt")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

CURVATURES = [0.1, 1.0, 2.5, -1.0]  # -1.0: the spec's way of writing the unit ball
REGIMES = ["origin", "interior", "boundary"]
D = 5


def ball(c: float):
    # a float64 curvature: geoopt otherwise stores c in float32 (0.1 -> 0.10000000149)
    return geoopt.PoincareBall(c=torch.tensor(abs(c), dtype=torch.float64))


def T(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


def points(rng: np.random.Generator, n: int, c: float, regime: str, d: int = D) -> np.ndarray:
    direction = rng.standard_normal((n, d))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    if regime == "origin":
        r = rng.uniform(0.0, 1e-6, n)
        r[0] = 0.0
    elif regime == "interior":
        r = rng.uniform(0.0, 0.9, n)
    else:
        r = 1.0 - 10.0 ** rng.uniform(-3.0, -2.0, n)
    return direction * (r / math.sqrt(abs(c)))[:, None]


def mixed_pairs(rng, n, c):
    """x from every regime paired with y from every regime."""
    xs, ys = [], []
    for a in REGIMES:
        for b in REGIMES:
            xs.append(points(rng, n, c, a))
            ys.append(points(rng, n, c, b))
    return np.concatenate(xs), np.concatenate(ys)


def mp_log_and_distance(x: np.ndarray, y: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
    """``log_x(y)`` and ``d_c(x, y)`` in 50-digit arithmetic, straight from the Möbius formulas."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    cc = mpmath.mpf(abs(c))
    logs, dists = [], []
    for xr, yr in zip(np.reshape(x, (-1, x.shape[-1])), np.reshape(y, (-1, y.shape[-1])), strict=True):
        a = [mpmath.mpf(float(t)) for t in xr]
        b = [mpmath.mpf(float(t)) for t in yr]
        na, nb = sum(t * t for t in a), sum(t * t for t in b)
        ab = sum(s * t for s, t in zip(a, b, strict=True))
        num = [(1 - 2 * cc * ab + cc * nb) * (-s) + (1 - cc * na) * t for s, t in zip(a, b, strict=True)]
        den = 1 - 2 * cc * ab + cc * cc * na * nb
        w = [t / den for t in num]
        wn = mpmath.sqrt(sum(t * t for t in w))
        at = mpmath.atanh(mpmath.sqrt(cc) * wn)
        dists.append(float(2 / mpmath.sqrt(cc) * at))
        lam = 2 / (1 - cc * na)
        logs.append([float(2 / (mpmath.sqrt(cc) * lam) * at * t / wn) if wn > 0 else 0.0 for t in w])
    return np.array(logs).reshape(np.broadcast_shapes(x.shape, y.shape)), np.array(dists).reshape(np.broadcast_shapes(x.shape, y.shape)[:-1])


def geoopt_distance_error(d: np.ndarray, c: float) -> np.ndarray:
    """The rounding error of geoopt's own distance: its artanh argument ``z = tanh(sqrt(c) d / 2)``
    carries up to a few tens of ulps (measured against mpmath: 25 at c = 0.1, 3 at c = 1), and artanh
    amplifies them by ``1/(1 - z^2) ~ exp(sqrt(c) d)/4``. Bounded here with 64 ulps."""
    sc = math.sqrt(abs(c))
    return 64 * np.finfo(np.float64).eps * np.exp(sc * d) / (2 * sc)


def close(a, b, rtol: float, scale: float | None = None) -> None:
    a = np.asarray(a.detach() if hasattr(a, "detach") else a, dtype=np.float64)
    b = np.asarray(b.detach() if hasattr(b, "detach") else b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    s = scale if scale is not None else max(1.0, float(np.max(np.abs(b))))
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    assert err <= rtol * s, f"max abs error {err:.3e} > {rtol:.1e} * scale {s:.3g}"


# ---------------------------------------------------------------------------------------------
# geoopt oracle, every primitive, every curvature, every regime
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("c", CURVATURES)
def test_mobius_add_matches_geoopt(c):
    rng = np.random.default_rng(1)
    x, y = mixed_pairs(rng, 20, c)
    ours = P.mobius_add(x, y, c=c)
    ref = ball(c).mobius_add(T(x), T(y))
    close(ours, ref, 1e-12)
    assert isinstance(ours, np.ndarray) and ours.dtype == np.float64


@pytest.mark.parametrize("c", CURVATURES)
def test_exp_map_matches_geoopt(c):
    rng = np.random.default_rng(2)
    x, _ = mixed_pairs(rng, 20, c)
    # tangent vectors of Riemannian length up to 4 (lambda_x |u|), and some exactly zero
    u = rng.standard_normal(x.shape)
    lam = 2.0 / (1.0 - abs(c) * np.sum(x * x, -1, keepdims=True))
    u *= rng.uniform(0.0, 4.0, (len(x), 1)) / (lam * np.linalg.norm(u, axis=-1, keepdims=True))
    u[::7] = 0.0
    ours = P.exp_map(x, u, c=c)
    close(ours, ball(c).expmap(T(x), T(u)), 1e-12)
    close(ours[::7], x[::7], 1e-15)


@pytest.mark.parametrize("c", CURVATURES)
def test_log_map_matches_geoopt(c):
    rng = np.random.default_rng(3)
    x, y = mixed_pairs(rng, 20, c)
    ours = P.log_map(x, y, c=c)
    ref = ball(c).logmap(T(x), T(y)).numpy()
    mp_log, d = mp_log_and_distance(x, y, c)
    # log_x(y) has Euclidean length d/lambda_x: compare in the Riemannian norm at x, row by row, to
    # geoopt within its own rounding error (which grows like exp(sqrt(c) d)), and to mpmath tightly
    lam = 2.0 / (1.0 - abs(c) * np.sum(x * x, -1, keepdims=True))
    err_geoopt = np.max(np.abs(lam * (ours - ref)), axis=-1)
    assert np.all(err_geoopt <= 1e-12 * (1 + d) + geoopt_distance_error(d, c)), np.max(err_geoopt)
    err_mp = np.max(np.abs(lam * (ours - mp_log)), axis=-1)
    assert np.all(err_mp <= 1e-12 * (1 + d)), np.max(err_mp / (1 + d))
    np.testing.assert_array_equal(P.log_map(x, x, c=c), np.zeros_like(x))


@pytest.mark.parametrize("c", CURVATURES)
def test_distance_matches_geoopt(c):
    rng = np.random.default_rng(4)
    x, y = mixed_pairs(rng, 20, c)
    ours = P.poincare_distance(x, y, c=c)
    assert ours.shape == (len(x),)
    ref = ball(c).dist(T(x), T(y)).numpy()
    _, mp_d = mp_log_and_distance(x, y, c)
    assert np.all(np.abs(ours - ref) <= 1e-13 * (1 + ref) + geoopt_distance_error(ref, c))
    # against 50 digits: the inputs' 1-c|x|^2 >= 2e-3 keeps the conditioning near 1e-13
    assert np.all(np.abs(ours - mp_d) <= 1e-13 * (1 + mp_d)), np.max(np.abs(ours - mp_d) / (1 + mp_d))
    # and geoopt itself is only that far from exact: the error model holds
    assert np.all(np.abs(ref - mp_d) <= 1e-13 * (1 + mp_d) + geoopt_distance_error(mp_d, c))


@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_project_matches_geoopt_projx(c, dtype):
    rng = np.random.default_rng(5)
    # points inside, on and far outside the ball, and the origin
    x = rng.standard_normal((60, D)) * rng.uniform(0.0, 3.0, (60, 1)) / math.sqrt(abs(c))
    x[0] = 0.0
    x = x.astype(dtype)
    ours = P.project(x, c=c)
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    ref = ball(c).to(tdt).projx(torch.as_tensor(x))
    assert ours.dtype == dtype
    close(ours, ref, 1e-12 if dtype == np.float64 else 1e-6)
    margin = 1e-5 if dtype == np.float64 else 4e-3
    norms = np.linalg.norm(ours.astype(np.float64), axis=-1) * math.sqrt(abs(c))
    assert np.all(norms <= (1 - margin) * (1 + 1e-6))
    inside = np.linalg.norm(x.astype(np.float64), axis=-1) * math.sqrt(abs(c)) < 1 - margin
    np.testing.assert_array_equal(ours[inside], x[inside])  # points inside the margin are left alone


def test_project_explicit_eps():
    x = np.array([[3.0, 4.0]])
    out = P.project(x, c=1.0, eps=0.1)
    close(out, [[0.9 * 0.6, 0.9 * 0.8]], 1e-15)
    close(out, geoopt.manifolds.stereographic.math.project(T(x), k=T(-1.0), eps=0.1), 1e-15)


@pytest.mark.parametrize("c", CURVATURES)
def test_origin_maps_match_geoopt(c):
    rng = np.random.default_rng(6)
    u = rng.standard_normal((40, D)) * rng.uniform(0.0, 3.0, (40, 1))
    u[0] = 0.0
    close(P.to_poincare(u, c=c), ball(c).expmap0(T(u)), 1e-12)
    x = np.concatenate([points(rng, 20, c, r) for r in REGIMES])
    # log_0(x) has length d(0, x)/2: compare with the scale of the result
    close(P.from_poincare(x, c=c), ball(c).logmap0(T(x)), 1e-11)
    np.testing.assert_array_equal(P.to_poincare(np.zeros(D), c=c), np.zeros(D))
    np.testing.assert_array_equal(P.from_poincare(np.zeros(D), c=c), np.zeros(D))


@pytest.mark.parametrize("c", CURVATURES)
def test_lambda_and_scalar_mul_match_geoopt(c):
    rng = np.random.default_rng(7)
    x = np.concatenate([points(rng, 20, c, r) for r in REGIMES])
    b = ball(c)
    close(P.lambda_x(x, c=c), b.lambda_x(T(x)), 1e-12, scale=float(np.max(b.lambda_x(T(x)).numpy())))
    for r in (0.0, 0.5, 1.0, 2.0, -1.5):
        close(P.mobius_scalar_mul(r, x, c=c), b.mobius_scalar_mul(T(r), T(x)), 1e-11)
    rs = rng.uniform(-2, 2, len(x))
    close(P.mobius_scalar_mul(rs, x, c=c), b.mobius_scalar_mul(T(rs)[:, None], T(x)), 1e-11)


def test_negative_curvature_means_the_same_ball():
    rng = np.random.default_rng(8)
    x, y = mixed_pairs(rng, 5, 2.5)
    for f in (P.mobius_add, P.log_map, P.poincare_distance):
        np.testing.assert_array_equal(f(x, y, c=-2.5), f(x, y, c=2.5))
    np.testing.assert_array_equal(P.project(3 * x, c=-2.5), P.project(3 * x, c=2.5))
    np.testing.assert_array_equal(attnkit.to_poincare(y, c=-2.5), attnkit.to_poincare(y, c=2.5))


def test_distance_extremely_close_to_the_boundary_matches_mpmath():
    """Where geoopt's artanh clamp (1 - 1e-7) caps its distance, compare with 50-digit arithmetic."""
    rng = np.random.default_rng(9)
    c = 1.7
    direction = rng.standard_normal((8, D))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    x = direction * ((1 - 10.0 ** rng.uniform(-10, -8, 8)) / math.sqrt(c))[:, None]
    y = -direction * ((1 - 10.0 ** rng.uniform(-10, -8, 8)) / math.sqrt(c))[:, None]
    ours = P.poincare_distance(x, y, c=c)
    _, ref = mp_log_and_distance(x, y, c)
    # conditioning: |x|^2 carries a few ulps of rounding in any float64 evaluation, which is a relative
    # error eps/(1 - c|x|^2) in 1 - c|x|^2 (up to 5e-7 here), and d ~ log(1/((1 - c|x|^2)(1 - c|y|^2)))/sqrt(c)
    eps = np.finfo(np.float64).eps
    bound = 4 * eps * (1 / (1 - c * np.sum(x * x, -1)) + 1 / (1 - c * np.sum(y * y, -1))) / math.sqrt(c)
    assert np.all(np.abs(ours - ref) <= bound)
    assert np.all(ref > 30)  # the regime geoopt cannot reach
    assert np.all(ball(c).dist(T(x), T(y)).numpy() < ref - 5)


# ---------------------------------------------------------------------------------------------
# exp/log are inverses; distance properties
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("c", CURVATURES)
def test_log_inverts_exp_and_exp_inverts_log(c):
    rng = np.random.default_rng(10)
    x = np.concatenate([points(rng, 30, c, "origin"), points(rng, 30, c, "interior")])
    lam = 2.0 / (1.0 - abs(c) * np.sum(x * x, -1, keepdims=True))
    u = rng.standard_normal(x.shape)
    u *= rng.uniform(0.0, 5.0, (len(x), 1)) / (lam * np.linalg.norm(u, axis=-1, keepdims=True))
    back = P.log_map(x, P.exp_map(x, u, c=c), c=c)
    close(lam * back, lam * u, 1e-10)  # Riemannian norm at x, lengths up to 5
    y = np.concatenate([points(rng, 30, c, r) for r in ("interior", "origin")])
    again = P.exp_map(x, P.log_map(x, y, c=c), c=c)
    close(again, y, 1e-12, scale=1.0 / math.sqrt(abs(c)))
    # near the boundary: the point is recovered to the conditioning of the map (lambda_y eps)
    yb = points(rng, 60, c, "boundary")
    close(P.exp_map(x, P.log_map(x, yb, c=c), c=c), yb, 1e-10, scale=1.0 / math.sqrt(abs(c)))
    # the origin maps are exp/log at 0
    close(P.exp_map(np.zeros(D), u[0], c=c), P.to_poincare(u[0], c=c), 1e-15)
    close(P.log_map(np.zeros(D), y[0], c=c), P.from_poincare(y[0], c=c), 1e-14)


@pytest.mark.parametrize("c", CURVATURES)
def test_log_map_length_is_the_distance(c):
    rng = np.random.default_rng(11)
    x, y = mixed_pairs(rng, 10, c)
    lam = P.lambda_x(x, c=c)
    d = P.poincare_distance(x, y, c=c)
    close(lam * np.linalg.norm(P.log_map(x, y, c=c), axis=-1), d, 1e-10, scale=max(1.0, float(d.max())))


def _ball_points(draw_values, c):
    u = np.asarray(draw_values, dtype=np.float64).reshape(3, 3)
    return P.to_poincare(u, c=c)


#: three tangent vectors; to_poincare maps them up to the float64 margin of the boundary
vectors = st.lists(st.floats(-6, 6, allow_nan=False), min_size=9, max_size=9)
#: smaller ones, for laws whose results must not reach the projection margin (|u| <= sqrt(3),
#: so sqrt(c) d(0, x (+) y) <= 4 sqrt(c) sqrt(3) < 11 for c <= 2.5, inside 2 artanh(1 - 1e-5) = 12.2)
small_vectors = st.lists(st.floats(-1, 1, allow_nan=False), min_size=9, max_size=9)


@settings(max_examples=150, deadline=None)
@given(vals=vectors, c=st.sampled_from([0.1, 1.0, 2.5, -1.0]))
def test_distance_metric_axioms(vals, c):
    x, y, z = _ball_points(vals, c)
    dxy, dyx = P.poincare_distance(x, y, c=c), P.poincare_distance(y, x, c=c)
    assert dxy == dyx  # symmetric to the last bit
    assert P.poincare_distance(x, x, c=c) == 0.0
    assert dxy >= 0.0
    dxz, dyz = P.poincare_distance(x, z, c=c), P.poincare_distance(y, z, c=c)
    assert dxz <= dxy + dyz + 1e-9 * (1 + dxz)


@settings(max_examples=100, deadline=None)
@given(vals=small_vectors, c=st.sampled_from([0.1, 1.0, 2.5, -1.0]))
def test_mobius_translation_is_an_isometry(vals, c):
    x, y, a = _ball_points(vals, c)
    dxy = P.poincare_distance(x, y, c=c)
    close(P.poincare_distance(P.mobius_add(a, x, c=c), P.mobius_add(a, y, c=c), c=c), dxy, 1e-9, scale=1 + dxy)


@settings(max_examples=100, deadline=None)
@given(vals=small_vectors, c=st.sampled_from([0.1, 1.0, 2.5]))
def test_mobius_left_cancellation(vals, c):
    x, y, _ = _ball_points(vals, c)
    # (-x) (+) (x (+) y) = y  (left cancellation law of the gyrogroup)
    close(P.mobius_add(-x, P.mobius_add(x, y, c=c), c=c), y, 1e-9, scale=1.0 / math.sqrt(c))
    np.testing.assert_allclose(P.mobius_add(x, np.zeros(3), c=c), x, rtol=0, atol=1e-15)
    np.testing.assert_allclose(P.mobius_add(np.zeros(3), y, c=c), y, rtol=0, atol=1e-15)


def test_klein_round_trip_and_klein_distance():
    rng = np.random.default_rng(12)
    c = 1.3
    x = np.concatenate([points(rng, 20, c, r) for r in REGIMES])
    y = np.concatenate([points(rng, 20, c, r) for r in REGIMES])
    kx, ky = P.poincare_to_klein(x, c=c), P.poincare_to_klein(y, c=c)
    close(P.klein_to_poincare(kx, c=c), x, 1e-12, scale=1.0)
    # distance in the Klein model: arcosh((1 - c<kx,ky>) / sqrt((1 - c|kx|^2)(1 - c|ky|^2))) / sqrt(c)
    arg = (1 - c * np.sum(kx * ky, -1)) / np.sqrt((1 - c * np.sum(kx * kx, -1)) * (1 - c * np.sum(ky * ky, -1)))
    interior = slice(0, 40)
    close(P.poincare_distance(x, y, c=c)[interior], np.arccosh(arg)[interior] / math.sqrt(c), 1e-9)


# ---------------------------------------------------------------------------------------------
# Einstein midpoint and Fréchet mean
# ---------------------------------------------------------------------------------------------
def hyperboloid_centroid(x: np.ndarray, w: np.ndarray, c: float) -> np.ndarray:
    """Independent oracle: lift to the hyperboloid -x0^2 + |xs|^2 = -1/c, take the weighted sum,
    renormalise onto the hyperboloid and map back to the ball. Its Klein image is the Einstein midpoint."""
    sq = np.sum(x * x, -1, keepdims=True)
    x0 = (1 + c * sq) / (1 - c * sq) / math.sqrt(c)
    xs = 2 * x / (1 - c * sq)
    h0 = np.sum(w[..., None] * x0, axis=-2)
    hs = np.sum(w[..., None] * xs, axis=-2)
    norm = np.sqrt(h0**2 - np.sum(hs * hs, -1, keepdims=True)) * math.sqrt(c)
    h0, hs = h0 / norm, hs / norm
    return hs / (1 + math.sqrt(c) * h0)


@pytest.mark.parametrize("c", CURVATURES)
def test_einstein_midpoint_matches_geoopt_and_hyperboloid(c):
    rng = np.random.default_rng(13)
    x = np.stack([np.concatenate([points(rng, 4, c, r) for r in REGIMES]) for _ in range(6)])  # (6, 12, D)
    w = rng.uniform(0, 1, (6, 12))
    w[0, 3:] = 0.0
    ours = P.einstein_midpoint(x, w, c=c)
    assert ours.shape == (6, D)
    ref = np.stack([ball(c).weighted_midpoint(T(x[i]), T(w[i])).numpy() for i in range(6)])
    close(ours, ref, 1e-10, scale=1.0 / math.sqrt(abs(c)))
    close(ours, hyperboloid_centroid(x, w, abs(c)), 1e-10, scale=1.0 / math.sqrt(abs(c)))
    # uniform by default; weights are relative
    close(P.einstein_midpoint(x, None, c=c), P.einstein_midpoint(x, 3.0 * np.ones((6, 12)), c=c), 1e-14)


def test_einstein_midpoint_of_two_points_is_the_geodesic_midpoint():
    rng = np.random.default_rng(14)
    for c in (0.5, 2.0):
        x, y = points(rng, 10, c, "interior"), points(rng, 10, c, "interior")
        mid = P.exp_map(x, 0.5 * P.log_map(x, y, c=c), c=c)
        close(P.einstein_midpoint(np.stack([x, y], axis=-2), np.ones((10, 2)), c=c), mid, 1e-12)
        close(P.frechet_mean(np.stack([x, y], axis=-2), np.ones((10, 2)), c=c), mid, 1e-12)


def test_all_zero_weights_give_the_origin():
    x = points(np.random.default_rng(15), 5, 1.0, "interior")
    for f in (P.einstein_midpoint, P.frechet_mean):
        out = f(x, np.zeros(5), c=1.0)
        np.testing.assert_array_equal(out, np.zeros(D))


def frechet_objective(mu, x, w, c):
    return np.sum(w * P.poincare_distance(mu[..., None, :], x, c=c) ** 2, axis=-1)


@pytest.mark.parametrize("c", [0.1, 1.0, 2.5, -1.0])
@pytest.mark.parametrize("spread", [0.5, 3.0])
def test_frechet_mean_minimises_weighted_squared_distances(c, spread):
    rng = np.random.default_rng(16)
    u = rng.standard_normal((4, 15, D)) * spread
    x = P.to_poincare(u, c=c)
    w = rng.uniform(0, 1, (4, 15))
    mu = P.frechet_mean(x, w, c=c)
    f0 = frechet_objective(mu, x, w, c)
    for _ in range(40):
        v = rng.standard_normal(mu.shape) * 1e-3
        moved = P.exp_map(mu, v, c=c)
        assert np.all(frechet_objective(moved, x, w, c) >= f0 - 1e-12 * f0)
    # first-order condition, with geoopt's logmap: sum_i w_i log_mu(x_i) = 0
    grad = (T(w)[..., None] * ball(c).logmap(T(mu)[:, None, :], T(x))).sum(-2).numpy()
    lam = 2 / (1 - abs(c) * np.sum(mu * mu, -1, keepdims=True))
    assert np.max(np.abs(lam * grad)) < 1e-9 * np.max(w.sum(-1))
    # the Einstein midpoint is a different point with a larger objective (for spread data)
    if spread > 1:
        assert np.all(frechet_objective(P.einstein_midpoint(x, w, c=c), x, w, c) > f0)


def test_frechet_mean_one_hot_and_weighted_geodesic_point():
    rng = np.random.default_rng(17)
    c = 1.5
    x = np.concatenate([points(rng, 3, c, r) for r in REGIMES])
    for i in range(len(x)):
        w = np.zeros(len(x))
        w[i] = 1.0
        close(P.frechet_mean(x, w, c=c), x[i], 1e-12, scale=1.0)
    # two points, weights (1-t, t): the point a fraction t along the geodesic from a to b
    a, b = points(rng, 1, c, "interior")[0], points(rng, 1, c, "interior")[0]
    for t in (0.1, 0.3, 0.8):
        close(P.frechet_mean(np.stack([a, b]), np.array([1 - t, t]), c=c), P.exp_map(a, t * P.log_map(a, b, c=c), c=c), 1e-10)


def test_frechet_mean_converges_for_spread_points():
    """The plain Karcher step (t = 1) diverges here; the damped step converges."""
    rng = np.random.default_rng(18)
    x = P.to_poincare(rng.standard_normal((20, 3)) * 8.0, c=1.0)
    w = rng.uniform(0, 1, 20)
    mu = P.frechet_mean(x, w, c=1.0, iters=500)
    grad = (T(w)[:, None] * ball(1.0).logmap(T(mu), T(x))).sum(0).numpy()
    assert np.all(np.isfinite(mu))
    assert np.linalg.norm(grad) * P.lambda_x(mu) < 1e-9


# ---------------------------------------------------------------------------------------------
# array libraries and dtypes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tdtype", [torch.float32, torch.float64])
def test_torch_in_torch_out(tdtype):
    rng = np.random.default_rng(19)
    x = torch.as_tensor(points(rng, 6, 1.0, "interior"), dtype=tdtype)
    y = torch.as_tensor(points(rng, 6, 1.0, "interior"), dtype=tdtype)
    for out in (
        attnkit.mobius_add(x, y),
        attnkit.exp_map(x, y),
        attnkit.log_map(x, y),
        attnkit.poincare_distance(x, y),
        attnkit.project(3 * x),
        attnkit.to_poincare(y),
        attnkit.from_poincare(x),
        P.einstein_midpoint(x, None),
        P.frechet_mean(x, None),
    ):
        assert isinstance(out, torch.Tensor) and out.dtype == tdtype


def test_python_sequences_beside_torch_tensors_join_their_library():
    y = torch.tensor([0.3, 0.1], dtype=torch.float64)
    out = attnkit.mobius_add([0.1, 0.2], y)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    close(out, ball(1.0).mobius_add(T([0.1, 0.2]).float().double(), y), 1e-15)  # the list went through float32
    m = attnkit.HyperbolicAttention(2)
    res = m([0.1, 0.2], torch.tensor([[0.3, 0.1]], dtype=torch.float64), [[0.2, 0.2]])
    assert isinstance(res, torch.Tensor) and res.shape == (2,)


def test_autograd_is_finite_at_the_origin_and_on_the_diagonal():
    x = torch.tensor([[0.0, 0.0, 0.0], [0.3, -0.2, 0.1]], dtype=torch.float64, requires_grad=True)
    y = x.detach().clone().requires_grad_(True)
    loss = P.poincare_distance(x, y).sum() + P.to_poincare(x).sum() + P.from_poincare(x).sum() + P.log_map(x, y).sum()
    loss = loss + P.exp_map(x, torch.zeros_like(x)).sum() + P.einstein_midpoint(x, None).sum()
    loss.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    a = torch.tensor([0.3, 0.1, -0.2], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([-0.1, 0.2, 0.3], dtype=torch.float64, requires_grad=True)
    for f in (P.poincare_distance, P.log_map, P.exp_map, P.mobius_add):
        assert torch.autograd.gradcheck(lambda p, q, f=f: f(p, q, c=2.5), (a, b))
    # and the gradient of the distance agrees with geoopt's
    g1 = torch.autograd.grad(P.poincare_distance(a, b, c=2.5), (a, b))
    g2 = torch.autograd.grad(ball(2.5).dist(a, b), (a, b))
    for p, q in zip(g1, g2, strict=True):
        close(p, q, 1e-12)


def test_float32_within_1e5_of_float64_in_the_interior():
    """float32 inputs in the interior (r <= 0.9, lambda <= 5.3) agree with float64 to 1e-5 of the
    output scale. Near the boundary float32 cannot: 1 - c|x|^2 at r = 0.996 (the float32 margin) keeps
    only about 1e-5 of its relative accuracy, and the distance there is conditioned by lambda ~ 250."""
    rng = np.random.default_rng(20)
    c = 1.0
    x = np.concatenate([points(rng, 50, c, "interior"), points(rng, 10, c, "origin")])
    y = np.concatenate([points(rng, 50, c, "interior"), points(rng, 10, c, "origin")])
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    x, y = x32.astype(np.float64), y32.astype(np.float64)  # the same inputs, exactly
    # exp_map gets short tangent vectors (0.2 y: lengths below 1), so it stays in the interior too
    for f, b32, b64 in (
        (P.mobius_add, y32, y),
        (P.exp_map, 0.2 * y32, 0.2 * y),
        (P.log_map, y32, y),
        (P.poincare_distance, y32, y),
    ):
        out32, out64 = f(x32, b32, c=c), f(x, b64, c=c)
        assert out32.dtype == np.float32
        close(out32, out64, 1e-5)
    for f in (P.to_poincare, P.from_poincare):
        close(f(x32, c=c), f(x, c=c), 1e-5)
    w = rng.uniform(0, 1, 60).astype(np.float32)
    close(P.einstein_midpoint(x32, w), P.einstein_midpoint(x, w.astype(np.float64)), 1e-5)
    close(P.frechet_mean(x32, w), P.frechet_mean(x, w.astype(np.float64)), 1e-5)
    # near the boundary, relative to the conditioning lambda (float32 margin 4e-3 -> lambda <= 250)
    xb = P.project(points(rng, 50, c, "boundary"), eps=4e-3).astype(np.float32)
    d32 = P.poincare_distance(xb, y32[:50], c=c)
    d64 = P.poincare_distance(xb.astype(np.float64), y[:50], c=c)
    # lambda * eps32 absolute (with a factor 2): rounding |x|^2 in float32 moves 1 - c|x|^2 by about
    # eps32, a relative change of eps32 * lambda / 2 in it, which the distance (a log of it) inherits
    assert np.max(np.abs(d32 - d64)) <= 2 * 250 * np.finfo(np.float32).eps


def test_half_precision_and_lists():
    x = np.array([[0.1, 0.2], [0.3, -0.4]], dtype=np.float16)
    out = attnkit.mobius_add(x, x)
    assert out.dtype == np.float16
    close(out, attnkit.mobius_add(x.astype(np.float64), x.astype(np.float64)), 2e-3)
    d = attnkit.poincare_distance([0.1, 0.2], [0.0, 0.0])
    assert np.asarray(d).dtype == np.float32 and np.shape(d) == ()
    close(d, 2 * np.arctanh(np.hypot(0.1, 0.2)), 1e-6)
    xt = torch.tensor([[0.1, 0.2]], dtype=torch.bfloat16)
    assert attnkit.to_poincare(xt).dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
X = np.array([[0.1, 0.2], [0.3, 0.1]])


@pytest.mark.parametrize("c", [float("nan"), float("inf"), -float("inf"), "1", True, None])
@pytest.mark.parametrize(
    "call",
    [
        lambda c: attnkit.mobius_add(X, X, c=c),
        lambda c: attnkit.exp_map(X, X, c=c),
        lambda c: attnkit.log_map(X, X, c=c),
        lambda c: attnkit.poincare_distance(X, X, c=c),
        lambda c: attnkit.project(X, c=c),
        lambda c: attnkit.to_poincare(X, c=c),
        lambda c: attnkit.from_poincare(X, c=c),
        lambda c: P.einstein_midpoint(X, None, c=c),
        lambda c: P.frechet_mean(X, None, c=c),
    ],
)
def test_bad_curvature_raises_config_error_naming_c(call, c):
    with pytest.raises(ConfigError, match=r"^c:"):
        call(c)


@pytest.mark.parametrize("c", [0, 0.0, -0.0])
def test_zero_curvature_is_the_flat_limit(c):
    """c = 0 is κ = 0 of the stereographic model: Euclidean operations, distance 2|x - y| (metric 4 g_E)."""
    y = X[::-1] * 3.0  # far outside any unit ball: there is no ball at c = 0
    np.testing.assert_array_equal(attnkit.mobius_add(X, y, c=c), X + y)
    np.testing.assert_allclose(attnkit.poincare_distance(X, y, c=c), 2 * np.linalg.norm(X - y, axis=-1), rtol=1e-15)
    np.testing.assert_allclose(attnkit.exp_map(X, y, c=c), X + y, rtol=1e-15)
    np.testing.assert_allclose(attnkit.log_map(X, y, c=c), y - X, rtol=1e-15)
    np.testing.assert_array_equal(attnkit.to_poincare(y, c=c), y)
    np.testing.assert_array_equal(attnkit.from_poincare(y, c=c), y)
    np.testing.assert_array_equal(attnkit.project(y, c=c), y)
    np.testing.assert_allclose(P.einstein_midpoint(y, None, c=c), y.mean(0), rtol=1e-15)
    np.testing.assert_allclose(P.frechet_mean(y, None, c=c), y.mean(0), rtol=1e-14)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: attnkit.mobius_add([[1.0, 0.0]], X), "x"),
        (lambda: attnkit.mobius_add(X, [[0.8, 0.8]]), "y"),
        (lambda: attnkit.poincare_distance(X, [[0.8, 0.8]], c=1.0), "y"),
        (lambda: attnkit.poincare_distance(X, [[0.5, 0.5]], c=2.5), "y"),  # inside the unit ball, outside c=2.5's
        (lambda: attnkit.log_map([[2.0, 0.0]], X), "x"),
        (lambda: attnkit.exp_map([[2.0, 0.0]], X), "x"),
        (lambda: attnkit.from_poincare([1.0, 0.0]), "x"),
        (lambda: P.lambda_x([0.0, 1.0]), "x"),
        (lambda: P.einstein_midpoint([[0.0, 1.5]], None), "x"),
        (lambda: P.klein_to_poincare([1.0, 0.0]), "k"),
    ],
)
def test_points_outside_the_ball_raise(call, name):
    with pytest.raises(AttentionError, match=rf"^{name}: expected points strictly inside the Poincaré ball"):
        call()


@pytest.mark.parametrize(
    "call, error, name",
    [
        (lambda: attnkit.mobius_add(X, np.zeros((2, 3))), ShapeError, "y"),
        (lambda: attnkit.poincare_distance(np.zeros((3, 2)), np.zeros((2, 2))), ShapeError, "x, y"),
        (lambda: attnkit.exp_map(X, np.zeros(3)), ShapeError, "u"),
        (lambda: attnkit.project(np.float64(0.5)), ShapeError, "x"),
        (lambda: attnkit.to_poincare(np.zeros((2, 0))), ShapeError, "u"),
        (lambda: attnkit.mobius_add(np.array([[np.nan, 0.0]]), X), NonFiniteError, "x"),
        (lambda: attnkit.log_map(X, np.array([[0.1, np.inf]])), NonFiniteError, "y"),
        (lambda: attnkit.to_poincare(np.array([np.nan, 1.0])), NonFiniteError, "u"),
        (lambda: attnkit.exp_map(X, np.ones((2, 2), dtype=np.int64)), DTypeError, "u"),
        (lambda: attnkit.poincare_distance(X, torch.zeros(2, dtype=torch.float64)), DTypeError, "inputs"),
        (lambda: attnkit.project(X, eps=0.0), ConfigError, "eps"),
        (lambda: attnkit.project(X, eps=1.0), ConfigError, "eps"),
        (lambda: P.einstein_midpoint(X, [1.0, -1.0]), AttentionError, "weights"),
        (lambda: P.einstein_midpoint(X, [1.0, 1.0, 1.0]), ShapeError, "weights"),
        (lambda: P.einstein_midpoint(np.zeros(2), None), ShapeError, "x"),
        (lambda: P.einstein_midpoint(np.zeros((0, 2)), None), ShapeError, "x"),
        (lambda: P.frechet_mean(X, [np.nan, 1.0]), NonFiniteError, "weights"),
        (lambda: P.frechet_mean(X, None, iters=0), ConfigError, "iters"),
        (lambda: P.frechet_mean(X, None, tol=0.0), ConfigError, "tol"),
        (lambda: P.mobius_scalar_mul(float("nan"), X), ConfigError, "r"),
        (lambda: P.mobius_scalar_mul(np.ones(3), X), ShapeError, "r"),
        (lambda: P.pairwise_distance(X, np.zeros((2, 3))), ShapeError, "y"),
    ],
)
def test_bad_input_raises_naming_the_argument(call, error, name):
    with pytest.raises(error) as info:
        call()
    assert str(info.value).startswith(name)


def test_pairwise_distance_matches_elementwise():
    rng = np.random.default_rng(21)
    x = points(rng, 7, 2.0, "interior").reshape(7, D)
    y = np.concatenate([points(rng, 4, 2.0, "boundary"), x[:3]])
    pd = P.pairwise_distance(x, y, c=2.0)
    close(pd, P.poincare_distance(x[:, None, :], y[None, :, :], c=2.0), 1e-13)
    assert np.all(np.diag(pd[:3, 4:]) == 0.0)


def test_pairwise_blocks_match_unblocked(monkeypatch):
    rng = np.random.default_rng(22)
    x, y = points(rng, 37, 1.0, "interior"), points(rng, 11, 1.0, "interior")
    full = P.pairwise_distance(x, y)
    from attnkit.kernels import stereographic

    monkeypatch.setattr(stereographic, "_PAIR_BLOCK", 3 * 11 * D)  # 3 query rows per block (the kernel lives there)
    np.testing.assert_array_equal(P.pairwise_distance(x, y), full)
