"""``attnkit benchmark``: the Typer shell of :func:`attnkit.cli.benchmark.run_benchmark`."""

from __future__ import annotations

from typing import Annotated

import typer

from .._common import STATE
from .._flags import MECHANISM_CONTEXT, JsonFlag, OptFlag, given_mechanism_flags, mechanism_command

app = typer.Typer()

#: the platform spec's grid (the defaults of --types, --dims, --neighbors)
DEFAULT_TYPES = "scaled-dot-product,multi-head,hyperbolic"
DEFAULT_DIMS = "128,256,512"
DEFAULT_LENGTHS = "100,500,1000"


@app.command("benchmark", cls=mechanism_command(exclude=("seed",), exclude_groups=("dim", "head_dim")), context_settings=MECHANISM_CONTEXT)
def benchmark(
    ctx: typer.Context,
    types: Annotated[str, typer.Option("--types", "-t", help="Comma-separated mechanisms, or 'all'.")] = DEFAULT_TYPES,
    dims: Annotated[str, typer.Option("--dims", "-d", help="Comma-separated dimensions (the dim/model_dim option).")] = DEFAULT_DIMS,
    neighbors: Annotated[
        str,
        typer.Option("--neighbors", "--lengths", "-n", help="Comma-separated lengths (neighbours / sequence length)."),
    ] = DEFAULT_LENGTHS,
    iterations: Annotated[int, typer.Option("--iterations", help="Most timed runs per cell.")] = 1000,
    max_time: Annotated[float, typer.Option("--max-time", help="Seconds of timed runs per cell (stops earlier than --iterations).")] = 1.0,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed runs per cell.")] = 2,
    batch: Annotated[
        int | None,
        typer.Option("--batch", help="Sequences per forward (default: config optimization.batch_size, 1)."),
    ] = None,
    opt: OptFlag = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write results to .json or .csv.", metavar="FILE")] = None,
    plot: Annotated[str | None, typer.Option("--plot", help="Draw latency against length to this PNG.", metavar="FILE")] = None,
    compare: Annotated[str | None, typer.Option("--compare", help="Also time each mechanism on torch tensors ('torch').")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random inputs.")] = 0,
    json_: JsonFlag = False,
) -> None:
    """Time mechanisms over a grid of types x dims x lengths (the platform spec's grid unless given).

    A mechanism option (a flag below or -O KEY=VALUE) applies to every type that has it.
    """
    from .. import benchmark as impl

    impl.run_benchmark(
        STATE,
        impl.Grid(types, dims, neighbors, batch),
        impl.Timing(iterations, max_time, warmup, seed),
        options=given_mechanism_flags(ctx),
        opt=opt or [],
        extra_args=ctx.args,
        output=output,
        plot=plot,
        compare=compare,
        as_json=json_,
    )
