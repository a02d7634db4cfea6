"""Wire formats of the attnkit server: tensors in and out of JSON and binary bodies.

Request bodies (``Content-Type``):

* ``application/json``: ``{"query": T, "keys": T, "values": T, "mask": T, "options": {...}}`` where a
  tensor ``T`` is nested lists of numbers (bools for a boolean mask), or
  ``{"data": "<base64>", "shape": [...], "dtype": "float32"}`` (little-endian; dtype float16, float32,
  float64 or bool with one byte per element). Keys and values may be left out (self-attention).
* ``application/x-npy``: one to four ``.npy`` files one after the other: query, keys, values, mask.
* ``application/x-safetensors``: a safetensors file with tensors ``query``, ``keys``, ``values``, ``mask``.
* ``application/octet-stream``: raw little-endian float32 (or ``X-Attnkit-Dtype: float64``) query, keys,
  values, mask back to back, with shapes in ``X-Attnkit-Query-Shape: 4,2,8`` (and ``-Keys-``,
  ``-Values-``, ``-Mask-Shape``); ``X-Attnkit-Mask-Dtype: bool`` sends a boolean mask as bytes.

For binary bodies the options come from the query string (``?heads=2&dim=8``).
Responses follow ``Accept``: JSON (default), ``application/octet-stream`` (raw, shape in
``X-Attnkit-Shape``, dtype in ``X-Attnkit-Dtype``), ``application/x-npy`` or ``application/x-safetensors``.

Every malformed body raises :class:`ApiError` with a 4xx status and a machine-readable code; sizes are
checked against the limits before anything is allocated.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import json
import math
import struct
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

_orjson: Any
try:  # optional: about five times faster than the standard library on number-heavy bodies
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None

__all__ = [
    "dumps",
    "ApiError",
    "TENSOR_FIELDS",
    "EXTRA_FIELDS",
    "JSON",
    "NPY",
    "SAFETENSORS",
    "OCTET",
    "media_type",
    "choose_response_type",
    "parse_json",
    "decode_json_tensor",
    "decode_npy_stream",
    "decode_safetensors",
    "decode_octet",
    "encode_output",
    "safe_text",
]

TENSOR_FIELDS = ("query", "keys", "values", "mask")
#: keyword-only tensor inputs of some mechanisms, sent by name after the four above (issue 14:
#: ``edge_features`` of ``edge_featured``, ``(..., k, edge_dim)``); not in the positional .npy stream
EXTRA_FIELDS = ("edge_features",)
MAX_NDIM = 8
#: longest single dimension accepted (empty tensors may have long axes, but not unbounded ones)
MAX_DIM = 2**31 - 1
JSON = "application/json"
NPY = "application/x-npy"
SAFETENSORS = "application/x-safetensors"
OCTET = "application/octet-stream"
_ALIASES = {
    "application/json": JSON,
    "text/json": JSON,
    "application/x-npy": NPY,
    "application/npy": NPY,
    "application/x-safetensors": SAFETENSORS,
    "application/safetensors": SAFETENSORS,
    "application/vnd.safetensors": SAFETENSORS,
    "application/octet-stream": OCTET,
}
_WIRE_DTYPES = {"float16": np.float16, "float32": np.float32, "float64": np.float64, "bool": np.bool_}
_LITTLE = sys.byteorder == "little"
_DTYPE_NAMES = {np.dtype(np.float32).char: "float32", np.dtype(np.float64).char: "float64"}


def safe_text(text: str) -> str:
    """``text`` with lone UTF-16 surrogates (from JSON escapes such as ``\\ud800``) written as escapes,
    so that it can be encoded as UTF-8 in an answer."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class ApiError(Exception):
    """An error answered to the client: HTTP ``status`` and the body ``{"error": {code, message, field}}``.

    ``field`` names the part of the request at fault (a JSON path such as ``options.heads``, a header,
    ``body``, ``path``); it defaults to ``"body"``.
    """

    def __init__(self, status: int, code: str, message: str, field: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = dict(headers or {})

    def __reduce__(self) -> tuple[Any, ...]:
        return (ApiError, (self.status, self.code, self.message, self.field, self.headers))

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": safe_text(self.message), "field": safe_text(self.field or "body")}}


# ---------------------------------------------------------------------- content negotiation
def media_type(content_type: str | None) -> str | None:
    """The canonical media type of a ``Content-Type`` header, or ``None`` if it is not one we read."""
    if not content_type:
        return None
    base = content_type.split(";", 1)[0].strip().lower()
    return _ALIASES.get(base)


#: header values at most this long are remembered with what they parse to (a client sends the same ones again)
_CACHED_HEADER_CHARS = 512


def choose_response_type(accept: str | None, allowed: tuple[str, ...] = (JSON, OCTET, NPY, SAFETENSORS)) -> str:
    """Pick the response media type from ``Accept`` (q-values honoured; missing or ``*/*`` means JSON)."""
    if accept is not None and len(accept) <= _CACHED_HEADER_CHARS:
        return _choose_cached(accept, allowed)
    return _choose_response_type(accept, allowed)


def _choose_response_type(accept: str | None, allowed: tuple[str, ...]) -> str:
    if not accept or not accept.strip():
        return JSON
    best: tuple[float, int, str] | None = None
    for order, part in enumerate(accept.split(",")):
        pieces = [p.strip() for p in part.split(";")]
        name = pieces[0].lower()
        q = 1.0
        for param in pieces[1:]:
            if param.lower().startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        if not math.isfinite(q) or q <= 0:
            continue
        if name in ("*/*", "application/*"):
            candidate = JSON
        else:
            candidate = _ALIASES.get(name, "")
        if candidate not in allowed:
            continue
        key = (-q, order, candidate)
        if best is None or key < best:
            best = key
    if best is None:
        raise ApiError(406, "not_acceptable", f"Accept: expected one of {', '.join(allowed)}, got {accept[:200]!r}", field="Accept")
    return best[2]


_choose_cached = functools.lru_cache(maxsize=256)(_choose_response_type)


# ---------------------------------------------------------------------- shape checks
def _check_shape(shape: Any, field: str, max_elements: int) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)):
        raise ApiError(400, "bad_shape", f"{field}: expected a shape as a list of integers, got {_short(shape)}", field)
    if len(shape) > MAX_NDIM:
        raise ApiError(400, "bad_shape", f"{field}: expected at most {MAX_NDIM} dimensions, got {len(shape)}", field)
    out = []
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ApiError(400, "bad_shape", f"{field}: expected non-negative integer dimensions, got {_short(shape)}", field)
        if s > MAX_DIM:  # NumPy cannot index past 2**63; no real request needs a dimension this long
            raise ApiError(413, "too_many_elements", f"{field}: each dimension is at most {MAX_DIM}, got {_short(s)}", field)
        out.append(int(s))
    n = math.prod(out)
    if n > max_elements:
        raise ApiError(413, "too_many_elements", f"{field}: at most {max_elements} elements per tensor, got {n} (shape {tuple(out)})", field)
    return tuple(out)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------- JSON
