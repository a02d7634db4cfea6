"""``attnkit export``: write one mechanism as an ONNX model (see :func:`attnkit.export_onnx`).

The mechanism is chosen and configured with the same flags as ``attnkit compute`` (``--type``, the
generated mechanism flags, ``-O KEY=VALUE``, ``--weights``); example inputs come from files
(``-q/-k/-v/--mask``, ``-i``) or are drawn (``--random LENGTH``, default the mechanism's example inputs
of length :data:`DEFAULT_LENGTH`). They fix ranks and widths only: batch and sequence axes stay dynamic
unless ``--static``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ._common import State, console, emit_json
from ._inputs import InputFlags, MechanismChoice, build_mechanism, check_input_flags, read_or_draw

__all__ = ["DEFAULT_LENGTH", "ExportTarget", "run_export"]

#: the length of the drawn example inputs without ``--random`` (documented in ``export --help``)
DEFAULT_LENGTH = 8


@dataclasses.dataclass
class ExportTarget:
    """``--output`` (.onnx), ``--opset``, ``--static`` (fix every axis), ``--attention-weights`` (the
    graph of the weights instead of the output) and ``--json``."""

    output: str
    opset: int | None = None
    static: bool = False
    as_json: bool = False
    attention_weights: bool = False


def run_export(state: State, choice: MechanismChoice, src: InputFlags, dst: ExportTarget) -> None:
    check_input_flags(src, required=False)
    mech, seed = build_mechanism(state, choice)
    arrays, extras = read_or_draw(mech, src, seed, default_length=DEFAULT_LENGTH)
    summary = write_model(mech, arrays, extras, dst)
    report(summary, dst.as_json)


def write_model(mech: Any, arrays: dict[str, Any], extras: dict[str, Any], dst: ExportTarget) -> dict[str, Any]:
    from ..export import export_onnx

    example = [arrays[r] for r in ("q", "k", "v") if arrays.get(r) is not None]
    if len(example) == 3 and arrays["v"] is arrays["k"] and len(mech.example_inputs(1)) < 3:
        # values defaulted to the keys (--values), for a mechanism that takes none (graph attention sends
        # messages from the keys): the graph's inputs are the mechanism's own
        example = example[:2]
    info = export_onnx(
        mech,
        dst.output,
        *example,
        mask=arrays.get("mask"),
        dynamic=not dst.static,
        opset=dst.opset,
        output="weights" if dst.attention_weights else "forward",
        **extras,
    )
    return {
        "type": mech.name,
        "options": mech.options(),
        "path": info.path,
        "inputs": list(info.inputs),
        "output": info.output,
        "initializers": list(info.initializers),
        "opset": info.opset,
        "size_bytes": info.size_bytes,
        "dynamic": not dst.static,
    }


def report(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(summary)
        return
    console().print(
        f"attnkit export: {summary['type']} -> {summary['path']} ({summary['size_bytes']} bytes, opset {summary['opset']}); "
        f"inputs {', '.join(summary['inputs'])}; {len(summary['initializers'])} initializers"
    )
