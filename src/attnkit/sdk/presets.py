"""Presets for well-known models and the use-case helpers ``for_sequences``, ``for_graphs``, ``for_generation``.

Every preset and helper takes the **model width** ``dim`` (768 for BERT-base) and returns an
:class:`~attnkit.sdk.AttentionBuilder`, which can still be changed before ``.build()``. For a
mechanism with a head layout ``(..., L, H, D)`` (flash, linear, local_global) the head width is
``dim // heads`` and ``dim`` must be a multiple of ``heads``; model-level layers (multi_head) take
``dim`` as ``model_dim``; head-less mechanisms (hyperbolic, scaled_dot_product) take it as is.

======================  =================  =====================================================
preset                  mechanism          settings (and what they mean)
======================  =================  =====================================================
``bert``                multi_head         12 heads, dropout 0.1, bidirectional (Devlin et al. 2019)
``gpt``, ``gpt2``       multi_head         12 heads, dropout 0.1, causal (Radford et al. 2018, 2019)
``longformer``          local_global       12 heads, window 512 (256 keys each side), 1 global
                                           token (the first, e.g. [CLS]) (Beltagy et al. 2020)
``performer``           linear             8 heads, FAVOR+ feature map, so it estimates softmax
                                           attention in O(L) (Choromanski et al. 2021)
``flash_optimized``     flash              heads of width 64 (``dim // 64`` heads; one head of
                                           width ``dim`` if ``dim`` is not a multiple of 64),
                                           key blocks of 256: a 256 x 256 float32 score tile is
                                           256 KiB and stays in L2 (Dao et al. 2022)
``vit``                 multi_head         12 heads, no attention dropout, bidirectional
                                           (Dosovitskiy et al. 2021, ViT-Base)
``t5``                  multi_head         12 heads, dropout 0.1, no projection biases (Raffel et
                                           al. 2020). T5 also drops the 1/sqrt(d) scaling and adds
                                           a relative position bias; attnkit's layer keeps the
                                           scaling and has no such bias, so T5 weights need the
                                           scaling folded into W_q.
``hyperbolic_tree``     hyperbolic         curvature 1 (the Poincaré ball of curvature -1), where
                                           trees embed with low distortion (Nickel & Kiela 2017)
``llama``               multi_head         32 heads, 8 key/value heads (grouped-query), causal,
                                           no projection biases, no dropout, RoPE over the head
                                           width with base 500000 in HF's ``rotate_half``
                                           pairing (Llama 3 8B, Grattafiori et al. 2024)
``mistral``             multi_head         as ``llama`` with RoPE base 1000000 (Mistral 7B v0.3;
                                           Jiang et al. 2023). v0.1's 4096-token sliding window is
                                           not applied
======================  =================  =====================================================

For ``llama`` and ``mistral`` a ``heads`` override keeps 8 key/value heads when 8 divides the heads
(as every Llama 3 size) and uses ``kv_heads = heads`` otherwise; the RoPE embedding is built for the
head width ``dim // heads``. Weights of a real layer load with :func:`attnkit.weights.from_hf_llama`.

``from_model_name(name, dim)`` accepts a preset name or a model identifier such as
``"bert-base-uncased"``, ``"gpt2-medium"``, ``"google/vit-base-patch16-224"``, ``"t5-small"`` or
``"allenai/longformer-base-4096"``, ``"meta-llama/Llama-3.1-8B"`` or ``"mistralai/Mistral-7B-v0.3"``
(roberta, distilbert and albert map to bert); a size word sets the heads of that published size
(``"gpt2-medium"``: 16 heads, ``"bert-large"``: 16, ``"Llama-3.1-70B"``: 64, ...).
"""

from __future__ import annotations

import enum
import re
from typing import Any

from .._array import positive_int
from ..errors import ConfigError
from ..mechanisms import registry
from .builder import AttentionBuilder
from .types import AttentionType

__all__ = ["AttentionPreset", "from_model_name", "for_sequences", "for_graphs", "for_generation", "model_width_settings"]