def dumps(obj: Any) -> bytes:
    """Compact JSON bytes (orjson when installed); non-finite floats are refused by both encoders' callers."""
    if _orjson is not None:
        return _orjson.dumps(obj)
    return json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()


def parse_json(body: bytes) -> Any:
    """Parse a JSON body (NaN and Infinity are read, and rejected later by the finiteness checks).

    orjson parses strict JSON when it is installed; anything it refuses (NaN, errors) is parsed again by
    the standard library, which reads integers outside the 64-bit range as floats just as orjson does, so
    the result and the error messages do not depend on orjson.
    """
    if _orjson is not None:
        try:
            return _orjson.loads(body)
        except (ValueError, TypeError):
            pass
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "bad_json", f"body: expected UTF-8 JSON, got undecodable bytes at {exc.start}", "body") from None
    try:
        doc = json.loads(text, parse_int=_parse_int)
    except RecursionError:
        raise ApiError(400, "bad_json", "body: JSON nested too deeply", "body") from None
    except ValueError as exc:
        raise ApiError(400, "bad_json", f"body: invalid JSON ({safe_text(str(exc))[:200]})", "body") from None
    _check_strings(doc)
    return doc


def _check_strings(doc: Any) -> None:
    """Refuse strings with lone surrogates (valid JSON escapes, but not text), iteratively."""
    stack = [doc]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            for k, v in x.items():
                if safe_text(k) is not k:
                    raise ApiError(400, "bad_json", f"body: the key {safe_text(k)[:40]!r} holds a lone surrogate, which is not text", "body")
                stack.append(v)
        elif isinstance(x, list):
            stack.extend(v for v in x if isinstance(v, (dict, list, str)))
        elif isinstance(x, str) and safe_text(x) is not x:
            raise ApiError(400, "bad_json", f"body: the string {safe_text(x)[:40]!r} holds a lone surrogate, which is not text", "body")


