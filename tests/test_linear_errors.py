"""LinearAttention bad input: every case raises an attnkit error whose message names the argument."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnkit
from attnkit import ConfigError, DisposedError, DTypeError, LinearAttention, NonFiniteError, ShapeError
from attnkit.mechanisms import registry

L, H, D = 6, 2, 4


def inputs(lq: int = L, lk: int = L, dtype: object = np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (
        rng.standard_normal((lq, H, D)).astype(dtype),
        rng.standard_normal((lk, H, D)).astype(dtype),
        rng.standard_normal((lk, H, D)).astype(dtype),
    )


BAD_OPTIONS = [
    (dict(dim=0), ConfigError, "dim"),
    (dict(dim=-4), ConfigError, "dim"),
    (dict(dim=4.5), ConfigError, "dim"),
    (dict(dim="4"), ConfigError, "dim"),
    (dict(dim=True), ConfigError, "dim"),
    (dict(dim=4, heads=0), ConfigError, "heads"),
    (dict(dim=4, heads=2.0), ConfigError, "heads"),
    (dict(dim=4, feature_map="softmax"), ConfigError, "feature_map"),
    (dict(dim=4, feature_map=""), ConfigError, "feature_map"),
    (dict(dim=4, feature_map=None), ConfigError, "feature_map"),
    (dict(dim=4, feature_map=3), ConfigError, "feature_map"),
    (dict(dim=4, eps=0.0), ConfigError, "eps"),
    (dict(dim=4, eps=-1e-6), ConfigError, "eps"),
    (dict(dim=4, eps=float("nan")), ConfigError, "eps"),
    (dict(dim=4, eps=float("inf")), ConfigError, "eps"),
    (dict(dim=4, eps="small"), ConfigError, "eps"),
    (dict(dim=4, feature_map="dpfp", nu=0), ConfigError, "nu"),
    (dict(dim=4, feature_map="dpfp", nu=-2), ConfigError, "nu"),
    (dict(dim=4, feature_map="dpfp", nu=1.5), ConfigError, "nu"),
    (dict(dim=4, feature_map="dpfp", nu=True), ConfigError, "nu"),
    (dict(dim=4, feature_map="elu", nu=2), ConfigError, "nu"),
    (dict(dim=4, feature_map="favor", nb_features=0), ConfigError, "nb_features"),
    (dict(dim=4, feature_map="favor", nb_features=-5), ConfigError, "nb_features"),
    (dict(dim=4, feature_map="favor", nb_features=2.5), ConfigError, "nb_features"),
    (dict(dim=4, feature_map="elu", nb_features=64), ConfigError, "nb_features"),
    (dict(dim=4, feature_map="favor", seed=-1), ConfigError, "seed"),
    (dict(dim=4, feature_map="favor", seed="x"), ConfigError, "seed"),
    (dict(dim=4, chunk_size=0), ConfigError, "chunk_size"),
    (dict(dim=4, chunk_size=-64), ConfigError, "chunk_size"),
    (dict(dim=4, chunk_size=None), ConfigError, "chunk_size"),
]


@pytest.mark.parametrize("opts,err,name", BAD_OPTIONS, ids=[f"{n}-{i}" for i, (_, _, n) in enumerate(BAD_OPTIONS)])
def test_bad_options(opts, err, name):
    with pytest.raises(err, match=name):
        LinearAttention(**opts)
    if not any(isinstance(x, str) for x in opts.values()):  # the registry coerces strings (CLI flags) first
        with pytest.raises(err, match=name):
            registry.create("linear", **opts)


def test_unknown_feature_map_lists_the_choices():
    with pytest.raises(ConfigError, match="feature_map") as info:
        LinearAttention(4, feature_map="softmax")
    assert all(m in str(info.value) for m in ("elu", "relu", "dpfp", "favor")) and "softmax" in str(info.value)


def test_missing_dim_is_a_type_error():
    with pytest.raises(TypeError):
        LinearAttention()  # type: ignore[call-arg]


def _bad_forward_cases():
    q, k, v = inputs()
    lk_mask = np.ones(L, dtype=bool)
    return [
        ("q-heads", (np.zeros((L, 3, D), np.float32), k, v), {}, ShapeError, "q"),
        ("q-dim", (np.zeros((L, H, D + 1), np.float32), k, v), {}, ShapeError, "q"),
        ("q-2d", (np.zeros((L, H * D), np.float32), k, v), {}, ShapeError, "q"),
        ("k-dim", (q, np.zeros((L, H, D + 1), np.float32), v), {}, ShapeError, "k"),
        ("k-heads", (q, np.zeros((L, 1, D), np.float32), v), {}, ShapeError, "k"),
        ("v-length", (q, k, np.zeros((L + 1, H, D), np.float32)), {}, ShapeError, "v"),
        ("k-without-v", (q, k, None), {}, ShapeError, "key, value"),
        ("empty-keys", (q, k[:0], v[:0]), {}, ShapeError, "k"),
        (
            "batch-mismatch",
            (np.zeros((2, L, H, D), np.float32), np.zeros((3, L, H, D), np.float32), np.zeros((3, L, H, D), np.float32)),
            {},
            ShapeError,
            "batch",
        ),
        ("flat-length", (np.zeros(H * D + 1, np.float32), None, None), {}, ShapeError, "q"),
        ("q-int", (q.astype(np.int32), k, v), {}, DTypeError, "q"),
        ("k-bool", (q, k > 0, v), {}, DTypeError, "k"),
        ("v-complex", (q, k, v.astype(np.complex64)), {}, DTypeError, "v"),
        ("q-string", ("abc", k, v), {}, DTypeError, "q"),
        ("q-ragged", ([[1.0], [1.0, 2.0]], k, v), {}, ShapeError, "q"),
        ("q-nan", (np.where(q > 1, np.nan, q), k, v), {}, NonFiniteError, "q"),
        ("k-inf", (q, np.where(k > 1, np.inf, k), v), {}, NonFiniteError, "k"),
        ("v-nan", (q, k, np.full_like(v, np.nan)), {}, NonFiniteError, "v"),
        ("mixed-libraries", (torch.from_numpy(q), k, v), {}, DTypeError, "librar"),
        ("mask-causal", (q, k, v), {"mask": attnkit.create_mask("causal", L)}, ShapeError, "mask"),
        ("mask-block", (q, k, v), {"mask": attnkit.create_mask("block", L, positions=[3])}, ShapeError, "mask"),
        ("mask-general-4d", (q, k, v), {"mask": np.tril(np.ones((1, H, L, L), bool))}, ShapeError, "mask"),
        ("mask-wrong-length", (q, k, v), {"mask": np.ones(L + 2, bool)}, ShapeError, "mask"),
        ("mask-wrong-heads", (q, k, v), {"mask": np.ones((H + 1, 1, L), bool)}, ShapeError, "mask"),
        ("mask-scalar", (q, k, v), {"mask": np.array(True)}, ShapeError, "mask"),
        ("mask-int", (q, k, v), {"mask": lk_mask.astype(np.int64)}, DTypeError, "mask"),
        ("mask-nan", (q, k, v), {"mask": np.full(L, np.nan)}, NonFiniteError, "mask"),
        ("mask-plus-inf", (q, k, v), {"mask": np.full(L, np.inf)}, NonFiniteError, "mask"),
        ("mask-string", (q, k, v), {"mask": np.array(["a"] * L)}, DTypeError, "mask"),
        ("mask-torch-for-numpy", (q, k, v), {"mask": torch.ones(L, dtype=torch.bool)}, DTypeError, "mask"),
        ("mask-ragged", (q, k, v), {"mask": [[True], [True, False]]}, ShapeError, "mask"),
    ]


@pytest.mark.parametrize("case", _bad_forward_cases(), ids=lambda c: c[0])
def test_bad_forward_inputs(case):
    _, args, kwargs, err, name = case
    for fm in ("elu", "favor"):
        for causal in (False, True):
            attn = LinearAttention(D, H, feature_map=fm, causal=causal, seed=0)
            with pytest.raises(err, match=name):
                attn(*args, **kwargs)


def test_general_mask_error_says_what_to_do():
    q, k, v = inputs()
    with pytest.raises(ShapeError) as info:
        LinearAttention(D, H)(q, k, v, mask=attnkit.create_mask("causal", L))
    msg = str(info.value)
    assert msg.startswith("mask:") and "causal=True" in msg and "FlashAttention" in msg and "(6, 6)" in msg


def test_check_finite_off_lets_non_finite_through():
    q, k, v = inputs()
    q[0, 0, 0] = np.nan
    out = LinearAttention(D, H, check_finite=False)(q, k, v)
    assert np.isnan(out[0, 0]).any() and np.isfinite(out[1:]).all()


def test_disposed_object_raises_everywhere():
    q, k, v = inputs()
    attn = LinearAttention(D, H, feature_map="favor", seed=1)
    attn.dispose()
    for call in (
        lambda: attn(q, k, v),
        lambda: attn.forward(q),
        lambda: attn.forward_batch([q]),
        attn.memory_usage,
        lambda: attn.benchmark(8),
        attn.redraw_features,
        attn.parameters,
    ):
        with pytest.raises(DisposedError):
            call()


def test_redraw_needs_favor():
    with pytest.raises(ConfigError, match="feature_map"):
        LinearAttention(D, H).redraw_features()


def test_forward_batch_bad_lists():
    q, k, v = inputs()
    attn = LinearAttention(D, H)
    with pytest.raises(ShapeError, match="queries"):
        attn.forward_batch(q, k, v)
    with pytest.raises(ShapeError, match="key"):
        attn.forward_batch([q, q], [k, k, k], v)


def test_kernel_level_errors_name_the_argument():
    import array_api_compat.numpy as xnp

    from attnkit.kernels.linear import linear_attention

    x = np.ones((1, 2, 3))
    with pytest.raises(ConfigError, match="feature_map"):
        linear_attention(x, x, x, xp=xnp, feature_map="softmax")
    with pytest.raises(ConfigError, match="projection"):
        linear_attention(x, x, x, xp=xnp, feature_map="favor")
