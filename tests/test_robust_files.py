"""Hostile files: every reader in attnkit.io / attnkit.weights / attnkit.cli.config either returns arrays or
raises an attnkit error naming the argument (issue 13). Oracles: torch and ml_dtypes for BF16/FP8
decoding; the fuzz part checks only the error contract (no other exception type escapes)."""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnkit import io as aio
from attnkit import weights as W
from attnkit._safetensors import decode_bfloat16, decode_float8
from attnkit.cli.config import load_config
from attnkit.errors import AttentionError


def _st_bytes(dtype: str, raw: bytes, shape: list[int]) -> bytes:
    h = json.dumps({"x": {"dtype": dtype, "shape": shape, "data_offsets": [0, len(raw)]}}).encode()
    return struct.pack("<Q", len(h)) + h + raw


def _raises(fn, *names: str) -> str:
    with pytest.raises(AttentionError) as info:
        fn()
    msg = str(info.value)
    assert any(n in msg for n in names), msg
    return msg


# ------------------------------------------------------------------ named classes of bad files
def test_deeply_nested_json(tmp_path: Path) -> None:
    p = tmp_path / "d.json"
    p.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    _raises(lambda: aio.read_arrays(p), "input:")
    p.write_bytes(b"[" * 70 + b"1" + b"]" * 70)  # parses, but deeper than any array
    _raises(lambda: aio.read_arrays(p), "input:")


def test_json_integer_with_too_many_digits(tmp_path: Path) -> None:
    p = tmp_path / "big.json"
    p.write_bytes(b"[" + b"9" * 5000 + b"]")
    assert "5000 digits" in _raises(lambda: aio.read_arrays(p, name="query"), "query:")


def test_json_lone_surrogate_key(tmp_path: Path) -> None:
    p = tmp_path / "s.json"
    p.write_bytes(b'{"\\ud800": [1.0]}')
    _raises(lambda: aio.read_arrays(p), "input:")


def test_csv_field_over_128k(tmp_path: Path) -> None:
    p = tmp_path / "f.csv"
    p.write_bytes(b"1," + b"1" * 200_000 + b"\n")
    _raises(lambda: aio.read_arrays(p), "input:")
    p.write_bytes(b"1," + b"1" * 1000 + b"\n")  # long but under the csv limit: still not a number we read
    _raises(lambda: aio.read_arrays(p), "input:")


def test_corrupt_npz_and_foreign_members(tmp_path: Path) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, a=np.arange(1000.0))
    data = bytearray(buf.getvalue())
    data[60:80] = b"\0" * 20
    (tmp_path / "c.npz").write_bytes(bytes(data))
    _raises(lambda: aio.read_arrays(tmp_path / "c.npz"), "input:")
    _raises(lambda: W.load_state(tmp_path / "c.npz"), "weights")
    zb = io.BytesIO()
    with zipfile.ZipFile(zb, "w") as zf:
        zf.writestr("a.txt", "hello")
    (tmp_path / "m.npz").write_bytes(zb.getvalue())
    assert "a.txt" in _raises(lambda: aio.read_arrays(tmp_path / "m.npz"), "input:")
    assert "a.txt" in _raises(lambda: W.load_state(tmp_path / "m.npz"), "weights")


def test_npy_with_structured_dtype_is_refused() -> None:
    buf = io.BytesIO()
    np.save(buf, np.zeros(3, dtype=[("a", "f4"), ("b", "i4")]))
    _raises(lambda: aio.loads(buf.getvalue(), "npy", name="query"), "query:")


@pytest.mark.parametrize("hlen", [2**63, 2**40, 10**6, 3])
def test_bogus_safetensors_header_length(hlen: int) -> None:
    data = struct.pack("<Q", hlen) + b"{}"
    _raises(lambda: aio.loads(data, "safetensors", name="keys"), "keys:")
    _raises(lambda: W.load_state(data), "weights")


@pytest.mark.parametrize(
    "header",
    [
        {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 400]}},
        {"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}},
        {"x": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}},
        {"x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 2]}},
        {"x": [1, 2]},
        [1],
    ],
)
def test_malformed_safetensors_headers(header: object) -> None:
    h = json.dumps(header).encode()
    data = struct.pack("<Q", len(h)) + h + b"\0" * 16
    _raises(lambda: aio.loads(data, "safetensors", name="values"), "values:")


