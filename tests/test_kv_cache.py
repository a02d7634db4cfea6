"""KVCache and incremental decoding (issue 11): token-by-token decoding equals the full causal forward.

Oracles: a plain float64 reference written here (causal softmax attention with RoPE and grouped
key/value heads repeated per group, a sliding window as a mask), the mechanisms' own full forward on
the whole sequence, and torch's ``scaled_dot_product_attention(..., enable_gqa=True)`` for a decode step.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TOL32, TOL64, assert_close, to_np

import attnkit
from attnkit import FlashAttention, KVCache, LinearAttention, LocalGlobalAttention, MultiHeadAttention, SelfAttention
from attnkit.errors import AttentionError, ConfigError, DTypeError, ShapeError

H, D = 4, 16


# ---------------------------------------------------------------------------- float64 reference
def ref_rope(x: np.ndarray, pos: np.ndarray, base: float = 10000.0) -> np.ndarray:
    """Rotate-half RoPE (Su et al. 2021) of ``x (..., L, heads, D)`` at positions ``pos (L,)``."""
    d = x.shape[-1]
    inv = base ** (-np.arange(d // 2) * 2.0 / d)
    ang = pos[:, None] * inv[None, :]  # (L, D/2)
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def ref_causal(q: np.ndarray, k: np.ndarray, v: np.ndarray, *, rope: bool = False, window: int | None = None) -> np.ndarray:
    """Causal attention ``(..., L, H, D)``, key/value heads repeated per group; ``window``: keys ``i-window+1 .. i``."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    n = q.shape[-3]
    if rope:
        pos = np.arange(n, dtype=np.float64)
        q, k = ref_rope(q, pos), ref_rope(k, pos)
    g = q.shape[-2] // k.shape[-2]
    k, v = np.repeat(k, g, axis=-2), np.repeat(v, g, axis=-2)
    s = np.einsum("...ihd,...jhd->...hij", q, k) / np.sqrt(q.shape[-1])
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    allowed = j <= i
    if window is not None:
        allowed &= i - j < window
    s = np.where(allowed, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("...hij,...jhd->...ihd", p, v)


def inputs(rng: np.random.Generator, n: int, hk: int, batch: tuple[int, ...] = (2,), dtype: object = np.float64) -> tuple[np.ndarray, ...]:
    q = rng.standard_normal((*batch, n, H, D)).astype(dtype)
    k = rng.standard_normal((*batch, n, hk, D)).astype(dtype)
    v = rng.standard_normal((*batch, n, hk, D)).astype(dtype)
    return q, k, v


def decode(mech: object, q: object, k: object, v: object, cache: KVCache, prefill: int = 0, cat: object = np.concatenate) -> object:
    """Prefill ``prefill`` tokens in one chunk, then one token per call; the outputs joined along the sequence."""
    outs = [mech.forward(q[..., :prefill, :, :], k[..., :prefill, :, :], v[..., :prefill, :, :], cache=cache)] if prefill else []
    n = q.shape[-3]
    outs += [mech.forward(q[..., i : i + 1, :, :], k[..., i : i + 1, :, :], v[..., i : i + 1, :, :], cache=cache) for i in range(prefill, n)]
    return cat(outs, -3)


# ---------------------------------------------------------------------------- FlashAttention, NumPy
@pytest.mark.parametrize("n", [1, 2, 255, 256, 257])
@pytest.mark.parametrize("hk", [H, 2, 1])
@pytest.mark.parametrize("rope", [False, True])
def test_decode_equals_full_causal(n: int, hk: int, rope: bool) -> None:
    rng = np.random.default_rng(n * 10 + hk)
    q, k, v = inputs(rng, n, hk)
    fa = FlashAttention(heads=H, dim=D, causal=True, rope=rope)
    cache = KVCache(300, hk, D, dtype=np.float64)
    out = decode(fa, q, k, v, cache)
    assert cache.length == n and cache.size == n
    assert_close(out, ref_causal(q, k, v, rope=rope), TOL64)
    assert_close(out, fa.forward(q, k, v), TOL64)


@pytest.mark.parametrize("prefill", [1, 7, 200, 256])
def test_prefill_then_decode_float32(prefill: int) -> None:
    rng = np.random.default_rng(prefill)
    q, k, v = inputs(rng, 257, 2, dtype=np.float32)
    fa = FlashAttention(heads=H, dim=D, causal=True, rope=True)
    out = decode(fa, q, k, v, KVCache(257, 2, D), prefill=prefill)
    assert out.dtype == np.float32
    assert_close(out, ref_causal(q, k, v, rope=True), TOL32)


def test_chunks_of_several_tokens_are_causal_bottom_right() -> None:
    rng = np.random.default_rng(1)
    q, k, v = inputs(rng, 40, 2)
    fa = FlashAttention(heads=H, dim=D, causal=False)  # a cache makes the chunk causal whatever causal says
    cache = KVCache(64, 2, D, dtype=np.float64)
    outs, start = [], 0
    for size in (3, 1, 9, 2, 25):
        outs.append(fa.forward(q[:, start : start + size], k[:, start : start + size], v[:, start : start + size], cache=cache))
        start += size
    assert_close(np.concatenate(outs, 1), ref_causal(q, k, v), TOL64)


def test_numpy_decode_step_reads_the_cache_without_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    import attnkit.kernels.decode as dec

    seen = []
    real = dec.decode_numpy

    def spy(q: np.ndarray, k: np.ndarray, v: np.ndarray, *, scale: float) -> np.ndarray:
        seen.append((k, v))
        return real(q, k, v, scale=scale)

    monkeypatch.setattr(dec, "decode_numpy", spy)
    rng = np.random.default_rng(2)
    q, k, v = inputs(rng, 20, 2, batch=(), dtype=np.float32)
    cache = KVCache(32, 2, D)
    out = decode(FlashAttention(heads=H, dim=D), q, k, v, cache)
    assert_close(out, ref_causal(q, k, v), TOL32)
    assert len(seen) == 20
    kk, vv = seen[-1]
    assert np.shares_memory(kk, cache._k) and np.shares_memory(vv, cache._v)  # views of the buffers
    assert kk.shape == (2, 20, D)


def test_keys_values_views_and_positions() -> None:
    rng = np.random.default_rng(3)
    _, k, v = inputs(rng, 10, 2, dtype=np.float32)
    cache = KVCache(16, 2, D)
    assert cache.keys is None and cache.length == 0 and cache.batch_shape is None
    cache.append(k[:, :6], v[:, :6])
    cache.append(k[:, 6:], v[:, 6:])
    assert cache.length == 10 and len(cache) == 10 and cache.batch_shape == (2,)
    np.testing.assert_array_equal(cache.keys, k)
    np.testing.assert_array_equal(cache.values, v)
    assert np.shares_memory(cache.keys, cache._k)
    cache.reset()
    assert cache.length == 0 and cache.keys is None


# ---------------------------------------------------------------------------- sliding window (ring buffer)
@pytest.mark.parametrize("window", [1, 5, 16])
@pytest.mark.parametrize("hk", [H, 2])
def test_ring_buffer_window(window: int, hk: int) -> None:
    rng = np.random.default_rng(window)
    q, k, v = inputs(rng, 45, hk)
    fa = FlashAttention(heads=H, dim=D, causal=True, rope=True)
    cache = KVCache(1000, hk, D, dtype=np.float64, window=window)
    out = decode(fa, q, k, v, cache, prefill=7)
    ref = ref_causal(q, k, v, rope=True, window=window)
    assert_close(out, ref, TOL64)
    assert_close(out, FlashAttention(heads=H, dim=D, causal=True, rope=True, window=(window - 1, 0)).forward(q, k, v), TOL64)
    assert cache.length == 45 and cache.size == window and cache.capacity == window
    np.testing.assert_array_equal(cache.keys, ref_rope(k, np.arange(45.0))[:, -window:].astype(np.float64))  # oldest first, rotated


def test_ring_buffer_chunks_that_wrap_and_alibi() -> None:
    rng = np.random.default_rng(4)
    q, k, v = inputs(rng, 50, 2)
    fa = FlashAttention(heads=H, dim=D, causal=True, alibi_slopes=True, window=(9, -1))
    full_window = FlashAttention(heads=H, dim=D, causal=True, alibi_slopes=True, window=(5, -1))
    cache = KVCache(64, 2, D, dtype=np.float64, window=6)  # tighter than the mechanism's own window
    outs, start = [], 0
    for size in (4, 1, 8, 1, 13, 1, 22):
        sl = slice(start, start + size)
        outs.append(fa.forward(q[:, sl], k[:, sl], v[:, sl], cache=cache))
        start += size
    assert_close(np.concatenate(outs, 1), full_window.forward(q, k, v), TOL64)


# ---------------------------------------------------------------------------- torch, JAX
def test_torch_decode_matches_full_forward_and_sdpa() -> None:
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = np.random.default_rng(5)
    q, k, v = (torch.tensor(x) for x in inputs(rng, 257, 2, dtype=np.float32))
    fa = FlashAttention(heads=H, dim=D, causal=True)
    cache = KVCache(300, 2, D, dtype=torch.float32)
    out = decode(fa, q, k, v, cache, prefill=230, cat=torch.cat)  # decode steps around the 256 block boundary
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert_close(out, ref_causal(*(to_np(x) for x in (q, k, v))), TOL32)
    # one more step against torch's SDPA on the same cache (enable_gqa)
    q1, k1, v1 = (torch.randn(2, 1, n, D) for n in (H, 2, 2))
    step = fa.forward(q1, k1, v1, cache=cache)
    kc, vc = (x.transpose(1, 2) for x in (cache.keys, cache.values))
    expected = F.scaled_dot_product_attention(q1.transpose(1, 2), kc, vc, enable_gqa=True).transpose(1, 2)
    assert_close(step, expected, TOL32)
    assert cache.keys.shape == (2, 258, 2, D)
    assert cache.keys.data_ptr() == cache._k.data_ptr()  # a view of the buffer


def test_torch_bfloat16_cache() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    q, k, v = (torch.tensor(x) for x in inputs(rng, 64, 2, dtype=np.float32))
    cache = KVCache(64, 2, D, dtype=torch.bfloat16)
    out = decode(FlashAttention(heads=H, dim=D, causal=True), q, k, v, cache, cat=torch.cat)
    assert cache.keys.dtype == torch.bfloat16
    kb, vb = (x.to(torch.bfloat16).to(torch.float32) for x in (k, v))  # the cache rounds keys/values to bfloat16
    assert_close(out, ref_causal(to_np(q), to_np(kb), to_np(vb)), 2e-3)


def test_jax_cache_is_eager_and_refuses_jit() -> None:
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rng = np.random.default_rng(7)
    qn, kn, vn = inputs(rng, 8, 2, dtype=np.float32)  # eager JAX compiles each op once per length: keep it short
    q, k, v = (jnp.asarray(x) for x in (qn, kn, vn))
    fa = FlashAttention(heads=H, dim=D, causal=True, rope=True)
    cache = KVCache(32, 2, D, dtype=jnp.float32)
    out = decode(fa, q, k, v, cache, prefill=5, cat=jnp.concatenate)
    assert type(out).__module__.startswith("jax")
    assert_close(out, ref_causal(qn, kn, vn, rope=True), TOL32)
    with pytest.raises(ConfigError, match="jax.jit"):
        jax.jit(lambda a, b, c: fa.forward(a, b, c, cache=KVCache(32, 2, D, dtype=jnp.float32)))(q[:, :1], k[:, :1], v[:, :1])


# ---------------------------------------------------------------------------- the other mechanisms
@pytest.mark.parametrize("hk", [H, 2])
@pytest.mark.parametrize("globals_", [0, 2, [3, 30]])
def test_local_global_decode(hk: int, globals_: object) -> None:
    rng = np.random.default_rng(8)
    q, k, v = inputs(rng, 60, hk)
    lg = LocalGlobalAttention(dim=D, heads=H, window=10, global_tokens=globals_, causal=True, rope=True)
    out = decode(lg, q, k, v, KVCache(64, hk, D, dtype=np.float64), prefill=12)
    assert_close(out, lg.forward(q, k, v), TOL64)
    # float64 reference: the dense pattern as a mask
    pattern = lg.dense_mask(60)
    qr, kr = ref_rope(q, np.arange(60.0)), ref_rope(k, np.arange(60.0))
    g = H // hk
    s = np.einsum("bihd,bjhd->bhij", qr, np.repeat(kr, g, -2)) / np.sqrt(D)
    s = np.where(pattern, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    ref = np.einsum("bhij,bjhd->bihd", p / p.sum(-1, keepdims=True), np.repeat(v, g, -2))
    assert_close(out, ref, TOL64)


def test_local_global_ring_cache() -> None:
    rng = np.random.default_rng(9)
    q, k, v = inputs(rng, 30, 2)
    lg = LocalGlobalAttention(dim=D, heads=H, window=10, causal=True)
    out = decode(lg, q, k, v, KVCache(64, 2, D, dtype=np.float64, window=4), prefill=3)
    assert_close(out, ref_causal(q, k, v, window=4), TOL64)  # radius 5 > window - 1: the ring bounds it


@pytest.mark.parametrize("hk", [H, 2])
@pytest.mark.parametrize("feature_map", ["elu", "favor"])
def test_linear_state_in_cache(hk: int, feature_map: str) -> None:
    rng = np.random.default_rng(10)
    q, k, v = inputs(rng, 257, hk)
    la = LinearAttention(dim=D, heads=H, causal=True, feature_map=feature_map, seed=3, eps=1e-12)
    cache = KVCache(257, hk, D, dtype=np.float64)
    out = decode(la, q, k, v, cache, prefill=100)
    assert_close(out, la.forward(q, k, v), 1e-9)
    if feature_map == "elu":  # float64 reference of Katharopoulos et al. (2020), causal
        fq, fk = (np.where(x > 0, x + 1, np.exp(x)) for x in (q, np.repeat(k, H // hk, -2)))
        vr = np.repeat(v, H // hk, -2)
        a = np.tril(np.einsum("bihf,bjhf->bhij", fq, fk))
        ref = np.einsum("bhij,bjhd->bihd", a, vr) / (a.sum(-1)[..., None].transpose(0, 2, 1, 3) + 1e-12)
        assert_close(out, ref, 1e-9)
    assert cache.length == 257 and cache.state is not None
    with pytest.raises(ConfigError, match="linear-attention state"):
        _ = cache.keys


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_multihead_decode(kv_heads: int) -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 40, 32))
    mha = MultiHeadAttention(32, 4, kv_heads=kv_heads, causal=True, seed=0)
    cache = KVCache(64, kv_heads, 8, dtype=np.float64)
    outs = [mha.forward(x[:, :9], cache=cache)] + [mha.forward(x[:, i : i + 1], cache=cache) for i in range(9, 40)]
    out = np.concatenate(outs, 1)
    assert_close(out, mha.forward(x), TOL64)
    p = {n: a.astype(np.float64) for n, a in mha.parameters().items()}
    qp = (x @ p["q_proj.weight"].T + p["q_proj.bias"]).reshape(2, 40, 4, 8)
    kp = (x @ p["k_proj.weight"].T + p["k_proj.bias"]).reshape(2, 40, kv_heads, 8)
    vp = (x @ p["v_proj.weight"].T + p["v_proj.bias"]).reshape(2, 40, kv_heads, 8)
    ref = ref_causal(qp, kp, vp).reshape(2, 40, 32) @ p["out_proj.weight"].T + p["out_proj.bias"]
    assert_close(out, ref, TOL64)


def test_self_attention_torch_decode() -> None:
    torch = pytest.importorskip("torch")
    sa = SelfAttention(16, 4, kv_heads=2, causal=True, seed=1)
    x = torch.randn(3, 20, 16)
    cache = KVCache(20, 2, 4, dtype=torch.float32)
    out = torch.cat([sa.forward(x[:, i : i + 1], cache=cache) for i in range(20)], 1)
    assert_close(out, sa.forward(x), TOL32)


# ---------------------------------------------------------------------------- errors
def test_past_max_len_names_the_sizes_and_keeps_the_cache() -> None:
    rng = np.random.default_rng(12)
    q, k, v = inputs(rng, 6, 2, dtype=np.float32)
    fa = FlashAttention(heads=H, dim=D, causal=True)
    cache = KVCache(5, 2, D)
    fa.forward(q[:, :4], k[:, :4], v[:, :4], cache=cache)
    with pytest.raises(ShapeError, match=r"appending 2 token\(s\) to a KVCache holding 4 would exceed max_len = 5"):
        fa.forward(q[:, 4:], k[:, 4:], v[:, 4:], cache=cache)
    assert cache.length == 4
    fa.forward(q[:, 4:5], k[:, 4:5], v[:, 4:5], cache=cache)
    assert cache.length == 5


def test_bad_caches_and_inputs() -> None:
    rng = np.random.default_rng(13)
    q, k, v = inputs(rng, 3, 2, dtype=np.float32)
    fa = FlashAttention(heads=H, dim=D, causal=True)
    with pytest.raises(ConfigError, match="expected an attnkit.KVCache"):
        fa.forward(q, k, v, cache={})
    with pytest.raises(ShapeError, match="kv_heads = 4"):
        fa.forward(q, k, v, cache=KVCache(8, 4, D))
    with pytest.raises(ShapeError, match="head dim 8"):
        fa.forward(q, k, v, cache=KVCache(8, 2, 8))
    with pytest.raises(DTypeError):
        KVCache(8, 2, D, dtype=np.int32)
    with pytest.raises(ConfigError, match="window"):
        KVCache(8, 2, D, window=9)
    cache = KVCache(8, 2, D)
    fa.forward(q, k, v, cache=cache)
    with pytest.raises(ShapeError, match=r"batch dimensions \(2\)"):
        fa.forward(q[0], k[0], v[0], cache=cache)
    with pytest.raises(ConfigError, match="mask"):
        fa.forward(q, k, v, mask=np.ones((3, 3), bool), cache=KVCache(8, 2, D, window=4))
    with pytest.raises(ConfigError, match="causal=True"):
        LocalGlobalAttention(dim=D, heads=H).forward(q, k, v, cache=KVCache(8, 2, D))
    with pytest.raises(ConfigError, match="causal=True"):
        LinearAttention(dim=D, heads=H).forward(q, k, v, cache=KVCache(8, 2, D))
    with pytest.raises(ConfigError, match="keys and values"):
        LinearAttention(dim=D, heads=H, causal=True).forward(q, k, v, cache=cache)
    with pytest.raises(ConfigError, match="self-attention"):
        MultiHeadAttention(16, 4).forward(rng.standard_normal((3, 16)), rng.standard_normal((3, 16)), cache=KVCache(8, 4, 4))
    assert issubclass(ShapeError, AttentionError)


def test_torch_inputs_into_numpy_cache() -> None:
    torch = pytest.importorskip("torch")
    q, k, v = (torch.randn(1, 2, n, D) for n in (H, 2, 2))
    with pytest.raises(ConfigError, match="holds numpy arrays"):
        FlashAttention(heads=H, dim=D).forward(q, k, v, cache=KVCache(8, 2, D))


def test_dask_and_onnx_refuse_a_cache(tmp_path: object) -> None:
    da = pytest.importorskip("dask.array")
    rng = np.random.default_rng(14)
    q, k, v = inputs(rng, 4, 2, dtype=np.float32)
    fa = FlashAttention(heads=H, dim=D, causal=True)
    with pytest.raises(ConfigError, match="Dask"):
        fa.forward(da.from_array(q), da.from_array(k), da.from_array(v), cache=KVCache(8, 2, D))
    pytest.importorskip("ndonnx")
    with pytest.raises(ConfigError, match="ONNX"):
        attnkit.export_onnx(fa, tmp_path / "fa.onnx", q, k, v, cache=KVCache(8, 2, D))


def test_truncate_rolls_back() -> None:
    rng = np.random.default_rng(15)
    q, k, v = inputs(rng, 12, 2)
    fa = FlashAttention(heads=H, dim=D, causal=True)
    cache = KVCache(16, 2, D, dtype=np.float64)
    fa.forward(q[:, :8], k[:, :8], v[:, :8], cache=cache)
    draft = (rng.standard_normal((2, 3, n, D)) for n in (H, 2, 2))  # rejected speculative tokens
    fa.forward(*draft, cache=cache)
    cache.truncate(8)
    out = decode(fa, q[:, 8:], k[:, 8:], v[:, 8:], cache)
    assert_close(out, ref_causal(q, k, v)[:, 8:], TOL64)
    with pytest.raises(ConfigError, match="between 0 and"):
        cache.truncate(13)
    ring = KVCache(16, 2, D, dtype=np.float64, window=4)
    ring.append(k[:, :6], v[:, :6])
    with pytest.raises(ConfigError, match="ring buffer"):
        ring.truncate(5)


def test_linear_state_in_torch_cache() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(16)
    q, k, v = (torch.tensor(x) for x in inputs(rng, 40, 2, dtype=np.float32))
    la = LinearAttention(dim=D, heads=H, causal=True)
    cache = KVCache(40, 2, D, dtype=torch.float32)
    out = decode(la, q, k, v, cache, prefill=9, cat=torch.cat)
    assert isinstance(out, torch.Tensor) and isinstance(cache.state[0], torch.Tensor)
    assert_close(out, la.forward(q, k, v), TOL32)


def test_an_overflowing_cached_step_is_a_named_error_and_appends_once() -> None:
    """The overflow guard recomputes a non-finite forward one dtype wider; a cached step must not run twice
    (its keys would be appended again), so it raises instead, having appended its keys once."""
    mech = attnkit.LinearAttention(heads=1, dim=2, causal=True)
    cache = attnkit.KVCache(8, 1, 2, dtype=np.float32)
    x = np.full((1, 1, 2), 3e38, dtype=np.float32)  # phi(k) v^T overflows float32 in the recurrent state
    with pytest.raises(attnkit.NonFiniteError, match="^query, key, value .*not recomputed"):
        mech.forward(x, x, x, cache=cache)
    assert cache.length == 1
