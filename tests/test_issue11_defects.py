"""Regression tests for the defects reported in issue 11 (each against a float64 reference and torch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TOL64, assert_close, lower_right_mask, randn, ref_mha, ref_seq_attention, to_np

from attnkit import FlashAttention, LinearAttention, MultiHeadAttention, create_mask
from attnkit.errors import ShapeError

# ----------------------------------------------- defect 1: torch, causal, Lq != Lk, broadcast batch


@pytest.mark.parametrize("lq,lk", [(3, 6), (6, 3), (5, 5), (1, 7)])
@pytest.mark.parametrize("with_mask", [False, True])
def test_flash_torch_causal_broadcast_batch(rng: np.random.Generator, lq: int, lk: int, with_mask: bool) -> None:
    h, d = 4, 8
    q, k, v = randn(rng, lq, h, d), randn(rng, 2, lk, h, d), randn(rng, 2, lk, h, d)
    mask = rng.random((lq, lk)) > 0.3 if with_mask else None
    fa = FlashAttention(heads=h, dim=d, causal=True)
    mt = None if mask is None else torch.from_numpy(mask)
    out = fa.forward(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), mask=mt)
    assert tuple(out.shape) == (2, lq, h, d)
    ref = ref_seq_attention(q, k, v, mask=mask, causal=True)
    assert_close(to_np(out), ref, TOL64)
    assert_close(to_np(fa.forward(q, k, v, mask=mask)), ref, TOL64)  # NumPy gives the same
    # torch's own SDPA on explicitly expanded heads-first tensors, bottom-right causal as a bool mask
    keep = torch.from_numpy(lower_right_mask(lq, lk) & (mask if mask is not None else True))
    qt, kt, vt = (torch.from_numpy(x).movedim(-3, -2) for x in (np.broadcast_to(q, (2, *q.shape)).copy(), k, v))
    expected = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=keep).movedim(-2, -3)
    rows = keep.any(-1).numpy()  # torch gives NaN for rows that see no key; attnkit gives zeros
    assert_close(to_np(out)[:, rows], to_np(expected)[:, rows], TOL64)
    assert np.all(to_np(out)[:, ~rows] == 0.0)


def test_multihead_torch_causal_broadcast_batch(rng: np.random.Generator) -> None:
    mha = MultiHeadAttention(16, 4, causal=True, keep_weights=False, seed=0)
    x_q, x_kv = randn(rng, 3, 16), randn(rng, 2, 5, 16)
    mha_t = MultiHeadAttention(16, 4, causal=True, keep_weights=False, seed=0)
    out = mha_t.forward(torch.from_numpy(x_q), torch.from_numpy(x_kv), torch.from_numpy(x_kv))
    ref, _ = ref_mha(np.broadcast_to(x_q, (2, 3, 16)), x_kv, x_kv, mha._params, 4, causal=True)
    assert tuple(out.shape) == (2, 3, 16)
    assert_close(to_np(out), ref, 1e-5)  # float32 parameters
    assert_close(to_np(mha.forward(x_q, x_kv, x_kv)), ref, 1e-5)


# ----------------------------------------------- defect 2: LinearAttention reads (Lq, Lk) masks as key masks


def _ref_linear_elu(q: np.ndarray, k: np.ndarray, v: np.ndarray, keep: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """float64 elu+1 linear attention, sequence layout, ``keep`` a bool key mask broadcasting to (..., H, 1, Lk)."""
    phi = lambda x: np.where(x > 0, x + 1.0, np.exp(x))  # noqa: E731 - elu(x) + 1
    qh, kh, vh = (np.moveaxis(x, -3, -2) for x in (q, k, v))
    a = np.einsum("...id,...jd->...ij", phi(qh), phi(kh)) * keep
    out = (a @ vh) / (a.sum(-1, keepdims=True) + eps)
    return np.moveaxis(out, -3, -2)


def test_linear_padding_mask_with_one_batch_dim(rng: np.random.Generator) -> None:
    b, length, h, d = 3, 6, 2, 8
    q, k, v = (randn(rng, b, length, h, d) for _ in range(3))
    pad = create_mask("padding", length, [5])
    attn = LinearAttention(d, h)
    out = attn(q, k, v, mask=pad)
    assert_close(out, _ref_linear_elu(q, k, v, pad[0]), TOL64)
    out_t = attn(*(torch.from_numpy(x) for x in (q, k, v)), mask=torch.from_numpy(pad))
    assert_close(to_np(out_t), _ref_linear_elu(q, k, v, pad[0]), TOL64)


def test_linear_causal_mask_with_batch_equal_to_length_raises(rng: np.random.Generator) -> None:
    length, h, d = 6, 2, 8
    q, k, v = (randn(rng, length, length, h, d) for _ in range(3))
    with pytest.raises(ShapeError, match=r"^mask:.*causal=True"):
        LinearAttention(d, h)(q, k, v, mask=create_mask("causal", length))
    # the padding mask in the same (Lq, Lk) layout is accepted and means the same for every batch entry
    pad = create_mask("padding", length, [1, 4])
    assert_close(LinearAttention(d, h)(q, k, v, mask=pad), _ref_linear_elu(q, k, v, pad[0]), TOL64)
    # per-batch key masks stay expressible, and (B, Lk) with B != Lq is still read as one per batch entry
    keep = rng.random((length, length)) > 0.3
    keep[:, 0] = True
    ref = _ref_linear_elu(q, k, v, keep[:, None, None, :])
    assert_close(LinearAttention(d, h)(q, k, v, mask=keep[:, None, None, :]), ref, TOL64)
    q5 = q[:, :5]
    ref5 = _ref_linear_elu(q5, k, v, keep[:, None, None, :])
    assert_close(LinearAttention(d, h)(q5, k, v, mask=keep), ref5, TOL64)
