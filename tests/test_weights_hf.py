"""Hugging Face GPT-2 and Llama/Mistral attention weights: attnkit's layer equals transformers' layer.

The oracle is transformers itself: modules built from a small config with random weights. The
attention module is called directly (float64, tight) and inside a one-layer model, where a forward
hook reads the attention's input and output (float32), so the model's own causal mask and rotary
embedding are what attnkit is compared with.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TOL32, assert_close
from test_cli_support import Runner, ok

transformers = pytest.importorskip("transformers")

import attnkit  # noqa: E402
from attnkit import ConfigError, MultiHeadAttention, RotaryEmbedding  # noqa: E402
from attnkit import io as aio  # noqa: E402
from attnkit.weights import (  # noqa: E402
    detect_layout,
    from_hf_gpt2,
    from_hf_llama,
    hf_gpt2_params,
    hf_llama_params,
    to_hf_gpt2,
    to_hf_llama,
)

TOL64_HF = 1e-10  # float64 end to end (transformers' sdpa path, our float64 cos/sin)


def _randomise(module: torch.nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.2)


def gpt2_config(**kw):
    cfg = transformers.GPT2Config(
        n_embd=32, n_head=4, n_layer=1, n_positions=64, vocab_size=50, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, **kw
    )
    cfg._attn_implementation = "sdpa"
    return cfg


def llama_config(family: str, **kw):
    cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig}[family]
    base = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, num_hidden_layers=1, vocab_size=50)
    base.update(kw)
    cfg = cls(**base)
    cfg._attn_implementation = "sdpa"
    return cfg


def hf_cos_sin(head_dim: int, theta: float, n: int, scaling: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """HF's rotate_half tables (cos, sin) of shape (1, n, head_dim), in float64."""
    inv = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    ang = (np.arange(n, dtype=np.float64) / scaling)[:, None] * inv[None, :]
    emb = np.concatenate([ang, ang], -1)
    return torch.from_numpy(np.cos(emb))[None], torch.from_numpy(np.sin(emb))[None]


# ------------------------------------------------------------------ GPT-2
@pytest.mark.parametrize("scale_kw", [{}, {"scale_attn_weights": False}, {"scale_attn_by_inverse_layer_idx": True}])
def test_gpt2_attention_module_float64(scale_kw):
    cfg = gpt2_config(**scale_kw)
    layer_idx = 2 if scale_kw.get("scale_attn_by_inverse_layer_idx") else 0
    attn = transformers.models.gpt2.modeling_gpt2.GPT2Attention(cfg, layer_idx=layer_idx).double().eval()
    _randomise(attn, 1)
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    with torch.no_grad():
        exp = attn(x)[0]
    ours = from_hf_gpt2(attn.state_dict(), config=cfg, layer_idx=layer_idx)  # float64 weights stay float64
    assert (ours.causal, ours.heads, ours.bias, ours.rope) == (True, 4, True, None)
    assert ours.parameters()["q_proj.weight"].dtype == np.float64
    assert_close(ours.forward(x), exp, TOL64_HF)
    if scale_kw:  # the scale is GPT-2's, not attnkit's default: without folding it the layer differs
        plain = MultiHeadAttention(32, 4, causal=True)
        plain.load_weights(attn.state_dict())
        assert float(np.max(np.abs(plain.forward(x).numpy() - exp.numpy()))) > 1e-3


def test_gpt2_one_layer_model_hook_and_heads_default():
    cfg = gpt2_config()
    cfg.n_embd, cfg.n_head = 128, 2  # E // 64 = 2 heads: the default when num_heads is not given
    model = transformers.GPT2Model(cfg).eval()
    _randomise(model, 2)
    seen = {}
    model.h[0].attn.register_forward_hook(lambda m, args, out: seen.update(x=args[0], y=out[0]))
    ids = torch.randint(0, 50, (2, 11))
    with torch.no_grad():
        model(ids)
    ours = from_hf_gpt2(model.state_dict())  # the prefix h.0.attn. is found
    assert ours.heads == 2
    assert_close(ours.forward(seen["x"]), seen["y"], TOL32)
    # and back: Conv1D layout, loadable into the HF module
    back = to_hf_gpt2(ours.parameters(), prefix="h.0.attn.")
    for k, v in back.items():
        np.testing.assert_array_equal(v, model.state_dict()[k].numpy())


