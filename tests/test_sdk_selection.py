"""Automatic selection: the documented rule, at its thresholds, and the helper builders."""

from __future__ import annotations

import numpy as np
import pytest

from attnkit import ConfigError
from attnkit.sdk import (
    DEFAULT_EXACT_MAX_LEN,
    AttentionBuilder,
    AttentionType,
    exact_attention_bytes,
    for_generation,
    for_graphs,
    for_sequences,
    linear_attention_bytes,
    select_sequence_mechanism,
)

BIG = 1 << 40  # a budget nothing reaches


def test_memory_estimates_by_hand() -> None:
    # batch 1, L 1024, 8 heads of 64, float32
    io = 4 * 1024 * 8 * 64 * 4
    assert io == 8_388_608
    assert exact_attention_bytes(1024, 8, 64) == io + 2 * 8 * 256 * 256 * 4 == 12_582_912
    assert exact_attention_bytes(1024, 8, 64, need_scores=True) == io + 8 * 1024 * 1024 * 4 == 41_943_040
    assert exact_attention_bytes(100, 8, 64, block_size=32) == 4 * 100 * 8 * 64 * 4 + 2 * 8 * 100 * 32 * 4
    assert linear_attention_bytes(1024, 8, 64) == io + 2 * 1024 * 8 * 64 * 4 + 8 * 64 * 65 * 4 == 12_716_032
    assert linear_attention_bytes(1024, 8, 64, features=128, batch=2) == 2 * io + 2 * 2 * 1024 * 8 * 128 * 4 + 2 * 8 * 128 * 65 * 4
    # exact working set grows as O(L) without scores, O(L^2) with them
    assert exact_attention_bytes(4096, 8, 64) - exact_attention_bytes(2048, 8, 64) == 4 * 2048 * 8 * 64 * 4
    assert exact_attention_bytes(4096, 8, 64, need_scores=True) > 3.5 * exact_attention_bytes(2048, 8, 64, need_scores=True)


def test_length_threshold() -> None:
    at = select_sequence_mechanism(max_len=DEFAULT_EXACT_MAX_LEN, heads=8, head_dim=64, memory_budget=BIG)
    over = select_sequence_mechanism(max_len=DEFAULT_EXACT_MAX_LEN + 1, heads=8, head_dim=64, memory_budget=BIG)
    assert (at.type, over.type) == (AttentionType.FLASH, AttentionType.LINEAR)
    assert "exact_max_len 8192" in over.reason
    custom = select_sequence_mechanism(max_len=513, heads=8, head_dim=64, memory_budget=BIG, exact_max_len=512)
    assert custom.type is AttentionType.LINEAR
    assert select_sequence_mechanism(max_len=512, heads=8, head_dim=64, memory_budget=BIG, exact_max_len=512).type is AttentionType.FLASH


@pytest.mark.parametrize("need_scores", [False, True])
@pytest.mark.parametrize("batch", [1, 4])
def test_memory_threshold(need_scores: bool, batch: int) -> None:
    kw = dict(max_len=2048, heads=8, head_dim=64, batch=batch, need_scores=need_scores)
    need = exact_attention_bytes(2048, 8, 64, batch=batch, need_scores=need_scores)
    fits = select_sequence_mechanism(memory_budget=need, **kw)
    assert fits.type is AttentionType.FLASH and fits.exact_bytes == need
    if need - 1 >= linear_attention_bytes(2048, 8, 64, batch=batch):
        over = select_sequence_mechanism(memory_budget=need - 1, **kw)
        assert over.type is AttentionType.LINEAR
        assert "over the memory budget" in over.reason
    else:  # without scores exact attention is as small as linear attention: nothing fits
        assert not need_scores
        with pytest.raises(ConfigError, match="memory_budget"):
            select_sequence_mechanism(memory_budget=need - 1, **kw)


def test_scores_move_the_memory_threshold() -> None:
    budget = 64 << 20
    assert select_sequence_mechanism(max_len=2048, heads=8, head_dim=64, memory_budget=budget).type is AttentionType.FLASH
    assert select_sequence_mechanism(max_len=2048, heads=8, head_dim=64, memory_budget=budget, need_scores=True).type is AttentionType.LINEAR


def test_nothing_fits() -> None:
    with pytest.raises(ConfigError, match="^memory_budget: .*even linear attention"):
        select_sequence_mechanism(max_len=100_000, heads=8, head_dim=64, memory_budget=1 << 20)


def test_unknown_length_chooses_exact_and_says_why() -> None:
    s = select_sequence_mechanism(max_len=None, heads=8, head_dim=64)
    assert s.type is AttentionType.FLASH and "max_len" in s.reason
    b = AttentionBuilder().dim(16).heads(2)  # AUTO by default
    assert type(b.build()).__name__ == "FlashAttention"
    assert "max_len was not given" in b.explain()


