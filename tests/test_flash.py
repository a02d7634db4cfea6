"""FlashAttention against the float64 reference and against torch's scaled_dot_product_attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import (
    TOL16,
    TOL32,
    TOL64,
    assert_close,
    lower_right_mask,
    randn,
    ref_seq_attention,
    ref_weights,
    seq_inputs,
    to_np,
    to_torch,
    tol_for,
)
from torch.nn.attention.bias import causal_lower_right

from attnkit import FlashAttention, create_mask

# ------------------------------------------------------------------ float64 reference

SHAPES = [  # (Lq, Lk, H, D, Dv, block_size)
    (1, 1, 1, 1, 1, 256),
    (7, 7, 2, 8, 8, 3),
    (5, 13, 3, 4, 6, 4),
    (13, 5, 1, 16, 3, 2),
    (64, 64, 4, 16, 16, 16),
    (33, 70, 2, 8, 8, 256),
]


@pytest.mark.parametrize("lq,lk,h,d,dv,block", SHAPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("simd", [True, False])
def test_forward_matches_reference(rng, lq, lk, h, d, dv, block, causal, simd):
    q, k, v = seq_inputs(rng, lq, lk, h, d, dv)
    f = FlashAttention(heads=h, dim=d, block_size=block, causal=causal, simd=simd)
    for dtype in (np.float64, np.float32):
        out = f.forward(q.astype(dtype), k.astype(dtype), v.astype(dtype))
        assert out.dtype == dtype and out.shape == (lq, h, dv)
        exp = ref_seq_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype), causal=causal)
        assert_close(out, exp, tol_for(dtype))


@pytest.mark.parametrize("block", [1, 5, 64])
def test_tiling_is_exact_across_block_sizes(rng, block):
    q, k, v = seq_inputs(rng, 40, 57, 2, 8)
    ref = ref_seq_attention(q, k, v)
    for simd in (True, False):
        out = FlashAttention(heads=2, dim=8, block_size=block, simd=simd).forward(q, k, v)
        assert_close(out, ref, TOL64)


def test_custom_scale(rng):
    q, k, v = seq_inputs(rng, 6, 9, 2, 4)
    out = FlashAttention(heads=2, dim=4, scale=0.9).forward(q, k, v)
    assert_close(out, ref_seq_attention(q, k, v, scale=0.9), TOL64)
    neg = FlashAttention(heads=2, dim=4, scale=-0.3).forward(q, k, v)
    assert_close(neg, ref_seq_attention(q, k, v, scale=-0.3), TOL64)


def test_self_attention_default(rng):
    q, _, _ = seq_inputs(rng, 9, 9, 2, 4)
    f = FlashAttention(heads=2, dim=4)
    assert_close(f.forward(q), ref_seq_attention(q, q, q), TOL64)


@pytest.mark.parametrize("causal", [False, True])
def test_bool_and_float_masks_vs_reference(rng, causal):
    q, k, v = seq_inputs(rng, 6, 10, 2, 4, batch=(3,))
    bmask = rng.random((3, 2, 6, 10)) > 0.4
    fmask = rng.standard_normal((3, 1, 6, 10))
    fmask[rng.random(fmask.shape) < 0.2] = -np.inf
    f = FlashAttention(heads=2, dim=4, block_size=4, causal=causal)
    for mask in (bmask, fmask, bmask[0, 0], fmask[:, :, :1, :], bmask[0, 0, 0], fmask[0, 0, 0]):
        out = f.forward(q, k, v, mask=mask)
        assert_close(out, ref_seq_attention(q, k, v, mask=mask, causal=causal), TOL64)


def test_batch_broadcasting(rng):
    q = randn(rng, 2, 1, 5, 2, 4)
    k = randn(rng, 1, 3, 7, 2, 4)
    v = randn(rng, 3, 7, 2, 4)
    out = FlashAttention(heads=2, dim=4, block_size=3).forward(q, k, v)
    assert out.shape == (2, 3, 5, 2, 4)
    assert_close(out, ref_seq_attention(q, k, v), TOL64)


def test_attention_scores_vs_reference(rng):
    q, k, _ = seq_inputs(rng, 5, 8, 3, 4, batch=(2,))
    mask = rng.random((8,)) > 0.3
    for causal in (False, True):
        f = FlashAttention(heads=3, dim=4, causal=causal)
        w = f.attention_scores(q, k, mask=mask)
        assert w.shape == (2, 3, 5, 8)
        exp = ref_weights(np.moveaxis(q, -3, -2), np.moveaxis(k, -3, -2), mask=mask, causal=causal)
        assert_close(w, exp, TOL64)
        w32 = f.attention_scores(q.astype(np.float32), k.astype(np.float32), mask=mask)
        assert w32.dtype == np.float32


def test_attention_scores_flat(rng):
    q, k, _ = seq_inputs(rng, 3, 4, 2, 2)
    f = FlashAttention(heads=2, dim=2)
    w = f.attention_scores(q.ravel(), k.ravel())
    assert w.shape == (2 * 3 * 4,)
    assert_close(w, f.attention_scores(q, k).ravel(), TOL64)


# ------------------------------------------------------------------ torch SDPA oracle


def _torch_sdpa(q, k, v, **kw):
    """torch SDPA on attnkit's (..., L, H, D) layout."""
    qt, kt, vt = (x.transpose(-3, -2) for x in (q, k, v))
    return F.scaled_dot_product_attention(qt, kt, vt, **kw).transpose(-3, -2)


