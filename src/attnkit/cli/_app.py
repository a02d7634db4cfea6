"""The ``attnkit`` command tree: the root options, and the sub-apps of :mod:`.commands` assembled.

Each command is a Typer sub-app in its own file (``commands/compute.py`` ...) whose work is imported
only when it runs, so ``attnkit --help`` stays fast.
"""

import importlib
from typing import Annotated

import typer

from ._common import STATE, setup_logging
from .commands import COMMANDS

_HELP = """attnkit: attention mechanisms from the command line.

Run every mechanism on built-in data with `attnkit demo`; list them with `attnkit mechanisms`.
Exit codes: 0 ok, 2 bad input (one line on stderr), 1 internal error.
"""

app = typer.Typer(
    name="attnkit",
    help=_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"attnkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[
        int,
        typer.Option("--verbose", "-v", count=True, help="More logging: -v info, -vv debug; tracebacks on errors."),
    ] = 0,
    log_format: Annotated[str | None, typer.Option("--log-format", help="Log lines as 'text' or 'json' (stderr).")] = None,
    config: Annotated[
        str | None,
        typer.Option("--config", "-c", help="Config file (else $ATTNKIT_CONFIG, ./attnkit.toml, user config).", metavar="PATH"),
    ] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    if log_format is not None and log_format not in ("text", "json"):
        raise typer.BadParameter(f"expected 'text' or 'json', got {log_format!r}", param_hint="--log-format")
    STATE.verbose = verbose
    STATE.log_format = log_format
    STATE.config_path = config
    setup_logging(verbose, log_format)


for _name in COMMANDS:  # the one list of commands (the help-defaults test walks the same list)
    app.add_typer(importlib.import_module(f"{__package__}.commands.{_name}").app)
