"""The ``attnkit`` command line (typer + rich): compute, benchmark, convert, serve, repl, info, demo, config.

``main`` is the console-script entry point. It maps outcomes to exit codes: 0 success, 2 bad input
(missing or corrupt file, wrong shape, unknown mechanism or option, bad flag; one line on stderr),
1 internal error (a bug: one line, the traceback with ``-v``), 130 interrupted.
Importing this package imports neither NumPy-heavy modules nor torch, FastAPI or matplotlib.
"""

from __future__ import annotations

import os
import sys
import traceback

__all__ = ["main"]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _wants_traceback(args: list[str]) -> bool:
    from ._common import STATE

    if STATE.verbose:
        return True
    for a in args:
        if a == "--verbose" or (a.startswith("-v") and set(a[1:]) == {"v"}):
            return True
        if not a.startswith("-"):
            break  # the subcommand: -v after it means --values
    return False


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    import click

    from ..errors import AttentionError

    try:
        from ._app import app
        from typer.main import get_command

        command = get_command(app)
        rv = command.main(args=args, prog_name="attnkit", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        sys.stderr.write("attnkit: aborted\n")
        return 130
    except KeyboardInterrupt:
        sys.stderr.write("attnkit: interrupted\n")
        return 130
    except click.ClickException as exc:
        where = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "attnkit"  # type: ignore[attr-defined]
        sys.stderr.write(f"{where}: error: {_one_line(exc.format_message())} (see '{where} --help')\n")
        return 2
    except AttentionError as exc:
        if _wants_traceback(args):
            traceback.print_exc()
        sys.stderr.write(f"attnkit: error: {_one_line(str(exc))}\n")
        return 2
    except BrokenPipeError:
        # the reader of our stdout went away (attnkit ... | head): not an error of ours
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return 0
    except Exception as exc:  # noqa: BLE001 - the last line of defence: a bug, reported as such
        if _wants_traceback(args):
            traceback.print_exc()
            hint = ""
        else:
            hint = " (run with -v for the traceback)"
        sys.stderr.write(f"attnkit: internal error: {type(exc).__name__}: {_one_line(str(exc))}{hint}\n")
        return 1