def test_for_sequences_below_and_above_the_length_threshold() -> None:
    short = for_sequences(512, DEFAULT_EXACT_MAX_LEN)
    m = short.build()
    assert (type(m).__name__, m.heads, m.dim) == ("FlashAttention", 8, 64)
    assert short.explain().startswith("chosen: flash")
    long = for_sequences(512, DEFAULT_EXACT_MAX_LEN + 1)
    m = long.build()
    assert (type(m).__name__, m.heads, m.dim, m.feature_map) == ("LinearAttention", 8, 64, "favor")
    text = long.explain()
    assert text.startswith("chosen: linear") and "FAVOR+" in text and "exact_max_len" in text


def test_for_sequences_memory_threshold_through_the_builder() -> None:
    # with the dense scores: exact needs io + H L^2 s, linear (FAVOR+, F = ceil(32 ln 32) = 111) much less
    need = exact_attention_bytes(1024, 4, 32, need_scores=True)
    assert linear_attention_bytes(1024, 4, 32, features=111) < need
    b = for_sequences(128, 1024, heads=4, memory_budget=need, need_scores=True)
    assert b.resolved_type() is AttentionType.FLASH
    assert b.selection().exact_bytes == need
    b = for_sequences(128, 1024, heads=4, memory_budget=need - 1, need_scores=True)
    assert b.resolved_type() is AttentionType.LINEAR
    assert b.selection().linear_bytes == linear_attention_bytes(1024, 4, 32, features=111)
    assert for_sequences(128, 1024, heads=4, memory_budget=f"{need}B", need_scores=True).resolved_type() is AttentionType.FLASH


def test_auto_keeps_a_chosen_feature_map_and_leaves_out_the_other_candidates_settings() -> None:
    b = for_sequences(64, 20_000, heads=2).feature_map("elu").block_size(64)
    m = b.build()
    assert (type(m).__name__, m.feature_map) == ("LinearAttention", "elu")
    assert "block_size=64" in b.explain().split("left out")[1]
    b = for_sequences(64, 100, heads=2).feature_map("elu").option("nb_features", 9)
    m = b.build()
    assert type(m).__name__ == "FlashAttention"
    assert "feature_map='elu'" in b.explain().split("left out")[1]
    # a setting neither candidate takes is still an error
    with pytest.raises(ConfigError, match="^curvature"):
        for_sequences(64, 100, heads=2).curvature(1.0).build()


def test_auto_settings_reach_the_chosen_mechanism() -> None:
    m = for_sequences(64, 100, heads=2).dropout(0.1).block_size(16).seed(2).build()
    assert (m.heads, m.dim, m.dropout, m.block_size, m.seed) == (2, 32, 0.1, 16, 2)


@pytest.mark.parametrize(("max_len", "kind"), [(None, "FlashAttention"), (1000, "FlashAttention"), (10_000, "LinearAttention")])
def test_for_generation_is_causal_either_way(max_len, kind: str) -> None:
    b = for_generation(128, max_len, heads=4).seed(0)
    m = b.build()
    assert type(m).__name__ == kind and m.causal is True
    assert "causal" in b.explain()
    x = m.sample_inputs(6, np.random.default_rng(0))
    y = tuple(a.copy() for a in x)
    for a in y:
        a[-1] += 1.0
    before, after = m.forward(*x), m.forward(*y)
    # FAVOR+ in float32 shares one log-domain stabiliser across a chunk of keys: it cancels in the
    # mathematics, but a later key moves earlier outputs by rounding, up to ~1e-4
    atol = 5e-4 if kind == "LinearAttention" else 1e-6
    np.testing.assert_allclose(before[:-1], after[:-1], rtol=0, atol=atol)
    assert np.abs(before[-1] - after[-1]).max() > 1e-2


def test_for_graphs_rule() -> None:
    cases = [
        (for_graphs(16), "scaled_dot_product"),
        (for_graphs(16, hierarchical=True), "hyperbolic"),
        (for_graphs(16, positional=True), "graph_rope"),
        (for_graphs(16, edge_dim=4, hierarchical=True), "edge_featured"),
    ]
    for b, name in cases:
        m = b.build()
        assert m.name == name and m.dim == 16
        assert b.explain().startswith(f"chosen: {name}") and "for_graphs" in b.explain()
    m = for_graphs(16, edge_dim=4).build()
    assert m.edge_dim == 4
    assert for_graphs(8, hierarchical=True).build().curvature == 1.0
    with pytest.raises(ConfigError, match="hierarchical"):
        for_graphs(16, hierarchical="yes")
    with pytest.raises(ConfigError, match="edge_dim"):
        for_graphs(16, edge_dim=0)


def test_helpers_validate_the_width() -> None:
    with pytest.raises(ConfigError, match="dim: the model width 100 must be a multiple of heads = 8"):
        for_sequences(100, 10)
    with pytest.raises(ConfigError, match="max_len"):
        for_sequences(64, 0)
    with pytest.raises(ConfigError, match="heads"):
        for_generation(64, heads=0)