def _parse_int(text: str) -> int | float:
    if len(text) > 400:  # beyond any float, and int() refuses over 4300 digits
        return float("inf") if not text.startswith("-") else float("-inf")
    value = int(text)
    return value if -(2**63) <= value < 2**64 else float(text)


def decode_json_tensor(value: Any, field: str, max_elements: int, list_dtype: Any = np.float32) -> np.ndarray:
    """A tensor from JSON: nested lists, a bare number, or ``{"data": base64, "shape": [...], "dtype": ...}``."""
    if isinstance(value, dict):
        return _decode_b64(value, field, max_elements)
    if isinstance(value, bool) or not isinstance(value, (list, int, float)):
        raise ApiError(422, "bad_tensor", f"{field}: expected nested lists of numbers or a base64 tensor object, got {type(value).__name__}", field)
    try:
        arr = np.array(value)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise ApiError(422, "bad_tensor", f"{field}: expected a rectangular array of numbers ({str(exc)[:160]})", field) from None
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise ApiError(422, "bad_tensor", f"{field}: expected a rectangular array of numbers (ragged, or holding strings or objects)", field)
    if arr.ndim > MAX_NDIM:
        raise ApiError(400, "bad_shape", f"{field}: expected at most {MAX_NDIM} dimensions, got {arr.ndim}", field)
    if arr.size > max_elements:
        raise ApiError(413, "too_many_elements", f"{field}: at most {max_elements} elements per tensor, got {arr.size}", field)
    if arr.dtype.kind == "b":
        return arr
    if arr.dtype.kind not in "iuf":
        raise ApiError(422, "bad_tensor", f"{field}: expected numbers, got {arr.dtype}", field)
    with np.errstate(over="ignore"):
        return arr.astype(list_dtype)


def _decode_b64(value: dict[str, Any], field: str, max_elements: int) -> np.ndarray:
    unknown = sorted(set(value) - {"data", "shape", "dtype"})
    if unknown:
        raise ApiError(422, "bad_tensor", f"{field}.{unknown[0]}: unknown key; a base64 tensor has data, shape, dtype", field)
    dtype_name = value.get("dtype", "float32")
    if not isinstance(dtype_name, str) or dtype_name not in _WIRE_DTYPES:
        raise ApiError(422, "bad_dtype", f"{field}.dtype: expected one of {', '.join(_WIRE_DTYPES)}, got {_short(dtype_name)}", f"{field}.dtype")
    if "shape" not in value:
        raise ApiError(422, "bad_tensor", f"{field}.shape: required with base64 data", f"{field}.shape")
    shape = _check_shape(value["shape"], f"{field}.shape", max_elements)
    data = value.get("data")
    if not isinstance(data, str):
        raise ApiError(422, "bad_tensor", f"{field}.data: expected a base64 string, got {type(data).__name__}", f"{field}.data")
    dtype = np.dtype(_WIRE_DTYPES[dtype_name]).newbyteorder("<")
    expected = math.prod(shape) * dtype.itemsize
    if len(data) > 4 * (expected // 3 + 2) + 8:
        raise ApiError(400, "bad_tensor", f"{field}.data: {len(data)} base64 characters is too long for shape {shape} {dtype_name}", f"{field}.data")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "bad_base64", f"{field}.data: invalid base64 ({exc})", f"{field}.data") from None
    if len(raw) != expected:
        raise ApiError(400, "bad_tensor", f"{field}.data: expected {expected} bytes for shape {shape} {dtype_name}, got {len(raw)}", f"{field}.data")
    if dtype_name == "bool":
        u8 = np.frombuffer(raw, dtype=np.uint8)
        if u8.size and u8.max() > 1:
            raise ApiError(422, "bad_tensor", f"{field}.data: a bool tensor holds bytes 0 or 1, found {int(u8.max())}", f"{field}.data")
        return u8.astype(bool).reshape(shape)
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape(shape)


