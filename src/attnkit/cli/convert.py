"""``attnkit convert``: tensors between formats, attention weights between layouts.

Tensors: any of npy, npz, safetensors, raw float32, JSON and CSV to any other, bit-exact for
float32 (see :mod:`attnkit.io`). Weights: a ``torch.nn.MultiheadAttention`` state dict, a Hugging
Face BERT self-attention state dict, or the attention of a Hugging Face GPT-2 or Llama/Mistral layer
(a one-layer model file is recognised as such) (safetensors, npz, or a torch file read with
``torch.load(weights_only=True)``) to attnkit's safetensors layout, and back (:mod:`attnkit.weights`).
A ``.pt``/``.pth`` output, or ``.bin`` when the output is torch/BERT weights (``pytorch_model.bin``),
is written with ``torch.save``.
"""

from __future__ import annotations

import dataclasses
import io as _pyio
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .. import io as aio
from ..errors import ConfigError
from ._common import MissingExtra, State, UsageError, console, emit_json, fmt_shape

log = logging.getLogger("attnkit.cli")

KINDS = ("auto", "tensors", "torch-mha", "hf-bert", "hf-gpt2", "hf-llama", "attnkit")
_LAYOUT = {"attnkit": "attnkit", "torch_mha": "torch-mha", "hf_bert": "hf-bert", "hf_gpt2": "hf-gpt2", "hf_llama": "hf-llama"}


def _kind(value: str, flag: str) -> str:
    v = value.strip().lower().replace("_", "-")
    v = {"torch": "torch-mha", "mha": "torch-mha", "bert": "hf-bert", "hf": "hf-bert", "tensor": "tensors"}.get(v, v)
    v = {"gpt2": "hf-gpt2", "llama": "hf-llama", "mistral": "hf-llama", "hf-mistral": "hf-llama"}.get(v, v)
    if v not in KINDS:
        raise UsageError(f"{flag}: expected one of {', '.join(KINDS)}, got {value!r}")
    return v


def is_torch_file(path: str | os.PathLike[str]) -> bool:
    """True for files ``torch.save`` wrote (a zip holding ``data.pkl``, or a legacy pickle)."""
    p = Path(path)
    if p.suffix.lower() in (".pt", ".pth"):
        return True
    try:
        with open(p, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    if head == b"PK\x03\x04" and p.suffix.lower() in (".bin", ""):
        try:
            with zipfile.ZipFile(p) as z:
                return any(n.endswith("data.pkl") for n in z.namelist())
        except zipfile.BadZipFile:
            return False
    return False


def detect_weights_kind(state: dict[str, np.ndarray]) -> str | None:
    """``"attnkit"``, ``"torch-mha"``, ``"hf-bert"``, ``"hf-gpt2"``, ``"hf-llama"`` for attention weights; ``None`` for other tensors."""
    from ..weights import detect_layout

    try:
        return _LAYOUT[detect_layout(state)]
    except ConfigError:
        return None


def _torch_save(path: str, state: dict[str, np.ndarray]) -> None:
    try:
        import torch
    except ImportError:
        raise MissingExtra(f"writing {Path(path).suffix} files", "torch", "torch") from None
    buf = _pyio.BytesIO()
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, buf)
    aio._write_bytes(path, buf.getvalue(), "output")


@dataclasses.dataclass
class Conversion:
    """``IN`` -> ``OUT``, ``--from``/``--to`` kinds, the BERT ``--prefix`` and ``--unpacked`` torch output."""

    source: str
    dest: str
    from_: str = "auto"
    to: str = "auto"
    prefix: str | None = None
    unpacked: bool = False


def run_convert(
    state: State,
    job: Conversion,
    *,
    shape: str | None = None,
    input_format: str | None = None,
    output_format: str | None = None,
    as_json: bool = False,
) -> None:
    from_k, to_k = _kind(job.from_, "--from"), _kind(job.to, "--to")
    src, key = aio.split_key(job.source)
    dst, dst_key = aio.split_key(job.dest)
    check_distinct(src, dst)
    arrays = read_source(src, shape=shape, input_format=input_format)
    layout = detect_weights_kind(arrays) if from_k == "auto" else (None if from_k == "tensors" else from_k)
    check_target(src, arrays, layout, to_k)
    if key is not None:
        arrays = pick_one(job.source, src, key, arrays, layout, to_k)
    out, target = convert_arrays(arrays, layout, to_k, prefix=job.prefix, unpacked=job.unpacked)
    fmt = write_dest(job.dest, dst, dst_key, out, target, output_format)
    summary: dict[str, Any] = {
        "input": src,
        "output": dst,
        "format": fmt,
        "from": layout or "tensors",
        "to": target,
        "arrays": {k: {"shape": list(np.shape(v)), "dtype": str(np.asarray(v).dtype)} for k, v in out.items()},
    }
    report(summary, as_json)


