"""attnkit.io: every format round-trips arrays bit for bit; bad files raise FileFormatError naming the argument."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from attnkit import AttentionError
from attnkit import io as aio
from attnkit.io import FileFormatError

EXT = {"npy": "npy", "npz": "npz", "safetensors": "safetensors", "raw": "bin", "json": "json", "csv": "csv"}


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint8)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Same shape, dtype and bytes (so -0.0 != 0.0 and NaN payloads count)."""
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(bits(a), bits(b))


def nasty_float32(n: int, seed: int = 0) -> np.ndarray:
    """Random bit patterns (every exponent, subnormals) plus the edge values, finite only."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = x[np.isfinite(x)]
    edge = np.array(
        [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.1,
            1 / 3,
            np.finfo(np.float32).max,
            -np.finfo(np.float32).max,
            np.finfo(np.float32).tiny,
            np.finfo(np.float32).smallest_subnormal,
            16777217.0,
            3.4e-38,
        ],
        dtype=np.float32,
    )
    return np.concatenate([edge, x])


# ------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("fmt", aio.FORMATS)
def test_float32_round_trip_is_bit_exact(tmp_path, fmt):
    x = nasty_float32(3000, seed=1)[:2400].reshape(40, 60)
    p = tmp_path / f"x.{EXT[fmt]}"
    aio.write_array(p, x)
    y = aio.read_array(p, shape=x.shape if fmt == "raw" else None)
    assert same(x, y)


@pytest.mark.parametrize("fmt", ["npy", "npz", "safetensors", "json"])
@pytest.mark.parametrize("dtype", ["float16", "float64", "bool", "int32", "int64", "uint8"])
def test_other_dtypes_keep_dtype_and_bits(tmp_path, fmt, dtype):
    rng = np.random.default_rng(2)
    if dtype == "bool":
        x = rng.random((3, 5, 2)) > 0.5
    elif dtype.startswith(("int", "uint")):
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, size=(3, 5, 2), dtype=dtype, endpoint=True)
    else:
        x = (rng.standard_normal((3, 5, 2)) * 100).astype(dtype)
    p = tmp_path / f"x.{EXT[fmt]}"
    aio.write_array(p, x)
    assert same(x, aio.read_array(p))


def test_json_float32_shortest_text_is_exact_for_many_bit_patterns():
    x = nasty_float32(200_000, seed=3)
    y = aio.loads(aio.dumps(x, "json"), "json")["data"]
    assert same(x, y)
    # and it is the short form, not float64's 17 digits
    assert aio.dumps(np.array([0.1], np.float32), "json").count(b"0.1") == 1
    assert b"0.10000000149" not in aio.dumps(np.array([0.1], np.float32), "json")


def test_json_non_finite_values_round_trip():
    x = np.array([np.nan, np.inf, -np.inf, 1.5], dtype=np.float32)
    text = aio.dumps(x, "json")
    assert b"NaN" in text and b"-Infinity" in text
    y = aio.loads(text, "json")["data"]
    assert np.isnan(y[0]) and y[1] == np.inf and y[2] == -np.inf and y[3] == 1.5


def test_json_layouts_read():
    # plain nested lists -> float32; booleans -> bool; object form; dict of arrays
    assert aio.loads(b"[[1, 2], [3, 4]]", "json")["data"].dtype == np.float32
    assert aio.loads(b"[true, false]", "json")["data"].dtype == np.bool_
    obj = aio.loads(b'{"shape": [2, 2], "dtype": "float64", "data": [1, 2, 3, 4]}', "json")["data"]
    assert obj.shape == (2, 2) and obj.dtype == np.float64
    many = aio.loads(b'{"q": [[1.0, 2.0]], "k": {"data": [[3.0, 4.0]]}}', "json")
    assert list(many) == ["q", "k"] and many["k"].tolist() == [[3.0, 4.0]]
    empty = aio.loads(aio.dumps(np.zeros((0, 3), np.float32), "json"), "json")["data"]
    assert empty.shape == (0, 3)


def test_csv_is_a_plain_table_without_index_or_header(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    p = tmp_path / "x.csv"
    aio.write_array(p, x)
    lines = p.read_text().strip().splitlines()
    assert len(lines) == 3  # no header row
    assert all(len(line.split(",")) == 4 for line in lines)  # no index column
    assert float(lines[0].split(",")[0]) == 0.0
    assert same(x, aio.read_array(p))
    # the same file again: the round trip does not grow a column each time (the upstream bug)
    aio.write_array(p, aio.read_array(p))
    assert same(x, aio.read_array(p))


def test_csv_1d_and_nd_shapes(tmp_path):
    p = tmp_path / "v.csv"
    v = np.array([1.5, -2.0, 3.25], np.float32)
    aio.write_array(p, v)
    assert aio.read_array(p).shape == (1, 3)
    assert same(v, aio.read_array(p, shape=(3,)))
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    aio.write_array(p, x)
    assert aio.read_array(p).shape == (6, 4)
    assert same(x, aio.read_array(p, shape="2,3,4"))
    d = x.astype(np.float64)
    aio.write_array(p, d)
    assert same(d, aio.read_array(p, shape="2x3x4", dtype="float64"))


def test_raw_is_little_endian_float32_bytes(tmp_path):
    x = np.array([[1.0, -2.5], [3.0, 1e-3]], np.float32)
    p = tmp_path / "x.bin"
    aio.write_array(p, x)
    assert p.read_bytes() == x.astype("<f4").tobytes()
    assert aio.read_array(p).shape == (4,)
    assert same(x, aio.read_array(p, shape=(2, -1)))


def test_multi_array_files_and_keys(tmp_path):
    arrays = {"q": np.ones((2, 3), np.float32), "k": np.zeros((4, 3), np.float64), "mask": np.eye(2, 4, dtype=bool)}
    for fmt in ("npz", "safetensors", "json"):
        p = tmp_path / f"m.{EXT[fmt]}"
        aio.write_arrays(p, arrays)
        back = aio.read_arrays(p)
        assert set(back) == set(arrays)
        for k in arrays:
            assert same(arrays[k], back[k])
        assert same(arrays["k"], aio.read_array(f"{p}:k"))
        assert same(arrays["q"], aio.read_array(p, prefer=("query", "q")))
        with pytest.raises(FileFormatError, match="holds 3 arrays"):
            aio.read_array(p)
        with pytest.raises(FileFormatError, match="no array 'x'"):
            aio.read_array(f"{p}:x")


def test_bytes_api_and_sniffing(tmp_path):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for fmt in ("npy", "npz", "safetensors", "json", "csv"):
        data = aio.dumps(x, fmt)
        assert aio.sniff_format(data[:512]) == fmt
        p = tmp_path / f"noext_{fmt}"
        p.write_bytes(data)
        assert aio.read_array(p).reshape(2, 3).tolist() == x.tolist()


def test_split_key_only_for_multi_array_files():
    assert aio.split_key("a.npz:q") == ("a.npz", "q")
    assert aio.split_key("dir/a.safetensors:out") == ("dir/a.safetensors", "out")
    assert aio.split_key("a.npy") == ("a.npy", None)
    assert aio.split_key("C:\\data\\a.npy") == ("C:\\data\\a.npy", None)
    assert aio.split_key("weird:name.npy") == ("weird:name.npy", None)


def test_parse_shape():
    assert aio.parse_shape("8,2,16") == (8, 2, 16)
    assert aio.parse_shape("8x2x16") == (8, 2, 16)
    assert aio.parse_shape("(4, -1)") == (4, -1)
    for bad in ("", "a,b", "-2,3", "-1,-1"):
        with pytest.raises(AttentionError, match="shape"):
            aio.parse_shape(bad)


# ------------------------------------------------------------------------------------------ bad files
def test_bad_files_raise_named_errors(tmp_path):
    def err(path, **kw):
        with pytest.raises(AttentionError) as info:  # FileFormatError, or ShapeError for a shape mismatch
            aio.read_array(path, name="query", **kw)
        msg = str(info.value)
        assert msg.startswith("query:"), msg
        return msg

    assert "file not found" in err(tmp_path / "missing.npy")
    assert "directory" in err(tmp_path)
    (tmp_path / "bad.npy").write_text("[1, 2, 3]")
    assert "not a .npy file" in err(tmp_path / "bad.npy") and "looks like json" in err(tmp_path / "bad.npy")
    good = aio.dumps(np.ones((4, 4), np.float32), "npy")
    (tmp_path / "cut.npy").write_bytes(good[:-10])
    assert "corrupt" in err(tmp_path / "cut.npy")
    (tmp_path / "obj.npy").write_bytes(_object_npy())
    assert "corrupt" in err(tmp_path / "obj.npy")  # allow_pickle=False: object arrays are refused
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    assert "safetensors" in err(tmp_path / "bad.safetensors")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04garbage")
    assert ".npz" in err(tmp_path / "bad.npz")
    (tmp_path / "odd.bin").write_bytes(b"\x00" * 10)
    assert "whole number of float32" in err(tmp_path / "odd.bin")
    (tmp_path / "ragged.json").write_text("[[1, 2], [3]]")
    assert "ragged" in err(tmp_path / "ragged.json")
    (tmp_path / "text.json").write_text('{"data": "abc"}')
    assert "expected numbers" in err(tmp_path / "text.json")
    (tmp_path / "broken.json").write_text("[1, 2")
    assert "not valid JSON" in err(tmp_path / "broken.json")
    (tmp_path / "header.csv").write_text("a,b\n1,2\n")
    assert "header" in err(tmp_path / "header.csv")
    (tmp_path / "ragged.csv").write_text("1,2\n3\n")
    assert "line 2 has 1 columns" in err(tmp_path / "ragged.csv")
    (tmp_path / "ok.csv").write_text("1,2,3\n4,5,6\n")
    assert "holds 6 values, expected 4" in err(tmp_path / "ok.csv", shape="2,2")
    (tmp_path / "x.weird").write_bytes(b"\x01\x02\x03")
    assert "cannot tell the format" in str(pytest.raises(FileFormatError, aio.read_array, tmp_path / "x.weird").value)


def _object_npy() -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buf.getvalue()


def test_write_errors(tmp_path):
    with pytest.raises(FileFormatError, match="holds one array"):
        aio.dumps({"a": np.ones(2), "b": np.ones(2)}, "npy")
    with pytest.raises(FileFormatError, match="raw holds float32"):
        aio.dumps(np.ones(2, dtype=np.int32), "raw")
    with pytest.raises(FileFormatError, match="stores bool, integer or float"):
        aio.dumps(np.array(["a"]), "npy")
    with pytest.raises(FileFormatError, match="directory does not exist"):
        aio.write_array(tmp_path / "no" / "such" / "x.npy", np.ones(2))


def test_npz_written_is_a_plain_numpy_archive(tmp_path):
    p = tmp_path / "a.npz"
    aio.write_arrays(p, {"q": np.ones(3, np.float32)})
    with zipfile.ZipFile(p) as z:
        assert z.namelist() == ["q.npy"]
    with np.load(p) as z:
        assert z["q"].tolist() == [1.0, 1.0, 1.0]


def test_json_is_valid_json_for_finite_data():
    x = np.random.default_rng(4).standard_normal((3, 2)).astype(np.float32)
    obj = json.loads(aio.dumps({"x": x}, "json"))
    assert obj["x"]["shape"] == [3, 2] and obj["x"]["dtype"] == "float32"
    assert np.array(obj["x"]["data"], dtype=np.float32).tolist() == x.tolist()


# ------------------------------------------------------------------------------------------ properties
float32_arrays = hnp.arrays(
    dtype=np.float32,
    shape=hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=6),
    elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=60, deadline=None)
@given(x=float32_arrays, fmt=st.sampled_from(["json", "csv", "npy", "safetensors", "raw", "npz"]))
def test_property_round_trip_any_2d_float32(x, fmt):
    data = aio.dumps(x, fmt)
    y = aio.loads(data, fmt, shape=x.shape if fmt == "raw" else None)["data" if fmt != "npz" else "data"]
    assert same(x, y)


@settings(max_examples=40, deadline=None)
@given(
    x=hnp.arrays(
        dtype=np.float64, shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=4), elements=st.floats(allow_nan=False, allow_infinity=False)
    )
)
def test_property_json_float64_exact(x):
    assert same(x, aio.loads(aio.dumps(x, "json"), "json")["data"])