# ------------------------------------------------------------------ Llama / Mistral
@pytest.mark.parametrize("family", ["llama", "mistral"])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_llama_attention_module_float64(family, kv_heads):
    cfg = llama_config(family, num_key_value_heads=kv_heads, rope_theta=5000.0)
    mod = transformers.models.llama.modeling_llama if family == "llama" else transformers.models.mistral.modeling_mistral
    attn = (mod.LlamaAttention if family == "llama" else mod.MistralAttention)(cfg, layer_idx=0).double().eval()
    _randomise(attn, 3)
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    with torch.no_grad():
        exp = attn(x, position_embeddings=hf_cos_sin(8, 5000.0, 10), attention_mask=None)[0]
    ours = from_hf_llama(attn.state_dict(), num_heads=4, rope_theta=5000.0)
    assert (ours.heads, ours.kv_heads, ours.bias, ours.causal, ours.rope.base, ours.rope.layout) == (4, kv_heads, False, True, 5000.0, "half")
    assert_close(ours.forward(x), exp, TOL64_HF)
    # HF's rotate_half is attnkit's layout="half"; the interleaved pairing would be another layer
    other = MultiHeadAttention(32, 4, kv_heads=kv_heads, bias=False, causal=True, rope=RotaryEmbedding(8, base=5000.0, layout="interleaved"))
    other.load_weights(attn.state_dict())
    assert float(np.max(np.abs(other.forward(x).numpy() - exp.numpy()))) > 1e-3
    # the same from the config (heads, kv heads, theta) and from head_dim alone
    assert_close(from_hf_llama(attn.state_dict(), config=cfg).forward(x), exp, TOL32)
    assert from_hf_llama(attn.state_dict(), head_dim=8, rope_theta=5000.0).kv_heads == kv_heads


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_llama_one_layer_model_hook_float32(family):
    cfg = llama_config(family, rope_theta=20000.0)
    model = (transformers.LlamaModel if family == "llama" else transformers.MistralModel)(cfg).eval()
    _randomise(model, 4)
    seen = {}

    def hook(m, args, kwargs, out):
        seen.update(x=kwargs.get("hidden_states", args[0] if args else None), y=out[0])

    model.layers[0].self_attn.register_forward_hook(hook, with_kwargs=True)
    with torch.no_grad():
        model(torch.randint(0, 50, (2, 13)))
    ours = from_hf_llama(model.state_dict(), config=cfg)  # prefix layers.0.self_attn. found; theta from the config
    assert (ours.kv_heads, ours.rope.base) == (2, 20000.0)
    assert_close(ours.forward(seen["x"]), seen["y"], TOL32)
    back = to_hf_llama(ours.parameters(), prefix="layers.0.self_attn.")
    assert set(back) == {k for k in model.state_dict() if ".self_attn." in k}
    for k, v in back.items():
        np.testing.assert_array_equal(v, model.state_dict()[k].numpy())


