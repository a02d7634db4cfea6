"""RotaryEmbedding (Su et al. 2021): against plain references, the relative-position property, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnkit
from attnkit import ConfigError, DTypeError, ShapeError
from attnkit.kernels.rope import RotaryEmbedding, as_rope


def ref_half(x: np.ndarray, pos: np.ndarray, dim: int, base: float = 10000.0) -> np.ndarray:
    """Hugging Face LLaMA's rotate_half formulation, written plainly in float64."""
    inv = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    ang = np.outer(pos, inv)
    emb = np.concatenate([ang, ang], axis=-1)
    cos, sin = np.cos(emb), np.sin(emb)
    r = x[..., :dim]
    rot_half = np.concatenate([-r[..., dim // 2 :], r[..., : dim // 2]], axis=-1)
    return np.concatenate([r * cos + rot_half * sin, x[..., dim:]], axis=-1)


def ref_interleaved(x: np.ndarray, pos: np.ndarray, dim: int, base: float = 10000.0) -> np.ndarray:
    """Meta LLaMA / RoFormer: consecutive pairs as complex numbers times exp(i m theta)."""
    inv = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    z = x[..., :dim:2] + 1j * x[..., 1:dim:2]
    z = z * np.exp(1j * np.outer(pos, inv))
    out = np.empty_like(x)
    out[..., :dim:2] = z.real
    out[..., 1:dim:2] = z.imag
    out[..., dim:] = x[..., dim:]
    return out


@pytest.mark.parametrize("dim,width", [(8, 8), (16, 16), (4, 10)])
def test_half_matches_rotate_half_reference(dim: int, width: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 11, width))
    pos = np.arange(11)
    got = RotaryEmbedding(dim).apply(x)
    np.testing.assert_allclose(got, ref_half(x, pos, dim), rtol=1e-12, atol=1e-12)
    odd = rng.integers(-50, 5000, size=11)
    np.testing.assert_allclose(RotaryEmbedding(dim).apply(x, odd), ref_half(x, odd, dim), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dim,width", [(8, 8), (6, 9)])
def test_interleaved_matches_complex_reference(dim: int, width: int) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, width))
    pos = rng.uniform(0, 300, size=7)
    got = RotaryEmbedding(dim, base=500.0, layout="interleaved").apply(x, pos)
    np.testing.assert_allclose(got, ref_interleaved(x, pos, dim, base=500.0), rtol=1e-10, atol=1e-10)


def test_layouts_are_a_permutation_of_each_other() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 8))
    perm = np.array([0, 2, 4, 6, 1, 3, 5, 7])  # interleaved pairs -> half pairs
    half = RotaryEmbedding(8).apply(x[:, perm])
    inter = RotaryEmbedding(8, layout="interleaved").apply(x)
    np.testing.assert_allclose(half, inter[:, perm], atol=1e-12)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_relative_position_property(layout: str) -> None:
    rng = np.random.default_rng(3)
    rope = RotaryEmbedding(16, layout=layout)
    q, k = rng.standard_normal((2, 16))
    for m, n, t in [(0, 0, 5), (3, 10, 7), (100, 2, -50), (7, 7, 1000)]:
        a = rope.apply(q[None], [m])[0] @ rope.apply(k[None], [n])[0]
        b = rope.apply(q[None], [m + t])[0] @ rope.apply(k[None], [n + t])[0]
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
    # and it genuinely depends on m - n
    a = rope.apply(q[None], [0])[0] @ rope.apply(k[None], [1])[0]
    c = rope.apply(q[None], [0])[0] @ rope.apply(k[None], [4])[0]
    assert abs(a - c) > 1e-3


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(-1000, 1000),
    n=st.integers(-1000, 1000),
    t=st.integers(-1000, 1000),
    layout=st.sampled_from(["half", "interleaved"]),
    seed=st.integers(0, 2**16),
)
def test_relative_position_property_hypothesis(m: int, n: int, t: int, layout: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rope = RotaryEmbedding(8, base=100.0, layout=layout)
    q, k = rng.standard_normal((2, 1, 8))
    a = float(rope.apply(q, [m])[0] @ rope.apply(k, [n])[0])
    b = float(rope.apply(q, [m + t])[0] @ rope.apply(k, [n + t])[0])
    assert a == pytest.approx(b, abs=1e-8)


def test_norm_preserved_identity_at_zero_and_inverse() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((9, 12))
    rope = RotaryEmbedding(12)
    y = rope.apply(x)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-12)
    np.testing.assert_allclose(y[0], x[0], atol=0)
    np.testing.assert_allclose(rope.inverse(y), x, atol=1e-12)


def test_scaling_is_position_interpolation() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 8))
    pos = np.arange(6) * 4
    np.testing.assert_allclose(RotaryEmbedding(8, scaling=4.0).apply(x, pos), RotaryEmbedding(8).apply(x, np.arange(6)), atol=1e-12)


