r"""The NumPy float32 fast path of distance attention in a product of flat and hyperbolic factors.

:class:`~attnkit.MixedCurvatureAttention` (Gu, Sala, Gunel & Ré 2019, "Learning Mixed-Curvature
Representations in Product Spaces") weighs key ``j`` for query ``i`` by ``softmax_j(-d(q_i, k_j)/T)`` with
the product distance

    d(x, y)^2 = sum_f w_f d_f(x_f, y_f)^2,

``d_f = 2|x_f - y_f|`` on a flat factor (the κ-stereographic metric at κ = 0) and
``d_f = arcosh(1 + t)/sqrt(c)`` on a Poincaré ball of curvature ``-c`` (``t`` from one GEMM of width
``D_f + 2``, :func:`attnkit.kernels.poincare.pairwise_arg`), and aggregates each factor in its own
geometry: the weighted mean on a flat factor, the Einstein midpoint (Gulcehre et al. 2019) on a ball.
This computes it like FlashAttention, per tile of ``rows`` queries and all keys:

1. every flat factor together: ``sum_f 4 w_f |q_f - k_f|^2`` as one float64 GEMM of the concatenated
   factors ``[4 w_f q_f ..., sum_f 4 w_f |q_f|^2, 1] @ [-2 k_f ..., 1, sum_f 4 w_f |k_f|^2]^T``;
2. each ball: ``t`` by its float64 GEMM, then ``(w_f / c) log(1 + t + sqrt(t (t + 2)))^2`` added, in float32;
3. ``d = sqrt(.)``, the logits ``-d/T`` (plus a float mask; a bool mask hides with ``-inf``), the row's
   largest logit subtracted, ``exp``: unnormalised weights in ``[0, 1]``;
4. one float32 GEMM of the weights with the value factors of every factor side by side:
   ``[v_f ..., 1]`` for the flat ones (numerators and the shared denominator of the means) and
   ``[lambda v_f, lambda - 1]`` for each ball (the Einstein midpoint's numerator and denominator in the
   Klein model, :func:`attnkit.kernels.poincare.value_factors`); the ratios need no normalisation.

Tiles run on attnkit's thread pool with BLAS held to one thread (:func:`attnkit._threads.run_tasks`),
in per-thread scratch buffers; memory beyond the inputs is ``O(rows * Lk)`` a thread. The result agrees
with the mechanism's generic array-API path to float32 rounding (tests/test_mixed_curvature_fast.py).
Spherical factors (κ > 0), learned curvatures and other dtypes or libraries keep the generic path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .._threads import run_tasks
from . import _accel
from .poincare import _sqnorm, key_factor, klein_ratio, query_factor, value_factors
from .poincare_numpy import _MIN_ROWS, _SMALL, _TILE, TilePlan, _buf, exp_distance, masked_exp

__all__ = ["product_attention_numpy"]


class _Plan(TilePlan):
    def __init__(
        self,
        flat: tuple[np.ndarray, np.ndarray] | None,
        balls: list[tuple[np.ndarray, np.ndarray, float]],
        vf: np.ndarray,
        mask: np.ndarray | None,
        temperature: float,
        batch: tuple[int, ...],
        out: np.ndarray,
    ) -> None:
        super().__init__(mask, batch)
        self.flat, self.balls, self.vf = flat, balls, vf
        self.neg_inv_t = -1.0 / temperature
        self.out = out
        self.n = int(vf.shape[-2])
        self.exp: Callable[[np.ndarray, np.ndarray], None] | None = None  # the compiled exp pass (._accel), if wanted

    def tile(self, b: int, i0: int, i1: int) -> None:
        r, n = i1 - i0, self.n
        t64 = _buf("t64", r * n, np.float64).reshape(r, n)
        acc = _buf("acc", r * n, np.float32).reshape(r, n)
        if self.flat is not None:  # sum over the flat factors of 4 w_f |q_f - k_f|^2
            np.matmul(self.item(self.flat[0], b)[i0:i1], self.item(self.flat[1], b), out=t64)
            np.copyto(acc, t64, casting="unsafe")
            np.maximum(acc, 0.0, out=acc)  # the expansion's rounding may give -1e-16
        else:
            acc.fill(0.0)
        z = _buf("z", r * n, np.float32).reshape(r, n)
        for fq, fkt, coef in self.balls:  # (w_f / c) arcosh(1 + t)^2 of each ball
            np.matmul(self.item(fq, b)[i0:i1], self.item(fkt, b), out=t64)
            exp_distance(t64, z)  # exp(sqrt(c) d)
            np.log(z, out=z)
            np.multiply(z, z, out=z)
            if coef != 1.0:
                np.multiply(z, coef, out=z)
            np.add(acc, z, out=acc)
        np.sqrt(acc, out=acc)
        np.multiply(acc, self.neg_inv_t, out=acc)  # the logits -d/T
        masked_exp(acc, self.mask_tile(b, i0, i1), self.exp)
        np.matmul(acc, self.item(self.vf, b), out=self.item(self.out, b)[i0:i1])


def _sqnorm64(x: np.ndarray) -> np.ndarray:
    return _sqnorm(x.astype(np.float64), np)


def product_attention_numpy(
    qs: Sequence[Any],
    ks: Sequence[Any],
    vs: Sequence[Any],
    factors: Sequence[tuple[float, float]],
    temperature: float,
    mask: Any,
    eps: float,
    num_threads: int | None = None,
) -> list[np.ndarray] | None:
    """Product-space distance attention on validated float32 NumPy arrays, or ``None`` where this path
    does not apply (another library or dtype, a spherical factor, a problem too small to tile).

    ``qs[f] (..., M, D_f)``, ``ks[f] (..., N, D_f)``, ``vs[f] (..., N, D_f)``: the coordinates of each
    factor (points strictly inside their balls); ``factors[f] = (c, w)``: ``c > 0`` a Poincaré ball of
    curvature ``-c``, ``c = 0`` flat, ``w >= 0`` the factor's weight in ``d^2``; ``mask`` bool (True =
    attend) or float32 (added to the logits), broadcastable to ``(..., M, N)``. Returns each factor's
    aggregate ``(..., M, D_f)`` float32: the weighted mean (zeros for a fully masked query) or the
    Einstein midpoint (the origin), in the order of ``factors``.
    """
    f32 = np.dtype(np.float32)
    arrays = [*qs, *ks, *vs]
    if not arrays or not all(type(a) is np.ndarray and a.dtype == f32 and a.ndim >= 2 for a in arrays):
        return None
    if any(c < 0 or not math.isfinite(c) for c, _ in factors) or not any(w > 0 for _, w in factors):
        return None
    if mask is not None and (type(mask) is not np.ndarray or mask.ndim < 2 or mask.dtype not in (np.dtype(np.bool_), f32)):
        return None
    m, n = int(qs[0].shape[-2]), int(ks[0].shape[-2])
    try:
        batch = tuple(np.broadcast_shapes(*(a.shape[:-2] for a in arrays), () if mask is None else mask.shape[:-2]))
    except ValueError:
        return None
    nb = math.prod(batch)
    if nb * m * n <= _SMALL or min(m, n) == 0:
        return None
    flat_q, flat_k, balls, values, widths = [], [], [], [], []
    qq = kk = None  # the flat factors' weighted squared norms, summed
    for (c, w), q, k, v in zip(factors, qs, ks, vs, strict=True):
        widths.append(int(v.shape[-1]))
        if c == 0.0:
            values.append(v)
            if w > 0:
                flat_q.append((4.0 * w) * q.astype(np.float64))
                flat_k.append(-2.0 * k.astype(np.float64))
                qq = (4.0 * w) * _sqnorm64(q) + (0.0 if qq is None else qq)
                kk = (4.0 * w) * _sqnorm64(k) + (0.0 if kk is None else kk)
            continue
        values.append(value_factors(v, c, np))
        if w > 0:
            fkt = np.ascontiguousarray(np.swapaxes(key_factor(k, c, np, np.float64), -1, -2))
            balls.append((query_factor(q, c, np, np.float64), fkt, w / c))
    flat = None
    if flat_q and qq is not None and kk is not None:
        fq = np.concatenate([*flat_q, qq, np.ones_like(qq)], axis=-1)  # the factors are slices of one array: same batch
        fk = np.concatenate([*flat_k, np.ones_like(kk), kk], axis=-1)
        flat = (fq, np.ascontiguousarray(np.swapaxes(fk, -1, -2)))
    has_flat = any(c == 0.0 for c, _ in factors)
    vb = [np.broadcast_to(v, (*batch, n, v.shape[-1])) for v in values]
    if has_flat:
        vb.append(np.ones((*batch, n, 1), dtype=f32))  # the flat means' shared denominator
    vf = np.ascontiguousarray(np.concatenate(vb, axis=-1), dtype=f32)
    views = lambda x: np.broadcast_to(x, (*batch, *x.shape[-2:]))  # noqa: E731
    flat_b = None if flat is None else (views(flat[0]), views(flat[1]))
    balls_b = [(views(fq), views(fkt), coef) for fq, fkt, coef in balls]
    mk = None if mask is None else np.broadcast_to(mask, (*batch, mask.shape[-2], n))
    out = np.empty((*batch, m, vf.shape[-1]), dtype=f32)
    plan = _Plan(flat_b, balls_b, vf, mk, temperature, batch, out)
    plan.exp = _accel.exp_rowsum() if _accel.wanted(nb * m * n, f32) else None
    rows = min(m, max(_MIN_ROWS, _TILE // n))
    run_tasks(plan.run, [(b, i0, min(m, i0 + rows)) for b in range(nb) for i0 in range(0, m, rows)], num_threads)
    results: list[np.ndarray] = []
    den = out[..., -1:] if has_flat else None
    col = 0
    for (c, _), width in zip(factors, widths, strict=True):
        if c == 0.0 and den is not None:
            num = out[..., col : col + width]
            results.append(np.divide(num, den, out=np.zeros_like(num), where=den > 0))  # a fully masked row: zeros
            col += width
        else:
            results.append(klein_ratio(out[..., col : col + width + 1], c, eps, np))
            col += width + 1
    return results
