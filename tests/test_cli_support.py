"""Helpers shared by the CLI tests: run the installed ``attnkit`` entry point in a subprocess.

Every run gets an isolated environment: no ``ATTNKIT_CONFIG``, a private ``XDG_CONFIG_HOME`` and
``XDG_STATE_HOME`` (so a user config or REPL history of the machine cannot leak in), a wide
terminal (no wrapped lines) and the test's temporary directory as working directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_BIN = Path(sys.executable).with_name("attnkit")


def command() -> list[str]:
    """The installed console script, or ``python -m attnkit.cli`` where it is not on this venv."""
    return [str(_BIN)] if _BIN.exists() else [sys.executable, "-m", "attnkit.cli"]


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTNKIT_")}
    env.update(
        XDG_CONFIG_HOME=str(tmp / ".xdg-config"),
        XDG_STATE_HOME=str(tmp / ".xdg-state"),
        COLUMNS="200",
        NO_COLOR="1",
        PYTHONWARNINGS="ignore",
    )
    env.update(extra)
    return env


class Runner:
    """``runner("compute", "--random", "8")`` -> CompletedProcess (text, captured)."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd

    def __call__(
        self, *args: str, input: str | bytes | None = None, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*command(), *map(str, args)],
            input=input,
            capture_output=True,
            text=not isinstance(input, bytes),
            cwd=cwd or self.cwd,
            env=env if env is not None else clean_env(self.cwd),
            timeout=timeout,
        )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """Assert exit code 0, showing stderr when it is not."""
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def one_error_line(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    """Assert exit ``code`` with exactly one line on stderr and no traceback; return that line."""
    err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode()
    assert proc.returncode == code, f"exit {proc.returncode} != {code}\nstdout:\n{proc.stdout}\nstderr:\n{err}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert "Traceback" not in err
    return lines[0]
