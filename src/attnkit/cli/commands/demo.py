"""``attnkit demo``: the Typer shell of :func:`attnkit.cli.demo.run_demo`."""

from __future__ import annotations

from typing import Annotated

import typer

from .._common import STATE
from .._flags import CONTEXT

app = typer.Typer()


@app.command("demo", context_settings=CONTEXT)
def demo(
    length: Annotated[int, typer.Option("--length", "-n", help="Sequence length of the sample data.")] = 64,
    heatmap: Annotated[
        str | None,
        typer.Option("--heatmap", help="Where to draw the attention weights (default: attnkit/attnkit-demo.png in the temp dir).", metavar="FILE"),
    ] = None,
    no_heatmap: Annotated[bool, typer.Option("--no-heatmap", help="Do not draw the heatmap.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sample data and weights.")] = 0,
    json_: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
) -> None:
    """Run every registered mechanism on built-in sample data, print a table, draw a heatmap."""
    from .. import demo as impl

    where = None if no_heatmap else (heatmap or impl.default_heatmap_path())
    raise typer.Exit(impl.run_demo(STATE, length=length, heatmap=where, seed=seed, as_json=json_))
