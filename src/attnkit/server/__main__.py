"""``python -m attnkit.server [serve] [--host H] [--port P] [--workers N] [--<limit> V ...]``.

The same server ``attnkit serve`` starts, without needing the command line extra.
"""

from __future__ import annotations

import argparse
import sys

from . import run
from .settings import Settings


def _missing_server_modules() -> list[str]:
    import importlib

    missing = []
    for m in ("fastapi", "uvicorn"):
        try:
            importlib.import_module(m)
        except ImportError:
            missing.append(m)
    return missing


def main(argv: list[str] | None = None) -> int:
    missing = _missing_server_modules()
    if missing:  # a core-only install: which extra to install, in one line, exit 2
        print(
            f"python -m attnkit.server: error: the server needs {' and '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed: pip install 'attnkit[server]'",
            file=sys.stderr,
        )
        return 2
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["serve"]:
        args_in = args_in[1:]
    p = argparse.ArgumentParser(prog="python -m attnkit.server", description="Serve attnkit over HTTP.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--log-level", default="info")
    for name in Settings.field_names():
        if name not in ("models_dir", "models"):
            p.add_argument("--" + name.replace("_", "-"), dest=name, default=None)
    # as in ``attnkit serve``: --models DIR (the repository), --model NAME=TYPE[:weights] (repeatable)
    p.add_argument("--models", "--models-dir", dest="models_dir", default=None, metavar="DIR")
    p.add_argument("--model", dest="models", action="append", default=None, metavar="NAME=TYPE[:WEIGHTS]")
    ns = p.parse_args(args_in)
    limits = {n: getattr(ns, n) for n in Settings.field_names() if getattr(ns, n) is not None}
    from ..errors import AttentionError
    from . import check_address, check_port_free

    try:
        workers, port, host = check_address(ns.host, ns.port, ns.workers)
        settings = Settings.from_env(**limits)
        if settings.models_dir or settings.models:
            from .models import ModelRepository

            ModelRepository(settings.models_dir, settings.models)  # a bad model exits 2 before binding
        check_port_free(host, port)
    except AttentionError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    run(host, port, workers, settings=settings, log_level=ns.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
