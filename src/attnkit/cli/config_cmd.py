"""``attnkit config show`` and ``attnkit config init``."""

from __future__ import annotations

import sys
from pathlib import Path

from ._common import State, UsageError, console, emit_json


def run_show(state: State, *, as_json: bool) -> None:
    config = state.config
    if as_json:
        emit_json({"path": str(config.path) if config.path else None, "source": config.source, "config": config.as_dict()})
        return
    where = f"{config.path} (from {config.source})" if config.path else "none found; built-in defaults"
    sys.stdout.write(f"# config file: {where}\n{config.to_toml()}")


def run_init(state: State, path: str | None, *, user: bool, force: bool) -> None:
    from .config import default_config_text, user_config_path

    if user and path is not None:
        raise UsageError("config init: give a PATH or --user, not both")
    target = user_config_path() if user else Path(path or "attnkit.toml")
    if target.exists() and not force:
        raise UsageError(f"config init: {str(target)!r} exists; use --force to overwrite it")
    if target.is_dir():
        raise UsageError(f"config init: {str(target)!r} is a directory")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(default_config_text(), encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"config init: cannot write {str(target)!r}: {exc.strerror or exc}") from None
    console().print(f"wrote {target}")
