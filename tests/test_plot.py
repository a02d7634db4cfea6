"""Heatmaps (attnkit.cli._plot): pooled weights against a float64 reference, tile-by-tile memory,
pictures that are neither blank nor written into the working tree."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import ref_weights
from test_cli_support import Runner, clean_env, ok

import attnkit
from attnkit.cli import _plot

pytest.importorskip("matplotlib")


def ref_pool(w: np.ndarray, size: int) -> np.ndarray:
    """Max over nearly equal bins, written plainly: (H, Lq, Lk) -> (H, min(Lq, size), min(Lk, size))."""
    h, lq, lk = w.shape
    re = np.linspace(0, lq, min(lq, size) + 1).round().astype(int)
    ce = np.linspace(0, lk, min(lk, size) + 1).round().astype(int)
    out = np.zeros((h, len(re) - 1, len(ce) - 1))
    for a in range(h):
        for i in range(len(re) - 1):
            for j in range(len(ce) - 1):
                out[a, i, j] = w[a, re[i] : re[i + 1], ce[j] : ce[j + 1]].max()
    return out


def heads_first(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(np.asarray(x, dtype=np.float64), -2, 0)  # (L, H, D) -> (H, L, D)


@pytest.mark.parametrize("size", [7, 16, 64])
def test_pool_array_is_blockwise_max(size: int):
    w = np.random.default_rng(0).random((3, 37, 53))
    pw = _plot.pool_array(w, size=size)
    assert pw.lq == 37 and pw.lk == 53 and pw.heads == 3
    np.testing.assert_array_equal(pw.grid, ref_pool(w, size))


@pytest.mark.parametrize("causal", [False, True])
def test_flash_tiles_by_query_rows_match_reference(monkeypatch, causal: bool):
    """Query blocks with the keys a bottom-right causal mask lets them see (Lq != Lk) give the exact weights."""
    monkeypatch.setattr(_plot, "_TILE_ELEMENTS", 3 * 40 * 5)  # 5 rows a tile: 6 tiles
    rng = np.random.default_rng(1)
    q = rng.standard_normal((29, 3, 8)).astype(np.float32)
    k = rng.standard_normal((40, 3, 8)).astype(np.float32)
    mech = attnkit.FlashAttention(heads=3, dim=8, causal=causal)
    pw = _plot.pooled_weights(mech, q, k, size=64)
    ref = ref_weights(heads_first(q), heads_first(k), causal=causal)
    np.testing.assert_allclose(pw.grid, ref, atol=2e-6)
    pooled = _plot.pooled_weights(mech, q, k, size=9)
    np.testing.assert_allclose(pooled.grid, ref_pool(ref, 9), atol=2e-6)


def test_one_hot_value_probe_matches_reference(monkeypatch):
    """Key blocks through forward with one-hot values (forced for flash) are columns of the weights."""
    monkeypatch.setattr(_plot, "_TILE_ELEMENTS", 24 * 2 * 7)  # 7 keys a block
    monkeypatch.setattr(_plot, "_FULL_ELEMENTS", 0)
    monkeypatch.setattr(_plot, "_row_tiles_exact", lambda mech: False)
    rng = np.random.default_rng(2)
    q = rng.standard_normal((24, 2, 8))
    mech = attnkit.FlashAttention(heads=2, dim=8, causal=True)
    pw = _plot.pooled_weights(mech, q, size=64)
    np.testing.assert_allclose(pw.grid, ref_weights(heads_first(q), heads_first(q), causal=True), atol=1e-12)


def test_linear_attention_implicit_weights_match_reference():
    """Linear attention has no weights method: the probe recovers phi(q_i).phi(k_j) / sum_j' phi(q_i).phi(k_j')."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal((20, 2, 6))
    k = rng.standard_normal((20, 2, 6))
    for causal in (False, True):
        mech = attnkit.LinearAttention(dim=6, heads=2, feature_map="elu", causal=causal)
        pw = _plot.pooled_weights(mech, q, k, size=64)
        phi = lambda x: np.where(x > 0, x + 1.0, np.exp(x))  # noqa: E731 - elu(x) + 1
        s = np.einsum("ihd,jhd->hij", phi(q), phi(k))
        if causal:
            s = s * np.tril(np.ones((20, 20)))
        ref = s / (s.sum(-1, keepdims=True) + 1e-6)
        np.testing.assert_allclose(pw.grid, ref, rtol=1e-6, atol=1e-9)


def test_local_global_and_headless_match_their_own_weights(monkeypatch):
    monkeypatch.setattr(_plot, "_FULL_ELEMENTS", 0)
    monkeypatch.setattr(_plot, "_TILE_ELEMENTS", 2 * 40 * 6)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((40, 2, 8))
    lg = attnkit.LocalGlobalAttention(dim=8, heads=2, window=6, global_tokens=2)
    np.testing.assert_allclose(_plot.pooled_weights(lg, x, size=64).grid, np.asarray(lg.attention_scores(x)), atol=1e-12)
    hyp = attnkit.HyperbolicAttention(dim=5, curvature=1.0)
    pts = attnkit.to_poincare(0.3 * rng.standard_normal((33, 5)), c=1.0)
    np.testing.assert_allclose(_plot.pooled_weights(hyp, pts, pts, size=64).grid[0], np.asarray(hyp.attention_weights(pts, pts)), atol=1e-12)


