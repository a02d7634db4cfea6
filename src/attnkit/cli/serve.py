"""``attnkit serve``: a thin wrapper over :func:`attnkit.server.run` (the ``server`` extra)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ._common import MissingExtra, State, parse_pairs

log = logging.getLogger("attnkit.cli")

#: [server] keys that are server settings under the same name
SETTING_KEYS = (
    "max_body_bytes",
    "max_batch_items",
    "max_elements",
    "max_option_int",
    "request_timeout_s",
    "max_concurrency",
    "queue",
    "api_key",
    "cors_origins",
    "cache_size",
    "cache_bytes",
    "max_flops",
    "max_work_bytes",
    "isolation",
    "worker_memory_bytes",
    "header_timeout_s",
    "body_timeout_s",
    "models_dir",
    "models",
    "max_batch_delay_ms",
    "inline_max_flops",
    "http",
    "loop",
)
# `[server] max_batch_size` keeps the spec's meaning (items of one /v1/batch request, `max_batch_items`);
# the dynamic batcher's merge bound is `python -m attnkit.server --max-batch-size N`.


def server_arguments(
    config: Any,
    *,
    host: str | None,
    port: int | None,
    workers: int | None,
    limits: Mapping[str, Any],
    extra: Sequence[str] = (),
) -> tuple[str, int, int, dict[str, Any]]:
    """Host, port, workers and limits: flags over the config's ``[server]`` table over defaults.

    The spec's keys map onto the server's: ``max_batch_size`` -> ``max_batch_items``, ``timeout_ms``
    -> ``request_timeout_s``, and ``max_connections`` (requests in the server at once) -> a ``queue``
    of ``max_connections - max_concurrency`` waiting requests.
    """
    srv = config.values["server"]
    out: dict[str, Any] = {k: srv[k] for k in SETTING_KEYS if srv.get(k) is not None}
    if srv.get("max_batch_size") is not None:
        out.setdefault("max_batch_items", srv["max_batch_size"])
    if srv.get("timeout_ms") is not None:
        out.setdefault("request_timeout_s", srv["timeout_ms"] / 1000.0)
    out.update({k: v for k, v in limits.items() if v is not None})
    out.update(parse_pairs(extra, "--limit"))
    if srv.get("max_connections") is not None and "queue" not in out:
        running = out.get("max_concurrency") or (os.cpu_count() or 1)
        out["queue"] = max(0, int(srv["max_connections"]) - int(running))
    return (
        host if host is not None else srv["host"],
        port if port is not None else srv["port"],
        workers if workers is not None else srv["workers"],
        out,
    )


def run_serve(
    state: State,
    *,
    host: str | None,
    port: int | None,
    workers: int | None,
    limits: Mapping[str, Any],
    extra: Sequence[str] = (),
) -> None:
    config = state.config
    h, p, w, lim = server_arguments(config, host=host, port=port, workers=workers, limits=limits, extra=extra)
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise MissingExtra("attnkit serve", "fastapi and uvicorn", "server") from None
    from ..server import check_address, check_port_free, run
    from ..server.settings import Settings

    # every value is checked (a ConfigError names the bad one, exit 2) before anything is printed or bound
    w, p, h = check_address(h, p, w)
    settings = Settings.from_env(**lim)
    if settings.models_dir or settings.models:
        from ..server.models import ModelRepository

        ModelRepository(settings.models_dir, settings.models)  # a bad model file exits 2 before binding
    check_port_free(h, p)
    level = "debug" if state.verbose >= 2 else "info" if state.verbose == 1 else config.get("logging", "level")
    sys.stderr.write(f"attnkit: serving on http://{h}:{p} (API docs at /docs); Ctrl-C stops\n")
    sys.stderr.flush()
    log.info("server settings: %s", {k: v for k, v in vars(settings).items() if k != "api_key"})
    run(h, p, w, settings=settings, log_level=level)
