"""attnkit.weights: safetensors/npz/torch files, layout detection, torch MHA and HF BERT converters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TOL64, assert_close, randn, to_torch

from attnkit import ConfigError, MultiHeadAttention
from attnkit.weights import (
    detect_layout,
    from_hf_bert,
    from_torch_mha,
    load_state,
    save_state,
    to_attnkit,
    to_hf_bert,
    to_torch_mha,
)


def params(e=8, kdim=None, vdim=None, bias=True, seed=0):
    return MultiHeadAttention(e, heads=2, kdim=kdim, vdim=vdim, bias=bias, seed=seed).parameters()


def assert_same_dict(a, b):
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k])


def test_save_state_load_state_bytes_keep_dtypes():
    state = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, dtype=np.float64), "c": np.arange(3, dtype=np.int64)}
    blob = save_state(state)
    assert isinstance(blob, bytes)
    assert_same_dict(load_state(blob), state)
    assert_same_dict(load_state(bytearray(blob)), state)
    # non-contiguous and torch inputs are accepted
    assert_same_dict(load_state(save_state({"t": torch.arange(4.0)[::2]})), {"t": np.array([0.0, 2.0], dtype=np.float32)})


def test_load_state_files(tmp_path):
    state = params()
    (tmp_path / "w.safetensors").write_bytes(save_state(state))
    np.savez(tmp_path / "w.npz", **state)
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.npz", "w.pt"):
        assert_same_dict(load_state(tmp_path / name), state)
        assert_same_dict(load_state(str(tmp_path / name)), state)


def test_load_state_rejects_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ConfigError, match="weights"):
        load_state(tmp_path / "evil.pt")


def test_detect_layout():
    p = params()
    assert detect_layout(p) == "attnkit"
    assert detect_layout(to_torch_mha(p)) == "torch_mha"
    assert detect_layout(to_torch_mha(p, packed=False)) == "torch_mha"
    assert detect_layout(to_hf_bert(p, prefix="encoder.layer.0.")) == "hf_bert"


@pytest.mark.parametrize("bias", [True, False])
def test_torch_mha_round_trips(bias):
    p = params(bias=bias)
    packed = to_torch_mha(p)
    assert packed["in_proj_weight"].shape == (24, 8)
    assert ("in_proj_bias" in packed) == bias
    assert_same_dict(from_torch_mha(packed), p)
    assert_same_dict(from_torch_mha(to_torch_mha(p, packed=False)), p)
    assert_same_dict(to_attnkit(packed), p)


def test_torch_mha_kdim_vdim_round_trip():
    p = params(kdim=3, vdim=5)
    sd = to_torch_mha(p)
    assert "in_proj_weight" not in sd and sd["k_proj_weight"].shape == (8, 3) and sd["v_proj_weight"].shape == (8, 5)
    m = torch.nn.MultiheadAttention(8, 2, kdim=3, vdim=5, batch_first=True)
    assert set(m.state_dict()) == set(sd)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    assert_same_dict(from_torch_mha(m.state_dict()), p)
    with pytest.raises(ConfigError, match="packed"):
        to_torch_mha(p, packed=True)


def test_torch_state_dict_keys_match_real_module():
    for bias in (True, False):
        m = torch.nn.MultiheadAttention(8, 2, bias=bias, batch_first=True)
        assert set(to_torch_mha(params(bias=bias))) == set(m.state_dict())


def test_add_bias_kv_round_trips_and_needs_the_option():
    m = torch.nn.MultiheadAttention(8, 2, add_bias_kv=True)
    ours = from_torch_mha(m.state_dict())
    assert ours["bias_k"].shape == ours["bias_v"].shape == (8,)
    back = to_torch_mha(ours)
    assert set(back) == set(m.state_dict())
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(back[k], v.numpy())
    with pytest.raises(ConfigError, match="add_bias_kv=True"):
        MultiHeadAttention(8, 2).load_weights(m.state_dict())
    with pytest.raises(ConfigError, match="bias_v"):
        from_torch_mha({k: v for k, v in m.state_dict().items() if k != "bias_v"})


@pytest.mark.parametrize("prefix", ["", "bert.encoder.layer.3."])
def test_hf_bert_round_trip_with_prefix(prefix):
    p = params(seed=4)
    sd = to_hf_bert(p, prefix=prefix)
    assert f"{prefix}attention.self.query.weight" in sd and f"{prefix}attention.output.dense.bias" in sd
    assert_same_dict(from_hf_bert(sd, prefix=prefix), p)
    assert_same_dict(from_hf_bert(sd), p)  # one layer: the prefix is found
    assert_same_dict(to_attnkit(sd), p)


def test_hf_bert_several_layers_need_prefix():
    sd = {**to_hf_bert(params(seed=1), "bert.encoder.layer.0."), **to_hf_bert(params(seed=2), "bert.encoder.layer.1.")}
    sd["bert.encoder.layer.1.attention.output.LayerNorm.weight"] = np.ones(8, dtype=np.float32)  # ignored
    with pytest.raises(ConfigError, match="prefix"):
        from_hf_bert(sd)
    assert_same_dict(from_hf_bert(sd, prefix="bert.encoder.layer.1."), params(seed=2))
    ours = MultiHeadAttention(8, heads=2)
    ours.load_weights(sd, prefix="bert.encoder.layer.0.")
    assert_same_dict(ours.parameters(), params(seed=1))


def test_hf_bert_semantics_match_a_bert_style_torch_layer(rng):
    """BERT self-attention (without its LayerNorm/residual) written out with torch Linear layers."""
    e, h = 12, 3
    torch.manual_seed(0)
    query, key, value, dense = (torch.nn.Linear(e, e).double() for _ in range(4))
    sd = {}
    for name, mod in (
        ("attention.self.query", query),
        ("attention.self.key", key),
        ("attention.self.value", value),
        ("attention.output.dense", dense),
    ):
        for part in ("weight", "bias"):
            sd[f"encoder.layer.5.{name}.{part}"] = getattr(mod, part).detach()
    x = to_torch(randn(rng, 2, 6, e))

    def heads(t):
        return t.view(2, 6, h, e // h).transpose(1, 2)

    with torch.no_grad():
        scores = heads(query(x)) @ heads(key(x)).transpose(-1, -2) / math.sqrt(e // h)
        ctx = (scores.softmax(-1) @ heads(value(x))).transpose(1, 2).reshape(2, 6, e)
        exp = dense(ctx)
    ours = MultiHeadAttention(e, heads=h)
    ours.load_weights(sd, prefix="encoder.layer.5.")
    assert_close(ours.forward(x), exp, TOL64)


def test_to_attnkit_drops_foreign_tensors():
    p = params()
    assert_same_dict(to_attnkit({**p, "extra.thing": np.zeros(2)}), p)
