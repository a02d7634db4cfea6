"""Arrays from and to files: ``.npy``, ``.npz``, ``.safetensors``, raw float32, JSON and CSV.

One reader and one writer for every front end (CLI, REPL, server). Round trips are exact:

* ``npy``, ``npz`` and ``safetensors`` store the bytes of the array (any bool, integer or float dtype
  NumPy knows; ``npy``/``npz`` are read with ``allow_pickle=False``, so a file cannot run code).
* ``raw`` is little-endian float32 and nothing else: no header, so the shape comes from the caller
  (``shape=``); without one the array is 1-D. Other float dtypes are cast to float32 on write.
* ``json`` writes ``{"shape": [...], "dtype": "float32", "data": [[...], ...]}`` (several arrays:
  ``{"q": {...}, "k": {...}}``) with each float in the shortest decimal form that reads back to the
  same float32 (or float64) bits. It reads that form, a dict of such arrays, or plain nested lists
  (float32; all-boolean lists give a boolean array). NaN and infinities are written as ``NaN``,
  ``Infinity`` and ``-Infinity``, which Python reads but strict JSON parsers (JavaScript) do not.
* ``csv`` is a plain 2-D table of numbers: one row per line, no header and no index column (the
  upstream CLI's round trip added an index column; this one does not). A 1-D array is written as one
  row; an N-D array as ``(prod(shape[:-1]), shape[-1])`` rows. It reads as float32 and 2-D unless
  ``shape=`` reshapes it.

Formats follow the file extension (``.npy .npz .safetensors .bin/.raw/.f32 .json .csv``) or an
explicit ``fmt=``; an unknown extension is resolved by looking at the first bytes. Every failure is a
:class:`FileFormatError` (an :class:`~attnkit.errors.AttentionError`) that names the argument and the file.
"""

from __future__ import annotations

import csv
import io as _io
import json
import math
import os
import re
import stat
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AttentionError, ShapeError

__all__ = [
    "FORMATS",
    "MULTI_ARRAY_FORMATS",
    "FileFormatError",
    "detect_format",
    "sniff_format",
    "parse_shape",
    "split_key",
    "read_arrays",
    "read_array",
    "write_array",
    "write_arrays",
    "loads",
    "dumps",
]

#: every format this module reads and writes
FORMATS: tuple[str, ...] = ("npy", "npz", "safetensors", "raw", "json", "csv")
#: formats that hold several named arrays
MULTI_ARRAY_FORMATS: frozenset[str] = frozenset({"npz", "safetensors", "json"})

_EXTENSIONS: dict[str, str] = {
    ".npy": "npy",
    ".npz": "npz",
    ".safetensors": "safetensors",
    ".bin": "raw",
    ".raw": "raw",
    ".f32": "raw",
    ".json": "json",
    ".csv": "csv",
}

#: the key a single array gets in a multi-array file when none is given
DEFAULT_KEY = "data"
#: deepest nesting of lists read from JSON (NumPy arrays have at most 64 dimensions)
MAX_JSON_DEPTH = 64
#: most digits of one integer in a JSON or CSV file (Python's own limit for int(str))
MAX_INT_DIGITS = 4300
#: most bytes read from standard input, a pipe or a device file (``/dev/zero`` never ends); regular
#: files are read whole. ``ATTNKIT_MAX_INPUT_BYTES`` overrides it.
MAX_STREAM_BYTES = 512 << 20


class FileFormatError(AttentionError):
    """A file is missing, unreadable, corrupt, or not in the format it claims to be."""


# ---------------------------------------------------------------------------------------------- helpers
def parse_shape(text: str | Sequence[int], name: str = "shape") -> tuple[int, ...]:
    """``"2,3,4"``, ``"2x3x4"``, ``"(2, 3, 4)"`` or a sequence -> ``(2, 3, 4)``; one ``-1`` is allowed."""
    if isinstance(text, str):
        body = text.strip().strip("()[]").strip()
        parts = [p for p in re.split(r"[,x\s]+", body) if p] if body else []
        try:
            dims = [int(p) for p in parts]
        except ValueError:
            raise ShapeError(f"{name}: expected integers separated by ',' or 'x' (like 8,2,16), got {text!r}") from None
    else:
        try:
            dims = [int(d) for d in text]
        except (TypeError, ValueError):
            raise ShapeError(f"{name}: expected a sequence of integers, got {text!r}") from None
    if not dims:
        raise ShapeError(f"{name}: expected at least one dimension, got {text!r}")
    if any(d < -1 for d in dims) or dims.count(-1) > 1:
        raise ShapeError(f"{name}: expected non-negative sizes and at most one -1, got {text!r}")
    return tuple(dims)


