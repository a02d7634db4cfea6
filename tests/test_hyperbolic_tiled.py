"""The tiled Einstein hyperbolic attention (GEMM distances, NumPy float32 fast path and the generic
array-API path) against a plain float64 reference written here, at shapes spanning several tiles and
with points near the boundary of the ball."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attnkit import HyperbolicAttention
from attnkit.kernels import poincare as pc
from attnkit.kernels import poincare_numpy as pn

torch = pytest.importorskip("torch")


def ref_attention(q, k, v, c, T, mask=None):
    """float64 textbook formulas, vectorised: d = 2/sqrt(c) artanh(sqrt(c)|(-q) (+) k|) (Ganea et al.
    2018), softmax(-d/T + mask), Einstein midpoint through the Klein model (Gulcehre et al. 2019)."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    x2, y2 = (q * q).sum(-1)[:, None], (k * k).sum(-1)[None, :]
    xy = -(q @ k.T)  # <-q, k>
    a = 1 + 2 * c * xy + c * y2
    b = 1 - c * x2
    den = 1 + 2 * c * xy + c * c * x2 * y2
    # |a (-q) + b k|^2 expanded; then divided by den^2
    num2 = a * a * x2 + 2 * a * b * xy + b * b * y2
    z = np.sqrt(np.clip(c * num2, 0, None)) / den
    d = 2 / math.sqrt(c) * np.arctanh(np.clip(z, 0, 1 - 1e-16))
    logits = -d / T
    if mask is not None:
        logits = np.where(mask, logits, -np.inf) if mask.dtype == bool else logits + mask
    mx = logits.max(-1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0)
    w = np.exp(logits - mx)
    kl = 2 * v / (1 + c * (v * v).sum(-1, keepdims=True))
    gamma = 1 / np.sqrt(1 - c * (kl * kl).sum(-1, keepdims=True))
    num, dd = w @ (gamma * kl), w @ gamma
    m = np.where(dd > 0, num / np.where(dd > 0, dd, 1), 0)
    return m / (1 + np.sqrt(1 - c * (m * m).sum(-1, keepdims=True)))


def points(rng, n, d, c, boundary=0.0):
    """Points of the ball; a fraction ``boundary`` of them at 1 - sqrt(c)|x| in [5e-3, 2e-2] (inside
    float32's projection margin of 4e-3)."""
    x = np.asarray(pc.to_poincare(rng.standard_normal((n, d)) * 0.5, c=c))
    near = rng.random(n) < boundary
    u = rng.standard_normal((int(near.sum()), d))
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    x[near] = u * ((1 - 10.0 ** rng.uniform(-2.3, -1.7, (len(u), 1))) / math.sqrt(c))
    return x.astype(np.float32)


def close(a, b, tol, c):
    err = float(np.max(np.abs(np.asarray(a, dtype=np.float64) - b)))
    assert err <= tol / math.sqrt(c), f"max abs error {err:.3e} > {tol:.1e} / sqrt(c)"


SHAPES = [(300, 700, 8, 5), (130, 2100, 16, 3)]  # several fast-path tiles each (rows = 65536 // Lk)