class AttentionPreset(str, enum.Enum):
    """Attention set up as in a well-known model; ``preset.builder(dim)`` gives a builder."""

    BERT = "bert"
    GPT = "gpt"
    GPT2 = "gpt2"
    LONGFORMER = "longformer"
    PERFORMER = "performer"
    FLASH_OPTIMIZED = "flash_optimized"
    VIT = "vit"
    T5 = "t5"
    HYPERBOLIC_TREE = "hyperbolic_tree"
    LLAMA = "llama"
    MISTRAL = "mistral"

    def __str__(self) -> str:
        return self.value

    @property
    def attention_type(self) -> AttentionType:
        return _PRESETS[self][0]

    @property
    def settings(self) -> dict[str, Any]:
        """The builder settings of this preset (before the width is applied)."""
        return dict(_PRESETS[self][1])

    @property
    def description(self) -> str:
        return _PRESETS[self][2]

    def builder(self, dim: int, heads: int | None = None) -> AttentionBuilder:
        """A builder for this preset at model width ``dim`` (``heads`` overrides the preset's count)."""
        dim = positive_int(dim, "dim")
        kind, settings, description = _PRESETS[self]
        settings = dict(settings)
        if self is AttentionPreset.FLASH_OPTIMIZED:
            settings["heads"] = dim // 64 if dim % 64 == 0 else 1
        if heads is not None:
            settings["heads"] = positive_int(heads, "heads")
            description += f"; {settings['heads']} heads"
        if self in _ROPE_BASE:  # Llama-style: grouped-query heads and a RoPE over the head width
            if heads is not None:
                settings["kv_heads"] = 8 if settings["heads"] % 8 == 0 else settings["heads"]
            settings["rope"] = {"base": _ROPE_BASE[self], "layout": "half"}  # over the head width, whatever it becomes
        try:
            registry.get(kind.value)
        except ConfigError:
            raise ConfigError(f"preset: {self.value!r} needs the {kind.value!r} mechanism, which is not available in this build") from None
        b = AttentionBuilder().type(kind)
        for name, value in {**settings, **model_width_settings(kind.value, dim, settings.get("heads"))}.items():
            b.option(name, value)
        b._reason = f"preset {self.value!r}: {description}"
        return b


_PRESETS: dict[AttentionPreset, tuple[AttentionType, dict[str, Any], str]] = {
    AttentionPreset.BERT: (
        AttentionType.MULTI_HEAD,
        {"heads": 12, "dropout": 0.1, "causal": False},
        "bidirectional multi-head self-attention, 12 heads, attention dropout 0.1 (BERT, Devlin et al. 2019)",
    ),
    AttentionPreset.GPT: (
        AttentionType.MULTI_HEAD,
        {"heads": 12, "dropout": 0.1, "causal": True},
        "causal multi-head self-attention, 12 heads, attention dropout 0.1 (GPT, Radford et al. 2018)",
    ),
    AttentionPreset.GPT2: (
        AttentionType.MULTI_HEAD,
        {"heads": 12, "dropout": 0.1, "causal": True},
        "causal multi-head self-attention, 12 heads, attention dropout 0.1 (GPT-2, Radford et al. 2019)",
    ),
    AttentionPreset.LONGFORMER: (
        AttentionType.LOCAL_GLOBAL,
        {"heads": 12, "window": 512, "global_tokens": 1},
        "sliding-window attention over 256 keys each side plus one global token, 12 heads "
        "(Longformer-base, Beltagy et al. 2020); memory O(L * window)",
    ),
    AttentionPreset.PERFORMER: (
        AttentionType.LINEAR,
        {"heads": 8, "feature_map": "favor"},
        "linear attention with FAVOR+ positive orthogonal random features, 8 heads: an O(L) estimate of "
        "softmax attention (Performer, Choromanski et al. 2021)",
    ),
    AttentionPreset.FLASH_OPTIMIZED: (
        AttentionType.FLASH,
        {"block_size": 256},
        "exact attention tiled with the online softmax, heads of width 64, key blocks of 256 (FlashAttention, Dao et al. 2022); memory O(L)",
    ),
    AttentionPreset.VIT: (
        AttentionType.MULTI_HEAD,
        {"heads": 12, "dropout": 0.0, "causal": False},
        "bidirectional multi-head self-attention over image patches, 12 heads, no attention dropout (ViT-Base, Dosovitskiy et al. 2021)",
    ),
    AttentionPreset.T5: (
        AttentionType.MULTI_HEAD,
        {"heads": 12, "dropout": 0.1, "bias": False},
        "multi-head attention without projection biases, 12 heads, dropout 0.1 (T5, Raffel et al. 2020)",
    ),
    AttentionPreset.HYPERBOLIC_TREE: (
        AttentionType.HYPERBOLIC,
        {"curvature": 1.0},
        "attention on the Poincaré ball of curvature -1, where trees and hierarchies embed with low "
        "distortion (Nickel & Kiela 2017; Ganea et al. 2018)",
    ),
    AttentionPreset.LLAMA: (
        AttentionType.MULTI_HEAD,
        {"heads": 32, "kv_heads": 8, "bias": False, "causal": True, "dropout": 0.0},
        "causal multi-head self-attention with 32 heads over 8 key/value heads (grouped-query), no projection "
        "biases, RoPE base 500000 (Llama 3 8B, Grattafiori et al. 2024)",
    ),
    AttentionPreset.MISTRAL: (
        AttentionType.MULTI_HEAD,
        {"heads": 32, "kv_heads": 8, "bias": False, "causal": True, "dropout": 0.0},
        "causal multi-head self-attention with 32 heads over 8 key/value heads (grouped-query), no projection "
        "biases, RoPE base 1000000 (Mistral 7B v0.3, Jiang et al. 2023)",
    ),
}