TORCH_CASES = [
    pytest.param(torch.float32, 8, 8, id="f32-8x8"),
    pytest.param(torch.float32, 5, 12, id="f32-5x12"),
    pytest.param(torch.float32, 1, 9, id="f32-1x9"),
    pytest.param(torch.float64, 8, 8, id="f64-8x8"),
    pytest.param(torch.float64, 5, 12, id="f64-5x12"),
    pytest.param(torch.float64, 1, 9, id="f64-1x9"),
]


@pytest.mark.parametrize("dtype,lq,lk", TORCH_CASES)
@pytest.mark.parametrize("causal", [False, True])
def test_vs_torch_sdpa_plain_and_causal(rng, dtype, lq, lk, causal):
    q, k, v = (to_torch(x, dtype) for x in seq_inputs(rng, lq, lk, 4, 8, batch=(2,)))
    if causal:
        exp = _torch_sdpa(q, k, v, attn_mask=causal_lower_right(lq, lk))
    else:
        exp = _torch_sdpa(q, k, v)
    # numpy in -> numpy out, same numbers
    f = FlashAttention(heads=4, dim=8, block_size=4, causal=causal)
    out_np = f.forward(to_np(q), to_np(k), to_np(v))
    assert isinstance(out_np, np.ndarray) and out_np.dtype == to_np(q).dtype
    assert_close(out_np, exp, tol_for(dtype))
    # torch in -> torch out, same dtype
    out = f.forward(q, k, v)
    assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.shape == (2, lq, 4, 8)
    assert_close(out, exp, tol_for(dtype))


