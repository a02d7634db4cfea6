"""The attnkit HTTP API (FastAPI): routes, limits, error model, authentication and metrics.

Routes: ``GET /health``, ``GET /v1/mechanisms``, ``POST /v1/attention/{mechanism}``,
``POST /v1/attention/{mechanism}/scores`` (the attention weights, the spec's ``attentionScores``),
``POST /v1/batch``, ``GET /metrics`` (Prometheus text) and the OpenAPI docs at ``/docs``. Body formats
are described in :mod:`attnkit.server.codec`.

Every computation (decoding the body, the forward pass, encoding the answer; :mod:`.compute`) runs off
the event loop in one of ``max_concurrency`` slots: in a worker process that is killed and replaced
when it runs past the time limit (the default), or on a thread (:mod:`.isolation`). Before computing,
the work a request asks for is estimated from its shapes and bounded (:mod:`.admission`). At most
``queue`` requests wait for a slot, one more is answered 503 with ``Retry-After``; a request that is not
answered within ``request_timeout_s`` (queue time included) gets 504. Errors are JSON
``{"error": {"code", "message", "field"}}`` and always name the ``field`` at fault (protocol-level
errors too, see :mod:`.protocol`): attnkit's own errors (``ShapeError``, ``ConfigError``, ``DTypeError``,
``NonFiniteError``) are 422, malformed bodies 400, oversized ones or too much work 413, slow clients 408,
an unknown mechanism 404. The server treats every other exception as its own bug: 500, logged, and it
goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Literal
from urllib.parse import parse_qsl

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..errors import AttentionError
from ..mechanisms import registry
from . import codec, kserve, protocol
from .codec import ApiError
from .compute import attention_error
from .docs import install_docs, install_openapi, ref
from .inline import InlineLane
from .isolation import ProcessRunner, ThreadRunner, _TimedOut, make_runner
from .kserve import router as kserve_router
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics
from .metrics import render_all as render_metrics
from .models import ModelRepository
from .models import router as models_router
from .settings import Settings

__all__ = ["create_app", "app_factory", "ServerState"]

log = logging.getLogger("attnkit.server")

_OPEN_PATHS = frozenset({"/health", "/v2/health/live", "/v2/health/ready", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
_OPEN_PREFIXES = ("/docs/assets/",)


# ---------------------------------------------------------------------- OpenAPI models (documentation)
class Base64Tensor(BaseModel):
    """A tensor as little-endian bytes in base64 (bool: one byte per element, 0 or 1)."""

    data: str
    shape: list[int]
    dtype: Literal["float16", "float32", "float64", "bool"] = "float32"


Tensor = list[Any] | float | Base64Tensor


class AttentionRequest(BaseModel):
    """``POST /v1/attention/{mechanism}`` as JSON. Keys and values default to the query."""

    query: Tensor
    keys: Tensor | None = None
    values: Tensor | None = None
    mask: Tensor | None = Field(None, description="bool: True = may attend; a float mask added to the scores needs mask_kind 'additive'")
    edge_features: Tensor | None = Field(None, description="edge_featured only: (..., k, edge_dim) features of the edges to the keys")
    mask_kind: Literal["bool", "additive"] | None = Field(
        None, description="'additive' marks a numeric mask as added to the scores; integer or unmarked numeric masks are refused (422)"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="constructor options of the mechanism")
    encoding: Literal["list", "base64"] = Field("list", description="how the JSON answer carries the output")
    dtype: Literal["float32", "float64"] = Field("float32", description="dtype that nested lists are read as")


class ScoresRequest(AttentionRequest):
    """``POST /v1/attention/{mechanism}/scores`` as JSON: the attention weights for query and keys.

    Keys default to the query. ``values`` is only read by mechanisms whose weights come from a forward
    pass (multi-head attention with ``vdim`` different from ``kdim``) and defaults to the keys.
    """

    encoding: Literal["list", "base64"] = Field("list", description="how the JSON answer carries the weights")


class BatchItem(AttentionRequest):
    mechanism: str


class BatchRequest(BaseModel):
    requests: list[BatchItem]
    encoding: Literal["list", "base64"] = "list"


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


def _binary_body_doc(model: type[BaseModel] = AttentionRequest, what: str = "the attention output") -> dict[str, Any]:
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": ref(model)},
                "application/x-npy": binary,
                "application/x-safetensors": binary,
                "application/octet-stream": binary,
            },
        },
        "responses": {
            "200": {
                "description": f"{what} (format from Accept)",
                "content": {"application/json": {}, "application/octet-stream": {}, "application/x-npy": {}, "application/x-safetensors": {}},
            },
            **error_responses(400, 401, 404, 406, 408, 413, 415, 422, 503, 504),
        },
    }


_ERROR_DOCS = {
    400: "malformed body or request", 401: "missing or wrong API key", 404: "unknown mechanism or route",
    406: "no acceptable answer format (Accept)", 408: "request head or body not received in time",
    413: "body, tensor or batch too large, or too much work", 415: "unsupported Content-Type",
    422: "invalid shapes, dtypes, values or options; a mechanism without weights (scores)", 503: "overloaded or worker lost; retry",
    504: "timed out",
}  # fmt: skip


def error_responses(*statuses: int) -> dict[str, Any]:
    """OpenAPI ``responses`` entries for these error statuses, each with the JSON error body."""
    return {str(s): {"description": _ERROR_DOCS[s], "content": {"application/json": {"schema": ref(ErrorBody)}}} for s in statuses}


# ---------------------------------------------------------------------- errors
def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


# ---------------------------------------------------------------------- state
class ServerState:
    """What one server process holds: settings, metrics, the slots and the runner of computations."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.runner = make_runner(settings)
        # tiny requests are computed on the event loop (see .inline); under thread isolation it shares the runner's Compute
        self.inline = InlineLane(settings, self.runner.compute if isinstance(self.runner, ThreadRunner) else None)
        self._slots: asyncio.Semaphore | None = None

    @property
    def slots(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.settings.max_concurrency)
        return self._slots

    async def run(self, method: str, *args: Any) -> Any:
        """Run ``Compute.<method>(*args)`` within the concurrency, queue and time limits (see :mod:`.isolation`)."""
        s = self.settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.request_timeout_s
        m = self.metrics
        if m.running >= s.max_concurrency and m.waiting >= s.queue:
            raise ApiError(
                503, "overloaded", f"body: server busy: {m.running} computations running and {m.waiting} waiting; retry shortly",
                "body", headers={"Retry-After": "1"},
            )  # fmt: skip
        if self.slots.locked():
            m.waiting += 1
            try:
                await asyncio.wait_for(self.slots.acquire(), timeout=max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                raise ApiError(504, "timeout", f"body: no computation slot became free within {s.request_timeout_s:g} s", "body") from None
            finally:
                m.waiting -= 1
        else:
            await self.slots.acquire()  # free: returns at once (no wait_for task)
        m.running += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                m.running -= 1
                self.slots.release()

        try:
            return await self.runner.call(method, args, max(deadline - loop.time(), 0.001), release)
        except _TimedOut:
            stopped = "stopped" if isinstance(self.runner, ProcessRunner) else "still running; its slot frees when it ends"
            raise ApiError(504, "timeout", f"body: the computation did not finish within {s.request_timeout_s:g} s ({stopped})", "body") from None


async def read_body(request: Request, limit: int, chunk_timeout_s: float = 30.0) -> bytes:
    """The request body, refusing (413) as soon as it grows past ``limit`` bytes and (408) when no part
    of it arrives for ``chunk_timeout_s`` seconds (:func:`receive_body` on the request's ASGI ``receive``:
    one timer per chunk instead of a task; a client gone before the end is Starlette's ``ClientDisconnect``)."""
    try:
        return await receive_body(request.receive, request.headers.get("content-length"), limit, chunk_timeout_s)
    except _Disconnected:
        raise ClientDisconnect from None


class _Disconnected(Exception):
    """The client went away before its request body was complete."""


async def receive_body(receive: Receive, length: str | None, limit: int, chunk_timeout_s: float) -> bytes:
    """:func:`read_body` on the raw ASGI ``receive``: the same 400/413/408 answers, one timer per chunk
    instead of a task (the body of a small request usually arrives with its head, in one message)."""
    if length is not None:
        try:
            n = int(length)
        except ValueError:
            raise ApiError(400, "bad_request", f"Content-Length: expected an integer, got {length[:40]!r}", "Content-Length") from None
        if n > limit:
            raise ApiError(413, "body_too_large", f"body: at most {limit} bytes, got {n}", "body")
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    chunks: list[bytes] = []
    size = 0
    while True:
        fired = False

        def expire() -> None:
            nonlocal fired
            fired = True
            task.cancel()

        timer = loop.call_later(chunk_timeout_s, expire)
        try:
            message = await receive()
        except asyncio.CancelledError:
            if not fired:
                raise
            if hasattr(task, "uncancel"):
                task.uncancel()
            raise ApiError(
                408, "body_timeout", f"body: no data for {chunk_timeout_s:g} s while reading the request body", "body",
                headers={"Connection": "close"},
            ) from None  # fmt: skip
        finally:
            timer.cancel()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"body: at most {limit} bytes, got more", "body")
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def attention_answer(
    state: ServerState, mechanism: str, scores: bool, headers: Mapping[str, str], query: dict[str, str], body: Callable[[], Awaitable[bytes]]
) -> tuple[bytes, str, dict[str, str]]:
    """Body, media type and headers of the answer to ``POST /v1/attention/{mechanism}[/scores]``
    (``headers``: the request's, names in lower case). Tiny requests are computed inline (:mod:`.inline`),
    the others in the compute runner."""
    content_type = headers.get("content-type")
    media = codec.media_type(content_type)
    if media is None:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type: expected application/json, application/x-npy, application/x-safetensors or application/octet-stream, "
            f"got {(content_type or 'none')[:80]!r}",
            "Content-Type",
        )
    accept = codec.choose_response_type(headers.get("accept"))
    raw = await body()
    attnkit_headers = {k: v for k, v in headers.items() if k.startswith("x-attnkit-")}
    answer, key = state.inline.attention(mechanism, media, raw, attnkit_headers, query, accept, scores)
    if answer is None:
        answer = await state.run("attention", mechanism, media, raw, attnkit_headers, query, accept, scores)
        state.inline.worker_done(key, answer[1])
    return answer[0], accept, answer[1]


