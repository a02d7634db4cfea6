r"""The NumPy float32 fast path of :func:`attnkit.kernels.poincare.einstein_attention`.

Hyperbolic attention with Einstein-midpoint aggregation (Gulcehre et al. 2019, "Hyperbolic Attention
Networks") computed like FlashAttention: per tile of ``rows`` queries,

1. ``t = [r q, r|q|^2, r] @ [-2 s k, s, s|k|^2]^T`` in float64 (one GEMM of width ``D + 2``; see
   :func:`attnkit.kernels.poincare.pairwise_arg`), so ``d_c(q_i, k_j) = arcosh(1 + t_ij)/sqrt(c)``;
2. ``z = 1 + t + sqrt(t (t + 2)) = exp(sqrt(c) d)`` in float32, in place;
3. the unnormalised weights ``w = exp(-d/T) = z^(-p)``, ``p = 1/(T sqrt(c))``: for ``p = 1`` (``T = 1/sqrt(c)``,
   the default ``T = c = 1``) simply ``1/z``, which lies in ``(0, 1]`` and cannot underflow for points inside
   the float32 ball (``z < 1e16``); otherwise ``exp(p (log z_min - log z))`` with the row's largest logit
   subtracted (float masks are added to the logits, bool masks zero the hidden weights);
4. ``[sum_j w_ij lambda_j v_j, sum_j w_ij (lambda_j - 1)]`` as one GEMM with ``[lambda v, lambda - 1]``:
   the Einstein midpoint's numerator and denominator in the Klein model, whose ratio does not need the
   softmax's normalisation.

Tiles run on attnkit's thread pool (:func:`attnkit._threads.run_tasks`) with BLAS held to one thread, in per-thread
scratch buffers sized to the L2 cache; memory beyond the inputs is ``O(rows * Lk)`` a thread.
The result agrees with the generic array-API path to float32 rounding (tests/test_hyperbolic.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .._threads import ThreadScratch, run_tasks

__all__ = ["TilePlan", "einstein_attention_numpy", "exp_distance", "masked_exp"]

#: scores in one query tile (its float64 distance tile is 512 KB: an L2 cache of a core)
_TILE = 1 << 16
#: fewest query rows a tile (a thinner GEMM wastes BLAS's packing)
_MIN_ROWS = 8
#: at most this many scores in the whole call: the generic path is as fast
_SMALL = 1 << 14

#: a thread's scratch array of at least ``size`` elements (kept between calls, grown as needed)
_buf = ThreadScratch().get


def masked_exp(z: np.ndarray, mask: np.ndarray | None, exp: Callable[[np.ndarray, np.ndarray], None] | None = None) -> None:
    """The unnormalised softmax weights of a tile of logits ``z (r, n)``, in place: the ``mask`` tile applied
    (bool: hidden logits set to ``-inf``; float: added), the row's largest logit subtracted (0 for a fully
    masked row, whose weights are then all ``exp(-inf) = 0``), ``exp``; ``exp`` is the compiled pass
    (:func:`._accel.exp_rowsum`) where given, NumPy's otherwise."""
    r, n = z.shape
    if mask is not None:
        if mask.dtype == np.bool_:
            hide = _buf("hide", r * n, np.bool_).reshape(r, n)
            np.logical_not(mask, out=hide)
            np.copyto(z, -np.inf, where=hide)
        else:
            np.add(z, mask, out=z)
    mx = np.max(z, axis=-1, keepdims=True)
    mx[~np.isfinite(mx)] = 0.0
    np.subtract(z, mx, out=z)
    if exp is not None:  # logits <= 0 here: inside the compiled pass's range
        exp(z, _buf("rowsum", r, np.float32))
    else:
        np.exp(z, out=z)


def exp_distance(t64: np.ndarray, z: np.ndarray) -> None:
    """``z = 1 + t + sqrt(t (t + 2)) = exp(sqrt(c) d_c) >= 1`` in float32 from the distance arguments ``t``
    of a tile (the float64 GEMM of :func:`attnkit.kernels.poincare.pairwise_arg`), in place in ``z``."""
    r, n = z.shape
    s = _buf("s", r * n, np.float32).reshape(r, n)
    np.copyto(z, t64, casting="unsafe")
    np.maximum(z, 0.0, out=z)  # t >= 0 (the GEMM's rounding may give -1e-16)
    np.add(z, 2.0, out=s)
    np.multiply(s, z, out=s)
    np.sqrt(s, out=s)
    np.add(z, s, out=z)
    np.add(z, 1.0, out=z)


