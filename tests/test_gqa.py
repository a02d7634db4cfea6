"""Grouped-query / multi-query attention (issue 11): key/value heads Hkv dividing the query heads H.

Oracles: torch's ``scaled_dot_product_attention(..., enable_gqa=True)`` and a float64 reference on
key/value heads repeated ``G = H / Hkv`` times (``np.repeat`` along the head axis: query head ``h``
uses key/value head ``h // G``, torch's convention).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TOL32, TOL64, assert_close, lower_right_mask, randn, ref_seq_attention, ref_weights, to_np
from test_flash_options import reference
from test_linear import MAPS, TINY, make, ref_for

import attnkit
from attnkit import FlashAttention, LinearAttention, LocalGlobalAttention
from attnkit.errors import ShapeError
from attnkit.kernels.dense import sdpa

H = 6


def _rep(x: np.ndarray, g: int) -> np.ndarray:
    """Sequence layout ``(..., L, Hkv, X)`` -> ``(..., L, Hkv * g, X)`` (each head g times, in order)."""
    return np.repeat(x, g, axis=-2)


def _torch_gqa(q: np.ndarray, k: np.ndarray, v: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    """torch SDPA with enable_gqa on sequence-layout inputs; rows that see no key -> 0 (attnkit's rule)."""
    qt, kt, vt = (torch.from_numpy(np.ascontiguousarray(x)).movedim(-3, -2) for x in (q, k, v))
    mt = None if keep is None else torch.from_numpy(np.array(keep))
    out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mt, enable_gqa=True).movedim(-2, -3)
    return out.nan_to_num(0.0).numpy()


