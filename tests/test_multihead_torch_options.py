"""MultiHeadAttention's torch options against torch.nn.MultiheadAttention with the same state dict:
key_padding_mask, need_weights / average_attn_weights, add_bias_kv, add_zero_attn, combined with
attn masks and causal; and rope= / GQA against a float64 NumPy reference written here."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import TOL32, TOL64, assert_close, lower_right_mask, randn, to_np, to_torch

import attnkit
from attnkit import ConfigError, MultiHeadAttention, RotaryEmbedding, ShapeError
from attnkit.weights import from_torch_mha, to_torch_mha

B, E, H = 2, 12, 3


def torch_mha(*, bias=True, add_bias_kv=False, add_zero_attn=False, kdim=None, vdim=None, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    m = torch.nn.MultiheadAttention(E, H, bias=bias, add_bias_kv=add_bias_kv, add_zero_attn=add_zero_attn, kdim=kdim, vdim=vdim, batch_first=True).to(
        dtype
    )
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.4)
    return m.eval()


def ref_forward(x_q, x_k, x_v, params, heads, kv_heads, *, mask=None, kpm=None, causal=False, bias_kv=False, zero_attn=False, rope_base=None):
    """float64 reference: projections, HF rotate_half RoPE, GQA, torch's bias_kv / zero_attn, masks."""
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}

    def proj(x, name):
        y = np.asarray(x, dtype=np.float64) @ p[f"{name}.weight"].T
        return y + p[f"{name}.bias"] if f"{name}.bias" in p else y

    def split(y, h):
        *lead, n, w = y.shape
        return np.moveaxis(y.reshape(*lead, n, h, w // h), -2, -3)

    qh, kh, vh = split(proj(x_q, "q_proj"), heads), split(proj(x_k, "k_proj"), kv_heads), split(proj(x_v, "v_proj"), kv_heads)
    d = qh.shape[-1]
    lq, lk = qh.shape[-2], kh.shape[-2]
    if rope_base is not None:
        inv = rope_base ** (-np.arange(0, d, 2) / d)

        def rot(x, pos):
            ang = pos[:, None] * inv[None, :]
            cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
            half = np.concatenate([-x[..., d // 2 :], x[..., : d // 2]], -1)
            return x * cos + half * sin

        qh, kh = rot(qh, np.arange(lk - lq, lk, dtype=np.float64)), rot(kh, np.arange(lk, dtype=np.float64))
    allowed = np.zeros((lq, lk))  # additive
    if causal:
        allowed = np.where(lower_right_mask(lq, lk), 0.0, -np.inf)
    if mask is not None:
        allowed = allowed + (np.where(mask, 0.0, -np.inf) if mask.dtype == bool else mask)
    if kpm is not None:
        allowed = allowed + (np.where(kpm, -np.inf, 0.0) if kpm.dtype == bool else kpm)[..., None, None, :]
    extra_k, extra_v = [], []
    lead = np.broadcast_shapes(kh.shape[:-3], qh.shape[:-3])
    if bias_kv:
        extra_k.append(np.broadcast_to(p["bias_k"].reshape(kv_heads, 1, d), (*lead, kv_heads, 1, d)))
        extra_v.append(np.broadcast_to(p["bias_v"].reshape(kv_heads, 1, d), (*lead, kv_heads, 1, d)))
    if zero_attn:
        extra_k.append(np.zeros((*lead, kv_heads, 1, d)))
        extra_v.append(np.zeros((*lead, kv_heads, 1, d)))
    if extra_k:
        kh = np.concatenate([np.broadcast_to(kh, (*lead, *kh.shape[-3:])), *extra_k], -2)
        vh = np.concatenate([np.broadcast_to(vh, (*lead, *vh.shape[-3:])), *extra_v], -2)
        allowed = np.broadcast_to(allowed, (*np.broadcast_shapes(allowed.shape[:-1], (lq,)), lk))
        allowed = np.concatenate([allowed, np.zeros((*allowed.shape[:-1], len(extra_k)))], -1)
    g = heads // kv_heads
    kh, vh = np.repeat(kh, g, axis=-3), np.repeat(vh, g, axis=-3)
    s = qh @ np.swapaxes(kh, -1, -2) / np.sqrt(d) + allowed
    s = s - s.max(-1, keepdims=True)
    w = np.exp(s)
    w = w / w.sum(-1, keepdims=True)
    o = np.moveaxis(w @ vh, -3, -2)
    return proj(o.reshape(*o.shape[:-2], -1), "out_proj"), w


def masks(rng, kind, lq, lk):
    """attnkit's mask (True = attend / float) and torch's attn_mask (True = masked / float) for one case."""
    if kind == "none":
        return None, None, False
    if kind in ("bool", "causal+bool"):
        m = rng.random((lq, lk)) > 0.3
        m[:, 0] = True  # every query keeps a key (torch gives NaN for a fully masked row)
        causal = kind == "causal+bool"
        t = ~(m & lower_right_mask(lq, lk)) if causal else ~m
        return m, t, causal
    if kind in ("float", "causal+float"):
        m = rng.standard_normal((lq, lk))
        causal = kind == "causal+float"
        t = m + np.where(lower_right_mask(lq, lk), 0.0, -np.inf) if causal else m
        return m, t, causal
    assert kind == "causal"
    return None, ~lower_right_mask(lq, lk), True


def kp_masks(rng, kind, lk):
    if kind == "none":
        return None
    if kind == "bool":
        k = rng.random((B, lk)) > 0.6  # True = padding
        k[:, 0] = False
        return k
    return rng.standard_normal((B, lk))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kpm_kind", ["none", "bool", "float"])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "causal", "causal+bool", "causal+float"])
@pytest.mark.parametrize("bias_kv,zero_attn", [(False, False), (True, False), (False, True), (True, True)])
def test_every_option_combination_vs_torch(rng, bias_kv, zero_attn, mask_kind, kpm_kind, dtype):
    cross = mask_kind in ("bool", "float")  # a cross-attention case with kdim/vdim and Lq != Lk
    lq, lk = (4, 6) if cross else (5, 5)
    kdim, vdim = (10, 7) if cross else (None, None)
    m = torch_mha(bias=not (bias_kv and zero_attn), add_bias_kv=bias_kv, add_zero_attn=zero_attn, kdim=kdim, vdim=vdim, dtype=dtype)
    ours_mask, t_mask, causal = masks(rng, mask_kind, lq, lk)
    kpm = kp_masks(rng, kpm_kind, lk)
    x = randn(rng, B, lq, E)
    k = randn(rng, B, lk, kdim or E) if cross else x
    v = randn(rng, B, lk, vdim or E) if cross else x
    tq, tk, tv = (to_torch(a, dtype) for a in (x, k, v))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns when a bool key mask meets a float attn_mask
        tm = None if t_mask is None else to_torch(t_mask, dtype) if t_mask.dtype != bool else torch.from_numpy(t_mask)
        tkpm = None if kpm is None else torch.from_numpy(kpm) if kpm.dtype == bool else to_torch(kpm, dtype)
        exp, exp_w = m(tq, tk, tv, attn_mask=tm, key_padding_mask=tkpm, need_weights=True, average_attn_weights=False)
        _, exp_avg = m(tq, tk, tv, attn_mask=tm, key_padding_mask=tkpm, need_weights=True)
    ours = MultiHeadAttention.from_torch(m, causal=causal)
    assert (ours.add_bias_kv, ours.add_zero_attn, ours.kdim, ours.vdim) == (bias_kv, zero_attn, kdim, vdim)
    tol = TOL64 if dtype == torch.float64 else TOL32
    # torch in, torch out
    out, w = ours.forward(tq, tk, tv, mask=ours_mask, key_padding_mask=tkpm, need_weights=True, average_attn_weights=False)
    assert isinstance(out, torch.Tensor) and out.dtype == dtype and w.dtype == dtype
    assert w.shape == (B, H, lq, lk + bias_kv + zero_attn)
    assert_close(out, exp, tol)
    assert_close(w, exp_w, tol)
    # NumPy in, NumPy out; averaged weights; the tiled kernel (keep_weights=False) gives the same output
    np_in = tuple(to_np(a) for a in (tq, tk, tv))
    out_np, w_avg = ours.forward(*np_in, mask=ours_mask, key_padding_mask=kpm, need_weights=True)
    assert isinstance(out_np, np.ndarray) and w_avg.shape == (B, lq, lk + bias_kv + zero_attn)
    assert_close(out_np, exp, tol)
    assert_close(w_avg, exp_avg, tol)
    plain = MultiHeadAttention.from_torch(m, causal=causal, keep_weights=False).forward(*np_in, mask=ours_mask, key_padding_mask=kpm)
    assert isinstance(plain, np.ndarray)
    assert_close(plain, exp, tol)
    assert_close(ours.attention_weights(np_in[0], np_in[1], mask=ours_mask, key_padding_mask=kpm), exp_w, tol)
    # the float64 reference from the same weights
    ref, ref_w = ref_forward(*np_in, ours.parameters(), H, H, mask=ours_mask, kpm=kpm, causal=causal, bias_kv=bias_kv, zero_attn=zero_attn)
    assert_close(out_np, ref, tol)
    assert_close(w, ref_w, tol)


@pytest.mark.parametrize("bias_kv,zero_attn", [(True, False), (False, True), (True, True)])
def test_state_dict_round_trip_into_torch(rng, bias_kv, zero_attn):
    ours = MultiHeadAttention(E, H, add_bias_kv=bias_kv, add_zero_attn=zero_attn, seed=3)
    assert ("bias_k" in ours.param_shapes()) == bias_kv
    m = torch.nn.MultiheadAttention(E, H, add_bias_kv=bias_kv, add_zero_attn=zero_attn, batch_first=True).double().eval()
    m.load_state_dict({k: torch.from_numpy(v).double() for k, v in to_torch_mha(ours.parameters()).items()})
    x = randn(rng, B, 5, E)
    with torch.no_grad():
        exp = m(*(torch.from_numpy(x),) * 3, need_weights=False)[0]
    assert_close(ours.forward(x), exp, TOL32)  # parameters are float32
    # and back: safetensors bytes keep bias_k/bias_v
    again = MultiHeadAttention(E, H, add_bias_kv=bias_kv, add_zero_attn=zero_attn)
    again.load_weights(ours.save_weights())
    assert_close(again.forward(x), ours.forward(x), 0.0)
    again.load_weights(from_torch_mha(m.state_dict()))
    assert_close(again.forward(x), exp, TOL32)


def test_key_padding_mask_is_the_opposite_of_mask(rng):
    mha = MultiHeadAttention(E, H, seed=1)
    x = randn(rng, B, 6, E)
    kpm = np.zeros((B, 6), bool)
    kpm[0, 4:] = True
    kpm[1, 2:] = True
    a = mha.forward(x, key_padding_mask=kpm)
    b = mha.forward(x, mask=~kpm[:, None, None, :])
    assert_close(a, b, 0.0)
    # padded keys change nothing: the unpadded part alone gives the same rows
    assert_close(a[1], mha.forward(x[1], x[1, :2], x[1, :2]), TOL64)
    # combined with causal: both apply
    c = MultiHeadAttention(E, H, seed=1, causal=True)
    ref, _ = ref_forward(x, x, x, c.parameters(), H, H, kpm=kpm, causal=True)
    assert_close(c.forward(x, key_padding_mask=kpm), ref, TOL64)


def test_fully_padded_rows_are_zeros_and_zero_attn_keeps_them_finite(rng):
    x = randn(rng, 1, 4, E)
    kpm = np.ones((1, 4), bool)
    mha = MultiHeadAttention(E, H, seed=2)
    out, w = mha.forward(x, key_padding_mask=kpm, need_weights=True)
    assert np.all(w == 0) and np.allclose(out, mha.parameters()["out_proj.bias"])
    z = MultiHeadAttention(E, H, seed=2, add_zero_attn=True)
    out, w = z.forward(x, key_padding_mask=kpm, need_weights=True)
    assert np.isfinite(out).all() and np.allclose(w[..., -1], 1.0)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_rope_gqa_and_bias_kv_vs_float64_reference(rng, kv_heads):
    e, h = 32, 4
    mha = MultiHeadAttention(e, h, kv_heads=kv_heads, causal=True, bias=False, rope=RotaryEmbedding(e // h, base=500.0), add_bias_kv=True, seed=4)
    x = randn(rng, 2, 7, e)
    out, w = mha.forward(x, need_weights=True, average_attn_weights=False)
    ref, ref_w = ref_forward(x, x, x, mha.parameters(), h, kv_heads, causal=True, bias_kv=True, rope_base=500.0)
    assert_close(out, ref, TOL64)
    assert_close(w, ref_w, TOL64)
    # rope=True is a default embedding over the head width (base 10000), queries bottom-right aligned
    r = MultiHeadAttention(e, h, kv_heads=kv_heads, rope=True, seed=4)
    kv = randn(rng, 2, 9, e)
    ref, _ = ref_forward(x, kv, kv, r.parameters(), h, kv_heads, rope_base=10000.0)
    assert_close(r.forward(x, kv), ref, TOL64)
    assert isinstance(r.rope, RotaryEmbedding) and r.rope.dim == e // h


def test_plain_forward_and_extras_through_functional_call_and_torch_module(rng):
    mha = MultiHeadAttention(E, H, add_bias_kv=True, add_zero_attn=True, seed=5)
    x = randn(rng, B, 5, E)
    assert isinstance(mha.forward(x), np.ndarray) and isinstance(mha(x), np.ndarray)
    kpm = np.zeros((B, 5), bool)
    kpm[:, -1] = True
    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in mha.parameters().items()}
    out, w = attnkit.functional_call(mha, params, torch.from_numpy(x), key_padding_mask=torch.from_numpy(kpm), need_weights=True)
    assert_close(out, mha.forward(x, key_padding_mask=kpm), TOL32)
    out.sum().backward()
    assert params["bias_k"].grad is not None and float(params["bias_k"].grad.abs().sum()) > 0
    from attnkit.torch import AttentionModule

    mod = AttentionModule(mha)
    assert_close(mod(to_torch(x), key_padding_mask=torch.from_numpy(kpm)), mha.forward(x, key_padding_mask=kpm), TOL32)


def test_dask_key_padding_mask_and_need_weights_error(rng):
    da = pytest.importorskip("dask.array")
    mha = MultiHeadAttention(E, H, seed=6)
    x = randn(rng, 4, 5, E)
    kpm = rng.random((4, 5)) > 0.7
    kpm[:, 0] = False
    lazy = mha.forward(da.from_array(x, chunks=(2, 5, E)), key_padding_mask=da.from_array(kpm, chunks=(2, 5)))
    assert_close(lazy.compute(), mha.forward(x, key_padding_mask=kpm), TOL64)
    with pytest.raises(ConfigError, match="need_weights"):
        mha.forward(da.from_array(x), need_weights=True)


def test_bad_key_padding_mask_names_the_argument(rng):
    mha = MultiHeadAttention(E, H)
    x = randn(rng, B, 5, E)
    with pytest.raises(ShapeError, match="key_padding_mask"):
        mha.forward(x, key_padding_mask=np.zeros((B, 4), bool))
    with pytest.raises(ShapeError, match="key_padding_mask"):
        mha.forward(x, key_padding_mask=np.zeros((3, 5), bool))
    with pytest.raises(ConfigError, match="rope"):
        MultiHeadAttention(E, H, rope=RotaryEmbedding(8))  # head width 4


def test_onnx_export_with_bias_kv_zero_attn_and_rope(rng, tmp_path):
    pytest.importorskip("ndonnx")
    ort = pytest.importorskip("onnxruntime")
    mha = MultiHeadAttention(16, 2, add_bias_kv=True, add_zero_attn=True, rope=True, causal=True, seed=7)
    x = rng.standard_normal((2, 8, 16)).astype(np.float32)
    path = str(tmp_path / "mha.onnx")
    attnkit.export_onnx(mha, path, x)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x2 = rng.standard_normal((3, 11, 16)).astype(np.float32)
    got = sess.run(None, {"query": x2})[0]
    np.testing.assert_allclose(got, mha.forward(x2), rtol=1e-4, atol=1e-5)


def test_jax_jit_with_every_option(rng):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    mha = MultiHeadAttention(E, H, add_bias_kv=True, add_zero_attn=True, rope=True, causal=True, seed=8)
    x = randn(rng, B, 5, E)
    kpm = np.zeros((B, 5), bool)
    kpm[1, 3:] = True
    params = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in mha.parameters().items()}

    @jax.jit
    def f(p, x, kpm):
        return attnkit.functional_call(mha, p, x, key_padding_mask=kpm, need_weights=True)

    out, w = f(params, jnp.asarray(x), jnp.asarray(kpm))
    want, want_w = mha.forward(x, key_padding_mask=kpm, need_weights=True)
    assert_close(np.asarray(out), want, TOL32)
    assert_close(np.asarray(w), want_w, TOL32)
    ref, _ = ref_forward(x, x, x, mha.parameters(), H, H, kpm=kpm, causal=True, bias_kv=True, zero_attn=True, rope_base=10000.0)
    assert_close(np.asarray(out), ref, TOL64)


def test_torch_compile_fullgraph_with_every_option(rng):
    from attnkit.torch import AttentionModule

    mha = MultiHeadAttention(E, H, add_bias_kv=True, add_zero_attn=True, rope=True, causal=True, seed=9)
    mod = AttentionModule(mha)
    x = to_torch(randn(rng, B, 5, E))
    kpm = torch.zeros(B, 5, dtype=torch.bool)
    kpm[1, 3:] = True
    out, w = torch.compile(lambda x: mod(x, key_padding_mask=kpm, need_weights=True), fullgraph=True, backend="eager")(x)
    want, want_w = mod(x, key_padding_mask=kpm, need_weights=True)
    assert_close(out, want, TOL32)
    assert_close(w, want_w, TOL32)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_rope_layer_decodes_token_by_token_as_the_full_causal_forward(rng, kv_heads):
    mha = MultiHeadAttention(32, 4, kv_heads=kv_heads, causal=True, rope=RotaryEmbedding(8, base=500.0), seed=10)
    x = randn(rng, 2, 9, 32)
    cache = attnkit.KVCache(max_len=16, kv_heads=kv_heads, dim=8, dtype=np.float64)
    steps = [mha.forward(x[:, :3], cache=cache)] + [mha.forward(x[:, i : i + 1], cache=cache) for i in range(3, 9)]
    assert_close(np.concatenate(steps, axis=1), mha.forward(x), TOL64)
    with pytest.raises(ConfigError, match="need_weights"):
        mha.forward(x[:, :1], cache=cache, need_weights=True)
    with pytest.raises(ConfigError, match="add_bias_kv"):
        MultiHeadAttention(32, 4, add_bias_kv=True).forward(x[:, :1], cache=attnkit.KVCache(max_len=4, kv_heads=4, dim=8, dtype=np.float64))
