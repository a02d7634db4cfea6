"""The Open Inference Protocol (KServe v2, the protocol of NVIDIA Triton) over the model repository.

Routes: ``GET /v2`` (server metadata), ``GET /v2/health/live``, ``GET /v2/health/ready``,
``GET /v2/models/{name}`` (model metadata), ``GET /v2/models/{name}/ready`` and
``POST /v2/models/{name}/infer`` (also under ``/v2/models/{name}/versions/1/...``).

An inference request is JSON ``{"id", "parameters", "inputs": [{"name", "shape", "datatype", "data"}],
"outputs": [{"name": "output", "parameters": {"binary_data": true}}]}``. The inputs are the contract's
``query``, ``key``, ``value`` and ``mask`` with a leading batch axis (``query`` of a ``multi_head``
model is ``(batch, L, model_dim)``); ``key`` and ``value`` may be left out (self-attention) and
``mask`` is ``(batch, Lq, Lk)`` and applies to every head (``BOOL``: True = may attend; floats: added to
the scores).
``data`` is the tensor in row-major order, flat or nested.

The binary tensor extension: with the header ``Inference-Header-Content-Length: N`` the body is N bytes
of JSON followed by the raw little-endian data of every input whose ``parameters`` holds
``binary_data_size``, in the order of ``inputs``. The output comes back in binary the same way when
the request asks for it (``binary_data`` on the output, or ``binary_data_output`` in the request's
parameters), with ``Inference-Header-Content-Length`` on the response.

Errors are ``{"error": "<message>"}`` with status 400 (a malformed or invalid request), 404 (an
unknown model), 413 (too large), 503 (overloaded) or 504 (timed out).
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .. import __version__
from ..errors import AttentionError
from . import codec, model_metrics
from .batching import DynamicBatcher
from .codec import ApiError
from .models import ERROR_RESPONSES, EXTRA_INPUTS, INPUT_NAMES, Model, ModelRepository, extra_inputs, input_specs

__all__ = ["router", "DATATYPES", "parse_infer_request", "infer_response"]

HEADER = "Inference-Header-Content-Length"
#: the protocol's tensor data types and their NumPy dtypes (little-endian)
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_NAMES_OF = {v: k for k, v in DATATYPES.items()}
VERSION = "1"

router = APIRouter(tags=["open inference protocol (KServe v2)"])


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _protocol_error(err: ApiError) -> JSONResponse:
    """An attnkit API error in the protocol's form: ``{"error": message}``; invalid input is 400."""
    status = 400 if err.status in (400, 415, 422) else err.status
    resp = _error(status, err.message)
    for k, v in (err.headers or {}).items():
        resp.headers[k] = v
    return resp


# ---------------------------------------------------------------------- request parsing
def _bad(message: str) -> ApiError:
    return ApiError(400, "bad_request", message, None)