def test_bf16_safetensors_match_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save

    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    x[0, 0] = float("inf")
    data = save({"w": x})
    got = aio.loads(data, "safetensors")["w"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, x.float().numpy())
    (tmp_path / "w.safetensors").write_bytes(data)
    np.testing.assert_array_equal(W.load_state(tmp_path / "w.safetensors")["w"], x.float().numpy())


@pytest.mark.parametrize("kind", ["F8_E4M3", "F8_E5M2"])
def test_fp8_decoding_matches_ml_dtypes_and_torch(kind: str) -> None:
    codes = np.arange(256, dtype=np.uint8)
    got = decode_float8(codes, kind)
    ml = pytest.importorskip("ml_dtypes")
    ref = codes.view(ml.float8_e4m3fn if kind == "F8_E4M3" else ml.float8_e5m2).astype(np.float32)
    np.testing.assert_array_equal(got, ref)  # NaN positions compare equal too
    torch = pytest.importorskip("torch")
    tdt = torch.float8_e4m3fn if kind == "F8_E4M3" else torch.float8_e5m2
    np.testing.assert_array_equal(got, torch.from_numpy(codes).view(tdt).float().numpy())
    arr = aio.loads(_st_bytes(kind, codes.tobytes(), [16, 16]), "safetensors")["x"]
    np.testing.assert_array_equal(arr, got.reshape(16, 16))


def test_bf16_decoding_of_every_pattern() -> None:
    ml = pytest.importorskip("ml_dtypes")
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    np.testing.assert_array_equal(decode_bfloat16(bits), bits.view(ml.bfloat16).astype(np.float32))


E = 4
GOOD_MHA = {
    "in_proj_weight": np.zeros((12, 4), "f4"),
    "in_proj_bias": np.zeros(12, "f4"),
    "out_proj.weight": np.zeros((4, 4), "f4"),
    "out_proj.bias": np.zeros(4, "f4"),
}


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"in_proj_bias": np.zeros(10, "f4")}, "in_proj_bias"),
        ({"in_proj_bias": np.float32(0)}, "in_proj_bias"),
        ({"out_proj.weight": np.float32(1)}, "out_proj.weight"),
        ({"in_proj_weight": np.float32(1)}, "in_proj_weight"),
        ({"in_proj_weight": np.zeros((12, 5), "f4")}, "in_proj_weight"),
        ({"out_proj.bias": np.zeros(3, "f4")}, "out_proj.bias"),
        ({"out_proj.weight": None}, "out_proj.weight"),
        ({"in_proj_weight": None}, "q_proj_weight"),
    ],
)
def test_malformed_torch_state_dicts(change: dict, name: str) -> None:
    sd = {**GOOD_MHA, **change}
    sd = {k: v for k, v in sd.items() if v is not None}
    _raises(lambda: W.from_torch_mha(sd), name)
    _raises(lambda: W.to_attnkit(sd), name, "weights")


