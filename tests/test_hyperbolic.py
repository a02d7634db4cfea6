"""HyperbolicAttention against a plain float64 reference written here, geoopt, and its invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest

import attnkit
from attnkit import AttentionError, ConfigError, DisposedError, DTypeError, HyperbolicAttention, NonFiniteError, ShapeError
from attnkit.kernels import poincare as P
from attnkit.mechanisms import registry

torch = pytest.importorskip("torch")
geoopt = pytest.importorskip("geoopt")
pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


# ---------------------------------------------------------------------------------------------
# the plain float64 reference: loops over queries and keys, textbook formulas
# ---------------------------------------------------------------------------------------------
def ref_mobius_add(x, y, c):
    xy, x2, y2 = float(x @ y), float(x @ x), float(y @ y)
    return ((1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y) / (1 + 2 * c * xy + c * c * x2 * y2)


def ref_distance(x, y, c):
    z = math.sqrt(c) * float(np.linalg.norm(ref_mobius_add(-x, y, c)))
    return 2 / math.sqrt(c) * math.atanh(z)


def ref_einstein(values, alpha, c):
    """Gulcehre et al. 2019: Klein points, Lorentz factors, weighted average, back to the ball."""
    if alpha.sum() == 0:
        return np.zeros(values.shape[-1])
    klein = [2 * v / (1 + c * float(v @ v)) for v in values]
    gamma = [1 / math.sqrt(1 - c * float(k @ k)) for k in klein]
    m = sum(a * g * k for a, g, k in zip(alpha, gamma, klein, strict=True)) / sum(a * g for a, g in zip(alpha, gamma, strict=True))
    return m / (1 + math.sqrt(1 - c * float(m @ m)))


def ref_attention(q, k, v, c, T=1.0, mask=None, aggregation="einstein"):
    """q (Lq, D), k (Lk, D), v (Lk, Dv); mask (Lq, Lk) bool or float. Returns (out, weights); the
    Fréchet mean has no closed form, so for it ``out`` is NaN and tests check optimality instead."""
    c = abs(c)
    lq, lk = len(q), len(k)
    out = np.zeros((lq, v.shape[-1]))
    weights = np.zeros((lq, lk))
    for i in range(lq):
        logits = np.array([-ref_distance(q[i], k[j], c) / T for j in range(lk)])
        if mask is not None:
            if mask.dtype == bool:
                logits = np.where(mask[i], logits, -np.inf)
            else:
                logits = logits + mask[i]
        if np.all(np.isneginf(logits)):
            continue  # fully masked: zero weights, the origin
        e = np.exp(logits - logits.max())
        alpha = e / e.sum()
        weights[i] = alpha
        out[i] = ref_einstein(v, alpha, c) if aggregation == "einstein" else np.nan  # Fréchet: see frechet_gradient
    return out, weights


def ref_einstein_mp(values, alpha, c):
    """The Einstein midpoint in 50-digit arithmetic (for values near the boundary, where the float64
    textbook formula loses digits in 1 - c|k|^2 = ((1 - c|v|^2)/(1 + c|v|^2))^2)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    cc = mpmath.mpf(c)
    vs = [[mpmath.mpf(float(t)) for t in v] for v in values]
    klein = [[2 * t / (1 + cc * sum(s * s for s in v)) for t in v] for v in vs]
    gamma = [1 / mpmath.sqrt(1 - cc * sum(t * t for t in k)) for k in klein]
    den = sum(mpmath.mpf(float(a)) * g for a, g in zip(alpha, gamma, strict=True))
    m = [sum(mpmath.mpf(float(a)) * g * k[i] for a, g, k in zip(alpha, gamma, klein, strict=True)) / den for i in range(len(vs[0]))]
    root = mpmath.sqrt(1 - cc * sum(t * t for t in m))
    return np.array([float(t / (1 + root)) for t in m])


def frechet_gradient(mu, values, alpha, c):
    """Riemannian norm of sum_j alpha_j log_mu(v_j), with geoopt's logmap (0 at the Fréchet mean)."""
    b = geoopt.PoincareBall(c=torch.tensor(c, dtype=torch.float64))
    mu_t = torch.as_tensor(mu, dtype=torch.float64)
    g = (torch.as_tensor(alpha, dtype=torch.float64)[:, None] * b.logmap(mu_t, torch.as_tensor(values, dtype=torch.float64))).sum(0)
    return float(b.lambda_x(mu_t) * g.norm())