def parse_infer_request(body: bytes, header_length: str | None, max_elements: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON header and the input tensors (by contract name) of an inference request body."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise _bad(f"{HEADER}: expected an integer, got {header_length[:40]!r}") from None
        if not 0 <= n <= len(body):
            raise _bad(f"{HEADER}: {n} is outside the body of {len(body)} bytes")
        head, binary = memoryview(body)[:n], memoryview(body)[n:]
    else:
        head, binary = memoryview(body), memoryview(b"")
    try:
        doc = json.loads(bytes(head))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(f"body: the inference header is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise _bad(f"body: expected a JSON object with inputs, got {type(doc).__name__}")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad("inputs: expected a non-empty list of tensors")
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for i, t in enumerate(inputs):
        if not isinstance(t, dict):
            raise _bad(f"inputs[{i}]: expected an object with name, shape, datatype and data")
        name = t.get("name")
        if name not in INPUT_NAMES + EXTRA_INPUTS:
            raise _bad(f"inputs[{i}].name: expected one of {', '.join(INPUT_NAMES + EXTRA_INPUTS)}, got {codec._short(name)}")
        if name in tensors:
            raise _bad(f"inputs[{i}].name: {name!r} is given twice")
        dt = DATATYPES.get(t.get("datatype"))  # type: ignore[arg-type]
        if dt is None:
            raise _bad(f"{name}.datatype: expected one of {', '.join(DATATYPES)}, got {codec._short(t.get('datatype'))}")
        shape = t.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise _bad(f"{name}.shape: expected a list of non-negative integers, got {codec._short(shape)}")
        if len(shape) > codec.MAX_NDIM:
            raise _bad(f"{name}.shape: at most {codec.MAX_NDIM} axes, got {len(shape)}")
        count = math.prod(shape)
        if count > max_elements:
            raise ApiError(413, "too_many_elements", f"{name}: at most {max_elements} elements on this server, got {count}", name)
        params = t.get("parameters") or {}
        if not isinstance(params, dict):
            raise _bad(f"{name}.parameters: expected an object")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise _bad(f"{name}.parameters.binary_data_size: expected a non-negative integer, got {codec._short(size)}")
            if size != count * dt.itemsize:
                raise _bad(f"{name}: binary_data_size {size} does not match shape {shape} of {t['datatype']} ({count * dt.itemsize} bytes)")
            if offset + size > len(binary):
                raise _bad(f"{name}: the binary data ends after {len(binary) - offset} of {size} bytes")
            arr = np.frombuffer(binary[offset : offset + size], dtype=dt).reshape(shape)
            offset += size
        else:
            if "data" not in t:
                raise _bad(f"{name}.data: required (or parameters.binary_data_size with the binary extension)")
            arr = _json_data(t["data"], dt, name, shape, count)
        tensors[name] = arr
    if offset != len(binary):
        raise _bad(f"body: {len(binary) - offset} bytes of binary data after the last tensor")
    return doc, tensors


def _json_data(data: Any, dt: np.dtype[Any], name: str, shape: list[int], count: int) -> np.ndarray:
    if not isinstance(data, list):
        data = [data]
    try:
        arr = np.asarray(data, dtype=object if dt.kind == "b" else None)
    except ValueError:
        raise _bad(f"{name}.data: ragged nested lists") from None
    flat = arr.reshape(-1)
    if flat.size != count:
        raise _bad(f"{name}.data: {flat.size} values for shape {shape} ({count} elements)")
    if dt.kind == "b":
        if not all(isinstance(x, bool) for x in flat):
            raise _bad(f"{name}.data: a BOOL tensor holds true/false")
        return flat.astype(np.bool_).reshape(shape)
    if flat.dtype.kind not in "iuf" and flat.size:
        raise _bad(f"{name}.data: expected numbers, got {flat.dtype}")
    if dt.kind in "iu" and flat.size and flat.dtype.kind == "f":
        raise _bad(f"{name}.data: {_NAMES_OF[dt]} holds integers")
    with np.errstate(over="ignore"):
        return flat.astype(dt).reshape(shape)


def _wants_binary(doc: dict[str, Any]) -> bool:
    params = doc.get("parameters") or {}
    binary = bool(isinstance(params, dict) and params.get("binary_data_output"))
    outputs = doc.get("outputs")
    if outputs is None:
        return binary
    if not isinstance(outputs, list):
        raise _bad("outputs: expected a list of requested outputs")
    for i, o in enumerate(outputs):
        if not isinstance(o, dict) or o.get("name") != "output":
            raise _bad(f"outputs[{i}].name: this model has one output, 'output'")
        p = o.get("parameters") or {}
        if isinstance(p, dict) and "binary_data" in p:
            binary = bool(p["binary_data"])
    return binary


def infer_response(model: Model, doc: dict[str, Any], out: np.ndarray, binary: bool) -> tuple[bytes, dict[str, str], str]:
    """The body, headers and media type of the answer holding ``out``."""
    out = np.ascontiguousarray(out)
    if out.dtype not in _NAMES_OF:
        out = out.astype(np.float32)
    head: dict[str, Any] = {"model_name": model.name, "model_version": VERSION}
    if isinstance(doc.get("id"), str):
        head["id"] = doc["id"]
    tensor: dict[str, Any] = {
        "name": "output",
        "datatype": _NAMES_OF[out.dtype.newbyteorder("<") if out.dtype.byteorder == ">" else out.dtype],
        "shape": list(out.shape),
    }
    if binary:
        raw = out.astype(out.dtype.newbyteorder("<"), copy=False).tobytes()
        tensor["parameters"] = {"binary_data_size": len(raw)}
        head["outputs"] = [tensor]
        header = json.dumps(head, separators=(",", ":")).encode()
        return header + raw, {HEADER: str(len(header))}, "application/octet-stream"
    tensor["data"] = out.reshape(-1).tolist()
    head["outputs"] = [tensor]
    return codec.dumps(head), {}, "application/json"


# ---------------------------------------------------------------------- routes
def _repo(request: Request) -> ModelRepository:
    return request.app.state.models


def parse_request(body: bytes, header_length: str | None, max_elements: int) -> tuple[dict[str, Any], dict[str, np.ndarray], bool]:
    """:func:`parse_infer_request`, the binary-answer flag, and a check that ``query`` is there."""
    doc, tensors = parse_infer_request(body, header_length, max_elements)
    binary = _wants_binary(doc)
    if "query" not in tensors:
        raise _bad("inputs: 'query' is required")
    return doc, tensors, binary


def forward(compute: Any, mech: Any, tensors: Mapping[str, np.ndarray]) -> np.ndarray:
    """The model's forward for protocol inputs (batch axis first), errors mapped to API errors."""
    q, k, v, mask = (tensors.get(n) for n in INPUT_NAMES)
    if mask is not None and type(mech).input_layout in ("model", "sequence") and mask.ndim >= 3:
        mask = mask[..., None, :, :]  # (batch, Lq, Lk): the same mask for every head
    extras = {n: tensors[n] for n in EXTRA_INPUTS if n in tensors}
    for n in extras:
        if n not in extra_inputs(type(mech).name):
            raise _bad(f"inputs: {n!r} is not an input of this model (a {type(mech).name})")
    return compute._call(mech, lambda: mech.forward(q, k, v, mask=mask, **extras), set())


def _batcher(app: Any) -> DynamicBatcher:
    """The app's dynamic batcher (made on first use, on the event loop); forwards run in the compute runner
    (``Compute.model_forward``: a worker process under process isolation)."""
    batcher = getattr(app.state, "batcher", None)
    if batcher is None:
        state = app.state.attnkit
        s = state.settings

        async def run(call: Any) -> Any:
            return await call()

        def forward_call(name: str, tensors: Mapping[str, np.ndarray]) -> Any:
            return state.run("model_forward", name, dict(tensors))

        batcher = DynamicBatcher(run, forward_call, s.max_batch_delay_ms / 1e3, s.max_batch_size, max_in_flight=s.max_concurrency)
        app.state.batcher = batcher
    return batcher


#: JSON of at most this many bytes is parsed on the event loop (larger: in a compute worker)
INLINE_JSON_BYTES = 32 * 1024
#: a JSON answer of at most this many numbers is written on the event loop
INLINE_JSON_ELEMENTS = 4096


def _header_bytes(header_length: str, body_bytes: int) -> int:
    """The JSON part's size from ``Inference-Header-Content-Length`` (a bad value: the whole body, which
    sends the request to a worker, whose parser answers the error)."""
    try:
        return min(int(header_length), body_bytes)
    except ValueError:
        return body_bytes


def _version_ok(version: str | None) -> bool:
    return version in (None, VERSION)


@router.get("/v2", responses=ERROR_RESPONSES, summary="server metadata (Open Inference Protocol)")
async def server_metadata() -> JSONResponse:
    return JSONResponse({"name": "attnkit", "version": __version__, "extensions": ["binary_tensor_data"]})


@router.get("/v2/health/live", responses=ERROR_RESPONSES, summary="liveness (Open Inference Protocol)")
async def live() -> JSONResponse:
    return JSONResponse({"live": True})


@router.get("/v2/health/ready", responses=ERROR_RESPONSES, summary="readiness: every model of the repository is loaded (Open Inference Protocol)")
async def ready(request: Request) -> JSONResponse:
    return JSONResponse({"ready": True, "models": len(_repo(request).names())})


def _metadata(model: Model) -> dict[str, Any]:
    mech = model.mechanism
    inputs = []
    for spec in input_specs(mech):
        if spec["name"] == "mask":
            inputs.append(
                {
                    "name": "mask",
                    "datatype": "BOOL",
                    "shape": [-1, -1, -1],
                    "parameters": {
                        "optional": True,
                        "note": "(batch, Lq, Lk), every head; True = may attend; FP32/FP64 masks are added to the scores",
                    },
                }
            )
        else:
            inputs.append({"name": spec["name"], "datatype": "FP32", "shape": [-1, *spec["shape"]], "parameters": {"optional": spec["optional"]}})
    query_rank = len(input_specs(mech)[0]["shape"])
    return {
        "name": model.name,
        "versions": [VERSION],
        "platform": f"attnkit_{model.type}",
        "inputs": inputs,
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1] * (query_rank + 1)}],
    }


