"""``attnkit config show|init``: the Typer shell of :mod:`attnkit.cli.config_cmd`."""

from __future__ import annotations

from typing import Annotated

import typer

from .._common import STATE
from .._flags import CONTEXT

app = typer.Typer(name="config", help="Show or create the TOML config file.", no_args_is_help=True)


@app.command("show", context_settings=CONTEXT)
def show(json_: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """Print the effective configuration and the file it came from."""
    from .. import config_cmd as impl

    impl.run_show(STATE, as_json=json_)


@app.command("init", context_settings=CONTEXT)
def init(
    path: Annotated[str | None, typer.Argument(help="Where to write (default ./attnkit.toml).")] = None,
    user: Annotated[bool, typer.Option("--user", help="Write the user config file instead.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented config file with every key."""
    from .. import config_cmd as impl

    impl.run_init(STATE, path, user=user, force=force)