# ---------------------------------------------------------------------- npy
_NPY_MAGIC = b"\x93NUMPY"


def decode_npy_stream(body: bytes, max_elements: int) -> dict[str, np.ndarray]:
    """One to four concatenated ``.npy`` files -> ``{"query", "keys", "values", "mask"}`` in that order."""
    out: dict[str, np.ndarray] = {}
    pos = 0
    n = len(body)
    if n == 0:
        raise ApiError(400, "bad_npy", "body: empty; expected one to four .npy arrays (query, keys, values, mask)", "body")
    while pos < n:
        if len(out) == len(TENSOR_FIELDS):
            raise ApiError(400, "bad_npy", "body: more than four .npy arrays (query, keys, values, mask)", "body")
        field = TENSOR_FIELDS[len(out)]
        arr, pos = _read_npy(body, pos, field, max_elements)
        out[field] = arr
    return out


def _read_npy(body: bytes, pos: int, field: str, max_elements: int) -> tuple[np.ndarray, int]:
    if body[pos : pos + 6] != _NPY_MAGIC or len(body) < pos + 10:
        raise ApiError(400, "bad_npy", f"{field}: expected a .npy array (magic \\x93NUMPY) at byte {pos}", field)
    major = body[pos + 6]
    if major == 1:
        (hlen,) = struct.unpack_from("<H", body, pos + 8)
        start = pos + 10
    elif major in (2, 3):
        if len(body) < pos + 12:
            raise ApiError(400, "bad_npy", f"{field}: truncated .npy header", field)
        (hlen,) = struct.unpack_from("<I", body, pos + 8)
        start = pos + 12
    else:
        raise ApiError(400, "bad_npy", f"{field}: unsupported .npy format version {major}", field)
    if hlen > 65536 or start + hlen > len(body):
        raise ApiError(400, "bad_npy", f"{field}: truncated or oversized .npy header ({hlen} bytes)", field)
    header_bytes = body[start : start + hlen]
    try:
        header = (
            np.lib.format.read_array_header_1_0(io.BytesIO(body[pos + 8 : pos + 10] + header_bytes))
            if major == 1
            else (np.lib.format.read_array_header_2_0(io.BytesIO(body[pos + 8 : pos + 12] + header_bytes)))
        )
    except Exception as exc:  # noqa: BLE001 - the header parser raises ValueError, SyntaxError, tokenize errors...
        raise ApiError(400, "bad_npy", f"{field}: invalid .npy header ({type(exc).__name__}: {str(exc)[:160]})", field) from None
    shape, fortran, dtype = header
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise ApiError(422, "bad_dtype", f"{field}: expected a float or bool .npy array, got dtype {dtype}", field)
    shape = _check_shape(list(shape), field, max_elements)
    nbytes = math.prod(shape) * dtype.itemsize
    data_start = start + hlen
    if data_start + nbytes > len(body):
        raise ApiError(400, "bad_npy", f"{field}: truncated .npy data: expected {nbytes} bytes, got {len(body) - data_start}", field)
    arr = np.frombuffer(body, dtype=dtype, count=math.prod(shape), offset=data_start)
    arr = arr.reshape(shape, order="F" if fortran else "C")
    # no copy for a C-ordered native-endian array: a read-only view of the body (mechanisms never write their inputs)
    arr = np.ascontiguousarray(arr).astype(dtype.newbyteorder("="), copy=False)
    return arr, data_start + nbytes


