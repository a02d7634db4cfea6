"""The attnkit HTTP API (FastAPI): routes, limits, error model, authentication and metrics.

Routes: ``GET /health``, ``GET /v1/mechanisms``, ``POST /v1/attention/{mechanism}``,
``POST /v1/attention/{mechanism}/scores`` (the attention weights, the spec's ``attentionScores``),
``POST /v1/batch``, ``GET /metrics`` (Prometheus text) and the OpenAPI docs at ``/docs``. Body formats
are described in :mod:`attnkit.server.codec`.

Every computation (decoding the body, the forward pass, encoding the answer) runs on a thread pool of
``max_concurrency`` threads, off the event loop; NumPy releases the GIL, so computations overlap.
At most ``queue`` requests wait for a slot, one more is answered 503 with ``Retry-After``; a request
that is not answered within ``request_timeout_s`` (queue time included) gets 504. Errors are JSON
``{"error": {"code", "message", "field"}}``: attnkit's own errors (``ShapeError``, ``ConfigError``,
``DTypeError``, ``NonFiniteError``) are 422, malformed bodies 400, oversized ones 413, an unknown
mechanism 404. The server treats every other exception as its own bug: 500, logged, and it goes on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hmac
import json
import logging
import math
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..errors import AttentionError, ConfigError, DTypeError, NonFiniteError, ShapeError
from ..mechanisms import registry
from . import codec, model_metrics
from .codec import ApiError
from .kserve import router as kserve_router
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics
from .models import DEFAULT_SEED, ModelRepository, adhoc_options
from .models import router as models_router
from .scores import WeightsLayout, estimate_elements, weights_layout
from .settings import Settings

__all__ = ["create_app", "app_factory", "ServerState"]

log = logging.getLogger("attnkit.server")

_OPEN_PATHS = frozenset({"/health", "/v2/health/live", "/v2/health/ready", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})
_REQUEST_KEYS = frozenset({"query", "keys", "values", "mask", "options", "encoding", "dtype"})
_FIELD_ALIASES = {
    "q": "query", "query": "query", "a": "query", "x": "query",
    "k": "keys", "key": "keys", "keys": "keys", "b": "keys",
    "v": "values", "value": "values", "values": "values", "c": "values",
    "mask": "mask",
}
_ERROR_CODES: tuple[tuple[type[Exception], str], ...] = (
    (ShapeError, "shape_error"),
    (DTypeError, "dtype_error"),
    (NonFiniteError, "non_finite"),
    (ConfigError, "config_error"),
    (AttentionError, "attention_error"),
)


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
    mask: Tensor | None = Field(None, description="bool: True = may attend; numbers: added to the scores")
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
                "application/json": {"schema": model.model_json_schema()},
                "application/x-npy": binary,
                "application/x-safetensors": binary,
                "application/octet-stream": binary,
            },
        },
        "responses": {
            "200": {
                "description": f"{what} (format from Accept)",
                "content": {"application/json": {}, "application/octet-stream": {}, "application/x-npy": {},
                            "application/x-safetensors": {}},
            },
            **{str(s): {"description": d, "content": {"application/json": {"schema": ErrorBody.model_json_schema()}}}
               for s, d in ((400, "malformed body"), (401, "missing or wrong API key"), (404, "unknown mechanism"),
                            (413, "body, tensor or batch too large"), (415, "unsupported Content-Type"),
                            (422, "invalid shapes, dtypes, values or options; a mechanism without weights (scores)"), (503, "overloaded; retry"),
                            (504, "timed out"))},
        },
    }


# ---------------------------------------------------------------------- errors
def _field_of(message: str, option_names: set[str]) -> str | None:
    m = re.match(r"^\s*([A-Za-z_][\w.\[\]]*)(?:\s*,\s*[A-Za-z_][\w.]*)*\s*:", message)
    if not m:
        return None
    name = m.group(1)
    if name in _FIELD_ALIASES:
        return _FIELD_ALIASES[name]
    if name == "type":
        return "mechanism"
    if name in option_names:
        return f"options.{name}"
    return name


def attention_error(exc: AttentionError, option_names: set[str] = frozenset()) -> ApiError:  # type: ignore[assignment]
    """Map an attnkit error to a 422 answer that names the request field."""
    code = next(c for t, c in _ERROR_CODES if isinstance(exc, t))
    message = str(exc)
    return ApiError(422, code, message, _field_of(message, set(option_names)))


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


# ---------------------------------------------------------------------- state
class ServerState:
    """What one server process holds: settings, metrics, the compute pool, the mechanism cache."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.executor = ThreadPoolExecutor(max_workers=settings.max_concurrency, thread_name_prefix="attnkit-compute")
        self._slots: asyncio.Semaphore | None = None
        self._cache: collections.OrderedDict[tuple[str, str], Any] = collections.OrderedDict()
        self._cache_lock = threading.Lock()

    # ------------------------------------------------------------ concurrency
    @property
    def slots(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.settings.max_concurrency)
        return self._slots

    async def run(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the compute pool within the concurrency, queue and time limits."""
        s = self.settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.request_timeout_s
        m = self.metrics
        if m.running >= s.max_concurrency and m.waiting >= s.queue:
            raise ApiError(
                503, "overloaded", f"server busy: {m.running} computations running and {m.waiting} waiting; retry shortly",
                headers={"Retry-After": "1"},
            )
        m.waiting += 1
        try:
            await asyncio.wait_for(self.slots.acquire(), timeout=max(deadline - loop.time(), 0.0))
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"no computation slot became free within {s.request_timeout_s:g} s") from None
        finally:
            m.waiting -= 1
        m.running += 1
        fut = loop.run_in_executor(self.executor, fn)

        def done(f: asyncio.Future[Any]) -> None:
            m.running -= 1
            self.slots.release()
            if not f.cancelled():
                f.exception()  # mark retrieved: a timed-out computation's error is not ours to report

        fut.add_done_callback(done)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout=max(deadline - loop.time(), 0.001))
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"the computation did not finish within {s.request_timeout_s:g} s") from None

    # ------------------------------------------------------------ mechanisms
    def mechanism(self, name: Any, options: Any, where: str = "") -> tuple[Any, set[str]]:
        """A constructed mechanism for ``(name, options)``, from the LRU cache when possible."""
        if not isinstance(name, str) or not name:
            raise ApiError(422, "bad_request", f"{where}mechanism: expected a mechanism name", f"{where}mechanism")
        try:
            cls = registry.get(name)
        except ConfigError:
            raise ApiError(
                404, "unknown_mechanism", f"mechanism: unknown mechanism {name[:80]!r}; expected one of {', '.join(registry.names())}",
                f"{where}mechanism",
            ) from None
        if not isinstance(options, dict):
            raise ApiError(422, "bad_request", f"{where}options: expected a JSON object, got {type(options).__name__}", f"{where}options")
        specs = _specs(cls)
        names = set(specs)
        clean: dict[str, Any] = {}
        for key, value in options.items():
            field = f"{where}options.{key}"
            if not _option_value_ok(value):
                raise ApiError(
                    422, "config_error",
                    f"{key}: expected a number, bool, string or null (or a list of them), got {type(value).__name__}", field,
                )
            if key in specs:
                try:
                    value = registry.coerce_option(specs[key], value)
                except AttentionError as exc:
                    raise ApiError(422, "config_error", str(exc), field) from None
            if key != "seed" and _too_big(value, self.settings.max_option_int):
                raise ApiError(
                    422, "option_too_large", f"{key}: integer options are limited to {self.settings.max_option_int} on this server, got {value!r}",
                    field,
                )
            clean[key] = value
        if "seed" in specs and clean.get("seed") is None:
            clean["seed"] = DEFAULT_SEED  # issue 14: the same answer across restarts, workers and evictions
        try:
            cache_key = (cls.name, json.dumps(clean, sort_keys=True, default=repr))
        except (TypeError, ValueError):  # pragma: no cover - values were checked above
            cache_key = (cls.name, repr(sorted(clean.items())))
        with self._cache_lock:
            mech = self._cache.get(cache_key)
            if mech is not None:
                self._cache.move_to_end(cache_key)
                return mech, names
        try:
            mech = registry.create(cls.name, **clean)
        except AttentionError as exc:
            err = attention_error(exc, names)
            if where and err.field:
                err.field = where + err.field
            raise err from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise ApiError(422, "config_error", f"options: {cls.name} rejected the options ({exc})", f"{where}options") from None
        except MemoryError:
            raise ApiError(413, "too_large", "options: the mechanism's weights do not fit in memory", f"{where}options") from None
        with self._cache_lock:
            self._cache[cache_key] = mech
            while len(self._cache) > self.settings.cache_size:
                self._cache.popitem(last=False)
        return mech, names

    def forward(self, mech: Any, tensors: Mapping[str, np.ndarray], names: set[str], where: str = "") -> np.ndarray:
        q, k, v, mask = (tensors.get(f) for f in codec.TENSOR_FIELDS)
        if q is None:
            raise ApiError(422, "bad_request", f"{where}query: required", f"{where}query")
        if (k is None) != (v is None):
            missing = "values" if v is None else "keys"
            raise ApiError(422, "bad_request", f"{where}{missing}: pass both keys and values, or neither (self-attention)", f"{where}{missing}")
        return self._call(mech, lambda: mech.forward(q, k, v, mask=mask), names, where)

    def _call(self, mech: Any, fn: Callable[[], Any], names: set[str], where: str = "") -> np.ndarray:
        """Run ``fn`` (a forward or weights call of ``mech``), mapping its errors to API errors."""
        try:
            out = fn()
        except AttentionError as exc:
            err = attention_error(exc, names)
            if where and err.field:
                err.field = where + err.field
            raise err from None
        except MemoryError:
            raise ApiError(413, "too_large", "the computation does not fit in memory; send smaller tensors", where or None) from None
        except (ValueError, TypeError, IndexError) as exc:
            # the mechanism failed to validate something a client sent: still the client's input
            log.warning("%s: unvalidated input reached the kernel", mech.name, exc_info=True)
            raise ApiError(422, "invalid_input", f"{mech.name} could not use these inputs ({str(exc)[:200]})", where or None) from None
        out = np.asarray(out[0] if isinstance(out, tuple) else out)
        if out.dtype.kind == "f" and out.size and not np.isfinite(out).all():
            raise ApiError(
                422, "non_finite_output", "the output holds NaN or infinity (inputs so large that the scores overflow?)", where or None
            )
        return out

    def layout(self, mech: Any, budget: int) -> WeightsLayout | None:
        """The weights layout of ``mech``, from the layout it declares (see :mod:`.scores`)."""
        return weights_layout(mech)

    def scores(self, mech: Any, tensors: Mapping[str, np.ndarray], names: set[str]) -> np.ndarray:
        """The attention weights of ``mech`` for the request's query, keys (default: the query) and mask,
        refused (413) before any work when they would hold more than ``max_elements`` numbers."""
        q, k, v, mask = (tensors.get(f) for f in codec.TENSOR_FIELDS)
        if q is None:
            raise ApiError(422, "bad_request", "query: required", "query")
        if v is not None and k is None:
            raise ApiError(422, "shape_error", "keys: pass keys when values are given (weights depend on the keys only)", "keys")
        if not mech.has_attention_weights:
            with_weights = [n for n in registry.names() if registry.get(n).has_attention_weights]
            raise ApiError(
                422, "no_weights",
                f"mechanism: {mech.name!r} exposes no attention weights; mechanisms with weights: {', '.join(with_weights)}", "mechanism",
            )
        limit = self.settings.max_elements
        kk = q if k is None else k
        layout = self.layout(mech, 3 * max(q.size, kk.size, 0 if v is None else v.size, 1))
        if layout is None:
            # one position of these options is wider than the request's tensors: the mechanism refuses
            # them while validating, before any work (an unexpected success is still bounded below)
            n = 0
        else:
            n = estimate_elements(layout, q.shape, kk.shape, None if mask is None else mask.shape)
        if n > limit:
            raise ApiError(
                413, "too_many_elements",
                f"query, keys: the attention weights would hold {n} elements (batch x heads x Lq x Lk), "
                f"at most {limit} (max_elements) on this server; send shorter sequences", "query",
            )
        out = self._call(mech, lambda: mech.attention_weights(q, k, mask=mask), names)
        if out.size > limit:  # a layout the probe did not foresee: still never answer more than the limit
            raise ApiError(
                413, "too_many_elements", f"query, keys: the attention weights hold {out.size} elements, at most {limit} (max_elements)",
                "query",
            )
        return out

    # ------------------------------------------------------------ one request
    def attention(
        self, name: str, media: str, body: bytes, headers: Mapping[str, str], query: Mapping[str, str], accept: str,
        scores: bool = False,
    ) -> tuple[bytes, dict[str, str]]:
        """One request to ``/v1/attention/{name}`` (``scores=False``) or ``/v1/attention/{name}/scores``."""
        t0 = time.perf_counter()
        s = self.settings
        encoding = "list"
        options: dict[str, Any] = dict(query)
        if media == codec.JSON:
            doc = codec.parse_json(body)
            tensors, body_options, encoding = _json_request(doc, s.max_elements)
            options.update(body_options)
        elif media == codec.NPY:
            tensors = codec.decode_npy_stream(body, s.max_elements)
        elif media == codec.SAFETENSORS:
            tensors = codec.decode_safetensors(body, s.max_elements)
        else:
            tensors = codec.decode_octet(body, headers, s.max_elements)
        options = _inferred_options(name, options, tensors, s.max_option_int)
        mech, names = self.mechanism(name, options)
        out = self.scores(mech, tensors, names) if scores else self.forward(mech, tensors, names)
        elapsed = (time.perf_counter() - t0) * 1e3
        content, out_headers = codec.encode_output(out, accept, encoding=encoding, extra={"mechanism": mech.name, "elapsed_ms": elapsed})
        out_headers["X-Attnkit-Elapsed-Ms"] = f"{elapsed:.3f}"
        return content, out_headers

    def batch(self, body: bytes) -> bytes:
        doc = codec.parse_json(body)
        if not isinstance(doc, dict):
            raise ApiError(422, "bad_request", f"body: expected a JSON object with 'requests', got {type(doc).__name__}", "body")
        unknown = sorted(set(doc) - {"requests", "encoding"})
        if unknown:
            raise ApiError(422, "bad_request", f"{unknown[0]}: unknown key; a batch has requests and encoding", unknown[0])
        items = doc.get("requests")
        if not isinstance(items, list):
            raise ApiError(422, "bad_request", "requests: expected a list of request objects", "requests")
        if len(items) > self.settings.max_batch_items:
            raise ApiError(
                413, "too_many_items", f"requests: at most {self.settings.max_batch_items} items per batch, got {len(items)}", "requests"
            )
        encoding = doc.get("encoding", "list")
        if encoding not in ("list", "base64"):
            raise ApiError(422, "bad_request", f"encoding: expected 'list' or 'base64', got {codec._short(encoding)}", "encoding")
        results = []
        for i, item in enumerate(items):
            where = f"requests[{i}]."
            try:
                if not isinstance(item, dict):
                    raise ApiError(422, "bad_request", f"{where[:-1]}: expected an object, got {type(item).__name__}", where[:-1])
                rest = {k: v for k, v in item.items() if k != "mechanism"}
                tensors, options, item_enc = _json_request(rest, self.settings.max_elements, where)
                if isinstance(item.get("mechanism"), str):
                    options = _inferred_options(item["mechanism"], options, tensors, self.settings.max_option_int, where)
                mech, names = self.mechanism(item.get("mechanism"), options, where)
                out = self.forward(mech, tensors, names, where)
                body_i, _ = codec.encode_output(out, codec.JSON, encoding=item_enc if "encoding" in item else encoding)
                results.append({"status": 200, "mechanism": mech.name, **codec.parse_json(body_i)})
            except ApiError as err:
                if err.field and not err.field.startswith("requests["):
                    err.field = where + err.field
                results.append({"status": err.status, **err.body()})
        return codec.dumps({"results": results})


def _inferred_options(
    name: str, options: dict[str, Any], tensors: Mapping[str, np.ndarray], max_option: int, where: str = ""
) -> dict[str, Any]:
    """Options the tensors' shapes determine, filled in (issue 14); a conflict is a 422 naming both."""
    try:
        return adhoc_options(name, options, tensors, max_option)
    except AttentionError as exc:
        err = attention_error(exc, set(options) | {"heads", "dim"})
        if where and err.field:
            err.field = where + err.field
        raise err from None


@functools.lru_cache(maxsize=256)
def _specs(cls: type) -> dict[str, registry.OptionSpec]:
    """Option specs of a mechanism class by name (cached: building them reads type hints)."""
    return {sp.name: sp for sp in registry.option_specs(cls)}


def _option_value_ok(value: Any, depth: int = 0) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return not (isinstance(value, float) and not math.isfinite(value))
    if isinstance(value, list) and depth < 2 and len(value) <= 1024:
        return all(_option_value_ok(v, depth + 1) for v in value)
    return False


def _too_big(value: Any, limit: int) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) > limit
    if isinstance(value, float):
        return abs(value) > 1e300
    if isinstance(value, list):
        return any(_too_big(v, limit) for v in value)
    return False


