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
from collections.abc import Callable

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
    if not _wants_traceback(args):
        import warnings

        # NumPy's overflow/invalid warnings would add lines to the one-line error contract; a result
        # that is not finite is refused as an error instead (see _common.check_finite_output)
        warnings.filterwarnings("ignore", category=RuntimeWarning)
    try:
        return _invoke(args)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - each kind maps to its exit code below
        return _exit_code(exc, args)


def _invoke(args: list[str]) -> int:
    from typer.main import get_command

    from ._app import app

    rv = get_command(app).main(args=args, prog_name="attnkit", standalone_mode=False)
    return rv if isinstance(rv, int) else 0


def _on_click_exit(exc: BaseException, args: list[str]) -> int:
    return int(getattr(exc, "exit_code", 0) or 0)


def _on_abort(exc: BaseException, args: list[str]) -> int:
    sys.stderr.write("attnkit: aborted\n")
    return 130


def _on_interrupt(exc: BaseException, args: list[str]) -> int:
    sys.stderr.write("attnkit: interrupted\n")
    return 130


def _on_help_shown(exc: BaseException, args: list[str]) -> int:
    return 0  # `attnkit` (or `attnkit config`) alone: the help has been printed


def _on_usage(exc: BaseException, args: list[str]) -> int:
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "attnkit"
    sys.stderr.write(f"{where}: error: {_one_line(exc.format_message())} (see '{where} --help')\n")  # type: ignore[attr-defined]
    return 2


def _on_bad_input(exc: BaseException, args: list[str]) -> int:
    if _wants_traceback(args):
        traceback.print_exception(exc)
    sys.stderr.write(f"attnkit: error: {_one_line(str(exc))}\n")
    return 2


def _on_memory(exc: BaseException, args: list[str]) -> int:
    sys.stderr.write(f"attnkit: error: not enough memory ({_one_line(str(exc)) or 'MemoryError'}); use smaller sizes or options\n")
    return 2


def _on_broken_pipe(exc: BaseException, args: list[str]) -> int:
    # the reader of our stdout went away (attnkit ... | head): not an error of ours
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
    return 0


def _on_bug(exc: BaseException, args: list[str]) -> int:
    """The last line of defence: a bug, reported as such (exit 1; the traceback with -v)."""
    if _wants_traceback(args):
        traceback.print_exception(exc)
        hint = ""
    else:
        hint = " (run with -v for the traceback)"
    sys.stderr.write(f"attnkit: internal error: {type(exc).__name__}: {_one_line(str(exc))}{hint}\n")
    return 1


def _handlers() -> list[tuple[tuple[type[BaseException], ...], Callable[[BaseException, list[str]], int]]]:
    """Exception classes -> exit code, first match wins (click's help-shown error before its usage errors)."""
    from ..errors import AttentionError

    return [
        (_classes("Exit"), _on_click_exit),
        (_classes("Abort"), _on_abort),
        ((KeyboardInterrupt,), _on_interrupt),
        (_classes("NoArgsIsHelpError"), _on_help_shown),
        (_classes("ClickException"), _on_usage),
        ((AttentionError,), _on_bad_input),
        ((MemoryError,), _on_memory),
        ((BrokenPipeError,), _on_broken_pipe),
        ((Exception,), _on_bug),
    ]


def _exit_code(exc: BaseException, args: list[str]) -> int:
    handler = next(h for classes, h in _handlers() if classes and isinstance(exc, classes))
    return handler(exc, args)
