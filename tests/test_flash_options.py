"""FlashAttention's FlashAttention-2 options (issue 11): ``window``, ``alibi_slopes``, ``softcap``.

Oracle: a dense float64 reference written here, in which the window is a bool mask, ALiBi a float
bias ``-slope_h * |i + Lk - Lq - j|`` and the soft cap ``cap * tanh(s / cap)`` on the scaled scores,
all bottom-right aligned like FlashAttention-2's; and torch's SDPA given the same mask and bias.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TOL32, TOL64, assert_close, lower_right_mask, randn, to_np

from attnkit import FlashAttention, LocalGlobalAttention
from attnkit.errors import ConfigError


def window_mask(lq: int, lk: int, left: int, right: int) -> np.ndarray:
    """Bool (Lq, Lk): i + Lk - Lq - left <= j <= i + Lk - Lq + right (a negative side unbounded)."""
    rel = np.arange(lk)[None, :] - (np.arange(lq)[:, None] + lk - lq)
    keep = np.ones((lq, lk), dtype=bool)
    if left >= 0:
        keep &= rel >= -left
    if right >= 0:
        keep &= rel <= right
    return keep


def alibi(slopes: np.ndarray, lq: int, lk: int) -> np.ndarray:
    """Float (H, Lq, Lk): -slope_h * |i + Lk - Lq - j|."""
    dist = np.abs(np.arange(lq)[:, None] + lk - lq - np.arange(lk)[None, :])
    return -np.asarray(slopes, dtype=np.float64)[:, None, None] * dist


def reference(q, k, v, *, causal=False, window=(-1, -1), slopes=None, softcap=None, mask=None):
    """float64 weights (..., H, Lq, Lk) and output (..., Lq, H, Dv) in the sequence layout; k/v heads may divide H."""
    qh, kh, vh = (np.moveaxis(np.asarray(x, dtype=np.float64), -3, -2) for x in (q, k, v))
    g = qh.shape[-3] // kh.shape[-3]
    kh, vh = np.repeat(kh, g, axis=-3), np.repeat(vh, g, axis=-3)
    lq, lk = qh.shape[-2], kh.shape[-2]
    s = np.einsum("...id,...jd->...ij", qh, kh) / np.sqrt(qh.shape[-1])
    if softcap is not None:
        s = softcap * np.tanh(s / softcap)
    if slopes is not None:
        s = s + alibi(slopes, lq, lk)
    keep = window_mask(lq, lk, *window)
    if causal:
        keep = keep & lower_right_mask(lq, lk)
    if mask is not None:
        keep = keep & mask
    s = np.where(keep, s, -np.inf)
    mx = np.max(s, axis=-1, keepdims=True)
    e = np.where(np.isneginf(s), 0.0, np.exp(s - np.where(np.isneginf(mx), 0.0, mx)))
    tot = e.sum(-1, keepdims=True)
    w = e / np.where(tot == 0, 1.0, tot)
    return w, np.moveaxis(w @ vh, -3, -2)


CASES = [  # (Lq, Lk, window, causal)
    (16, 16, (3, 2), False),
    (16, 16, (4, 0), True),
    (5, 19, (2, 3), False),
    (19, 5, (1, 1), False),
    (12, 30, (6, -1), True),
    (30, 12, (-1, 2), False),
    (9, 9, (0, 0), False),
    (9, 9, (-1, -1), True),
]


@pytest.mark.parametrize("lq,lk,window,causal", CASES)
@pytest.mark.parametrize("hk", [4, 2])
def test_window_alibi_softcap_match_reference(rng: np.random.Generator, lq, lk, window, causal, hk) -> None:
    h, d = 4, 8
    q, k, v = randn(rng, 2, lq, h, d) * 2, randn(rng, 2, lk, hk, d) * 2, randn(rng, 2, lk, hk, d)
    slopes = np.array([0.5, 0.25, 0.125, 0.0625])
    mask = rng.random((lq, lk)) > 0.2
    for opts in (
        dict(window=window),
        dict(window=window, alibi_slopes=slopes),
        dict(softcap=5.0, alibi_slopes=slopes),
        dict(window=window, alibi_slopes=slopes, softcap=3.0),
    ):
        w_ref, ref = reference(
            q, k, v, causal=causal, window=opts.get("window", (-1, -1)), slopes=opts.get("alibi_slopes"), softcap=opts.get("softcap"), mask=mask
        )
        for simd in (True, False):
            fa = FlashAttention(heads=h, dim=d, causal=causal, block_size=4, simd=simd, **opts)
            assert_close(fa(q, k, v, mask=mask), ref, TOL64)
        out_t = fa(*(torch.from_numpy(x) for x in (q, k, v)), mask=torch.from_numpy(mask))
        assert_close(to_np(out_t), ref, TOL64)
        assert_close(fa.attention_weights(q, k, mask=mask), w_ref, TOL64)
        out32 = fa(*(x.astype(np.float32) for x in (q, k, v)), mask=mask)
        assert out32.dtype == np.float32
        assert_close(out32, ref, TOL32)


def test_window_and_alibi_match_torch_sdpa(rng: np.random.Generator) -> None:
    """torch's own SDPA given the window as a bool mask and ALiBi as a float bias (no NaN rows here)."""
    h, lq, lk, d = 4, 10, 25, 8
    q, k, v = randn(rng, 3, lq, h, d), randn(rng, 3, lk, h, d), randn(rng, 3, lk, h, d)
    slopes = np.array([1.0, 0.5, 0.25, 0.125])
    bias = np.where(window_mask(lq, lk, 4, 2), alibi(slopes, lq, lk), -np.inf)
    qt, kt, vt = (torch.from_numpy(x).movedim(-3, -2) for x in (q, k, v))
    expected = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=torch.from_numpy(bias)).movedim(-2, -3).numpy()
    fa = FlashAttention(heads=h, dim=d, window=(4, 2), alibi_slopes=slopes, block_size=8)
    assert_close(fa(q, k, v), expected, TOL64)
    assert_close(to_np(fa(*(torch.from_numpy(x) for x in (q, k, v)))), expected, TOL64)


