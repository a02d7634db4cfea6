"""create_mask and the mask plumbing (prepare_mask, flat masks, causal alignment, tiles)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TOL32, TOL64, assert_close, lower_right_mask, ref_seq_attention, seq_inputs, to_torch
from torch.nn.attention.bias import causal_lower_right

from attnkit import FlashAttention, ShapeError, create_mask
from attnkit._array import namespace
from attnkit.kernels.masks import apply_mask_tile, causal_allowed, prepare_mask, unflatten_mask


def _loop_causal(n):
    return np.array([[j <= i for j in range(n)] for i in range(n)])


@pytest.mark.parametrize("n", [1, 2, 5, 17])
def test_causal(n):
    m = create_mask("causal", n)
    assert m.dtype == bool and m.shape == (n, n)
    np.testing.assert_array_equal(m, _loop_causal(n))
    np.testing.assert_array_equal(m, ~torch.ones(n, n, dtype=torch.bool).triu(1).numpy())


def test_padding():
    m = create_mask("padding", 6, positions=[1, 4])
    exp = np.array([[j not in (1, 4) for j in range(6)] for _ in range(6)])
    np.testing.assert_array_equal(m, exp)
    np.testing.assert_array_equal(create_mask("padding", 3), np.ones((3, 3), dtype=bool))
    m[0, 0] = False  # a writable copy, not a broadcast view
    assert m[1, 0]


def test_block():
    m = create_mask("block", 7, positions=[3, 5])
    block = [0, 0, 0, 1, 1, 2, 2]
    exp = np.array([[block[i] == block[j] for j in range(7)] for i in range(7)])
    np.testing.assert_array_equal(m, exp)
    np.testing.assert_array_equal(create_mask("block", 4), np.ones((4, 4), dtype=bool))
    np.testing.assert_array_equal(create_mask("block", 4, positions=[0, 2]), create_mask("block", 4, positions=[2]))


def test_kind_is_case_insensitive_and_numpy_ints_ok():
    np.testing.assert_array_equal(create_mask("CAUSAL", 3), _loop_causal(3))
    np.testing.assert_array_equal(create_mask("padding", 4, positions=np.array([2])), create_mask("padding", 4, positions=[2]))


@pytest.mark.parametrize("kind,positions", [("causal", None), ("padding", [0, 3]), ("block", [2, 5])])
def test_created_masks_drive_flash_like_torch(rng, kind, positions):
    n = 7
    mask = create_mask(kind, n, positions=positions)
    q, k, v = seq_inputs(rng, n, n, 2, 4, dtype=np.float32)
    out = FlashAttention(heads=2, dim=4, block_size=3).forward(q, k, v, mask=mask)
    assert_close(out, ref_seq_attention(q, k, v, mask=mask), TOL32)
    t = [to_torch(x).transpose(0, 1) for x in (q, k, v)]
    exp = F.scaled_dot_product_attention(*t, attn_mask=torch.from_numpy(mask)).transpose(0, 1)
    assert_close(out, exp, TOL32)


@pytest.mark.filterwarnings("ignore:Lower right causal bias will produce NaNs")
@pytest.mark.parametrize("lq,lk", [(4, 4), (3, 8), (8, 3), (1, 5), (5, 1)])
def test_causal_allowed_is_bottom_right_like_torch(lq, lk):
    got = causal_allowed(np, 0, lq, 0, lk, lk - lq, "cpu")
    np.testing.assert_array_equal(got, lower_right_mask(lq, lk))
    torch_bias = causal_lower_right(lq, lk)._materialize()  # True = attend in torch's bias
    np.testing.assert_array_equal(got, torch_bias.numpy())
    # any tile of it equals the same slice of the whole
    if lq > 1 and lk > 1:
        tile = causal_allowed(np, 1, lq, 1, lk, lk - lq, "cpu")
        np.testing.assert_array_equal(tile, lower_right_mask(lq, lk)[1:, 1:])


def test_prepare_mask_kinds_and_dtypes():
    target = (2, 3, 4, 5)
    b = prepare_mask(np.ones((4, 5), dtype=bool), np, target, np.float64)
    assert b.dtype == bool
    f = prepare_mask(np.zeros((3, 1, 5), dtype=np.float32), np, target, np.float64)
    assert f.dtype == np.float64
    lst = prepare_mask([[0.0] * 5] * 4, np, target, np.float32)  # a nested list is a float mask
    assert lst.dtype == np.float32 and lst.shape == (4, 5)
    neg = prepare_mask(np.array([0.0, -np.inf, 0.0, 0.0, 0.0]), np, target, np.float64)
    assert np.isneginf(neg[1])
    assert prepare_mask(None, np, target, np.float32) is None
    t = prepare_mask(np.ones((4, 5), dtype=bool), namespace(torch.zeros(1)), target, torch.float32)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.bool


def test_prepare_mask_refuses_to_enlarge_scores():
    with pytest.raises(ShapeError, match="mask"):
        prepare_mask(np.ones((2, 2, 3, 4, 5), dtype=bool), np, (2, 3, 4, 5), np.float32)
    with pytest.raises(ShapeError, match="mask"):
        prepare_mask(np.ones((7, 3, 4, 5), dtype=bool), np, (1, 3, 4, 5), np.float32)


def test_unflatten_mask():
    m = np.arange(12.0)
    np.testing.assert_array_equal(unflatten_mask(m, 3, 4), m.reshape(3, 4))
    two_d = np.ones((3, 4))
    assert unflatten_mask(two_d, 3, 4) is two_d
    with pytest.raises(ShapeError, match="mask"):
        unflatten_mask(np.ones(11), 3, 4)


def test_apply_mask_tile_equals_slice_of_full(rng):
    s = rng.standard_normal((2, 6, 9))
    bm = rng.random((2, 6, 9)) > 0.5
    fm = rng.standard_normal((1, 9))
    for mask in (bm, fm, bm[0, 0]):
        full = apply_mask_tile(s.copy(), mask, np, 0, 6, 0, 9)
        tile = apply_mask_tile(s[:, 2:5, 3:7].copy(), mask, np, 2, 5, 3, 7)
        np.testing.assert_array_equal(tile, full[:, 2:5, 3:7])


def test_key_padding_mask_broadcast_over_queries_and_heads(rng):
    q, k, v = seq_inputs(rng, 5, 8, 2, 4, batch=(3,))
    keep = rng.random((3, 8)) > 0.3
    keep[:, 0] = True
    out = FlashAttention(heads=2, dim=4, block_size=3).forward(q, k, v, mask=keep[:, None, None, :])
    assert_close(out, ref_seq_attention(q, k, v, mask=keep[:, None, None, :]), TOL64)
    for b in range(3):  # padded keys change nothing: drop them and compare
        sel = keep[b]
        assert_close(out[b], ref_seq_attention(q[b], k[b][sel], v[b][sel]), TOL64)
