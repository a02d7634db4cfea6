"""LinearAttention against plain float64 references, torch, FAVOR+ vs softmax, causal chunking, stability.

The reference below is written plainly and shares no code with attnkit's kernel: the feature maps
straight from their papers, then the quadratic form

    A = phi(Q) phi(K)^T  (times the bottom-right causal mask / key mask),   out = A V / (A 1 + eps)

in float64, which is what the O(L) kernel must equal.
"""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
import torch
from conftest import TOL32, assert_close, lower_right_mask, ref_seq_attention, rel_err, seq_inputs
from threadpoolctl import threadpool_limits

import attnkit
from attnkit import LinearAttention
from attnkit.kernels import linear as K
from attnkit.mechanisms import registry
from attnkit.mechanisms._sequence import prepare_sequence

MAPS = ["elu", "relu", "dpfp", "favor"]
TINY = 1e-30  # an eps that does not show at float64 precision, for exact comparisons


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """Small GEMMs on the shared 2-core machine are much faster without BLAS threads fighting."""
    with threadpool_limits(1, user_api="blas"):
        yield


# ---------------------------------------------------------------------------- the reference
def phi_ref(x: np.ndarray, fm: str, nu: int = 1, w: np.ndarray | None = None) -> np.ndarray:
    """The feature maps, float64, as the papers write them."""
    x = np.asarray(x, dtype=np.float64)
    if fm == "elu":  # Katharopoulos et al. 2020: elu(x) + 1
        return np.where(x > 0, x + 1.0, np.exp(x))
    if fm == "relu":
        return np.maximum(x, 0.0)
    if fm == "dpfp":  # Schlag et al. 2021
        xx = np.concatenate([np.maximum(x, 0.0), np.maximum(-x, 0.0)], axis=-1)
        return np.concatenate([xx * np.roll(xx, i, axis=-1) for i in range(1, nu + 1)], axis=-1)
    if fm == "favor":  # Choromanski et al. 2021, positive random features, x scaled by D^-1/4
        d = x.shape[-1]
        xs = x * d**-0.25
        return np.exp(xs @ np.asarray(w).T - 0.5 * np.sum(xs * xs, axis=-1, keepdims=True)) / np.sqrt(w.shape[0])
    raise AssertionError(fm)


def ref_linear(q, k, v, fm, *, causal=False, eps=1e-6, nu=1, w=None, keep=None, key_weight=None):
    """float64 linear attention in the sequence layout ``(..., L, H, D)``, quadratic form.

    ``keep``: bool key mask broadcasting to ``(..., H, 1, Lk)``; ``key_weight``: multiplies each key's
    features (a float key mask ``b`` is ``key_weight = exp(b)``).
    """
    qh, kh, vh = (np.moveaxis(np.asarray(x, dtype=np.float64), -3, -2) for x in (q, k, v))
    a = phi_ref(qh, fm, nu, w) @ np.swapaxes(phi_ref(kh, fm, nu, w), -1, -2)  # (..., H, Lq, Lk)
    if causal:
        a = a * lower_right_mask(qh.shape[-2], kh.shape[-2])
    if keep is not None:
        a = a * np.asarray(keep, dtype=np.float64)
    if key_weight is not None:
        a = a * key_weight
    out = (a @ vh) / (a.sum(axis=-1, keepdims=True) + eps)
    return np.moveaxis(out, -3, -2)


def make(fm: str, dim: int, heads: int, **kw) -> LinearAttention:
    if fm == "dpfp":
        kw.setdefault("nu", 2)
    if fm == "favor":
        kw.setdefault("seed", 3)
        kw.setdefault("nb_features", 24)
    return LinearAttention(dim, heads, feature_map=fm, **kw)


def ref_for(attn: LinearAttention, q, k, v, **kw):
    w = attn.parameters().get("favor_projection")
    return ref_linear(q, k, v, attn.feature_map, causal=attn.causal, eps=attn.eps, nu=attn.nu, w=w, **kw)


# ---------------------------------------------------------------------------- equality with the reference
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("fm", MAPS)
def test_float64_matches_reference(rng, fm, causal):
    q, k, v = seq_inputs(rng, 37, 37, 2, 8, dv=5)
    attn = make(fm, 8, 2, causal=causal, eps=TINY, chunk_size=8)
    out = attn(q, k, v)
    assert out.shape == (37, 2, 5) and out.dtype == np.float64
    assert rel_err(out, ref_for(attn, q, k, v)) < 1e-12