def _json_request(doc: Any, max_elements: int, where: str = "") -> tuple[dict[str, np.ndarray], dict[str, Any], str]:
    if not isinstance(doc, dict):
        raise ApiError(422, "bad_request", f"{where or 'body'}: expected a JSON object with query, keys, values", where[:-1] or "body")
    unknown = sorted(set(doc) - _REQUEST_KEYS)
    if unknown:
        raise ApiError(
            422, "bad_request", f"{where}{unknown[0]}: unknown key; expected {', '.join(sorted(_REQUEST_KEYS))}", where + unknown[0]
        )
    if doc.get("query") is None:
        raise ApiError(422, "bad_request", f"{where}query: required", where + "query")
    dtype_name = doc.get("dtype", "float32")
    if dtype_name not in ("float32", "float64"):
        raise ApiError(422, "bad_request", f"{where}dtype: expected 'float32' or 'float64', got {codec._short(dtype_name)}", where + "dtype")
    encoding = doc.get("encoding", "list")
    if encoding not in ("list", "base64"):
        raise ApiError(422, "bad_request", f"{where}encoding: expected 'list' or 'base64', got {codec._short(encoding)}", where + "encoding")
    options = doc.get("options", {})
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ApiError(422, "bad_request", f"{where}options: expected a JSON object, got {type(options).__name__}", where + "options")
    tensors = {}
    for f in codec.TENSOR_FIELDS:
        if doc.get(f) is not None:
            try:
                tensors[f] = codec.decode_json_tensor(doc[f], f, max_elements, np.dtype(dtype_name))
            except ApiError as err:
                err.field = where + (err.field or f)
                raise
    return tensors, options, encoding


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it grows past ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            n = int(length)
        except ValueError:
            raise ApiError(400, "bad_request", f"Content-Length: expected an integer, got {length[:40]!r}", "Content-Length") from None
        if n > limit:
            raise ApiError(413, "body_too_large", f"body: at most {limit} bytes, got {n}", "body")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"body: at most {limit} bytes, got more", "body")
        chunks.append(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------- middleware
class _Guard:
    """API key check and per-route metrics, as a plain ASGI middleware (cheap, and sees every answer)."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state
        key = state.settings.api_key
        self.key = key.encode() if key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500
        path = scope.get("path", "")

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            if self.key is not None and path not in _OPEN_PATHS and not self._authorised(scope):
                err = ApiError(401, "unauthorized", "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                               headers={"WWW-Authenticate": "Bearer"})
                self.state.metrics.error(_route_of(scope), err.code)
                await error_response(err)(scope, receive, send_wrapper)
                return
            await self.app(scope, receive, send_wrapper)
        finally:
            self.state.metrics.observe(_route_of(scope), scope.get("method", ""), status, time.perf_counter() - t0)

    def _authorised(self, scope: Scope) -> bool:
        assert self.key is not None
        given = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
            elif name == b"x-api-key":
                given = value.strip()
        return hmac.compare_digest(given, self.key)


def _route_of(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


# ---------------------------------------------------------------------- the app
def create_app(settings: Settings | None = None) -> FastAPI:
    """The attnkit FastAPI application for ``settings`` (default: from ``ATTNKIT_SERVER_*`` variables)."""
    settings = settings or Settings.from_env()
    state = ServerState(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry.names()  # import every mechanism before the first request
        yield
        state.executor.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(
        title="attnkit",
        version=__version__,
        summary="Attention mechanisms over HTTP: exact/flash, multi-head, cross, linear, hyperbolic, neighbour and more.",
        lifespan=lifespan,
    )
    app.state.attnkit = state
    # issue 14: the model repository and the Open Inference Protocol (routes in .models and .kserve)
    app.state.models = ModelRepository(settings.models_dir, settings.models)
    app.include_router(models_router)
    app.include_router(kserve_router)

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
        err = ApiError(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), None, exc.headers)
        return record(request, err)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "path", "query")) or None
        return record(request, ApiError(422, "validation_error", str(first.get("msg", "invalid request")), field))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return record(request, ApiError(500, "internal", f"internal server error ({type(exc).__name__}); this is a bug in attnkit"))

    @app.get("/health", summary="liveness and version")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get("/v1/mechanisms", summary="registered mechanisms, with their options, types and defaults")
    async def mechanisms() -> Response:
        items = []
        for name in registry.names():
            cls = registry.get(name)
            items.append({
                "name": name,
                "class": cls.__name__,
                "summary": getattr(cls, "summary", ""),
                "options": [spec.as_dict() for spec in registry.option_specs(cls)],
                "has_scores": cls.has_attention_weights,
            })
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
        media = codec.media_type(request.headers.get("content-type"))
        if media is None:
            raise ApiError(
                415, "unsupported_media_type",
                f"Content-Type: expected application/json, application/x-npy, application/x-safetensors or application/octet-stream, "
                f"got {(request.headers.get('content-type') or 'none')[:80]!r}", "Content-Type",
            )
        accept = codec.choose_response_type(request.headers.get("accept"))
        body = await read_body(request, settings.max_body_bytes)
        work = functools.partial(state.attention, mechanism, media, body, request.headers, request.query_params, accept, scores)
        content, headers = await state.run(work)
        return Response(content, media_type=accept, headers=headers)

    @app.post(
        "/v1/batch",
        summary="many attention requests in one body; results in order, each with its own status",
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": BatchRequest.model_json_schema()}}}},
        response_class=Response,
    )
    async def batch(request: Request) -> Response:
        media = codec.media_type(request.headers.get("content-type"))
        if media != codec.JSON:
            raise ApiError(415, "unsupported_media_type", "Content-Type: a batch is sent as application/json", "Content-Type")
        codec.choose_response_type(request.headers.get("accept"), allowed=(codec.JSON,))
        body = await read_body(request, settings.max_body_bytes)
        content = await state.run(functools.partial(state.batch, body))
        return Response(content, media_type="application/json")

    @app.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response)
    async def metrics() -> Response:
        # issue 14: per-model metrics (summed over --workers processes) after the process's own
        return Response(state.metrics.render() + model_metrics.render(), media_type=METRICS_CONTENT_TYPE)

    app.add_middleware(_Guard, state=state)
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