class TilePlan:
    """What the tiles of one call share: the batch shape of the broadcast operands, the mask, and the loop
    over tasks ``(batch item, first row, end row)`` that :func:`attnkit._threads.run_tasks` hands out."""

    def __init__(self, mask: np.ndarray | None, batch: tuple[int, ...]) -> None:
        self.mask, self.batch = mask, batch

    def item(self, x: np.ndarray, b: int) -> np.ndarray:
        """Batch item ``b`` (flat index over ``batch``) of a broadcast view ``x (*batch, ., .)``."""
        return x[np.unravel_index(b, self.batch)] if self.batch else x

    def mask_tile(self, b: int, i0: int, i1: int) -> np.ndarray | None:
        """The mask of rows ``i0 .. i1-1`` of batch item ``b`` (``None`` without a mask)."""
        if self.mask is None:
            return None
        m = self.item(self.mask, b)
        return m if self.mask.shape[-2] == 1 else m[i0:i1]

    def tile(self, b: int, i0: int, i1: int) -> None:
        raise NotImplementedError

    def run(self, tasks: Iterable[tuple[int, int, int]]) -> None:
        for b, i0, i1 in tasks:
            self.tile(b, i0, i1)


class _Plan(TilePlan):
    def __init__(
        self, fq: np.ndarray, fkt: np.ndarray, vf: np.ndarray, mask: np.ndarray | None, p: float, batch: tuple[int, ...], out: np.ndarray
    ) -> None:
        super().__init__(mask, batch)
        self.fq, self.fkt, self.vf, self.p = fq, fkt, vf, p
        self.out = out
        self.n = int(fkt.shape[-1])
        self.reciprocal = p == 1.0 and (mask is None or mask.dtype == np.bool_)

    def tile(self, b: int, i0: int, i1: int) -> None:
        r, n = i1 - i0, self.n
        t64 = _buf("t64", r * n, np.float64).reshape(r, n)
        np.matmul(self.item(self.fq, b)[i0:i1], self.item(self.fkt, b), out=t64)
        z = _buf("z", r * n, np.float32).reshape(r, n)
        exp_distance(t64, z)  # exp(sqrt(c) d)
        mt = self.mask_tile(b, i0, i1)
        if self.reciprocal:
            np.reciprocal(z, out=z)  # exp(-d/T) for T sqrt(c) = 1
            if mt is not None:
                np.multiply(z, mt, out=z)
        else:
            np.log(z, out=z)
            np.multiply(z, -self.p, out=z)  # logits -d/T
            masked_exp(z, mt)
        np.matmul(z, self.item(self.vf, b), out=self.item(self.out, b)[i0:i1])


def einstein_attention_numpy(
    q: Any, k: Any, v: Any, c: float, temperature: float, mask: Any, eps: float, num_threads: int | None = None
) -> np.ndarray | None:
    """Hyperbolic Einstein attention on validated float32 NumPy arrays, or ``None`` where this path
    does not apply (another library, another dtype, a problem too small to tile).

    ``q (..., M, D)``, ``k (..., N, D)``, ``v (..., N, Dv)`` with broadcasting batch dimensions, points
    strictly inside the ball of curvature ``-c``; ``mask`` bool (True = attend) or float32 (added to the
    logits), broadcastable to ``(..., M, N)``. Returns ``(..., M, Dv)`` float32.
    """
    from .poincare import key_factor, klein_ratio, query_factor, value_factors

    if not (type(q) is np.ndarray and type(k) is np.ndarray and type(v) is np.ndarray):
        return None
    f32 = np.dtype(np.float32)
    if q.dtype != f32 or k.dtype != f32 or v.dtype != f32 or q.ndim < 2 or k.ndim < 2 or v.ndim < 2:
        return None
    if mask is not None and (type(mask) is not np.ndarray or mask.ndim < 2 or mask.dtype not in (np.dtype(np.bool_), f32)):
        return None
    m, n, dv = int(q.shape[-2]), int(k.shape[-2]), int(v.shape[-1])
    try:
        batch = tuple(np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2], () if mask is None else mask.shape[:-2]))
    except ValueError:
        return None
    nb = math.prod(batch)
    if nb * m * n <= _SMALL or min(m, n, dv) == 0:
        return None
    fq = query_factor(q, c, np, np.float64)
    fkt = np.ascontiguousarray(np.swapaxes(key_factor(k, c, np, np.float64), -1, -2))
    vf = np.ascontiguousarray(value_factors(v, c, np))
    views = [np.broadcast_to(x, (*batch, *x.shape[-2:])) for x in (fq, fkt, vf)]
    mk = None if mask is None else np.broadcast_to(mask, (*batch, mask.shape[-2], n))
    out = np.empty((*batch, m, dv + 1), dtype=f32)
    plan = _Plan(views[0], views[1], views[2], mk, 1.0 / (temperature * math.sqrt(c)), batch, out)
    rows = min(m, max(_MIN_ROWS, _TILE // n))
    run_tasks(plan.run, [(b, i0, min(m, i0 + rows)) for b in range(nb) for i0 in range(0, m, rows)], num_threads)
    return klein_ratio(out, c, eps, np)
