"""Hypothesis fuzz over every registered mechanism's inputs and options (issue 13, library part).

Each call either returns a finite result of the right shape or raises an attnkit error
(:class:`~attnkit.errors.AttentionError`) whose message names an argument: never another exception,
never a silent NaN. Odd but valid array kinds (read-only, negative-stride and Fortran-order views,
masked arrays without masked entries, longdouble, float64, torch tensors, sparse tensors) must give
the result of the plain contiguous float array (the oracle), within float32 tolerance. Options are
drawn from the registry's option table (the annotations ``bool``, ``int``, ``int | None`` and ``seed``
that ``checked_options`` enforces): invalid values of each kind must raise a ``ConfigError`` naming the
option; sizes beyond memory must be refused with the estimate, or hold nothing.

Derandomized (fixed examples in CI) and sized to run in about a minute.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnkit.errors import AttentionError, ConfigError
from attnkit.mechanisms import registry

NAMES = registry.names()
SETTINGS = settings(derandomize=True, deadline=None, max_examples=250, suppress_health_check=list(HealthCheck), database=None)
_NAMED = re.compile(r"^[A-Za-z_][\w\[\]'\".,= -]*:")


def _names_an_argument(msg: str, *names: str) -> bool:
    """DESIGN.md: a message starts with the argument's name and a colon (or names the one varied)."""
    return bool(_NAMED.match(msg)) or any(n in msg for n in names)


_BUILT: dict[str, Any] = {}


def _mech(name: str) -> Any:
    if name not in _BUILT:
        cls = registry.get(name)
        _BUILT[name] = cls(**cls.example_options)
    return _BUILT[name]


def _seq_axis(name: str, x: np.ndarray, which: str) -> int:
    layout = registry.get(name).input_layout
    if layout == "sequence":
        return -3
    if layout == "graph" and which == "query":
        return 0 if x.ndim == 1 else -2
    return -2


# odd kinds whose result must equal the plain float result
SAME_AS_PLAIN = ("readonly", "negstride", "fortran", "masked_nomask", "longdouble", "float64", "torch", "sparse", "meta")
# kinds that must be refused (a named attnkit error) or, for empty shapes, give an empty result
REFUSED = ("masked_masked", "object", "complex", "int", "bool", "string", "ragged", "bigint", "nan", "inf", "dict", "none", "wrong_width")
EMPTY = ("empty", "zero_batch")


def _odd(x: np.ndarray, kind: str, axis: int) -> Any:
    """``x`` turned into the array kind ``kind`` (see the lists above)."""
    if kind == "readonly":
        y = x.copy()
        y.setflags(write=False)
        return y
    if kind == "negstride":
        return np.flip(np.flip(x, axis=axis).copy(), axis=axis)  # the same values through a negative stride
    if kind == "fortran":
        return np.asfortranarray(x)
    if kind == "masked_nomask":
        return np.ma.masked_array(x, mask=np.zeros(x.shape, bool))
    if kind == "masked_masked":
        m = np.zeros(x.shape, bool)
        m.flat[0] = True
        return np.ma.masked_array(x, mask=m)
    if kind == "longdouble":
        return x.astype(np.longdouble)
    if kind == "float64":
        return x.astype(np.float64)
    if kind == "object":
        return x.astype(object)
    if kind == "complex":
        return x.astype(np.complex64)
    if kind == "int":
        return x.astype(np.int32)
    if kind == "bool":
        return x > 0
    if kind == "string":
        return "query"
    if kind == "dict":
        return {"query": x}
    if kind == "none":
        return None
    if kind == "ragged":
        rows = x.tolist()
        return [rows[0][:-1], *rows[1:]] if len(rows) > 1 and isinstance(rows[0], list) else [rows, [1.0]]
    if kind == "bigint":
        rows = x.tolist()
        inner = rows
        while isinstance(inner[0], list):
            inner = inner[0]
        inner[0] = 10**400
        return rows
    if kind in ("nan", "inf"):
        y = x.copy()
        y.flat[-1] = np.nan if kind == "nan" else -np.inf
        return y
    if kind == "wrong_width":
        return np.zeros((*x.shape[:-1], x.shape[-1] + 1), x.dtype)
    if kind == "empty":
        shape = list(x.shape)
        shape[axis] = 0
        return np.zeros(shape, x.dtype)
    if kind == "zero_batch":
        return np.zeros((0, *x.shape), x.dtype)
    raise AssertionError(kind)  # pragma: no cover


