"""``attnkit export``: the Typer shell of :func:`attnkit.cli.export.run_export` (compute's flags)."""

from __future__ import annotations

from typing import Annotated

import typer

from .._common import STATE
from .._flags import (
    MECHANISM_CONTEXT,
    DtypeFlag,
    InputFormatFlag,
    InputsFlag,
    JsonFlag,
    KeysFlag,
    MaskFlag,
    OptFlag,
    QueryFlag,
    RandomFlag,
    SeedFlag,
    ShapeFlag,
    TypeFlag,
    ValuesFlag,
    WeightsFlag,
    given_mechanism_flags,
    mechanism_command,
)

app = typer.Typer()


@app.command("export", cls=mechanism_command(exclude=("seed",)), context_settings=MECHANISM_CONTEXT)
def export(
    ctx: typer.Context,
    output: Annotated[str, typer.Option("--output", "-o", help="Where to write the ONNX model (.onnx).", metavar="FILE")],
    type_: TypeFlag = None,
    inputs: InputsFlag = None,
    query: QueryFlag = None,
    keys: KeysFlag = None,
    values: ValuesFlag = None,
    mask: MaskFlag = None,
    random: RandomFlag = None,
    shape: ShapeFlag = None,
    input_format: InputFormatFlag = None,
    dtype: DtypeFlag = None,
    seed: SeedFlag = None,
    opt: OptFlag = None,
    weights: WeightsFlag = None,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset of the file (default: the exporter's).")] = None,
    attention_weights: Annotated[
        bool,
        typer.Option("--attention-weights", help="Export the attention weights softmax(scores + mask) instead of the output."),
    ] = False,
    static: Annotated[bool, typer.Option("--static", help="Fix every axis to the example's (default: batch and lengths dynamic).")] = False,
    json_: JsonFlag = False,
) -> None:
    """Write a mechanism as an ONNX model that ONNX Runtime (Python, Node, browsers) runs at any length.

    The example inputs (default: the mechanism's example inputs of length 8) fix ranks and widths \
only. The flags are compute's; a mask file gives the model a mask input.
    """
    from .. import export as impl
    from .._inputs import InputFlags, MechanismChoice

    impl.run_export(
        STATE,
        MechanismChoice(type_, given_mechanism_flags(ctx), opt or [], ctx.args, seed, weights),
        InputFlags(inputs, query, keys, values, mask, random, None, shape or [], input_format, dtype),
        impl.ExportTarget(output, opset, static, json_, attention_weights),
    )