@pytest.mark.parametrize("lq, lk, d, dv", SHAPES)
@pytest.mark.parametrize("c, T", [(1.0, 1.0), (0.5, 0.7), (2.0, 1 / math.sqrt(2.0))])
@pytest.mark.parametrize("path", ["numpy", "generic", "torch"])
@pytest.mark.parametrize("values_near_boundary", [False, True])
def test_float32_paths_match_float64_reference_near_the_boundary(lq, lk, d, dv, c, T, path, values_near_boundary, monkeypatch):
    """Queries and keys near the boundary, and keys equal to queries (distance 0, where the GEMM form
    cancels): the weights are as good as float32 allows and the output is within 1e-5 of the ball's
    radius (3e-5 on torch). Values near the boundary too make the Klein map ``1/sqrt(1 - c|k|^2)`` amplify the float32
    rounding of the aggregation GEMM itself (the subtraction-based path before this one was off by
    6e-5 here; torch's CPU sgemm accumulates less accurately than OpenBLAS's): 2e-4, 1e-3 for torch."""
    rng = np.random.default_rng(lq + lk)
    q, k = points(rng, lq, d, c, 0.2), points(rng, lk, d, c, 0.2)
    v = points(rng, lk, dv, c, 0.3 if values_near_boundary else 0.0)
    k[: lq // 2] = q[: lq // 2]
    ref = ref_attention(q, k, v, c, T)
    m = HyperbolicAttention(d, curvature=c, temperature=T)
    calls = []
    real = pn.einstein_attention_numpy
    monkeypatch.setattr(pn, "einstein_attention_numpy", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    if path == "generic":  # several generic tiles, the NumPy fast path declined
        monkeypatch.setattr(pn, "einstein_attention_numpy", lambda *a, **kw: None)
        monkeypatch.setattr(pc, "_ATTN_TILE", 40 * lk)
    if path == "torch":
        monkeypatch.setattr(pc, "_ATTN_TILE", 64 * lk)
        out = m(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v)).numpy()
    else:
        out = m(q, k, v)
    assert out.dtype == np.float32 and out.shape == (lq, dv)
    if path == "numpy":
        assert calls  # the fast path ran
    tol = (3e-5 if path == "torch" else 1e-5) if not values_near_boundary else 1e-3 if path == "torch" else 2e-4
    close(out, ref, tol, c)


def test_masks_batches_and_fully_masked_rows_on_both_paths(monkeypatch):
    rng = np.random.default_rng(3)
    c, lq, lk, d = 1.0, 200, 500, 8
    q = np.stack([points(rng, lq, d, c, 0.1) for _ in range(2)])  # (2, Lq, D)
    k, v = points(rng, lk, d, c, 0.1), points(rng, lk, 4, c, 0.1)  # broadcast over the batch
    keep = rng.random((2, lq, lk)) < 0.7
    keep[0, 5] = False  # a fully masked query: the origin
    bias = np.where(keep, rng.standard_normal((2, lq, lk)), -np.inf).astype(np.float32)
    for T, mask in ((1.0, keep), (0.6, keep), (1.0, bias), (0.6, bias)):
        m = HyperbolicAttention(d, temperature=T)
        ref = np.stack([ref_attention(q[b], k, v, c, T, mask[b]) for b in range(2)])
        fast = m(q, k, v, mask=mask)
        with monkeypatch.context() as mp:
            mp.setattr(pn, "einstein_attention_numpy", lambda *a, **kw: None)
            mp.setattr(pc, "_ATTN_TILE", 2 * 64 * lk)
            generic = m(q, k, v, mask=mask)
        np.testing.assert_array_equal(fast[0, 5], np.zeros(4, np.float32))
        close(fast, ref, 2e-5, c)
        close(generic, ref, 2e-5, c)


def test_float64_tiles_match_the_reference_to_1e12(monkeypatch):
    rng = np.random.default_rng(4)
    c = 1.5
    q, k, v = (points(rng, n, 6, c, 0.2).astype(np.float64) for n in (90, 400, 400))
    k[:30] = q[:30]
    monkeypatch.setattr(pc, "_ATTN_TILE", 16 * 400)  # six tiles
    out = HyperbolicAttention(6, curvature=c)(q, k, v)
    close(out, ref_attention(q, k, v, c, 1.0), 1e-11, c)


def test_weights_and_output_agree_with_the_untiled_path():
    """attention_weights (one untiled distance matrix) and forward (tiles) describe the same attention."""
    rng = np.random.default_rng(5)
    q, k, v = points(rng, 150, 8, 1.0, 0.1), points(rng, 600, 8, 1.0, 0.1), points(rng, 600, 3, 1.0, 0.1)
    m = HyperbolicAttention(8)
    w = np.asarray(m.attention_weights(q, k), dtype=np.float64)
    mid = pc.einstein_aggregate(w, v.astype(np.float64), 1.0, 1e-5, np)
    close(m(q, k, v), mid, 1e-5, 1.0)


def test_the_generic_kernel_traces_under_jax_jit(monkeypatch):
    """No Python branch on data values: jax.jit traces the tiled kernel (float32 without x64: the
    distances come from the differences) and agrees with the reference."""
    jax = pytest.importorskip("jax")
    xp = pytest.importorskip("array_api_compat").array_namespace(jax.numpy.zeros(1))
    rng = np.random.default_rng(6)
    q, k, v = points(rng, 40, 4, 1.0, 0.2), points(rng, 90, 4, 1.0, 0.2), points(rng, 90, 3, 1.0)
    monkeypatch.setattr(pc, "_ATTN_TILE", 16 * 90)  # three tiles
    f = jax.jit(lambda a, b, c: pc.einstein_attention(a, b, c, 1.0, 0.8, None, 4e-3, xp))
    close(np.asarray(f(q, k, v)), ref_attention(q, k, v, 1.0, 0.8), 1e-5, 1.0)