def test_seq_axis_and_broadcast_positions() -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 5, 3, 8))  # (B, L, H, D)
    rope = RotaryEmbedding(8)
    got = rope.apply(x, seq_axis=-3)
    for h in range(3):
        np.testing.assert_allclose(got[:, :, h], rope.apply(x[:, :, h]), atol=1e-12)
    pos = np.array([[0, 1, 2, 3, 4], [10, 11, 12, 13, 14]])[:, :, None]  # per-batch positions (B, L, 1)
    got = rope.apply(x, pos)
    np.testing.assert_allclose(got[1, :, 0], rope.apply(x[1, :, 0], np.arange(10, 15)), atol=1e-12)
    single = rope.apply(x[0, 0, 0], 3)
    np.testing.assert_allclose(single, rope.apply(x[0, :1, 0], [3])[0], atol=1e-12)


def test_torch_in_torch_out_with_autograd() -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    rope = RotaryEmbedding(8, layout="interleaved")
    t = torch.tensor(x, requires_grad=True)
    y = rope.apply(t, torch.arange(4))
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    np.testing.assert_allclose(y.detach().numpy(), ref_interleaved(x.astype(np.float64), np.arange(4), 8), atol=1e-5)
    y.pow(2).sum().backward()  # rotation is orthogonal: d|Rx|^2/dx = 2x
    np.testing.assert_allclose(t.grad.numpy(), 2 * x, atol=1e-5)
    assert rope.apply(x).dtype == np.float32
    assert rope.apply(x.astype(np.float16)).dtype == np.float16


def test_public_name_and_rope_option_helper() -> None:
    assert attnkit.RotaryEmbedding is RotaryEmbedding
    assert as_rope(None, 8) is None
    assert as_rope("interleaved", 8).layout == "interleaved"
    assert as_rope(True, 8).dim == 8
    assert as_rope("true", 8).layout == "half" and as_rope("off", 8) is None  # strings from a CLI or config file
    with pytest.raises(ConfigError, match="rope"):
        as_rope(RotaryEmbedding(16), 8)
    with pytest.raises(ConfigError, match="rope"):
        as_rope("sideways", 8)


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="dim"):
        RotaryEmbedding(7)
    with pytest.raises(ConfigError, match="dim"):
        RotaryEmbedding(0)
    with pytest.raises(ConfigError, match="layout"):
        RotaryEmbedding(8, layout="pairs")
    with pytest.raises(ConfigError, match="base"):
        RotaryEmbedding(8, base=-1)
    with pytest.raises(ConfigError, match="scaling"):
        RotaryEmbedding(8, scaling=0)
    rope = RotaryEmbedding(8)
    with pytest.raises(ShapeError, match="x"):
        rope.apply(np.zeros((3, 6)))
    with pytest.raises(ShapeError, match="positions"):
        rope.apply(np.zeros((3, 8)), [0, 1])
    with pytest.raises(ConfigError, match="positions"):
        rope.apply(np.zeros((3, 8)), [0, np.nan, 1])
    with pytest.raises(DTypeError, match="x"):
        rope.apply(np.zeros((3, 8), dtype=np.int64))
    with pytest.raises(DTypeError, match="positions"):
        rope.apply(np.zeros((3, 8)), np.array(["a", "b", "c"]))
    with pytest.raises(ConfigError, match="seq_axis"):
        rope.apply(np.zeros((3, 8)), seq_axis=-1)
    with pytest.raises(ShapeError, match="positions"):
        rope.apply(np.zeros((2, 3, 8)), np.zeros((3, 3)))


def test_flash_rope_option_matches_rotated_inputs_and_decoding() -> None:
    rng = np.random.default_rng(8)
    q, k, v = (rng.standard_normal((10, 2, 8)) for _ in range(3))
    rope = RotaryEmbedding(8)
    with_rope = attnkit.FlashAttention(heads=2, dim=8, causal=True, rope=rope)
    plain = attnkit.FlashAttention(heads=2, dim=8, causal=True)
    full = with_rope(q, k, v)
    np.testing.assert_allclose(full, plain(rope.apply(q, seq_axis=-3), rope.apply(k, seq_axis=-3), v), atol=1e-12)
    # decoding with a key/value cache: the last query alone sits at position Lk-1
    np.testing.assert_allclose(with_rope(q[-1:], k, v), full[-1:], atol=1e-12)
    w = with_rope.attention_scores(q[-3:], k)
    np.testing.assert_allclose(w, plain.attention_scores(rope.apply(q[-3:], np.arange(7, 10), -3), rope.apply(k, seq_axis=-3)), atol=1e-12)
    assert attnkit.FlashAttention(heads=2, dim=8, rope="interleaved").rope.layout == "interleaved"