def _reshape(arr: np.ndarray, shape: Sequence[int] | None, name: str, where: str) -> np.ndarray:
    if shape is None:
        return arr
    shape = parse_shape(shape, name)
    known = math.prod(d for d in shape if d != -1)
    if -1 in shape:
        if known == 0 or arr.size % known:
            raise ShapeError(f"{name}: {where} holds {arr.size} values, which do not fill shape {_fmt_shape(shape)}")
    elif known != arr.size:
        raise ShapeError(f"{name}: {where} holds {arr.size} values, expected {known} for shape {_fmt_shape(shape)}")
    return arr.reshape(shape)


def _fmt_shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def split_key(spec: str | os.PathLike[str]) -> tuple[str, str | None]:
    """``"inputs.npz:q"`` -> ``("inputs.npz", "q")``; a path without ``:KEY`` -> ``(path, None)``.

    The suffix is a key only when what precedes it names a multi-array file (``.npz``,
    ``.safetensors``, ``.json``), so Windows drive letters and odd file names stay paths.
    """
    text = os.fspath(spec)
    head, sep, key = text.rpartition(":")
    if sep and key and Path(head).suffix.lower() in (".npz", ".safetensors", ".json") and "/" not in key and "\\" not in key:
        return head, key
    return text, None


def sniff_format(head: bytes) -> str | None:
    """The format suggested by a file's first bytes, or ``None`` when they say nothing clear."""
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "npz"
    if len(head) >= 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if 2 <= n < (100 << 20):
            return "safetensors"
    stripped = head.lstrip()
    if stripped[:1] in (b"[", b"{"):
        return "json"
    if stripped and re.fullmatch(rb"[0-9eE+\-., \t\r\nainfAINF]+", stripped[:256]):
        return "csv"
    return None


def detect_format(path: str | os.PathLike[str] | None, fmt: str | None = None, head: bytes | None = None) -> str:
    """The format of ``path``: ``fmt`` if given, else the extension, else the first bytes ``head``."""
    if fmt:
        f = str(fmt).lower().lstrip(".")
        f = {"st": "safetensors", "f32": "raw", "bin": "raw", "float32": "raw"}.get(f, f)
        if f not in FORMATS:
            raise FileFormatError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
        return f
    if path is not None:
        ext = Path(os.fspath(path)).suffix.lower()
        if ext in _EXTENSIONS:
            return _EXTENSIONS[ext]
    if head is not None:
        guess = sniff_format(head)
        if guess:
            return guess
    where = f"{os.fspath(path)!r}" if path is not None else "the data"
    raise FileFormatError(
        f"format: cannot tell the format of {where}; use an extension "
        f"({', '.join(sorted(_EXTENSIONS))}) or give the format explicitly"
    )


def stream_limit() -> int:
    """Most bytes read from a stream (stdin, a pipe, a device): ``ATTNKIT_MAX_INPUT_BYTES`` or 512 MiB."""
    raw = os.environ.get("ATTNKIT_MAX_INPUT_BYTES", "").strip()
    if not raw:
        return MAX_STREAM_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise FileFormatError(f"ATTNKIT_MAX_INPUT_BYTES: expected a positive integer, got {raw!r}") from None
    if value < 1:
        raise FileFormatError(f"ATTNKIT_MAX_INPUT_BYTES: expected a positive integer, got {raw!r}")
    return value


