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
``q_proj_weight``/``k_proj_weight``/``v_proj_weight`` form used with kdim/vdim) and Hugging Face
BERT self-attention state dicts (``...attention.self.query.weight`` etc. and
``...attention.output.dense``), and write both back.
"""

from __future__ import annotations

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
    """``"attnkit"``, ``"torch_mha"`` or ``"hf_bert"`` for a state dict, or ``ConfigError``."""
    keys = set(state)
    if "q_proj.weight" in keys and "out_proj.weight" in keys:
        return "attnkit"
    if ("in_proj_weight" in keys or "q_proj_weight" in keys) and "out_proj.weight" in keys:
        return "torch_mha"
    if any(k.endswith("attention.self.query.weight") for k in keys):
        return "hf_bert"
    sample = ", ".join(sorted(keys)[:6])
    raise ConfigError(f"weights: unrecognised layout (keys: {sample}); expected attnkit, torch MultiheadAttention or HF BERT")


def to_attnkit(state: Mapping[str, Any], prefix: str | None = None) -> dict[str, np.ndarray]:
    """Any supported layout -> attnkit's."""
    state = load_state(state)
    layout = detect_layout(state)
    if layout == "attnkit":
        return check_params({k: v for k, v in state.items() if k.split(".")[0] in PROJECTIONS or k in _EXTRA})
    if layout == "torch_mha":
        return from_torch_mha(state)
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