def test_torch_window_alibi_reach_fused_kernel_with_gradients(monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator) -> None:
    calls: list[object] = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(kw.get("attn_mask")) or real(*a, **kw))
    q = torch.from_numpy(randn(rng, 2, 12, 4, 8)).requires_grad_(True)
    kv = torch.from_numpy(randn(rng, 2, 12, 2, 8)).requires_grad_(True)
    fa = FlashAttention(heads=4, dim=8, causal=True, window=(3, 0), alibi_slopes=[0.3, 0.2, 0.1, 0.05])
    out = fa(q, kv, kv)
    assert calls and calls[0] is not None  # one combined mask, torch's kernel
    out.square().sum().backward()
    # the generic kernel (simd=False) on the same inputs: same values and gradients
    q2, kv2 = q.detach().clone().requires_grad_(True), kv.detach().clone().requires_grad_(True)
    calls.clear()
    fa2 = FlashAttention(heads=4, dim=8, causal=True, window=(3, 0), alibi_slopes=[0.3, 0.2, 0.1, 0.05], simd=False)
    out2 = fa2(q2, kv2, kv2)
    assert not calls
    out2.square().sum().backward()
    assert_close(to_np(out.detach()), to_np(out2.detach()), TOL64)
    assert_close(to_np(q.grad), to_np(q2.grad), 1e-10)
    assert_close(to_np(kv.grad), to_np(kv2.grad), 1e-10)
    _, ref = reference(
        q.detach().numpy(), kv.detach().numpy(), kv.detach().numpy(), causal=True, window=(3, 0), slopes=np.array([0.3, 0.2, 0.1, 0.05])
    )
    assert_close(to_np(out.detach()), ref, TOL64)


def test_symmetric_window_equals_local_global_without_globals(rng: np.random.Generator) -> None:
    q, k, v = randn(rng, 2, 40, 2, 4), randn(rng, 2, 40, 2, 4), randn(rng, 2, 40, 2, 4)
    lg = LocalGlobalAttention(dim=4, heads=2, window=7)  # radius 3
    assert_close(FlashAttention(heads=2, dim=4, window=(3, 3), block_size=8)(q, k, v), lg(q, k, v), TOL64)
    assert_close(FlashAttention(heads=2, dim=4, window=(40, 0))(q, k, v), FlashAttention(heads=2, dim=4, causal=True)(q, k, v), TOL64)


def test_options_from_strings_and_bad_values() -> None:
    fa = FlashAttention(heads=2, dim=4, window="3,-1", alibi_slopes="0.5,0.25", softcap=2)
    assert fa.window == (3, -1) and fa.alibi_slopes.tolist() == [0.5, 0.25] and fa.softcap == 2.0
    assert FlashAttention(heads=2, dim=4, window=None).window == (-1, -1)
    for bad in ((3,), (1, -2), "a,b", (1.5, 2), 7):
        with pytest.raises(ConfigError, match=r"^window:"):
            FlashAttention(heads=2, dim=4, window=bad)
    for bad in ([1.0], [1.0, float("nan")], "x"):
        with pytest.raises(ConfigError, match=r"^alibi_slopes:"):
            FlashAttention(heads=2, dim=4, alibi_slopes=bad)
    for bad in (0, -1.0, float("inf")):
        with pytest.raises(ConfigError, match=r"^softcap:"):
            FlashAttention(heads=2, dim=4, softcap=bad)


