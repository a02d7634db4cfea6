"""attnkit's HTTP server (FastAPI + uvicorn; install the ``server`` extra).

``create_app(settings)`` builds the ASGI application; ``run(host, port, workers, **limits)`` serves it
with uvicorn (``attnkit serve`` and ``python -m attnkit.server`` call it). See :mod:`.app` for the
routes and the error model and :mod:`.codec` for the body formats.
"""

from __future__ import annotations

import os
from typing import Any

from .settings import ENV_JSON, Settings

__all__ = ["Settings", "create_app", "app_factory", "run"]


def create_app(settings: Settings | None = None) -> Any:
    """The FastAPI application (see :func:`attnkit.server.app.create_app`)."""
    from .app import create_app as _create

    return _create(settings)


def app_factory() -> Any:
    """Factory used by uvicorn worker processes: settings from ``ATTNKIT_SERVER_*`` variables."""
    from .app import app_factory as _factory

    return _factory()


def run(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    *,
    settings: Settings | None = None,
    log_level: str = "info",
    keep_alive_s: float = 30.0,
    **limits: Any,
) -> None:
    """Serve attnkit on ``host:port`` until SIGINT/SIGTERM, then finish in-flight requests and stop.

    ``limits`` are :class:`Settings` fields (``max_body_bytes``, ``max_batch_items``, ``max_elements``,
    ``request_timeout_s``, ``max_concurrency``, ``queue``, ``api_key``, ``cors_origins`` ...); ``None``
    values are ignored, unset ones come from ``ATTNKIT_SERVER_*`` variables or the defaults.
    ``workers > 1`` starts that many processes sharing the port (each with its own limits and metrics).
    ``keep_alive_s`` is how long an idle keep-alive connection stays open (uvicorn's default of 5 s makes
    busy clients that reuse a connection just as it closes see dropped requests).
    """
    import uvicorn

    from .._array import positive_int

    workers = positive_int(workers, "workers")
    port = int(port)
    if settings is None:
        settings = Settings.from_env(**limits)
    elif limits:
        settings = Settings.from_mapping({**_as_dict(settings), **{k: v for k, v in limits.items() if v is not None}})
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "timeout_graceful_shutdown": int(settings.request_timeout_s) + 5,
        "server_header": False,
        "timeout_keep_alive": float(keep_alive_s),
    }
    if workers > 1:
        os.environ[ENV_JSON] = settings.to_json()
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # issue 14: per-model metrics summed over workers
            import tempfile

            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="attnkit-metrics-")
        uvicorn.run("attnkit.server:app_factory", factory=True, workers=workers, **common)
    else:
        uvicorn.run(create_app(settings), **common)


def _as_dict(settings: Settings) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(settings)
