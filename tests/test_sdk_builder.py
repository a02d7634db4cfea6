"""AttentionBuilder: every path, every setting reaching the built object, causal means causal."""

from __future__ import annotations

import numpy as np
import pytest

from attnkit import ConfigError
from attnkit.mechanisms import registry
from attnkit.sdk import AttentionBuilder, AttentionConfig, AttentionType, flash, hyperbolic, linear, multi_head
from attnkit.sdk.builder import SETTING_TARGETS

#: a value for each named setting that differs from every mechanism's default
VALUES = {"dim": 24, "heads": 4, "dropout": 0.25, "causal": True, "block_size": 32, "curvature": 0.5, "feature_map": "relu"}
#: required options no named setting carries
EXTRA = {"cross": {"key_dim": 12}}


def targets(name: str) -> dict[str, str]:
    """setting -> constructor option of mechanism ``name`` (from its option specs)."""
    specs = {s.name for s in registry.option_specs(name)}
    out = {}
    for setting, names in SETTING_TARGETS.items():
        t = next((n for n in names if n in specs), None)
        if t is not None:
            out[setting] = t
    return out


@pytest.mark.parametrize("name", registry.names())
def test_every_named_setting_reaches_the_built_object(name: str) -> None:
    b = AttentionBuilder().type(name)
    taken = targets(name)
    assert "dim" in taken, f"{name}: no constructor option carries the builder's dim"
    for setting in taken:
        getattr(b, setting)(VALUES[setting])
    b.options(**EXTRA.get(name, {}))
    mech = b.build()
    assert type(mech) is registry.get(name)
    for setting, option in taken.items():
        assert getattr(mech, option) == VALUES[setting], f"{name}: {setting} -> {option}"
        assert mech.options()[option] == VALUES[setting]
    # settings the mechanism does not take raise, naming the setting
    for setting in set(VALUES) - set(taken):
        value = VALUES[setting]
        with pytest.raises(ConfigError, match=f"^{setting}: the {name!r} mechanism does not take"):
            getattr(AttentionBuilder().type(name).dim(24).options(**EXTRA.get(name, {})), setting)(value).build()


def test_flash_path() -> None:
    m = AttentionBuilder().type(AttentionType.FLASH).heads(2).dim(16).dropout(0.1).causal().block_size(8) \
        .option("scale", 0.5).seed(11).build()
    assert (m.heads, m.dim, m.dropout, m.causal, m.block_size, m.scale, m.seed) == (2, 16, 0.1, True, 8, 0.5, 11)


def test_multi_head_path_maps_dim_to_model_dim() -> None:
    b = AttentionBuilder().type("multi-head").dim(32).heads(4).dropout(0.2).causal(True).option("bias", False)
    m = b.build()
    assert (m.model_dim, m.heads, m.dropout, m.causal, m.bias) == (32, 4, 0.2, True, False)
    assert "dim=32 -> model_dim" in b.explain()


def test_cross_path_maps_dim_to_query_dim() -> None:
    m = AttentionBuilder().type("cross").dim(16).heads(2).option("key_dim", 8).build()
    assert (m.query_dim, m.key_dim, m.heads) == (16, 8, 2)
    q = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    kv = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    assert m.forward(q, kv, kv).shape == (3, 16)


def test_self_path() -> None:
    m = AttentionBuilder().type("self").dim(16).heads(2).build()
    assert type(m).__name__ == "SelfAttention" and m.model_dim == 16


def test_linear_path() -> None:
    m = AttentionBuilder().type("linear").dim(8).heads(2).feature_map("favor").causal().option("nb_features", 20).seed(1).build()
    assert (m.dim, m.heads, m.feature_map, m.causal, m.nb_features, m.seed) == (8, 2, "favor", True, 20, 1)


def test_hyperbolic_path() -> None:
    m = AttentionBuilder().type("hyperbolic").dim(6).curvature(2.0).option("temperature", 0.5).option("aggregation", "frechet").build()
    assert (m.dim, m.curvature, m.temperature, m.aggregation) == (6, 2.0, 0.5, "frechet")


def test_scaled_dot_product_and_local_global_paths() -> None:
    m = AttentionBuilder().type("scaled_dot_product").dim(12).build()
    assert m.dim == 12
    m = AttentionBuilder().type("local_global").dim(8).heads(2).option("window", 6).causal().build()
    assert (m.dim, m.heads, m.window, m.causal) == (8, 2, 6, True)


def test_type_with_settings_and_spec_names() -> None:
    m = AttentionBuilder().type("flash", heads=2, dim=4, causal=True).build()
    assert (m.heads, m.dim, m.causal) == (2, 4, True)
    m = AttentionBuilder().attention_type("flash").hidden_dim(12).build()
    assert m.dim == 12
    m = AttentionBuilder(type="flash", heads=3, dim=5).build()
    assert (m.heads, m.dim) == (3, 5)