def test_torch_file_that_needs_pickle(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")

    torch.save({"a": _Opaque()}, tmp_path / "p.pt")
    msg = _raises(lambda: W.load_state(tmp_path / "p.pt"), "weights")
    assert "weights_only=False" not in msg


class _Opaque:
    pass


def test_unwritable_output_paths(tmp_path: Path) -> None:
    _raises(lambda: aio.write_array(tmp_path / "no" / "such" / "x.npy", np.zeros(3)), "output:")
    _raises(lambda: aio.write_array(tmp_path, np.zeros(3), "npy"), "output:")
    _raises(lambda: aio.write_array("/dev/full", np.zeros(3), "npy"), "output:")
    _raises(lambda: aio.write_array(str(tmp_path / "a\0b.npy"), np.zeros(3)), "output:")


def test_device_files_are_read_with_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNKIT_MAX_INPUT_BYTES", "4096")
    assert "more than 4096 bytes" in _raises(lambda: aio.read_arrays("/dev/zero", "raw", name="query"), "query:")


def test_config_toml_not_utf8_or_nested_too_deep(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_bytes(b"\xff\xfe[attention]")
    _raises(lambda: load_config(p), "UTF-8")
    p.write_bytes(b"a = " + b"[" * 100_000 + b"]" * 100_000)
    _raises(lambda: load_config(p), "nested too deeply")
    p.write_bytes(b"a = " + b"{b=" * 5000 + b"1" + b"}" * 5000)
    _raises(lambda: load_config(p), "nested too deeply")


# ------------------------------------------------------------------ fuzz: the error contract
def _valid_files() -> dict[str, bytes]:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    return {f: aio.dumps({"q": x, "k": x + 1} if f in aio.MULTI_ARRAY_FORMATS else x, f) for f in aio.FORMATS}


VALID = _valid_files()


def _contract(data: bytes, fmt: str) -> None:
    try:
        out = aio.loads(data, fmt, name="query")
    except AttentionError as exc:
        assert "query" in str(exc) or "format" in str(exc), str(exc)
        return
    assert all(isinstance(v, np.ndarray) for v in out.values())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(aio.FORMATS), data=st.binary(max_size=256))
def test_random_bytes_in_every_format(fmt: str, data: bytes) -> None:
    _contract(data, fmt)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(aio.FORMATS),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.none() | st.integers(0, 10_000),
)
def test_mutated_valid_files(fmt: str, edits: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(VALID[fmt])
    for pos, byte in edits:
        data[pos % len(data)] = byte
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    _contract(bytes(data), fmt)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=json_values)
def test_arbitrary_json_documents(doc: object) -> None:
    _contract(json.dumps(doc).encode(), "json")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    state=st.dictionaries(
        st.sampled_from(
            [
                "in_proj_weight",
                "in_proj_bias",
                "out_proj.weight",
                "out_proj.bias",
                "q_proj_weight",
                "k_proj_weight",
                "v_proj_weight",
                "q_proj.weight",
                "k_proj.weight",
                "v_proj.weight",
                "bert.attention.self.query.weight",
            ]
        ),
        st.lists(st.integers(0, 13), max_size=3).map(lambda s: np.zeros(s, "f4")),
    )
)
def test_arbitrary_state_dicts(state: dict) -> None:
    for fn in (W.to_attnkit, W.from_torch_mha, W.to_torch_mha, W.to_hf_bert):
        try:
            out = fn(state)
        except AttentionError:
            continue
        assert all(v.ndim in (1, 2) for v in out.values())


def test_stdin_bound_message_names_the_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    class _Endless:
        def read(self, n: int) -> bytes:
            return b"\0" * n

    monkeypatch.setenv("ATTNKIT_MAX_INPUT_BYTES", "100")
    _raises(lambda: aio.read_stream(_Endless(), "query", "standard input"), "query:")
    monkeypatch.setenv("ATTNKIT_MAX_INPUT_BYTES", "zero")
    _raises(lambda: aio.stream_limit(), "ATTNKIT_MAX_INPUT_BYTES")
    assert os.environ["ATTNKIT_MAX_INPUT_BYTES"] == "zero"


# ------------------------------------------------------------------ option validators (_array)
def test_option_validators() -> None:
    from attnkit._array import bool_option, check_allocation, int_option, seed_option
    from attnkit.errors import ConfigError

    assert bool_option(True, "causal") is True and bool_option(np.bool_(False), "causal") is False
    for bad in ("false", "true", 0, 1, None, 1.0):
        with pytest.raises(ConfigError, match="causal"):
            bool_option(bad, "causal")
    assert int_option(np.int64(3), "heads", minimum=1) == 3
    for bad in (True, 2.0, "2", None, 0):
        with pytest.raises(ConfigError, match="heads"):
            int_option(bad, "heads", minimum=1)
    assert seed_option(None) is None and seed_option(2**64 - 1) == 2**64 - 1
    for bad in (-1, 2**64, 1.5, True, "7"):
        with pytest.raises(ConfigError, match="seed"):
            seed_option(bad)
    assert check_allocation(1000, "heads", "weights", limit=1000) == 1000
    with pytest.raises(ConfigError, match=r"heads, dim: projection weights would need about 16\.0 GiB"):
        check_allocation(4 * 4 * 2**16 * 2**14, "heads, dim", "projection weights", limit=2**30)
    with pytest.raises(ConfigError, match="nb_features"):
        check_allocation(float("nan"), "nb_features", "features", limit=1)