def test_llama_biases_linear_rope_scaling_and_errors():
    cfg = llama_config("llama", attention_bias=True, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    attn = transformers.models.llama.modeling_llama.LlamaAttention(cfg, layer_idx=0).double().eval()
    _randomise(attn, 5)
    x = torch.randn(1, 6, 32, dtype=torch.float64)
    with torch.no_grad():
        exp = attn(x, position_embeddings=hf_cos_sin(8, 10000.0, 6, scaling=2.0), attention_mask=None)[0]
    ours = from_hf_llama(attn.state_dict(), config=cfg)
    assert ours.bias and ours.rope.scaling == 2.0
    assert_close(ours.forward(x), exp, TOL32)
    # Qwen2-style: q/k/v biases without an o_proj bias -> a zero out_proj bias (exact)
    sd = {k: v for k, v in attn.state_dict().items() if k != "o_proj.bias"}
    assert np.all(hf_llama_params(sd)["out_proj.bias"] == 0)
    with pytest.raises(ConfigError, match="num_heads"):
        from_hf_llama(attn.state_dict())
    with pytest.raises(ConfigError, match="llama3"):
        from_hf_llama(attn.state_dict(), config={"num_attention_heads": 4, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})
    two = {f"layers.{i}.self_attn.{k}": v for i in (0, 1) for k, v in attn.state_dict().items()}
    with pytest.raises(ConfigError, match="prefix"):
        hf_llama_params(two)
    assert hf_llama_params(two, prefix="layers.1.self_attn.")["q_proj.weight"].shape == (32, 32)


def test_detect_layout_and_load_weights_accept_hf_layers():
    g = transformers.GPT2Model(gpt2_config()).state_dict()
    lm = transformers.LlamaModel(llama_config("llama")).state_dict()
    assert detect_layout(g) == "hf_gpt2" and detect_layout(lm) == "hf_llama"
    m = MultiHeadAttention(32, 4)
    m.load_weights(g)
    np.testing.assert_array_equal(m.parameters()["out_proj.weight"], g["h.0.attn.c_proj.weight"].numpy().T)
    gqa = MultiHeadAttention(32, 4, kv_heads=2, bias=False)
    gqa.load_weights(lm)
    np.testing.assert_array_equal(gqa.parameters()["k_proj.weight"], lm["layers.0.self_attn.k_proj.weight"].numpy())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_cli_convert_recognises_one_layer_files(tmp_path: Path, family: str):
    model = transformers.GPT2LMHeadModel(gpt2_config()) if family == "gpt2" else transformers.LlamaForCausalLM(llama_config("llama"))
    sd = {k: v.detach().contiguous().numpy() for k, v in model.state_dict().items()}
    aio.write_arrays(tmp_path / "model.safetensors", sd)
    run = Runner(tmp_path)
    s = json.loads(ok(run("convert", "model.safetensors", "attn.safetensors", "--json")).stdout)
    assert s["from"] == f"hf-{family}" and s["to"] == "attnkit"
    params = aio.read_arrays(tmp_path / "attn.safetensors")
    want = hf_gpt2_params(sd) if family == "gpt2" else hf_llama_params(sd)
    assert set(params) == set(want)
    for k in want:
        np.testing.assert_array_equal(params[k], want[k])
    # and back into the family's own names
    prefix = "transformer.h.0.attn." if family == "gpt2" else "model.layers.0.self_attn."
    ok(run("convert", "attn.safetensors", "back.safetensors", "--to", f"hf-{family}", "--prefix", prefix))
    back = aio.read_arrays(tmp_path / "back.safetensors")
    for k, v in back.items():
        np.testing.assert_array_equal(v, sd[k])


def test_loaded_llama_layer_runs_on_torch_with_autograd():
    cfg = llama_config("llama")
    attn = transformers.models.llama.modeling_llama.LlamaAttention(cfg, layer_idx=0).eval()
    ours = from_hf_llama(attn.state_dict(), config=cfg)
    x = torch.randn(1, 5, 32, requires_grad=True)
    y = ours.forward(x)
    assert isinstance(y, torch.Tensor) and y.shape == (1, 5, 32)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # the same layer through functional_call with torch parameters: gradients reach the projections
    params = {k: torch.tensor(v, requires_grad=True) for k, v in ours.parameters().items()}
    attnkit.functional_call(ours, params, x.detach()).sum().backward()
    assert params["k_proj.weight"].grad is not None and float(params["k_proj.weight"].grad.abs().sum()) > 0