@pytest.mark.parametrize("causal", [False, True])
def test_eps_is_the_papers_when_features_are_not_tiny(rng, causal):
    """Every feature product >= 1 here, so ``eps`` enters exactly as in ``num / (den + eps)``; a large eps shows it."""
    q, k, v = (np.abs(x) for x in seq_inputs(rng, 30, 30, 2, 4))
    attn = LinearAttention(4, 2, eps=0.05, causal=causal, chunk_size=8)
    assert rel_err(attn(q, k, v), ref_linear(q, k, v, "elu", causal=causal, eps=0.05)) < 1e-12
    assert rel_err(attn(q, k, v), ref_linear(q, k, v, "elu", causal=causal, eps=TINY)) > 1e-4


@pytest.mark.parametrize("fm", MAPS)
@pytest.mark.parametrize("lq,lk", [(13, 29), (29, 13), (1, 40), (40, 1), (64, 64)])
@pytest.mark.parametrize("chunk", [1, 4, 7, 16, 64, 100])
def test_causal_chunked_equals_naive(rng, fm, lq, lk, chunk):
    """Chunk sizes that divide L and that do not, larger than L, Lq != Lk both ways (bottom-right)."""
    q, k, v = seq_inputs(rng, lq, lk, 2, 4, dv=3)
    attn = make(fm, 4, 2, causal=True, eps=TINY, chunk_size=chunk)
    out = attn(q, k, v)
    ref = ref_for(attn, q, k, v)
    assert rel_err(out, ref) < 1e-11
    if lq > lk:  # queries that see no key give zeros, not NaN
        assert np.all(out[: lq - lk] == 0.0)


@pytest.mark.parametrize("fm", MAPS)
def test_numpy_tiles_and_threads_equal_the_generic_path(rng, fm, monkeypatch):
    """The NumPy driver (tiles carried through the state, one task per batch and head) = whole-array path."""
    q = rng.standard_normal((2, 150, 3, 8))
    k = rng.standard_normal((1, 170, 3, 8))
    v = rng.standard_normal((170, 3, 5))
    keep = rng.random((2, 1, 1, 170)) > 0.2
    w = K.orthogonal_random_features(40, 8, rng)
    s = prepare_sequence(q, k, v, None, heads=3, dim=8)
    km = np.swapaxes(keep, -1, -2)
    monkeypatch.setattr(K, "_numpy_tile", lambda *a: 32)
    for causal in (False, True):
        kw = dict(xp=s.xp, feature_map=fm, causal=causal, chunk_size=8, key_mask=km, nu=2, projection=w, eps=TINY)
        generic = K.linear_attention(s.q, s.k, s.v, backend="generic", **kw)
        tiled = K.linear_attention(s.q, s.k, s.v, backend="numpy", **kw)
        assert tiled.shape == generic.shape == (2, 3, 150, 5)
        assert rel_err(tiled, generic) < 1e-12
        ref = ref_linear(q, k, v, fm, causal=causal, eps=TINY, nu=2, w=w, keep=keep)
        assert rel_err(s.finish(tiled), ref) < 1e-11


@pytest.mark.parametrize("fm", MAPS)
def test_float32_within_tolerance_and_dtype_kept(rng, fm):
    q, k, v = seq_inputs(rng, 50, 50, 2, 8, dtype=np.float32)
    for causal in (False, True):
        attn = make(fm, 8, 2, causal=causal, chunk_size=16, eps=1e-10)
        out = attn(q, k, v)
        assert out.dtype == np.float32
        assert_close(out, ref_for(attn, q, k, v), TOL32)


def test_batch_dimensions_broadcast(rng):
    q = rng.standard_normal((3, 1, 10, 2, 4))
    k = rng.standard_normal((4, 12, 2, 4))
    v = rng.standard_normal((12, 2, 4))
    for causal in (False, True):
        attn = LinearAttention(4, 2, causal=causal, eps=TINY)
        out = attn(q, k, v)
        assert out.shape == (3, 4, 10, 2, 4)
        qb = np.broadcast_to(q, (3, 4, 10, 2, 4))
        kb, vb = np.broadcast_to(k, (3, 4, 12, 2, 4)), np.broadcast_to(v, (3, 4, 12, 2, 4))
        assert rel_err(out, ref_linear(qb, kb, vb, "elu", causal=causal, eps=TINY)) < 1e-12
        assert rel_err(out[2, 1], attn(q[2, 0], k[1], v)) < 1e-14  # one item equals the batched row