@pytest.mark.parametrize("heads", [1, 4, 6, 8, 12])
def test_default_alibi_slopes_are_blooms(heads: int) -> None:
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    expected = build_alibi_tensor(torch.ones(1, 2, dtype=torch.long), heads, torch.float64)[:, 0, 1].numpy()
    fa = FlashAttention(heads=heads, dim=4, alibi_slopes=True)
    assert_close(fa.alibi_slopes, expected, 1e-7)  # BLOOM computes its slopes in float32
    assert_close(FlashAttention(heads=heads, dim=4, alibi_slopes="default").alibi_slopes, fa.alibi_slopes, 0.0)
    if heads & (heads - 1) == 0:  # a power of two: exactly 2^(-8 i / n)
        assert_close(fa.alibi_slopes, 2.0 ** (-8.0 * np.arange(1, heads + 1) / heads), 1e-15)


def test_window_skips_key_blocks_outside_it(monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator) -> None:
    """Work, not time: with 16-row query tiles and 16-key blocks, window (16, 0) computes 2 blocks per tile, not 16."""
    import attnkit.kernels.dense as dense

    calls: list[int] = []
    real = dense._scores
    monkeypatch.setattr(dense, "_scores", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q, k, v = (np.moveaxis(randn(rng, 256, 2, 8), -3, -2) for _ in range(3))
    out = dense.sdpa_generic(q, k, v, xp=np, scale=0.5, block_size=16, q_block=16, window=(16, 0))
    assert len(calls) == 16 * 2 - 1  # the first tile has no block to its left
    _, ref = reference(np.moveaxis(q, -3, -2) * np.sqrt(8) * 0.5, np.moveaxis(k, -3, -2), np.moveaxis(v, -3, -2), window=(16, 0))
    assert_close(np.moveaxis(out, -3, -2), ref, TOL64)


def test_alibi_distances_exact_in_bfloat16_far_from_the_start(rng: np.random.Generator) -> None:
    """Positions ~1000 are not exact in bfloat16, their distance 1 is: the bias must come from integers."""
    lq, lk, h, d = 4, 1030, 2, 8
    q, k, v = randn(rng, lq, h, d), randn(rng, lk, h, d), randn(rng, lk, h, d)
    slopes = np.array([2.0, 1.0])  # steep: only the last few keys matter
    _, ref = reference(q, k, v, causal=True, slopes=slopes)
    fa = FlashAttention(heads=h, dim=d, causal=True, alibi_slopes=slopes, softcap=50.0, block_size=256)
    _, ref_cap = reference(q, k, v, causal=True, slopes=slopes, softcap=50.0)
    out = fa(*(torch.from_numpy(x).to(torch.bfloat16) for x in (q, k, v)))  # softcap: the generic kernel
    assert out.dtype == torch.bfloat16
    assert_close(to_np(out.float()), ref_cap, 3e-2)
    out = FlashAttention(heads=h, dim=d, causal=True, alibi_slopes=slopes)(*(torch.from_numpy(x).to(torch.bfloat16) for x in (q, k, v)))
    assert_close(to_np(out.float()), ref, 3e-2)  # the fused kernel with the bias as a mask


# ---------------------------------------------------------------------------------------------- fast paths
# The NumPy fast path (kernels/dense_numpy.py: tiles whose band mask / ALiBi bias are Toeplitz views, key
# blocks outside the band never computed) and torch's windowed path (kernels/dense_torch.py: query blocks
# batched into one fused call), each checked against the dense float64 reference above at shapes large
# enough that the tiled code runs (more than 2^16 scores), and shown to be the path that ran.

FAST_CASES = [  # (Lq, Lk, window, causal, kv heads, ALiBi, softcap, mask)
    (300, 300, (40, 10), False, 4, False, None, None),
    (300, 300, (40, 10), True, 2, True, None, "bool"),
    (700, 900, (64, 0), False, 4, True, 3.0, None),
    (900, 700, (33, 70), False, 1, False, 4.0, "bool"),  # Lq > Lk: the first rows see no key
    (600, 600, (-1, -1), True, 4, True, None, "float"),
    (600, 600, (-1, 20), False, 4, False, 2.0, "bool"),
    (1000, 1000, (100, -1), True, 2, False, None, None),
    (257, 1100, (50, 5), True, 4, True, None, None),
    (520, 520, (0, 0), False, 4, False, None, None),  # each query sees only its own key
]


def _mask(kind: str | None, rng: np.random.Generator, lq: int, lk: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(mask given to attnkit, bool keep of the reference) ; a float mask holds 0 and -inf."""
    if kind is None:
        return None, None
    keep = rng.random((lq, lk)) > 0.1
    return (keep if kind == "bool" else np.where(keep, 0.0, -np.inf)), keep


@pytest.mark.parametrize("lq,lk,window,causal,hk,use_alibi,softcap,mask_kind", FAST_CASES)
def test_numpy_fast_path_matches_reference(
    monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator, lq, lk, window, causal, hk, use_alibi, softcap, mask_kind
) -> None:
    import attnkit.kernels.dense_numpy as dn

    ran: list[bool] = []
    real = dn._run_tasks
    monkeypatch.setattr(dn, "_run_tasks", lambda *a, **kw: ran.append(True) or real(*a, **kw))
    h, d = 4, 16
    q, k, v = randn(rng, 2, lq, h, d) * 1.5, randn(rng, 2, lk, hk, d) * 1.5, randn(rng, 2, lk, hk, d)
    slopes = np.array([0.5, 0.1, 0.02, 0.001]) if use_alibi else None
    mask, keep = _mask(mask_kind, rng, lq, lk)
    _, ref = reference(q, k, v, causal=causal, window=window, slopes=slopes, softcap=softcap, mask=keep)
    fa = FlashAttention(heads=h, dim=d, causal=causal, window=window, alibi_slopes=slopes, softcap=softcap, engine="numpy")
    assert_close(fa(q, k, v, mask=mask), ref, TOL64)
    assert ran, "the NumPy fast path did not run"
    ran.clear()
    out32 = fa(
        *(x.astype(np.float32) for x in (q, k, v)), mask=None if mask is None else mask.astype(mask.dtype if mask_kind == "bool" else np.float32)
    )
    assert ran and out32.dtype == np.float32
    assert_close(out32, ref, TOL32)


def test_numpy_fast_path_bounded_and_online_tiles_agree(rng: np.random.Generator) -> None:
    """Large logits force the running-maximum tiles, small ones the bounded (no maximum) tiles: both match."""
    for amp in (0.3, 30.0):
        q, k, v = randn(rng, 1, 600, 2, 16) * amp, randn(rng, 1, 600, 2, 16) * amp, randn(rng, 1, 600, 2, 16)
        for opts in (dict(window=(37, 5)), dict(window=(37, 5), softcap=4.0), dict(causal=True, window=(300, 0))):
            _, ref = reference(q, k, v, causal=opts.get("causal", False), window=opts["window"], softcap=opts.get("softcap"))
            assert_close(FlashAttention(heads=2, dim=16, engine="numpy", **opts)(q, k, v), ref, TOL64)


def test_numpy_fast_path_computes_only_the_band() -> None:
    """Work, not time: the key columns the tiles compute stay below Lq * (window + 2 * tile), not Lq * Lk."""
    from attnkit.kernels.dense_numpy import _Plan

    lq = lk = 8192
    q = np.zeros((1, lq, 64), np.float32)
    for window, causal in (((511, 0), False), ((255, 256), False), ((511, -1), True)):
        plan = _Plan(q, q, q, None, 0.125, causal, (1,), window)
        cols = sum((k1 - k0) * (q1 - q0) for _, q0, q1, blocks in plan.tasks() for k0, k1, _m in blocks)
        useful = sum(min(lk, i + 1 + window[1] if window[1] >= 0 else i + 1) - max(0, i - window[0]) for i in range(lq))
        assert useful <= cols <= lq * (512 + 2 * plan.tq)
    # ALiBi without a window still sees every key (the bias is on every block)
    plan = _Plan(q, q, q, None, 0.125, False, (1,), (-1, -1), np.array([0.5]))
    assert sum((k1 - k0) * (q1 - q0) for _, q0, q1, blocks in plan.tasks() for k0, k1, _m in blocks) == lq * lk


TORCH_WINDOW_CASES = [  # (Lq, Lk, window, causal, kv heads, ALiBi); query blocks of 32 rows here
    (300, 300, (40, 0), False, 4, False),
    (300, 300, (20, 13), False, 2, True),
    (250, 330, (30, -1), True, 4, True),  # Lq < Lk, causal bounds the right side
    (330, 250, (10, 20), False, 1, False),  # Lq > Lk: the first rows see no key
    (20, 400, (50, 3), False, 4, True),  # fewer queries than a block (decoding-like)
]


@pytest.mark.parametrize("lq,lk,window,causal,hk,use_alibi", TORCH_WINDOW_CASES)
def test_torch_narrow_window_takes_the_blocked_path(
    monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator, lq, lk, window, causal, hk, use_alibi
) -> None:
    """Values against the float64 reference; gradients against torch's SDPA given the equivalent dense bias."""
    import attnkit.kernels.dense_torch as dt

    monkeypatch.setattr(dt, "WINDOW_BLOCK", 32)
    shapes: list[tuple[int, ...]] = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, k, v, **kw: shapes.append(tuple(k.shape)) or real(q, k, v, **kw))
    h, d = 4, 8
    q, k, v = randn(rng, 2, lq, h, d), randn(rng, 2, lk, hk, d), randn(rng, 2, lk, hk, d)
    slopes = np.array([0.5, 0.25, 0.125, 0.0625]) if use_alibi else None
    _, ref = reference(q, k, v, causal=causal, window=window, slopes=slopes)
    qt, kt, vt = (torch.from_numpy(x).requires_grad_(True) for x in (q, k, v))
    fa = FlashAttention(heads=h, dim=d, causal=causal, window=window, alibi_slopes=slopes)
    out = fa(qt, kt, vt)
    assert_close(to_np(out.detach()), ref, TOL64)
    assert shapes and max(s[-2] for s in shapes) < lk / 2  # no call saw all the keys: O(Lq * window)
    out.square().sum().backward()
    monkeypatch.setattr(F, "scaled_dot_product_attention", real)
    keep = window_mask(lq, lk, *window) & (lower_right_mask(lq, lk) if causal else True)
    bias = np.where(keep, alibi(slopes, lq, lk) if use_alibi else 0.0, -np.inf)
    bias = np.where(keep.any(-1, keepdims=True), bias, 0.0)  # rows with no key: zeroed below
    q2, k2, v2 = (x.detach().clone().requires_grad_(True) for x in (qt, kt, vt))
    g = h // hk
    o2 = real(
        q2.movedim(-3, -2), k2.movedim(-3, -2).repeat_interleave(g, -3), v2.movedim(-3, -2).repeat_interleave(g, -3), attn_mask=torch.from_numpy(bias)
    )
    o2 = o2.movedim(-2, -3) * torch.from_numpy(keep.any(-1))[:, None, None]
    o2.square().sum().backward()
    for a, b in ((qt, q2), (kt, k2), (vt, v2)):
        assert_close(to_np(a.grad), to_np(b.grad), 1e-9)


def test_torch_window_with_mask_or_wide_window_falls_back_to_one_dense_mask(rng: np.random.Generator) -> None:
    """A user mask or a window wider than half the keys: one dense mask to torch's kernel, same result."""
    import attnkit.kernels.dense_torch as dt

    q = torch.from_numpy(randn(rng, 1, 4, 600, 8))
    assert dt.sdpa_torch_window(q, q, q, scale=0.3, window=(400, 0)) is None
    assert dt.sdpa_torch_window(q, q, q, scale=0.3, window=(20, 0), mask=torch.ones(600, 600, dtype=torch.bool)) is None
    assert dt.sdpa_torch_window(q, q, q, scale=0.3, window=(20, -1)) is None  # unbounded right side, not causal
    x = randn(rng, 1, 600, 4, 8)
    keep = rng.random((600, 600)) > 0.2
    _, ref = reference(x, x, x, window=(20, 3), mask=keep)
    assert_close(to_np(FlashAttention(heads=4, dim=8, window=(20, 3))(torch.from_numpy(x), mask=torch.from_numpy(keep))), ref, TOL64)


def test_torch_compile_fullgraph_windowed_blocked_path_and_bhsd(monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator) -> None:
    """The blocked window path and the bhsd layout trace into one graph (no data-dependent branch)."""
    import attnkit.kernels.dense_torch as dt
    from attnkit.torch import AttentionModule

    monkeypatch.setattr(dt, "WINDOW_BLOCK", 16)
    q = torch.from_numpy(randn(rng, 1, 4, 120, 8)).float()
    kv = torch.from_numpy(randn(rng, 1, 2, 120, 8)).float()
    mech = FlashAttention(heads=4, dim=8, window=(10, 0), alibi_slopes=True, layout="bhsd")
    module = AttentionModule(mech).eval()
    eager = module(q, kv, kv)
    torch._dynamo.reset()
    got = torch.compile(module, fullgraph=True, backend="eager")(q, kv, kv)
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-6)
    _, ref = reference(*(x.double().transpose(1, 2).numpy() for x in (q, kv, kv)), window=(10, 0), slopes=mech.alibi_slopes)
    assert_close(to_np(got).transpose(0, 2, 1, 3), ref, TOL32)
