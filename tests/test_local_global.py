"""LocalGlobalAttention: equals dense attention with the Longformer mask, O(L*window) memory, bad input."""

from __future__ import annotations

import tracemalloc

import array_api_compat.numpy
import numpy as np
import pytest
import torch

import attnkit
from attnkit import ConfigError, DisposedError, NonFiniteError, ShapeError
from attnkit.kernels.dense import attention_weights
from attnkit.mechanisms import registry
from attnkit.mechanisms.flash import FlashAttention
from attnkit.mechanisms.local_global import LocalGlobalAttention


def pattern(n: int, window: int, glob: list[int], causal: bool) -> np.ndarray:
    """The Longformer pattern, written with loops: |i-j| <= window//2, or i or j global; causal j <= i."""
    m = np.zeros((n, n), dtype=bool)
    for i in range(n):
        for j in range(n):
            ok = abs(i - j) <= window // 2 or i in glob or j in glob
            m[i, j] = ok and (j <= i or not causal)
    return m


def reference(q, k, v, allowed, extra=None):
    """float64 dense attention on (..., L, H, D) with a boolean (L, L) mask (+ optional float bias)."""
    q, k, v = (np.moveaxis(np.asarray(x, dtype=np.float64), -3, -2) for x in (q, k, v))
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if extra is not None:
        s = s + extra
    s = np.where(allowed, s, -np.inf)
    mx = np.max(s, axis=-1, keepdims=True)
    mx = np.where(np.isinf(mx), 0, mx)
    e = np.exp(s - mx)
    z = e.sum(-1, keepdims=True)
    p = e / np.where(z == 0, 1, z)
    return np.moveaxis(p @ v, -3, -2)


def inputs(rng, shape, dtype=np.float64):
    return tuple(rng.standard_normal(shape).astype(dtype) for _ in range(3))


