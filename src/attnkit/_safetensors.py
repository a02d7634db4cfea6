"""Reading safetensors bytes with every float dtype the format defines, BF16 and FP8 included.

The ``safetensors`` package reads files whose dtypes NumPy has; bfloat16 (``BF16``) and the two FP8
formats (``F8_E4M3`` and ``F8_E5M2``, Micikevicius et al. 2022, "FP8 Formats for Deep Learning") have no
NumPy dtype, so a file holding one of them is decoded here, to float32, which represents every value of
the three formats exactly:

* BF16 is the upper half of an IEEE float32: ``f32_bits = u16 << 16``.
* E4M3 ("FN": finite, no infinities): 1 sign, 4 exponent (bias 7) and 3 mantissa bits; exponent 0 is
  subnormal, ``m/8 * 2**-6``; ``S.1111.111`` is NaN; the largest finite value is 448.
* E5M2: 1 sign, 5 exponent (bias 15) and 2 mantissa bits, IEEE-like: exponent 31 is infinity
  (mantissa 0) or NaN; subnormals ``m/4 * 2**-14``; the largest finite value is 57344.

The header is validated first (length within the buffer, a JSON object, known dtypes, shapes of
non-negative integers, data offsets inside the data section and matching the shape), so that a hostile
file gives :class:`SafetensorsFormatError` before anything is allocated.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np

__all__ = ["SafetensorsFormatError", "load_safetensors", "decode_float8", "decode_bfloat16", "ST_DTYPES"]

#: safetensors dtype names that NumPy reads directly
ST_DTYPES: dict[str, str] = {
    "BOOL": "bool",
    "U8": "<u1",
    "I8": "<i1",
    "U16": "<u2",
    "I16": "<i2",
    "U32": "<u4",
    "I32": "<i4",
    "U64": "<u8",
    "I64": "<i8",
    "F16": "<f2",
    "F32": "<f4",
    "F64": "<f8",
}
#: dtypes decoded here, with their size in bytes
_DECODED = {"BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}


class SafetensorsFormatError(ValueError):
    """The bytes are not a valid safetensors file (the message says what is wrong)."""


def _float8_table(exp_bits: int, man_bits: int, finite_only: bool) -> np.ndarray:
    codes = np.arange(256, dtype=np.int64)
    sign = np.where(codes >> 7, -1.0, 1.0)
    e = (codes >> man_bits) & ((1 << exp_bits) - 1)
    m = codes & ((1 << man_bits) - 1)
    bias = (1 << (exp_bits - 1)) - 1
    normal = (1.0 + m / (1 << man_bits)) * np.exp2(e.astype(np.float64) - bias)
    sub = (m / (1 << man_bits)) * 2.0 ** (1 - bias)
    val = sign * np.where(e == 0, sub, normal)
    top = (1 << exp_bits) - 1
    if finite_only:  # E4M3FN: only S.1111.111 is NaN
        val = np.where((e == top) & (m == (1 << man_bits) - 1), np.nan, val)
    else:  # E5M2: IEEE special values
        val = np.where((e == top) & (m == 0), sign * np.inf, val)
        val = np.where((e == top) & (m != 0), np.nan, val)
    return val.astype(np.float32)


_E4M3 = _float8_table(4, 3, finite_only=True)
_E5M2 = _float8_table(5, 2, finite_only=False)


def decode_float8(raw: np.ndarray, kind: str) -> np.ndarray:
    """FP8 codes (uint8) of ``kind`` ``"F8_E4M3"`` or ``"F8_E5M2"`` -> float32 (exact)."""
    table = _E4M3 if kind == "F8_E4M3" else _E5M2
    return table[np.asarray(raw, dtype=np.uint8)]


def decode_bfloat16(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32 (exact)."""
    return (np.asarray(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)


def _header(data: bytes) -> tuple[dict[str, Any], int]:
    if len(data) < 8:
        raise SafetensorsFormatError(f"{len(data)} bytes; a safetensors file starts with an 8-byte header length")
    (hlen,) = struct.unpack_from("<Q", data, 0)
    if hlen > len(data) - 8:
        raise SafetensorsFormatError(f"the header length field says {hlen} bytes, but only {len(data) - 8} follow it")
    try:
        header = json.loads(data[8 : 8 + hlen].decode("utf-8"))
    except RecursionError:
        raise SafetensorsFormatError("the header is JSON nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise SafetensorsFormatError(f"the header is not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(header, dict):
        raise SafetensorsFormatError(f"the header is a JSON {type(header).__name__}, expected an object")
    return header, 8 + hlen


def _entries(header: dict[str, Any], data_len: int) -> dict[str, tuple[str, tuple[int, ...], int, int]]:
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise SafetensorsFormatError(f"tensor {name[:40]!r}: expected an object with dtype, shape and data_offsets")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in ST_DTYPES and dtype not in _DECODED:
            raise SafetensorsFormatError(
                f"tensor {name[:40]!r}: dtype {str(dtype)[:20]!r} is not one attnkit reads ({', '.join([*ST_DTYPES, *_DECODED])})"
            )
        if not isinstance(shape, list) or len(shape) > 64 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise SafetensorsFormatError(f"tensor {name[:40]!r}: shape must be a list of non-negative integers, got {str(shape)[:60]}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise SafetensorsFormatError(f"tensor {name[:40]!r}: data_offsets {str(offsets)[:60]} are not inside the {data_len}-byte data section")
        itemsize = _DECODED.get(dtype) or np.dtype(ST_DTYPES[dtype]).itemsize
        if math.prod(shape) * itemsize != offsets[1] - offsets[0]:
            need, span = math.prod(shape) * itemsize, offsets[1] - offsets[0]
            raise SafetensorsFormatError(f"tensor {name[:40]!r}: shape {shape} of {dtype} needs {need} bytes, its offsets span {span}")
        out[name] = (dtype, tuple(shape), offsets[0], offsets[1])
    return out


def load_safetensors(data: bytes) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors buffer as a NumPy array; BF16 and FP8 become float32."""
    header, start = _header(bytes(data))
    entries = _entries(header, len(data) - start)
    if not any(e[0] in _DECODED for e in entries.values()):
        from safetensors.numpy import load

        try:
            return dict(load(bytes(data)))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for every malformed file
            raise SafetensorsFormatError(str(exc)[:200]) from None
    out = {}
    for name, (dtype, shape, lo, hi) in entries.items():
        buf = np.frombuffer(data, dtype=np.uint8, count=hi - lo, offset=start + lo)
        if dtype == "BF16":
            arr = decode_bfloat16(buf.view("<u2"))
        elif dtype in _DECODED:
            arr = decode_float8(buf, dtype)
        else:
            arr = buf.view(ST_DTYPES[dtype]).astype(np.dtype(ST_DTYPES[dtype]).newbyteorder("="))
        out[name] = arr.reshape(shape)
    return out
