"""Bounding the size of attention weights before computing them (``POST /v1/attention/{m}/scores``).

Attention weights hold ``batch * heads * Lq * Lk`` numbers, quadratic in the sequence length, so a
request with tensors well inside ``max_elements`` can ask for an answer far beyond it. The server
estimates the size from the request's shapes first, without knowing each mechanism's layout by name:
it probes the mechanism once (per constructed instance) with its own ``sample_inputs`` at sequence
lengths 2 and 3, which reveals

* the sequence axis of the query and of the keys (the one axis whose length changes) and how many
  elements one position takes (``width``), so a flat spec array of ``seqLen * heads * dim`` numbers
  counts as ``seqLen`` positions;
* how many weights one (query, key) pair gets (the heads), from the size of the probe's weights.

The estimate is ``prod(broadcast batch of query, keys, mask) * heads * Lq * Lk``. The size of the
computed weights is checked again afterwards, for a layout the probe could not foresee.

The probe itself must not become the expensive part: options such as ``heads=4096, dim=4096`` make
one sample position 16 M numbers. It therefore draws its samples through a generator with a budget
(:class:`ProbeTooLarge` when a sample would exceed it): ``seq_len * 3 * (the largest request tensor)``,
which every valid request fits, since each of its tensors holds at least one position.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ..mechanisms._weights_access import attention_weights

__all__ = ["AxisInfo", "WeightsLayout", "ProbeTooLarge", "probe_layout", "estimate_elements"]

#: generator methods whose first argument is the size; the others take it third or as ``size=``
_SIZE_FIRST = frozenset({"standard_normal", "random", "standard_exponential", "standard_cauchy"})


class ProbeTooLarge(Exception):
    """The mechanism's sample inputs would exceed the probe's budget (the options imply positions
    wider than any tensor of the request: the request cannot be valid for them)."""


class _BudgetRng:
    """A NumPy generator that refuses (:class:`ProbeTooLarge`) to draw more than ``budget`` numbers in
    all, checked from the requested size before anything is allocated."""

    def __init__(self, rng: np.random.Generator, budget: int) -> None:
        self._rng = rng
        self._left = budget

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._rng, name)
        if not callable(attr):
            return attr

        def draw(*args: Any, **kwargs: Any) -> Any:
            size = kwargs.get("size")
            if size is None:
                pos = 0 if name in _SIZE_FIRST else 2
                size = args[pos] if len(args) > pos else None
            n = 1 if size is None else math.prod(size) if isinstance(size, (tuple, list)) else int(size)
            if n > self._left:
                raise ProbeTooLarge(f"sample inputs of {n} numbers exceed the probe's budget of {self._left}")
            self._left -= n
            return attr(*args, **kwargs)

        return draw


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
    """What the probe found: the query's and the keys' :class:`AxisInfo` (``None``: not found, every
    element then counts as a position) and ``per_pair``, the weights one (query, key) pair gets."""

    query: AxisInfo | None
    keys: AxisInfo | None
    per_pair: int


def _axis_info(a2: np.ndarray, a3: np.ndarray) -> AxisInfo | None:
    if a2.ndim != a3.ndim:
        return None
    changed = [i for i in range(a2.ndim) if a2.shape[i] != a3.shape[i]]
    if len(changed) != 1:
        return None
    i = changed[0]
    unit = a3.shape[i] - a2.shape[i]
    width = a3.size - a2.size
    if unit <= 0 or width <= 0:
        return None
    return AxisInfo(axis=i - a2.ndim, ndim=a2.ndim, unit=unit, width=width)


def _inputs(sample: tuple[Any, ...]) -> tuple[Any, Any, Any]:
    """(query, keys, values) of a sample; keys and values ``None`` when the sample has only a query."""
    q = sample[0]
    k = sample[1] if len(sample) > 1 else None
    v = sample[2] if len(sample) > 2 else None
    return q, k, v


def probe_layout(mech: Any, budget: int) -> WeightsLayout:
    """Probe ``mech`` with its sample inputs at sequence lengths 2 and 3 (see the module docstring),
    drawing at most ``budget`` numbers per sequence position (:class:`ProbeTooLarge` otherwise).

    Raises what the mechanism raises (an :class:`attnkit.AttentionError` when, with these options, it
    keeps no weights).
    """
    rng = np.random.default_rng(0)
    s2 = tuple(np.asarray(x) for x in mech.sample_inputs(2, _BudgetRng(rng, 2 * budget)))
    s3 = tuple(np.asarray(x) for x in mech.sample_inputs(3, _BudgetRng(rng, 3 * budget)))
    (q2, k2, v2), (q3, k3, _) = _inputs(s2), _inputs(s3)
    qi = _axis_info(q2, q3)
    ki = qi if k2 is None or k3 is None else _axis_info(k2, k3)
    w2 = np.asarray(attention_weights(mech, q2, k2, values=v2, run_forward=True))
    per_pair = max(1, math.ceil(w2.size / 4))
    return WeightsLayout(query=qi, keys=ki, per_pair=per_pair)


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
    return batch * layout.per_pair * lq * lk