def test_self_attention_default_and_flat_spec_arrays(rng):
    attn = LinearAttention(4, 2, eps=TINY)
    x = rng.standard_normal((9, 2, 4)).astype(np.float32)
    assert rel_err(attn(x), attn(x, x, x)) == 0.0
    flat = attn(x.reshape(-1), x.reshape(-1), x.reshape(-1))
    assert flat.shape == (9 * 2 * 4,) and flat.dtype == np.float32
    np.testing.assert_array_equal(flat, attn(x, x, x).reshape(-1))
    keep = np.arange(9) % 3 != 0
    np.testing.assert_array_equal(attn(x.reshape(-1), mask=keep), attn(x, mask=keep).reshape(-1))


def test_key_permutation_invariance(rng):
    q, k, v = seq_inputs(rng, 11, 15, 2, 4)
    perm = rng.permutation(15)
    for fm in MAPS:
        attn = make(fm, 4, 2)
        assert rel_err(attn(q, k[perm], v[perm]), attn(q, k, v)) < 1e-13


# ---------------------------------------------------------------------------- masks
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("fm", MAPS)
def test_key_masks_in_every_accepted_shape(rng, fm, causal):
    b, lq, lk, h, d = 2, 7, 9, 3, 4
    q, k, v = seq_inputs(rng, lq, lk, h, d, batch=(b,))
    attn = make(fm, d, h, causal=causal, eps=TINY)
    keep_bk = rng.random((b, lk)) > 0.3
    keep_bk[:, -1] = True
    ref = ref_for(attn, q, k, v, keep=keep_bk[:, None, None, :])
    assert rel_err(attn(q, k, v, mask=keep_bk), ref) < 1e-12  # (*batch, Lk)
    assert rel_err(attn(q, k, v, mask=keep_bk[:, None, None, :]), ref) < 1e-12  # (..., H, 1, Lk)
    as_float = np.where(keep_bk, 0.0, -np.inf)[:, None, None, :]
    assert rel_err(attn(q, k, v, mask=as_float), ref) < 1e-12
    # rows all equal: the attention-score layout of a padding mask is a key mask in disguise
    score_layout = np.broadcast_to(keep_bk[:, None, None, :], (b, h, lq, lk))
    assert rel_err(attn(q, k, v, mask=score_layout), ref) < 1e-12
    keep_k = rng.random(lk) > 0.3
    keep_k[0] = True
    assert rel_err(attn(q, k, v, mask=keep_k), ref_for(attn, q, k, v, keep=keep_k)) < 1e-12  # (Lk,)
    keep_h = rng.random((h, 1, lk)) > 0.3
    keep_h[..., 0] = True
    assert rel_err(attn(q, k, v, mask=keep_h), ref_for(attn, q, k, v, keep=keep_h)) < 1e-12  # per head


def test_padding_mask_from_create_mask_and_float_key_bias(rng):
    q, k, v = seq_inputs(rng, 8, 8, 2, 4)
    attn = LinearAttention(4, 2, feature_map="favor", nb_features=32, seed=0, eps=TINY)
    pad = attnkit.create_mask("padding", 8, positions=[2, 5])
    keep = np.ones(8, dtype=bool)
    keep[[2, 5]] = False
    assert rel_err(attn(q, k, v, mask=pad), ref_for(attn, q, k, v, keep=keep)) < 1e-12
    bias = rng.standard_normal(8)
    # a float key mask multiplies the key's weight by exp(bias): for favor, an additive bias on the scores
    assert rel_err(attn(q, k, v, mask=bias), ref_for(attn, q, k, v, key_weight=np.exp(bias))) < 1e-12


def test_all_keys_masked_gives_zeros_not_nan(rng):
    q, k, v = seq_inputs(rng, 5, 6, 2, 4)
    for fm in MAPS:
        for causal in (False, True):
            out = make(fm, 4, 2, causal=causal)(q, k, v, mask=np.zeros(6, dtype=bool))
            assert np.all(out == 0.0)


