"""AttentionType covers the registry; the Attention protocol; the SDK names importable from attnkit."""

from __future__ import annotations

import numpy as np
import pytest

import attnkit
from attnkit import ConfigError
from attnkit.mechanisms import registry
from attnkit.sdk import Attention, AttentionType, available_types, create


def test_members_are_upper_case_with_lower_case_values() -> None:
    assert AttentionType.FLASH == "flash"
    assert AttentionType.MULTI_HEAD == "multi_head"
    assert AttentionType.SCALED_DOT_PRODUCT.value == "scaled_dot_product"
    for m in AttentionType:
        assert m.name == m.value.upper()
        assert str(m) == m.value


def test_covers_the_issue_list() -> None:
    wanted = {
        "scaled_dot_product",
        "multi_head",
        "flash",
        "linear",
        "hyperbolic",
        "cross",
        "self",
        "auto",
        "local_global",
        "moe",
        "edge_featured",
        "graph_rope",
        "mixed_curvature",
        "dual_space",
    }
    assert wanted <= {m.value for m in AttentionType}


def test_every_registered_mechanism_has_a_member_and_every_member_a_mechanism() -> None:
    members = {m.value for m in AttentionType} - {"auto"}
    names = set(registry.names())
    assert names - members == set(), f"registered but missing from AttentionType: {sorted(names - members)}"
    assert members - names == set(), f"in AttentionType but not registered: {sorted(members - names)}"
    assert set(available_types()) == {AttentionType(n) for n in names}


@pytest.mark.parametrize(
    ("spelling", "member"),
    [
        ("multi-head", AttentionType.MULTI_HEAD),
        ("Multi-Head", AttentionType.MULTI_HEAD),
        ("scaled-dot-product", AttentionType.SCALED_DOT_PRODUCT),
        ("MHA", AttentionType.MULTI_HEAD),
        ("neighbour", AttentionType.SCALED_DOT_PRODUCT),
        ("FLASH", AttentionType.FLASH),
        ("auto", AttentionType.AUTO),
    ],
)
def test_spec_spellings(spelling: str, member: AttentionType) -> None:
    assert AttentionType(spelling) is member
    assert AttentionType.parse(spelling) is member


@pytest.mark.parametrize("bad", ["nope", "", 3, None])
def test_unknown_type_is_a_config_error_naming_type(bad: object) -> None:
    with pytest.raises(ConfigError, match="type"):
        AttentionType.parse(bad)


def test_sdk_names_importable_from_attnkit() -> None:
    from attnkit import AttentionBuilder, AttentionConfig, Pipeline
    from attnkit import AttentionType as AT

    assert AT is AttentionType
    assert AttentionBuilder.__module__.startswith("attnkit.sdk")
    assert AttentionConfig.__module__.startswith("attnkit.sdk")
    assert Pipeline.__module__.startswith("attnkit.sdk")
    assert attnkit.sdk.AttentionPreset.BERT == "bert"


def test_attention_protocol() -> None:
    mech = create("flash", heads=2, dim=8)
    assert isinstance(mech, Attention)
    assert not isinstance(object(), Attention)

    class OnlyForward:
        def forward(self, query, key=None, value=None, *, mask=None):
            return query

    assert not isinstance(OnlyForward(), Attention)


def test_is_registered() -> None:
    assert AttentionType.FLASH.is_registered
    assert not AttentionType.AUTO.is_registered


def test_create_in_one_call() -> None:
    mech = create("multi-head", dim=16, heads=2, seed=3)
    assert (mech.model_dim, mech.heads, mech.seed) == (16, 2, 3)
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    assert mech.forward(x).shape == (5, 16)