def ball_points(rng, shape, c, spread=0.6):
    return P.to_poincare(rng.standard_normal(shape) * spread, c=c)


def close(a, b, rtol, scale=None):
    a = np.asarray(a.detach() if hasattr(a, "detach") else a, dtype=np.float64)
    b = np.asarray(b.detach() if hasattr(b, "detach") else b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    s = scale if scale is not None else max(1.0, float(np.max(np.abs(b))) if b.size else 1.0)
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    assert err <= rtol * s, f"max abs error {err:.3e} > {rtol:.1e} * scale {s:.3g}"


# ---------------------------------------------------------------------------------------------
# against the reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("c", [0.1, 1.0, 2.5, -1.0])
@pytest.mark.parametrize("T", [1.0, 0.3])
def test_einstein_output_matches_reference(c, T):
    rng = np.random.default_rng(0)
    # radius fractions up to about tanh(2): the textbook reference keeps ~1e-13 there
    q, k = ball_points(rng, (5, 4), c), ball_points(rng, (7, 4), c)
    v = ball_points(rng, (7, 3), c)
    k[2] = q[1]  # a key equal to a query: distance exactly 0
    m = HyperbolicAttention(4, curvature=c, temperature=T)
    out = m(q, k, v)
    ref, w = ref_attention(q, k, v, c, T)
    assert out.shape == (5, 3) and out.dtype == np.float64
    close(out, ref, 1e-12, scale=1 / math.sqrt(abs(c)))
    close(m.attention_weights(q, k), w, 1e-12)


@pytest.mark.parametrize("c", [0.1, 1.0, 2.5])
def test_einstein_output_with_values_near_the_boundary_matches_mpmath(c):
    rng = np.random.default_rng(16)
    q, k = ball_points(rng, (3, 4), c), ball_points(rng, (6, 4), c)
    direction = rng.standard_normal((6, 3))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    v = direction * ((1 - 10.0 ** rng.uniform(-5, -2, (6, 1))) / math.sqrt(c))  # 1 - sqrt(c)|v| in [1e-5, 1e-2]
    m = HyperbolicAttention(4, curvature=c)
    out = m(q, k, v)
    w = m.attention_weights(q, k)
    ref = np.stack([ref_einstein_mp(v, w[i], c) for i in range(3)])
    # conditioning: the Lorentz factors come from 1 - c|v|^2 >= 2e-5, which carries eps/2e-5 ~ 1e-11 relative
    close(out, ref, 1e-10, scale=1 / math.sqrt(c))


@pytest.mark.parametrize("c", [0.5, 2.0, -1.0])
def test_frechet_output_is_the_weighted_frechet_mean(c):
    """First-order optimality, checked with geoopt's logmap and the reference weights:
    sum_j alpha_ij log_out_i(v_j) = 0 characterises the (unique) weighted Fréchet mean."""
    rng = np.random.default_rng(1)
    q, k = ball_points(rng, (3, 4), c), ball_points(rng, (6, 4), c)
    v = ball_points(rng, (6, 2), c, spread=2.0)
    m = HyperbolicAttention(4, curvature=c, temperature=0.5, aggregation="frechet")
    out = m(q, k, v)
    _, w = ref_attention(q, k, v, c, 0.5, aggregation="frechet")
    for i in range(3):
        assert frechet_gradient(out[i], v, w[i], abs(c)) < 1e-10
    # it is a different point from the Einstein midpoint, with a smaller weighted sum of squared distances
    ein = HyperbolicAttention(4, curvature=c, temperature=0.5)(q, k, v)
    for i in range(3):
        f = lambda mu, i=i: np.sum(w[i] * P.poincare_distance(mu, v, c=c) ** 2)  # noqa: E731
        assert f(out[i]) < f(ein[i])
        assert frechet_gradient(ein[i], v, w[i], abs(c)) > 1e-4


def test_batch_broadcasting_matches_per_item_reference():
    rng = np.random.default_rng(2)
    c = 1.3
    q = ball_points(rng, (2, 3, 5, 4), c)  # batch (2, 3)
    k = ball_points(rng, (3, 6, 4), c)  # batch (3,), shared over the first axis
    v = ball_points(rng, (2, 1, 6, 2), c)  # batch (2, 1)
    out = HyperbolicAttention(4, curvature=c)(q, k, v)
    assert out.shape == (2, 3, 5, 2)
    for a in range(2):
        for b in range(3):
            ref, _ = ref_attention(q[a, b], k[b], v[a, 0], c)
            close(out[a, b], ref, 1e-12, scale=1.0)


def test_single_query_is_a_row_of_the_batched_call_and_flat_spec_arrays_work():
    rng = np.random.default_rng(3)
    q, k, v = ball_points(rng, (4, 3), 1.0), ball_points(rng, (5, 3), 1.0), ball_points(rng, (5, 2), 1.0)
    m = HyperbolicAttention(3)
    full = m(q, k, v)
    for i in range(4):
        one = m(q[i], k, v)
        assert one.shape == (2,)
        np.testing.assert_allclose(one, full[i], rtol=0, atol=1e-14)
        np.testing.assert_allclose(m(q[i], k.reshape(-1), v.reshape(-1)), full[i], rtol=0, atol=1e-14)
        assert m.attention_weights(q[i], k).shape == (5,)


def test_defaults_self_attention():
    rng = np.random.default_rng(4)
    x = ball_points(rng, (6, 3), 1.0)
    m = HyperbolicAttention(3)
    np.testing.assert_array_equal(m(x), m(x, x, x))
    np.testing.assert_array_equal(m(x, x), m(x, x, x))
    ref, _ = ref_attention(x, x, x, 1.0)
    close(m(x), ref, 1e-12)


# ---------------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------------
def test_bool_mask_equals_dropping_the_keys_and_float_mask_adds():
    rng = np.random.default_rng(5)
    q, k, v = ball_points(rng, (4, 3), 1.0), ball_points(rng, (6, 3), 1.0), ball_points(rng, (6, 2), 1.0)
    m = HyperbolicAttention(3)
    keep = np.array([True, False, True, True, False, True])
    np.testing.assert_allclose(m(q, k, v, mask=keep), m(q, k[keep], v[keep]), rtol=0, atol=1e-15)
    mask2 = rng.random((4, 6)) > 0.4
    mask2[:, 0] = True
    ref, w = ref_attention(q, k, v, 1.0, mask=mask2)
    close(m(q, k, v, mask=mask2), ref, 1e-12)
    close(m.attention_weights(q, k, mask=mask2), w, 1e-12)
    fmask = np.where(mask2, 0.0, -np.inf)
    np.testing.assert_array_equal(m(q, k, v, mask=fmask), m(q, k, v, mask=mask2))
    additive = rng.normal(size=(4, 6))
    ref, _ = ref_attention(q, k, v, 1.0, mask=additive)
    close(m(q, k, v, mask=additive), ref, 1e-12)
    # a single query takes a (Lk,) mask
    np.testing.assert_allclose(m(q[0], k, v, mask=keep), m(q[0], k[keep], v[keep]), rtol=0, atol=1e-15)
    # batched key masks (B, 1, Lk)
    qb = ball_points(rng, (2, 4, 3), 1.0)
    mb = np.stack([keep, ~keep])[:, None, :]
    out = m(qb, k, v, mask=mb)
    np.testing.assert_allclose(out[1], m(qb[1], k[~keep], v[~keep]), rtol=0, atol=1e-15)


@pytest.mark.parametrize("aggregation", ["einstein", "frechet"])
def test_fully_masked_row_is_the_origin(aggregation):
    rng = np.random.default_rng(6)
    q, k, v = ball_points(rng, (3, 3), 1.0), ball_points(rng, (4, 3), 1.0), ball_points(rng, (4, 2), 1.0)
    mask = np.ones((3, 4), dtype=bool)
    mask[1] = False
    m = HyperbolicAttention(3, aggregation=aggregation)
    out = m(q, k, v, mask=mask)
    np.testing.assert_array_equal(out[1], np.zeros(2))
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(m.attention_weights(q, k, mask=mask)[1], np.zeros(4))
    np.testing.assert_allclose(out[0], m(q[0], k, v), rtol=0, atol=1e-13)  # Fréchet: within its tolerance
    tq = torch.tensor(q, requires_grad=True)
    res = m(tq, torch.tensor(k), torch.tensor(v), mask=torch.tensor(mask))
    res.sum().backward()
    assert torch.isfinite(tq.grad).all()


# ---------------------------------------------------------------------------------------------
# invariants (hypothesis)
# ---------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    lk=st.integers(1, 7),
    c=st.sampled_from([0.3, 1.0, 2.5]),
    T=st.floats(0.1, 5.0),
    aggregation=st.sampled_from(["einstein", "frechet"]),
)
def test_weights_sum_to_one_and_key_permutation_invariance(seed, lk, c, T, aggregation):
    rng = np.random.default_rng(seed)
    q, k = ball_points(rng, (3, 2), c, 1.0), ball_points(rng, (lk, 2), c, 1.0)
    v = ball_points(rng, (lk, 3), c, 1.0)
    m = HyperbolicAttention(2, curvature=c, temperature=T, aggregation=aggregation)
    w = m.attention_weights(q, k)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=0, atol=1e-12)
    assert np.all(w >= 0)
    perm = rng.permutation(lk)
    out = m(q, k, v)
    close(m(q, k[perm], v[perm]), out, 1e-10, scale=1.0)
    assert np.all(c * np.sum(out * out, -1) < 1)