def _check_raised(exc: BaseException, *names: str) -> None:
    assert isinstance(exc, AttentionError), f"raw {type(exc).__name__}: {exc}"
    assert _names_an_argument(str(exc), *names), f"message names no argument: {exc}"


def _as_numpy(out: Any) -> np.ndarray:
    if isinstance(out, torch.Tensor):
        out = out.detach()
        return (out.to_dense() if out.is_sparse else out).double().numpy()
    return np.asarray(out, dtype=np.float64)


@SETTINGS
@given(
    name=st.sampled_from(NAMES),
    which=st.integers(0, 2),
    kind=st.sampled_from(SAME_AS_PLAIN + REFUSED + EMPTY),
    seq_len=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_odd_inputs_give_the_plain_result_or_a_named_error(name: str, which: int, kind: str, seq_len: int, seed: int) -> None:
    mech = _mech(name)
    inputs = list(mech.example_inputs(seq_len, np.random.default_rng(seed)))
    extras = mech.example_extras(seq_len, np.random.default_rng(seed + 1))
    which = min(which, len(inputs) - 1)
    arg = ("query", "key", "value")[which]
    expected = mech.forward(*inputs, **extras)  # the oracle: plain float32 arrays
    assert np.isfinite(_as_numpy(expected)).all()
    call: list[Any] = list(inputs)
    ex = dict(extras)
    if kind in ("torch", "sparse", "meta"):
        dev = "meta" if kind == "meta" else "cpu"
        call = [torch.as_tensor(np.ascontiguousarray(a), device=dev) for a in call]
        ex = {k: torch.as_tensor(v, device=dev) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v for k, v in ex.items()}
        if kind == "sparse":
            call[which] = call[which].to_sparse()
    else:
        call[which] = _odd(np.asarray(inputs[which]), kind, _seq_axis(name, np.asarray(inputs[which]), arg))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = mech.forward(*call, **ex)
        except Exception as exc:  # noqa: BLE001 - the point: only named attnkit errors may come out
            _check_raised(exc, arg)
            # meta tensors: shape inference, or a named error where a value is needed (e.g. data-dependent routing)
            assert kind not in SAME_AS_PLAIN or kind == "meta", f"{name}: a valid {kind} {arg} was refused: {exc}"
            if kind in EMPTY and arg == "query":
                pytest.fail(f"{name}: an empty {arg} must give an empty result, got {type(exc).__name__}: {exc}")
            return
    if kind == "meta":
        assert isinstance(out, torch.Tensor) and out.is_meta and tuple(out.shape) == tuple(expected.shape)
        return
    got = _as_numpy(out)
    assert np.isfinite(got).all(), f"{name}: non-finite result for a {kind} {arg}"
    # a missing key or value may default to the query or the key (self-attention): either outcome is fine
    # and the values' width is free (Dv) except where a projection fixes it
    either = (kind == "none" and arg != "query") or (kind == "wrong_width" and arg == "value")
    assert kind not in REFUSED or either, f"{name}: a {kind} {arg} was accepted"
    if kind in SAME_AS_PLAIN:
        assert got.shape == tuple(expected.shape)
        np.testing.assert_allclose(got, _as_numpy(expected), rtol=2e-4, atol=2e-5)
    elif kind in EMPTY:
        assert got.size == 0 and (arg == "query" or kind == "zero_batch"), f"{name}: empty {arg} gave shape {got.shape}"


# ---------------------------------------------------------------------------------------------- options
def _kinds(name: str) -> dict[str, str]:
    from attnkit._array import option_kinds

    cls = registry.get(name)
    return option_kinds(getattr(cls.__init__, "__wrapped__", cls.__init__))


INVALID = {
    "bool": ["false", "true", "0", 0, 1, 1.0, None],
    "int": ["2", 2.0, 2.5, True, False, 2**70, float("nan"), None],
    "int?": ["2", 2.0, True, 2**70, float("inf")],
    "seed": [-1, 1.5, "7", True, 2**64, 2**70],
}
VALID = {
    "bool": [True, False, np.bool_(True)],
    "int": [1, 2, 3, 4, 8, np.int64(2)],
    "int?": [None, 1, 2, 4, np.int32(2)],
    "seed": [None, 0, 1, 2**32, np.uint64(5)],
}
SIZES = [10**9, 10**12]
OPTION_CASES = [(n, opt, kind) for n in NAMES for opt, kind in sorted(_kinds(n).items())]


def test_the_option_table_covers_every_mechanism() -> None:
    assert {n for n, _, _ in OPTION_CASES} == set(NAMES)
    assert all("check_finite" in _kinds(n) for n in NAMES)


@SETTINGS
@given(case=st.sampled_from(OPTION_CASES), data=st.data())
def test_invalid_option_values_are_refused_naming_the_option(case: tuple[str, str, str], data: st.DataObject) -> None:
    name, opt, kind = case
    bad = data.draw(st.sampled_from(INVALID[kind]), label="value")
    cls = registry.get(name)
    options = {**cls.example_options, opt: bad}
    if bad is None and (kind == "int" and opt not in ("dim", "model_dim", "query_dim", "key_dim")):
        default = [s.default for s in registry.option_specs(name) if s.name == opt]
        if default and default[0] is None:
            return  # None is this option's own default
    with pytest.raises(ConfigError) as info:
        cls(**options)
    assert _names_an_argument(str(info.value), opt), str(info.value)


@SETTINGS
@given(case=st.sampled_from(OPTION_CASES), data=st.data())
def test_valid_option_values_build_a_working_mechanism_or_a_named_conflict(case: tuple[str, str, str], data: st.DataObject) -> None:
    name, opt, kind = case
    value = data.draw(st.sampled_from(VALID[kind]), label="value")
    cls = registry.get(name)
    try:
        mech = cls(**{**cls.example_options, opt: value})
    except Exception as exc:  # noqa: BLE001 - e.g. heads must divide model_dim: a named ConfigError
        _check_raised(exc, opt)
        return
    inputs = mech.example_inputs(3, np.random.default_rng(0))
    extras = mech.example_extras(3, np.random.default_rng(1))
    try:
        out = mech.forward(*inputs, **extras)
    except Exception as exc:  # noqa: BLE001
        _check_raised(exc, opt)
        return
    assert np.isfinite(_as_numpy(out)).all(), f"{name}({opt}={value!r}): non-finite result"


@settings(derandomize=True, deadline=None, max_examples=60, database=None)
@given(case=st.sampled_from([c for c in OPTION_CASES if c[2] in ("int", "int?") and c[1] != "seed"]), size=st.sampled_from(SIZES))
def test_sizes_beyond_memory_are_refused_before_allocating(case: tuple[str, str, str], size: int) -> None:
    """A size option that cannot fit is refused with the estimate, or (a count that allocates nothing) holds little."""
    name, opt, _ = case
    cls = registry.get(name)
    try:
        mech = cls(**{**cls.example_options, opt: size})
    except Exception as exc:  # noqa: BLE001
        _check_raised(exc, opt)
        return
    assert mech.memory_usage().heap_used < 64 << 20, f"{name}({opt}={size}) holds {mech.memory_usage().heap_used} bytes"


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("multi_head", {"model_dim": 2**20, "heads": 1}, r"would need about 16\.0 TiB"),
        ("edge_featured", {"dim": 4096, "edge_dim": 4096, "heads": 128, "concat": False, "out_dim": 4096}, r"would need about"),
        ("linear", {"dim": 4, "heads": 2, "feature_map": "favor", "nb_features": 10**9}, r"FAVOR\+ projection would need about"),
        ("moe", {"dim": 4, "num_experts": 10**5, "top_k": 1}, r"^num_experts: expected at most"),
        ("flash", {"heads": 2, "dim": 10**9, "rope": True}, r"^dim: rotary frequency and cos/sin tables would need about"),
        ("graph_rope", {"dim": 10**9}, r"^dim: rotary"),
        ("flash", {"heads": 10**9, "dim": 4, "alibi_slopes": True}, r"^heads: ALiBi slopes .* would need about"),
    ],
)
def test_the_issue_examples_are_refused_with_an_estimate(name: str, options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        registry.get(name)(**options)


def test_the_allocation_limit_can_be_raised_and_lowered(monkeypatch: pytest.MonkeyPatch) -> None:
    from attnkit import MultiHeadAttention

    monkeypatch.setenv("ATTNKIT_MAX_ALLOC_BYTES", "1000")
    with pytest.raises(ConfigError, match=r"^model_dim=8, heads=2.*1000 bytes|more than the 1000 B allowed"):
        MultiHeadAttention(8, heads=2)
    monkeypatch.setenv("ATTNKIT_MAX_ALLOC_BYTES", "1e6")
    assert MultiHeadAttention(8, heads=2).param_shapes()["q_proj.weight"] == (8, 8)
