"""The NumPy fast path (``kernels.dense_numpy``) against the generic kernel and the float64 reference.

The fast path tiles, threads and switches between two softmax schemes (bounded logits with exp2,
online softmax with a running maximum); every combination must give the generic path's result
to float32 rounding. Small tiles are patched in so that short inputs exercise several query
tiles, several key blocks and causal diagonal blocks.
"""

from __future__ import annotations

import math
import threading
import tracemalloc

import numpy as np
import pytest
from conftest import TOL32, TOL64, ref_attention, rel_err

from attnkit.kernels import dense_numpy as dn
from attnkit.kernels.dense import sdpa, sdpa_generic


@pytest.fixture
def small_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiles of 16 queries x 24 keys and no batched shortcut, so tiny inputs cross many tile edges."""
    monkeypatch.setattr(dn, "_Q_TILE", 16)
    monkeypatch.setattr(dn, "_MIN_KEY_BLOCK", 8)
    monkeypatch.setattr(dn, "_TILE_BYTES", 16 * 24 * 4)
    monkeypatch.setattr(dn, "_SMALL_SCORES", 0)


@pytest.fixture(params=["bounded-exp2", "bounded-exp", "bounded-numba", "online"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test under each softmax scheme: bounded logits with exp2, exp or the compiled fused pass
    of the ``numba`` extra (skipped without it), online softmax."""
    if request.param == "bounded-numba":
        pytest.importorskip("numba")
        from attnkit.kernels import _accel

        if _accel.exp_rowsum() is None:
            pytest.skip("numba present but disabled or unusable")
        monkeypatch.setattr(_accel, "USE_MIN_SCORES", 0)
    else:
        monkeypatch.setenv("ATTNKIT_NUMBA", "0")  # the NumPy passes, even where Numba is installed
    monkeypatch.setattr(dn, "_EXP2", {k: request.param != "bounded-exp" for k in dn._LOGIT_RANGE})
    if request.param == "online":
        monkeypatch.setattr(dn, "_LOGIT_RANGE", {k: -1.0 for k in dn._LOGIT_RANGE})
    return request.param


def test_exp_choice_is_timed_once_or_set_by_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dn, "_EXP2", {})
    monkeypatch.setenv("ATTNKIT_EXP", "exp")
    assert dn._prefer_exp2(np.dtype(np.float32)) is False
    monkeypatch.setenv("ATTNKIT_EXP", "exp2")
    assert dn._prefer_exp2(np.dtype(np.float32)) is False  # decided once per process and dtype
    assert dn._prefer_exp2(np.dtype(np.float64)) is True
    monkeypatch.delenv("ATTNKIT_EXP")
    monkeypatch.setattr(dn, "_EXP2", {})
    assert isinstance(dn._prefer_exp2(np.dtype(np.float32)), bool)


