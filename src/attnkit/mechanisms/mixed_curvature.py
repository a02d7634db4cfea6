r"""Attention in mixed-curvature spaces, built on attnkit's Poincaré-ball primitives.

:class:`MixedCurvatureAttention` works in the product manifold ``E^{d_E} x B_c^{d_H}`` (Gu, Sala, Gunel &
Ré 2019, "Learning Mixed-Curvature Representations in Product Spaces"): a point is ``x = [x_E | x_H]``
with ``x_E`` Euclidean and ``x_H`` in the Poincaré ball of curvature ``-c``. The product metric's
distance combines both components,

    d(x, y)^2 = w_E |x_E - y_E|^2 + w_H d_c(x_H, y_H)^2,

the weights are ``alpha_ij = softmax_j(-d(q_i, k_j) / T)``, and each component of the values is
aggregated in its own geometry: the weighted mean ``sum_j alpha_ij v_E,j`` in the Euclidean factor, the
Einstein midpoint (or Fréchet mean) of ``v_H,j`` in the hyperbolic factor (Gulcehre et al. 2019).

:class:`DualSpaceAttention` attends to the same Euclidean inputs in two geometries and mixes the results:

    out = (1 - mix) * softmax(scale q k^T) v  +  mix * log_0(HypAttn_c(exp_0 q, exp_0 k, exp_0 v))

where ``HypAttn`` is :class:`~attnkit.HyperbolicAttention` (weights ``softmax(-d_c/T)``, Einstein-midpoint
or Fréchet-mean aggregation) and ``exp_0``/``log_0`` the maps at the origin (Ganea et al. 2018).
``mix = 0`` is scaled dot-product attention, ``mix = 1`` hyperbolic attention read back in the tangent space.

Layout (head-less): ``q (..., Lq, D)`` or one query ``(D,)``, ``keys (..., Lk, D)`` (default ``q``),
``values (..., Lk, Dv)`` (default ``keys``); ``mask (..., Lq, Lk)`` (``(..., Lk)`` for one query), bool
True = attend or float added to the logits. A query whose keys are all masked gets zeros (Euclidean
parts) and the origin (hyperbolic parts).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import array_api_compat
import numpy as np

from .._array import (
    Array,
    Namespace,
    as_float_array,
    check_finite,
    finite_float,
    namespace,
    non_negative_int,
    nonzero_float,
    one_of,
    positive_float,
    positive_int,
    shape_str,
)
from ..errors import ConfigError, ShapeError
from ..kernels import poincare as pc
from ..kernels.masks import apply_mask
from ..kernels.softmax import safe_softmax
from ._headless import prepare_headless
from .base import Mechanism
from .registry import register

__all__ = ["MixedCurvatureAttention", "DualSpaceAttention"]


def _safe_sqrt(x: Array, xp: Namespace) -> Array:
    """``sqrt(x)`` for ``x >= 0``, exactly 0 at 0 with a zero (not NaN) gradient there."""
    pos = x > 0
    return xp.where(pos, xp.sqrt(xp.where(pos, x, xp.ones_like(x))), xp.zeros_like(x))


@register
class MixedCurvatureAttention(Mechanism):
    """Distance attention in the product space ``E^{d_E} x B_c^{d_H}`` (see the module docstring).

    Options: ``dim`` total width (64); ``euclidean_dim`` ``d_E`` leading Euclidean coordinates (default
    ``dim // 2``; ``0`` gives pure hyperbolic, ``dim`` pure Euclidean attention); ``curvature`` ``c`` of the
    hyperbolic factor (a negative value means the same ball); ``temperature`` ``T`` (1.0);
    ``euclidean_weight`` ``w_E`` and ``hyperbolic_weight`` ``w_H`` (1.0 each, >= 0, not both 0);
    ``aggregation`` ``"einstein"`` or ``"frechet"`` in the hyperbolic factor; ``input_space``: ``"ball"``
    (hyperbolic coordinates are points of the ball, checked) or ``"tangent"`` (they are tangent vectors at
    the origin, mapped in by ``exp_0``; the output's hyperbolic part is mapped back by ``log_0``);
    ``check_finite``. Values are points of the same space (width ``dim``); the output too.
    """

    name = "mixed_curvature"
    summary = "attention in a Euclidean x hyperbolic product space (product-metric distance weights)"
    input_layout = "headless"
    shape_options = {"dim": ("query", -1)}
    example_options = {"dim": 4}

    def __init__(
        self,
        dim: int = 64,
        euclidean_dim: int | None = None,
        curvature: float = 1.0,
        temperature: float = 1.0,
        euclidean_weight: float = 1.0,
        hyperbolic_weight: float = 1.0,
        aggregation: str = "einstein",
        input_space: str = "ball",
        frechet_iters: int = 100,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        self.dim = positive_int(dim, "dim")
        de = self.dim // 2 if euclidean_dim is None else non_negative_int(euclidean_dim, "euclidean_dim")
        if de > self.dim:
            raise ConfigError(f"euclidean_dim: expected at most dim = {self.dim}, got {euclidean_dim!r}")
        self.euclidean_dim = de
        self._c = pc.curvature_value(curvature, "curvature")
        self.curvature = finite_float(curvature, "curvature")
        self.temperature = positive_float(temperature, "temperature")
        self.euclidean_weight = finite_float(euclidean_weight, "euclidean_weight")
        self.hyperbolic_weight = finite_float(hyperbolic_weight, "hyperbolic_weight")
        if self.euclidean_weight < 0 or self.hyperbolic_weight < 0:
            raise ConfigError(
                f"euclidean_weight, hyperbolic_weight: expected numbers >= 0, got {euclidean_weight!r}, {hyperbolic_weight!r}"
            )
        if self.euclidean_weight == 0 and self.hyperbolic_weight == 0:
            raise ConfigError("euclidean_weight, hyperbolic_weight: at least one must be > 0, got both 0")
        self.aggregation = one_of(aggregation, "aggregation", ("einstein", "frechet"))
        self.input_space = one_of(input_space, "input_space", ("ball", "tangent"))
        self.frechet_iters = positive_int(frechet_iters, "frechet_iters")
        self.check_finite = bool(check_finite)

    @property
    def c(self) -> float:
        return self._c

    @property
    def hyperbolic_dim(self) -> int:
        return self.dim - self.euclidean_dim

    def _split(self, x: Array, name: str, xp: Namespace, eps: float, given: bool) -> tuple[Array, Array]:
        de = self.euclidean_dim
        e, h = x[..., :de], x[..., de:]
        if h.shape[-1]:
            if self.input_space == "tangent":
                h = pc.to_poincare(h, c=self._c)
            elif given:
                pc.check_in_ball(h, f"{name} (hyperbolic part, coordinates {de}..{self.dim - 1})", self._c, xp)
        return e, h

    def _distances(self, qe: Array, qh: Array, ke: Array, kh: Array, xp: Namespace) -> Array:
        sq = None
        if self.euclidean_dim and self.euclidean_weight:
            sq = self.euclidean_weight * pc.pairwise_sqdist(qe, ke, xp)
        if self.hyperbolic_dim and self.hyperbolic_weight:
            dh = pc.pairwise_distance(qh, kh, c=self._c)
            part = self.hyperbolic_weight * dh * dh
            sq = part if sq is None else sq + part
        if sq is None:  # the only non-empty factor has weight 0: every key is equally far
            shape = (*np.broadcast_shapes(tuple(qe.shape[:-2]), tuple(ke.shape[:-2])), int(qe.shape[-2]), int(ke.shape[-2]))
            return xp.zeros(shape, dtype=qe.dtype, device=array_api_compat.device(qe))
        return _safe_sqrt(sq, xp)

    def _weights(self, q: Any, keys: Any, values: Any, mask: Any) -> tuple:
        h = prepare_headless(q, keys, values, mask, dim=self.dim, check=self.check_finite, values_width=self.dim, compute=pc.geometry_dtype)
        xp = h.xp
        eps = pc.margin(h.out_dtype)
        qe, qh = self._split(h.q, "query", xp, eps, True)
        ke, kh = self._split(h.k, "key", xp, eps, keys is not None)
        ve, vh = self._split(h.v, "value", xp, eps, values is not None)
        logits = apply_mask(self._distances(qe, qh, ke, kh, xp) * (-1.0 / self.temperature), h.mask, xp)
        return h, safe_softmax(logits, xp, axis=-1), ve, vh, eps

    def _forward(self, params: Mapping[str, Array], query: Any, key: Any, value: Any, *, mask: Any = None) -> Array:
        """Output points ``(..., Lq, dim)`` (``(dim,)`` for a single query)."""
        h, w, ve, vh, eps = self._weights(query, key, value, mask)
        xp = h.xp
        parts = []
        if self.euclidean_dim:
            parts.append(w @ ve)
        if self.hyperbolic_dim:
            oh = pc.einstein_aggregate(w, vh, self._c, eps, xp)
            if self.aggregation == "frechet":
                oh = pc.frechet_aggregate(w, vh, self._c, eps, xp, self.frechet_iters, pc.default_tol(oh.dtype), init=oh)
            if self.input_space == "tangent":
                oh = pc.from_poincare(oh, c=self._c)
            parts.append(oh)
        return h.finish(parts[0] if len(parts) == 1 else xp.concat(parts, axis=-1))

    def _attention_weights(self, params: Mapping[str, Array], query: Any, key: Any, *, mask: Any = None) -> Array:
        """``softmax(-d(q, k)/T)``: ``(..., Lq, Lk)`` (``(Lk,)`` for a single query)."""
        h, w, _, _, _ = self._weights(query, key, None, mask)
        return h.finish(w)

    def distance(self, x: Any, y: Any) -> Array:
        """The product-space distance ``d(x, y)`` between points ``(..., dim)`` (broadcast)."""
        self._check_alive()
        xp = namespace(x, y)
        xa = xp.expand_dims(as_float_array(x, "x", xp), axis=-2)
        ya = xp.expand_dims(as_float_array(y, "y", xp), axis=-2)
        for name, a in (("x", xa), ("y", ya)):
            if a.shape[-1] != self.dim:
                raise ShapeError(f"{name}: expected points of width dim = {self.dim}, got shape {shape_str(a.shape[:-2] + a.shape[-1:])}")
            check_finite(a, name, xp)
        dt = xp.result_type(xa, ya)
        xa, ya = xp.astype(xa, dt), xp.astype(ya, dt)
        eps = pc.margin(dt)
        xe, xh = self._split(xa, "x", xp, eps, True)
        ye, yh = self._split(ya, "y", xp, eps, True)
        return self._distances(xe, xh, ye, yh, xp)[..., 0, 0]

    def example_inputs(self, seq_len: int = 8, rng: np.random.Generator | None = None) -> tuple[np.ndarray, ...]:
        """``seq_len`` product points (float32): Gaussian Euclidean parts, ball (or tangent) hyperbolic parts."""
        rng = rng or np.random.default_rng()
        seq_len = positive_int(seq_len, "seq_len")
        out = []
        for _ in range(3):
            u = rng.standard_normal((seq_len, self.dim)) / math.sqrt(self.dim)
            if self.hyperbolic_dim and self.input_space == "ball":
                u[:, self.euclidean_dim :] = pc.to_poincare(u[:, self.euclidean_dim :], c=self._c)
            out.append(u.astype(np.float32))
        return tuple(out)


@register
class DualSpaceAttention(Mechanism):
    """Euclidean and hyperbolic attention on the same inputs, mixed (see the module docstring).

    Options: ``dim`` query/key width (64); ``curvature`` (1.0; negative = the same ball);
    ``temperature`` ``T`` of the hyperbolic branch (1.0); ``mix`` in ``[0, 1]`` (0.5): the hyperbolic
    branch's share; ``scale`` of the Euclidean branch (``1/sqrt(dim)``); ``aggregation`` of the
    hyperbolic branch (``"einstein"``/``"frechet"``); ``check_finite``. Inputs are Euclidean vectors.
    """

    name = "dual_space"
    summary = "Euclidean dot-product and Poincaré-ball attention on the same inputs, mixed"
    input_layout = "headless"
    shape_options = {"dim": ("query", -1)}
    example_options = {"dim": 4}

    def __init__(
        self,
        dim: int = 64,
        curvature: float = 1.0,
        temperature: float = 1.0,
        mix: float = 0.5,
        scale: float | None = None,
        aggregation: str = "einstein",
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        from .hyperbolic import HyperbolicAttention

        self.dim = positive_int(dim, "dim")
        self.curvature = finite_float(curvature, "curvature")
        self.temperature = positive_float(temperature, "temperature")
        self.mix = finite_float(mix, "mix")
        if not 0.0 <= self.mix <= 1.0:
            raise ConfigError(f"mix: expected a value in [0, 1], got {mix!r}")
        self.scale = None if scale is None else nonzero_float(scale, "scale")
        self.aggregation = one_of(aggregation, "aggregation", ("einstein", "frechet"))
        self.check_finite = bool(check_finite)
        self._hyp = HyperbolicAttention(self.dim, curvature=self.curvature, temperature=self.temperature,
                                        aggregation=self.aggregation, input_space="tangent", check_finite=False)

    @property
    def effective_scale(self) -> float:
        return self.scale if self.scale is not None else 1.0 / math.sqrt(self.dim)

    def _forward(self, params: Mapping[str, Array], query: Any, key: Any, value: Any, *, mask: Any = None) -> Array:
        """Output ``(..., Lq, Dv)`` (``(Dv,)`` for a single query): the mixed Euclidean and hyperbolic results."""
        h = prepare_headless(query, key, value, mask, dim=self.dim, check=self.check_finite, compute=pc.geometry_dtype)
        xp, qa, ka, va, m = h.xp, h.q, h.k, h.v, h.mask
        parts = []
        if self.mix < 1.0:
            logits = apply_mask((qa * self.effective_scale) @ xp.matrix_transpose(ka), m, xp)
            parts.append((1.0 - self.mix) * (safe_softmax(logits, xp) @ va))
        if self.mix > 0.0:
            hyp = self._hyp.forward(qa, ka, va, mask=m)
            parts.append(self.mix * pc.from_poincare(hyp, c=self._hyp.c))
        return h.finish(parts[0] if len(parts) == 1 else parts[0] + parts[1])

    def dispose(self) -> None:
        self._hyp.dispose()
        super().dispose()

    def example_inputs(self, seq_len: int = 8, rng: np.random.Generator | None = None) -> tuple[np.ndarray, ...]:
        rng = rng or np.random.default_rng()
        seq_len = positive_int(seq_len, "seq_len")
        scale = np.float32(1.0 / math.sqrt(self.dim))
        return tuple(rng.standard_normal((seq_len, self.dim), dtype=np.float32) * scale for _ in range(3))
