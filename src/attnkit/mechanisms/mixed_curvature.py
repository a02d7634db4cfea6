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

import numpy as np

from .._array import (
    Array,
    Namespace,
    as_float_array,
    check_finite,
    finite_float,
    namespace,
    non_negative_float,
    non_negative_int,
    nonzero_float,
    one_of,
    positive_float,
    positive_int,
    shape_str,
)
from ..errors import ConfigError, ShapeError
from ..kernels import poincare as pc
from ..kernels import stereographic as st
from ..kernels.dense import sdpa
from ..kernels.softmax import SMALL_TEMPERATURE, distance_logits, safe_softmax
from ._headless import prepare_headless
from .base import Mechanism
from .registry import register

__all__ = ["MixedCurvatureAttention", "DualSpaceAttention"]


def _safe_sqrt(x: Array, xp: Namespace) -> Array:
    """``sqrt(x)`` for ``x >= 0``, exactly 0 at 0 with a zero (not NaN) gradient there."""
    pos = x > 0
    return xp.where(pos, xp.sqrt(xp.where(pos, x, xp.ones_like(x))), xp.zeros_like(x))


def _parse_factors(factors: Any, dim: int) -> list[tuple[int, float]]:
    """``factors`` as a list of ``(width, κ)``: a sequence of pairs, or a string ``"w:κ,w:κ,..."``."""
    if isinstance(factors, str):
        try:
            pairs = [tuple(part.split(":")) for part in factors.replace(" ", "").split(",") if part]
            items = [(int(a), float(b)) for a, b in pairs]
        except ValueError:
            raise ConfigError(f"factors: expected 'width:kappa,width:kappa,...' (e.g. '8:0,8:-1,8:1'), got {factors!r}") from None
    else:
        try:
            items = [(w, k) for w, k in factors]
        except (TypeError, ValueError):
            raise ConfigError(f"factors: expected a sequence of (width, kappa) pairs, got {factors!r}") from None
    out = [(positive_int(w, "factors (width)"), finite_float(k, "factors (kappa)")) for w, k in items]
    if not out or sum(w for w, _ in out) != dim:
        raise ConfigError(f"factors: the widths must be at least one and add up to dim = {dim}, got {factors!r}")
    return out