@pytest.mark.filterwarnings("ignore:Lower right causal bias will produce NaNs")
def test_lq_greater_than_lk_causal_zeros_where_torch_gives_nan(rng):
    lq, lk = 9, 4
    q, k, v = (to_torch(x, torch.float32) for x in seq_inputs(rng, lq, lk, 2, 8))
    f = FlashAttention(heads=2, dim=8, causal=True, block_size=2)
    out = f.forward(q, k, v)
    exp = _torch_sdpa(q, k, v, attn_mask=causal_lower_right(lq, lk))
    hidden = lq - lk  # the first Lq - Lk queries see no key
    # torch documents NaN for these rows (and warns so); torch 2.13's CPU kernels return zeros
    assert torch.isnan(exp[:hidden]).all() or bool((exp[:hidden] == 0).all())
    assert torch.equal(out[:hidden], torch.zeros_like(out[:hidden]))
    assert torch.isfinite(out).all()
    assert_close(out[hidden:], exp[hidden:], TOL32)
    out_np = f.forward(to_np(q), to_np(k), to_np(v))
    assert (out_np[:hidden] == 0).all()
    assert_close(out_np[hidden:], exp[hidden:], TOL32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vs_torch_sdpa_bool_mask(rng, dtype):
    q, k, v = (to_torch(x, dtype) for x in seq_inputs(rng, 6, 11, 2, 8, batch=(3,)))
    mask = torch.from_numpy(rng.random((3, 2, 6, 11)) > 0.3)
    mask[..., 0] = True  # no fully masked row, so torch has no NaN to compare against
    f = FlashAttention(heads=2, dim=8, block_size=4)
    out = f.forward(q, k, v, mask=mask)
    exp = _torch_sdpa(q, k, v, attn_mask=mask)
    assert out.dtype == dtype
    assert_close(out, exp, tol_for(dtype))
    assert_close(f.forward(to_np(q), to_np(k), to_np(v), mask=mask.numpy()), exp, tol_for(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vs_torch_sdpa_float_mask(rng, dtype):
    q, k, v = (to_torch(x, dtype) for x in seq_inputs(rng, 7, 5, 3, 4, batch=(2,)))
    bias = to_torch(randn(rng, 2, 1, 7, 5), dtype)  # broadcasts over heads
    f = FlashAttention(heads=3, dim=4, block_size=2)
    out = f.forward(q, k, v, mask=bias)
    exp = _torch_sdpa(q, k, v, attn_mask=bias)
    assert_close(out, exp, tol_for(dtype))
    # -inf entries in a float mask (routes torch inputs off the fused path in attnkit)
    bias2 = bias.clone()
    bias2[..., 1:3] = -torch.inf
    assert_close(f.forward(q, k, v, mask=bias2), _torch_sdpa(q, k, v, attn_mask=bias2), tol_for(dtype))


def test_vs_torch_sdpa_mask_and_causal_together(rng):
    lq, lk = 5, 9
    q, k, v = (to_torch(x, torch.float64) for x in seq_inputs(rng, lq, lk, 2, 4))
    mask = torch.from_numpy(rng.random((lq, lk)) > 0.3)
    mask[:, 0] = True
    combined = mask & torch.from_numpy(lower_right_mask(lq, lk))
    out = FlashAttention(heads=2, dim=4, block_size=3, causal=True).forward(q, k, v, mask=mask)
    assert_close(out, _torch_sdpa(q, k, v, attn_mask=combined), TOL64)


def test_vs_torch_sdpa_batch_broadcasting(rng):
    q = to_torch(randn(rng, 2, 1, 5, 2, 8), torch.float32)
    k = to_torch(randn(rng, 1, 3, 6, 2, 8), torch.float32)
    v = to_torch(randn(rng, 3, 6, 2, 8), torch.float32)
    out = FlashAttention(heads=2, dim=8).forward(q, k, v)
    assert out.shape == (2, 3, 5, 2, 8)
    batch = torch.broadcast_shapes(q.shape[:-3], k.shape[:-3], v.shape[:-3])
    exp = _torch_sdpa(q.expand(*batch, 5, 2, 8), k.expand(*batch, 6, 2, 8), v.expand(*batch, 6, 2, 8))
    assert_close(out, exp, TOL32)


def test_torch_scale_and_dv(rng):
    q, k, v = (to_torch(x, torch.float64) for x in seq_inputs(rng, 4, 7, 2, 8, dv=5))
    out = FlashAttention(heads=2, dim=8, scale=0.2).forward(q, k, v)
    assert out.shape == (4, 2, 5)
    assert_close(out, _torch_sdpa(q, k, v, scale=0.2), TOL64)


def test_flat_spec_arrays(rng):
    q, k, v = seq_inputs(rng, 6, 6, 2, 4, dtype=np.float32)
    f = FlashAttention(heads=2, dim=4)
    out = f.forward(q.ravel(), k.ravel(), v.ravel())
    assert out.shape == (6 * 2 * 4,) and out.dtype == np.float32
    exp = _torch_sdpa(*(to_torch(x) for x in (q, k, v)))
    assert_close(out, exp.reshape(-1), TOL32)
    # a flat mask of length Lq*Lk is read as (Lq, Lk)
    mask = create_mask("causal", 6)
    out_m = f.forward(q.ravel(), k.ravel(), v.ravel(), mask=mask.ravel())
    assert_close(out_m, ref_seq_attention(q, k, v, mask=mask).ravel(), TOL32)
    # flat torch tensors come back flat torch tensors
    out_t = f.forward(*(to_torch(x).reshape(-1) for x in (q, k, v)))
    assert isinstance(out_t, torch.Tensor) and out_t.shape == (48,)


def test_float16_numpy_in_float16_out(rng):
    q, k, v = seq_inputs(rng, 8, 8, 2, 4, dtype=np.float16)
    out = FlashAttention(heads=2, dim=4).forward(q, k, v)
    assert out.dtype == np.float16
    assert_close(out, ref_seq_attention(q, k, v), TOL16)


def test_mixed_precision_promotes(rng):
    q, k, v = seq_inputs(rng, 4, 4, 1, 4)
    out = FlashAttention(heads=1, dim=4).forward(q.astype(np.float32), k, v.astype(np.float32))
    assert out.dtype == np.float64


def test_requires_grad_tensors_flow_through_autograd(rng):
    q, k, v = (to_torch(x, torch.float64).requires_grad_() for x in seq_inputs(rng, 4, 6, 2, 4))
    mask = torch.from_numpy(rng.random((4, 6)) > 0.2)
    mask[:, 0] = True
    out = FlashAttention(heads=2, dim=4, block_size=2).forward(q, k, v, mask=mask)
    out.sum().backward()
    qr, kr, vr = (x.detach().clone().requires_grad_() for x in (q, k, v))
    _torch_sdpa(qr, kr, vr, attn_mask=mask).sum().backward()
    for a, b in ((q, qr), (k, kr), (v, vr)):
        assert_close(a.grad, b.grad, TOL64)


# ------------------------------------------------------------------ robustness


@pytest.mark.parametrize("simd", [True, False])
def test_fully_masked_rows_give_zeros(rng, simd):
    q, k, v = seq_inputs(rng, 5, 6, 2, 4, dtype=np.float32)
    mask = np.ones((2, 5, 6), dtype=bool)
    mask[0, 1] = False  # head 0, query 1 sees nothing
    mask[1, 4] = False
    f = FlashAttention(heads=2, dim=4, block_size=2, simd=simd)
    out = f.forward(q, k, v, mask=mask)
    assert np.isfinite(out).all()
    assert (out[1, 0] == 0).all() and (out[4, 1] == 0).all()
    assert_close(out, ref_seq_attention(q, k, v, mask=mask), TOL32)
    fmask = np.where(mask, 0.0, -np.inf).astype(np.float32)
    assert_close(f.forward(q, k, v, mask=fmask), ref_seq_attention(q, k, v, mask=mask), TOL32)
    w = f.attention_scores(q, k, mask=mask)
    assert (w[0, 1] == 0).all() and np.allclose(w[0, 0].sum(), 1.0)
    out_t = f.forward(*(to_torch(x) for x in (q, k, v)), mask=torch.from_numpy(mask))
    assert torch.isfinite(out_t).all() and (out_t[1, 0] == 0).all()


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_logits_do_not_overflow(sign, dtype):
    # integer-valued inputs make every logit exact in float32: sign * (1e4, 1e4 + 1, 1e4 - 1, 0)
    q = np.array([[[1e4, 1.0]], [[1e4, -1.0]]], dtype=dtype) * sign
    k = np.array([[[1.0, 0.0]], [[1.0, 1.0]], [[1.0, -1.0]], [[0.0, 0.0]]], dtype=dtype)
    v = np.arange(12, dtype=dtype).reshape(4, 1, 3)
    for simd in (True, False):
        f = FlashAttention(heads=1, dim=2, scale=1.0, block_size=2, simd=simd)
        out = f.forward(q, k, v)
        assert np.isfinite(out).all()
        exp = ref_seq_attention(q, k, v, scale=1.0)
        assert_close(out, exp, tol_for(np.dtype(dtype)))
        w = f.attention_scores(q, k)
        assert np.isfinite(w).all()
        assert_close(w, ref_weights(np.moveaxis(q, -3, -2), np.moveaxis(k, -3, -2), scale=1.0), tol_for(np.dtype(dtype)))
    out_t = FlashAttention(heads=1, dim=2, scale=1.0).forward(*(torch.from_numpy(x) for x in (q, k, v)))
    assert torch.isfinite(out_t).all()


def test_dropout_only_while_training_and_seeded(rng):
    q, k, v = seq_inputs(rng, 6, 8, 2, 4)
    ref = ref_seq_attention(q, k, v)
    f = FlashAttention(heads=2, dim=4, dropout=0.5, seed=3)
    assert_close(f.forward(q, k, v), ref, TOL64)  # eval by default: no dropout
    f.train()
    a = f.forward(q, k, v)
    assert rel_diff(a, ref) > 1e-3
    b = FlashAttention(heads=2, dim=4, dropout=0.5, seed=3).train().forward(q, k, v)
    np.testing.assert_array_equal(a, b)
    c = FlashAttention(heads=2, dim=4, dropout=0.5, seed=4).train().forward(q, k, v)
    assert rel_diff(a, c) > 1e-3
    f.eval()
    assert_close(f.forward(q, k, v), ref, TOL64)


def test_dropout_is_unbiased(rng):
    # E[dropout(P) / (1 - p)] = P, so the mean of many dropped-out outputs approaches the exact output
    q, k, v = seq_inputs(rng, 3, 5, 1, 2)
    f = FlashAttention(heads=1, dim=2, dropout=0.3, seed=0).train()
    mean = np.mean([f.forward(q, k, v) for _ in range(3000)], axis=0)
    exp = ref_seq_attention(q, k, v)
    assert np.max(np.abs(mean - exp)) < 0.1 * max(1.0, np.abs(exp).max())


def rel_diff(a, b) -> float:
    return float(np.max(np.abs(to_np(a) - to_np(b))))


def test_long_sequence_tiled_matches_reference(rng):
    q, k, v = seq_inputs(rng, 300, 700, 1, 16, dtype=np.float32)
    for causal in (False, True):
        out = FlashAttention(heads=1, dim=16, block_size=64, causal=causal).forward(q, k, v)
        assert_close(out, ref_seq_attention(q, k, v, causal=causal), TOL32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attention_scores_torch_in_torch_out(rng, dtype):
    q, k, _ = (to_torch(x, dtype) for x in seq_inputs(rng, 4, 6, 2, 8, batch=(2,)))
    w = FlashAttention(heads=2, dim=8).attention_scores(q, k)
    assert isinstance(w, torch.Tensor) and w.dtype == dtype and w.shape == (2, 2, 4, 6)
    exp = torch.softmax(q.transpose(-3, -2) @ k.transpose(-3, -2).transpose(-1, -2) / np.sqrt(8), dim=-1)
    assert_close(w, exp, tol_for(dtype))


@pytest.mark.parametrize("lq,lk,causal", [(512, 512, False), (512, 512, True), (384, 640, True), (640, 384, True)])
@pytest.mark.filterwarnings("ignore:Lower right causal bias will produce NaNs")
def test_realistic_size_numpy_vs_torch(rng, lq, lk, causal):
    """Model-sized float32 inputs (the NumPy fast path's territory) against torch SDPA."""
    q, k, v = seq_inputs(rng, lq, lk, 4, 64, batch=(2,), dtype=np.float32)
    out = FlashAttention(heads=4, dim=64, causal=causal).forward(q, k, v)
    assert out.dtype == np.float32
    kw = {"attn_mask": causal_lower_right(lq, lk)} if causal else {}
    exp = _torch_sdpa(*(to_torch(x) for x in (q, k, v)), **kw)
    if causal and lq > lk:
        assert (out[:, : lq - lk] == 0).all()
        out, exp = out[:, lq - lk :], exp[:, lq - lk :]
    assert_close(out, exp, TOL32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_stay_on_device(rng):
    q, k, v = (to_torch(x, torch.float32).cuda() for x in seq_inputs(rng, 16, 24, 2, 8))
    mask = torch.from_numpy(rng.random((16, 24)) > 0.3).cuda()
    for causal in (False, True):
        out = FlashAttention(heads=2, dim=8, causal=causal).forward(q, k, v, mask=mask)
        assert out.device == q.device and out.dtype == torch.float32
        exp = ref_seq_attention(*(to_np(x) for x in (q, k, v)), mask=to_np(mask), causal=causal)
        assert_close(out, exp, TOL32)
