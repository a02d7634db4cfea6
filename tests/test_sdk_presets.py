"""Presets: each one's documented meaning reaches the built object; from_model_name."""

from __future__ import annotations

import numpy as np
import pytest

from attnkit import ConfigError
from attnkit.sdk import AttentionPreset, AttentionType, from_model_name

W = 768


def built(preset: str, width: int = W):
    return from_model_name(preset, width).build()


def test_every_preset_builds_its_mechanism() -> None:
    for p in AttentionPreset:
        mech = p.builder(W).build()
        assert mech.name == p.attention_type.value, p
        assert p.description and p.value in str(p.builder(W).explain())


def test_bert() -> None:
    m = built("bert")
    assert (type(m).__name__, m.model_dim, m.heads, m.dropout, m.causal) == ("MultiHeadAttention", 768, 12, 0.1, False)


@pytest.mark.parametrize("name", ["gpt", "gpt2"])
def test_gpt(name: str) -> None:
    m = built(name)
    assert (type(m).__name__, m.model_dim, m.heads, m.dropout, m.causal) == ("MultiHeadAttention", 768, 12, 0.1, True)
    # causal for real: the first token's output ignores the second token
    x = np.random.default_rng(0).standard_normal((2, W)).astype(np.float32)
    y = x.copy()
    y[1] += 1.0
    np.testing.assert_allclose(m.forward(x)[0], m.forward(y)[0], rtol=1e-5, atol=1e-6)


def test_longformer() -> None:
    m = built("longformer")
    assert (type(m).__name__, m.dim, m.heads, m.window, m.global_tokens) == ("LocalGlobalAttention", 64, 12, 512, 1)


def test_performer() -> None:
    m = built("performer")
    assert (type(m).__name__, m.dim, m.heads, m.feature_map) == ("LinearAttention", 96, 8, "favor")


@pytest.mark.parametrize(("width", "heads", "head_dim"), [(768, 12, 64), (128, 2, 64), (100, 1, 100)])
def test_flash_optimized(width: int, heads: int, head_dim: int) -> None:
    m = built("flash_optimized", width)
    assert (type(m).__name__, m.heads, m.dim, m.block_size, m.causal) == ("FlashAttention", heads, head_dim, 256, False)


def test_vit() -> None:
    m = built("vit")
    assert (type(m).__name__, m.model_dim, m.heads, m.dropout, m.causal) == ("MultiHeadAttention", 768, 12, 0.0, False)


def test_t5_has_no_projection_biases() -> None:
    m = built("t5")
    assert (type(m).__name__, m.model_dim, m.heads, m.dropout, m.bias) == ("MultiHeadAttention", 768, 12, 0.1, False)
    assert not any(k.endswith("bias") for k in m.parameters())


def test_hyperbolic_tree() -> None:
    m = built("hyperbolic_tree", 16)
    assert (type(m).__name__, m.dim, m.curvature) == ("HyperbolicAttention", 16, 1.0)


@pytest.mark.parametrize(
    ("model", "preset"),
    [
        ("bert-base-uncased", "bert"),
        ("roberta-large", "bert"),
        ("distilbert-base-cased", "bert"),
        ("gpt2-medium", "gpt2"),
        ("openai-gpt", "gpt"),
        ("GPT", "gpt"),
        ("google/vit-base-patch16-224", "vit"),
        ("t5-small", "t5"),
        ("google/flan-t5-base", "t5"),
        ("allenai/longformer-base-4096", "longformer"),
        ("Flash-Optimized", "flash_optimized"),
        ("hyperbolic-tree", "hyperbolic_tree"),
        ("performer", "performer"),
    ],
)
def test_from_model_name_recognises_model_identifiers(model: str, preset: str) -> None:
    b = from_model_name(model, W)
    assert f"preset {preset!r}" in b.explain()


@pytest.mark.parametrize("bad", ["falcon-7b", "", "   ", None, 3])
def test_unknown_model_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match="name"):
        from_model_name(bad, W)


def test_width_must_split_into_heads() -> None:
    with pytest.raises(ConfigError, match="dim: the model width 100 must be a multiple of heads = 8"):
        from_model_name("performer", 100)
    with pytest.raises(ConfigError, match="dim"):
        from_model_name("bert", 0)