#: the RoPE base (``rope_theta``) of the Llama-style presets
_ROPE_BASE = {AttentionPreset.LLAMA: 500000.0, AttentionPreset.MISTRAL: 1000000.0}

#: model-family words in model identifiers -> preset
_FAMILIES = {
    "bert": AttentionPreset.BERT,
    "roberta": AttentionPreset.BERT,
    "distilbert": AttentionPreset.BERT,
    "albert": AttentionPreset.BERT,
    "gpt": AttentionPreset.GPT,
    "openai": AttentionPreset.GPT,
    "gpt2": AttentionPreset.GPT2,
    "distilgpt2": AttentionPreset.GPT2,
    "longformer": AttentionPreset.LONGFORMER,
    "performer": AttentionPreset.PERFORMER,
    "flash": AttentionPreset.FLASH_OPTIMIZED,
    "vit": AttentionPreset.VIT,
    "deit": AttentionPreset.VIT,
    "t5": AttentionPreset.T5,
    "mt5": AttentionPreset.T5,
    "hyperbolic": AttentionPreset.HYPERBOLIC_TREE,
    "llama": AttentionPreset.LLAMA,
    "mistral": AttentionPreset.MISTRAL,
}


def model_width_settings(mechanism: str, width: int, heads: int | None = None) -> dict[str, int]:
    """The builder ``dim`` for model width ``width``: per head for head-layout mechanisms, else ``width``."""
    width = positive_int(width, "dim")
    specs = {s.name: s for s in registry.option_specs(mechanism)}
    if "model_dim" in specs or "query_dim" in specs or not ("heads" in specs and "dim" in specs):
        return {"dim": width}
    h = positive_int(heads if heads is not None else specs["heads"].default, "heads")
    if width % h:
        raise ConfigError(f"dim: the model width {width} must be a multiple of heads = {h} for {mechanism!r}")
    return {"dim": width // h}


def _preset_of(name: str) -> AttentionPreset:
    if isinstance(name, AttentionPreset):
        return name
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"name: expected a model or preset name, got {name!r}")
    key = name.strip().lower().replace("-", "_")
    for p in AttentionPreset:
        if key == p.value:
            return p
    tokens = [t for t in re.split(r"[^a-z0-9]+", name.lower().rsplit("/", 1)[-1]) if t]
    for token in tokens:
        if token in _FAMILIES:
            return _FAMILIES[token]
    raise ConfigError(
        f"name: no preset for model {name!r}; expected one of {', '.join(p.value for p in AttentionPreset)} or a model identifier of those families"
    )


#: heads of the larger published sizes, read from a size word in the model identifier
_SIZE_HEADS: dict[AttentionPreset, dict[str, int]] = {
    AttentionPreset.BERT: {"large": 16},
    AttentionPreset.GPT2: {"medium": 16, "large": 20, "xl": 25},
    AttentionPreset.VIT: {"large": 16, "huge": 16},
    AttentionPreset.T5: {"small": 8, "large": 16},
    AttentionPreset.LONGFORMER: {"large": 16},
    AttentionPreset.LLAMA: {"1b": 32, "3b": 24, "8b": 32, "70b": 64, "405b": 128},
}


def from_model_name(name: str, dim: int) -> AttentionBuilder:
    """A builder set up like the model ``name`` (see the table above) at model width ``dim``.

    A size word in a model identifier sets the heads of that published size: ``bert-large`` 16,
    ``gpt2-medium`` 16, ``gpt2-large`` 20, ``gpt2-xl`` 25, ``vit-large``/``vit-huge`` 16,
    ``t5-small`` 8, ``t5-large`` 16, ``longformer-large`` 16, Llama ``1b`` 32, ``3b`` 24, ``8b`` 32,
    ``70b`` 64, ``405b`` 128 (with 8 key/value heads each).
    """
    preset = _preset_of(name)
    heads = None
    if isinstance(name, str) and not isinstance(name, AttentionPreset):
        tokens = re.split(r"[^a-z0-9]+", name.lower().rsplit("/", 1)[-1])
        sizes = _SIZE_HEADS.get(preset, {})
        heads = next((sizes[t] for t in tokens if t in sizes), None)
    return preset.builder(dim, heads=heads)