@pytest.mark.parametrize("hk", [1, 2, 3])
@pytest.mark.parametrize("lq,lk", [(5, 5), (4, 11), (11, 4)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
def test_flash_gqa_matches_torch_and_reference(rng: np.random.Generator, hk: int, lq: int, lk: int, causal: bool, with_mask: bool) -> None:
    g = H // hk
    q, k, v = randn(rng, 2, lq, H, 8), randn(rng, 2, lk, hk, 8), randn(rng, 2, lk, hk, 5)
    mask = rng.random((H, lq, lk)) > 0.25 if with_mask else None  # differs per query head
    ref = ref_seq_attention(q, _rep(k, g), _rep(v, g), mask=mask, causal=causal)
    keep = None
    if causal or with_mask:
        keep = (lower_right_mask(lq, lk) if causal else True) & (mask if with_mask else True)
        keep = np.broadcast_to(keep, (H, lq, lk))
    assert_close(_torch_gqa(q, k, v, keep), ref, TOL64)
    for simd in (True, False):  # NumPy fast path and the generic kernel
        fa = FlashAttention(heads=H, dim=8, causal=causal, block_size=3, simd=simd)
        assert_close(fa(q, k, v, mask=mask), ref, TOL64)
    fa = FlashAttention(heads=H, dim=8, causal=causal)
    out_t = fa(*(torch.from_numpy(x) for x in (q, k, v)), mask=None if mask is None else torch.from_numpy(mask))
    assert_close(to_np(out_t), ref, TOL64)
    w = fa.attention_weights(q, k, mask=mask)
    qh, kh = np.moveaxis(q, -3, -2), np.moveaxis(_rep(k, g), -3, -2)
    assert_close(w, ref_weights(qh, kh, mask=mask, causal=causal), TOL64)


def test_flash_gqa_float32_and_kernel_backends_agree(rng: np.random.Generator) -> None:
    q, k, v = randn(rng, 3, 40, H, 16), randn(rng, 3, 70, 2, 16), randn(rng, 3, 70, 2, 16)
    ref = ref_seq_attention(q, _rep(k, 3), _rep(v, 3), causal=True)
    out = FlashAttention(heads=H, dim=16, causal=True, block_size=16)(*(x.astype(np.float32) for x in (q, k, v)))
    assert out.dtype == np.float32
    assert_close(out, ref, TOL32)
    qh, kh, vh = (np.moveaxis(x, -3, -2) for x in (q, k, v))
    outs = [sdpa(qh, kh, vh, xp=np, scale=0.25, causal=True, block_size=16, backend=b) for b in ("numpy", "generic")]
    assert_close(outs[0], outs[1], TOL64)
    assert_close(np.moveaxis(outs[0], -3, -2), ref_seq_attention(q, _rep(k, 3), _rep(v, 3), causal=True, scale=0.25), TOL64)


@pytest.mark.parametrize("lq,lk,causal", [(7, 7, True), (3, 9, True), (9, 3, True), (5, 8, False)])
def test_flash_gqa_torch_reaches_fused_kernel_with_enable_gqa(monkeypatch: pytest.MonkeyPatch, lq: int, lk: int, causal: bool) -> None:
    calls: list[dict] = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - a pass-through recorder
        calls.append({"kv_heads": args[1].shape[-3], "enable_gqa": kwargs.get("enable_gqa", False)})
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    q, k = torch.randn(2, lq, H, 8, dtype=torch.float64), torch.randn(2, lk, 2, 8, dtype=torch.float64)
    q.requires_grad_(True)
    k.requires_grad_(True)
    out = FlashAttention(heads=H, dim=8, causal=causal)(q, k, k)
    assert calls and all(c["enable_gqa"] and c["kv_heads"] == 2 for c in calls)  # no repeated K/V
    # autograd through the fused kernel reaches the shared key heads
    monkeypatch.setattr(F, "scaled_dot_product_attention", real)
    out.square().sum().backward()
    q2, k2 = q.detach().clone().requires_grad_(True), k.detach().clone().requires_grad_(True)
    keep = torch.from_numpy(lower_right_mask(lq, lk)) if causal else None
    ref = real(q2.movedim(-3, -2), k2.movedim(-3, -2), k2.movedim(-3, -2), attn_mask=keep, enable_gqa=True).movedim(-2, -3)
    ref = ref.nan_to_num(0.0)
    ref.square().sum().backward()
    assert_close(to_np(out.detach()), to_np(ref.detach()), TOL64)
    assert_close(to_np(k.grad), to_np(k2.grad), 1e-10)
    assert_close(to_np(q.grad), to_np(q2.grad), 1e-10)


def test_flash_gqa_bad_head_counts_raise() -> None:
    fa = FlashAttention(heads=H, dim=4)
    q = np.zeros((5, H, 4))
    with pytest.raises(ShapeError, match=r"^key:.*divides heads = 6.*got 4"):
        fa(q, np.zeros((5, 4, 4)), np.zeros((5, 4, 4)))
    with pytest.raises(ShapeError, match=r"^value: expected 2 heads \(as key\).*got 3"):
        fa(q, np.zeros((5, 2, 4)), np.zeros((5, 3, 4)))
    with pytest.raises(ShapeError, match=r"^key:"):
        attnkit.kernels.dense.sdpa(np.zeros((4, 3, 2)), np.zeros((3, 3, 2)), np.zeros((3, 3, 2)), xp=np, scale=1.0)


@pytest.mark.parametrize("fm", MAPS)
@pytest.mark.parametrize("causal", [False, True])
def test_linear_gqa_matches_reference(rng: np.random.Generator, fm: str, causal: bool) -> None:
    q, k, v = randn(rng, 2, 7, H, 4), randn(rng, 2, 9, 2, 4), randn(rng, 2, 9, 2, 3)
    attn = make(fm, 4, H, causal=causal, eps=TINY)
    keep = rng.random((2, 9)) > 0.3
    keep[:, 0] = True
    ref = ref_for(attn, q, _rep(k, 3), _rep(v, 3), keep=keep[:, None, None, :])
    assert_close(attn(q, k, v, mask=keep), ref, TOL64)
    out_t = attn(*(torch.from_numpy(x) for x in (q, k, v)), mask=torch.from_numpy(keep))
    assert_close(to_np(out_t), ref, TOL64)
    # one key/value head (multi-query) over long sequences: the NumPy tile path
    q, k, v = randn(rng, 300, H, 4), randn(rng, 300, 1, 4), randn(rng, 300, 1, 4)
    assert_close(attn(q, k, v), ref_for(attn, q, _rep(k, H), _rep(v, H)), 1e-10)


@pytest.mark.parametrize("hk", [1, 3])
@pytest.mark.parametrize("causal", [False, True])
def test_local_global_gqa_matches_reference(rng: np.random.Generator, hk: int, causal: bool) -> None:
    length, g = 23, H // hk
    lg = LocalGlobalAttention(dim=4, heads=H, window=5, global_tokens=[0, 9], causal=causal, block_size=4)
    q, k, v = randn(rng, 2, length, H, 4), randn(rng, 2, length, hk, 4), randn(rng, 2, length, hk, 4)
    mask = rng.random((H, length, length)) > 0.2
    ref = ref_seq_attention(q, _rep(k, g), _rep(v, g), mask=lg.dense_mask(length) & mask)
    assert_close(lg(q, k, v, mask=mask), ref, TOL64)
    out_t = lg(*(torch.from_numpy(x) for x in (q, k, v)), mask=torch.from_numpy(mask))
    assert_close(to_np(out_t), ref, TOL64)
    w = lg.attention_weights(q, k, mask=mask)
    assert_close(w, ref_weights(np.moveaxis(q, -3, -2), np.moveaxis(_rep(k, g), -3, -2), mask=lg.dense_mask(length) & mask), TOL64)


def test_linear_and_local_global_reject_non_dividing_heads() -> None:
    with pytest.raises(ShapeError, match=r"^key:.*divides heads = 6"):
        LinearAttention(4, H)(np.ones((5, H, 4)), np.ones((5, 4, 4)), np.ones((5, 4, 4)))
    with pytest.raises(ShapeError, match=r"^key:.*divides heads = 6"):
        LocalGlobalAttention(dim=4, heads=H, window=3)(np.ones((5, H, 4)), np.ones((5, 5, 4)), np.ones((5, 5, 4)))


# ------------------------------------------------------------------ MultiHeadAttention(kv_heads=...)


def _ref_mha_gqa(xq: np.ndarray, xk: np.ndarray, xv: np.ndarray, p: dict, heads: int, kv_heads: int, mask=None, causal=False):
    """float64 GQA multi-head attention: k/v projected to kv_heads heads, each repeated heads/kv_heads times."""
    p = {n: np.asarray(a, dtype=np.float64) for n, a in p.items()}

    def proj(x: np.ndarray, name: str) -> np.ndarray:
        return x @ p[f"{name}.weight"].T + p.get(f"{name}.bias", 0.0)

    def split(y: np.ndarray, h: int) -> np.ndarray:
        return np.moveaxis(y.reshape(*y.shape[:-1], h, y.shape[-1] // h), -2, -3)

    g = heads // kv_heads
    qh = split(proj(xq, "q_proj"), heads)
    kh = np.repeat(split(proj(xk, "k_proj"), kv_heads), g, axis=-3)
    vh = np.repeat(split(proj(xv, "v_proj"), kv_heads), g, axis=-3)
    w = ref_weights(qh, kh, mask, causal)
    o = np.moveaxis(w @ vh, -3, -2)
    return proj(o.reshape(*o.shape[:-2], -1), "out_proj"), w


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("keep_weights", [True, False])
def test_multihead_kv_heads_matches_reference(rng: np.random.Generator, kv_heads: int, causal: bool, keep_weights: bool) -> None:
    e, h = 16, 4
    mha = attnkit.MultiHeadAttention(e, h, kv_heads=kv_heads, causal=causal, keep_weights=keep_weights, seed=1)
    assert mha.param_shapes()["k_proj.weight"] == (kv_heads * 4, e) and mha.param_shapes()["v_proj.bias"] == (kv_heads * 4,)
    params = {n: randn(rng, *shape) for n, shape in mha.param_shapes().items()}  # float64, non-zero biases
    mha.load_weights(params)
    xq, xkv = randn(rng, 2, 5, e), randn(rng, 2, 7, e)
    mask = rng.random((h, 5, 7)) > 0.2
    ref, w = _ref_mha_gqa(xq, xkv, xkv, params, h, kv_heads, mask=mask, causal=causal)
    assert_close(mha(xq, xkv, xkv, mask=mask), ref, TOL64)
    assert_close(mha.attention_weights(xq, xkv, mask=mask), w, TOL64)
    out_t = mha(torch.from_numpy(xq), torch.from_numpy(xkv), torch.from_numpy(xkv), mask=torch.from_numpy(mask))
    assert_close(to_np(out_t), ref, TOL64)
    # functional_call with torch parameters: gradients reach the smaller k/v projections
    tp = {n: torch.from_numpy(a).requires_grad_(True) for n, a in params.items()}
    out_f = attnkit.functional_call(mha, tp, torch.from_numpy(xq), torch.from_numpy(xkv), torch.from_numpy(xkv))
    out_f.sum().backward()
    assert tp["k_proj.weight"].grad is not None and tuple(tp["k_proj.weight"].grad.shape) == (kv_heads * 4, e)
    assert_close(to_np(out_f.detach()), _ref_mha_gqa(xq, xkv, xkv, params, h, kv_heads, causal=causal)[0], TOL64)


def test_multihead_kv_heads_equals_mha_with_repeated_kv_weights(rng: np.random.Generator) -> None:
    """GQA is MHA whose key/value projections repeat per group: the second, independent oracle."""
    e, h, kvh, d = 12, 6, 2, 2
    gqa = attnkit.MultiHeadAttention(e, h, kv_heads=kvh, seed=3)
    p = {n: randn(rng, *s) for n, s in gqa.param_shapes().items()}
    gqa.load_weights(p)
    full = dict(p)
    for name in ("k_proj", "v_proj"):
        wt = p[f"{name}.weight"].reshape(kvh, d, e)
        full[f"{name}.weight"] = np.repeat(wt, h // kvh, axis=0).reshape(e, e)
        full[f"{name}.bias"] = np.repeat(p[f"{name}.bias"].reshape(kvh, d), h // kvh, axis=0).reshape(e)
    mha = attnkit.MultiHeadAttention(e, h, seed=3)
    mha.load_weights(full)
    x = randn(rng, 3, 9, e)
    assert_close(gqa(x), mha(x), TOL64)
    # and torch's MultiheadAttention, loaded with the repeated weights, agrees too
    tm = torch.nn.MultiheadAttention(e, h, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        tm.in_proj_weight.copy_(torch.from_numpy(np.concatenate([full[f"{n}.weight"] for n in ("q_proj", "k_proj", "v_proj")])))
        tm.in_proj_bias.copy_(torch.from_numpy(np.concatenate([full[f"{n}.bias"] for n in ("q_proj", "k_proj", "v_proj")])))
        tm.out_proj.weight.copy_(torch.from_numpy(full["out_proj.weight"]))
        tm.out_proj.bias.copy_(torch.from_numpy(full["out_proj.bias"]))
    xt = torch.from_numpy(x)
    assert_close(gqa(x), tm(xt, xt, xt, need_weights=False)[0].detach().numpy(), TOL64)
    # saved and loaded with its own shapes
    again = attnkit.MultiHeadAttention(e, h, kv_heads=kvh)
    again.load_weights(gqa.save_weights())
    assert_close(again(x), gqa(x), 0.0)


def test_multihead_kv_heads_must_divide_heads() -> None:
    with pytest.raises(attnkit.errors.ConfigError, match=r"^kv_heads: expected a divisor of heads = 4.*got 3"):
        attnkit.MultiHeadAttention(16, 4, kv_heads=3)
    m = attnkit.MultiHeadAttention(16, 4, kv_heads=2)
    with pytest.raises(ShapeError, match=r"k_proj.weight expected shape \(8, 16\)"):
        m.load_weights(attnkit.MultiHeadAttention(16, 4).parameters())
    assert attnkit.SelfAttention(16, 4, kv_heads=1).param_shapes()["v_proj.weight"] == (4, 16)
    assert attnkit.CrossAttention(16, 6, heads=4, kv_heads=2).param_shapes()["k_proj.weight"] == (8, 6)


# ------------------------------------------------------------------ through the array API alone (strict, JAX)


def test_gqa_and_flash_options_through_array_api_strict(rng: np.random.Generator) -> None:
    xp = pytest.importorskip("array_api_strict")
    h, hk, lq, lk = 4, 2, 6, 9
    q, k, v = randn(rng, 2, lq, h, 4), randn(rng, 2, lk, hk, 4), randn(rng, 2, lk, hk, 4)
    conv = [xp.asarray(x) for x in (q, k, v)]
    slopes = [0.5, 0.25, 0.125, 0.0625]
    fa = FlashAttention(heads=h, dim=4, causal=True, window=(3, -1), alibi_slopes=slopes, softcap=4.0, block_size=4)
    w_ref, ref = reference(q, k, v, causal=True, window=(3, -1), slopes=np.array(slopes), softcap=4.0)
    assert_close(np.asarray(fa(*conv)), ref, TOL64)
    assert_close(np.asarray(fa.attention_weights(conv[0], conv[1])), w_ref, TOL64)
    plain = ref_seq_attention(q, _rep(k, 2), _rep(v, 2))
    assert_close(np.asarray(FlashAttention(heads=h, dim=4)(*conv)), plain, TOL64)
    lin = LinearAttention(4, h, eps=TINY)
    assert_close(np.asarray(lin(*conv)), ref_for(lin, q, _rep(k, 2), _rep(v, 2)), TOL64)
    lg = LocalGlobalAttention(dim=4, heads=h, window=3, global_tokens=1)
    qs, ks, vs = (x[:, :lq] for x in (q, k, v))
    out = lg(*(xp.asarray(x) for x in (qs, ks, vs)))
    assert_close(np.asarray(out), ref_seq_attention(qs, _rep(ks, 2), _rep(vs, 2), mask=lg.dense_mask(lq)), TOL64)


def test_gqa_and_flash_options_on_jax(rng: np.random.Generator) -> None:
    jnp = pytest.importorskip("jax.numpy")
    h, hk, lq, lk = 4, 2, 6, 9
    q, k, v = randn(rng, 2, lq, h, 4), randn(rng, 2, lk, hk, 4), randn(rng, 2, lk, hk, 4)
    slopes = [0.5, 0.25, 0.125, 0.0625]
    fa = FlashAttention(heads=h, dim=4, causal=True, window=(3, -1), alibi_slopes=slopes, softcap=4.0)
    _, ref = reference(q, k, v, causal=True, window=(3, -1), slopes=np.array(slopes), softcap=4.0)
    out = fa(*(jnp.asarray(x, dtype=jnp.float32) for x in (q, k, v)))
    assert out.dtype == jnp.float32
    assert_close(np.asarray(out), ref, TOL32)


def test_flash_gqa_numpy_reaches_the_fast_path_without_copying_kv(monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator) -> None:
    import attnkit.kernels.dense_numpy as dn

    seen: list[tuple] = []
    real = dn.sdpa_numpy

    def spy(q, k, v, **kw):  # noqa: ANN001, ANN003, ANN202 - a pass-through recorder
        out = real(q, k, v, **kw)
        seen.append((q.shape, k.shape, np.shares_memory(k, k_in), out is not None))
        return out

    monkeypatch.setattr(dn, "sdpa_numpy", spy)
    q, k_in, v = randn(rng, 2, 33, H, 8), randn(rng, 2, 40, 3, 8), randn(rng, 2, 40, 3, 8)
    out = FlashAttention(heads=H, dim=8, causal=True, block_size=8)(q, k_in, v)
    assert seen == [((2, 3, 2, 33, 8), (2, 3, 1, 40, 8), True, True)]  # (..., Hkv, G, L, D), K a view
    assert_close(out, ref_seq_attention(q, _rep(k_in, 2), _rep(v, 2), causal=True), TOL64)
