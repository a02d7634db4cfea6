r"""HyperbolicAttention: attention in the Poincaré ball (Gulcehre et al. 2019, "Hyperbolic Attention Networks"),
and in any constant curvature through the κ-stereographic model (Bachmann et al. 2020).

Queries, keys and values are points of the Poincaré ball of curvature ``-c`` (or, with ``kappa``, of the
κ-stereographic model: the ball for κ < 0, Euclidean space for κ = 0, the projected sphere for κ > 0). Each query attends to
the keys by hyperbolic distance and aggregates the values by a hyperbolic mean::

    alpha_ij = softmax_j(-d_c(q_i, k_j) / T  [+ float mask, or -inf where a bool mask is False])
    out_i    = EinsteinMidpoint_c({v_j}, alpha_i.)       (aggregation="einstein", the default)
             = FrechetMean_c({v_j}, alpha_i.)            (aggregation="frechet")

with ``d_c(x, y) = 2/sqrt(c) artanh(sqrt(c) |(-x) (+) y|)`` (Ganea et al. 2018), in general
``d_κ(x, y) = 2 artan_κ |(-x) (+)_κ y|`` (at κ = 0, ``2|x - y|``; the Einstein midpoint becomes the
gyromidpoint, which is the weighted mean at κ = 0). The Einstein midpoint
is the closed form of Gulcehre et al. (through the Klein model, with Lorentz factors); the Fréchet mean
is the point minimising ``sum_j alpha_ij d_c(out_i, v_j)^2``, found iteratively. See
:mod:`attnkit.kernels.stereographic` for the formulas and their numerics.

Signs. ``curvature`` follows the spec: it is the *ball parameter* ``c``, and ``c`` and ``-c`` both mean
the ball of sectional curvature ``-|c|`` (``curvature = -1`` as the spec writes it is the unit ball);
``curvature = 0`` is the flat (κ = 0) limit. ``kappa``, when given, is the signed sectional curvature
itself and overrides ``curvature``: ``kappa = -1`` is the unit ball, ``kappa = 1`` the unit sphere.

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
    Namespace,
    as_float_array,
    check_finite,
    finite_float,
    namespace,
    non_negative_float,
    one_of,
    positive_float,
    positive_int,
)
from ..errors import ConfigError, ShapeError
from ..kernels import poincare as pc
from ..kernels import stereographic as st
from ..kernels.softmax import distance_logits, safe_softmax
from ._headless import HeadlessInputs, prepare_headless
from .base import Mechanism
from .registry import register

__all__ = ["HyperbolicAttention", "curvature_range"]


def curvature_range(kappa: float, lo: float | None, hi: float | None, learn: bool) -> tuple[float, float]:
    """The open interval ``(kappa_min, kappa_max)`` a learnable κ is kept in (defaults ``(-R, R)``,
    ``R = 4 max(1, |κ|)``); it must contain the initial ``kappa``."""
    r = 4.0 * max(1.0, abs(kappa))
    lo_v = -r if lo is None else finite_float(lo, "kappa_min")
    hi_v = r if hi is None else finite_float(hi, "kappa_max")
    if learn and not lo_v < kappa < hi_v:
        raise ConfigError(f"kappa_min, kappa_max: the learnable curvature starts at {kappa:g}, which must lie strictly inside ({lo_v:g}, {hi_v:g})")
    return lo_v, hi_v


@register
class HyperbolicAttention(Mechanism):
    """Attention over the Poincaré ball with hyperbolic-distance weights and a hyperbolic mean.

    ``dim``: the width D of queries and keys. ``curvature``: ``c > 0`` for the ball of curvature
    ``-c``; a negative value, as the spec gives it, means the same ball; 0 is the flat limit (κ = 0).
    ``kappa`` (None): the signed sectional curvature κ, overriding ``curvature`` (κ > 0 is the sphere of
    radius ``1/sqrt κ`` in stereographic coordinates, which no ``curvature`` value can select).
    ``temperature`` ``T > 0`` divides the negative distances. ``aggregation``: ``"einstein"`` (closed
    form, default) or ``"frechet"`` (iterative; ``frechet_iters`` steps at most, stopping when a step
    is shorter than ``frechet_tol``, by default 100 eps of the dtype; under ``jax.jit`` /
    ``torch.compile`` all ``frechet_iters`` steps are traced and the mean is frozen where the rule
    stops, the same result, so a smaller ``frechet_iters`` compiles faster; ONNX export traces them
    the same way; ``frechet_tol=0`` runs exactly ``frechet_iters`` steps). ``input_space``: ``"ball"``
    (inputs are points of the ball; points outside raise an ``AttentionError`` naming the argument)
    or ``"tangent"`` (inputs are Euclidean vectors, mapped into the ball by ``to_poincare`` first).
    ``check_finite`` rejects NaN/inf input.

    ``learn_curvature`` (False) makes κ a parameter: ``param_shapes()`` gains ``curvature_raw (1,)``, an
    unconstrained number mapped into ``(kappa_min, kappa_max)`` by
    ``κ = kappa_min + (kappa_max - kappa_min) sigmoid(raw)`` (:func:`~attnkit.kernels.stereographic.curvature_from_raw`),
    so :func:`attnkit.functional_call` (and a torch module over it) trains it and κ stays in range. The
    range defaults to ``(-R, R)`` with ``R = 4 max(1, |κ|)``: it contains the flat space, and the
    formulas are smooth there, so κ may change sign while it learns; give ``kappa_max < 0`` to stay in
    the ball. With a learnable κ the ball check (a test on data) gives way to projecting ``"ball"``
    inputs onto the current ball (a no-op for κ >= 0); ``input_space="tangent"`` suits it best.
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
        kappa: float | None = None,
        learn_curvature: bool = False,
        kappa_min: float | None = None,
        kappa_max: float | None = None,
    ) -> None:
        super().__init__()
        self.dim = positive_int(dim, "dim")
        self.curvature = finite_float(curvature, "curvature")
        self._kappa = -abs(self.curvature) if kappa is None else finite_float(kappa, "kappa")
        self.learn_curvature = bool(learn_curvature)
        self.kappa_min, self.kappa_max = curvature_range(self._kappa, kappa_min, kappa_max, self.learn_curvature)
        if self.learn_curvature:
            raw = st.raw_from_curvature(self._kappa, self.kappa_min, self.kappa_max)
            self._params = {"curvature_raw": np.array([raw], dtype=np.float64)}
        self.temperature = positive_float(temperature, "temperature")
        self.aggregation = one_of(aggregation, "aggregation", ("einstein", "frechet"))
        self.frechet_iters = positive_int(frechet_iters, "frechet_iters")
        if frechet_tol is not None:  # 0: exactly frechet_iters steps (traceable: jax.jit, ONNX export)
            frechet_tol = non_negative_float(frechet_tol, "frechet_tol")
        self.frechet_tol = frechet_tol
        self.input_space = one_of(input_space, "input_space", ("ball", "tangent"))
        self.check_finite = bool(check_finite)

    @property
    def kappa(self) -> float:
        """The signed sectional curvature κ (the learned value with ``learn_curvature``)."""
        if not self.learn_curvature:
            return self._kappa
        raw = np.asarray(self._params["curvature_raw"], dtype=np.float64)
        return float(st.curvature_from_raw(raw, self.kappa_min, self.kappa_max, namespace(raw))[0])

    def _kappa_of(self, params: Mapping[str, Array], like: Array, xp: Namespace) -> Any:
        """κ for one call: a number, or with ``learn_curvature`` an array ``(1,)`` from ``params``."""
        if not self.learn_curvature:
            return st.effective_curvature(self._kappa)  # |κ| < 1e-30: the flat limit (sqrt|κ| underflows)
        raw = self._params_like(params, like)["curvature_raw"]
        return st.curvature_from_raw(raw, self.kappa_min, self.kappa_max, xp)

    @property
    def c(self) -> float:
        """``-κ``: the ball parameter ``|curvature|`` (the ball has radius ``1/sqrt(c)``); <= 0 off the ball."""
        return -self.kappa

    # ------------------------------------------------------------------ input handling
    def _prepare(self, params: Mapping[str, Array], q: Any, keys: Any, values: Any, mask: Any) -> tuple[HeadlessInputs, Any]:
        h = prepare_headless(q, keys, values, mask, dim=self.dim, check=self.check_finite, compute=pc.geometry_dtype)
        xp = h.xp
        k = self._kappa_of(params, h.q, xp)
        eps = pc.margin(h.out_dtype)
        if self.input_space == "tangent":
            h.q, h.k, h.v = (st.project(st.expmap0(x, k, xp), k, eps, xp) for x in (h.q, h.k, h.v))
        elif self.learn_curvature:  # no test on data: ball inputs are projected onto the current ball
            h.q, h.k, h.v = (st.project(x, k, eps, xp) for x in (h.q, h.k, h.v))
        if not self.learn_curvature and k < 0:
            # finite tangent vectors always land inside; checked anyway, so NaN let through by
            # check_finite=False is still an error naming the argument rather than a NaN output
            pc.check_in_ball(h.q, "query", -k, xp)
            if keys is not None:
                pc.check_in_ball(h.k, "key", -k, xp)
            if values is not None:
                pc.check_in_ball(h.v, "value", -k, xp)
        return h, k

    def _weights(self, h: HeadlessInputs, k: Any) -> Array:
        logits = distance_logits(st.pairwise_dist(h.q, h.k, k, h.xp), self.temperature, h.mask, h.xp)
        return safe_softmax(logits, h.xp, axis=-1)

    # ------------------------------------------------------------------ public API
    def _forward(self, params: Mapping[str, Array], query: Any, key: Any, value: Any, *, mask: Any = None) -> Array:
        """The hyperbolic attention output ``(..., Lq, Dv)`` (``(Dv,)`` for a single query).

        ``key`` defaults to ``query`` (self-attention) and ``value`` to ``key``.
        """
        h, k = self._prepare(params, query, key, value, mask)
        eps = pc.margin(h.out_dtype)
        if self.aggregation == "einstein" and not self.learn_curvature and k < 0:
            # the ball at a fixed curvature: tiled over queries, two GEMMs a tile, O(Lk) memory a query
            return h.finish(pc.einstein_attention(h.q, h.k, h.v, -float(k), self.temperature, h.mask, eps, h.xp))
        w = self._weights(h, k)
        out = st.project(st.midpoint_aggregate(w, h.v, k, h.xp), k, eps, h.xp)
        if self.aggregation == "frechet":
            tol = self.frechet_tol if self.frechet_tol is not None else pc.default_tol(out.dtype)
            out = st.frechet_aggregate(w, h.v, k, h.xp, iters=self.frechet_iters, tol=tol, init=out, eps=eps)
        return h.finish(out)

    def _attention_weights(self, params: Mapping[str, Array], query: Any, key: Any, *, mask: Any = None) -> Array:
        """The attention probabilities ``softmax(-d_c(q, k)/T)``: ``(..., Lq, Lk)`` (``(Lk,)`` for one query)."""
        h, k = self._prepare(params, query, key, None, mask)
        return h.finish(self._weights(h, k))

    def _checked(self, *arrays: tuple[str, Any]) -> tuple[Namespace, list[Array]]:
        """Float arrays of one library and dtype, finite (the flat and spherical cases, which have no ball to check)."""
        xp = namespace(*(a for _, a in arrays))
        out = []
        for n, a in arrays:
            arr = as_float_array(a, n, xp)
            if arr.ndim < 1:
                raise ShapeError(f"{n}: expected a vector or an array of vectors (..., D), got a scalar of shape ()")
            check_finite(arr, n, xp)
            out.append(arr)
        dt = xp.result_type(*out)
        return xp, [xp.astype(a, dt) if a.dtype != dt else a for a in out]

    def poincare_distance(self, x: Any, y: Any) -> Array:
        """``d_κ(x, y)`` at this layer's curvature (the spec's ``poincareDistance``), shape ``(...,)``."""
        self._check_alive()
        if self.kappa < 0:
            return pc.poincare_distance(x, y, c=-self.kappa)
        xp, (xa, ya) = self._checked(("x", x), ("y", y))
        return st.dist(xa, ya, self.kappa, xp)[..., 0]

    def to_poincare(self, u: Any) -> Array:
        """``exp_0(u)`` at this layer's curvature (the spec's ``toPoincare``)."""
        self._check_alive()
        if self.kappa < 0:
            return pc.to_poincare(u, c=-self.kappa)
        xp, (ua,) = self._checked(("u", u))
        return st.expmap0(ua, self.kappa, xp)

    def from_poincare(self, x: Any) -> Array:
        """``log_0(x)`` at this layer's curvature (the spec's ``fromPoincare``)."""
        self._check_alive()
        if self.kappa < 0:
            return pc.from_poincare(x, c=-self.kappa)
        xp, (xa,) = self._checked(("x", x))
        return st.logmap0(xa, self.kappa, xp)

    def _export_blocker(self) -> str | None:
        if self.aggregation == "frechet" and (self.frechet_tol is None or self.frechet_tol > 0):
            return (
                "aggregation='frechet' stops iterating once a step is shorter than frechet_tol, an iteration count that "
                "depends on the data; build it with frechet_tol=0 to run exactly frechet_iters steps (e.g. frechet_iters=20), "
                "which exports"
            )
        return None

    def example_inputs(self, seq_len: int = 8, rng: np.random.Generator | None = None) -> tuple[np.ndarray, ...]:
        """``seq_len`` queries, keys and values (float32), inside the ball (or tangent vectors)."""
        rng = rng or np.random.default_rng()
        seq_len = positive_int(seq_len, "seq_len")
        scale = 1.0 / math.sqrt(self.dim)
        out = []
        for _ in range(3):
            u = rng.standard_normal((seq_len, self.dim)) * scale
            x = u if self.input_space == "tangent" else self.to_poincare(u)
            out.append(np.asarray(x, dtype=np.float32))
        return tuple(out)