def read_stream(fh: Any, name: str, where: str, limit: int | None = None) -> bytes:
    """Read ``fh`` to its end, refusing (:class:`FileFormatError`) once more than ``limit`` bytes came."""
    limit = stream_limit() if limit is None else limit
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = fh.read(min(1 << 20, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise FileFormatError(
                f"{name}: {where} holds more than {limit} bytes, the most read from a stream or device "
                "(set ATTNKIT_MAX_INPUT_BYTES to raise it)"
            )
        chunks.append(chunk)


def _read_bytes(path: str | os.PathLike[str], name: str) -> bytes:
    p = os.fspath(path)
    try:
        with open(p, "rb") as fh:
            if stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return fh.read()
            return read_stream(fh, name, repr(p))  # a pipe, socket or device: it may never end
    except FileFormatError:
        raise
    except FileNotFoundError:
        raise FileFormatError(f"{name}: file not found: {p!r}") from None
    except IsADirectoryError:
        raise FileFormatError(f"{name}: expected a file, got the directory {p!r}") from None
    except PermissionError:
        raise FileFormatError(f"{name}: permission denied reading {p!r}") from None
    except OSError as exc:
        raise FileFormatError(f"{name}: cannot read {p!r}: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL byte in the path
        raise FileFormatError(f"{name}: invalid file name {p!r} ({exc})") from None


def _write_bytes(path: str | os.PathLike[str], data: bytes, name: str) -> None:
    p = os.fspath(path)
    try:
        with open(p, "wb") as fh:
            fh.write(data)
    except IsADirectoryError:
        raise FileFormatError(f"{name}: expected a file path, got the directory {p!r}") from None
    except FileNotFoundError:
        raise FileFormatError(f"{name}: cannot write {p!r}: its directory does not exist") from None
    except PermissionError:
        raise FileFormatError(f"{name}: permission denied writing {p!r}") from None
    except OSError as exc:
        raise FileFormatError(f"{name}: cannot write {p!r}: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL byte in the path
        raise FileFormatError(f"{name}: invalid file name {p!r} ({exc})") from None


# ---------------------------------------------------------------------------------------------- text numbers
def _num_str(v: Any, kind: str) -> str:
    """The shortest decimal that reads back (through float64) to exactly ``v``'s bits."""
    if kind == "b":
        return "true" if v else "false"
    if kind in "iu":
        return str(int(v))
    f = float(v)
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "Infinity" if f > 0 else "-Infinity"
    # NumPy's str of a float16/float32 scalar is the shortest repr that round-trips in that dtype
    # (Dragon4); parsing it to float64 and casting back gives the same bits (checked in tests).
    s = repr(f) if isinstance(v, (float, np.float64)) else str(v)
    return s


def _nested_text(arr: np.ndarray, indent: int = 0) -> str:
    kind = arr.dtype.kind
    if arr.ndim == 0:
        return _num_str(arr[()], kind)
    if arr.ndim == 1:
        return "[" + ", ".join(_num_str(v, kind) for v in arr) + "]"
    sep = ",\n" + " " * (indent + 1)
    return "[" + sep.join(_nested_text(sub, indent + 1) for sub in arr) + "]"


def _json_dtype(arr: np.ndarray) -> str:
    return arr.dtype.name


def _check_writable_dtype(arr: np.ndarray, name: str, fmt: str) -> np.ndarray:
    if arr.dtype.kind not in "biuf":
        raise FileFormatError(f"{name}: {fmt} stores bool, integer or float arrays, got dtype {arr.dtype}")
    return arr


def _json_one(arr: np.ndarray, indent: int) -> str:
    pad = " " * indent
    data = _nested_text(arr, indent + 10)
    return (
        "{\n"
        f'{pad}  "shape": {json.dumps([int(d) for d in arr.shape])},\n'
        f'{pad}  "dtype": "{_json_dtype(arr)}",\n'
        f'{pad}  "data": {data}\n'
        f"{pad}}}"
    )


def _json_dumps(arrays: Mapping[str, np.ndarray], single: bool) -> bytes:
    if single:
        (arr,) = arrays.values()
        return (_json_one(arr, 0) + "\n").encode()
    parts = [f"  {json.dumps(k)}: {_json_one(a, 2)}" for k, a in arrays.items()]
    return ("{\n" + ",\n".join(parts) + "\n}\n").encode()


_JSON_DTYPES = {"float16", "float32", "float64", "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}


def _json_array(obj: Any, name: str, where: str) -> np.ndarray:
    """One array from a JSON value: nested lists, or ``{"data": ..., "shape": ..., "dtype": ...}``."""
    shape = dtype = None
    if isinstance(obj, dict):
        extra = set(obj) - {"data", "shape", "dtype"}
        if "data" not in obj or extra:
            raise FileFormatError(
                f"{name}: {where}: expected an array object with keys data, shape, dtype, got keys {', '.join(sorted(obj))}"
            )
        shape, dtype, obj = obj.get("shape"), obj.get("dtype"), obj["data"]
        if dtype is not None and dtype not in _JSON_DTYPES:
            raise FileFormatError(f"{name}: {where}: dtype: expected one of {', '.join(sorted(_JSON_DTYPES))}, got {dtype!r}")
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        obj = [obj]
    flat: list[Any] = []
    dims = _json_collect(obj, flat, name, where, 0)
    if shape is not None:
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise FileFormatError(f"{name}: {where}: shape: expected a list of non-negative integers, got {shape!r}")
    if dtype is None:
        dtype = "bool" if flat and all(isinstance(v, bool) for v in flat) else "float32"
    try:
        if dtype == "bool":
            if not all(isinstance(v, bool) for v in flat):
                raise FileFormatError(f"{name}: {where}: dtype bool: expected true/false values only")
            arr = np.array(flat, dtype=np.bool_)
        elif np.dtype(dtype).kind in "iu":
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
                raise FileFormatError(f"{name}: {where}: dtype {dtype}: expected integers only")
            arr = np.array(flat, dtype=dtype)
        else:
            if any(isinstance(v, bool) for v in flat):
                raise FileFormatError(f"{name}: {where}: expected numbers, got a mix of numbers and true/false")
            arr = _narrow(np.array(flat, dtype=np.float64), np.dtype(dtype), name, where)
    except OverflowError:
        raise FileFormatError(f"{name}: {where}: a value does not fit dtype {dtype}") from None
    target = tuple(shape) if shape is not None else dims
    if math.prod(target) != arr.size:
        raise FileFormatError(f"{name}: {where}: shape {_fmt_shape(target)} needs {math.prod(target)} values, data holds {arr.size}")
    return arr.reshape(target)


def _json_collect(obj: Any, out: list[Any], name: str, where: str, depth: int) -> tuple[int, ...]:
    """Flatten nested lists into ``out`` and return their (rectangular) shape."""
    if depth > MAX_JSON_DEPTH:
        raise FileFormatError(f"{name}: {where}: lists nested more than {MAX_JSON_DEPTH} deep; expected an array of at most 64 dimensions")
    if not isinstance(obj, list):
        if isinstance(obj, (int, float, bool)):
            out.append(obj)
            return ()
        raise FileFormatError(f"{name}: {where}: expected numbers or lists of numbers, got {type(obj).__name__} {obj!r:.40}")
    if not obj:
        return (0,)
    subs = [_json_collect(x, out, name, where, depth + 1) for x in obj]
    if any(s != subs[0] for s in subs):
        raise FileFormatError(f"{name}: {where}: ragged nested lists (rows of different lengths); expected a rectangular array")
    return (len(obj), *subs[0])


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _TooManyDigits(len(text.lstrip("-")))
    return int(text)


class _TooManyDigits(ValueError):
    pass


def _json_loads(data: bytes, name: str, where: str) -> tuple[dict[str, np.ndarray], bool]:
    try:
        obj = json.loads(data.decode("utf-8"), parse_int=_json_int)
    except UnicodeDecodeError:
        raise FileFormatError(f"{name}: {where} is not UTF-8 text, so not JSON") from None
    except json.JSONDecodeError as exc:
        raise FileFormatError(f"{name}: {where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except _TooManyDigits as exc:
        raise FileFormatError(f"{name}: {where}: an integer of {exc.args[0]} digits; at most {MAX_INT_DIGITS} are read") from None
    except RecursionError:
        raise FileFormatError(f"{name}: {where}: JSON nested too deeply; expected an array of at most 64 dimensions") from None
    except ValueError as exc:
        raise FileFormatError(f"{name}: {where} is not valid JSON: {exc}") from None
    if isinstance(obj, dict):
        for k in obj:
            _check_text(k, name, where)
    if isinstance(obj, dict) and not ("data" in obj and set(obj) <= {"data", "shape", "dtype"}):
        if not obj:
            raise FileFormatError(f"{name}: {where}: expected an array or a dict of arrays, got an empty object")
        return {str(k): _json_array(v, name, f"{where}[{k!r}]") for k, v in obj.items()}, False
    return {DEFAULT_KEY: _json_array(obj, name, where)}, True


# ---------------------------------------------------------------------------------------------- CSV
def _csv_dumps(arr: np.ndarray) -> bytes:
    if arr.ndim == 0:
        arr = arr.reshape(1, 1)
    elif arr.ndim == 1:
        arr = arr.reshape(1, -1)
    elif arr.ndim > 2:
        arr = arr.reshape(-1, arr.shape[-1])
    kind = arr.dtype.kind
    if kind == "b":
        arr, kind = arr.astype(np.uint8), "u"
    lines = [",".join(_num_str(v, kind).replace("Infinity", "inf").replace("NaN", "nan") for v in row) for row in arr]
    return ("\n".join(lines) + "\n").encode()


def _cast(arr: np.ndarray, dtype: str, name: str) -> np.ndarray:
    """Cast a float array to the float ``dtype``; bool and integer arrays (masks) stay as they are."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise FileFormatError(f"dtype: expected float16, float32 or float64, got {dtype!r}") from None
    if dt.kind != "f":
        raise FileFormatError(f"dtype: expected float16, float32 or float64, got {dtype!r}")
    return _narrow(arr, dt, name, "the data") if arr.dtype.kind == "f" else arr


def _narrow(arr: np.ndarray, dt: np.dtype, name: str, where: str) -> np.ndarray:
    """``arr`` cast to the float dtype ``dt``; a finite value too large for it is an error, not infinity."""
    with np.errstate(over="ignore"):
        out = arr.astype(dt, copy=False)
    if out.dtype != arr.dtype and out.size and not np.isfinite(out).all():
        bad = np.isfinite(arr) & ~np.isfinite(out)
        if bad.any():
            value = float(arr[bad].flat[0])
            raise FileFormatError(f"{name}: {where}: the value {value!r} does not fit {dt} (largest {float(np.finfo(dt).max):g})")
    return out


def _csv_loads(data: bytes, name: str, where: str, dtype: str = "float32") -> np.ndarray:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise FileFormatError(f"{name}: {where} is not UTF-8 text, so not CSV") from None
    rows: list[list[float]] = []
    width = None
    lineno = 0
    reader = csv.reader(_io.StringIO(text))
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise FileFormatError(f"{name}: {where}: line {lineno + 1}: not readable as CSV ({exc})") from None
        lineno = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        vals = []
        for col, cell in enumerate(row, start=1):
            try:
                if len(cell) > 400:  # no float needs more; a longer cell is not a number we write
                    raise ValueError(cell)
                vals.append(float(cell))
            except ValueError:
                hint = " (a header row? attnkit's CSV has no header and no index column)" if lineno == 1 else ""
                raise FileFormatError(f"{name}: {where}: line {lineno}, column {col}: expected a number, got {cell[:40]!r}{hint}") from None
        if width is None:
            width = len(vals)
        elif len(vals) != width:
            raise FileFormatError(f"{name}: {where}: line {lineno} has {len(vals)} columns, expected {width} like the first row")
        rows.append(vals)
    if not rows:
        raise FileFormatError(f"{name}: {where} holds no numbers")
    return _cast(np.array(rows, dtype=np.float64), dtype, name)


# ---------------------------------------------------------------------------------------------- bytes
def loads(
    data: bytes,
    fmt: str,
    *,
    shape: str | Sequence[int] | None = None,
    name: str = "input",
    where: str = "the data",
    dtype: str | None = None,
) -> dict[str, np.ndarray]:
    """Parse ``data`` in format ``fmt`` into named arrays (single-array formats give ``{"data": arr}``).

    ``shape`` reshapes every array (and is what gives a ``raw`` buffer its shape); ``dtype``
    (``"float32"``/``"float64"``/...) casts float arrays, and sets the precision CSV is read in.
    """
    fmt = detect_format(None, fmt)
    out: dict[str, np.ndarray]
    if fmt == "npy":
        if not data.startswith(b"\x93NUMPY"):
            raise FileFormatError(f"{name}: {where} is not a .npy file (no NumPy header){_looks_like(data)}")
        try:
            arr = np.load(_io.BytesIO(data), allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - NumPy's header parser raises ValueError, SyntaxError, tokenize errors...
            raise FileFormatError(f"{name}: {where} is a corrupt .npy file: {type(exc).__name__}: {str(exc)[:160]}") from None
        if arr.dtype.hasobject or arr.dtype.fields is not None or arr.dtype.kind not in "biufc":
            raise FileFormatError(f"{name}: {where} holds dtype {arr.dtype}; expected a bool, integer or float array")
        out = {DEFAULT_KEY: arr}
    elif fmt == "npz":
        out = _npz_loads(data, name, where)
    elif fmt == "safetensors":
        from ._safetensors import SafetensorsFormatError, load_safetensors

        try:
            out = load_safetensors(data)
        except SafetensorsFormatError as exc:
            raise FileFormatError(f"{name}: {where} is not a readable .safetensors file: {exc}{_looks_like(data, 'safetensors')}") from None
        if not out:
            raise FileFormatError(f"{name}: {where} is a .safetensors file with no tensors")
    elif fmt == "raw":
        if len(data) % 4:
            raise FileFormatError(f"{name}: {where} holds {len(data)} bytes, not a whole number of float32 values (4 bytes each)")
        out = {DEFAULT_KEY: np.frombuffer(data, dtype="<f4").astype(np.float32)}
    elif fmt == "json":
        out, _ = _json_loads(data, name, where)
    else:
        out = {DEFAULT_KEY: _csv_loads(data, name, where, dtype or "float32")}
    if dtype is not None:
        out = {k: _cast(v, dtype, name) for k, v in out.items()}
    if shape is not None:
        out = {k: _reshape(v, shape, name, where if len(out) == 1 else f"{where}[{k!r}]") for k, v in out.items()}
    return out


def _npz_loads(data: bytes, name: str, where: str) -> dict[str, np.ndarray]:
    """Every ``.npy`` member of an ``.npz`` archive; any other member, or a corrupt one, is an error."""
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(_io.BytesIO(data)) as zf:
            members = [i for i in zf.infolist() if not i.is_dir()]
            if not members:
                raise FileFormatError(f"{name}: {where} is an empty .npz archive")
            for info in members:
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                with zf.open(info) as fh:
                    if fh.read(6) != b"\x93NUMPY":
                        raise FileFormatError(f"{name}: {where}: member {info.filename!r} is not a .npy array; an .npz holds .npy files only")
                with zf.open(info) as fh:
                    arr = np.lib.format.read_array(fh, allow_pickle=False)
                if arr.dtype.hasobject or arr.dtype.fields is not None:
                    raise FileFormatError(f"{name}: {where}: member {info.filename!r} has dtype {arr.dtype}; expected numbers")
                out[key] = arr
    except FileFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - zlib.error, BadZipFile, a .npy header that does not tokenize: all a bad file
        why = f"{type(exc).__name__}: {str(exc)[:160]}"
        raise FileFormatError(f"{name}: {where} is not a readable .npz file: {why}{_looks_like(data, 'npz')}") from None
    return out


def _check_text(text: str, name: str, where: str) -> None:
    """Refuse lone UTF-16 surrogates (JSON escapes like \\ud800 that are not text)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = text.encode("utf-8", "backslashreplace").decode()[:40]
        raise FileFormatError(f"{name}: {where}: the key {shown!r} is not valid Unicode text") from None


def _looks_like(data: bytes, claimed: str = "") -> str:
    guess = sniff_format(data[:512])
    return f" (it looks like {guess})" if guess and guess != claimed else ""


def dumps(arrays: np.ndarray | Mapping[str, Any], fmt: str, *, name: str = "output") -> bytes:
    """Serialise one array or named arrays to ``fmt`` bytes. Single-array formats take one array."""
    fmt = detect_format(None, fmt)
    single = not isinstance(arrays, Mapping)
    named: dict[str, np.ndarray] = {DEFAULT_KEY: arrays} if single else dict(arrays)  # type: ignore[dict-item]
    if not named:
        raise FileFormatError(f"{name}: nothing to write (no arrays)")
    named = {str(k): _check_writable_dtype(np.asarray(_host(v)), name, fmt) for k, v in named.items()}
    if fmt not in MULTI_ARRAY_FORMATS and len(named) > 1:
        raise FileFormatError(
            f"{name}: {fmt} holds one array, got {len(named)} ({', '.join(named)}); pick one or write .npz/.safetensors/.json"
        )
    if fmt == "npy":
        buf = _io.BytesIO()
        np.save(buf, next(iter(named.values())), allow_pickle=False)
        return buf.getvalue()
    if fmt == "npz":
        buf = _io.BytesIO()
        np.savez(buf, **named)
        return buf.getvalue()
    if fmt == "safetensors":
        from safetensors.numpy import save as st_save

        return st_save({k: np.ascontiguousarray(v) for k, v in named.items()})
    if fmt == "raw":
        arr = next(iter(named.values()))
        if arr.dtype.kind != "f":
            raise FileFormatError(f"{name}: raw holds float32 values, got dtype {arr.dtype}; write .npy to keep it")
        out = np.ascontiguousarray(arr, dtype="<f4")
        if arr.dtype != np.float32 and not np.array_equal(out, arr, equal_nan=True):
            import logging

            logging.getLogger("attnkit.io").warning("%s: raw stores float32; %s values were rounded", name, arr.dtype)
        return out.tobytes()
    if fmt == "json":
        return _json_dumps(named, single or len(named) == 1 and DEFAULT_KEY in named)
    return _csv_dumps(next(iter(named.values())))


def _host(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x
    from ._array import to_numpy

    return to_numpy(x)


# ---------------------------------------------------------------------------------------------- files
def read_arrays(
    path: str | os.PathLike[str],
    fmt: str | None = None,
    *,
    shape: str | Sequence[int] | None = None,
    name: str = "input",
    dtype: str | None = None,
) -> dict[str, np.ndarray]:
    """Every array in the file ``path`` by name (a single-array file gives ``{"data": arr}``).

    ``path`` ``"-"`` reads standard input (the format from ``fmt`` or the first bytes).
    """
    if os.fspath(path) == "-":
        import sys

        data = read_stream(sys.stdin.buffer, name, "standard input")
        f = detect_format(None, fmt, head=data[:512])
        return loads(data, f, shape=shape, name=name, where="standard input", dtype=dtype)
    data = _read_bytes(path, name)
    f = detect_format(path, fmt, head=data[:512])
    return loads(data, f, shape=shape, name=name, where=repr(os.fspath(path)), dtype=dtype)


def read_array(
    path: str | os.PathLike[str],
    fmt: str | None = None,
    *,
    key: str | None = None,
    shape: str | Sequence[int] | None = None,
    name: str = "input",
    prefer: Iterable[str] = (),
    dtype: str | None = None,
) -> np.ndarray:
    """One array from ``path`` (``path`` may end in ``:KEY`` for a multi-array file).

    In a file with several arrays, ``key`` picks one; without it the first name in ``prefer`` that
    the file holds is used, or the only array. ``shape`` reshapes the result; ``dtype`` casts floats.
    """
    p, k = split_key(path)
    key = key or k
    arrays = read_arrays(p, fmt, name=name, dtype=dtype)
    where = repr(p)
    if key is not None:
        if key not in arrays:
            raise FileFormatError(f"{name}: {where} has no array {key!r}; it holds {', '.join(arrays)}")
        arr = arrays[key]
    elif len(arrays) == 1:
        arr = next(iter(arrays.values()))
    else:
        pick = next((n for n in prefer if n in arrays), None)
        if pick is None:
            raise FileFormatError(f"{name}: {where} holds {len(arrays)} arrays ({', '.join(arrays)}); pick one with {p}:NAME")
        arr = arrays[pick]
    return _reshape(arr, shape, name, where)


def write_arrays(
    path: str | os.PathLike[str],
    arrays: Mapping[str, Any],
    fmt: str | None = None,
    *,
    name: str = "output",
) -> str:
    """Write named arrays to ``path`` (format from ``fmt`` or the extension). Returns the format."""
    f = detect_format(path, fmt)
    _write_bytes(path, dumps(arrays, f, name=name), name)
    return f


def write_array(
    path: str | os.PathLike[str],
    array: Any,
    fmt: str | None = None,
    *,
    key: str | None = None,
    name: str = "output",
) -> str:
    """Write one array to ``path`` (``path`` may end in ``:KEY`` to name it in a multi-array file)."""
    p, k = split_key(path)
    key = key or k
    f = detect_format(p, fmt)
    payload = {key: array} if key is not None and f in MULTI_ARRAY_FORMATS else array
    _write_bytes(p, dumps(payload, f, name=name), name)
    return f