@functools.lru_cache(maxsize=256)
def _parsed_query(raw: bytes) -> tuple[tuple[str, str], ...]:
    return tuple(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))


def _query(raw: bytes) -> dict[str, str]:
    """The query string's parameters (the last of repeated ones); a short one is parsed once and remembered."""
    return dict(_parsed_query(raw) if len(raw) <= 512 else _parsed_query.__wrapped__(raw))


def _asgi_headers(scope: Scope) -> dict[str, str]:
    """The request headers, names in lower case (the first of repeated ones, as Starlette's ``get``)."""
    out: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        key = name.decode("latin-1").lower()
        if key not in out:
            out[key] = value.decode("latin-1")
    return out


async def _send_bytes(send: Send, content: bytes, media: str, headers: Mapping[str, str], status: int = 200) -> None:
    raw = [(b"content-length", str(len(content)).encode()), (b"content-type", media.encode("latin-1"))]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": content})


# ---------------------------------------------------------------------- middleware
class _App(FastAPI):
    """FastAPI whose hot routes skip the middleware stack: a ``POST /v1/attention/...`` or ``POST
    /v2/models/{name}[/versions/{version}]/infer`` goes straight to :meth:`_Guard.fast_route` (which
    checks the key, answers every error itself and records the metrics), sparing it the routing, error,
    telemetry and body-limit layers that it would only pass through. Off when CORS is on (CORS must wrap
    every answer) or a ``root_path`` is set."""

    attnkit_fast: Callable[[Scope, Receive, Send], Awaitable[bool]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.attnkit_fast
        if fast is not None and scope["type"] == "http" and scope.get("method") == "POST" and await fast(scope, receive, send):
            return
        await super().__call__(scope, receive, send)


class _Guard:
    """API key check and per-route metrics, as a plain ASGI middleware (cheap, and sees every answer)."""

    def __init__(self, app: ASGIApp, state: ServerState, application: Any = None) -> None:
        self.app = app
        self.state = state
        self.application = application  # the FastAPI app (its state: models, batcher), for fast_route
        key = state.settings.api_key
        self.key = key.encode() if key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if scope.get("method") == "POST" and path.startswith(_ATTENTION) and await self.attention_route(scope, receive, send):
            return
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            is_open = path in _OPEN_PATHS or path.startswith(_OPEN_PREFIXES)
            if self.key is not None and not is_open and not self._authorised(scope):
                await self._unauthorised(scope, receive, send_wrapper)
                return
            await self.app(scope, receive, send_wrapper)
        finally:
            self.state.metrics.observe(_route_of(scope), scope.get("method", ""), status, time.perf_counter() - t0)

    async def _unauthorised(self, scope: Scope, receive: Receive, send: Send) -> None:
        err = ApiError(
            401,
            "unauthorized",
            "Authorization: missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            "Authorization",
            headers={"WWW-Authenticate": "Bearer"},
        )
        self.state.metrics.error(_route_of(scope), err.code)
        await error_response(err)(scope, receive, send)

    async def fast_route(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer a ``POST`` on one of the hot paths (:meth:`attention_route`, :meth:`infer_route`) and
        return True, or return False at once for any other path."""
        path = scope["path"]
        if path.startswith(_ATTENTION):
            return await self.attention_route(scope, receive, send)
        if path.startswith(_MODELS) and path.endswith("/infer") and self.application is not None:
            return await self.infer_route(scope, receive, send)
        return False

    async def infer_route(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """``POST /v2/models/{name}[/versions/{version}]/infer`` (the Open Inference Protocol) as a raw ASGI
        handler: the same answer as the FastAPI routes of these paths (:func:`.kserve.infer_answer`), key
        check and route metrics included. Returns False at once for any other path."""
        parts = scope["path"].split("/")  # '', 'v2', 'models', name, 'infer' | name, 'versions', version, 'infer'
        if len(parts) == 5 and parts[3]:
            name, version, route = parts[3], None, _MODELS + "{name}/infer"
        elif len(parts) == 7 and parts[3] and parts[4] == "versions" and parts[5]:
            name, version, route = parts[3], parts[5], _MODELS + "{name}/versions/{version}/infer"
        else:
            return False
        t0 = time.perf_counter()
        status = 500
        try:
            if self.key is not None and not self._authorised(scope):
                route, status = _route_of(scope), 401
                await self._unauthorised(scope, receive, send)
                return True
            length = header_length = None
            for key, value in scope.get("headers", ()):
                key = key.lower()
                if key == b"content-length" and length is None:
                    length = value.decode("latin-1")
                elif key == b"inference-header-content-length" and header_length is None:
                    header_length = value.decode("latin-1")
            s = self.state.settings
            try:
                response = await kserve.infer_answer(
                    self.application, name, version, header_length, lambda: receive_body(receive, length, s.max_body_bytes, 30.0)
                )
            except _Disconnected:
                return True
            except Exception as exc:  # noqa: BLE001 - mapped as the app's exception handlers map it
                err = self._internal(scope, exc)
                self.state.metrics.error(route, err.code)
                await error_response(err)(scope, receive, send)
                status = err.status
                return True
            await response(scope, receive, send)
            status = response.status_code
        finally:
            self.state.metrics.observe(route, "POST", status, time.perf_counter() - t0)
        return True

    @staticmethod
    def _internal(scope: Scope, exc: Exception) -> ApiError:
        if isinstance(exc, ApiError):
            return exc
        if isinstance(exc, AttentionError):
            return attention_error(exc)
        log.exception("internal error on %s", scope.get("path", ""))
        return ApiError(500, "internal", f"internal server error ({type(exc).__name__}); this is a bug in attnkit", "body")

    async def attention_route(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer a ``POST /v1/attention/{mechanism}[/scores]`` (key check, metrics and all) and return
        True, or return False at once for any other path. The application calls it before FastAPI's
        middleware stack (see :class:`_App`), which a request on this path would only pass through."""
        path = scope["path"]
        name, sep, tail = path[len(_ATTENTION) :].partition("/")
        if not name or (sep and tail != "scores"):
            return False
        t0 = time.perf_counter()
        route = _ATTENTION + ("{mechanism}/scores" if sep else "{mechanism}")
        status = 500
        try:
            if self.key is not None and not self._authorised(scope):
                route, status = _route_of(scope), 401
                await self._unauthorised(scope, receive, send)
            else:
                status = await self._attention(scope, receive, send, name, bool(sep), route)
        finally:
            self.state.metrics.observe(route, "POST", status, time.perf_counter() - t0)
        return True

    async def _attention(self, scope: Scope, receive: Receive, send: Send, name: str, scores: bool, route: str) -> int:
        """``POST /v1/attention/{mechanism}[/scores]`` as a raw ASGI handler: no routing, dependency
        solving, request object or pydantic on the path every small request takes (the FastAPI routes
        of the same paths document it in the OpenAPI schema and answer the same). Returns the status
        sent (500 when the client went away first)."""
        state = self.state
        s = state.settings
        headers = _asgi_headers(scope)
        query = _query(scope.get("query_string", b""))
        try:
            content, media, out_headers = await attention_answer(
                state, name, scores, headers, query,
                lambda: receive_body(receive, headers.get("content-length"), s.max_body_bytes, s.body_timeout_s),
            )  # fmt: skip
        except _Disconnected:
            return 500
        except Exception as exc:  # noqa: BLE001 - mapped exactly as the app's exception handlers map it
            err = self._internal(scope, exc)
            state.metrics.error(route, err.code)
            await error_response(err)(scope, receive, send)
            return err.status
        await _send_bytes(send, content, media, out_headers)
        return 200

    def _authorised(self, scope: Scope) -> bool:
        assert self.key is not None
        given = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
            elif name == b"x-api-key":
                given = value.strip()
        return hmac.compare_digest(given, self.key)


_ATTENTION = "/v1/attention/"
_MODELS = "/v2/models/"


def _route_of(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


# ---------------------------------------------------------------------- the app
def create_app(settings: Settings | None = None) -> FastAPI:
    """The attnkit FastAPI application for ``settings`` (default: from ``ATTNKIT_SERVER_*`` variables)."""
    settings = settings or Settings.from_env()
    protocol.configure(settings.header_timeout_s)
    registry.names()  # import every mechanism before the first request (and before workers fork)
    state = ServerState(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if isinstance(state.runner, ProcessRunner):
            await asyncio.get_running_loop().run_in_executor(None, state.runner.start)
        yield
        state.runner.close()

    app = _App(
        title="attnkit",
        version=__version__,
        summary="Attention mechanisms over HTTP: exact/flash, multi-head, cross, linear, hyperbolic, neighbour and more.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.attnkit = state
    # issue 14: the model repository and the Open Inference Protocol (routes in .models and .kserve)
    app.state.models = ModelRepository(settings.models_dir, settings.models)
    app.include_router(models_router)
    app.include_router(kserve_router)
    install_openapi(app, [AttentionRequest, ScoresRequest, BatchRequest, ErrorBody])
    install_docs(app, "attnkit")

    def record(request: Request, err: ApiError) -> JSONResponse:
        state.metrics.error(_route_of(request.scope), err.code)
        return error_response(err)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return record(request, exc)

    @app.exception_handler(AttentionError)
    async def _attention_error(request: Request, exc: AttentionError) -> JSONResponse:
        return record(request, attention_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        field = {404: "path", 405: "method"}.get(exc.status_code, "request")
        err = ApiError(exc.status_code, codes.get(exc.status_code, "http_error"), f"{field}: {exc.detail}", field, exc.headers)
        return record(request, err)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query")) or "request"
        return record(request, ApiError(422, "validation_error", f"{field}: {first.get('msg', 'invalid request')}", field))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return record(request, ApiError(500, "internal", f"internal server error ({type(exc).__name__}); this is a bug in attnkit", "body"))

    @app.get("/health", summary="liveness and version")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get(
        "/v1/mechanisms", summary="registered mechanisms, with their options, types and defaults", openapi_extra={"responses": error_responses(401)}
    )
    async def mechanisms() -> Response:
        items = []
        for name in registry.names():
            cls = registry.get(name)
            aliases = registry.option_aliases(cls)
            items.append(
                {
                    "name": name,
                    "class": cls.__name__,
                    "summary": getattr(cls, "summary", ""),
                    "options": [{**spec.as_dict(), "aliases": aliases[spec.name]} for spec in registry.option_specs(cls)],
                    "has_scores": cls.has_attention_weights,
                }
            )
        return Response(json.dumps({"mechanisms": items}, default=_jsonable), media_type="application/json")

    @app.post(
        "/v1/attention/{mechanism}",
        summary="run one attention forward pass",
        description=codec.__doc__ or "",
        openapi_extra=_binary_body_doc(),
        response_class=Response,
    )
    async def attention(mechanism: str, request: Request) -> Response:
        return await _attention(mechanism, request, scores=False)

    @app.post(
        "/v1/attention/{mechanism}/scores",
        summary="the attention weights softmax(scores + mask) for query and keys: (..., heads, Lq, Lk)",
        description="The spec's attentionScores. Same bodies, options, limits and errors as /v1/attention/{mechanism}; keys "
        "default to the query. The weights are O(Lq*Lk): a request whose weights would exceed max_elements is refused (413) "
        "before any computation, and a mechanism without weights (has_scores false in /v1/mechanisms) is 422 no_weights.",
        openapi_extra=_binary_body_doc(ScoresRequest, "the attention weights"),
        response_class=Response,
    )
    async def attention_scores(mechanism: str, request: Request) -> Response:
        return await _attention(mechanism, request, scores=True)

    async def _attention(mechanism: str, request: Request, scores: bool) -> Response:
        # reached only when the _Guard middleware's raw handler of these paths is not in front (it answers them)
        headers = {k.lower(): v for k, v in request.headers.items()}
        content, media, out_headers = await attention_answer(
            state, mechanism, scores, headers, dict(request.query_params),
            lambda: read_body(request, settings.max_body_bytes, settings.body_timeout_s),
        )  # fmt: skip
        return Response(content, media_type=media, headers=out_headers)

    @app.post(
        "/v1/batch",
        summary="many attention requests in one body; results in order, each with its own status",
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref(BatchRequest)}}},
            "responses": {
                "200": {"description": "one result per request, each with its own status"},
                **error_responses(400, 401, 406, 408, 413, 415, 422, 503, 504),
            },
        },  # fmt: skip
        response_class=Response,
    )
    async def batch(request: Request) -> Response:
        media = codec.media_type(request.headers.get("content-type"))
        if media != codec.JSON:
            raise ApiError(415, "unsupported_media_type", "Content-Type: a batch is sent as application/json", "Content-Type")
        codec.choose_response_type(request.headers.get("accept"), allowed=(codec.JSON,))
        body = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
        content = await state.run("batch", body)
        return Response(content, media_type="application/json")

    @app.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response, openapi_extra={"responses": error_responses(401)})
    async def metrics() -> Response:
        # issue 14: route and per-model metrics, summed over the --workers processes
        return Response(render_metrics(state.metrics), media_type=METRICS_CONTENT_TYPE)

    app.add_middleware(_Guard, state=state)
    if not settings.cors_origins and not app.root_path:
        app.attnkit_fast = _Guard(app.router, state, app).fast_route
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["X-Attnkit-Shape", "X-Attnkit-Dtype", "X-Attnkit-Elapsed-Ms", "Retry-After"],
            max_age=600,
        )
    return app


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    return repr(value)


def app_factory() -> FastAPI:
    """Factory for ``uvicorn --factory attnkit.server.app:app_factory`` (``--workers N`` processes)."""
    return create_app(Settings.from_env())