def check_distinct(src: str, dst: str) -> None:
    from ._common import same_file

    if src != "-" and dst != "-" and same_file(src, dst):
        raise UsageError(f"OUT: {dst!r} is the input file {src!r} (or a link to it); write to another path")


def read_source(src: str, *, shape: str | None, input_format: str | None) -> dict[str, np.ndarray]:
    """Every array of ``src``: a torch file through ``torch.load(weights_only=True)``, else :mod:`attnkit.io`."""
    if input_format is None and src != "-" and is_torch_file(src):
        from ..weights import load_state

        arrays = load_state(src)
        if not arrays:
            raise aio.FileFormatError(f"input: {src!r} holds no tensors")
    else:
        arrays = aio.read_arrays(src, input_format, shape=shape, name="input")
    log.info("read %d array(s) from %s", len(arrays), src)
    return arrays


def check_target(src: str, arrays: dict[str, np.ndarray], layout: str | None, to_k: str) -> None:
    if to_k not in ("auto", "tensors") and layout is None:
        raise UsageError(
            f"--to {to_k}: {src!r} holds no attention weights (keys: {', '.join(sorted(arrays)[:6])}); "
            "expected a torch MultiheadAttention, HF BERT/GPT-2/Llama or attnkit state dict"
        )


def pick_one(source: str, src: str, key: str, arrays: dict[str, np.ndarray], layout: str | None, to_k: str) -> dict[str, np.ndarray]:
    """``IN:KEY``: that one tensor (weights convert as a whole)."""
    if layout is not None and to_k != "tensors":
        raise UsageError(f"IN: {source!r} picks one tensor; weights convert as a whole (drop ':{key}')")
    if key not in arrays:
        raise aio.FileFormatError(f"input: {src!r} has no array {key!r}; it holds {', '.join(arrays)}")
    return {key: arrays[key]}


def convert_arrays(
    arrays: dict[str, np.ndarray], layout: str | None, to_k: str, *, prefix: str | None, unpacked: bool
) -> tuple[dict[str, np.ndarray], str]:
    """The arrays to write and their kind: tensors as they are, or weights from ``layout`` to ``to_k``
    (``auto``: attnkit's layout)."""
    if layout is None or to_k == "tensors":
        return arrays, "tensors"
    from .. import weights as W

    if layout == "torch-mha":
        params = W.from_torch_mha(arrays)
    elif layout == "hf-bert":
        params = W.from_hf_bert(arrays, prefix=prefix)
    elif layout in ("hf-gpt2", "hf-llama"):
        params = W.to_attnkit(arrays, prefix=prefix)
    else:
        params = {k: v for k, v in arrays.items() if k.split(".")[0] in W.PROJECTIONS}
    target = to_k if to_k != "auto" else "attnkit"
    if target == "torch-mha":
        out = W.to_torch_mha(params, packed=False if unpacked else None)
    elif target == "hf-bert":
        out = W.to_hf_bert(params, prefix=prefix or "")
    elif target == "hf-gpt2":
        out = W.to_hf_gpt2(params, prefix=prefix or "")
    elif target == "hf-llama":
        out = W.to_hf_llama(params, prefix=prefix or "")
    else:
        out = params
    log.info("weights: %s -> %s", layout, target)
    return out, target


def write_dest(dest: str, dst: str, dst_key: str | None, out: dict[str, np.ndarray], target: str, output_format: str | None) -> str:
    """Write ``out``; ``.pt``/``.pth`` (and ``.bin`` for torch/BERT weights) with ``torch.save``. The format written."""
    suffix = Path(dst).suffix.lower()
    if output_format is None and (suffix in (".pt", ".pth") or (suffix == ".bin" and target not in ("attnkit", "tensors"))):
        _torch_save(dst, out)
        return "torch"
    if len(out) == 1 and dst_key is None:
        return str(aio.write_array(dst, next(iter(out.values())), output_format, key=next(iter(out)), name="output"))
    if dst_key is not None:
        raise UsageError(f"OUT: {dest!r} names one array but there are {len(out)}")
    return str(aio.write_arrays(dst, out, output_format, name="output"))


def report(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(summary)
        return
    con = console()
    what = f"{summary['from']} -> {summary['to']}" if summary["to"] != "tensors" else "tensors"
    con.print(f"converted {summary['input']} -> {summary['output']} ({summary['format']}; {what})")
    for k, info in summary["arrays"].items():
        con.print(f"  {k}: {fmt_shape(info['shape'])} {info['dtype']}")