def test_output_is_a_mean_of_the_values():
    """One key, or all values equal: the output is that value; a query nearest to one key far from the
    others at low temperature picks that key's value."""
    rng = np.random.default_rng(7)
    k = ball_points(rng, (5, 3), 1.0, 1.5)
    v = ball_points(rng, (5, 2), 1.0, 1.5)
    for agg in ("einstein", "frechet"):
        m = HyperbolicAttention(3, aggregation=agg)
        close(m(k[:2], k[:1], v[:1]), np.repeat(v[:1], 2, 0), 1e-12)
        close(m(k, k, np.repeat(v[:1], 5, 0)), np.repeat(v[:1], 5, 0), 1e-12)
        sharp = HyperbolicAttention(3, temperature=1e-3, aggregation=agg)
        close(sharp(k, k, v), v, 1e-9)


# ---------------------------------------------------------------------------------------------
# input space, curvature, libraries, dtypes
# ---------------------------------------------------------------------------------------------
def test_tangent_input_space_maps_with_to_poincare():
    rng = np.random.default_rng(8)
    q, k, v = rng.normal(size=(4, 3)) * 2, rng.normal(size=(5, 3)) * 2, rng.normal(size=(5, 2)) * 2
    c = 0.7
    tangent = HyperbolicAttention(3, curvature=c, input_space="tangent")
    ball = HyperbolicAttention(3, curvature=c)
    out = tangent(q, k, v)
    np.testing.assert_allclose(out, ball(P.to_poincare(q, c=c), P.to_poincare(k, c=c), P.to_poincare(v, c=c)), rtol=0, atol=1e-15)
    with pytest.raises(AttentionError, match="^query: expected points strictly inside"):
        ball(q, k, v)


