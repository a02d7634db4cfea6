"""``attnkit compute``: the Typer shell of :func:`attnkit.cli.compute.run_compute`."""

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
    OutputFormatFlag,
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


@app.command("compute", cls=mechanism_command(exclude=("seed",)), context_settings=MECHANISM_CONTEXT)
def compute(
    ctx: typer.Context,
    type_: TypeFlag = None,
    inputs: InputsFlag = None,
    query: QueryFlag = None,
    keys: KeysFlag = None,
    values: ValuesFlag = None,
    mask: MaskFlag = None,
    random: RandomFlag = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="Write the output, format from the extension, '-' = JSON on stdout (default: none, a summary only).",
            metavar="FILE",
        ),
    ] = None,
    motif: Annotated[
        int | None,
        typer.Option(
            "--motif", help="With --random: repeat a motif of this many positions, keys = query (structured inputs for --heatmap).", metavar="PERIOD"
        ),
    ] = None,
    shape: ShapeFlag = None,
    input_format: InputFormatFlag = None,
    output_format: OutputFormatFlag = None,
    dtype: DtypeFlag = None,
    seed: SeedFlag = None,
    opt: OptFlag = None,
    weights: WeightsFlag = None,
    heatmap: Annotated[
        str | None,
        typer.Option("--heatmap", help="Draw the attention weights to this PNG, needs matplotlib (default: none drawn).", metavar="FILE"),
    ] = None,
    json_: JsonFlag = False,
    scheduler: Annotated[
        str | None,
        typer.Option("--scheduler", help="Run on Dask: 'local' (a cluster of processes here), a scheduler ADDRESS, or 'threads'.", metavar="ADDRESS"),
    ] = None,
    chunks: Annotated[
        str | None,
        typer.Option("--chunks", help="With --scheduler: chunk sizes of the inputs' leading axes, N[,N...] (e.g. 1,4096).", metavar="N[,N...]"),
    ] = None,
) -> None:
    """Run one mechanism on arrays from files (or random ones) and write the output.

    Every constructor option of every mechanism is a flag (Mechanism options, below, under any of its \
names); `attnkit mechanisms NAME` lists those of one. A spinner shows on a terminal when the \
computation takes over a second.
    """
    from .. import compute as impl
    from .._inputs import InputFlags, MechanismChoice

    impl.run_compute(
        STATE,
        MechanismChoice(type_, given_mechanism_flags(ctx), opt or [], ctx.args, seed, weights),
        InputFlags(inputs, query, keys, values, mask, random, motif, shape or [], input_format, dtype),
        impl.ComputeOutput(output, output_format, heatmap, json_, scheduler, chunks),
    )