@register
class MixedCurvatureAttention(Mechanism):
    """Distance attention in a product of constant-curvature spaces (see the module docstring).

    Options: ``dim`` total width (64); ``factors``: the product ``[(width, κ), ...]`` (or the string
    ``"w:κ,w:κ"``), widths adding up to ``dim``, each κ signed (κ < 0 a Poincaré ball, 0 Euclidean, κ > 0 a
    projected sphere); ``factor_weights`` (one per factor, >= 0, not all 0; default 1 each). Without
    ``factors`` the layer is ``E^{d_E} x B_c^{d_H}`` from the earlier options: ``euclidean_dim`` ``d_E``
    (default ``dim // 2``; ``0`` pure hyperbolic, ``dim`` pure Euclidean), ``curvature`` ``c`` of the
    hyperbolic factor (the ball parameter: ``c`` and ``-c`` both mean κ = ``-|c|``; 0 makes it flat),
    ``euclidean_weight`` ``w_E`` and ``hyperbolic_weight`` ``w_H`` (1.0 each, >= 0, not both 0). Also
    ``temperature`` ``T`` (1.0); ``aggregation`` ``"einstein"`` (gyromidpoint) or ``"frechet"`` in the curved
    factors; ``input_space``: ``"ball"`` (points of the factors, ball points checked) or ``"tangent"``
    (tangent vectors at the origin, mapped in by ``exp_0`` and the output mapped back by ``log_0``);
    ``check_finite``. Values are points of the same space (width ``dim``); the output too.
    ``frechet_tol``: the Fréchet iteration stops once a step is shorter (default 100 eps of the dtype);
    ``0`` runs exactly ``frechet_iters`` steps, the form that exports to ONNX.

    ``learn_curvature`` (False) makes the curved factors' κ parameters: ``param_shapes()`` gains
    ``curvature_raw (n,)``, one unconstrained number per curved factor, mapped by
    :func:`~attnkit.kernels.stereographic.curvature_from_raw` into ``(-R, 0)`` for a hyperbolic factor and
    ``(0, R)`` for a spherical one (``R = 4 max(1, |κ|)``): each factor keeps its kind, as the fixed
    signature of Gu et al. 2019, and flat factors stay flat. Ball inputs are then projected onto the
    current balls instead of checked.
    """

    name = "mixed_curvature"
    summary = "attention in a product of Euclidean, hyperbolic and spherical factors (product-metric distance weights)"
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
        factors: str | None = None,
        factor_weights: str | None = None,
        learn_curvature: bool = False,
        frechet_tol: float | None = None,
    ) -> None:
        super().__init__()
        self.dim = positive_int(dim, "dim")
        self.curvature = finite_float(curvature, "curvature")
        self.temperature = positive_float(temperature, "temperature")
        self.euclidean_weight = finite_float(euclidean_weight, "euclidean_weight")
        self.hyperbolic_weight = finite_float(hyperbolic_weight, "hyperbolic_weight")
        if self.euclidean_weight < 0 or self.hyperbolic_weight < 0:
            raise ConfigError(f"euclidean_weight, hyperbolic_weight: expected numbers >= 0, got {euclidean_weight!r}, {hyperbolic_weight!r}")
        if self.euclidean_weight == 0 and self.hyperbolic_weight == 0:
            raise ConfigError("euclidean_weight, hyperbolic_weight: at least one must be > 0, got both 0")
        self.aggregation = one_of(aggregation, "aggregation", ("einstein", "frechet"))
        self.input_space = one_of(input_space, "input_space", ("ball", "tangent"))
        self.frechet_iters = positive_int(frechet_iters, "frechet_iters")
        # None: stop once a step is shorter than 100 eps of the dtype; 0: exactly frechet_iters steps (exports)
        self.frechet_tol = None if frechet_tol is None else non_negative_float(frechet_tol, "frechet_tol")
        self.check_finite = bool(check_finite)
        if factors is None:
            de = self.dim // 2 if euclidean_dim is None else non_negative_int(euclidean_dim, "euclidean_dim")
            if de > self.dim:
                raise ConfigError(f"euclidean_dim: expected at most dim = {self.dim}, got {euclidean_dim!r}")
            # d_0 = 2|x - y| in the κ-stereographic model, so w_E |x_E - y_E|^2 is the weight w_E / 4
            legacy = [(de, 0.0, self.euclidean_weight / 4.0), (self.dim - de, -abs(self.curvature), self.hyperbolic_weight)]
            self.factors = [(w, k) for w, k, _ in legacy if w]
            weights = [fw for w, _, fw in legacy if w]
            if factor_weights is not None:
                raise ConfigError("factor_weights: given without factors; use euclidean_weight/hyperbolic_weight, or give factors")
        else:
            self.factors = _parse_factors(factors, self.dim)
            de = sum(w for w, k in self.factors if k == 0.0)
            if factor_weights is None:
                weights = [1.0] * len(self.factors)
            else:
                raw = factor_weights.split(",") if isinstance(factor_weights, str) else list(factor_weights)
                try:
                    weights = [finite_float(float(v) if isinstance(v, str) else v, "factor_weights") for v in raw]
                except ValueError as exc:
                    raise ConfigError(f"factor_weights: expected numbers separated by commas, got {factor_weights!r}") from exc
                if len(weights) != len(self.factors) or min(weights) < 0 or max(weights) == 0:
                    raise ConfigError(
                        f"factor_weights: expected {len(self.factors)} numbers >= 0 (one per factor), not all 0, got {factor_weights!r}"
                    )
        self.euclidean_dim = de
        self.factor_weights = weights
        self.learn_curvature = bool(learn_curvature)
        # a learnable curved factor keeps its sign (Gu et al. 2019 learn curvatures of a fixed signature):
        # κ < 0 in (-R, 0), κ > 0 in (0, R), R = 4 max(1, |κ|); flat factors stay flat
        self._ranges = [(-4.0 * max(1.0, -k), 0.0) if k < 0 else (0.0, 4.0 * max(1.0, k)) for _, k in self.factors if k != 0.0]
        if self.learn_curvature:
            if not self._ranges:
                raise ConfigError("learn_curvature: this product has no curved factor (every κ is 0) to learn")
            curved = [k for _, k in self.factors if k != 0.0]
            raws = [st.raw_from_curvature(k, lo, hi) for k, (lo, hi) in zip(curved, self._ranges, strict=True)]
            self._params = {"curvature_raw": np.asarray(raws, dtype=np.float64)}

    def curvatures(self) -> list[float]:
        """Each factor's κ (the learned values with ``learn_curvature``)."""
        if not self.learn_curvature:
            return [k for _, k in self.factors]
        raw = np.asarray(self._params["curvature_raw"], dtype=np.float64)
        return [float(np.asarray(k).reshape(-1)[0]) for k in self._factor_kappas(raw, np)]

    def _factor_kappas(self, raw: Any, xp: Namespace) -> list[Any]:
        """κ of every factor: numbers, or (``learn_curvature``) arrays ``(1,)`` mapped from ``raw``."""
        out, i = [], 0
        for _, k in self.factors:
            if k == 0.0 or not self.learn_curvature:
                out.append(k)
                continue
            lo, hi = self._ranges[i]
            out.append(st.curvature_from_raw(raw[i : i + 1], lo, hi, xp))
            i += 1
        return out

    def _kappas_for(self, params: Mapping[str, Array], like: Array, xp: Namespace) -> list[Any]:
        if not self.learn_curvature:
            return [st.effective_curvature(k) for _, k in self.factors]  # |κ| < 1e-30: the flat limit
        return self._factor_kappas(self._params_like(params, like)["curvature_raw"], xp)

    @property
    def c(self) -> float:
        """The ball parameter ``|curvature|`` of the legacy hyperbolic factor."""
        return abs(self.curvature)

    @property
    def hyperbolic_dim(self) -> int:
        return self.dim - self.euclidean_dim

    def _split(self, x: Array, name: str, xp: Namespace, given: bool, kappas: list[Any]) -> list[Array]:
        """The factors' coordinates of ``x``, mapped in from the tangent space (``input_space="tangent"``)
        and, for the balls, checked to lie inside (projected onto them when κ is learned)."""
        parts, start = [], 0
        for (width, _), k in zip(self.factors, kappas, strict=True):
            part = x[..., start : start + width]
            if self.input_space == "tangent":
                part = st.project(st.expmap0(part, k, xp), k, pc.margin(part.dtype), xp)
            elif self.learn_curvature:
                part = st.project(part, k, pc.margin(part.dtype), xp)
            elif given and k < 0:
                pc.check_in_ball(part, f"{name} (factor of curvature {k:g}, coordinates {start}..{start + width - 1})", -k, xp)
            parts.append(part)
            start += width
        return parts

    def _distances(self, qs: list[Array], ks: list[Array], kappas: list[Any], xp: Namespace) -> Array:
        sq = None
        for k, fw, qf, kf in zip(kappas, self.factor_weights, qs, ks, strict=True):
            if fw:
                if isinstance(k, float) and k < 0:  # a fixed ball: one GEMM of width D + 2 (float64 for float32)
                    d = pc.pairwise_dist_kernel(qf, kf, -k, xp)
                    d2 = d * d
                elif isinstance(k, float) and k == 0:  # flat: d = 2|x - y| (the stereographic metric at κ = 0)
                    d2 = 4.0 * pc.pairwise_sqdist_gemm(qf, kf, xp)
                else:
                    d = st.pairwise_dist(qf, kf, k, xp)
                    d2 = d * d
                sq = fw * d2 if sq is None else sq + fw * d2
        if sq is None:  # unreachable: some weight is > 0
            raise ConfigError("factor_weights: every factor has weight 0")
        return _safe_sqrt(sq, xp)

    def _inputs(self, params: Mapping[str, Array], q: Any, keys: Any, values: Any, mask: Any) -> tuple:
        """The validated inputs, each factor's coordinates of the queries, keys and values, and the κ."""
        h = prepare_headless(q, keys, values, mask, dim=self.dim, check=self.check_finite, values_width=self.dim, compute=pc.geometry_dtype)
        xp = h.xp
        kappas = self._kappas_for(params, h.q, xp)
        qs = self._split(h.q, "query", xp, True, kappas)
        ks = self._split(h.k, "key", xp, keys is not None, kappas)
        vs = self._split(h.v, "value", xp, values is not None, kappas)
        return h, qs, ks, vs, kappas

    def _weights(self, params: Mapping[str, Array], q: Any, keys: Any, values: Any, mask: Any) -> tuple:
        h, qs, ks, vs, kappas = self._inputs(params, q, keys, values, mask)
        logits = distance_logits(self._distances(qs, ks, kappas, h.xp), self.temperature, h.mask, h.xp)
        return h, safe_softmax(logits, h.xp, axis=-1), vs, kappas

    def _fast_aggregates(self, h: Any, qs: list[Array], ks: list[Array], vs: list[Array], kappas: list[Any]) -> list[Array] | None:
        """Each factor's aggregate from the tiled NumPy float32 path (:mod:`attnkit.kernels.product_numpy`),
        or ``None`` where it does not apply (learned or spherical curvatures, Fréchet means, tiny temperatures,
        other libraries and dtypes): the same formulas as the generic path, in ``O(rows * Lk)`` memory."""
        if self.learn_curvature or self.aggregation != "einstein" or self.temperature < SMALL_TEMPERATURE:
            return None
        if not all(isinstance(k, float) and k <= 0.0 for k in kappas):
            return None
        from ..kernels.product_numpy import product_attention_numpy

        factors = [(-k, float(fw)) for k, fw in zip(kappas, self.factor_weights, strict=True)]
        return product_attention_numpy(qs, ks, vs, factors, self.temperature, h.mask, pc.margin(h.out_dtype))

    def _forward(self, params: Mapping[str, Array], query: Any, key: Any, value: Any, *, mask: Any = None) -> Array:
        """Output points ``(..., Lq, dim)`` (``(dim,)`` for a single query)."""
        h, qs, ks, vs, kappas = self._inputs(params, query, key, value, mask)
        xp = h.xp
        eps = pc.margin(h.out_dtype)
        fast = self._fast_aggregates(h, qs, ks, vs, kappas)
        if fast is None:
            logits = distance_logits(self._distances(qs, ks, kappas, xp), self.temperature, h.mask, xp)
            w = safe_softmax(logits, xp, axis=-1)
        parts = []
        for i, ((_, k0), k, vf) in enumerate(zip(self.factors, kappas, vs, strict=True)):
            if k0 == 0.0:
                parts.append(w @ vf if fast is None else fast[i])  # the gyromidpoint at κ = 0 (rows of w sum to 1, or are 0)
                continue
            o = st.project(st.midpoint_aggregate(w, vf, k, xp) if fast is None else fast[i], k, eps, xp)
            if self.aggregation == "frechet":
                o = st.frechet_aggregate(w, vf, k, xp, iters=self.frechet_iters, tol=self._frechet_tol(o.dtype), init=o, eps=eps)
            if self.input_space == "tangent":
                o = st.logmap0(o, k, xp)
            parts.append(o)
        return h.finish(parts[0] if len(parts) == 1 else xp.concat(parts, axis=-1))

    def _attention_weights(self, params: Mapping[str, Array], query: Any, key: Any, *, mask: Any = None) -> Array:
        """``softmax(-d(q, k)/T)``: ``(..., Lq, Lk)`` (``(Lk,)`` for a single query)."""
        h, w, _, _ = self._weights(params, query, key, None, mask)
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
        kappas = self._kappas_for(self._params, xa, xp)
        return self._distances(self._split(xa, "x", xp, True, kappas), self._split(ya, "y", xp, True, kappas), kappas, xp)[..., 0, 0]

    def _frechet_tol(self, dtype: Any) -> float:
        return pc.default_tol(dtype) if self.frechet_tol is None else self.frechet_tol

    def _export_blocker(self) -> str | None:
        if self.aggregation == "frechet" and (self.frechet_tol is None or self.frechet_tol > 0):
            return (
                "aggregation='frechet' stops iterating once a step is shorter than frechet_tol, an iteration count that "
                "depends on the data; build it with frechet_tol=0 to run exactly frechet_iters steps, which exports"
            )
        return None

    def example_inputs(self, seq_len: int = 8, rng: np.random.Generator | None = None) -> tuple[np.ndarray, ...]:
        """``seq_len`` product points (float32): Gaussian flat parts, ball/sphere (or tangent) curved parts."""
        rng = rng or np.random.default_rng()
        seq_len = positive_int(seq_len, "seq_len")
        out = []
        for _ in range(3):
            u = rng.standard_normal((seq_len, self.dim)) / math.sqrt(self.dim)
            if self.input_space == "ball":
                start = 0
                for width, k in self.factors:
                    if k != 0.0:
                        u[:, start : start + width] = st.project(st.expmap0(u[:, start : start + width], k), k)
                    start += width
            out.append(u.astype(np.float32))
        return tuple(out)