def test_curvature_attribute_and_negative_spec_value():
    m = HyperbolicAttention(3, curvature=-2.0)
    assert m.curvature == -2.0 and m.c == 2.0
    assert HyperbolicAttention(3).curvature == 1.0
    rng = np.random.default_rng(9)
    q, k, v = ball_points(rng, (2, 3), 2.0), ball_points(rng, (4, 3), 2.0), ball_points(rng, (4, 3), 2.0)
    np.testing.assert_array_equal(m(q, k, v), HyperbolicAttention(3, curvature=2.0)(q, k, v))
    assert m.options()["curvature"] == -2.0
    assert "curvature=-2.0" in repr(m)
    d = m.poincare_distance(q[0], k[0])
    close(d, ref_distance(q[0], k[0], 2.0), 1e-12)
    close(m.from_poincare(m.to_poincare(q)), q, 1e-12)


@pytest.mark.parametrize("tdtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aggregation", ["einstein", "frechet"])
def test_torch_in_torch_out_with_gradients(tdtype, aggregation):
    rng = np.random.default_rng(10)
    q, k, v = ball_points(rng, (2, 4, 3), 1.0), ball_points(rng, (2, 5, 3), 1.0), ball_points(rng, (2, 5, 2), 1.0)
    m = HyperbolicAttention(3, aggregation=aggregation)
    tq = torch.tensor(q, dtype=tdtype, requires_grad=True)
    tk = torch.tensor(k, dtype=tdtype, requires_grad=True)
    tv = torch.tensor(v, dtype=tdtype, requires_grad=True)
    out = m(tq, tk, tv)
    assert isinstance(out, torch.Tensor) and out.dtype == tdtype and out.shape == (2, 4, 2)
    close(out, m(q, k, v), 1e-5 if tdtype == torch.float32 else 1e-12)
    out.sum().backward()
    for t in (tq, tk, tv):
        assert t.grad is not None and torch.isfinite(t.grad).all()
    # self-attention (a query equal to its key: distance 0) has finite gradients too
    x = torch.tensor(q, dtype=tdtype, requires_grad=True)
    m(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    w = m.attention_weights(tq, tk)
    assert isinstance(w, torch.Tensor) and w.dtype == tdtype


def test_gradcheck_float64():
    rng = np.random.default_rng(11)
    q = torch.tensor(ball_points(rng, (2, 3), 1.0), requires_grad=True)
    k = torch.tensor(ball_points(rng, (3, 3), 1.0), requires_grad=True)
    v = torch.tensor(ball_points(rng, (3, 2), 1.0), requires_grad=True)
    m = HyperbolicAttention(3, temperature=0.7)
    assert torch.autograd.gradcheck(lambda a, b, c: m(a, b, c), (q, k, v))


@pytest.mark.parametrize("aggregation", ["einstein", "frechet"])
def test_float32_within_1e5_of_the_float64_reference(aggregation):
    """Points with radius fraction up to tanh(2) ~ 0.96 (lambda <= 13): float32 is within 1e-5 of the
    ball radius. Much closer to the boundary float32 cannot be: see test_poincare's float32 test."""
    rng = np.random.default_rng(12)
    c = 1.0
    q, k = ball_points(rng, (6, 8), c, 0.4), ball_points(rng, (9, 8), c, 0.4)
    v = ball_points(rng, (9, 4), c, 0.4)
    q32, k32, v32 = (a.astype(np.float32) for a in (q, k, v))
    k32[3] = q32[0]
    m = HyperbolicAttention(8, aggregation=aggregation)
    out = m(q32, k32, v32)
    assert out.dtype == np.float32
    q64, k64, v64 = (a.astype(np.float64) for a in (q32, k32, v32))
    ref, w = ref_attention(q64, k64, v64, c, aggregation=aggregation)
    if aggregation == "frechet":  # the float64 path is itself checked for optimality above
        ref = HyperbolicAttention(8, aggregation="frechet")(q64, k64, v64)
        assert max(frechet_gradient(ref[i], v64, w[i], c) for i in range(6)) < 1e-10
    close(out, ref, 1e-5)
    close(m.attention_weights(q32, k32), w, 1e-5)


def test_float16_numpy_and_lists():
    rng = np.random.default_rng(13)
    q, k, v = (ball_points(rng, s, 1.0) for s in ((2, 3), (4, 3), (4, 2)))
    m = HyperbolicAttention(3)
    out = m(q.astype(np.float16), k.astype(np.float16), v.astype(np.float16))
    assert out.dtype == np.float16
    close(out, m(*(a.astype(np.float16).astype(np.float64) for a in (q, k, v))), 2e-3)
    lst = m(q.tolist(), k.tolist(), v.tolist())
    assert isinstance(lst, np.ndarray) and lst.dtype == np.float32


# ---------------------------------------------------------------------------------------------
# the Mechanism contract: registry, batch, async, dispose, benchmark
# ---------------------------------------------------------------------------------------------
def test_registry_batch_and_lifecycle():
    assert "hyperbolic" in registry.names()
    m = registry.create("hyperbolic", dim="3", curvature="-1", aggregation="FRECHET", frechet_tol="1e-9")
    assert isinstance(m, HyperbolicAttention) and m.c == 1.0 and m.aggregation == "frechet"
    rng = np.random.default_rng(14)
    qs = [ball_points(rng, (n, 3), 1.0) for n in (1, 3)]
    k, v = ball_points(rng, (4, 3), 1.0), ball_points(rng, (4, 2), 1.0)
    outs = m.forward_batch(qs, k, v)
    for q, o in zip(qs, outs, strict=True):
        np.testing.assert_array_equal(o, m(q, k, v))
    q, k, v = m.sample_inputs(16, np.random.default_rng(0))
    assert q.dtype == np.float32 and q.shape == (16, 3)
    res = m.benchmark(16, repeats=2, warmup=1)
    assert res.latency_ms > 0
    assert m.memory_usage().param_count == 0
    with HyperbolicAttention(3, input_space="tangent") as t:
        tq, tk, tv = t.sample_inputs(5)
        assert t(tq, tk, tv).shape == (5, 3)
    with pytest.raises(DisposedError):
        t(tq, tk, tv)
    m.dispose()
    for call in (lambda: m(q, k, v), lambda: m.attention_weights(q, k), lambda: m.to_poincare(q)):
        with pytest.raises(DisposedError):
            call()


# ---------------------------------------------------------------------------------------------
# bad input: the error type, and the message names the argument
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"curvature": float("nan")}, "curvature"),
        ({"curvature": float("inf")}, "curvature"),
        ({"curvature": "one"}, "curvature"),
        ({"kappa": float("nan")}, "kappa"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"aggregation": "mean"}, "aggregation"),
        ({"aggregation": None}, "aggregation"),
        ({"input_space": "euclidean"}, "input_space"),
        ({"frechet_iters": 0}, "frechet_iters"),
        ({"frechet_iters": 2.5}, "frechet_iters"),
        ({"frechet_tol": -1e-3}, "frechet_tol"),  # 0 is allowed: exactly frechet_iters steps
        ({"dim": 0}, "dim"),
        ({"dim": -3}, "dim"),
    ],
)
def test_bad_options_raise_config_error(kwargs, name):
    opts = {"dim": 3, **kwargs}
    with pytest.raises(ConfigError) as info:
        HyperbolicAttention(**opts)
    assert str(info.value).startswith(f"{name}:")


