"""The NumPy fast path of local-global attention against a plain float64 dense reference with the
equivalent mask, over many tiles, edge blocks, globals inside windows, causal, and logits too large
to skip the row maximum."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from attnkit.kernels import local as lk


def dense_ref(q, k, v, scale, mask):
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    s = np.where(mask, scale * q @ np.swapaxes(k, -1, -2), -np.inf)
    s -= s.max(-1, keepdims=True)
    e = np.exp(s)
    return (e / e.sum(-1, keepdims=True)) @ v


@pytest.mark.parametrize("dtype, tol", [(np.float32, 2e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("radius, block, glob, causal", [(20, 16, (), False), (33, 32, (0, 40, 41, 199), False), (20, 48, (3, 100), True)])
@pytest.mark.parametrize("amplitude", [1.0, 30.0])  # 30: |q||k| scale far above 60, the row maximum is taken
def test_fast_path_equals_dense_reference(dtype, tol, radius, block, glob, causal, amplitude, monkeypatch):
    rng = np.random.default_rng(radius + block)
    n, L, d = 3, 200, 8
    q, k, v = (rng.standard_normal((2, n, L, d)).astype(dtype) for _ in range(3))
    q *= amplitude
    ran = []
    real = lk.local_global_numpy
    monkeypatch.setattr(lk, "local_global_numpy", lambda *a, **kw: ran.append(1) or real(*a, **kw))
    gidx = np.array(glob, dtype=np.int64)
    out = lk.local_global_attention(q, k, v, xp=np, scale=0.3, radius=radius, global_idx=gidx, causal=causal, block=block)
    assert ran and out.dtype == dtype
    ref = dense_ref(q, k, v, 0.3, lk.local_global_mask(L, radius, glob, causal))
    np.testing.assert_allclose(out, ref, rtol=0, atol=tol * max(1.0, float(np.abs(ref).max())))
    # the generic array-API path (the fast path declined) gives the same
    monkeypatch.setattr(lk, "local_global_numpy", lambda *a, **kw: None)
    gen = lk.local_global_attention(q, k, v, xp=np, scale=0.3, radius=radius, global_idx=gidx, causal=causal, block=block)
    np.testing.assert_allclose(out, gen, rtol=0, atol=tol * max(1.0, float(np.abs(ref).max())))


def test_default_numpy_block():
    assert lk.local_numpy_block(256, 16384) == 64
    assert lk.local_numpy_block(4, 16384) == 32
    assert lk.local_numpy_block(4096, 16384) == 128
    assert lk.local_numpy_block(256, 100) == 100
    assert lk.local_numpy_heads(8, 64, 256, 4) == 4  # 4 x 64 x 576 float32 scores: 590 KB
    assert lk.local_numpy_heads(3, 64, 256, 4) == 3
    assert lk.local_numpy_heads(8, 128, 4096, 8) == 1  # one head's tile is over 2 MiB already


def test_numpy_and_compiled_exp_paths_agree():
    """The ``numba`` extra's fused exp pass (where installed) and the NumPy pass give the same result,
    both equal to the float64 dense reference; bounded tiles (amplitude 1) use it, banded (tiles with
    no global key) and with a -inf mask (tiles with one)."""
    pytest.importorskip("numba")
    from attnkit.kernels import _accel

    if _accel.exp_rowsum() is None:
        pytest.skip("numba present but disabled ($ATTNKIT_NUMBA) or unusable")
    rng = np.random.default_rng(5)
    n, L, d, radius = 4, 700, 16, 40
    q, k, v = (rng.standard_normal((n, L, d)).astype(np.float32) for _ in range(3))
    for glob, causal in itertools.product((np.array([0, 333]), np.zeros(0, dtype=np.int64)), (False, True)):
        kw = dict(scale=0.25, radius=radius, global_idx=glob, causal=causal, mask=None, block=None)
        plain = lk.local_global_numpy(q, k, v, accel=False, **kw)
        fused = lk.local_global_numpy(q, k, v, accel=True, **kw)
        ref = dense_ref(q, k, v, 0.25, lk.local_global_mask(L, radius, glob, causal))
        np.testing.assert_allclose(plain, ref, rtol=0, atol=2e-5 * float(np.abs(ref).max()))
        np.testing.assert_allclose(fused, ref, rtol=0, atol=2e-5 * float(np.abs(ref).max()))
        np.testing.assert_allclose(fused, plain, rtol=0, atol=2e-6 * float(np.abs(ref).max()))
