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


def _classes(name: str) -> tuple[type[BaseException], ...]:
    """Exception class ``name`` from click and from the copy of click that recent typer vendors."""
    import importlib

    found: list[type[BaseException]] = []
    for mod in ("click.exceptions", "typer._click.exceptions", "typer.exceptions"):
        try:
            cls = getattr(importlib.import_module(mod), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and cls not in found:
            found.append(cls)
    return tuple(found)


# what the command line itself imports (the ``cli`` extra); a command's own extras are checked by the command
_CLI_MODULES = ("typer", "rich")


def missing_cli_modules() -> list[str]:
    """The modules of the ``cli`` extra that cannot be imported (empty when the command line can run)."""
    import importlib

    missing = []
    for m in _CLI_MODULES:
        try:
            importlib.import_module(m)
        except ImportError:
            missing.append(m)
    return missing


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    missing = missing_cli_modules()
    if missing:  # a core-only install: say which extra to install, in one line, exit 2 (no rich here)
        sys.stderr.write(
            f"attnkit: error: the command line needs {' and '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed: pip install 'attnkit[cli]'\n"
        )
        return 2
    from ..errors import AttentionError

    if not _wants_traceback(args):
        import warnings

        # NumPy's overflow/invalid warnings would add lines to the one-line error contract; a result
        # that is not finite is refused as an error instead (see _common.check_finite_output)
        warnings.filterwarnings("ignore", category=RuntimeWarning)
    try:
        from typer.main import get_command

        from ._app import app

        command = get_command(app)
        rv = command.main(args=args, prog_name="attnkit", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except _classes("Exit") as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except _classes("Abort"):
        sys.stderr.write("attnkit: aborted\n")
        return 130
    except KeyboardInterrupt:
        sys.stderr.write("attnkit: interrupted\n")
        return 130
    except _classes("NoArgsIsHelpError"):
        return 0  # `attnkit` (or `attnkit config`) alone: the help has been printed
    except _classes("ClickException") as exc:
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "attnkit"
        sys.stderr.write(f"{where}: error: {_one_line(exc.format_message())} (see '{where} --help')\n")  # type: ignore[attr-defined]
        return 2
    except AttentionError as exc:
        if _wants_traceback(args):
            traceback.print_exc()
        sys.stderr.write(f"attnkit: error: {_one_line(str(exc))}\n")
        return 2
    except MemoryError as exc:
        sys.stderr.write(f"attnkit: error: not enough memory ({_one_line(str(exc)) or 'MemoryError'}); use smaller sizes or options\n")
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
