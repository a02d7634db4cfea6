"""Pipeline against a hand-written NumPy equivalent (float64, loops over heads, no attnkit code)."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from attnkit import ConfigError, ShapeError
from attnkit.sdk import AttentionBuilder, FeedForward, Pipeline, create

L, H, D = 9, 2, 4
E = H * D


# ---------------------------------------------------------------- the reference, written plainly
def ref_layer_norm(x, axes=1, eps=1e-5, weight=None, bias=None):
    ax = tuple(range(-axes, 0))
    mu = x.mean(axis=ax, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=ax, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    return y * (1 if weight is None else weight) + (0 if bias is None else bias)


def ref_rms_norm(x, eps=1e-5, weight=None):
    y = x / np.sqrt((x**2).mean(axis=-1, keepdims=True) + eps)
    return y if weight is None else y * weight


def ref_softmax_attention(q, k, v, causal=False):
    """q (Lq, d), k (Lk, d), v (Lk, dv): one head."""
    out = np.zeros((q.shape[0], v.shape[1]))
    for i in range(q.shape[0]):
        s = np.array([q[i] @ k[j] for j in range(k.shape[0])]) / math.sqrt(q.shape[1])
        if causal:
            s[i + 1 :] = -np.inf
        w = np.exp(s - s.max())
        out[i] = (w / w.sum()) @ v
    return out


def ref_heads_attention(x, causal=False):
    """Head layout (L, H, D) self-attention without projections (FlashAttention)."""
    return np.stack([ref_softmax_attention(x[:, h], x[:, h], x[:, h], causal) for h in range(x.shape[1])], axis=1)


def ref_mha(x, params, heads, context=None, causal=False):
    p = {k: v.astype(np.float64) for k, v in params.items()}
    c = x if context is None else context
    q = x @ p["q_proj.weight"].T + p["q_proj.bias"]
    k = c @ p["k_proj.weight"].T + p["k_proj.bias"]
    v = c @ p["v_proj.weight"].T + p["v_proj.bias"]
    dh = q.shape[1] // heads
    o = np.concatenate(
        [ref_softmax_attention(q[:, h * dh : (h + 1) * dh], k[:, h * dh : (h + 1) * dh], v[:, h * dh : (h + 1) * dh], causal) for h in range(heads)],
        axis=1,
    )
    return o @ p["out_proj.weight"].T + p["out_proj.bias"]


def ref_ffn(x, ff):
    h = x @ ff.w1 + ff.b1
    h = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    return h @ ff.w2 + ff.b2


@pytest.fixture
def x64():
    return np.random.default_rng(0).standard_normal((L, H, D))


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pre_norm_attention_block_with_flash(x64, dtype) -> None:
    mech = create("flash", heads=H, dim=D)
    pipe = Pipeline().add_norm("layer", axes=2).add_attention(mech).add_residual()
    got = pipe.run(x64.astype(dtype))
    assert got.dtype == dtype and got.shape == x64.shape
    want = x64 + ref_heads_attention(ref_layer_norm(x64, axes=2))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 if dtype == np.float64 else 2e-5)


def test_pre_norm_transformer_block_matches_the_fluent_form(x64) -> None:
    mech = create("flash", heads=H, dim=D, causal=True)
    a = Pipeline().add_pre_norm_block(mech, norm="rms", axes=2).run(x64)
    want = x64 + ref_heads_attention(ref_rms_norm(x64.reshape(L, E)).reshape(L, H, D), causal=True)
    np.testing.assert_allclose(a, want, rtol=0, atol=1e-12)


def test_post_norm_transformer_block_with_feed_forward() -> None:
    x = np.random.default_rng(1).standard_normal((L, E))
    mech = create("multi_head", dim=E, heads=H, seed=3)
    ff = FeedForward(E, 16, seed=4)
    pipe = Pipeline().add_post_norm_block(mech, feed_forward=ff, dropout=0.1)
    assert pipe.stages[0].startswith("attention(") and "residual(then norm('layer'" in pipe.stages[2]
    got = pipe.run(x)  # eval mode: dropout is the identity
    h = ref_layer_norm(x + ref_mha(x, mech.parameters(), H))
    want = ref_layer_norm(h + ref_ffn(h, ff))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


def test_two_pre_norm_blocks_chain_their_residuals() -> None:
    x = np.random.default_rng(2).standard_normal((L, E))
    m1 = create("multi_head", dim=E, heads=H, seed=1)
    m2 = create("multi_head", dim=E, heads=H, seed=2, causal=True)
    ff = FeedForward(E, seed=0, activation="gelu")
    got = Pipeline().add_pre_norm_block(m1, feed_forward=ff).add_pre_norm_block(m2).add_norm("layer").run(x)
    h = x + ref_mha(ref_layer_norm(x), m1.parameters(), H)
    h = h + ref_ffn(ref_layer_norm(h), ff)
    h = h + ref_mha(ref_layer_norm(h), m2.parameters(), H, causal=True)
    np.testing.assert_allclose(got, ref_layer_norm(h), rtol=0, atol=1e-10)


def test_norm_weights_and_custom_stage() -> None:
    x = np.random.default_rng(3).standard_normal((L, E))
    w, b = np.linspace(0.5, 2.0, E), np.linspace(-1, 1, E)
    got = Pipeline().add_norm("layer", weight=w, bias=b, eps=1e-3).add_custom(np.tanh, name="tanh").add_norm("rms", weight=w).run(x)
    want = ref_rms_norm(np.tanh(ref_layer_norm(x, eps=1e-3, weight=w, bias=b)), weight=w)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_cross_attention_with_context_and_mask() -> None:
    rng = np.random.default_rng(4)
    x, ctx = rng.standard_normal((L, E)), rng.standard_normal((5, E))
    mech = create("multi_head", dim=E, heads=H, seed=5)
    mask = np.ones((L, 5), dtype=bool)
    mask[:, 3:] = False  # no query sees the last two context positions
    got = Pipeline().add_attention(mech).add_residual().run(x, context=ctx, mask=mask)
    want = x + ref_mha(x, mech.parameters(), H, context=ctx[:3])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


def test_dropout_only_while_training_and_seeded() -> None:
    x = np.random.default_rng(5).standard_normal((L, E))
    pipe = Pipeline(seed=7).add_dropout(0.3).add_custom(lambda t: 2.0 * t)
    np.testing.assert_array_equal(pipe.run(x), 2.0 * x)  # eval: identity
    pipe.train()
    got1, got2 = pipe.run(x), pipe.run(x)
    rng = np.random.default_rng(7)
    want1 = 2.0 * x * (rng.random(x.shape) >= 0.3) / 0.7
    want2 = 2.0 * x * (rng.random(x.shape) >= 0.3) / 0.7
    np.testing.assert_allclose(got1, want1, rtol=0, atol=1e-15)
    np.testing.assert_allclose(got2, want2, rtol=0, atol=1e-15)
    assert not np.array_equal(got1, got2)
    pipe.reseed()
    np.testing.assert_array_equal(pipe.run(x), got1)
    dropped = (got1 == 0).mean()
    assert 0.15 < dropped < 0.45


def test_train_and_eval_reach_the_mechanisms() -> None:
    mech = create("multi_head", dim=E, heads=H, dropout=0.5, seed=0)
    pipe = Pipeline().add_attention(mech)
    x = np.random.default_rng(6).standard_normal((L, E))
    pipe.train()
    assert mech.training is True
    pipe.eval()
    assert mech.training is False
    np.testing.assert_allclose(pipe.run(x), ref_mha(x, mech.parameters(), H), rtol=0, atol=1e-10)


def test_builders_are_accepted_and_built() -> None:
    pipe = Pipeline().add_attention(AttentionBuilder().type("flash").heads(H).dim(D))
    x = np.random.default_rng(7).standard_normal((L, H, D))
    np.testing.assert_allclose(pipe.run(x), ref_heads_attention(x), rtol=0, atol=1e-12)
    assert "FlashAttention" in repr(pipe) and len(pipe) == 1


def test_run_async_equals_run(x64) -> None:
    pipe = Pipeline().add_norm("layer", axes=2).add_attention(create("flash", heads=H, dim=D)).add_residual()
    assert np.array_equal(asyncio.run(pipe.run_async(x64)), pipe.run(x64))
    assert np.array_equal(pipe(x64), pipe.run(x64))


def test_torch_tensors_stay_torch(x64) -> None:
    torch = pytest.importorskip("torch")
    pipe = Pipeline().add_norm("rms", axes=2).add_attention(create("flash", heads=H, dim=D)).add_residual()
    got = pipe.run(torch.from_numpy(x64))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), pipe.run(x64), rtol=0, atol=1e-12)


def test_feed_forward_activations() -> None:
    x = np.random.default_rng(8).standard_normal((3, 4))
    for act, f in [("relu", lambda h: np.maximum(h, 0)), ("silu", lambda h: h / (1 + np.exp(-h)))]:
        ff = FeedForward(4, 6, activation=act, seed=1)
        np.testing.assert_allclose(ff(x), f(x @ ff.w1 + ff.b1) @ ff.w2 + ff.b2, rtol=0, atol=1e-12)
    with pytest.raises(ShapeError, match="x"):
        FeedForward(4)(np.zeros((3, 5)))
    with pytest.raises(ConfigError, match="activation"):
        FeedForward(4, activation="tanh")


def test_dispose_and_context_manager() -> None:
    mech = create("flash", heads=H, dim=D)
    with Pipeline().add_attention(mech) as pipe:
        pipe.run(np.zeros((2, H, D)))
    assert mech.disposed


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Pipeline().run(np.zeros((2, 2))), "no stages"),
        (lambda: Pipeline().add_attention(object()), "mechanism"),
        (lambda: Pipeline().add_norm("batch"), "norm"),
        (lambda: Pipeline().add_norm("layer", eps=0), "eps"),
        (lambda: Pipeline().add_norm("rms", bias=np.zeros(2)), "bias"),
        (lambda: Pipeline().add_dropout(1.0), "p"),
        (lambda: Pipeline().add_custom(3), "fn"),
        (lambda: Pipeline(seed=-1), "seed"),
        (lambda: Pipeline().add_transformer_block(create("flash"), norm_first="yes"), "norm_first"),
        (lambda: Pipeline().add_custom(lambda t: t[:1]).add_residual().run(np.zeros((3, 2))), "residual"),
        (lambda: Pipeline().add_norm("layer", axes=3).run(np.zeros((3, 2))), "x"),
        (lambda: Pipeline().add_norm("layer").run(np.zeros((3, 2), dtype=np.int64)), "x"),
    ],
)
def test_errors_name_the_argument(make, match: str) -> None:
    with pytest.raises((ConfigError, ShapeError, TypeError), match=match):
        make()