def _inputs(
    rng: np.random.Generator, qb: tuple, kb: tuple, vb: tuple, lq: int, lk: int, d: int, dv: int, dtype: type = np.float32, qscale: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q = (rng.standard_normal((*qb, lq, d)) * qscale).astype(dtype)
    k = rng.standard_normal((*kb, lk, d)).astype(dtype)
    v = rng.standard_normal((*vb, lk, dv)).astype(dtype)
    return q, k, v


def _check(q, k, v, mask=None, causal=False, scale=None, threads=None, tol=None):  # noqa: ANN001, ANN202
    """Fast path vs float64 reference and vs the generic path in the same dtype."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out = dn.sdpa_numpy(q, k, v, scale=scale, mask=mask, causal=causal, num_threads=threads)
    assert out is not None
    assert out.dtype == q.dtype
    gen = sdpa_generic(q, k, v, xp=np, scale=scale, mask=mask, causal=causal, block_size=7)
    assert out.shape == gen.shape
    m64 = None if mask is None else (mask if mask.dtype == bool else mask.astype(np.float64))
    ref = ref_attention(q, k, v, m64, causal, scale)
    tol = tol if tol is not None else (TOL32 if q.dtype == np.float32 else TOL64)
    err_fast, err_gen = rel_err(out, ref), rel_err(gen, ref)
    # as close to the truth as the generic path, up to rounding
    assert err_fast <= max(tol, 3 * err_gen), (err_fast, err_gen)
    assert rel_err(out, gen) <= max(tol, 4 * err_gen)
    return out


SHAPES = [
    # q batch, k batch, v batch, Lq, Lk, D, Dv
    ((1, 3), (1, 3), (1, 3), 40, 40, 8, 8),
    ((2, 1), (1, 3), (2, 3), 37, 53, 5, 7),  # batch dims broadcast, odd sizes
    ((3,), (3,), (3,), 1, 29, 4, 4),  # one query
    ((2,), (2,), (2,), 61, 1, 3, 6),  # one key
    ((), (), (), 50, 17, 16, 16),  # Lq > Lk
    ((2, 2), (2,), (2,), 17, 90, 6, 3),  # Lq < Lk, k/v shared across a leading axis
    ((1,), (1,), (1,), 16, 48, 8, 8),  # exact multiples of the tiles
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("causal", [False, True])
def test_matches_generic_on_tiled_shapes(rng, small_tiles, mode, shape, causal) -> None:  # noqa: ANN001
    qb, kb, vb, lq, lk, d, dv = shape
    q, k, v = _inputs(rng, qb, kb, vb, lq, lk, d, dv)
    _check(q, k, v, causal=causal)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask_shape", [(90,), (33, 1), (3, 1, 90), (2, 3, 33, 90), (33, 90)])
def test_bool_masks_with_fully_masked_rows(rng, small_tiles, mode, causal, mask_shape) -> None:  # noqa: ANN001
    q, k, v = _inputs(rng, (2, 3), (2, 3), (2, 3), 33, 90, 8, 8)
    mask = rng.random(mask_shape) > 0.4
    if len(mask_shape) >= 2 and mask_shape[-2] == 33:
        mask[..., 4, :] = False  # a query that sees no key
        mask[..., 30, :] = False
    out = _check(q, k, v, mask=mask, causal=causal)
    if len(mask_shape) >= 2 and mask_shape[-2] == 33:
        assert np.all(out[..., 4, :] == 0) and np.all(out[..., 30, :] == 0)


def test_all_keys_masked_gives_zeros(rng, small_tiles, mode) -> None:  # noqa: ANN001
    q, k, v = _inputs(rng, (2,), (2,), (2,), 20, 30, 4, 4)
    out = dn.sdpa_numpy(q, k, v, scale=0.5, mask=np.zeros(30, dtype=bool))
    assert out is not None and np.all(out == 0)


@pytest.mark.parametrize("causal", [False, True])
def test_float_masks(rng, small_tiles, causal) -> None:  # noqa: ANN001
    q, k, v = _inputs(rng, (2,), (2,), (2,), 33, 50, 8, 8)
    bias = rng.standard_normal((2, 33, 50)).astype(np.float32) * 3
    bias[rng.random(bias.shape) < 0.3] = -np.inf
    bias[0, 7, :] = -np.inf  # fully masked row
    bias[1, 9, :] = -1e30  # finite, very negative: an ordinary softmax over it
    out = _check(q, k, v, mask=bias, causal=causal)
    assert np.all(out[0, 7] == 0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lq,lk", [(40, 40), (23, 71), (71, 23)])
def test_float64(rng, small_tiles, mode, causal, lq, lk) -> None:  # noqa: ANN001
    q, k, v = _inputs(rng, (2,), (2,), (2,), lq, lk, 8, 5, dtype=np.float64)
    mask = rng.random((lq, lk)) > 0.2
    _check(q, k, v, causal=causal)
    _check(q, k, v, mask=mask, causal=causal)


@pytest.mark.parametrize("qscale", [0.01, 4.0, 9.0, 60.0])
@pytest.mark.parametrize("causal", [False, True])
def test_logit_scales(rng, small_tiles, qscale, causal) -> None:  # noqa: ANN001
    """Near-uniform, ordinary, and large logits (the large ones take the online softmax)."""
    q, k, v = _inputs(rng, (2,), (2,), (2,), 40, 60, 16, 8, qscale=qscale)
    _check(q, k, v, causal=causal)


@pytest.mark.parametrize("bound", [19.0, 59.9, 60.1])
def test_bounded_limit_edge(rng, small_tiles, bound) -> None:  # noqa: ANN001
    """Rows whose Cauchy-Schwarz bound sits at the limit R = 60: exp(+-60) must stay exact."""
    d = 16
    q, k, v = _inputs(rng, (1,), (1,), (1,), 32, 64, d, 8)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    q *= bound * math.sqrt(d)  # scale * |q| * max|k| = bound
    k[0, 5] = q[0, 3] / np.linalg.norm(q[0, 3])  # one logit at the upper bound ...
    k[0, 6] = -k[0, 5]  # ... and one at the lower bound
    phases: dict[str, float] = {}
    dn.sdpa_numpy(q, k, v, scale=1 / math.sqrt(d), num_threads=1, profile=phases)
    assert ("max" not in phases) == (bound < 60)  # the online softmax's running maximum only past R
    _check(q, k, v)


@pytest.mark.parametrize("vscale", [1e30, 1e-25, 1e-33])
def test_large_and_tiny_values(rng, small_tiles, vscale) -> None:  # noqa: ANN001
    """Values near float32's limits: the bounded path lowers R or hands over to the online softmax."""
    q, k, v = _inputs(rng, (2,), (2,), (2,), 20, 40, 8, 8, qscale=6.0)
    v = (v * vscale).astype(np.float32)
    out = dn.sdpa_numpy(q, k, v, scale=0.35)
    ref = ref_attention(q, k, v.astype(np.float64), None, False, 0.35)
    assert np.isfinite(out).all()
    assert np.max(np.abs(out - ref)) <= 1e-5 * np.max(np.abs(ref)) * 3


@pytest.mark.parametrize("scale", [0.0, -0.7, 3.0])
def test_scales(rng, small_tiles, scale) -> None:  # noqa: ANN001
    q, k, v = _inputs(rng, (2,), (2,), (2,), 20, 40, 8, 8)
    _check(q, k, v, scale=scale)


def test_threads_agree_bitwise(rng, small_tiles) -> None:  # noqa: ANN001
    q, k, v = _inputs(rng, (3, 2), (3, 2), (3, 2), 70, 90, 8, 8)
    one = dn.sdpa_numpy(q, k, v, scale=0.3, causal=True, num_threads=1)
    two = dn.sdpa_numpy(q, k, v, scale=0.3, causal=True, num_threads=2)
    assert one is not None and two is not None
    np.testing.assert_array_equal(one, two)


def test_without_threadpoolctl(rng, small_tiles, monkeypatch) -> None:  # noqa: ANN001
    from attnkit import _threads

    monkeypatch.setattr(_threads, "_controller", False)
    assert not dn.blas_limiter_available() and dn.get_num_threads() == 1
    q, k, v = _inputs(rng, (2,), (2,), (2,), 40, 50, 8, 8)
    _check(q, k, v, causal=True, threads=4)


def test_default_tiles_and_batched_small_path(rng) -> None:  # noqa: ANN001
    q, k, v = _inputs(rng, (1, 2), (1, 2), (1, 2), 300, 1100, 32, 32)  # default tiles: several blocks
    _check(q, k, v, causal=True)
    _check(q, k, v, mask=rng.random((300, 1100)) > 0.5)
    q, k, v = _inputs(rng, (2,), (2,), (2,), 9, 11, 4, 4)  # below _SMALL_SCORES: one batched pass
    _check(q, k, v, causal=True, mask=rng.random((9, 11)) > 0.5)


def test_non_contiguous_inputs(rng, small_tiles) -> None:  # noqa: ANN001
    """The heads-first views FlashAttention passes (moveaxis of (L, H, D))."""
    q, k, v = (np.moveaxis(x, -3, -2) for x in _inputs(rng, (2,), (2,), (2,), 40, 4, 8, 8))
    q, k, v = (np.moveaxis(rng.standard_normal((2, n, 3, 8)).astype(np.float32), -3, -2) for n in (40, 50, 50))
    assert not q.flags.c_contiguous
    _check(q, k, v, causal=True)


def test_scratch_reuse_sees_new_keys(rng, small_tiles) -> None:  # noqa: ANN001
    """Per-thread scratch (K^T) is reused across calls; keys changed in place must be re-read."""
    q, k, v = _inputs(rng, (2,), (2,), (2,), 30, 40, 8, 8)
    dn.sdpa_numpy(q, k, v, scale=0.3, num_threads=1)
    k[...] = rng.standard_normal(k.shape)
    _check(q, k, v, scale=0.3, threads=1)


def test_concurrent_callers(rng, small_tiles) -> None:  # noqa: ANN001
    inputs = [_inputs(rng, (2,), (2,), (2,), 50, 60, 8, 8) for _ in range(4)]
    results: list = [None] * 4

    def work(i: int) -> None:
        q, k, v = inputs[i]
        results[i] = [dn.sdpa_numpy(q, k, v, scale=0.4, causal=bool(i % 2), num_threads=2) for _ in range(3)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (q, k, v) in enumerate(inputs):
        ref = ref_attention(q, k, v, None, bool(i % 2), 0.4)
        for r in results[i]:
            assert rel_err(r, ref) <= TOL32


@pytest.mark.parametrize(
    "args",
    [
        dict(q=np.zeros((2, 3, 4), np.float16)),  # half precision: generic path
        dict(k=np.zeros((2, 5, 4), np.float64)),  # mixed dtypes
        dict(mask=np.zeros((3, 5), np.int32)),  # integer mask
        dict(mask=np.zeros((3, 5), np.float64)),  # float mask of another dtype
        dict(q=np.zeros((2, 0, 4), np.float32)),  # no query
        dict(q=[[[0.0] * 4] * 3] * 2),  # not an ndarray
        dict(scale=float("nan")),
    ],
)
def test_returns_none_where_it_does_not_apply(args) -> None:  # noqa: ANN001
    kw = dict(q=np.zeros((2, 3, 4), np.float32), k=np.zeros((2, 5, 4), np.float32), v=np.zeros((2, 5, 4), np.float32), scale=0.5)
    kw.update(args)
    q, k, v = kw.pop("q"), kw.pop("k"), kw.pop("v")
    assert dn.sdpa_numpy(q, k, v, **kw) is None


def test_dispatch_uses_fast_path_and_falls_back(rng, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("ATTNKIT_ENGINE", "numpy")  # not the per-machine calibration (it may pick torch's kernel)
    q, k, v = _inputs(rng, (2,), (2,), (2,), 30, 40, 8, 8)
    calls = []
    real = dn.sdpa_numpy
    monkeypatch.setattr(dn, "sdpa_numpy", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    out = sdpa(q, k, v, xp=np, scale=0.3, causal=True)
    assert calls and rel_err(out, ref_attention(q, k, v, None, True, 0.3)) <= TOL32
    calls.clear()
    sdpa(q, k, v, xp=np, scale=0.3, backend="generic")
    sdpa(q, k, v, xp=np, scale=0.3, dropout_p=0.5, rng=np.random.default_rng(0))  # dropout: generic
    assert not calls
    half = sdpa(q.astype(np.float16), k.astype(np.float16), v.astype(np.float16), xp=np, scale=0.3)
    assert half.dtype == np.float16  # the fast path declines, the generic path answers


def test_memory_stays_bounded(rng) -> None:  # noqa: ANN001
    """4096 x 4096 scores for 2 heads would take 134 MB; the tiled path stays within a few MB."""
    q, k, v = (rng.standard_normal((2, 4096, 32), dtype=np.float32) for _ in range(3))
    dn.sdpa_numpy(q[:, :512], k[:, :512], v[:, :512], scale=0.2)  # warm the scratch and pool
    tracemalloc.start()
    try:
        out = dn.sdpa_numpy(q, k, v, scale=0.2, causal=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out is not None
    assert peak - out.nbytes < 16 * 2**20, f"peak {peak / 2**20:.1f} MB beyond the output"


def test_called_from_another_thread_same_bits_and_blas_restored(rng) -> None:  # noqa: ANN001
    """BLAS is held to one thread inside the pool whichever thread calls (threadpoolctl alone would
    only let its 'controlling' thread do that), and its thread count is given back afterwards."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    blas = threadpoolctl.ThreadpoolController().select(user_api="blas")
    before = [c.num_threads for c in blas.lib_controllers]
    q, k, v = _inputs(rng, (3,), (3,), (3,), 700, 700, 64, 64)
    main = dn.sdpa_numpy(q, k, v, scale=0.125, causal=True)
    got: list = []
    t = threading.Thread(target=lambda: got.append(dn.sdpa_numpy(q, k, v, scale=0.125, causal=True)))
    t.start()
    t.join()
    np.testing.assert_array_equal(main, got[0])
    assert [c.num_threads for c in threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers] == before


def test_compiled_exp_pass_agrees_with_numpy_pass(rng, monkeypatch) -> None:  # noqa: ANN001
    """With the ``numba`` extra the bounded float32 tiles take the fused exp + row-sum pass; it gives
    the NumPy pass's result to float32 rounding, and both match the float64 reference."""
    pytest.importorskip("numba")
    q, k, v = _inputs(rng, (2, 3), (2, 3), (2, 3), 300, 700, 32, 24)
    for causal in (False, True):
        fused = dn.sdpa_numpy(q, k, v, scale=0.2, causal=causal, accel=True)
        plain = dn.sdpa_numpy(q, k, v, scale=0.2, causal=causal, accel=False)
        ref = ref_attention(q, k, v, None, causal, 0.2)
        assert rel_err(fused, ref) <= TOL32 and rel_err(plain, ref) <= TOL32
        assert rel_err(fused, plain) <= TOL32
    monkeypatch.setenv("ATTNKIT_NUMBA", "0")
    out = dn.sdpa_numpy(q, k, v, scale=0.2, accel=True)  # asked for, but switched off: the NumPy pass
    np.testing.assert_array_equal(out, dn.sdpa_numpy(q, k, v, scale=0.2, accel=False))
