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


def _needs_compiled_pass() -> None:
    """Skip unless the ``numba`` extra's compiled pass is installed and enabled."""
    pytest.importorskip("numba")
    from attnkit.kernels import _accel

    if _accel.exp_rowsum() is None:
        pytest.skip("numba present but disabled ($ATTNKIT_NUMBA) or unusable")


def test_numpy_and_compiled_exp_paths_agree():
    """The ``numba`` extra's fused exp pass (where installed) and the NumPy pass give the same result,
    both equal to the float64 dense reference; bounded tiles (amplitude 1) use it, banded (tiles with
    no global key) and with a -inf mask (tiles with one)."""
    _needs_compiled_pass()
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


def _layout(a, strided):
    """``a (n, L, D)`` as is, or as the heads-first view of an ``(L, n, D)`` array (the (L, H, D) layout)."""
    return np.ascontiguousarray(a.transpose(1, 0, 2)).transpose(1, 0, 2) if strided else a


CUTS = [(203, 20, 16, 1, False), (203, 20, 24, 2, True), (333, 33, None, 3, True), (190, 70, 32, None, False)]


@pytest.mark.parametrize("accel", [False, True])
@pytest.mark.parametrize("glob", [(), (0, 5, 150)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("amplitude", ["1", "30", "spike"])
@pytest.mark.parametrize("length, radius, block, heads_per_tile, strided", CUTS)
def test_tasks_tiles_and_head_stacks_equal_dense_reference(
    accel, glob, causal, amplitude, length, radius, block, heads_per_tile, strided, monkeypatch
):
    """Every way the NumPy path cuts the work: tasks of a few tiles (TASK_ROWS 48 here) whose key span holds
    a global key or not, stacks of 1-3 of 5 heads (the last stack shorter), tiles that do not divide the
    length, keys and values read in place from the (L, H, D) layout, the compiled banded pass with the
    scale applied inside (no global token) or on scaled queries; logits bounded everywhere, nowhere, or
    in all tiles but those of a few rows ("spike": the task-wide check fails, the tile checks decide)."""
    if accel:
        _needs_compiled_pass()
    monkeypatch.setattr(lk, "TASK_ROWS", 48)
    rng = np.random.default_rng(length + radius)
    n, d = 5, 8
    q, k, v = (rng.standard_normal((n, length, d)).astype(np.float32) for _ in range(3))
    if amplitude == "30":
        q *= 30
    elif amplitude == "spike":
        q[:, 100:104] *= 40
    gidx = np.array(glob, dtype=np.int64)
    q, k, v = (_layout(a, strided) for a in (q, k, v))
    kw = dict(scale=0.3, radius=radius, global_idx=gidx, causal=causal, mask=None, block=block, heads_per_tile=heads_per_tile, accel=accel)
    out = lk.local_global_numpy(q, k, v, **kw)
    ref = dense_ref(q, k, v, 0.3, lk.local_global_mask(length, radius, glob, causal))
    assert out.dtype == np.float32 and out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5 * max(1.0, float(np.abs(ref).max())))
    # one thread or two: the same tiles in the same order of operations, the same bits
    np.testing.assert_array_equal(lk.local_global_numpy(q, k, v, num_threads=1, **kw), lk.local_global_numpy(q, k, v, num_threads=2, **kw))


@pytest.mark.parametrize("accel", [False, True])
def test_nan_spreads_only_to_the_rows_that_see_it(accel):
    """A NaN key makes NaN exactly the rows whose pattern holds it, as in the float64 dense reference."""
    if accel:
        _needs_compiled_pass()
    rng = np.random.default_rng(9)
    n, length, d, radius = 2, 260, 8, 16
    q, k, v = (rng.standard_normal((n, length, d)).astype(np.float32) for _ in range(3))
    k[1, 130, 3] = np.nan
    out = lk.local_global_numpy(q, k, v, scale=0.3, radius=radius, global_idx=np.zeros(0, np.int64), causal=False, mask=None, block=None, accel=accel)
    ref = dense_ref(q, k, v, 0.3, lk.local_global_mask(length, radius))
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    assert np.isnan(out[1, 114:147]).all() and not np.isnan(out[0]).any()
    ok = ~np.isnan(ref)
    np.testing.assert_allclose(out[ok], ref[ok], rtol=0, atol=2e-5)


@pytest.mark.parametrize("causal, glob", [(True, 0), (False, [0, 1, 1000])])
def test_mechanism_with_and_without_numba_equals_dense_reference(causal, glob, monkeypatch):
    """``LocalGlobalAttention.forward`` on (L, H, D) float32 NumPy input large enough for the compiled pass:
    with it (the banded kernel runs) and with ``ATTNKIT_NUMBA=0`` (it does not), both equal to the float64
    dense softmax with the explicit pattern, on rows at both ends and in the middle."""
    from attnkit import LocalGlobalAttention
    from attnkit.kernels import _accel

    heads, length, d, window = 4, 2048, 16, 128  # 4 * 2048 * 129 scores: over _accel.USE_MIN_SCORES
    rng = np.random.default_rng(3)
    x = [rng.standard_normal((length, heads, d)).astype(np.float32) for _ in range(3)]
    mech = LocalGlobalAttention(dim=d, heads=heads, window=window, causal=causal, global_tokens=glob)
    compiled = _accel.exp_rowsum() is not None  # loaded now (a call this small does not load it)
    calls = []
    real = _accel.softmax_band

    def spy():
        f = real()
        return None if f is None else (lambda *a: calls.append(1) or f(*a))

    monkeypatch.setattr(_accel, "softmax_band", spy)
    rows = np.r_[0:200, 1000:1100, 1900:2048]
    qh, kh, vh = (a.transpose(1, 0, 2).astype(np.float64) for a in x)
    allowed = mech.dense_mask(length)[rows]
    s = np.where(allowed, qh[:, rows] @ kh.transpose(0, 2, 1) / np.sqrt(d), -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    ref = ((e / e.sum(-1, keepdims=True)) @ vh).transpose(1, 0, 2)
    outs = {}
    for env in ("1", "0"):
        monkeypatch.setenv("ATTNKIT_NUMBA", env)
        calls.clear()
        out = mech.forward(*x)
        outs[env] = out
        assert out.dtype == np.float32 and out.shape == (length, heads, d)
        np.testing.assert_allclose(out[rows], ref, rtol=0, atol=1e-5)
        assert bool(calls) == (env == "1" and compiled)
    np.testing.assert_allclose(outs["1"], outs["0"], rtol=0, atol=2e-6)


@pytest.mark.parametrize("fast", [True, False])
def test_output_is_noted_as_a_convex_combination(fast, monkeypatch):
    """The forward's output check (``overflow.finite_or_wider``) does not read the output: the kernel notes
    ``|out| <= max|v| Lk`` (fast path, and generic path with a boolean mask); the result is unchanged."""
    from attnkit import LocalGlobalAttention
    from attnkit.kernels import overflow

    rng = np.random.default_rng(4)
    x = [rng.standard_normal((300, 2, 8)).astype(np.float32) for _ in range(3)]
    mech = LocalGlobalAttention(dim=8, heads=2, window=40, global_tokens=2)
    if not fast:
        monkeypatch.setattr(lk, "local_global_numpy", lambda *a, **kw: None)
    read = []
    real = overflow._all_finite
    monkeypatch.setattr(overflow, "_all_finite", lambda a: read.append(a.shape) or real(a))
    out = mech.forward(*x)
    assert (300, 2, 8) not in read
    qh, kh, vh = (a.transpose(1, 0, 2) for a in x)
    ref = dense_ref(qh, kh, vh, 1 / np.sqrt(8), mech.dense_mask(300)).transpose(1, 0, 2)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5)
