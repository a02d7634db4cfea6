"""ScaledDotProduct (neighbour attention) against the float64 reference and torch SDPA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TOL16, TOL32, TOL64, assert_close, randn, ref_attention, ref_weights, to_np, to_torch, tol_for

from attnkit import ScaledDotProduct


def ref_neighbour(q, keys, values, mask=None, scale=None):
    """Each query attends over its own key set: the reference with Lq = 1 (batch dims broadcast)."""
    m = None if mask is None else np.asarray(mask)[..., None, :]
    return ref_attention(np.asarray(q)[..., None, :], keys, values, mask=m, scale=scale)[..., 0, :]


def ref_neighbour_weights(q, keys, mask=None, scale=None):
    m = None if mask is None else np.asarray(mask)[..., None, :]
    return ref_weights(np.asarray(q)[..., None, :], keys, mask=m, scale=scale)[..., 0, :]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_single_query(rng, dtype):
    q, k, v = randn(rng, 6, dtype=dtype), randn(rng, 9, 6, dtype=dtype), randn(rng, 9, 4, dtype=dtype)
    out = ScaledDotProduct(6).forward(q, k, v)
    assert out.shape == (4,) and out.dtype == dtype
    assert_close(out, ref_neighbour(q, k, v), tol_for(np.dtype(dtype)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_each_query_own_neighbours(rng, dtype):
    q, k, v = randn(rng, 5, 3, dtype=dtype), randn(rng, 5, 7, 3, dtype=dtype), randn(rng, 5, 7, 2, dtype=dtype)
    out = ScaledDotProduct(3).forward(q, k, v)
    assert out.shape == (5, 2)
    assert_close(out, ref_neighbour(q, k, v), tol_for(np.dtype(dtype)))
    for i in range(5):  # row i really used key set i
        assert_close(out[i], ref_neighbour(q[i], k[i], v[i]), tol_for(np.dtype(dtype)))


def test_queries_share_one_key_set(rng):
    q, k, v = randn(rng, 2, 5, 4), randn(rng, 8, 4), randn(rng, 8, 3)
    out = ScaledDotProduct(4).forward(q, k, v)
    assert out.shape == (2, 5, 3)
    assert_close(out, ref_neighbour(q, k, v), TOL64)
    # the same thing as FlashAttention-style SDPA with one head
    exp = F.scaled_dot_product_attention(to_torch(q), to_torch(k)[None], to_torch(v)[None])
    assert_close(out, exp, TOL64)


def test_values_default_to_keys_and_custom_scale(rng):
    q, k = randn(rng, 4), randn(rng, 6, 4)
    assert_close(ScaledDotProduct(4).forward(q, k), ref_neighbour(q, k, k), TOL64)
    assert_close(ScaledDotProduct(4, scale=2.5).forward(q, k, k), ref_neighbour(q, k, k, scale=2.5), TOL64)


def test_masks(rng):
    q, k, v = randn(rng, 3, 4), randn(rng, 3, 6, 4), randn(rng, 3, 6, 5)
    bmask = rng.random((3, 6)) > 0.4
    bmask[:, 0] = True
    fmask = randn(rng, 6)
    sdp = ScaledDotProduct(4)
    assert_close(sdp.forward(q, k, v, mask=bmask), ref_neighbour(q, k, v, mask=bmask), TOL64)
    assert_close(sdp.forward(q, k, v, mask=fmask), ref_neighbour(q, k, v, mask=fmask), TOL64)
    assert_close(sdp.attention_weights(q, k, mask=bmask), ref_neighbour_weights(q, k, mask=bmask), TOL64)


def test_fully_masked_query_gives_zeros(rng):
    q, k, v = randn(rng, 3, 4, dtype=np.float32), randn(rng, 6, 4, dtype=np.float32), randn(rng, 6, 5, dtype=np.float32)
    mask = np.ones((3, 6), dtype=bool)
    mask[1] = False
    sdp = ScaledDotProduct(4)
    out = sdp.forward(q, k, v, mask=mask)
    assert np.isfinite(out).all() and (out[1] == 0).all()
    assert_close(out, ref_neighbour(q, k, v, mask=mask), TOL32)
    single = sdp.forward(q[1], k, v, mask=np.zeros(6, dtype=bool))
    assert (single == 0).all()
    fm = np.full(6, -np.inf, dtype=np.float32)
    assert (sdp.forward(q[0], k, v, mask=fm) == 0).all()
    w = sdp.attention_weights(q, k, mask=mask)
    assert (w[1] == 0).all() and np.allclose(w[[0, 2]].sum(-1), 1.0)
    out_t = sdp.forward(*(to_torch(x) for x in (q, k, v)), mask=torch.from_numpy(mask))
    assert torch.isfinite(out_t).all() and (out_t[1] == 0).all()


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_logits_do_not_overflow(sign, dtype):
    q = np.array([1e4, 1.0], dtype=dtype) * sign  # logits exactly sign * (1e4, 1e4 + 1, 1e4 - 1, 0)
    k = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, -1.0], [0.0, 0.0]], dtype=dtype)
    v = np.arange(8, dtype=dtype).reshape(4, 2)
    sdp = ScaledDotProduct(2, scale=1.0)
    out = sdp.forward(q, k, v)
    assert np.isfinite(out).all()
    assert_close(out, ref_neighbour(q, k, v, scale=1.0), tol_for(np.dtype(dtype)))
    assert_close(sdp.attention_weights(q, k), ref_neighbour_weights(q, k, scale=1.0), tol_for(np.dtype(dtype)))


def test_flat_spec_arrays_with_num_neighbors(rng):
    q, k, v = randn(rng, 4, dtype=np.float32), randn(rng, 5, 4, dtype=np.float32), randn(rng, 5, 3, dtype=np.float32)
    sdp = ScaledDotProduct(4)
    out = sdp.forward(q, k.ravel(), v.ravel(), num_neighbors=5)
    assert out.shape == (3,) and out.dtype == np.float32
    assert_close(out, ref_neighbour(q, k, v), TOL32)
    w = sdp.attention_weights(q, k.ravel(), num_neighbors=5)
    assert_close(w, ref_neighbour_weights(q, k), TOL32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_in_torch_out(rng, dtype):
    q, k, v = (to_torch(randn(rng, *s), dtype) for s in ((3, 4), (3, 6, 4), (3, 6, 2)))
    out = ScaledDotProduct(4).forward(q, k, v)
    assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.shape == (3, 2)
    exp = F.scaled_dot_product_attention(q[:, None, :], k, v)[:, 0, :]
    assert_close(out, exp, tol_for(dtype))
    assert_close(out, ref_neighbour(to_np(q), to_np(k), to_np(v)), tol_for(dtype))


def test_float16_numpy_in_float16_out(rng):
    q, k, v = randn(rng, 2, 4, dtype=np.float16), randn(rng, 6, 4, dtype=np.float16), randn(rng, 6, 3, dtype=np.float16)
    out = ScaledDotProduct(4).forward(q, k, v)
    assert out.dtype == np.float16
    assert_close(out, ref_neighbour(q, k, v), TOL16)


def test_single_query_equals_row_of_batch(rng):
    q, k, v = randn(rng, 6, 5), randn(rng, 6, 8, 5), randn(rng, 6, 8, 3)
    sdp = ScaledDotProduct(5)
    batched = sdp.forward(q, k, v)
    for i in range(6):
        assert_close(sdp.forward(q[i], k[i], v[i]), batched[i], TOL64)