@router.get("/v2/models/{name}", responses=ERROR_RESPONSES, summary="model metadata: inputs and outputs (Open Inference Protocol)")
async def model_metadata(name: str, request: Request) -> JSONResponse:
    return await _model_metadata(name, request, None)


@router.get("/v2/models/{name}/versions/{version}", responses=ERROR_RESPONSES, include_in_schema=False)
async def model_version_metadata(name: str, version: str, request: Request) -> JSONResponse:
    return await _model_metadata(name, request, version)


async def _model_metadata(name: str, request: Request, version: str | None) -> JSONResponse:
    try:
        if not _version_ok(version):
            raise ApiError(404, "unknown_version", f"model {name!r} has only version {VERSION}, got {version!r}")
        return JSONResponse(_metadata(_repo(request).get(name)))
    except ApiError as err:
        return _protocol_error(err)


@router.get("/v2/models/{name}/ready", responses=ERROR_RESPONSES, summary="whether the model is ready (Open Inference Protocol)")
async def model_ready(name: str, request: Request) -> JSONResponse:
    return await _model_ready(name, request, None)


@router.get("/v2/models/{name}/versions/{version}/ready", responses=ERROR_RESPONSES, include_in_schema=False)
async def model_version_ready(name: str, version: str, request: Request) -> JSONResponse:
    return await _model_ready(name, request, version)


