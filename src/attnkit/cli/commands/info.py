"""``attnkit info``: the Typer shell of :func:`attnkit.cli.info.run_info`."""

from __future__ import annotations

from typing import Annotated

import typer

from .._common import STATE
from .._flags import CONTEXT

app = typer.Typer()


@app.command("info", context_settings=CONTEXT)
def info(
    json_: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    scheduler: Annotated[
        str | None, typer.Option("--scheduler", help="Also describe this Dask cluster ('local' or a scheduler ADDRESS).", metavar="ADDRESS")
    ] = None,
) -> None:
    """Version, Python, NumPy and its BLAS, SIMD, threads, optional backends, config file in use (and a Dask cluster)."""
    from .. import info as impl

    impl.run_info(STATE, as_json=json_, scheduler=scheduler)
