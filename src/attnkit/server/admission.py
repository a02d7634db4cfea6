"""Admission control: the work a request asks for, estimated from its shapes before computing.

``max_elements`` bounds each tensor, but attention costs ``O(Lq * Lk)``: two tensors well inside the
limit can ask for hours of arithmetic or gigabytes of scores. Before a forward pass the server
estimates, from the shapes alone,

* FLOPs: ``2 B Lq Lk (w_q + w_v)`` for the two products ``Q K^T`` and ``P V`` summed over heads
  (``w`` is the number of elements one position holds, ``H * D``), plus ``2 B (Lq + Lk) P`` for
  applying ``P`` learned parameters to every position (the projections); and
* bytes: the inputs, the output and one ``B * H * Lq * Lk`` score matrix (what a dense mechanism
  materialises; tiled ones hold less),

and refuses (413 ``too_much_work``) a request above ``max_flops`` or ``max_work_bytes``. ``B``, ``Lq``
and ``Lk`` come from the same probe as the weights bound (:mod:`.scores`): the mechanism's own sample
inputs at two sequence lengths show which axis is the sequence. The estimate is generic, so it is an
upper bound of the right order rather than an exact count; an empty input costs nothing.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from .scores import AxisInfo, ProbeTooLarge, _axis_info, _BudgetRng, _inputs

__all__ = ["Axes", "Work", "probe_axes", "estimate_work"]

_HEAD_OPTIONS = ("heads", "num_heads", "n_heads")


@dataclasses.dataclass(frozen=True)
class Axes:
    """Where the sequence runs in the query and in the keys (``None``: not found)."""

    query: AxisInfo | None
    keys: AxisInfo | None


@dataclasses.dataclass(frozen=True)
class Work:
    """An estimate of one forward pass: floating-point operations and bytes held at once."""

    flops: float
    nbytes: float
    batch: int
    lq: int
    lk: int


def probe_axes(mech: Any, budget: int) -> Axes:
    """The sequence axes of ``mech``'s inputs, from its sample inputs at lengths 2 and 3, drawing at
    most ``budget`` numbers per length (:class:`~.scores.ProbeTooLarge` otherwise)."""
    rng = np.random.default_rng(0)
    s2 = tuple(np.asarray(x) for x in mech.sample_inputs(2, _BudgetRng(rng, 2 * budget)))
    s3 = tuple(np.asarray(x) for x in mech.sample_inputs(3, _BudgetRng(rng, 3 * budget)))
    (q2, k2, _), (q3, k3, _) = _inputs(s2), _inputs(s3)
    qi = _axis_info(q2, q3)
    ki = qi if k2 is None or k3 is None else _axis_info(k2, k3)
    return Axes(query=qi, keys=ki)


def _split(shape: tuple[int, ...], info: AxisInfo | None) -> tuple[tuple[int, ...], int, int]:
    """(batch shape, sequence length, elements per position) of an input of ``shape``."""
    size = math.prod(shape)
    if not shape:
        return (), 1, 1
    if info is not None and len(shape) >= info.ndim:
        batch = tuple(shape[: len(shape) - info.ndim])
        length = shape[len(shape) + info.axis]
    else:  # unknown layout: every row (all but the last axis) counts as a position
        batch, length = (), math.prod(shape[:-1])
    width = size // max(1, math.prod(batch) * length) if size else math.prod(shape[len(batch) :]) // max(1, length)
    return batch, length, max(1, width)


def _heads(mech: Any) -> int:
    try:
        opts = mech.options()
    except Exception:  # noqa: BLE001
        return 1
    for name in _HEAD_OPTIONS:
        h = opts.get(name)
        if isinstance(h, int) and not isinstance(h, bool) and h > 0:
            return h
    return 1


def _param_count(mech: Any) -> int:
    try:
        return sum(int(np.size(p)) for p in mech.parameters().values())
    except Exception:  # noqa: BLE001 - a mechanism without parameters()
        return 0


def estimate_work(mech: Any, axes: Axes | None, q: np.ndarray, k: np.ndarray | None, v: np.ndarray | None, mask: Any) -> Work:
    """The :class:`Work` of ``mech.forward(q, k, v, mask=mask)`` (keys and values default to the query)."""
    kk = q if k is None else k
    vv = kk if v is None else v
    qb, lq, wq = _split(tuple(q.shape), None if axes is None else axes.query)
    kb, lk, _ = _split(tuple(kk.shape), None if axes is None else axes.keys)
    vb, _, wv = _split(tuple(vv.shape), None if axes is None else axes.keys)
    batches = [qb, kb, vb]
    if mask is not None and np.ndim(mask) > 2:
        batches.append(tuple(np.shape(mask)[: np.ndim(mask) - 2]))
    try:
        batch = math.prod(np.broadcast_shapes(*batches))
    except ValueError:  # the mechanism will refuse these shapes; count generously until it does
        batch = max(math.prod(b) for b in batches)
    flops = 2.0 * batch * lq * lk * (wq + wv) + 2.0 * batch * (lq + lk) * _param_count(mech)
    itemsize = max(4, q.dtype.itemsize)
    held = q.size + kk.size + vv.size + (np.size(mask) if mask is not None else 0) + batch * lq * wv
    nbytes = float(itemsize) * (held + batch * _heads(mech) * lq * lk)
    if q.size == 0 or kk.size == 0:
        flops = 0.0
        nbytes = float(itemsize) * held
    return Work(flops=flops, nbytes=nbytes, batch=batch, lq=lq, lk=lk)


def probe_or_none(mech: Any, budget: int) -> Axes | None:
    """:func:`probe_axes`, or ``None`` when the sample inputs would be larger than ``budget`` (then the
    options imply positions wider than any tensor of the request, which the mechanism will refuse)."""
    try:
        return probe_axes(mech, budget)
    except ProbeTooLarge:
        return None