@pytest.mark.parametrize("window", [1, 4, 7, 16, 200])
@pytest.mark.parametrize("glob", [0, 2, [3, 20, 36]])
@pytest.mark.parametrize("causal", [False, True])
def test_equals_dense_attention_with_the_mask(window, glob, causal) -> None:
    rng = np.random.default_rng(window * 7 + causal)
    n, h, d = 37, 2, 8
    q, k, v = inputs(rng, (2, n, h, d))
    mech = LocalGlobalAttention(dim=d, heads=h, window=window, global_tokens=glob, causal=causal, block_size=8)
    gl = list(range(glob)) if isinstance(glob, int) else glob
    allowed = pattern(n, window, gl, causal)
    np.testing.assert_array_equal(mech.dense_mask(n), allowed)
    out = mech(q, k, v)
    np.testing.assert_allclose(out, reference(q, k, v, allowed), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("block", [1, 5, 64, None])
def test_block_size_does_not_change_the_result_and_matches_attention_weights(block) -> None:
    rng = np.random.default_rng(11)
    n, h, d = 70, 3, 4
    q, k, v = inputs(rng, (n, h, d))
    mech = LocalGlobalAttention(dim=d, heads=h, window=10, global_tokens=[0, 33, 69], block_size=block)
    qh, kh, vh = (np.moveaxis(x, -3, -2) for x in (q, k, v))
    w = attention_weights(qh, kh, xp=array_api_compat.numpy, scale=0.5, mask=mech.dense_mask(n))
    expect = np.moveaxis(w @ vh, -3, -2)
    np.testing.assert_allclose(mech(q, k, v), expect, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mech.attention_scores(q, k), w, rtol=1e-10, atol=1e-12)


def test_wide_window_is_dense_attention() -> None:
    rng = np.random.default_rng(12)
    q, k, v = inputs(rng, (40, 2, 8))
    for causal in (False, True):
        lg = LocalGlobalAttention(dim=8, heads=2, window=80, causal=causal)
        fl = FlashAttention(dim=8, heads=2, causal=causal)
        np.testing.assert_allclose(lg(q, k, v), fl(q, k, v), rtol=1e-10, atol=1e-12)


def test_window_is_centred_on_the_query_not_the_middle_key() -> None:
    # values are one-hot positions: the output row shows which keys got weight
    n = 20
    q = np.zeros((n, 1, 4))
    k = np.zeros((n, 1, 4))
    v = np.eye(n)[:, None, :]
    out = LocalGlobalAttention(dim=4, heads=1, window=4)(q, k, v)[:, 0]
    for i in range(n):
        expect = np.zeros(n)
        lo, hi = max(0, i - 2), min(n, i + 3)
        expect[lo:hi] = 1.0 / (hi - lo)
        np.testing.assert_allclose(out[i], expect, atol=1e-12)


def test_user_masks_bool_and_float_and_fully_masked_rows() -> None:
    rng = np.random.default_rng(13)
    n, h, d = 30, 2, 4
    q, k, v = inputs(rng, (2, n, h, d))
    mech = LocalGlobalAttention(dim=d, heads=h, window=6, global_tokens=[4, 12])
    allowed = pattern(n, 6, [4, 12], False)
    keep = rng.random((2, 1, 1, n)) > 0.3  # key padding, per batch
    np.testing.assert_allclose(mech(q, k, v, mask=keep), reference(q, k, v, allowed & keep), atol=1e-12)
    bias = rng.standard_normal((h, n, n))
    np.testing.assert_allclose(mech(q, k, v, mask=bias), reference(q, k, v, allowed, extra=bias), atol=1e-12)
    hide_row = np.ones((n, n), dtype=bool)
    hide_row[5] = False  # query 5 may see nothing
    hide_row[12] = False  # a global query may see nothing
    out = mech(q, k, v, mask=hide_row)
    assert np.all(out[:, 5] == 0) and np.all(out[:, 12] == 0) and np.isfinite(out).all()
    np.testing.assert_allclose(out, reference(q, k, v, allowed & hide_row), atol=1e-12)


def test_causal_with_globals_and_mask() -> None:
    rng = np.random.default_rng(14)
    n = 25
    q, k, v = inputs(rng, (n, 1, 4))
    keep = rng.random((n, n)) > 0.2
    mech = LocalGlobalAttention(dim=4, heads=1, window=5, global_tokens=[0, 10, 24], causal=True)
    np.testing.assert_allclose(mech(q, k, v, mask=keep), reference(q, k, v, pattern(n, 5, [0, 10, 24], True) & keep), atol=1e-12)


def test_torch_in_torch_out_float32_and_autograd() -> None:
    rng = np.random.default_rng(15)
    q, k, v = inputs(rng, (33, 2, 8), np.float32)
    mech = LocalGlobalAttention(dim=8, heads=2, window=6, global_tokens=3, causal=True)
    tq = torch.tensor(q, requires_grad=True)
    out = mech(tq, torch.tensor(k), torch.tensor(v))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (33, 2, 8)
    ref = reference(q, k, v, pattern(33, 6, [0, 1, 2], True))
    np.testing.assert_allclose(out.detach().numpy(), ref, atol=2e-5)
    out.sum().backward()
    assert tq.grad is not None and torch.isfinite(tq.grad).all()
    # the gradient equals the one of dense masked attention in torch
    tq2 = torch.tensor(q, requires_grad=True)
    allowed = torch.tensor(pattern(33, 6, [0, 1, 2], True))
    dense = torch.nn.functional.scaled_dot_product_attention(
        tq2.transpose(0, 1), torch.tensor(k).transpose(0, 1), torch.tensor(v).transpose(0, 1), attn_mask=allowed
    ).transpose(0, 1)
    dense.sum().backward()
    np.testing.assert_allclose(tq.grad.numpy(), tq2.grad.numpy(), atol=2e-5)
    assert mech(q, k, v).dtype == np.float32


def test_flat_input_and_self_attention_default() -> None:
    rng = np.random.default_rng(16)
    x = rng.standard_normal((12, 2, 4))
    mech = LocalGlobalAttention(dim=4, heads=2, window=3, global_tokens=1)
    out = mech(x.reshape(-1))
    assert out.shape == (12 * 2 * 4,)
    np.testing.assert_allclose(out.reshape(12, 2, 4), mech(x, x, x), atol=1e-14)
    np.testing.assert_allclose(mech(x), reference(x, x, x, pattern(12, 3, [0], False)), atol=1e-12)


def test_rope_option_rotates_q_and_k() -> None:
    rng = np.random.default_rng(17)
    q, k, v = inputs(rng, (20, 2, 8))
    rope = attnkit.RotaryEmbedding(8)
    with_rope = LocalGlobalAttention(dim=8, heads=2, window=6, global_tokens=1, rope=rope)
    plain = LocalGlobalAttention(dim=8, heads=2, window=6, global_tokens=1)
    expect = plain(rope.apply(q, seq_axis=-3), rope.apply(k, seq_axis=-3), v)
    np.testing.assert_allclose(with_rope(q, k, v), expect, atol=1e-12)
    pos = np.arange(20) + 100
    np.testing.assert_allclose(with_rope(q, k, v, positions=pos), plain(rope.apply(q, pos, -3), rope.apply(k, pos, -3), v), atol=1e-12)
    # relative property: shifting every position leaves the output unchanged
    np.testing.assert_allclose(with_rope(q, k, v, positions=pos), with_rope(q, k, v), atol=1e-10)
    assert LocalGlobalAttention(dim=8, heads=2, rope="interleaved").rope.layout == "interleaved"


def test_memory_is_linear_in_length() -> None:
    n, d = 4096, 8
    rng = np.random.default_rng(18)
    q, k, v = inputs(rng, (n, 1, d), np.float32)
    mech = LocalGlobalAttention(dim=d, heads=1, window=32, global_tokens=4, check_finite=False)
    mech(q, k, v)
    tracemalloc.start()
    try:
        mech(q, k, v)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    dense_scores = n * n * 4
    assert peak < dense_scores / 16, (peak, dense_scores)


def test_registry_and_features() -> None:
    assert "local_global" in attnkit.supported_features()
    mech = registry.create("local_global", dim="4", heads="1", window="5", global_tokens="0,7")
    assert mech.global_tokens == (0, 7) and mech.window == 5
    assert registry.create("local_global", global_tokens="3").global_tokens == 3
    assert isinstance(attnkit.LocalGlobalAttention(), LocalGlobalAttention)
    x = mech.sample_inputs(16, np.random.default_rng(0))
    assert mech(*x).shape == (16, 1, 4)
    assert mech.benchmark(16, repeats=1, warmup=0).latency_ms > 0


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="window"):
        LocalGlobalAttention(window=0)
    with pytest.raises(ConfigError, match="global_tokens"):
        LocalGlobalAttention(global_tokens=-1)
    with pytest.raises(ConfigError, match="global_tokens"):
        LocalGlobalAttention(global_tokens=[1, -2])
    with pytest.raises(ConfigError, match="global_tokens"):
        LocalGlobalAttention(global_tokens="a,b")
    with pytest.raises(ConfigError, match="scale"):
        LocalGlobalAttention(scale=0)
    with pytest.raises(ConfigError, match="rope"):
        LocalGlobalAttention(dim=4, rope=attnkit.RotaryEmbedding(8))
    mech = LocalGlobalAttention(dim=4, heads=2, window=4, global_tokens=[9])
    x = np.zeros((8, 2, 4))
    with pytest.raises(ShapeError, match="global_tokens"):
        mech(x)
    mech = LocalGlobalAttention(dim=4, heads=2, window=4)
    with pytest.raises(ShapeError, match="k"):
        mech(np.zeros((8, 2, 4)), np.zeros((9, 2, 4)), np.zeros((9, 2, 4)))
    with pytest.raises(ShapeError, match="heads"):
        mech(np.zeros((8, 3, 4)))
    with pytest.raises(ShapeError, match="mask"):
        mech(x, mask=np.ones((7, 8), dtype=bool))
    bad = x.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError, match="q"):
        mech(bad)
    with pytest.raises(TypeError, match="q"):
        mech(np.zeros((8, 2, 4), dtype=np.int32))
    mech.dispose()
    with pytest.raises(DisposedError):
        mech(x)
