"""Weights of the projection layers: save, load and convert.

attnkit's layout (safetensors, like ``torch.nn.Linear``: ``y = x W^T + b``, ``W`` is (out, in)):

==================  ===============  =====================================
key                 shape            meaning
==================  ===============  =====================================
``q_proj.weight``   (E, E)           W_q
``k_proj.weight``   (E, kdim)        W_k
``v_proj.weight``   (E, vdim)        W_v
``out_proj.weight`` (E, E)           W_o
``*.bias``          (E,)             biases (absent when ``bias=False``)
``bias_k``          (E,)             torch's ``add_bias_kv`` key bias (torch: ``(1, 1, E)``)
``bias_v``          (E,)             torch's ``add_bias_kv`` value bias
==================  ===============  =====================================

With grouped-query attention (``kv_heads < heads``), ``k_proj``/``v_proj`` (and ``bias_k``/``bias_v``)
have ``kv_heads * head_dim`` rows instead of ``E``.

Graph attention (:class:`~attnkit.EdgeFeaturedAttention`) keeps PyTorch Geometric's own names
(``lin.weight`` or ``lin_src.weight``/``lin_dst.weight`` for GAT, ``lin_l.*``/``lin_r.*`` for GATv2,
``lin_edge.weight``, ``res.weight``, ``bias``); only the attention vectors differ in shape: attnkit's
``att_src``/``att_dst``/``att_edge``/``att`` are ``(H, C)`` where PyG's are ``(1, H, C)``.
:func:`from_pyg_gat` and :func:`to_pyg_gat` convert ``GATConv``/``GATv2Conv`` state dicts both ways.

Converters read ``torch.nn.MultiheadAttention`` state dicts (packed ``in_proj_weight`` or the
``q_proj_weight``/``k_proj_weight``/``v_proj_weight`` form used with kdim/vdim), Hugging Face
BERT self-attention state dicts (``...attention.self.query.weight`` etc. and
``...attention.output.dense``), and write both back.

Hugging Face decoder layers (:func:`from_hf_gpt2`, :func:`from_hf_llama` return a ready
:class:`~attnkit.MultiHeadAttention`; :func:`hf_gpt2_params`, :func:`hf_llama_params` the weights alone):

* GPT-2 (Radford et al. 2019): ``...attn.c_attn`` / ``...attn.c_proj`` are ``Conv1D`` layers, ``y = x W + b``
  with ``W`` of shape (in, out), the transpose of ``torch.nn.Linear``'s; ``c_attn`` packs W_q, W_k, W_v
  along its output axis. The layer is causal with scale ``1/sqrt(head_dim)``.
* Llama and Mistral (Touvron et al. 2023; Jiang et al. 2023): ``...self_attn.{q,k,v,o}_proj``, ``nn.Linear``
  without biases; ``k_proj``/``v_proj`` have ``num_key_value_heads * head_dim`` rows (grouped-query
  attention), and queries and keys are rotated by RoPE with base ``rope_theta`` in the ``rotate_half``
  pairing (feature ``i`` with ``i + head_dim/2``), which is :class:`~attnkit.RotaryEmbedding`'s
  ``layout="half"``. Head counts are not in the weights: pass ``num_heads`` (or ``head_dim``) or the
  model's ``config``; the key/value heads are then read from the shapes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._array import to_numpy
from .errors import ConfigError, ShapeError

__all__ = [
    "PROJECTIONS",
    "load_state",
    "save_state",
    "detect_layout",
    "check_params",
    "to_attnkit",
    "from_torch_mha",
    "to_torch_mha",
    "from_hf_bert",
    "to_hf_bert",
    "hf_gpt2_params",
    "from_hf_gpt2",
    "to_hf_gpt2",
    "hf_llama_params",
    "from_hf_llama",
    "to_hf_llama",
    "GAT_ATTENTION",
    "is_pyg_gat",
    "from_pyg_gat",
    "to_pyg_gat",
]

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")
_BERT = {"q_proj": "attention.self.query", "k_proj": "attention.self.key", "v_proj": "attention.self.value", "out_proj": "attention.output.dense"}


def load_state(source: Any) -> dict[str, np.ndarray]:
    """Read a flat dict of NumPy arrays from safetensors bytes, a path or a dict of arrays.

    Paths: ``.safetensors`` (BF16 and FP8 tensors become float32); ``.npz``; ``.pt``/``.pth``/``.bin``
    (a torch file, read with ``torch.load(weights_only=True)``, so no code in it runs). Every failure is
    an :class:`~attnkit.errors.AttentionError` naming ``weights``.
    """
    from . import io as aio

    if isinstance(source, Mapping):
        out = {}
        for k, v in source.items():
            try:
                arr = to_numpy(v)
            except Exception as exc:  # noqa: BLE001 - any value that is not an array
                raise ConfigError(f"weights[{str(k)[:60]!r}]: expected an array, got {type(v).__name__} ({str(exc)[:80]})") from None
            if arr.dtype.hasobject or arr.dtype.kind not in "biuf":
                raise ConfigError(f"weights[{str(k)[:60]!r}]: expected a numeric array, got dtype {arr.dtype}")
            out[str(k)] = arr
        return out
    if isinstance(source, (bytes, bytearray, memoryview)):
        return aio.loads(bytes(source), "safetensors", name="weights", where="the safetensors buffer")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"weights: no such file {str(path)!r}")
        suffix = path.suffix.lower()
        if suffix in (".safetensors", ".npz"):
            return aio.read_arrays(path, suffix[1:], name="weights")
        if suffix in (".pt", ".pth", ".bin"):
            return _torch_load(path, suffix)
        raise ConfigError(f"weights: unsupported file type {suffix!r}; expected .safetensors, .npz, .pt, .pth or .bin")
    raise ConfigError(f"weights: expected safetensors bytes, a path or a dict of arrays, got {type(source).__name__}")


def _torch_load(path: Path, suffix: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as exc:
        raise ConfigError(f"weights: reading {suffix} files needs torch (pip install 'attnkit[torch]')") from exc
    import pickle

    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's message advises weights_only=False, which would run the file's code: not ours to repeat
        raise ConfigError(
            f"weights: {str(path)!r} holds Python objects besides tensors, which attnkit does not unpickle (it loads torch "
            "files with weights_only=True so that no code in them runs); save the state dict alone "
            "(torch.save(module.state_dict(), path)) or convert it to .safetensors"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file, reported as such
        raise ConfigError(f"weights: cannot read {str(path)!r} as a torch file ({type(exc).__name__}: {str(exc)[:160]})") from None
    if not isinstance(sd, Mapping):
        raise ConfigError(f"weights: {str(path)!r} holds a {type(sd).__name__}, expected a state dict")
    out = {}
    for k, v in sd.items():
        if isinstance(v, torch.Tensor):
            if v.is_sparse or v.layout != torch.strided:
                v = v.to_dense()
            if v.dtype in (torch.bfloat16, torch.float16) or str(v.dtype).startswith("torch.float8"):
                v = v.float()
            out[str(k)] = v.detach().cpu().numpy()
    return out


def save_state(params: Mapping[str, Any]) -> bytes:
    """Serialise a dict of arrays to safetensors bytes (contiguous copies, dtypes kept)."""
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(to_numpy(v)) for k, v in params.items()})


def check_params(params: Mapping[str, Any], where: str = "weights") -> dict[str, np.ndarray]:
    """Check attnkit-layout projection weights: every weight 2-D, q/out ``(E, E)``, k ``(E, kdim)``,
    v ``(E, vdim)``, each bias ``(E,)``; missing weights and stray shapes raise ``ShapeError``/``ConfigError``."""
    p = {k: to_numpy(v) for k, v in params.items()}
    for name in PROJECTIONS:
        if f"{name}.weight" not in p:
            raise ConfigError(f"{where}: {name}.weight is missing (found: {', '.join(sorted(p)[:8]) or 'nothing'})")
    for name in PROJECTIONS:
        w = p[f"{name}.weight"]
        if w.ndim != 2:
            raise ShapeError(f"{where}: {name}.weight expected a 2-D (out, in) matrix, got shape {w.shape}")
        if w.dtype.kind != "f":
            raise ConfigError(f"{where}: {name}.weight expected float values, got dtype {w.dtype}")
    e = p["q_proj.weight"].shape[0]
    expect = {"q_proj.weight": (e, e), "out_proj.weight": (e, e)}
    for name, want in expect.items():
        if p[name].shape != want:
            raise ShapeError(f"{where}: {name} expected shape {want} (E = {e} from q_proj.weight), got {p[name].shape}")
    rows = {}
    for name in ("k_proj.weight", "v_proj.weight"):
        r = p[name].shape[0]
        if r < 1 or e % r:  # E itself, or kv_heads * head_dim for grouped-query attention
            raise ShapeError(f"{where}: {name} expected E = {e} rows or a divisor of it (grouped-query), got shape {p[name].shape}")
        rows[name.split(".")[0]] = r
    for name in PROJECTIONS:
        b = p.get(f"{name}.bias")
        want_b = (rows.get(name, e),)
        if b is not None and b.shape != want_b:
            raise ShapeError(f"{where}: {name}.bias expected shape {want_b}, got {b.shape}")
    if ("bias_k" in p) != ("bias_v" in p):
        raise ConfigError(
            f"{where}: bias_k and bias_v come together (torch's add_bias_kv=True); found only {'bias_k' if 'bias_k' in p else 'bias_v'}"
        )
    for name, proj in (("bias_k", "k_proj"), ("bias_v", "v_proj")):
        if name in p:
            b = p[name]
            if b.ndim == 3 and b.shape[:2] == (1, 1):  # torch's (1, 1, E)
                b = p[name] = b.reshape(-1)
            if b.shape != (rows[proj],):
                raise ShapeError(f"{where}: {name} expected shape ({rows[proj]},) or torch's (1, 1, {rows[proj]}), got {b.shape}")
    return p


_EXTRA = ("bias_k", "bias_v")


def detect_layout(state: Mapping[str, Any]) -> str:
    """``"attnkit"``, ``"torch_mha"``, ``"hf_bert"``, ``"hf_gpt2"`` or ``"hf_llama"`` for a state dict, or ``ConfigError``.

    GPT-2 is recognised by ``...c_attn.weight`` beside ``...c_proj.weight``; Llama/Mistral by
    ``...q_proj.weight`` beside ``...o_proj.weight`` (a whole one-layer model file is recognised too:
    the other tensors are not attention and are left out by the converters)."""
    keys = set(state)
    if "q_proj.weight" in keys and "out_proj.weight" in keys:
        return "attnkit"
    if ("in_proj_weight" in keys or "q_proj_weight" in keys) and "out_proj.weight" in keys:
        return "torch_mha"
    if any(k.endswith("attention.self.query.weight") for k in keys):
        return "hf_bert"
    if _prefixes(keys, _GPT2["c_attn"] + ".weight", _GPT2["c_proj"] + ".weight"):
        return "hf_gpt2"
    if _prefixes(keys, _LLAMA["q_proj"] + ".weight", _LLAMA["out_proj"] + ".weight"):
        return "hf_llama"
    sample = ", ".join(sorted(keys)[:6])
    raise ConfigError(
        f"weights: unrecognised layout (keys: {sample}); expected attnkit, torch MultiheadAttention, HF BERT, GPT-2 or Llama/Mistral attention"
    )


def to_attnkit(state: Mapping[str, Any], prefix: str | None = None) -> dict[str, np.ndarray]:
    """Any supported layout -> attnkit's (``prefix`` picks a layer of a HF state dict)."""
    state = load_state(state)
    layout = detect_layout(state)
    if layout == "attnkit":
        return check_params({k: v for k, v in state.items() if k.split(".")[0] in PROJECTIONS or k in _EXTRA})
    if layout == "torch_mha":
        return from_torch_mha(state)
    if layout == "hf_gpt2":
        return hf_gpt2_params(state, prefix=prefix)
    if layout == "hf_llama":
        return hf_llama_params(state, prefix=prefix)
    return from_hf_bert(state, prefix=prefix)


