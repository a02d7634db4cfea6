"""Admission control: the work a request asks for, estimated from its shapes before computing.

``max_elements`` bounds each tensor, but attention costs ``O(Lq * Lk)``: two tensors well inside the
limit can ask for hours of arithmetic or gigabytes of scores. Before a forward pass the server
estimates, from the shapes alone,

* FLOPs: ``2 B Lq Lk (w_q + w_v)`` for the two products ``Q K^T`` and ``P V`` summed over heads
  (``w`` is the number of elements one position holds, ``H * D``), plus ``2 B (Lq + Lk) P`` for
  applying ``P`` learned parameters to every position (the projections); and
* bytes: the inputs, the output and one ``B * H * Lq * Lk`` score matrix (what a dense mechanism
  materialises; tiled ones hold less),

and refuses (413 ``too_much_work``) a request above ``max_flops`` or ``max_work_bytes``. ``B``, ``Lq``,
``Lk`` and ``H`` come from the layout the mechanism declares (:func:`.scores.weights_layout`); for a
graph layer every target attends its own ``k`` neighbours (``Lq = 1`` per target). The estimate is
an upper bound of the right order rather than an exact count; an empty input costs nothing.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from .scores import AxisInfo, WeightsLayout

__all__ = ["Work", "estimate_work"]


@dataclasses.dataclass(frozen=True)
class Work:
    """An estimate of one forward pass: floating-point operations and bytes held at once."""

    flops: float
    nbytes: float
    batch: int
    lq: int
    lk: int


def _split(shape: tuple[int, ...], info: AxisInfo | None) -> tuple[tuple[int, ...], int, int]:
    """(batch shape, sequence length, elements per position) of an input of ``shape``."""
    size = math.prod(shape)
    if not shape:
        return (), 1, 1
    if info is not None and len(shape) >= info.ndim:
        batch = tuple(shape[: len(shape) - info.ndim])
        length = math.ceil(shape[len(shape) + info.axis] / info.unit)
    elif info is not None:  # the spec's flat arrays: seqLen * width numbers
        batch, length = (), math.ceil(size / max(1, info.width))
    else:  # unknown layout: every row (all but the last axis) counts as a position
        batch, length = tuple(shape[:-2]), shape[-2] if len(shape) > 1 else 1
    per = math.prod(batch) * length
    width = size // per if per else (info.width if info is not None else shape[-1])
    return batch, length, max(1, int(width))


def _param_count(mech: Any) -> int:
    try:
        return sum(math.prod(s) for s in mech.param_shapes().values())
    except Exception:  # noqa: BLE001 - a mechanism without param_shapes()
        return 0


def estimate_work(mech: Any, layout: WeightsLayout | None, q: np.ndarray, k: np.ndarray | None, v: np.ndarray | None, mask: Any) -> Work:
    """The :class:`Work` of ``mech.forward(q, k, v, mask=mask)`` (keys and values default to the query)."""
    kk = q if k is None else k
    vv = kk if v is None else v
    qi = None if layout is None else layout.query
    ki = None if layout is None else layout.keys
    heads = 1 if layout is None else max(1, layout.per_pair)
    kb, lk, _ = _split(tuple(kk.shape), ki)
    vb, _, wv = _split(tuple(vv.shape), ki)
    if layout is not None and layout.per_target:  # graph: one target per query row, over its own k neighbours
        qb, lq, wq = tuple(q.shape[:-1]), 1, int(q.shape[-1]) if q.ndim else 1
        lk += layout.extra_keys
        batches = [qb]
    else:
        qb, lq, wq = _split(tuple(q.shape), qi)
        batches = [qb, kb, vb]
        if layout is not None:
            lk += layout.extra_keys
    if mask is not None and np.ndim(mask) > 2:
        batches.append(tuple(np.shape(mask)[: np.ndim(mask) - 2]))
    try:
        batch = math.prod(np.broadcast_shapes(*batches))
    except ValueError:  # the mechanism will refuse these shapes; count generously until it does
        batch = max(math.prod(b) for b in batches)
    flops = 2.0 * batch * lq * lk * (wq + wv) + 2.0 * batch * (lq + lk) * _param_count(mech)
    itemsize = max(4, q.dtype.itemsize)
    held = q.size + kk.size + vv.size + (np.size(mask) if mask is not None else 0) + batch * lq * wv
    nbytes = float(itemsize) * (held + batch * heads * lq * lk)
    if q.size == 0 or kk.size == 0:
        flops, nbytes = 0.0, float(itemsize) * held
    return Work(flops=flops, nbytes=nbytes, batch=batch, lq=lq, lk=lk)