def test_a_preset_builder_can_still_be_changed() -> None:
    m = from_model_name("bert", 64).heads(4).dropout(0.0).build()
    assert (m.model_dim, m.heads, m.dropout) == (64, 4, 0.0)
    assert AttentionPreset("gpt2").attention_type is AttentionType.MULTI_HEAD
    assert AttentionPreset.BERT.settings == {"heads": 12, "dropout": 0.1, "causal": False}


@pytest.mark.parametrize(
    ("model", "width", "heads"),
    [
        ("bert-large-uncased", 1024, 16),
        ("gpt2-medium", 1024, 16),
        ("gpt2-large", 1280, 20),
        ("gpt2-xl", 1600, 25),
        ("google/vit-huge-patch14-224-in21k", 1280, 16),
        ("t5-small", 512, 8),
        ("t5-large", 1024, 16),
        ("gpt2", 768, 12),
        ("bert-base-uncased", 768, 12),
    ],
)
def test_size_words_set_the_published_heads(model: str, width: int, heads: int) -> None:
    m = from_model_name(model, width).build()
    assert (m.model_dim, m.heads) == (width, heads)


def test_longformer_large_splits_the_width_over_16_heads() -> None:
    m = from_model_name("allenai/longformer-large-4096", 1024).build()
    assert (m.heads, m.dim) == (16, 64)
    assert AttentionPreset.LONGFORMER.builder(768, heads=6).build().dim == 128


@pytest.mark.parametrize("name,theta", [("llama", 500000.0), ("mistral", 1000000.0)])
def test_llama_and_mistral_presets(name: str, theta: float) -> None:
    m = built(name, 4096)
    assert (type(m).__name__, m.heads, m.kv_heads, m.bias, m.causal, m.dropout) == ("MultiHeadAttention", 32, 8, False, True, 0.0)
    assert (m.rope.dim, m.rope.base, m.rope.layout) == (128, theta, "half")
    assert AttentionPreset(name).builder(3072, heads=24).build().kv_heads == 8  # Llama 3.2 3B
    assert AttentionPreset(name).builder(4096, heads=16).build().rope.dim == 256  # RoPE follows the head width
    assert AttentionPreset(name).builder(640, heads=10).build().kv_heads == 10  # 8 does not divide 10: plain multi-head


@pytest.mark.parametrize("model,heads", [("meta-llama/Llama-3.1-8B", 32), ("meta-llama/Llama-3.1-70B", 64), ("mistralai/Mistral-7B-v0.3", 32)])
def test_llama_model_identifiers(model: str, heads: int) -> None:
    m = from_model_name(model, 8192).build()
    assert (m.heads, m.kv_heads, m.causal) == (heads, 8, True)


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_llama_preset_computes_what_transformers_computes(family: str) -> None:
    """The preset's layer, given a transformers layer's weights, gives that layer's output."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    cls = {"llama": (transformers.LlamaConfig, "llama", "LlamaAttention"), "mistral": (transformers.MistralConfig, "mistral", "MistralAttention")}[
        family
    ]
    theta = 500000.0 if family == "llama" else 1000000.0
    cfg = cls[0](hidden_size=256, num_attention_heads=32, num_key_value_heads=8, rope_theta=theta, attention_dropout=0.0)
    cfg._attn_implementation = "sdpa"
    mod = getattr(transformers.models, cls[1])
    attn = getattr(getattr(mod, f"modeling_{cls[1]}"), cls[2])(cfg, layer_idx=0).double().eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    x = torch.randn(2, 7, 256, dtype=torch.float64)
    inv = theta ** (-np.arange(0, 8, 2) / 8)
    ang = np.arange(7)[:, None] * inv[None, :]
    emb = np.concatenate([ang, ang], -1)
    with torch.no_grad():
        exp = attn(x, position_embeddings=(torch.from_numpy(np.cos(emb))[None], torch.from_numpy(np.sin(emb))[None]), attention_mask=None)[0]
    m = built(family, 256)
    m.load_weights(attn.state_dict())
    got = m.forward(x.numpy())
    np.testing.assert_allclose(got, exp.numpy(), rtol=1e-5, atol=1e-5)  # weights are stored as float32
