"""The optional compiled exp pass (``numba`` extra, :mod:`attnkit.kernels._accel`) against float64
``np.exp`` and ``np.sum``, including the values it special-cases; and that ``import attnkit`` never
imports Numba."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from attnkit.kernels import _accel


def _kernel():
    pytest.importorskip("numba")
    f = _accel.exp_rowsum()
    if f is None:
        pytest.skip("numba present but disabled ($ATTNKIT_NUMBA) or unusable")
    return f


def test_exp_rowsum_matches_float64_exp():
    f = _kernel()
    x = np.linspace(-87.0, 88.37, 400_001, dtype=np.float32).reshape(1, -1)
    ref = np.exp(x.astype(np.float64))
    y, z = x.copy(), np.empty(1, dtype=np.float32)
    f(y, z)
    assert np.max(np.abs(y - ref) / ref) < 4e-7  # a few float32 ulps, like NumPy's own exp
    rng = np.random.default_rng(1)
    s = (rng.standard_normal((37, 301)) * 8).astype(np.float32)
    ref = np.exp(s.astype(np.float64))
    z = np.empty(37, dtype=np.float32)
    f(s, z)
    np.testing.assert_allclose(s, ref, rtol=4e-7, atol=0)
    np.testing.assert_allclose(z, ref.sum(axis=1), rtol=2e-6, atol=0)


def test_exp_rowsum_special_values():
    f = _kernel()
    x = np.array([[-np.inf, -1e30, -88.0, 0.0, 1.0, 89.0, 1e30, np.inf], [np.nan, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    z = np.empty(2, dtype=np.float32)
    f(x, z)
    np.testing.assert_array_equal(x[0, :3], 0.0)  # masked (-inf) and far-underflowing logits give exactly 0
    assert x[0, 3] == 1.0 and abs(x[0, 4] - np.e) < 1e-6
    assert np.isinf(x[0, 5:]).all() and np.isinf(z[0])
    assert np.isnan(x[1, 0]) and np.isnan(z[1])


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("ATTNKIT_NUMBA", "0")
    assert not _accel.enabled()
    assert _accel.exp_rowsum() is None


def test_import_attnkit_does_not_import_numba():
    code = (
        "import sys, numpy as np, attnkit; x = np.ones((3, 2, 4), np.float32); "
        "attnkit.FlashAttention(heads=2, dim=4).forward(x, x, x); print('numba' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


def test_wanted_only_for_large_float32_calls(monkeypatch):
    assert not _accel.wanted(1 << 30, np.float64)  # the pass is float32 only
    assert not _accel.wanted(1000, np.float32)  # small calls keep NumPy's pass
    monkeypatch.setenv("ATTNKIT_NUMBA", "0")
    assert not _accel.wanted(1 << 30, np.float32)
    monkeypatch.delenv("ATTNKIT_NUMBA")
    assert _accel.wanted(1 << 30, np.float32) == _accel.enabled()


@pytest.mark.parametrize("first, last", [(-5, 508), (0, 1), (-70, -60), (3, 900), (-1000, 1000)])
def test_softmax_band_keeps_each_rows_band(first, last):
    """Row ``i`` of each stacked tile holds ``e^s / z`` on columns ``i + first .. i + last - 1`` (clipped), with
    ``z`` their sum of ``e^s``, and 0 elsewhere; logits up to +-80 (the kernel has no range clamps: its
    callers bound them by 60); a NaN stays NaN in its row."""
    _kernel()
    g = _accel.softmax_band()
    rng = np.random.default_rng(2)
    s0 = (rng.standard_normal((3, 64, 300)) * 4).astype(np.float32)
    s0[1, :, ::7] = 80.0
    s0[2, :, ::5] = -80.0
    i, j = np.arange(64)[:, None], np.arange(300)[None, :]
    keep = (j >= i + first) & (j < i + last)
    e = np.where(keep, np.exp(s0.astype(np.float64)), 0.0)
    z_ref = e.sum(axis=-1)
    s, z = s0.copy(), np.empty((3, 64), dtype=np.float32)
    g(s, first, last, False, z)  # the exponentials alone
    np.testing.assert_allclose(s, e, rtol=4e-7, atol=0)
    np.testing.assert_allclose(z, z_ref, rtol=2e-6, atol=0)
    s = s0.copy()
    g(s, first, last, True, z)
    rows = z_ref > 0  # rows with no kept column: nothing to normalise (z = 0)
    np.testing.assert_allclose(z, z_ref, rtol=2e-6, atol=0)
    np.testing.assert_allclose(s[rows], (e / np.where(rows, z_ref, 1.0)[..., None])[rows], rtol=2e-6, atol=1e-12)
    assert (s[~np.broadcast_to(keep, s.shape)] == 0).all()
    s0[0, 5, 5] = np.nan  # NaN stays NaN (row 5 keeps column 5 in every case where first <= 0 < last)
    s = s0.copy()
    g(s, first, last, True, z)
    assert np.isnan(s[0, 5, 5]) == (first <= 0 < last) and np.isnan(z[0, 5]) == (first <= 0 < last)
