"""MultiHeadAttention / CrossAttention / SelfAttention against torch.nn.MultiheadAttention and float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TOL32, TOL64, assert_close, lower_right_mask, randn, ref_mha, to_np, to_torch

from attnkit import ConfigError, CrossAttention, MultiHeadAttention, SelfAttention, create_mask
from attnkit.weights import from_torch_mha, to_torch_mha


def torch_mha(
    e: int, h: int, *, bias: bool = True, kdim: int | None = None, vdim: int | None = None, dtype=torch.float32, seed: int = 0
) -> torch.nn.MultiheadAttention:
    """A torch MHA with random (non-zero) weights and biases, in eval mode."""
    torch.manual_seed(seed)
    m = torch.nn.MultiheadAttention(e, h, bias=bias, kdim=kdim, vdim=vdim, batch_first=True).to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return m.eval()


def torch_out(m: torch.nn.MultiheadAttention, q, k, v, attn_mask=None, key_padding_mask=None, need_weights=False):
    with torch.no_grad():
        out, w = m(q, k, v, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=need_weights, average_attn_weights=False)
    return out, w


def loaded(m: torch.nn.MultiheadAttention, **kw) -> MultiHeadAttention:
    ours = MultiHeadAttention(
        m.embed_dim,
        heads=m.num_heads,
        bias=m.in_proj_bias is not None,
        kdim=m.kdim if m.kdim != m.embed_dim else None,
        vdim=m.vdim if m.vdim != m.embed_dim else None,
        **kw,
    )
    ours.load_weights(m.state_dict())
    return ours


# ------------------------------------------------------------------ torch MHA oracle

MHA_CASES = [  # (E, H, bias, kdim, vdim, Lq, Lk)
    pytest.param(16, 4, True, None, None, 7, 7, id="packed-bias-self"),
    pytest.param(16, 4, False, None, None, 5, 9, id="packed-nobias"),
    pytest.param(12, 3, True, 10, 6, 6, 4, id="kdim-vdim-bias"),
    pytest.param(12, 2, False, 5, 7, 3, 8, id="kdim-vdim-nobias"),
    pytest.param(8, 1, True, 8, 8, 4, 4, id="single-head"),
]


@pytest.mark.parametrize("e,h,bias,kdim,vdim,lq,lk", MHA_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vs_torch_mha_state_dict(rng, e, h, bias, kdim, vdim, lq, lk, dtype):
    m = torch_mha(e, h, bias=bias, kdim=kdim, vdim=vdim, dtype=dtype)
    x = to_torch(randn(rng, 2, lq, e), dtype)
    kx = to_torch(randn(rng, 2, lk, kdim or e), dtype)
    vx = to_torch(randn(rng, 2, lk, vdim or e), dtype)
    if kdim is None and lq == lk:
        kx = vx = x
    exp, exp_w = torch_out(m, x, kx, vx, need_weights=True)
    ours = loaded(m)
    tol = TOL32 if dtype == torch.float32 else TOL64
    out = ours.forward(x, kx, vx)
    assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.shape == (2, lq, e)
    assert_close(out, exp, tol)
    assert_close(ours.get_attention_weights(), exp_w, tol)
    # numpy in -> numpy out
    out_np = ours.forward(to_np(x), to_np(kx), to_np(vx))
    assert isinstance(out_np, np.ndarray) and out_np.dtype == to_np(x).dtype
    assert_close(out_np, exp, tol)
    w_np = ours.get_attention_weights()
    assert w_np.shape == (2, h, lq, lk)
    assert_close(w_np, exp_w, tol)
    # and against the float64 reference built from the same weights
    ref, ref_w = ref_mha(to_np(x), to_np(kx), to_np(vx), ours.parameters(), h)
    assert_close(out_np, ref, tol)
    assert_close(w_np, ref_w, tol)


def test_tiled_forward_without_kept_weights(rng):
    m = torch_mha(16, 4)
    x = to_torch(randn(rng, 3, 9, 16), torch.float32)
    exp, _ = torch_out(m, x, x, x)
    ours = loaded(m, keep_weights=False)
    assert_close(ours.forward(x), exp, TOL32)
    assert_close(ours.forward(to_np(x)), exp, TOL32)
    with pytest.raises(Exception, match="keep_weights"):
        ours.get_attention_weights()


@pytest.mark.parametrize("keep_weights", [True, False])
def test_vs_torch_with_masks(rng, keep_weights):
    m = torch_mha(16, 4, dtype=torch.float64)
    ours = loaded(m, keep_weights=keep_weights)
    x = to_torch(randn(rng, 2, 6, 16), torch.float64)
    mem = to_torch(randn(rng, 2, 8, 16), torch.float64)
    # bool attention mask: attnkit True = attend, torch True = masked
    allow = torch.from_numpy(rng.random((6, 8)) > 0.4)
    allow[:, 2] = True
    exp, _ = torch_out(m, x, mem, mem, attn_mask=~allow)
    assert_close(ours.forward(x, mem, mem, mask=allow), exp, TOL64)
    # float additive mask (same meaning in both)
    bias = to_torch(randn(rng, 6, 8), torch.float64)
    exp, _ = torch_out(m, x, mem, mem, attn_mask=bias)
    assert_close(ours.forward(x, mem, mem, mask=bias), exp, TOL64)
    # key padding: attnkit takes it as a (N, 1, 1, Lk) mask
    keep = torch.from_numpy(rng.random((2, 8)) > 0.3)
    keep[:, 0] = True
    exp, _ = torch_out(m, x, mem, mem, key_padding_mask=~keep)
    assert_close(ours.forward(x, mem, mem, mask=keep[:, None, None, :]), exp, TOL64)
    # per-head masks: torch takes (N*H, Lq, Lk)
    per_head = torch.from_numpy(rng.random((2, 4, 6, 8)) > 0.4)
    per_head[..., 5] = True
    exp, _ = torch_out(m, x, mem, mem, attn_mask=~per_head.reshape(8, 6, 8))
    assert_close(ours.forward(x, mem, mem, mask=per_head), exp, TOL64)


@pytest.mark.parametrize("lq,lk", [(7, 7), (4, 9), (9, 4)])
def test_causal_vs_torch_explicit_mask(rng, lq, lk):
    m = torch_mha(16, 2, dtype=torch.float64)
    ours = loaded(m, causal=True)
    x = to_torch(randn(rng, 2, lq, 16), torch.float64)
    mem = to_torch(randn(rng, 2, lk, 16), torch.float64)
    allowed = lower_right_mask(lq, lk)
    out = ours.forward(x, mem, mem)
    assert torch.isfinite(out).all()
    seen = allowed.any(axis=1)  # queries that see at least one key
    exp, _ = torch_out(m, x, mem, mem, attn_mask=torch.from_numpy(~allowed))
    assert_close(out[:, seen], exp[:, seen], TOL64)
    # a query that sees no key: attention part is zero, so the output is the out_proj bias
    b_o = torch.from_numpy(ours.parameters()["out_proj.bias"]).to(torch.float64)
    for i in np.flatnonzero(~seen):
        assert_close(out[:, i], b_o.expand(2, 16), TOL64)
    if lq == lk:
        exp_c, _ = torch_out(m, x, mem, mem, attn_mask=torch.from_numpy(~create_mask("causal", lq)))
        assert_close(out, exp_c, TOL64)


def test_causal_flag_equals_explicit_mask(rng):
    x = randn(rng, 2, 5, 8)
    a = MultiHeadAttention(8, heads=2, causal=True, seed=1).forward(x)
    b = MultiHeadAttention(8, heads=2, seed=1).forward(x, mask=create_mask("causal", 5))
    assert_close(a, b, TOL64)


def test_fully_masked_rows_give_bias_not_nan(rng):
    m = torch_mha(8, 2)
    ours = loaded(m)
    x = randn(rng, 4, 8, dtype=np.float32)
    mask = np.ones((4, 4), dtype=bool)
    mask[2] = False
    out = ours.forward(x, mask=mask)
    assert np.isfinite(out).all()
    assert_close(out[2], ours.parameters()["out_proj.bias"], TOL32)
    w = ours.get_attention_weights()
    assert (w[:, 2] == 0).all()
    ref, _ = ref_mha(x, x, x, ours.parameters(), 2, mask=mask)
    assert_close(out, ref, TOL32)


def test_batch_broadcast_and_unbatched(rng):
    ours = MultiHeadAttention(8, heads=2, seed=0)
    q = randn(rng, 3, 1, 4, 8)
    kv = randn(rng, 5, 6, 8)
    out = ours.forward(q, kv)
    assert out.shape == (3, 5, 4, 8)
    ref, _ = ref_mha(q, kv, kv, ours.parameters(), 2)
    assert_close(out, ref, TOL64)
    single = ours.forward(q[0, 0], kv[2])
    assert_close(single, out[0, 2], TOL64)


def test_flat_inputs(rng):
    ours = MultiHeadAttention(8, heads=2, seed=0)
    x = randn(rng, 5, 8, dtype=np.float32)
    out = ours.forward(x.ravel())
    assert out.shape == (40,) and out.dtype == np.float32
    assert_close(out, ours.forward(x).ravel(), TOL32)


# ------------------------------------------------------------------ weights round trips


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kdim,vdim", [(None, None), (6, 10)])
def test_save_load_round_trip(rng, tmp_path, bias, kdim, vdim):
    a = MultiHeadAttention(8, heads=4, bias=bias, kdim=kdim, vdim=vdim, seed=5)
    x, k, v = randn(rng, 3, 8), randn(rng, 4, kdim or 8), randn(rng, 4, vdim or 8)
    blob = a.save_weights(tmp_path / "w.safetensors")
    assert isinstance(blob, bytes) and (tmp_path / "w.safetensors").read_bytes() == blob
    for source in (blob, tmp_path / "w.safetensors", str(tmp_path / "w.safetensors"), a.parameters()):
        b = MultiHeadAttention(8, heads=4, bias=bias, kdim=kdim, vdim=vdim, seed=99)
        assert rel(b.forward(x, k, v), a.forward(x, k, v)) > 1e-6  # different before loading
        b.load_weights(source)
        np.testing.assert_array_equal(b.forward(x, k, v), a.forward(x, k, v))


def rel(a, b) -> float:
    return float(np.max(np.abs(to_np(a) - to_np(b))))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kdim,vdim", [(None, None), (6, 10)])
def test_to_torch_mha_back_into_torch(rng, bias, kdim, vdim):
    ours = MultiHeadAttention(8, heads=2, bias=bias, kdim=kdim, vdim=vdim, seed=3)
    sd = to_torch_mha(ours.parameters())
    assert ("in_proj_weight" in sd) == (kdim is None)
    m = torch.nn.MultiheadAttention(8, 2, bias=bias, kdim=kdim, vdim=vdim, batch_first=True).eval()
    m.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    x = randn(rng, 2, 5, 8, dtype=np.float32)
    k = randn(rng, 2, 3, kdim or 8, dtype=np.float32)
    v = randn(rng, 2, 3, vdim or 8, dtype=np.float32)
    exp, _ = torch_out(m, *(to_torch(t) for t in (x, k, v)))
    assert_close(ours.forward(x, k, v), exp, TOL32)


def test_unpacked_torch_form_round_trip(rng):
    ours = MultiHeadAttention(8, heads=2, seed=3)
    sd = to_torch_mha(ours.parameters(), packed=False)
    assert "q_proj_weight" in sd and "in_proj_weight" not in sd
    back = from_torch_mha(sd)
    assert set(back) == set(ours.parameters())
    for key, val in ours.parameters().items():
        np.testing.assert_array_equal(back[key], val)
    other = MultiHeadAttention(8, heads=2, seed=4)
    other.load_weights(sd)
    x = randn(rng, 4, 8)
    np.testing.assert_array_equal(other.forward(x), ours.forward(x))


def test_initialisation_is_seeded_and_torch_like():
    a, b = MultiHeadAttention(16, heads=4, seed=7), MultiHeadAttention(16, heads=4, seed=7)
    for key, val in a.parameters().items():
        np.testing.assert_array_equal(val, b.parameters()[key])
    p = a.parameters()
    bound = np.sqrt(6.0 / (16 + 48))  # xavier-uniform on the packed (3E, E) matrix, as torch
    assert np.abs(p["q_proj.weight"]).max() <= bound and np.abs(p["q_proj.weight"]).max() > 0.5 * bound
    assert not p["q_proj.bias"].any()
    assert set(p) == {f"{n}.{t}" for n in ("q_proj", "k_proj", "v_proj", "out_proj") for t in ("weight", "bias")}


# ------------------------------------------------------------------ dropout


def test_dropout_only_in_training_and_seeded(rng):
    x = randn(rng, 6, 8)
    base = MultiHeadAttention(8, heads=2, seed=1).forward(x)
    for keep in (True, False):
        a = MultiHeadAttention(8, heads=2, dropout=0.4, seed=1, keep_weights=keep)
        assert_close(a.forward(x), base, TOL64)  # eval by default
        a.train()
        d1 = a.forward(x)
        assert rel(d1, base) > 1e-3
        d2 = MultiHeadAttention(8, heads=2, dropout=0.4, seed=1, keep_weights=keep).train().forward(x)
        np.testing.assert_array_equal(d1, d2)
        d3 = MultiHeadAttention(8, heads=2, dropout=0.4, seed=2, keep_weights=keep)
        d3.load_weights(a.parameters())
        assert rel(d3.train().forward(x), d1) > 1e-3
        a.eval()
        assert_close(a.forward(x), base, TOL64)


def test_dropout_is_unbiased_and_weights_are_pre_dropout(rng):
    x = randn(rng, 3, 4)
    a = MultiHeadAttention(4, heads=2, dropout=0.25, seed=0)
    base = a.forward(x)
    w_eval = a.get_attention_weights()
    a.train()
    mean = np.mean([a.forward(x) for _ in range(3000)], axis=0)
    assert np.max(np.abs(mean - base)) < 0.1 * max(1.0, np.abs(base).max())
    assert_close(a.get_attention_weights(), w_eval, TOL64)


# ------------------------------------------------------------------ cross and self


def test_cross_attention_vs_torch(rng):
    ours = CrossAttention(12, 5, heads=3, seed=2)
    sd = to_torch_mha(ours.parameters())
    m = torch.nn.MultiheadAttention(12, 3, kdim=5, vdim=5, batch_first=True).eval()
    m.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    q = randn(rng, 2, 4, 12, dtype=np.float32)
    kv = randn(rng, 2, 7, 5, dtype=np.float32)
    exp, exp_w = torch_out(m, to_torch(q), to_torch(kv), to_torch(kv), need_weights=True)
    assert_close(ours.forward(q, kv), exp, TOL32)  # value defaults to key
    assert_close(ours.get_attention_weights(), exp_w, TOL32)
    ref, _ = ref_mha(q, kv, kv, ours.parameters(), 3)
    assert_close(ours.forward(q, kv, kv), ref, TOL32)
    with pytest.raises(Exception, match="key"):
        ours.forward(q)


def test_cross_attention_loads_torch_kdim_state_dict(rng):
    m = torch_mha(12, 3, kdim=5, vdim=5, dtype=torch.float64)
    ours = CrossAttention(12, 5, heads=3)
    ours.load_weights(m.state_dict())
    q, kv = to_torch(randn(rng, 4, 12)), to_torch(randn(rng, 6, 5))
    exp, _ = torch_out(m, q, kv, kv)
    assert_close(ours.forward(q, kv), exp, TOL64)


def test_self_attention_vs_torch(rng):
    m = torch_mha(8, 2, dtype=torch.float64)
    ours = SelfAttention(8, heads=2, causal=True)
    ours.load_weights(m.state_dict())
    x = to_torch(randn(rng, 3, 5, 8))
    exp, _ = torch_out(m, x, x, x, attn_mask=torch.from_numpy(~create_mask("causal", 5)))
    assert_close(ours.forward(x), exp, TOL64)
    with pytest.raises(ConfigError, match="key"):
        ours.forward(x, x)


def test_float16_numpy_in_float16_out(rng):
    ours = MultiHeadAttention(8, heads=2, seed=0)
    x = randn(rng, 5, 8, dtype=np.float16)
    out = ours.forward(x)
    assert out.dtype == np.float16
    ref, _ = ref_mha(x, x, x, ours.parameters(), 2)
    assert_close(out, ref, 5e-3)


def test_huge_logits_do_not_overflow():
    # identity projections and 1e4-scale inputs: logits around 1e4 * 1e4 / sqrt(d) would overflow a naive exp
    e = 4
    ours = MultiHeadAttention(e, heads=1, bias=False)
    eye = np.eye(e, dtype=np.float64)
    ours.load_weights({"q_proj.weight": eye, "k_proj.weight": eye, "v_proj.weight": eye, "out_proj.weight": eye})
    x = np.array([[1e2, 0, 0, 0], [-1e2, 0, 0, 0], [0, 1e2, 0, 0]], dtype=np.float64)
    for dtype in (np.float64, np.float32):
        out = ours.forward(x.astype(dtype))
        assert np.isfinite(out).all()
        ref, _ = ref_mha(x, x, x, ours.parameters(), 1)
        assert_close(out, ref, TOL32 if dtype == np.float32 else TOL64)


def test_self_attention_vs_float64_reference(rng):
    ours = SelfAttention(12, heads=3, seed=4)
    x = randn(rng, 2, 6, 12)
    mask = rng.random((6, 6)) > 0.3
    ref, ref_w = ref_mha(x, x, x, ours.parameters(), 3, mask=mask)
    assert_close(ours.forward(x, mask=mask), ref, TOL64)
    assert_close(ours.get_attention_weights(), ref_w, TOL64)
    ref_c, _ = ref_mha(x, x, x, ours.parameters(), 3, causal=True)
    assert_close(SelfAttention(12, heads=3, seed=4, causal=True).forward(x), ref_c, TOL64)
