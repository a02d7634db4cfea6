"""``attnkit serve``: the Typer shell of :func:`attnkit.cli.serve.run_serve`."""

from __future__ import annotations

from typing import Annotated

import typer

from .._common import STATE
from .._flags import CONTEXT

app = typer.Typer()


@app.command("serve", context_settings=CONTEXT)
def serve(
    host: Annotated[str | None, typer.Option("--host", help="Interface (default: config \\[server] host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", "-p", help="TCP port (default: config, 8080).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Worker processes (default: config, 1).")] = None,
    max_body_bytes: Annotated[int | None, typer.Option("--max-body-bytes", help="Largest request body (bytes).")] = None,
    max_batch_items: Annotated[
        int | None,
        typer.Option("--max-batch-items", "--max-batch-size", help="Most items in one batch request."),
    ] = None,
    request_timeout_s: Annotated[float | None, typer.Option("--timeout", help="Time limit of one computation (seconds).")] = None,
    max_concurrency: Annotated[int | None, typer.Option("--max-concurrency", help="Computations at once (0 = one per CPU).")] = None,
    queue: Annotated[int | None, typer.Option("--queue", help="Requests that may wait for a slot.")] = None,
    limit: Annotated[
        list[str] | None,
        typer.Option("--limit", "-L", help="Any server setting KEY=VALUE (repeatable).", metavar="KEY=VALUE"),
    ] = None,
    models: Annotated[
        str | None,
        typer.Option("--models", help="Model repository: a directory of NAME.toml (+ NAME.safetensors) loaded at start.", metavar="DIR"),
    ] = None,
    max_batch_delay_ms: Annotated[
        float | None,
        typer.Option("--max-batch-delay-ms", help="Dynamic batching: wait before queued requests run beside a busy model (ms; if a slot is free)."),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="One model NAME=TYPE[:weights.safetensors] (repeatable).", metavar="NAME=TYPE[:WEIGHTS]"),
    ] = None,
    inline_max_flops: Annotated[
        float | None,
        typer.Option(
            "--inline-max-flops",
            help="Requests estimated at most this many floating-point operations are computed on the event loop, "
            "without the trip to a compute worker; 0 sends every request to the workers (default 1e6).",
            metavar="FLOPS",
        ),
    ] = None,
    http: Annotated[
        str | None,
        typer.Option(
            "--http",
            help="HTTP/1.1 parser: httptools (C, cheapest), h11 (pure Python), or auto: httptools when installed.",
            metavar="auto|httptools|h11",
        ),
    ] = None,
    loop: Annotated[
        str | None,
        typer.Option("--loop", help="Event loop: uvloop, asyncio, or auto: uvloop when installed.", metavar="auto|uvloop|asyncio"),
    ] = None,
) -> None:
    """Start the HTTP server (needs the `server` extra). Stop it with Ctrl-C."""
    from .. import serve as impl

    impl.run_serve(
        STATE,
        host=host,
        port=port,
        workers=workers,
        limits={
            "max_body_bytes": max_body_bytes,
            "max_batch_items": max_batch_items,
            "request_timeout_s": request_timeout_s,
            "max_concurrency": max_concurrency,
            "queue": queue,
            "models_dir": models,
            "max_batch_delay_ms": max_batch_delay_ms,
            "models": tuple(model) if model else None,
            "inline_max_flops": inline_max_flops,
            "http": http,
            "loop": loop,
        },
        extra=limit or [],
    )
