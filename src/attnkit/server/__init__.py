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
    busy clients that reuse a connection just as it closes see dropped requests). uvicorn's access log
    (one line per request) is written at ``log_level="debug"`` only: at ``"info"`` it costs about a third
    of the server CPU of a small request.
    """
    import uvicorn

    from .protocol import event_loop, http_protocol

    workers, port, host = check_address(host, port, workers)
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
        # one access-log line per request costs about a third of a small request's CPU: at debug level only
        "access_log": str(log_level).lower() in ("debug", "trace"),
        "http": http_protocol(settings.http),  # httptools when installed (see .protocol)
        "loop": event_loop(settings.loop),
    }
    check_port_free(host, port)
    if workers > 1:
        os.environ[ENV_JSON] = settings.to_json()
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # issue 14: per-model metrics summed over workers
            import tempfile

            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="attnkit-metrics-")
        uvicorn.run("attnkit.server:app_factory", factory=True, workers=workers, **common)
    else:
        uvicorn.run(create_app(settings), **common)


def check_address(host: Any, port: Any, workers: Any) -> tuple[int, int, str]:
    """Validate ``workers`` (>= 1), ``port`` (0..65535) and ``host`` (an address or a name that
    resolves), raising :class:`~attnkit.errors.ConfigError` naming the bad one."""
    import socket

    from .._array import positive_int
    from ..errors import ConfigError

    workers = positive_int(workers, "workers")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"port: expected an integer in 0..65535, got {port!r}")
    if not isinstance(host, str) or not host or any(c.isspace() or c in "/?#@" for c in host):
        raise ConfigError(f"host: expected an IP address or host name, got {host!r}")
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise ConfigError(f"host: cannot resolve {host!r} ({exc})") from None
    return workers, port, host


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`~attnkit.errors.ConfigError` when ``host:port`` cannot be bound (in use, or not an
    address of this machine), before uvicorn tries and logs a traceback."""
    import socket

    from ..errors import ConfigError

    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"host: cannot resolve {host!r} ({exc})") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            what = "port" if exc.errno in (98, 48, 10048) else "host"  # EADDRINUSE on Linux, macOS, Windows
            value = port if what == "port" else host
            raise ConfigError(f"{what}: cannot listen on {host}:{port} ({exc.strerror or exc}); {value!r} is busy or unavailable") from None


def _as_dict(settings: Settings) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(settings)
