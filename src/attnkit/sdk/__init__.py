"""The attnkit SDK: build any mechanism by type, preset or automatic selection; chain it in pipelines.

- :class:`AttentionType`: the mechanism kinds (``AttentionType.FLASH == "flash"``), plus ``AUTO``.
- :class:`AttentionConfig`: a validated dataclass, round-tripping to and from dicts and TOML.
- :class:`AttentionBuilder`: fluent ``.type().heads().dim().dropout().causal().block_size()
  .curvature().feature_map().option().build()``; every setting reaches the built object.
- :class:`AttentionPreset`, :func:`from_model_name`: bert, gpt/gpt2, longformer, performer,
  flash_optimized, vit, t5, hyperbolic_tree.
- :func:`for_sequences`, :func:`for_generation`, :func:`for_graphs`: builders chosen by a documented
  rule (:func:`select_sequence_mechanism`: exact attention while it fits, linear beyond);
  ``builder.explain()`` says what was chosen and why.
- :class:`Pipeline`: norm, attention, dropout, residual, custom and feed-forward stages, and
  pre-norm / post-norm transformer blocks, run for real.
- :class:`Attention`: the protocol every mechanism satisfies (``forward``, ``forward_batch``,
  ``forward_async``, ``forward_stream``, ``memory_usage``, ``benchmark``, ``dispose``).
- The spec's free functions :func:`multi_head`, :func:`flash`, :func:`linear`, :func:`hyperbolic`,
  each returning a builder.
"""

from __future__ import annotations

from typing import Any

from ..mechanisms import registry
from .builder import AttentionBuilder, flash, hyperbolic, linear, multi_head
from .config import AttentionConfig, parse_bytes
from .pipeline import FeedForward, Pipeline, layer_norm, rms_norm
from .presets import AttentionPreset, for_generation, for_graphs, for_sequences, from_model_name
from .selection import (
    DEFAULT_EXACT_MAX_LEN,
    Selection,
    default_memory_budget,
    exact_attention_bytes,
    linear_attention_bytes,
    select_sequence_mechanism,
)
from .types import Attention, AttentionType

__all__ = [
    "Attention",
    "AttentionType",
    "AttentionConfig",
    "AttentionBuilder",
    "AttentionPreset",
    "Pipeline",
    "FeedForward",
    "Selection",
    "available_types",
    "create",
    "from_model_name",
    "for_sequences",
    "for_generation",
    "for_graphs",
    "select_sequence_mechanism",
    "exact_attention_bytes",
    "linear_attention_bytes",
    "default_memory_budget",
    "DEFAULT_EXACT_MAX_LEN",
    "parse_bytes",
    "layer_norm",
    "rms_norm",
    "multi_head",
    "flash",
    "linear",
    "hyperbolic",
]


def available_types() -> list[AttentionType]:
    """The :class:`AttentionType` members whose mechanism is registered in this build (``AUTO`` excluded)."""
    names = set(registry.names())
    return [t for t in AttentionType if t.value in names]


def create(attention_type: AttentionType | str, **settings: Any) -> Any:
    """Build a mechanism in one call: ``create("flash", heads=4, dim=32)`` (settings as by ``option``)."""
    return AttentionBuilder().type(attention_type, **settings).build()