def test_relu_query_without_positive_feature_gives_zeros(rng):
    q, k, v = seq_inputs(rng, 4, 6, 1, 3)
    q[1] = -np.abs(q[1])  # phi(q_1) = 0 exactly: no attention mass, the map's exact value
    out = LinearAttention(3, 1, feature_map="relu")(q, k, v)
    assert np.all(out[1] == 0.0) and np.all(np.isfinite(out))


# ---------------------------------------------------------------------------- torch
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fm", MAPS)
def test_torch_in_torch_out_equal_to_numpy(rng, fm, dtype):
    q, k, v = seq_inputs(rng, 21, 19, 2, 4, dv=3, batch=(2,))
    keep = rng.random((2, 19)) > 0.25
    keep[:, 0] = True
    for causal in (False, True):
        attn = make(fm, 4, 2, causal=causal, chunk_size=5)
        tq, tk, tv = (torch.from_numpy(x).to(dtype) for x in (q, k, v))
        out = attn(tq, tk, tv, mask=torch.from_numpy(keep))
        assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.shape == (2, 21, 2, 3)
        ref = attn(*(x.astype(np.float64) for x in (q, k, v)), mask=keep)
        assert rel_err(out, ref) < (1e-12 if dtype == torch.float64 else TOL32)


def test_half_precision_keeps_the_dtype(rng):
    q, k, v = seq_inputs(rng, 20, 20, 2, 8)
    for fm in MAPS:
        for causal in (False, True):
            attn = make(fm, 8, 2, causal=causal, chunk_size=8)
            ref = attn(q, k, v)
            o16 = attn(*(x.astype(np.float16) for x in (q, k, v)))  # NumPy computes in float32, returns float16
            assert o16.dtype == np.float16 and rel_err(o16, ref) < 5e-3
            t16 = attn(*(torch.from_numpy(x).to(torch.float16) for x in (q, k, v)))
            assert t16.dtype == torch.float16 and rel_err(t16, ref) < 2e-2


def test_torch_vectorised_and_stepwise_prefix_scans_agree(rng, monkeypatch):
    """Outside NumPy the causal prefix is a cumulative sum unless the scales spread widely; both are exact."""
    q, k, v = (torch.from_numpy(x) for x in seq_inputs(rng, 40, 40, 2, 4))
    attn = LinearAttention(4, 2, feature_map="favor", nb_features=16, seed=1, causal=True, chunk_size=4, eps=TINY)
    monkeypatch.setattr(K, "_SCAN_RANGE", {4: np.inf, 8: np.inf})
    vectorised = attn(q, k, v)
    monkeypatch.setattr(K, "_SCAN_RANGE", {4: -np.inf, 8: -np.inf})
    stepwise = attn(q, k, v)
    ref = ref_for(attn, q.numpy(), k.numpy(), v.numpy())
    assert rel_err(vectorised, ref) < 1e-12 and rel_err(stepwise, ref) < 1e-12