@register
class DualSpaceAttention(Mechanism):
    """Euclidean and hyperbolic attention on the same inputs, mixed (see the module docstring).

    Options: ``dim`` query/key width (64); ``curvature`` (1.0; negative = the same ball);
    ``temperature`` ``T`` of the hyperbolic branch (1.0); ``mix`` in ``[0, 1]`` (0.5): the hyperbolic
    branch's share; ``scale`` of the Euclidean branch (``1/sqrt(dim)``); ``aggregation`` of the
    hyperbolic branch (``"einstein"``/``"frechet"``; ``frechet_tol=0``: exactly 100 steps, which exports to
    ONNX); ``check_finite``. Inputs are Euclidean vectors.
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
        frechet_tol: float | None = None,
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
        self.frechet_tol = None if frechet_tol is None else non_negative_float(frechet_tol, "frechet_tol")
        self._hyp = HyperbolicAttention(
            self.dim,
            curvature=self.curvature,
            temperature=self.temperature,
            aggregation=self.aggregation,
            input_space="tangent",
            check_finite=False,
            frechet_tol=self.frechet_tol,
        )

    def _export_blocker(self) -> str | None:
        return self._hyp._export_blocker()

    @property
    def effective_scale(self) -> float:
        return self.scale if self.scale is not None else 1.0 / math.sqrt(self.dim)

    def _forward(self, params: Mapping[str, Array], query: Any, key: Any, value: Any, *, mask: Any = None) -> Array:
        """Output ``(..., Lq, Dv)`` (``(Dv,)`` for a single query): the mixed Euclidean and hyperbolic results."""
        h = prepare_headless(query, key, value, mask, dim=self.dim, check=self.check_finite, compute=pc.geometry_dtype)
        xp, qa, ka, va, m = h.xp, h.q, h.k, h.v, h.mask
        parts = []
        if self.mix < 1.0:  # the dense kernel (NumPy's fast path, torch's fused SDPA), one head
            e = sdpa(
                xp.expand_dims(qa, axis=-3),
                xp.expand_dims(ka, axis=-3),
                xp.expand_dims(va, axis=-3),
                xp=xp,
                scale=self.effective_scale,
                mask=None if m is None else xp.expand_dims(m, axis=-3),
            )
            parts.append((1.0 - self.mix) * e[..., 0, :, :])
        if self.mix > 0.0:
            hyp = self._hyp.forward(qa, ka, va, mask=m)
            parts.append(self.mix * self._hyp.from_poincare(hyp))
        return h.finish(parts[0] if len(parts) == 1 else parts[0] + parts[1])

    def dispose(self) -> None:
        self._hyp.dispose()
        super().dispose()

    def example_inputs(self, seq_len: int = 8, rng: np.random.Generator | None = None) -> tuple[np.ndarray, ...]:
        rng = rng or np.random.default_rng()
        seq_len = positive_int(seq_len, "seq_len")
        scale = np.float32(1.0 / math.sqrt(self.dim))
        return tuple(rng.standard_normal((seq_len, self.dim), dtype=np.float32) * scale for _ in range(3))