def _inputs():
    rng = np.random.default_rng(15)
    return ball_points(rng, (2, 3), 1.0), ball_points(rng, (4, 3), 1.0), ball_points(rng, (4, 2), 1.0)


Q, K, V = _inputs()
NAN_Q = Q.copy()
NAN_Q[0, 1] = np.nan
INF_V = V.copy()
INF_V[2, 0] = np.inf


@pytest.mark.parametrize(
    "args, kwargs, error, name",
    [
        ((np.array([[0.9, 0.9, 0.0]]), K, V), {}, AttentionError, "query"),
        ((Q, np.full((4, 3), 0.6), V), {}, AttentionError, "key"),
        ((Q, K, np.full((4, 2), 0.8)), {}, AttentionError, "value"),
        ((np.zeros((2, 4)), K, V), {}, ShapeError, "query"),
        ((Q, np.zeros((4, 2)), V), {}, ShapeError, "key"),
        ((Q, K, np.zeros((5, 2))), {}, ShapeError, "value"),
        ((Q, np.zeros((0, 3)), np.zeros((0, 2))), {}, ShapeError, "key"),
        ((Q, np.zeros(7), V), {}, ShapeError, "key"),
        ((Q, K, np.zeros(7)), {}, ShapeError, "value"),
        ((np.float64(0.1), K, V), {}, ShapeError, "query"),
        ((np.zeros((2, 2, 3)), np.zeros((3, 4, 3)), np.zeros((4, 2))), {}, ShapeError, "query, key, value"),
        ((Q, None, V), {}, ShapeError, "key"),
        ((NAN_Q, K, V), {}, NonFiniteError, "query"),
        ((Q, K, INF_V), {}, NonFiniteError, "value"),
        ((Q, np.where(np.eye(4, 3) > 0, np.nan, K), V), {}, NonFiniteError, "key"),
        ((Q.astype(np.int64), K, V), {}, DTypeError, "query"),
        ((Q, K, torch.zeros(4, 2)), {}, DTypeError, "inputs"),
        ((Q, K, V), {"mask": np.ones((3, 4), dtype=bool)}, ShapeError, "mask"),
        ((Q, K, V), {"mask": np.ones((2, 5), dtype=bool)}, ShapeError, "mask"),
        ((Q, K, V), {"mask": np.ones((2, 4), dtype=np.int64)}, DTypeError, "mask"),
        ((Q, K, V), {"mask": np.full((2, 4), np.nan)}, NonFiniteError, "mask"),
        ((Q[0], K, V), {"mask": np.ones(5, dtype=bool)}, ShapeError, "mask"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(args, kwargs, error, name):
    m = HyperbolicAttention(3)
    with pytest.raises(error) as info:
        m(*args, **kwargs)
    assert str(info.value).startswith(name), str(info.value)


def test_nan_is_rejected_even_without_the_finite_check():
    m = HyperbolicAttention(3, check_finite=False)
    with pytest.raises(AttentionError, match="^query:"):
        m(NAN_Q, K, V)
    with pytest.raises(AttentionError, match="^query:"):
        HyperbolicAttention(3, check_finite=False, input_space="tangent")(NAN_Q, K, V)


def test_top_level_names_resolve():
    for name in ("HyperbolicAttention", "poincare_distance", "mobius_add", "exp_map", "log_map", "to_poincare", "from_poincare", "project"):
        assert getattr(attnkit, name) is not None
