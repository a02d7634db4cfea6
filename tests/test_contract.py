"""The mechanism contract (issue 10), checked on every registered mechanism from its declared metadata.

Nothing here is listed by hand: a new mechanism that registers itself and declares its metadata is
checked the same way. NumPy only; the torch and JAX forms live in their own test modules.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import attnkit
from attnkit.errors import ConfigError, ShapeError
from attnkit.mechanisms import registry
from attnkit.mechanisms.base import LAYOUTS, Mechanism

NAMES = registry.names()


def build(name: str) -> Mechanism:
    cls = registry.get(name)
    return registry.create(name, **cls.example_options)


def inputs(mech: Mechanism, n: int = 5, seed: int = 0) -> tuple[tuple[np.ndarray, ...], dict[str, np.ndarray]]:
    return mech.example_inputs(n, np.random.default_rng(seed)), mech.example_extras(n, np.random.default_rng(seed + 1))


@pytest.mark.parametrize("name", NAMES)
def test_forward_and_weights_take_the_contract_names(name: str) -> None:
    cls = registry.get(name)
    for method, names in (("forward", ["query", "key", "value"]), ("attention_weights", ["query", "key"])):
        params = list(inspect.signature(getattr(cls, method)).parameters.values())[1:]
        positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert positional == names, (name, method, positional)
        mask = inspect.signature(getattr(cls, method)).parameters["mask"]
        assert mask.kind is mask.KEYWORD_ONLY and mask.default is None
        assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in params if p.name not in names)


@pytest.mark.parametrize("name", NAMES)
def test_metadata_is_declared_and_consistent(name: str) -> None:
    cls = registry.get(name)
    assert cls.input_layout in LAYOUTS and cls.summary and cls.example_options
    specs = {s.name for s in registry.option_specs(name)}
    assert set(cls.example_options) <= specs
    assert set(cls.shape_options) <= specs, "shape_options name constructor options"
    mech = build(name)
    q, extras = inputs(mech)
    arrays = {"query": q[0], "key": q[1] if len(q) > 1 else None, "value": q[2] if len(q) > 2 else None, **extras}
    for option, (arg, axis) in cls.shape_options.items():
        value = getattr(mech, option)
        if value is None or arrays.get(arg) is None:  # an optional width left to default (kdim=None)
            continue
        assert arrays[arg].shape[axis] == value, (name, option, arg, axis)
    # parameters: declared shapes, own NumPy storage
    shapes = mech.param_shapes()
    params = mech.parameters()
    assert set(params) == set(shapes)
    for k, v in params.items():
        assert isinstance(v, np.ndarray) and v.shape == shapes[k]
        assert v is mech._params.get(k, v), "parameters() returns the mechanism's own arrays"


@pytest.mark.parametrize("name", NAMES)
def test_forward_by_keyword_equals_positional_and_functional_call(name: str) -> None:
    mech = build(name)
    q, extras = inputs(mech)
    names = ("query", "key", "value")[: len(q)]
    out = np.asarray(mech.forward(*q, **extras))
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(np.asarray(mech.forward(**dict(zip(names, q, strict=True)), **extras)), out)
    # the same parameters passed from outside, as copies: the same result, the mechanism unchanged
    own = {k: v.copy() for k, v in mech.parameters().items()}
    np.testing.assert_allclose(np.asarray(attnkit.functional_call(mech, own, *q, **extras)), out, rtol=1e-6, atol=1e-7)
    if own:
        # other parameters change the result and leave the mechanism's own untouched
        rng = np.random.default_rng(5)
        shifted = {k: v + rng.standard_normal(v.shape).astype(v.dtype) for k, v in own.items()}
        other = np.asarray(attnkit.functional_call(mech, shifted, *q, **extras))
        assert not np.allclose(other, out)
        for k, v in mech.parameters().items():
            np.testing.assert_array_equal(v, own[k])
        np.testing.assert_array_equal(np.asarray(mech.forward(*q, **extras)), out)


@pytest.mark.parametrize("name", NAMES)
def test_functional_call_checks_the_parameter_names_and_shapes(name: str) -> None:
    mech = build(name)
    q, extras = inputs(mech)
    own = mech.parameters()
    with pytest.raises(ConfigError, match="^params: unexpected name 'nope'"):
        attnkit.functional_call(mech, {**own, "nope": np.zeros(1, np.float32)}, *q, **extras)
    if own:
        first = sorted(own)[0]
        with pytest.raises(ConfigError, match=f"^params: '{first}' is missing"):
            attnkit.functional_call(mech, {k: v for k, v in own.items() if k != first}, *q, **extras)
        with pytest.raises(ShapeError, match=f"^params: {first} expected shape"):
            attnkit.functional_call(mech, {**own, first: np.zeros((1, 2, 3, 4), np.float32)}, *q, **extras)
    with pytest.raises(ConfigError, match="^mechanism:"):
        attnkit.functional_call(object(), own, *q)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", NAMES)
def test_attention_weights_where_declared(name: str) -> None:
    mech = build(name)
    q, extras = inputs(mech)
    key = q[1] if len(q) > 1 else None
    if not mech.has_attention_weights:
        with pytest.raises(ConfigError, match="^mechanism: .*has no attention weights"):
            mech.attention_weights(q[0], key, **extras)
        return
    w = np.asarray(mech.attention_weights(q[0], key, **extras))
    assert np.isfinite(w).all() and (w >= 0).all()
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(mech.attention_scores(q[0], key, **extras)), w)


@pytest.mark.parametrize("name", NAMES)
def test_one_liveness_check_for_every_entry_point(name: str) -> None:
    mech = build(name)
    q, extras = inputs(mech)
    params = mech.parameters()
    mech.dispose()
    calls = [
        lambda: mech.forward(*q, **extras),
        lambda: mech.attention_weights(q[0], **extras),
        lambda: attnkit.functional_call(mech, params, *q, **extras),
        lambda: mech.parameters(),
        lambda: mech.load_parameters(params),
    ]
    for call in calls:
        with pytest.raises(attnkit.DisposedError):
            call()


@pytest.mark.parametrize("name", NAMES)
def test_load_parameters_round_trip(name: str) -> None:
    mech = build(name)
    q, extras = inputs(mech)
    params = mech.parameters()
    if not params:
        mech.load_parameters({})
        with pytest.raises(ConfigError, match="^weights: unexpected tensor 'w'"):
            mech.load_parameters({"w": np.zeros(2, np.float32)})
        return
    twin = build(name)
    shifted = {k: v * np.float32(0.5) for k, v in params.items()}
    twin.load_parameters(shifted)
    np.testing.assert_allclose(
        np.asarray(twin.forward(*q, **extras)), np.asarray(attnkit.functional_call(mech, shifted, *q, **extras)), rtol=1e-6, atol=1e-7
    )


def test_a_class_breaking_the_contract_is_refused_when_defined() -> None:
    with pytest.raises(TypeError, match="positional arguments must be"):
        type("Bad", (Mechanism,), {"forward": lambda self, q, k=None, v=None, *, mask=None: q})
    with pytest.raises(TypeError, match="mask as a keyword-only"):
        type("Bad2", (Mechanism,), {"forward": lambda self, query, key=None, value=None, **kw: query})
    with pytest.raises(TypeError, match="input_layout"):
        type("Bad3", (Mechanism,), {"input_layout": "grid"})