async def _model_ready(name: str, request: Request, version: str | None) -> JSONResponse:
    try:
        if not _version_ok(version):
            raise ApiError(404, "unknown_version", f"model {name!r} has only version {VERSION}, got {version!r}")
        model = _repo(request).get(name)
        return JSONResponse({"name": model.name, "ready": True})
    except ApiError as err:
        return _protocol_error(err)


@router.post(
    "/v2/models/{name}/infer",
    responses=ERROR_RESPONSES,
    summary="run the model (Open Inference Protocol; JSON tensors or the binary tensor extension)",
    description=__doc__ or "",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
    response_class=Response,
)
async def infer(name: str, request: Request) -> Response:
    return await _infer(name, request, None)


@router.post("/v2/models/{name}/versions/{version}/infer", responses=ERROR_RESPONSES, include_in_schema=False, response_class=Response)
async def infer_version(name: str, version: str, request: Request) -> Response:
    return await _infer(name, request, version)


async def _infer(name: str, request: Request, version: str | None) -> Response:
    from .app import read_body

    settings = request.app.state.attnkit.settings
    return await infer_answer(request.app, name, version, request.headers.get(HEADER.lower()), lambda: read_body(request, settings.max_body_bytes))


async def infer_answer(app: Any, name: str, version: str | None, header_length: str | None, body: Callable[[], Awaitable[bytes]]) -> Response:
    """The answer to ``POST /v2/models/{name}[/versions/{version}]/infer`` (``body`` reads the request
    body), counted in the per-model metrics. The FastAPI routes above call it, and so does the raw ASGI
    handler that answers this path ahead of FastAPI's middleware (:class:`attnkit.server.app._Guard`)."""
    response = await _infer_once(app, name, version, header_length, body)
    model_metrics.observe_request(name if name in app.state.models.models else "_unknown", response.status_code)
    return response


async def _infer_once(app: Any, name: str, version: str | None, header_length: str | None, read: Callable[[], Awaitable[bytes]]) -> Response:
    state = app.state.attnkit
    try:
        if not _version_ok(version):
            raise ApiError(404, "unknown_version", f"model {name!r} has only version {VERSION}, got {version!r}")
        model = app.state.models.get(name)
        body = await read()

        # one trip to a compute worker for a small request: the forward. Its JSON header (and JSON data) is
        # parsed here when small (binary tensor data is only viewed, np.frombuffer), and a small or binary
        # answer is encoded here; large JSON is parsed and written in a worker, off the event loop.
        json_bytes = len(body) if header_length is None else _header_bytes(header_length, len(body))
        if json_bytes <= INLINE_JSON_BYTES:
            doc, tensors, binary = parse_request(body, header_length, state.settings.max_elements)
        else:
            doc, tensors, binary = await state.run("kserve_parse", body, header_length)
        out = await _batcher(app).submit((model.name, id(model.mechanism)), model.name, tensors)
        if binary or out.size <= INLINE_JSON_ELEMENTS:
            content, headers, media = infer_response(model, doc, out, binary)
        else:
            content, headers, media = await state.run("kserve_encode", model.name, doc, out, binary)
        return Response(content, media_type=media, headers=headers)
    except ApiError as err:
        return _protocol_error(err)
    except AttentionError as exc:
        return _error(400, str(exc))
