"""``attnkit repl``: the Typer shell of :func:`attnkit.cli.repl.run_repl`."""

from __future__ import annotations

from typing import Annotated

import typer

from .._common import STATE
from .._flags import CONTEXT

app = typer.Typer()


@app.command("repl", context_settings=CONTEXT)
def repl(
    type_: Annotated[str | None, typer.Option("--type", "-t", help="Create this mechanism at start.")] = None,
    history: Annotated[bool, typer.Option("--history/--no-history", help="Keep command history in the user state dir.")] = True,
) -> None:
    """Interactive session: create a mechanism, load or generate arrays, run, inspect, save. Type `help`."""
    from .. import repl as impl

    raise typer.Exit(impl.run_repl(STATE, type_=type_, history=history))