@pytest.mark.parametrize("fm", MAPS)
def test_torch_autograd_gradients_are_right(rng, fm):
    """Gradients through the stabilised, chunked kernel match finite differences (torch.autograd.gradcheck)."""
    q, k, v = (torch.from_numpy(x).requires_grad_(True) for x in seq_inputs(rng, 6, 7, 1, 3))
    for causal in (False, True):
        attn = make(fm, 3, 1, causal=causal, chunk_size=4)
        assert torch.autograd.gradcheck(attn.forward, (q, k, v), eps=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------- FAVOR+ estimates softmax
def test_favor_estimates_softmax_and_error_shrinks_with_features(rng):
    """E[phi(q).phi(k)] = exp(q.k / sqrt(D)), so with many features FAVOR+ approaches exact softmax attention."""
    d, h, length = 16, 2, 64
    q = rng.standard_normal((length, h, d)) * 0.5
    k = rng.standard_normal((length, h, d)) * 0.5
    v = rng.standard_normal((length, h, d))
    for causal in (False, True):
        exact = ref_seq_attention(q, k, v, causal=causal)  # softmax(q k^T / sqrt(D)) v
        uniform = ref_linear(np.ones_like(q), np.ones_like(k), v, "relu", causal=causal, eps=0.0)
        signal = np.linalg.norm(exact - uniform)  # what distinguishes softmax from plain averaging
        errs = {}
        for m in (128, 1024, 8192):
            e = [np.linalg.norm(LinearAttention(d, h, feature_map="favor", nb_features=m, seed=s, causal=causal)(q, k, v) - exact) for s in range(3)]
            errs[m] = float(np.mean(e))
        assert errs[128] > errs[1024] > errs[8192], errs
        assert errs[8192] < 0.4 * errs[128], errs  # ~ 1/sqrt(m): 8x fewer features, ~2.8x more error
        assert errs[8192] < 0.2 * signal, (errs, signal)  # captures the softmax structure, not just the mean
        assert errs[8192] < 0.05 * np.linalg.norm(exact)


def test_orthogonal_random_features_are_block_orthogonal_with_chi_norms():
    w = K.orthogonal_random_features(3 * 16 + 5, 16, np.random.default_rng(0))
    assert w.shape == (53, 16)
    for b in range(3):
        block = w[16 * b : 16 * (b + 1)]
        unit = block / np.linalg.norm(block, axis=1, keepdims=True)
        np.testing.assert_allclose(unit @ unit.T, np.eye(16), atol=1e-12)
    norms = np.linalg.norm(K.orthogonal_random_features(8192, 16, np.random.default_rng(1)), axis=1)
    # chi(16): mean sqrt(2) Gamma(8.5) / Gamma(8) (~3.94), variance 16 - mean^2 (~0.49); standard errors ~0.008
    mean = math.sqrt(2.0) * math.exp(math.lgamma(8.5) - math.lgamma(8.0))
    assert abs(norms.mean() - mean) < 0.04 and abs(norms.var() - (16.0 - mean**2)) < 0.04


def test_favor_projection_seeded_fixed_and_redrawable(rng):
    q, k, v = seq_inputs(rng, 10, 10, 2, 8)
    a, b = LinearAttention(8, 2, feature_map="favor", seed=7), LinearAttention(8, 2, feature_map="favor", seed=7)
    assert a.nb_features == K.default_nb_features(8) == a.feature_dim == 17  # ceil(8 ln 8)
    assert LinearAttention(64, feature_map="favor").nb_features == 267
    np.testing.assert_array_equal(a(q, k, v), b(q, k, v))
    np.testing.assert_array_equal(a(q, k, v), a(q, k, v))  # fixed per instance
    assert a.parameters()["favor_projection"].shape == (17, 8)
    assert a.memory_usage().param_count == 17 * 8
    before = a(q, k, v)
    a.redraw_features()
    assert not np.allclose(a(q, k, v), before)
    assert not np.allclose(LinearAttention(8, 2, feature_map="favor", seed=8)(q, k, v), before)


def test_feature_dimensions():
    assert LinearAttention(8, feature_map="elu").feature_dim == 8
    assert LinearAttention(8, feature_map="relu").feature_dim == 8
    assert LinearAttention(8, feature_map="dpfp", nu=3).feature_dim == 2 * 8 * 3
    x = np.random.default_rng(0).standard_normal((5, 8))
    import array_api_compat.numpy as xnp

    assert K.dpfp_log_features(x, xnp, 3).shape == (5, 48)
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(np.exp(K.dpfp_log_features(x, xnp, 3)), phi_ref(x, "dpfp", 3), rtol=1e-13, atol=0)
        np.testing.assert_allclose(np.exp(K.elu_log_features(x, xnp)), phi_ref(x, "elu"), rtol=1e-14)


# ---------------------------------------------------------------------------- no underflow, no NaN
def _visible_support(q, k, fm, causal, nu=2):
    """Whether the exact denominator of each (query, head) is positive, from the features' support alone."""
    if fm in ("elu", "favor"):
        pos = np.ones((q.shape[-3], q.shape[-2], k.shape[-3]), dtype=bool)
    else:
        sq = np.moveaxis(phi_ref(q, fm, nu) > 0, -3, -2).astype(float)
        sk = np.moveaxis(phi_ref(k, fm, nu) > 0, -3, -2).astype(float)
        pos = np.moveaxis((sq @ np.swapaxes(sk, -1, -2)) > 0, -3, -2)  # (Lq, H, Lk)
    if causal:
        pos = pos & lower_right_mask(q.shape[-3], k.shape[-3])[:, None, :]
    return pos.any(axis=-1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("magnitude", [1e3, 1e4])
@pytest.mark.parametrize("fm", MAPS)
def test_large_magnitude_inputs_never_zero_the_denominator(rng, fm, magnitude, dtype):
    """With v = 1 the output is den / (den + eps): 1 unless the denominator vanished (the upstream bug)."""
    q, k, _ = seq_inputs(rng, 48, 48, 2, 8, dtype=dtype)
    q, k = q * magnitude, k * magnitude
    v = np.ones((48, 2, 3), dtype=dtype)
    for causal in (False, True):
        # causal favor: a shared key scale inside a chunk can only be guaranteed per row at chunk_size=1
        chunk = 1 if (causal and fm == "favor") else 16
        out = make(fm, 8, 2, causal=causal, chunk_size=chunk, nb_features=64 if fm == "favor" else None)(q, k, v)
        assert np.all(np.isfinite(out))
        support = _visible_support(q, k, fm, causal)
        np.testing.assert_allclose(out[support], 1.0, atol=1e-4)
        assert np.all(out[~support] == 0.0)


def test_elu_features_that_underflow_in_float32_still_give_the_exact_ratio(rng):
    """exp(-200) is 0 in float32: the raw formula would return zeros; the stabilised one returns the exact ratio."""
    q = -200.0 - np.abs(rng.standard_normal((12, 2, 4)))
    k = -150.0 - np.abs(rng.standard_normal((12, 2, 4)))
    v = rng.standard_normal((12, 2, 4))
    ref = ref_linear(q, k, v, "elu", eps=0.0)  # float64 holds exp(-350) fine
    ref_causal = ref_linear(q, k, v, "elu", causal=True, eps=0.0)
    q32, k32, v32 = (x.astype(np.float32) for x in (q, k, v))
    assert np.all(np.exp(q32) == 0.0)  # the naive float32 features are all zero
    assert_close(LinearAttention(4, 2)(q32, k32, v32), ref, 1e-4)
    assert_close(LinearAttention(4, 2, causal=True)(q32, k32, v32), ref_causal, 1e-4)


# ---------------------------------------------------------------------------- the mechanism around it
def test_registry_options_and_repr():
    attn = registry.create("linear", dim=8, heads=2, feature_map="dpfp", nu=2)
    assert isinstance(attn, LinearAttention) and attnkit.LinearAttention is LinearAttention
    assert LinearAttention.name == "linear" and "linear" in registry.names() and LinearAttention.summary
    opts = attn.options()
    assert opts["dim"] == 8 and opts["heads"] == 2 and opts["feature_map"] == "dpfp" and opts["nu"] == 2
    assert opts["eps"] == 1e-6 and opts["causal"] is False and opts["nb_features"] is None
    again = LinearAttention(**opts)
    assert again.options() == opts
    assert "LinearAttention(dim=8" in repr(attn)
    names = {s.name for s in registry.option_specs("linear")}
    assert {"dim", "heads", "feature_map", "eps", "causal", "nb_features", "nu", "seed", "chunk_size"} <= names
    assert LinearAttention(4, feature_map="FAVOR").feature_map == "favor"


def test_forward_batch_async_dispose_and_context_manager(rng):
    q, k, v = seq_inputs(rng, 6, 6, 2, 4, dtype=np.float32)
    q2 = q[::-1].copy()
    with LinearAttention(4, 2, feature_map="favor", seed=0) as attn:
        outs = attn.forward_batch([q, q2], k, v)
        np.testing.assert_array_equal(outs[0], attn(q, k, v))
        np.testing.assert_array_equal(outs[1], attn(q2, k, v))
        per_item = attn.forward_batch([q, q2], [k, k], [v, v], mask=[np.ones(6, bool), None])
        np.testing.assert_array_equal(per_item[1], outs[1])
        np.testing.assert_array_equal(asyncio.run(attn.forward_async(q, k, v)), attn(q, k, v))
        info = attn.memory_usage()
        assert info.param_count == attn.nb_features * 4 and info.heap_used >= info.param_count * 8
        bench = attn.benchmark(16, repeats=2, warmup=1)
        assert bench.latency_ms > 0 and bench.ops_per_second > 0
        assert len(attn.sample_inputs(5)) == 3 and attn.sample_inputs(5)[0].shape == (5, 2, 4)
    assert attn.disposed
    with pytest.raises(attnkit.DisposedError):
        attn(q, k, v)
    with pytest.raises(attnkit.DisposedError):
        attn.forward_batch([q])
    with pytest.raises(attnkit.DisposedError):
        attn.redraw_features()