# ---------------------------------------------------------------------- safetensors
def decode_safetensors(body: bytes, max_elements: int) -> dict[str, np.ndarray]:
    """A safetensors file with tensors named query, keys, values and optionally mask."""
    if len(body) < 8:
        raise ApiError(400, "bad_safetensors", "body: truncated safetensors file (less than 8 bytes)", "body")
    (hlen,) = struct.unpack_from("<Q", body, 0)
    if hlen > min(len(body) - 8, 1 << 20):
        raise ApiError(400, "bad_safetensors", f"body: safetensors header of {hlen} bytes does not fit the body", "body")
    try:
        header = json.loads(body[8 : 8 + hlen].decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(400, "bad_safetensors", f"body: invalid safetensors header ({str(exc)[:160]})", "body") from None
    if not isinstance(header, dict):
        raise ApiError(400, "bad_safetensors", "body: safetensors header is not a JSON object", "body")
    names = [k for k in header if k != "__metadata__"]
    unknown = sorted(set(names) - set(TENSOR_FIELDS + EXTRA_FIELDS))
    if unknown:
        name = safe_text(unknown[0][:60])
        raise ApiError(422, "bad_tensor", f"{name}: unknown tensor; expected {', '.join(TENSOR_FIELDS + EXTRA_FIELDS)}", name)
    for name in names:
        info = header[name]
        if not isinstance(info, dict):
            raise ApiError(400, "bad_safetensors", f"{name}: invalid safetensors entry", name)
        _check_shape(info.get("shape"), name, max_elements)
        if info.get("dtype") not in ("F16", "BF16", "F32", "F64", "BOOL"):
            raise ApiError(422, "bad_dtype", f"{name}: expected dtype F16, F32, F64 or BOOL, got {_short(info.get('dtype'))}", name)
    from .._safetensors import SafetensorsFormatError, load_safetensors

    try:
        tensors = load_safetensors(bytes(body))  # BF16 becomes float32
    except SafetensorsFormatError as exc:
        raise ApiError(400, "bad_safetensors", f"body: invalid safetensors file ({str(exc)[:200]})", "body") from None
    return {k: tensors[k] for k in TENSOR_FIELDS + EXTRA_FIELDS if k in tensors}


# ---------------------------------------------------------------------- raw float32
def _parse_header_shape(raw: str | None, field: str, max_elements: int) -> tuple[int, ...] | None:
    if raw is None:
        return None
    dashed = field.replace("_", "-")
    text = raw.strip().strip("[]()")
    try:
        dims = [int(p) for p in text.replace("x", ",").split(",") if p.strip()] if text else []
    except ValueError:
        raise ApiError(400, "bad_shape", f"X-Attnkit-{dashed.title()}-Shape: expected comma-separated integers, got {raw[:80]!r}", field) from None
    return _check_shape(dims, field, max_elements)


#: the request headers that describe a raw body (their values are the key of :func:`octet_layout`)
OCTET_HEADERS = ("x-attnkit-dtype", "x-attnkit-mask-dtype", *(f"x-attnkit-{f.replace('_', '-')}-shape" for f in TENSOR_FIELDS + EXTRA_FIELDS))

#: one tensor of a raw body: field, wire dtype name, dtype (little-endian), element count, byte offset, shape
OctetPart = tuple[str, str, np.dtype, int, int, tuple[int, ...]]


@functools.lru_cache(maxsize=512)
def _octet_layout(values: tuple[str | None, ...], max_elements: int) -> tuple[tuple[OctetPart, ...], int]:
    dtype_name = (values[0] or "float32").strip().lower()
    if dtype_name not in ("float32", "float64"):
        raise ApiError(422, "bad_dtype", f"X-Attnkit-Dtype: expected float32 or float64, got {dtype_name[:40]!r}", "dtype")
    mask_dtype_name = (values[1] or dtype_name).strip().lower()
    if mask_dtype_name not in ("float32", "float64", "bool"):
        raise ApiError(422, "bad_dtype", f"X-Attnkit-Mask-Dtype: expected bool, float32 or float64, got {mask_dtype_name[:40]!r}", "mask")
    fields = TENSOR_FIELDS + EXTRA_FIELDS
    shapes = {f: _parse_header_shape(raw, f, max_elements) for f, raw in zip(fields, values[2:], strict=True)}
    if shapes["query"] is None:
        raise ApiError(400, "missing_shape", "X-Attnkit-Query-Shape: required with application/octet-stream", "query")
    parts: list[OctetPart] = []
    pos = 0
    for field in fields:
        shape = shapes[field]
        if shape is None:
            continue
        name = mask_dtype_name if field == "mask" else dtype_name
        dt = np.dtype(_WIRE_DTYPES[name]).newbyteorder("<")
        count = math.prod(shape)
        parts.append((field, name, dt, count, pos, shape))
        pos += count * dt.itemsize
    return tuple(parts), pos


def octet_layout(headers: Mapping[str, str], max_elements: int) -> tuple[tuple[OctetPart, ...], int]:
    """Where each tensor of a raw body lies, from the ``X-Attnkit-*`` headers (validated; the answer for
    the same header values is remembered, so a client that sends the same shapes again costs a lookup)
    and the total byte length the headers describe."""
    values = tuple(headers.get(h) for h in OCTET_HEADERS)
    if sum(len(v) for v in values if v is not None) <= _CACHED_HEADER_CHARS:
        return _octet_layout(values, max_elements)
    return _octet_layout.__wrapped__(values, max_elements)


def read_octet(body: bytes, layout: tuple[tuple[OctetPart, ...], int]) -> dict[str, np.ndarray]:
    """The tensors of a raw body laid out as :func:`octet_layout` says: read-only views of ``body`` (no
    copy) on little-endian machines; bool masks checked to hold bytes 0 or 1."""
    parts, total = layout
    out: dict[str, np.ndarray] = {}
    for field, name, dt, count, pos, shape in parts:
        nbytes = count * dt.itemsize
        if pos + nbytes > len(body):
            raise ApiError(
                400,
                "truncated_body",
                f"{field}: expected {nbytes} bytes for shape {shape} {name} at byte {pos}, body has {len(body)}",
                field,
            )
        if name == "bool":
            u8 = np.frombuffer(body, dtype=np.uint8, count=count, offset=pos)
            if u8.size and u8.max() > 1:
                raise ApiError(422, "bad_tensor", f"{field}: a bool tensor holds bytes 0 or 1, found {int(u8.max())}", field)
            out[field] = u8.astype(bool).reshape(shape)
        elif _LITTLE:
            out[field] = np.frombuffer(body, dtype=dt, count=count, offset=pos).reshape(shape)
        else:  # converted to the native byte order on big-endian machines
            out[field] = np.frombuffer(body, dtype=dt, count=count, offset=pos).astype(dt.newbyteorder("="), copy=False).reshape(shape)
    if total != len(body):
        raise ApiError(400, "bad_body", f"body: {len(body)} bytes, but the shape headers describe {total}", "body")
    return out


def decode_octet(body: bytes, headers: Mapping[str, str], max_elements: int) -> dict[str, np.ndarray]:
    """Raw little-endian tensors back to back, shapes from ``X-Attnkit-<Field>-Shape`` headers."""
    return read_octet(body, octet_layout(headers, max_elements))


# ---------------------------------------------------------------------- responses
def encode_output(arr: np.ndarray, media: str, *, encoding: str = "list", extra: Mapping[str, Any] | None = None) -> tuple[bytes, dict[str, str]]:
    """Serialise an output array as ``media``; returns the body and extra headers."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float32)
    dtype_name = _DTYPE_NAMES[arr.dtype.char]
    shape = ",".join(map(str, arr.shape))
    headers = {"X-Attnkit-Shape": shape, "X-Attnkit-Dtype": dtype_name}
    if media == OCTET and _LITTLE:
        return arr.tobytes(), headers
    if media == JSON:
        body: dict[str, Any] = {"shape": list(arr.shape), "dtype": str(arr.dtype)}
        if encoding == "base64":
            body["output"] = {
                "data": base64.b64encode(arr.astype(arr.dtype.newbyteorder("<")).tobytes()).decode("ascii"),
                "shape": list(arr.shape),
                "dtype": str(arr.dtype),
            }
        else:
            body["output"] = arr.tolist()
        body.update(extra or {})
        if not np.isfinite(arr).all():
            raise ValueError("output holds NaN or infinity; JSON cannot carry it")
        return dumps(body), headers
    if media == OCTET:
        return arr.astype(arr.dtype.newbyteorder("<")).tobytes(), headers
    if media == NPY:
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        return buf.getvalue(), headers
    if media == SAFETENSORS:
        from safetensors.numpy import save

        return save({"output": arr}), headers
    raise ApiError(406, "not_acceptable", f"Accept: cannot encode {media}", "Accept")  # pragma: no cover