def test_free_functions() -> None:
    m = multi_head(48, 6).build()
    assert (type(m).__name__, m.model_dim, m.heads) == ("MultiHeadAttention", 48, 6)
    m = multi_head(48, 6).dropout(0.1).causal().build()
    assert (m.dropout, m.causal) == (0.1, True)
    m = flash(32, 64).build()
    assert (type(m).__name__, m.dim, m.block_size) == ("FlashAttention", 32, 64)
    m = linear(16, "dpfp", heads=2, nu=2).build()
    assert (type(m).__name__, m.dim, m.feature_map, m.heads, m.nu) == ("LinearAttention", 16, "dpfp", 2, 2)
    m = hyperbolic(8, -0.5).build()
    assert (type(m).__name__, m.dim) == ("HyperbolicAttention", 8)
    assert abs(m.curvature) == 0.5


def test_setters_validate_at_once() -> None:
    b = AttentionBuilder()
    for call, field in [(lambda: b.heads(0), "heads"), (lambda: b.dim(-1), "dim"), (lambda: b.dropout(1.0), "dropout"),
                        (lambda: b.block_size(0), "block_size"), (lambda: b.curvature(0), "curvature"),
                        (lambda: b.causal("yes"), "causal"), (lambda: b.type("nope"), "type"),
                        (lambda: b.option("not a name", 1), "option"), (lambda: b.max_len(0), "max_len"),
                        (lambda: b.memory_budget("much"), "memory_budget")]:
        with pytest.raises(ConfigError, match=field):
            call()
    assert b.config == AttentionConfig()  # failed calls changed nothing


def test_unknown_option_names_it() -> None:
    with pytest.raises(ConfigError, match="^global_tokens: the 'flash' mechanism has no such option"):
        AttentionBuilder().type("flash").option("global_tokens", 3).build()


def test_missing_required_setting_names_it() -> None:
    with pytest.raises(ConfigError, match=r"^dim: the 'multi_head' mechanism needs it .*\.dim\(\.\.\.\)"):
        AttentionBuilder().type("multi_head").build()
    with pytest.raises(ConfigError, match="^key_dim: the 'cross' mechanism needs it"):
        AttentionBuilder().type("cross").dim(8).build()


def test_a_setting_given_twice_is_an_error() -> None:
    with pytest.raises(ConfigError, match="model_dim: given twice"):
        AttentionBuilder().type("multi_head").dim(8).option("model_dim", 8).build()


def test_named_settings_through_option_go_to_the_setting() -> None:
    b = AttentionBuilder().type("flash").option("heads", 2).option("causal", True)
    assert b.config.heads == 2 and b.config.causal is True and b.config.options == {}


def test_no_op_settings_on_mechanisms_without_them() -> None:
    # causal(False) and dropout(0.0) change nothing for a mechanism that has no such option
    b = AttentionBuilder().type("hyperbolic").dim(4).causal(False).dropout(0.0)
    assert type(b.build()).__name__ == "HyperbolicAttention"
    assert "left out" in b.explain()
    with pytest.raises(ConfigError, match="^causal:"):
        AttentionBuilder().type("hyperbolic").dim(4).causal(True).build()
    with pytest.raises(ConfigError, match="^dropout:"):
        AttentionBuilder().type("hyperbolic").dim(4).dropout(0.1).build()


def _perturb_last(inputs: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    out = []
    for x in inputs:
        y = x.copy()
        y[-1] += 1.0
        out.append(y)
    return tuple(out)


@pytest.mark.parametrize("name", [n for n in registry.names() if "causal" in targets(n)])
def test_a_causal_builder_gives_a_causal_mechanism(name: str) -> None:
    """``.causal()`` sets ``.causal`` and the mechanism really hides later positions."""
    def build(causal: bool):
        return AttentionBuilder().type(name).dim(8).heads(2).causal(causal).options(**EXTRA.get(name, {"seed": 0} if "seed" in {
            s.name for s in registry.option_specs(name)} else {})).build()

    causal, plain = build(True), build(False)
    assert causal.causal is True and plain.causal is False
    inputs = causal.sample_inputs(7, np.random.default_rng(0))
    changed = _perturb_last(inputs)
    a, b = causal.forward(*inputs), causal.forward(*changed)
    # positions before the last never see it (to float32 rounding: a stabiliser may span all keys)
    np.testing.assert_allclose(a[:-1], b[:-1], rtol=1e-5, atol=1e-6)
    assert np.abs(a[-1] - b[-1]).max() > 1e-3
    pa, pb = plain.forward(*inputs), plain.forward(*changed)
    assert np.abs(pa[0] - pb[0]).max() > 1e-3  # without causal, the first position sees the last


def test_config_round_trip_builds_the_same_object() -> None:
    b = AttentionBuilder().type("flash").heads(2).dim(8).causal().block_size(16).seed(5)
    again = AttentionConfig.from_toml(b.config.to_toml()).builder()
    assert again.build().options() == b.build().options()
    assert AttentionBuilder.from_config(b.config).config == b.config


def test_config_property_is_a_copy() -> None:
    b = AttentionBuilder().type("flash").option("scale", 0.5)
    c = b.config
    c.options["scale"] = 2.0
    assert b.config.options["scale"] == 0.5


def test_explain_explicit() -> None:
    text = AttentionBuilder().type("flash").heads(2).explain()
    assert text.startswith("chosen: flash") and "explicitly" in text and "heads=2" in text


def test_repr_and_copy() -> None:
    b = AttentionBuilder().type("flash").heads(2)
    c = b.copy().heads(3)
    assert b.config.heads == 2 and c.config.heads == 3
    assert "heads=2" in repr(b)
