"""Bounding the size of attention weights before computing them (``POST /v1/attention/{m}/scores``).

Attention weights hold ``batch * heads * Lq * Lk`` numbers, quadratic in the sequence length, so a
request with tensors well inside ``max_elements`` can ask for an answer far beyond it. The server
estimates the size from the request's shapes first, from the layout each mechanism declares
(:attr:`attnkit.Mechanism.input_layout`), without running anything:

* ``sequence``: ``query (..., Lq, H, D)`` (or the spec's flat ``Lq*H*D``), weights ``(..., H, Lq, Lk)``;
* ``model``: ``query (..., Lq, E)``, weights ``(..., H, Lq, Lk)``;
* ``headless``: ``query (..., Lq, D)`` or ``(D,)``, weights ``(..., Lq, Lk)``;
* ``graph``: target nodes ``(..., D)`` over neighbours ``(..., k, D)``, weights ``(..., k [+1], H)``.

The estimate is ``prod(broadcast batch of query, keys, mask) * heads * Lq * Lk``. The size of the
computed weights is checked again afterwards.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

__all__ = ["AxisInfo", "WeightsLayout", "weights_layout", "probe_layout", "estimate_elements"]


@dataclasses.dataclass(frozen=True)
class AxisInfo:
    """Where the sequence runs in one input: ``axis`` (negative, from the end) of an input of ``ndim``
    dimensions, ``unit`` elements of that axis per position, ``width`` elements per position."""

    axis: int
    ndim: int
    unit: int
    width: int


@dataclasses.dataclass(frozen=True)
class WeightsLayout:
    """The query's and the keys' :class:`AxisInfo` and ``per_pair``, the weights one (query, key) pair gets."""

    query: AxisInfo | None
    keys: AxisInfo | None
    per_pair: int
    #: keys every target gets on top of the given ones (a graph layer's self loop)
    extra_keys: int = 0
    #: graph layout: every query row attends only its own neighbours (weights ``batch * (k + extra) * heads``)
    per_target: bool = False


def weights_layout(mech: Any) -> WeightsLayout:
    """The weights layout of ``mech`` from its declared ``layout`` and options (nothing is computed)."""
    heads = int(getattr(mech, "heads", 1) or 1)
    if mech.input_layout == "sequence":
        width = heads * int(mech.dim)
        axis = AxisInfo(axis=-3, ndim=3, unit=1, width=width)
        return WeightsLayout(query=axis, keys=axis, per_pair=heads)
    if mech.input_layout == "model":
        kdim = int(getattr(mech, "key_dim", None) or getattr(mech, "kdim", None) or mech.model_dim)
        return WeightsLayout(
            query=AxisInfo(axis=-2, ndim=2, unit=1, width=int(mech.model_dim)),
            keys=AxisInfo(axis=-2, ndim=2, unit=1, width=kdim),
            per_pair=heads,
        )
    dim = int(mech.dim)
    if mech.input_layout == "graph":  # one target per row, each over its k neighbours (+ its self loop)
        loops = 1 if getattr(mech, "self_loops", False) else 0
        return WeightsLayout(
            query=AxisInfo(axis=-1, ndim=1, unit=dim, width=dim),
            keys=AxisInfo(axis=-2, ndim=2, unit=1, width=dim),
            per_pair=heads,
            extra_keys=loops,
            per_target=True,
        )
    axis = AxisInfo(axis=-2, ndim=2, unit=1, width=dim)
    return WeightsLayout(query=axis, keys=axis, per_pair=1)


#: the old name of :func:`weights_layout` (the layout is declared now, not probed)
def probe_layout(mech: Any, budget: int = 0) -> WeightsLayout:
    return weights_layout(mech)


def _positions(shape: tuple[int, ...], info: AxisInfo | None) -> tuple[tuple[int, ...], int]:
    """(batch shape, sequence length) of an input of ``shape`` under ``info``."""
    size = math.prod(shape)
    if info is None:
        return (), size
    if len(shape) >= info.ndim:
        return tuple(shape[: len(shape) - info.ndim]), math.ceil(shape[len(shape) + info.axis] / info.unit)
    return (), math.ceil(size / info.width)


def estimate_elements(layout: WeightsLayout, query: tuple[int, ...], keys: tuple[int, ...], mask: tuple[int, ...] | None) -> int:
    """Elements of the weights for inputs of these shapes: ``batch * per_pair * Lq * Lk``."""
    qb, lq = _positions(tuple(query), layout.query)
    kb, lk = _positions(tuple(keys), layout.keys)
    batches = [qb, kb]
    if mask is not None and len(mask) > 2:
        # a mask is (..., [heads,] Lq, Lk): what lies before can widen the batch
        batches.append(tuple(mask[: len(mask) - 2 - (1 if layout.per_pair > 1 else 0)]))
    try:
        batch = math.prod(np.broadcast_shapes(*batches))
    except ValueError:  # the mechanism will refuse these shapes; bound generously until it does
        batch = math.prod(math.prod(b) for b in batches)
    if layout.per_target:
        return batch * layout.per_pair * (lk + layout.extra_keys)
    return batch * layout.per_pair * lq * (lk + layout.extra_keys)