def from_torch_mha(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``torch.nn.MultiheadAttention.state_dict()`` -> attnkit layout (packed or kdim/vdim form; ``bias_k``
    and ``bias_v`` of ``add_bias_kv=True`` become vectors of length E)."""
    sd = {k: to_numpy(v) for k, v in state.items()}
    out: dict[str, np.ndarray] = {}
    for name in _EXTRA:
        if name in sd:
            out[name] = sd[name]
    if "in_proj_weight" in sd:
        w = sd["in_proj_weight"]
        if w.ndim != 2 or w.shape[0] % 3 or w.shape[0] != 3 * w.shape[1]:
            raise ShapeError(f"in_proj_weight: expected shape (3*E, E), got {w.shape}")
        out["q_proj.weight"], out["k_proj.weight"], out["v_proj.weight"] = np.split(w, 3, axis=0)
    else:
        for p in ("q", "k", "v"):
            key = f"{p}_proj_weight"
            if key not in sd:
                raise ConfigError(f"weights: {key} is missing from the torch state dict")
            out[f"{p}_proj.weight"] = sd[key]
    if "in_proj_bias" in sd:
        b = sd["in_proj_bias"]
        e = out["q_proj.weight"].shape[0] if out["q_proj.weight"].ndim else -1
        if b.shape != (3 * e,):
            raise ShapeError(f"in_proj_bias: expected shape ({3 * e},) (3*E), got {b.shape}")
        out["q_proj.bias"], out["k_proj.bias"], out["v_proj.bias"] = np.split(b, 3)
    if "out_proj.weight" not in sd:
        raise ConfigError(f"weights: out_proj.weight is missing from the torch state dict (found: {', '.join(sorted(sd)[:8])})")
    out["out_proj.weight"] = sd["out_proj.weight"]
    if "out_proj.bias" in sd:
        out["out_proj.bias"] = sd["out_proj.bias"]
    return check_params(out)


def to_torch_mha(params: Mapping[str, Any], packed: bool | None = None) -> dict[str, np.ndarray]:
    """attnkit layout -> ``torch.nn.MultiheadAttention`` state dict.

    ``packed=None`` packs ``in_proj_weight`` when q/k/v weights share a shape (kdim == vdim == E),
    which is what torch itself does; ``packed=False`` writes the separate form. ``bias_k``/``bias_v``
    are written in torch's ``(1, 1, E)`` shape. Grouped-query weights (``kv_heads < heads``) have no
    torch ``MultiheadAttention`` form.
    """
    p = check_params(params)
    if p["k_proj.weight"].shape[0] != p["q_proj.weight"].shape[0]:
        raise ConfigError(
            f"weights: k_proj has {p['k_proj.weight'].shape[0]} rows for E = {p['q_proj.weight'].shape[0]} (grouped-query "
            "attention), which torch.nn.MultiheadAttention cannot hold"
        )
    same = p["q_proj.weight"].shape == p["k_proj.weight"].shape == p["v_proj.weight"].shape
    if packed and not same:
        raise ConfigError("packed: q/k/v weights differ in shape (kdim/vdim != model_dim); use packed=False")
    packed = same if packed is None else packed
    out: dict[str, np.ndarray] = {}
    if packed:
        out["in_proj_weight"] = np.concatenate([p["q_proj.weight"], p["k_proj.weight"], p["v_proj.weight"]])
    else:
        for x in ("q", "k", "v"):
            out[f"{x}_proj_weight"] = p[f"{x}_proj.weight"]
    if "q_proj.bias" in p:
        out["in_proj_bias"] = np.concatenate([p["q_proj.bias"], p["k_proj.bias"], p["v_proj.bias"]])
    out["out_proj.weight"] = p["out_proj.weight"]
    if "out_proj.bias" in p:
        out["out_proj.bias"] = p["out_proj.bias"]
    for name in _EXTRA:
        if name in p:
            out[name] = p[name].reshape(1, 1, -1)
    return out


def _bert_prefix(keys: set[str], prefix: str | None) -> str:
    if prefix is not None:
        return prefix
    found = sorted(k[: -len("attention.self.query.weight")] for k in keys if k.endswith("attention.self.query.weight"))
    if len(found) != 1:
        raise ConfigError(f"prefix: the state dict holds {len(found)} BERT attention layers ({', '.join(found[:4])}); pass prefix= to pick one")
    return found[0]


def from_hf_bert(state: Mapping[str, Any], prefix: str | None = None) -> dict[str, np.ndarray]:
    """Hugging Face BERT self-attention weights -> attnkit layout.

    ``prefix`` picks the layer (e.g. ``"bert.encoder.layer.0."``); it is found automatically when the
    state dict holds exactly one layer. The output LayerNorm is not part of attention and is ignored.
    """
    sd = {k: to_numpy(v) for k, v in state.items()}
    pre = _bert_prefix(set(sd), prefix)
    out: dict[str, np.ndarray] = {}
    for ours, theirs in _BERT.items():
        for part in ("weight", "bias"):
            key = f"{pre}{theirs}.{part}"
            if key in sd:
                out[f"{ours}.{part}"] = sd[key]
            elif part == "weight":
                raise ConfigError(f"weights: {key} is missing from the BERT state dict")
    return check_params(out)


def to_hf_bert(params: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """attnkit layout -> Hugging Face BERT self-attention keys under ``prefix``."""
    params = check_params(params)
    out: dict[str, np.ndarray] = {}
    for ours, theirs in _BERT.items():
        for part in ("weight", "bias"):
            key = f"{ours}.{part}"
            if key in params:
                out[f"{prefix}{theirs}.{part}"] = to_numpy(params[key])
    return out


# ------------------------------------------------------------------ Hugging Face decoder layers
_GPT2 = {"c_attn": "c_attn", "c_proj": "c_proj"}
_LLAMA = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "out_proj": "o_proj"}


def _prefixes(keys: set[str], first: str, second: str) -> list[str]:
    """Every ``p`` such that ``p + first`` and ``p + second`` are keys (``p`` empty or ending in ``.``)."""
    found = []
    for k in keys:
        if k.endswith(first):
            p = k[: -len(first)]
            if (p == "" or p.endswith(".")) and p + second in keys:
                found.append(p)
    return sorted(found)


def _layer_prefix(keys: set[str], prefix: str | None, first: str, second: str, family: str) -> str:
    if prefix is not None:
        if prefix + first not in keys:
            raise ConfigError(f"prefix: no {prefix + first!r} in the {family} state dict (keys: {', '.join(sorted(keys)[:6])})")
        return prefix
    found = _prefixes(keys, first, second)
    if len(found) != 1:
        where = f" ({', '.join(repr(f) for f in found[:4])})" if found else f" (keys: {', '.join(sorted(keys)[:6])})"
        raise ConfigError(f"prefix: the state dict holds {len(found)} {family} attention layers{where}; pass prefix= to pick one")
    return found[0]


def hf_gpt2_params(state: Mapping[str, Any], prefix: str | None = None) -> dict[str, np.ndarray]:
    """Hugging Face GPT-2 attention weights -> attnkit layout.

    ``c_attn.weight`` (E, 3E) and ``c_attn.bias`` (3E) are ``Conv1D``'s (``y = x W + b``): attnkit's
    ``q/k/v_proj.weight`` are the transposed thirds, ``out_proj.weight`` is ``c_proj.weight`` transposed.
    ``prefix`` is what precedes ``c_attn.weight`` (``"transformer.h.0.attn."`` in ``GPT2LMHeadModel``,
    ``"h.0.attn."`` in ``GPT2Model``, ``""`` for a ``GPT2Attention``); found automatically when the state
    dict holds one layer. Other tensors (layer norms, MLP, embeddings, the causal-mask buffer) are ignored.
    """
    sd = {k: to_numpy(v) for k, v in load_state(state).items()}
    pre = _layer_prefix(set(sd), prefix, "c_attn.weight", "c_proj.weight", "GPT-2")
    w = sd[pre + "c_attn.weight"]
    if w.ndim != 2 or w.shape[1] != 3 * w.shape[0]:
        raise ShapeError(f"weights: {pre}c_attn.weight expected Conv1D's shape (E, 3*E), got {w.shape}")
    out: dict[str, np.ndarray] = {}
    for name, part in zip(("q_proj", "k_proj", "v_proj"), np.split(w, 3, axis=1), strict=True):
        out[f"{name}.weight"] = np.ascontiguousarray(part.T)
    b = sd.get(pre + "c_attn.bias")
    if b is not None:
        if b.shape != (w.shape[1],):
            raise ShapeError(f"weights: {pre}c_attn.bias expected shape ({w.shape[1]},), got {b.shape}")
        out["q_proj.bias"], out["k_proj.bias"], out["v_proj.bias"] = np.split(b, 3)
    if pre + "c_proj.weight" not in sd:
        raise ConfigError(f"weights: {pre}c_proj.weight is missing from the GPT-2 state dict")
    out["out_proj.weight"] = np.ascontiguousarray(sd[pre + "c_proj.weight"].T)
    if pre + "c_proj.bias" in sd:
        out["out_proj.bias"] = sd[pre + "c_proj.bias"]
    if ("q_proj.bias" in out) != ("out_proj.bias" in out):  # one layer without the other's bias: a zero bias is exact
        e = w.shape[0]
        for name in PROJECTIONS:
            out.setdefault(f"{name}.bias", np.zeros(e, dtype=w.dtype))
    return check_params(out)


def to_hf_gpt2(params: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """attnkit layout -> Hugging Face GPT-2 ``c_attn``/``c_proj`` (``Conv1D``, transposed) under ``prefix``."""
    p = check_params(params)
    if not p["q_proj.weight"].shape == p["k_proj.weight"].shape == p["v_proj.weight"].shape:
        raise ConfigError("weights: GPT-2's c_attn packs q/k/v of one shape (E, E); these differ (kdim/vdim or grouped-query)")
    out = {f"{prefix}c_attn.weight": np.ascontiguousarray(np.concatenate([p[f"{n}_proj.weight"] for n in "qkv"]).T)}
    if "q_proj.bias" in p:
        out[f"{prefix}c_attn.bias"] = np.concatenate([p[f"{n}_proj.bias"] for n in "qkv"])
    out[f"{prefix}c_proj.weight"] = np.ascontiguousarray(p["out_proj.weight"].T)
    if "out_proj.bias" in p:
        out[f"{prefix}c_proj.bias"] = p["out_proj.bias"]
    return out


def hf_llama_params(state: Mapping[str, Any], prefix: str | None = None) -> dict[str, np.ndarray]:
    """Hugging Face Llama / Mistral attention weights (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``) -> attnkit layout.

    ``prefix`` is what precedes ``q_proj.weight`` (``"model.layers.0.self_attn."``; ``""`` for a
    ``LlamaAttention``), found automatically when the state dict holds one layer. Biases
    (``attention_bias=True``; Qwen2-style q/k/v biases alone) are kept, a missing one of them as zeros.
    """
    sd = {k: to_numpy(v) for k, v in load_state(state).items()}
    pre = _layer_prefix(set(sd), prefix, "q_proj.weight", "o_proj.weight", "Llama/Mistral")
    out: dict[str, np.ndarray] = {}
    for ours, theirs in _LLAMA.items():
        key = f"{pre}{theirs}.weight"
        if key not in sd:
            raise ConfigError(f"weights: {key} is missing from the Llama/Mistral state dict")
        out[f"{ours}.weight"] = sd[key]
        if f"{pre}{theirs}.bias" in sd:
            out[f"{ours}.bias"] = sd[f"{pre}{theirs}.bias"]
    q = out["q_proj.weight"]
    if q.ndim == 2 and q.shape[0] != q.shape[1]:
        raise ConfigError(
            f"weights: {pre}q_proj.weight has shape {q.shape}: num_heads * head_dim differs from hidden_size, which "
            "attnkit's MultiHeadAttention (model_dim = heads * head_dim) cannot hold"
        )
    if any(f"{n}.bias" in out for n in PROJECTIONS):
        for n in PROJECTIONS:
            if f"{n}.bias" not in out:
                out[f"{n}.bias"] = np.zeros(out[f"{n}.weight"].shape[0], dtype=out[f"{n}.weight"].dtype)
    return check_params(out)


def to_hf_llama(params: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """attnkit layout -> Hugging Face Llama/Mistral ``q_proj``/``k_proj``/``v_proj``/``o_proj`` keys under ``prefix``."""
    p = check_params(params)
    return {f"{prefix}{_LLAMA[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in p.items() if k.split(".")[0] in _LLAMA}


def _cfg(config: Any, name: str, default: Any = None) -> Any:
    if config is None:
        return default
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def _gpt2_heads(e: int, num_heads: int | None, config: Any) -> int:
    from ._array import positive_int

    n = num_heads if num_heads is not None else _cfg(config, "n_head", _cfg(config, "num_attention_heads"))
    if n is None:
        if e % 64:
            raise ConfigError(f"num_heads: the width {e} is not a multiple of GPT-2's head width 64; pass num_heads (or config=)")
        return e // 64
    n = positive_int(n, "num_heads")
    if e % n:
        raise ConfigError(f"num_heads: expected a divisor of the width {e}, got {n}")
    return n


def from_hf_gpt2(
    state: Mapping[str, Any] | Any, prefix: str | None = None, *, num_heads: int | None = None, config: Any = None, layer_idx: int | None = None
) -> Any:
    """A causal :class:`~attnkit.MultiHeadAttention` with the attention weights of a Hugging Face GPT-2 layer.

    ``state``: a state dict (or safetensors bytes, a path) holding ``c_attn``/``c_proj`` (see
    :func:`hf_gpt2_params` for ``prefix``). ``num_heads`` (default: ``config.n_head``, else ``E // 64``,
    the head width of every published GPT-2 size). ``config`` (a ``GPT2Config`` or its ``config.json``
    as a dict) also brings ``scale_attn_weights=False`` and ``scale_attn_by_inverse_layer_idx`` (with
    ``layer_idx``): GPT-2's other score scalings, folded into W_q and b_q so the layer computes
    ``softmax(c * q k^T) v`` with GPT-2's ``c``.
    """
    from .mechanisms.multihead import MultiHeadAttention

    params = hf_gpt2_params(state, prefix=prefix)
    e = int(params["q_proj.weight"].shape[0])
    heads = _gpt2_heads(e, num_heads, config)
    hd = e // heads
    want = (hd**-0.5) if _cfg(config, "scale_attn_weights", True) else 1.0
    if _cfg(config, "scale_attn_by_inverse_layer_idx", False):
        if layer_idx is None:
            raise ConfigError("layer_idx: config.scale_attn_by_inverse_layer_idx is set, so the scale depends on the layer; pass layer_idx")
        want /= float(int(layer_idx) + 1)
    fold = want * math.sqrt(hd)  # attnkit scales by 1/sqrt(head_dim)
    if fold != 1.0:
        for name in ("q_proj.weight", "q_proj.bias"):
            if name in params:
                params[name] = params[name] * np.asarray(fold, dtype=params[name].dtype)
    mech = MultiHeadAttention(e, heads=heads, bias="q_proj.bias" in params, causal=True)
    mech.load_parameters(params)
    return mech


def from_hf_llama(
    state: Mapping[str, Any] | Any,
    prefix: str | None = None,
    *,
    num_heads: int | None = None,
    head_dim: int | None = None,
    rope_theta: float | None = None,
    config: Any = None,
) -> Any:
    """A causal :class:`~attnkit.MultiHeadAttention` with RoPE and grouped-query attention, holding the
    attention weights of a Hugging Face Llama or Mistral layer.

    The weights do not say how the width splits into heads: pass ``num_heads`` or ``head_dim`` (or
    ``config``, a ``LlamaConfig``/``MistralConfig`` or its ``config.json`` dict, which also gives
    ``rope_theta``); the key/value heads are read from ``k_proj``'s rows. ``rope_theta`` (default
    ``config``'s, else 10000) is the RoPE base; RoPE uses HF's ``rotate_half`` pairing
    (``RotaryEmbedding(head_dim, base=rope_theta, layout="half")``), and linear ``rope_scaling``
    (``{"rope_type": "linear", "factor": f}``) is position interpolation (``scaling=f``); other
    scalings (``llama3``, ``yarn``, ...) raise ``ConfigError``. Mistral's ``sliding_window`` is not
    applied: the layer is exact for sequences no longer than the window.
    """
    from ._array import positive_float, positive_int
    from .kernels.rope import RotaryEmbedding
    from .mechanisms.multihead import MultiHeadAttention

    params = hf_llama_params(state, prefix=prefix)
    e = int(params["q_proj.weight"].shape[0])
    kv_rows = int(params["k_proj.weight"].shape[0])
    if num_heads is None and head_dim is None:
        num_heads = _cfg(config, "num_attention_heads")
        head_dim = _cfg(config, "head_dim")
    if num_heads is not None:
        heads = positive_int(num_heads, "num_heads")
        if e % heads:
            raise ConfigError(f"num_heads: expected a divisor of q_proj's {e} rows, got {heads}")
        hd = e // heads
        if head_dim is not None and positive_int(head_dim, "head_dim") != hd:
            raise ConfigError(f"head_dim: expected {hd} (= {e} rows of q_proj / num_heads {heads}), got {head_dim}")
    elif head_dim is not None:
        hd = positive_int(head_dim, "head_dim")
        if e % hd:
            raise ConfigError(f"head_dim: expected a divisor of q_proj's {e} rows, got {hd}")
        heads = e // hd
    else:
        raise ConfigError("num_heads: pass num_heads or head_dim (or config=); the weights do not say how the width splits into heads")
    if kv_rows % hd or heads % (kv_rows // hd):
        raise ShapeError(f"weights: k_proj has {kv_rows} rows, not a number of key/value heads of width {hd} dividing {heads} heads")
    kv_heads = kv_rows // hd
    cfg_kv = _cfg(config, "num_key_value_heads")
    if cfg_kv is not None and int(cfg_kv) != kv_heads:
        raise ConfigError(f"config: num_key_value_heads = {cfg_kv}, but k_proj's {kv_rows} rows make {kv_heads} heads of width {hd}")
    rope_params = _cfg(config, "rope_parameters") or _cfg(config, "rope_scaling") or {}
    if rope_theta is None:
        rope_theta = _cfg(config, "rope_theta", rope_params.get("rope_theta", 10000.0))
    kind = rope_params.get("rope_type", rope_params.get("type", "default"))
    scaling = 1.0
    if kind == "linear":
        scaling = positive_float(rope_params.get("factor", 1.0), "rope_scaling.factor")
    elif kind != "default":
        raise ConfigError(f"config: rope scaling {kind!r} is not supported (only the default and 'linear' position interpolation)")
    rope = RotaryEmbedding(hd, base=positive_float(rope_theta, "rope_theta"), scaling=scaling, layout="half")
    mech = MultiHeadAttention(e, heads=heads, kv_heads=kv_heads, bias="q_proj.bias" in params, causal=True, rope=rope)
    mech.load_parameters(params)
    return mech


#: the attention vectors of PyG's GATConv (``att_src``, ``att_dst``, ``att_edge``) and GATv2Conv (``att``)
GAT_ATTENTION = ("att_src", "att_dst", "att_edge", "att")
_GAT_LINEAR = ("lin", "lin_src", "lin_dst", "lin_l", "lin_r", "lin_edge", "res")
_GAT_KEYS = (*GAT_ATTENTION, "bias", *(f"{m}.{p}" for m in _GAT_LINEAR for p in ("weight", "bias")))


def is_pyg_gat(state: Mapping[str, Any]) -> bool:
    """True for a GATConv / GATv2Conv state dict (PyG's or attnkit's): it has ``att_src`` or ``att`` with ``lin_l``."""
    keys = set(state)
    return "att_src" in keys or ("att" in keys and "lin_l.weight" in keys)


def from_pyg_gat(state: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """A PyG ``GATConv``/``GATv2Conv`` state dict (keys under ``prefix``, e.g. ``"convs.0."``) -> attnkit's
    :class:`~attnkit.EdgeFeaturedAttention` parameters: attention vectors ``(1, H, C)`` -> ``(H, C)``, the
    other tensors as they are. A GATv2Conv saved with ``share_weights=True`` holds ``lin_r`` equal to
    ``lin_l`` (one module under two names), which is what attnkit's separate ``lin_l``/``lin_r`` compute.
    Tensors that are not part of the layer (other keys, PyG's ``_alpha`` buffers) raise ``ConfigError``."""
    sd = {k[len(prefix) :]: to_numpy(v) for k, v in load_state(state).items() if k.startswith(prefix)}
    if not is_pyg_gat(sd):
        raise ConfigError(
            f"weights: not a GATConv/GATv2Conv state dict under prefix {prefix!r} (keys: {', '.join(sorted(sd)[:6])}); "
            "expected att_src/att_dst (GATConv) or att with lin_l (GATv2Conv)"
        )
    extra = sorted(set(sd) - set(_GAT_KEYS))
    if extra:
        raise ConfigError(f"weights: unexpected tensor {extra[0]!r} in a GAT state dict; expected some of {', '.join(_GAT_KEYS)}")
    out: dict[str, np.ndarray] = {}
    for key, value in sd.items():
        if key in GAT_ATTENTION:
            if value.ndim == 3:
                if value.shape[0] != 1:
                    raise ShapeError(f"{key}: expected PyG's shape (1, H, C), got {tuple(value.shape)}")
                value = value[0]
            elif value.ndim != 2:
                raise ShapeError(f"{key}: expected shape (1, H, C) (PyG) or (H, C) (attnkit), got {tuple(value.shape)}")
        out[key] = np.asarray(value)
    return out


def to_pyg_gat(params: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """attnkit :class:`~attnkit.EdgeFeaturedAttention` parameters -> a PyG ``GATConv``/``GATv2Conv`` state dict
    (attention vectors ``(H, C)`` -> ``(1, H, C)``), keys under ``prefix``; loads with ``load_state_dict``
    into a PyG layer built with the same options."""
    out: dict[str, np.ndarray] = {}
    for key, value in params.items():
        arr = to_numpy(value)
        if key in GAT_ATTENTION and arr.ndim == 2:
            arr = arr[None]
        out[f"{prefix}{key}"] = arr
    return out
