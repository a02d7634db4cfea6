"""``attnkit mechanisms``: the Typer shell of :func:`attnkit.cli.info.run_mechanisms`."""

from __future__ import annotations

from typing import Annotated

import typer

from .._common import STATE
from .._flags import CONTEXT

app = typer.Typer()


@app.command("mechanisms", context_settings=CONTEXT)
def mechanisms(
    name: Annotated[str | None, typer.Argument(help="Show the options of this mechanism.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """List the registered mechanisms, or the options of one."""
    from .. import info as impl

    impl.run_mechanisms(STATE, name, as_json=json_)
