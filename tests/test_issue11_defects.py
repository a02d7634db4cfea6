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