def _head_split(dim: int, heads: int) -> int:
    dim = positive_int(dim, "dim")
    heads = positive_int(heads, "heads")
    if dim % heads:
        raise ConfigError(f"dim: the model width {dim} must be a multiple of heads = {heads}")
    return dim // heads


def for_sequences(
    dim: int,
    max_len: int,
    *,
    heads: int = 8,
    batch: int = 1,
    memory_budget: int | str | None = None,
    exact_max_len: int | None = None,
    need_scores: bool = False,
) -> AttentionBuilder:
    """A builder that picks exact (flash) or linear attention for sequences up to ``max_len``.

    ``heads`` heads of width ``dim // heads``; the rule is :func:`~attnkit.sdk.select_sequence_mechanism`
    (``builder.explain()`` shows the outcome and the numbers).
    """
    head_dim = _head_split(dim, heads)
    return AttentionBuilder(
        type=AttentionType.AUTO,
        dim=head_dim,
        heads=heads,
        max_len=max_len,
        batch=batch,
        memory_budget=memory_budget,
        exact_max_len=exact_max_len,
        need_scores=need_scores,
    )


def for_generation(
    dim: int,
    max_len: int | None = None,
    *,
    heads: int = 8,
    batch: int = 1,
    memory_budget: int | str | None = None,
    exact_max_len: int | None = None,
) -> AttentionBuilder:
    """:func:`for_sequences` with ``causal=True``: each token sees only itself and earlier tokens.

    Causal masking is bottom-right aligned, so decoding ``Lq`` new tokens against a key/value
    cache of ``Lk`` keys works as is.
    """
    head_dim = _head_split(dim, heads)
    b = AttentionBuilder(
        type=AttentionType.AUTO,
        dim=head_dim,
        heads=heads,
        causal=True,
        max_len=max_len,
        batch=batch,
        memory_budget=memory_budget,
        exact_max_len=exact_max_len,
    )
    b._reason = "for_generation: causal attention (each token sees itself and earlier tokens)."
    return b


def for_graphs(dim: int, *, hierarchical: bool = False, edge_dim: int | None = None, positional: bool = False) -> AttentionBuilder:
    """A builder for attention over a node's neighbours; the rule, first match wins:

    1. ``edge_dim`` given -> ``edge_featured`` (graph attention with edge features, GATv2-style);
    2. ``hierarchical=True`` -> ``hyperbolic`` (trees embed with low distortion in the Poincaré ball);
    3. ``positional=True`` -> ``graph_rope`` (rotary encodings of graph positions);
    4. otherwise -> ``scaled_dot_product`` (neighbour scaled dot-product attention).

    ``dim`` is the node embedding width.
    """
    dim = positive_int(dim, "dim")
    if not isinstance(hierarchical, bool):
        raise ConfigError(f"hierarchical: expected true or false, got {hierarchical!r}")
    if not isinstance(positional, bool):
        raise ConfigError(f"positional: expected true or false, got {positional!r}")
    if edge_dim is not None:
        edge_dim = positive_int(edge_dim, "edge_dim")
        b = AttentionBuilder().type(AttentionType.EDGE_FEATURED).dim(dim).option("edge_dim", edge_dim)
        why = f"edge_dim={edge_dim} was given, so edge features enter the attention scores"
    elif hierarchical:
        b = AttentionBuilder().type(AttentionType.HYPERBOLIC).dim(dim).curvature(1.0)
        why = "hierarchical=True: trees embed with low distortion in the Poincaré ball (Nickel & Kiela 2017)"
    elif positional:
        b = AttentionBuilder().type(AttentionType.GRAPH_ROPE).dim(dim)
        why = "positional=True: rotary encodings of the nodes' graph positions enter the scores"
    else:
        b = AttentionBuilder().type(AttentionType.SCALED_DOT_PRODUCT).dim(dim)
        why = "no edge features, hierarchy or positions: plain scaled dot-product attention over the neighbours"
    b._reason = f"for_graphs: {why}."
    return b
