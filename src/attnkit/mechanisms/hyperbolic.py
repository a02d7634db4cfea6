r"""HyperbolicAttention: attention in the Poincaré ball (Gulcehre et al. 2019, "Hyperbolic Attention Networks").

Queries, keys and values are points of the Poincaré ball of curvature ``-c``. Each query attends to
the keys by hyperbolic distance and aggregates the values by a hyperbolic mean::

    alpha_ij = softmax_j(-d_c(q_i, k_j) / T  [+ float mask, or -inf where a bool mask is False])
    out_i    = EinsteinMidpoint_c({v_j}, alpha_i.)       (aggregation="einstein", the default)
             = FrechetMean_c({v_j}, alpha_i.)            (aggregation="frechet")

with ``d_c(x, y) = 2/sqrt(c) artanh(sqrt(c) |(-x) (+) y|)`` (Ganea et al. 2018). The Einstein midpoint
is the closed form of Gulcehre et al. (through the Klein model, with Lorentz factors); the Fréchet mean
is the point minimising ``sum_j alpha_ij d_c(out_i, v_j)^2``, found iteratively. See
:mod:`attnkit.kernels.poincare` for the formulas and their numerics.

Layout (head-less, DESIGN.md): ``q (..., Lq, D)`` or one query ``(D,)`` (the result is squeezed back),
``keys (..., Lk, D)``, ``values (..., Lk, Dv)``; leading dimensions broadcast. The spec's flat arrays
work too: ``keys`` of length ``Lk*D`` and ``values`` of length ``Lk*Dv``. ``mask`` is ``(..., Lq, Lk)``
(or ``(..., Lk)`` for a single query): bool True = attend, float = added to the logits. A query whose
keys are all masked returns the origin of the ball (the hyperbolic "zero"), never NaN.
The output is a point of the ball, in the caller's library and float dtype.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._array import (
    Array,
    finite_float,
    one_of,
    positive_float,
    positive_int,
)
from ..kernels import poincare as pc
from ..kernels.masks import apply_mask
from ..kernels.softmax import safe_softmax
from ._headless import HeadlessInputs, prepare_headless
from .base import Mechanism
from .registry import register

__all__ = ["HyperbolicAttention"]


@register
class HyperbolicAttention(Mechanism):
    """Attention over the Poincaré ball with hyperbolic-distance weights and a hyperbolic mean.

    ``dim``: the width D of queries and keys. ``curvature``: ``c > 0`` for the ball of curvature
    ``-c``; a negative value, as the spec gives it, means the same ball; 0 raises ``ConfigError``.
    ``temperature`` ``T > 0`` divides the negative distances. ``aggregation``: ``"einstein"`` (closed
    form, default) or ``"frechet"`` (iterative; ``frechet_iters`` steps at most, stopping when a step
    is shorter than ``frechet_tol``, by default 100 eps of the dtype; under ``jax.jit`` /
    ``torch.compile`` all ``frechet_iters`` steps are traced and the mean is frozen where the rule
    stops, the same result, so a smaller ``frechet_iters`` compiles faster). ``input_space``: ``"ball"``
    (inputs are points of the ball; points outside raise an ``AttentionError`` naming the argument)
    or ``"tangent"`` (inputs are Euclidean vectors, mapped into the ball by ``to_poincare`` first).
    ``check_finite`` rejects NaN/inf input.
    """

    name = "hyperbolic"
    summary = "attention in the Poincaré ball: hyperbolic-distance weights, Einstein-midpoint or Fréchet-mean aggregation"
    input_layout = "headless"
    shape_options = {"dim": ("query", -1)}
    example_options = {"dim": 4}

    def __init__(
        self,
        dim: int,
        curvature: float = 1.0,
        temperature: float = 1.0,
        aggregation: str = "einstein",
        frechet_iters: int = 100,
        frechet_tol: float | None = None,
        input_space: str = "ball",
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        self.dim = positive_int(dim, "dim")
        self._c = pc.curvature_value(curvature, "curvature")
        self.curvature = finite_float(curvature, "curvature")
        self.temperature = positive_float(temperature, "temperature")
        self.aggregation = one_of(aggregation, "aggregation", ("einstein", "frechet"))
        self.frechet_iters = positive_int(frechet_iters, "frechet_iters")
        if frechet_tol is not None:
            frechet_tol = positive_float(frechet_tol, "frechet_tol")
        self.frechet_tol = frechet_tol
        self.input_space = one_of(input_space, "input_space", ("ball", "tangent"))
        self.check_finite = bool(check_finite)

    @property
    def c(self) -> float:
        """The ball parameter ``|curvature|`` (the ball has radius ``1/sqrt(c)``)."""
        return self._c

    # ------------------------------------------------------------------ input handling
    def _prepare(self, q: Any, keys: Any, values: Any, mask: Any) -> HeadlessInputs:
        h = prepare_headless(q, keys, values, mask, dim=self.dim, check=self.check_finite, compute=pc.geometry_dtype)
        xp, c = h.xp, self._c
        if self.input_space == "tangent":
            eps = pc.margin(h.out_dtype)
            h.q, h.k, h.v = (pc.expmap0_kernel(x, c, eps, xp) for x in (h.q, h.k, h.v))
        # finite tangent vectors always land inside; checked anyway, so NaN let through by
        # check_finite=False is still an error naming the argument rather than a NaN output
        pc.check_in_ball(h.q, "query", c, xp)
        if keys is not None:
            pc.check_in_ball(h.k, "key", c, xp)
        if values is not None:
            pc.check_in_ball(h.v, "value", c, xp)
        return h

    def _weights(self, h: HeadlessInputs) -> Array:
        logits = pc.pairwise_dist_kernel(h.q, h.k, self._c, h.xp) * (-1.0 / self.temperature)
        return safe_softmax(apply_mask(logits, h.mask, h.xp), h.xp, axis=-1)

    # ------------------------------------------------------------------ public API
    def _forward(self, params: Mapping[str, Array], query: Any, key: Any, value: Any, *, mask: Any = None) -> Array:
        """The hyperbolic attention output ``(..., Lq, Dv)`` (``(Dv,)`` for a single query).

        ``key`` defaults to ``query`` (self-attention) and ``value`` to ``key``.
        """
        h = self._prepare(query, key, value, mask)
        w = self._weights(h)
        eps = pc.margin(h.out_dtype)
        out = pc.einstein_aggregate(w, h.v, self._c, eps, h.xp)
        if self.aggregation == "frechet":
            tol = self.frechet_tol if self.frechet_tol is not None else pc.default_tol(out.dtype)
            out = pc.frechet_aggregate(w, h.v, self._c, eps, h.xp, self.frechet_iters, tol, init=out)
        return h.finish(out)

    def _attention_weights(self, params: Mapping[str, Array], query: Any, key: Any, *, mask: Any = None) -> Array:
        """The attention probabilities ``softmax(-d_c(q, k)/T)``: ``(..., Lq, Lk)`` (``(Lk,)`` for one query)."""
        h = self._prepare(query, key, None, mask)
        return h.finish(self._weights(h))

    def poincare_distance(self, x: Any, y: Any) -> Array:
        """``d_c(x, y)`` at this layer's curvature (the spec's ``poincareDistance``)."""
        self._check_alive()
        return pc.poincare_distance(x, y, c=self._c)

    def to_poincare(self, u: Any) -> Array:
        """``exp_0(u)`` at this layer's curvature (the spec's ``toPoincare``)."""
        self._check_alive()
        return pc.to_poincare(u, c=self._c)

    def from_poincare(self, x: Any) -> Array:
        """``log_0(x)`` at this layer's curvature (the spec's ``fromPoincare``)."""
        self._check_alive()
        return pc.from_poincare(x, c=self._c)

    def example_inputs(self, seq_len: int = 8, rng: np.random.Generator | None = None) -> tuple[np.ndarray, ...]:
        """``seq_len`` queries, keys and values (float32), inside the ball (or tangent vectors)."""
        rng = rng or np.random.default_rng()
        seq_len = positive_int(seq_len, "seq_len")
        scale = 1.0 / math.sqrt(self.dim)
        out = []
        for _ in range(3):
            u = rng.standard_normal((seq_len, self.dim)) * scale
            x = u if self.input_space == "tangent" else pc.to_poincare(u, c=self._c)
            out.append(np.asarray(x, dtype=np.float32))
        return tuple(out)