def test_no_weights_is_a_clear_error():
    mech = attnkit.mechanisms.registry.create("dual_space", dim=4)
    x = np.random.default_rng(5).standard_normal((6, 4))
    with pytest.raises(attnkit.AttentionError, match="dual_space"):
        _plot.pooled_weights(mech, x, x)


def test_memory_stays_tile_sized(monkeypatch):
    """Flash at L=1024, 4 heads: the full weights would be 4*1024*1024 float64 = 32 MiB; tiles of 64K
    weights keep the peak of traced allocations (NumPy reports to tracemalloc) far below that."""
    monkeypatch.setattr(_plot, "_TILE_ELEMENTS", 1 << 16)
    rng = np.random.default_rng(6)
    q = rng.standard_normal((1024, 4, 16)).astype(np.float32)
    mech = attnkit.FlashAttention(heads=4, dim=16, causal=True)
    tracemalloc.start()
    try:
        pw = _plot.pooled_weights(mech, q, size=128)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    full = 4 * 1024 * 1024 * 8
    assert pw.grid.shape == (4, 128, 128)
    assert peak < full / 8, f"peak {peak / 2**20:.1f} MiB"


def _png(path: Path) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(path)


def _assert_picture(path: Path, min_w: int, min_h: int) -> np.ndarray:
    img = _png(path)
    h, w = img.shape[:2]
    assert w >= min_w and h >= min_h, (w, h)
    rgb = img[..., :3]
    assert rgb.std() > 0.05, "blank picture"
    return rgb


def test_heatmap_draws_every_head_or_says_which(tmp_path: Path, monkeypatch):
    titles: list[str] = []
    real_save = _plot._save

    def spy(fig, plt, path):  # noqa: ANN001, ANN202
        titles.append(fig._suptitle.get_text())
        return real_save(fig, plt, path)

    monkeypatch.setattr(_plot, "_save", spy)
    w = np.random.default_rng(7).dirichlet(np.ones(50), size=(20, 50))  # (20 heads, 50, 50)
    _plot.heatmap(w, tmp_path / "a.png", max_heads=16)
    _plot.heatmap(w[:6], tmp_path / "b.png")
    assert "heads 0-15 of 20" in titles[0] and "all 6 heads" in titles[1]
    _assert_picture(tmp_path / "a.png", 800, 800)
    _assert_picture(tmp_path / "b.png", 600, 300)


def test_demo_pictures_show_distinct_patterns(tmp_path: Path):
    """Each picture is not blank, and the patterns differ: causal has an empty upper triangle, local-global
    a band with global stripes, flash the motif's diagonals."""
    pws = {label: compute() for label, _, compute in _plot.pictures(64)}
    flash = pws["flash"].grid[0]
    causal = pws["flash, causal"].grid[0]
    lg = pws["local_global: window 16, 4 global"].grid[0]
    assert np.all(causal[np.triu_indices(64, 1)] == 0) and np.all(np.diag(causal) > 0)
    assert np.all(lg[:4] > 0) and np.all(lg[:, :4] > 0)  # global rows and columns
    assert lg[40, 60] == 0 and lg[40, 41] > 0  # outside / inside the window
    assert np.all(flash > 0)
    # the motif (period 8): a query weighs keys 8 apart more than its neighbours on average
    assert np.mean([flash[i, (i + 8) % 64] for i in range(64)]) > 5 * np.mean([flash[i, (i + 3) % 64] for i in range(64)])
    path = _plot.heatmap_grid(list(pws.items()), tmp_path / "demo.png", title="demo")
    _assert_picture(Path(path), 1200, 900)


def test_demo_writes_to_temp_dir_not_cwd(tmp_path: Path):
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    run = Runner(work)
    proc = ok(run("demo", "--length", "32", env=clean_env(tmp_path, TMPDIR=str(tmp)), timeout=300))
    assert os.listdir(work) == []
    pic = tmp / "attnkit" / "attnkit-demo.png"
    assert str(pic) in proc.stdout.replace("\n", "")
    _assert_picture(pic, 1200, 900)


def test_compute_motif_heatmap_and_its_errors(tmp_path: Path):
    from test_cli_support import one_error_line

    run = Runner(tmp_path)
    ok(run("compute", "-t", "flash", "--heads", "2", "--dim", "8", "--random", "48", "--motif", "8", "--causal", "--heatmap", "m.png"))
    _assert_picture(tmp_path / "m.png", 500, 400)
    assert "--motif" in one_error_line(run("compute", "-t", "flash", "--motif", "8"))
    assert "--motif" in one_error_line(run("compute", "-t", "flash", "--random", "8", "--motif", "0"))
