r"""Poincaré ball primitives, generic over the Python array API.

The Poincaré ball of curvature ``-c`` (``c > 0``) is the open ball
``B_c = {x in R^D : c |x|^2 < 1}`` of radius ``1/sqrt(c)`` with the metric ``lambda_x^2 g_E``, where

    lambda_x = 2 / (1 - c |x|^2)                                   (conformal factor)

Every function here takes arrays of any array-API library (NumPy, torch, JAX, CuPy, ...), computes in
that library's namespace, broadcasts over the leading dimensions and treats the **last axis as the
vector**. The curvature is the keyword ``c``: ``c > 0`` is the ball of sectional curvature ``-c``; a
negative value, as the spec's bindings give it (``curvature = -1``), means the same ball, so ``|c|`` is
used; ``c == 0`` is the flat limit (κ = 0) and a non-finite value raises :class:`~attnkit.errors.ConfigError`.

Formulas (Ganea, Bécigneul & Hofmann 2018, "Hyperbolic Neural Networks"; Ungar 2008, "Analytic
Hyperbolic Geometry and Albert Einstein's Special Theory of Relativity" for Möbius gyrovector spaces):

* Möbius addition
  ``x (+) y = ((1 + 2c<x,y> + c|y|^2) x + (1 - c|x|^2) y) / (1 + 2c<x,y> + c^2 |x|^2 |y|^2)``.
  It is evaluated in the algebraically identical, cancellation-free form
  ``((1 - c|x|^2) s + c|s|^2 x) / (c|s|^2 + (1 - c|x|^2)(1 - c|y|^2))`` with ``s = x + y``
  (expand ``|s|^2``): every term of the denominator is non-negative inside the ball, and ``x (+) y``
  for ``y`` close to ``-x`` is computed from the small ``s`` directly instead of by cancellation.
* exponential map ``exp_x(u) = x (+) (tanh(sqrt(c) lambda_x |u| / 2) u / (sqrt(c) |u|))``
* logarithmic map ``log_x(y) = 2 / (sqrt(c) lambda_x) artanh(sqrt(c) |(-x) (+) y|) w / |w|``,
  ``w = (-x) (+) y``; the two are inverse to each other at the same base point.
* distance ``d_c(x, y) = 2/sqrt(c) artanh(sqrt(c) |(-x) (+) y|)``, evaluated as the identical
  ``1/sqrt(c) arcosh(1 + 2c|x - y|^2 / ((1 - c|x|^2)(1 - c|y|^2)))`` (from
  ``|(-x) (+) y|^2 = |x - y|^2 / (1 - 2c<x,y> + c^2|x|^2|y|^2)``), which is exactly zero on the
  diagonal and needs no clamping of an artanh argument near the boundary.
* origin maps ``to_poincare(u) = exp_0(u) = tanh(sqrt(c)|u|) u / (sqrt(c)|u|)`` and
  ``from_poincare(x) = log_0(x) = artanh(sqrt(c)|x|) x / (sqrt(c)|x|)``.
* Klein model ``k = 2x / (1 + c|x|^2)``, back ``x = k / (1 + sqrt(1 - c|k|^2))``.
* Einstein midpoint (Gulcehre et al. 2019, "Hyperbolic Attention Networks"; Ungar 2008): in the Klein
  model ``m_K = sum_i w_i gamma_i k_i / sum_i w_i gamma_i`` with Lorentz factors
  ``gamma_i = 1/sqrt(1 - c|k_i|^2)``, mapped back to the ball.
* weighted Fréchet (Karcher) mean: the minimiser of ``sum_i w_i d_c(mu, x_i)^2``, by the Riemannian
  gradient iteration ``mu <- exp_mu(t sum_i w_i log_mu(x_i))``.

Results that are points (Möbius addition, ``exp_map``, ``to_poincare``, midpoints) are projected into
the ball with a dtype-aware margin (:func:`project`), as geoopt does; inputs that are points must lie
strictly inside the ball (``c |x|^2 < 1``, checked in the compute dtype) or an
:class:`~attnkit.errors.AttentionError` names the argument. NaN or infinity in an input raises
:class:`~attnkit.errors.NonFiniteError`. Nothing returns NaN at the origin or near the boundary.

The formulas themselves live once, in :mod:`attnkit.kernels.stereographic` (the κ-stereographic model,
which at ``κ = -c`` is this ball, evaluated in the same cancellation-free forms); this module is the
validated Poincaré-ball face of it with the spec's sign convention (``c`` and ``-c`` both mean the ball
of curvature ``-|c|``), plus the ball-only Klein model and Fréchet mean.

Half precision (float16, bfloat16) is computed in float32 and cast back: hyperbolic geometry near the
boundary is hopeless in 11 bits of mantissa.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import array_api_compat
import numpy as np

from .._array import Array, Namespace, as_float_array, check_finite, finite_float, is_traced, namespace, positive_int, shape_str
from .._array import broadcast_shapes as _bshapes
from .._threads import small_gemms
from ..errors import AttentionError, ConfigError, ShapeError
from . import stereographic as st
from .masks import mask_tile
from .softmax import SMALL_TEMPERATURE, distance_logits, safe_softmax

__all__ = [
    "curvature_value",
    "margin",
    "lambda_x",
    "mobius_add",
    "mobius_scalar_mul",
    "exp_map",
    "log_map",
    "poincare_distance",
    "pairwise_distance",
    "project",
    "to_poincare",
    "from_poincare",
    "poincare_to_klein",
    "klein_to_poincare",
    "einstein_midpoint",
    "frechet_mean",
    "einstein_attention",
]

#: distance of projected points from the boundary, relative to the radius ``1/sqrt(c)``, by dtype.
#: float32/float64 follow geoopt (4e-3 / 1e-5): below about 4e-3, ``1 - c|x|^2`` loses more than
#: about 1e-5 of its relative accuracy in float32. Half precision only stores, never computes.
_MARGINS = {"float64": 1e-5, "float32": 4e-3, "float16": 1e-2, "bfloat16": 4e-2}

#: smallest norm used as a divisor (norms are computed as sqrt(max(|x|^2, _MIN_NORM^2)), so the
#: gradient at the origin is zero instead of NaN)
_MIN_NORM = 1e-15
_MIN_SQ = _MIN_NORM * _MIN_NORM


# --------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------
def curvature_value(c: object, name: str = "c") -> float:
    """The ball parameter ``|c|`` from a curvature as given (positive, or negative as in the spec).

    ``c == 0`` is the flat limit (κ = 0 of :mod:`~attnkit.kernels.stereographic`: Möbius addition is
    ``+``, the distance ``2|x - y|``, the ball all of ``R^D``). Non-numbers and non-finite values raise
    :class:`~attnkit.errors.ConfigError` naming ``name``.
    """
    return abs(finite_float(c, name))


def _dtype_name(dtype: Any) -> str:
    """The bare name of a dtype of any library: ``float32`` for ``numpy.float32``, ``torch.float32``,
    ``<class 'jax.numpy.float32'>`` or ``array_api_strict.float32``."""
    text = str(dtype).replace("<class ", "").strip("<>' ")
    return text.rsplit(".", 1)[-1]


def margin(dtype: Any) -> float:
    """The default projection margin for ``dtype`` (relative to the radius ``1/sqrt(c)``)."""
    return _MARGINS.get(_dtype_name(dtype), 1e-5)


def _margin_value(eps: object, dtype: Any) -> float:
    if eps is None:
        return margin(dtype)
    e = finite_float(eps, "eps")
    if not 0.0 < e < 1.0:
        raise ConfigError(f"eps: expected a margin in (0, 1) (a fraction of the radius 1/sqrt(c)), got {eps!r}")
    return e


def geometry_dtype(xp: Namespace, dtype: Any) -> Any:
    """The dtype the geometry is computed in: float32 for half precision (any library), else ``dtype``."""
    if _dtype_name(dtype) in ("float16", "bfloat16"):
        return xp.float32
    return dtype


class _Prepared:
    """Validated inputs of one public call: arrays in the compute dtype, and how to give results back."""

    def __init__(self, xp: Namespace, arrays: list[Array], out_dtype: Any, cdtype: Any) -> None:
        self.xp = xp
        self.arrays = arrays
        self.out_dtype = out_dtype
        self.cdtype = cdtype

    def finish(self, out: Array) -> Array:
        return out if out.dtype == self.out_dtype else self.xp.astype(out, self.out_dtype)


def _prepare(
    named: Sequence[tuple[str, object]],
    *,
    c: float,
    points: Sequence[str] = (),
    check: bool = True,
    same_dim: bool = True,
) -> _Prepared:
    """Validate vector arguments ``(name, value)``: float dtype, at least one axis, matching vector
    width, broadcastable leading dimensions, finite values and (for ``points``) inside the ball."""
    xp = namespace(*(v for _, v in named))
    arrays = []
    # the device of the first real array: Python sequences given beside it are put there
    device = next((array_api_compat.device(v) for _, v in named if array_api_compat.is_array_api_obj(v)), None)
    for name, value in named:
        # (Python sequences become NumPy first: as_float_array checks them with NumPy, not with xp)
        a = as_float_array(value, name, xp if array_api_compat.is_array_api_obj(value) else None)
        if isinstance(a, np.ndarray) and not array_api_compat.is_numpy_namespace(xp):
            a = xp.asarray(a, device=device)
        if a.ndim < 1:
            raise ShapeError(f"{name}: expected a vector or an array of vectors (..., D), got a scalar of shape ()")
        if a.shape[-1] is not None and a.shape[-1] < 1:
            raise ShapeError(f"{name}: expected vectors of width D >= 1 along the last axis, got shape {shape_str(a.shape)}")
        arrays.append(a)
    if same_dim:
        first = named[0][0]
        for (name, _), a in zip(named[1:], arrays[1:], strict=True):
            if None not in (a.shape[-1], arrays[0].shape[-1]) and a.shape[-1] != arrays[0].shape[-1]:
                raise ShapeError(
                    f"{name}: expected vectors of width D = {arrays[0].shape[-1]} (as {first}) along the last axis, "
                    f"got {a.shape[-1]} (shape {shape_str(a.shape)})"
                )
        try:
            _bshapes(*(tuple(a.shape) for a in arrays))
        except ValueError:
            shapes = ", ".join(f"{n} {shape_str(a.shape)}" for (n, _), a in zip(named, arrays, strict=True))
            raise ShapeError(f"{', '.join(n for n, _ in named)}: shapes do not broadcast ({shapes})") from None
    if check:
        for (name, _), a in zip(named, arrays, strict=True):
            check_finite(a, name, xp)
    out_dtype = arrays[0].dtype if len(arrays) == 1 else xp.result_type(*arrays)
    cdtype = geometry_dtype(xp, out_dtype)
    arrays = [a if a.dtype == cdtype else xp.astype(a, cdtype) for a in arrays]
    for (name, _), a in zip(named, arrays, strict=True):
        if name in points:
            check_in_ball(a, name, c, xp)
    return _Prepared(xp, arrays, out_dtype, cdtype)


def check_in_ball(x: Array, name: str, c: float, xp: Namespace) -> None:
    """Raise :class:`~attnkit.errors.AttentionError` naming ``name`` unless every vector of ``x``
    satisfies ``c |x|^2 < 1`` (strictly inside the ball of radius ``1/sqrt(c)``); NaN fails too.

    Skipped for traced values (:func:`attnkit._array.is_traced`: ``jax.jit``, ``torch.compile``, and
    constants whose reductions are traced there), whose contents are unknown while Python runs; the
    kernels stay finite for such points anyway, since every ``1 - c|x|^2`` they divide by is floored
    at a positive number (:func:`_one_minus`, and the stereographic kernels' clips).
    """
    if c <= 0 or is_traced(x) or math.prod(x.shape) == 0:
        return
    sq = c * _sqnorm(x, xp)
    inside = xp.all(sq < 1.0)
    if is_traced(inside):  # a constant inside a traced function
        return
    if not bool(inside):
        inf = xp.asarray(math.inf, dtype=sq.dtype, device=array_api_compat.device(sq))
        worst = float(xp.max(xp.where(xp.isnan(sq), inf, sq)))
        radius = 1.0 / math.sqrt(c)
        norm = math.sqrt(worst / c) if math.isfinite(worst) else worst
        raise AttentionError(
            f"{name}: expected points strictly inside the Poincaré ball of radius 1/sqrt(c) = {radius:.6g} "
            f"(c*|x|^2 < 1), got a point of norm {norm:.6g}; use project() or input_space='tangent'"
        )


# --------------------------------------------------------------------------------------------------
# kernels on validated arrays (compute dtype, c > 0 as a float)
# --------------------------------------------------------------------------------------------------
def _sqnorm(x: Array, xp: Namespace, keepdims: bool = True) -> Array:
    return xp.sum(x * x, axis=-1, keepdims=keepdims)


def _one_minus(sq: Array, c: float, xp: Namespace) -> Array:
    """``1 - c|x|^2`` from ``|x|^2``, at least the dtype's ``eps``.

    Checked inputs are inside the ball, where the floor only touches points within rounding of the
    boundary; for a traced input (unchecked, :func:`check_in_ball`) outside the ball it keeps every
    conformal factor, quotient and ``arcosh`` argument finite (``1/eps^2`` does not overflow).
    """
    return xp.clip(1.0 - c * sq, min=float(xp.finfo(sq.dtype).eps))


def _project(x: Array, c: float, eps: float, xp: Namespace) -> Array:
    return st.project(x, -c, eps, xp)


def _mobius_add(x: Array, y: Array, c: float, xp: Namespace) -> Array:
    """``x (+) y`` in the cancellation-free form (module docstring): the κ-stereographic kernel at κ = -c."""
    return st.mobius_add(x, y, -c, xp)


def _dist(x: Array, y: Array, c: float, xp: Namespace) -> Array:
    """Elementwise (broadcast) distance, shape ``(...,)``."""
    return st.dist(x, y, -c, xp)[..., 0]


def _expmap(x: Array, u: Array, c: float, eps: float, xp: Namespace) -> Array:
    return _project(st.expmap(x, u, -c, xp), c, eps, xp)


def _logmap(x: Array, y: Array, c: float, xp: Namespace) -> Array:
    """``log_x(y) = 2/(sqrt(c) lambda_x) artanh(sqrt(c)|w|) w/|w|`` with ``w = (-x) (+) y``."""
    return st.logmap(x, y, -c, xp)


def expmap0_kernel(u: Array, c: float, eps: float, xp: Namespace) -> Array:
    return _project(st.expmap0(u, -c, xp), c, eps, xp)


def _logmap0(x: Array, c: float, xp: Namespace) -> Array:
    return st.logmap0(x, -c, xp)


def _mobius_scalar_mul(r: Any, x: Array, c: float, eps: float, xp: Namespace) -> Array:
    return _project(st.mobius_scalar_mul(r, x, -c, xp), c, eps, xp)


def _to_klein(x: Array, c: float, xp: Namespace) -> Array:
    return 2.0 * x / (1.0 + c * _sqnorm(x, xp))


def _from_klein(k: Array, c: float, eps: float, xp: Namespace) -> Array:
    root = xp.sqrt(xp.clip(1.0 - c * _sqnorm(k, xp), min=0.0))
    return _project(k / (1.0 + root), c, eps, xp)


#: ``|a_i - b_j|^2`` for ``a (..., M, D)``, ``b (..., N, D)`` -> ``(..., M, N)`` (see the stereographic module)
pairwise_sqdist = st.pairwise_sqdist


def _log1p(u: Array, xp: Namespace) -> Array:
    """``log(1 + u)`` for ``u >= 0``. NumPy's ``log1p`` is scalar code (about 10 ns a value against
    1.7 ns for its vectorised ``log`` on a 2-core EPYC), so NumPy arrays, which carry no autograd,
    take Goldberg's exact rewrite ``log(w) u / (w - 1)`` with ``w = 1 + u`` (``u`` where ``w == 1``);
    other libraries keep ``log1p`` (the rewrite's correction factor has a meaningless gradient)."""
    if not array_api_compat.is_numpy_namespace(xp):
        return xp.log1p(u)
    w = 1.0 + u
    wm1 = w - 1.0
    one = wm1 == 0.0
    return xp.where(one, u, xp.log(w) * (u / xp.where(one, xp.ones_like(wm1), wm1)))


def _arcosh1p(t: Array, xp: Namespace) -> Array:
    """``arcosh(1 + t) = log1p(t + sqrt(t (t + 2)))`` for ``t >= 0``, accurate for small ``t``;
    exactly 0 at ``t = 0``, with a zero gradient there (not the NaN of ``sqrt`` at 0)."""
    pos = t > 0.0
    ts = xp.where(pos, t, xp.ones_like(t))
    return xp.where(pos, _log1p(ts + xp.sqrt(ts * (ts + 2.0)), xp), xp.zeros_like(t))


def wide_dtype(xp: Namespace, dtype: Any) -> Any:
    """The dtype the Gram products of ``dtype`` points are accumulated in: float64 for float32 (when
    the namespace really holds float64: not JAX without x64, not Apple's MPS), else ``None`` (float64
    points, or no wider type: the distances are then taken from the differences themselves)."""
    if _dtype_name(dtype) != "float32" or not hasattr(xp, "float64"):
        return None
    try:
        with warnings.catch_warnings():  # JAX without x64 warns, then truncates to float32
            warnings.simplefilter("ignore")
            probe = xp.astype(xp.zeros((1,), dtype=dtype), xp.float64)
    except (TypeError, RuntimeError, ValueError):  # a device without float64
        return None
    return xp.float64 if probe.dtype == xp.float64 else None


def query_factor(a: Array, c: float, xp: Namespace, wide: Any) -> Array:
    """``[r a, r|a|^2, r]`` with ``r = 2c/(1 - c|a|^2)``, in ``wide``: the left factor of :func:`pairwise_arg`'s GEMM."""
    a = xp.astype(a, wide)
    aa = _sqnorm(a, xp)
    r = (2.0 * c) / _one_minus(aa, c, xp)
    return xp.concat([r * a, r * aa, r], axis=-1)


def key_factor(b: Array, c: float, xp: Namespace, wide: Any) -> Array:
    """``[-2 s b, s, s|b|^2]`` with ``s = 1/(1 - c|b|^2)``, in ``wide``: the right factor of :func:`pairwise_arg`'s GEMM."""
    b = xp.astype(b, wide)
    bb = _sqnorm(b, xp)
    s = 1.0 / _one_minus(bb, c, xp)
    return xp.concat([(-2.0 * s) * b, s, s * bb], axis=-1)


def pairwise_arg(a: Array, b: Array, c: float, xp: Namespace) -> Array:
    r"""``t_ij = 2c|a_i - b_j|^2 / ((1 - c|a_i|^2)(1 - c|b_j|^2)) >= 0`` for ``a (..., M, D)``,
    ``b (..., N, D)`` -> ``(..., M, N)``, in the dtype of ``a``; ``d_c(a_i, b_j) = arcosh(1 + t_ij)/sqrt(c)``.

    float32 (and half precision, computed in float32): with ``r_i = 2c/(1 - c|a_i|^2)`` and
    ``s_j = 1/(1 - c|b_j|^2)``, ``t_ij = r_i s_j (|a_i|^2 + |b_j|^2 - 2<a_i, b_j>)`` is one GEMM of width
    ``D + 2``: ``[r a, r|a|^2, r] @ [-2 s b, s, s|b|^2]^T`` (:func:`query_factor`, :func:`key_factor`).
    The expansion cancels where ``a_i`` is close to ``b_j``, so the GEMM runs in float64: its absolute
    error ``~ (D + 2) eps_64 r_i s_j (|a_i|^2 + |b_j|^2)`` puts the distance between equal points at
    about 1e-7 (3e-5 at float32's projection margin), where float32's own subtraction-based form
    loses more to ``1 - c|x|^2``. float64 points (or a namespace without float64, such as JAX without
    x64): from the differences (:func:`pairwise_sqdist`), exact on the diagonal.
    """
    wide = wide_dtype(xp, a.dtype)
    if wide is None:
        sq = pairwise_sqdist(a, b, xp)
        ba = _one_minus(_sqnorm(a, xp), c, xp)  # (..., M, 1)
        bb = xp.expand_dims(_one_minus(_sqnorm(b, xp, False), c, xp), axis=-2)  # (..., 1, N)
        return (2.0 * c) * sq / (ba * bb)
    fa, fb = query_factor(a, c, xp, wide), key_factor(b, c, xp, wide)
    return xp.clip(xp.astype(xp.matmul(fa, xp.matrix_transpose(fb)), a.dtype), min=0.0)


def pairwise_sqdist_gemm(a: Array, b: Array, xp: Namespace) -> Array:
    """``|a_i - b_j|^2`` ``(..., M, N)`` as one GEMM ``[a, |a|^2, 1] @ [-2b, 1, |b|^2]^T`` accumulated in
    float64 for float32 points (equal points then come out within ~1e-14 of 0, below float32's
    resolution); float64 points (or no float64 in the namespace) use :func:`pairwise_sqdist`."""
    wide = wide_dtype(xp, a.dtype)
    if wide is None:
        return pairwise_sqdist(a, b, xp)
    a64, b64 = xp.astype(a, wide), xp.astype(b, wide)
    aa, bb = _sqnorm(a64, xp), _sqnorm(b64, xp)
    fa = xp.concat([a64, aa, xp.ones_like(aa)], axis=-1)
    fb = xp.concat([-2.0 * b64, xp.ones_like(bb), bb], axis=-1)
    return xp.clip(xp.astype(xp.matmul(fa, xp.matrix_transpose(fb)), a.dtype), min=0.0)


def pairwise_dist_kernel(a: Array, b: Array, c: float, xp: Namespace) -> Array:
    """``d_c(a_i, b_j)`` for ``a (..., M, D)``, ``b (..., N, D)`` -> ``(..., M, N)``: for float32 points
    in the ball (``c > 0``) ``arcosh(1 + t)/sqrt(c)`` with ``t`` from one float64 GEMM
    (:func:`pairwise_arg`); otherwise the stereographic kernel's difference form."""
    if c > 0 and wide_dtype(xp, a.dtype) is not None:
        return _arcosh1p(pairwise_arg(a, b, c, xp), xp) / math.sqrt(c)
    return st.pairwise_dist(a, b, -c, xp)


def einstein_aggregate(w: Array, x: Array, c: float, eps: float, xp: Namespace) -> Array:
    """Einstein midpoints of the points ``x (..., N, D)`` under each row of weights ``w (..., M, N)``.

    With ``gamma_i k_i = lambda_{x_i} x_i`` and ``gamma_i = lambda_{x_i} - 1`` (Klein point
    ``k_i = 2 x_i / (1 + c|x_i|^2)``, Lorentz factor ``gamma_i = (1 + c|x_i|^2) / (1 - c|x_i|^2)``),
    ``m_K = (w @ (lambda x)) / (w @ (lambda - 1))``: two matrix products. A row of zero weights
    (a fully masked query) gives the origin.
    """
    return _project(st.midpoint_aggregate(w, x, -c, xp), c, eps, xp)


#: scores in one query tile of the generic tiled attention, all batch items together
_ATTN_TILE = 1 << 20


def value_factors(v: Array, c: float, xp: Namespace) -> Array:
    """``[lambda_v v, lambda_v - 1]`` ``(..., N, Dv + 1)``: one GEMM with the weights gives the numerator
    and the denominator of the Einstein midpoint in the Klein model (see :func:`einstein_aggregate`)."""
    lam = 2.0 / _one_minus(_sqnorm(v, xp), c, xp)
    return xp.concat([lam * v, lam - 1.0], axis=-1)


def klein_ratio(nd: Array, c: float, eps: float, xp: Namespace) -> Array:
    """The point of the ball from ``[sum w lambda v, sum w (lambda - 1)]`` (the last column is the
    denominator; a zero denominator, a fully masked row, gives the origin)."""
    den = nd[..., -1:]
    k = nd[..., :-1] / xp.clip(den, min=float(xp.finfo(den.dtype).smallest_normal))
    return _from_klein(k, c, eps, xp)


def einstein_attention(q: Array, k: Array, v: Array, c: float, temperature: float, mask: Array | None, eps: float, xp: Namespace) -> Array:
    r"""Hyperbolic attention with Einstein-midpoint aggregation, tiled over queries.

    ``out_i = EinsteinMidpoint_c({v_j}, softmax_j(-d_c(q_i, k_j)/T + mask_ij))`` (Gulcehre et al. 2019)
    for ``q (..., M, D)``, ``k (..., N, D)``, ``v (..., N, Dv)`` (validated, in the compute dtype) and a
    prepared ``mask`` broadcastable to ``(..., M, N)`` (bool True = attend, or float added).

    Each tile of queries takes two GEMMs: the distance arguments ``t`` (:func:`pairwise_arg`; one
    GEMM of width ``D + 2``) and ``w @ [lambda v, lambda - 1]`` (:func:`value_factors`), the numerator
    and denominator of the Klein-model midpoint. Only a ``(rows, N)`` tile of scores exists at a
    time, so memory is ``O(N * rows)`` beside the inputs. NumPy float32 arrays take the threaded
    in-place path of :mod:`.poincare_numpy`, which computes the same formulas.
    """
    from .poincare_numpy import einstein_attention_numpy

    fast = einstein_attention_numpy(q, k, v, c, temperature, mask, eps) if c > 0 and temperature >= SMALL_TEMPERATURE else None
    if fast is not None:
        return fast
    m, n = q.shape[-2], k.shape[-2]
    lead = _bshapes(tuple(q.shape[:-2]), tuple(k.shape[:-2]), tuple(v.shape[:-2]))
    if m is None or n is None or None in lead:  # symbolic lengths (a graph being exported): one whole tile
        tiles: list[tuple[int, int | None]] = [(0, None)]
    else:
        rows = max(1, _ATTN_TILE // max(1, math.prod(lead) * int(n)))
        tiles = [(i0, min(int(m), i0 + rows)) for i0 in range(0, int(m), rows)]
    vf = value_factors(v, c, xp)
    wide = wide_dtype(xp, q.dtype) if c > 0 else None
    fq = None if wide is None else query_factor(q, c, xp, wide)
    fk = None if wide is None else xp.matrix_transpose(key_factor(k, c, xp, wide))
    parts = []
    with small_gemms(xp):
        for i0, i1 in tiles:
            if fq is None or fk is None:  # float64 (or c = 0, the flat limit): the stereographic kernel
                d = pairwise_dist_kernel(q[..., i0:i1, :], k, c, xp)
            else:
                d = _arcosh1p(xp.clip(xp.astype(xp.matmul(fq[..., i0:i1, :], fk), q.dtype), min=0.0), xp) / math.sqrt(c)
            logits = distance_logits(d, temperature, mask_tile(mask, i0, i1, 0, n) if mask is not None else None, xp)
            parts.append(xp.matmul(safe_softmax(logits, xp, axis=-1), vf))
    nd = parts[0] if len(parts) == 1 else xp.concat(parts, axis=-2)
    return klein_ratio(nd, c, eps, xp)


def frechet_aggregate(w: Array, x: Array, c: float, eps: float, xp: Namespace, iters: int, tol: float, init: Array | None = None) -> Array:
    """Weighted Fréchet means of ``x (..., N, D)`` for each row of ``w (..., M, N)`` (rows sum to 1, or 0).

    Riemannian gradient descent on ``F(mu) = 1/2 sum_j w_j d_c(mu, x_j)^2``, whose gradient is
    ``-sum_j w_j log_mu(x_j)``::

        mu <- exp_mu(t * sum_j w_j log_mu(x_j)),   t = 1 / sum_j w_j h(d_j),   h(d) = sqrt(c) d coth(sqrt(c) d)

    ``h(d_j)`` bounds the Hessian of ``d_c(., x_j)^2 / 2`` (it is 1 along the geodesic and
    ``sqrt(c) d coth(sqrt(c) d)`` across it), so ``t`` makes every step a descent step. The plain Karcher
    step ``t = 1`` overshoots and diverges once points are spread more than about 2/sqrt(c) apart,
    which negative curvature makes common. Starts at the Einstein midpoint (``init``), a close
    guess, and stops when the longest step is shorter than ``tol`` (in distance) or after ``iters``.

    The sum of logarithms is assembled from ``(..., M, N)`` scalars and one matrix product:
    ``log_mu(x) = (1 - c|mu|^2) g(z) / delta * ((1 - c|mu|^2) x - alpha mu)`` with
    ``alpha = 1 - 2c<mu,x> + c|x|^2``, ``delta = 1 - 2c<mu,x> + c^2|mu|^2|x|^2``,
    ``z = sqrt(c)|(-mu) (+) x|`` and ``g(z) = artanh(z)/z``, where ``alpha = c|mu - x|^2 + (1 - c|mu|^2)``
    and ``delta = c|mu - x|^2 + (1 - c|mu|^2)(1 - c|x|^2)`` avoid cancellation.
    """
    mu = einstein_aggregate(w, x, c, eps, xp) if init is None else init
    return st.frechet_aggregate(w, x, -c, xp, iters=iters, tol=tol, init=mu, eps=eps)


# --------------------------------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------------------------------
def lambda_x(x: Any, c: float = 1.0) -> Array:
    """The conformal factor ``lambda_x = 2 / (1 - c|x|^2)`` of the ball at ``x``, shape ``(...,)``.

    (Ganea et al. 2018, eq. 1.) ``x`` must lie inside the ball.
    """
    cv = curvature_value(c)
    p = _prepare([("x", x)], c=cv, points=("x",))
    xp = p.xp
    return p.finish(2.0 / _one_minus(_sqnorm(p.arrays[0], xp, False), cv, xp))


def mobius_add(x: Any, y: Any, c: float = 1.0) -> Array:
    """Möbius addition ``x (+)_c y`` (Ungar 2008; Ganea et al. 2018, eq. 2).

    ``x (+) y = ((1 + 2c<x,y> + c|y|^2) x + (1 - c|x|^2) y) / (1 + 2c<x,y> + c^2|x|^2|y|^2)``,
    evaluated without cancellation (see the module docstring) and projected into the ball. It is
    neither commutative nor associative; ``(-x) (+) x = 0``. Both arguments must lie inside the ball.
    """
    cv = curvature_value(c)
    p = _prepare([("x", x), ("y", y)], c=cv, points=("x", "y"))
    xa, ya = p.arrays
    return p.finish(_project(_mobius_add(xa, ya, cv, p.xp), cv, margin(p.out_dtype), p.xp))


def mobius_scalar_mul(r: Any, x: Any, c: float = 1.0) -> Array:
    """Möbius scalar multiplication ``r (x)_c x = tanh(r artanh(sqrt(c)|x|)) x / (sqrt(c)|x|)``
    (Ganea et al. 2018, eq. 3): scales the hyperbolic distance of ``x`` from the origin by ``r``.

    ``r`` is a number or an array broadcasting against ``x``'s leading dimensions ``(...)``.
    """
    cv = curvature_value(c)
    if isinstance(r, numbers.Real) and not isinstance(r, bool):
        rv: Any = finite_float(r, "r")
        p = _prepare([("x", x)], c=cv, points=("x",))
    else:
        p = _prepare([("x", x), ("r", r)], c=cv, points=("x",), same_dim=False)
        rr = p.arrays[1]
        try:
            _bshapes((*rr.shape, 1), tuple(p.arrays[0].shape))
        except ValueError:
            raise ShapeError(
                f"r: expected a number or an array broadcasting to the leading dimensions of x "
                f"{shape_str(p.arrays[0].shape[:-1])}, got shape {shape_str(rr.shape)}"
            ) from None
        rv = p.xp.expand_dims(rr, axis=-1)
    return p.finish(_mobius_scalar_mul(rv, p.arrays[0], cv, margin(p.out_dtype), p.xp))


def exp_map(x: Any, u: Any, c: float = 1.0) -> Array:
    """Exponential map at the base point ``x`` (first argument) of the tangent vector ``u``:

    ``exp_x(u) = x (+) (tanh(sqrt(c) lambda_x |u| / 2) u / (sqrt(c)|u|))`` (Ganea et al. 2018, Lemma 2),
    the end point of the geodesic from ``x`` with initial velocity ``u``. ``u = 0`` gives ``x``.
    The result is projected into the ball; :func:`log_map` at the same ``x`` inverts it.
    """
    cv = curvature_value(c)
    p = _prepare([("x", x), ("u", u)], c=cv, points=("x",))
    xa, ua = p.arrays
    return p.finish(_expmap(xa, ua, cv, margin(p.out_dtype), p.xp))


def log_map(x: Any, y: Any, c: float = 1.0) -> Array:
    """Logarithmic map at the base point ``x`` (first argument) of the point ``y``:

    ``log_x(y) = 2/(sqrt(c) lambda_x) artanh(sqrt(c)|w|) w/|w|``, ``w = (-x) (+) y``
    (Ganea et al. 2018, Lemma 2): the tangent vector at ``x`` whose geodesic reaches ``y`` at time 1,
    so ``exp_map(x, log_map(x, y)) == y`` and ``log_map(x, exp_map(x, u)) == u``. Its Riemannian
    length ``lambda_x |log_x(y)|`` is ``d_c(x, y)``. ``y = x`` gives 0.
    """
    cv = curvature_value(c)
    p = _prepare([("x", x), ("y", y)], c=cv, points=("x", "y"))
    xa, ya = p.arrays
    return p.finish(_logmap(xa, ya, cv, p.xp))


def poincare_distance(x: Any, y: Any, c: float = 1.0) -> Array:
    """Geodesic distance ``d_c(x, y) = 2/sqrt(c) artanh(sqrt(c) |(-x) (+) y|)`` (Ganea et al. 2018, eq. 5),
    shape ``(...,)`` (a scalar array for two vectors). Evaluated in the identical form
    ``1/sqrt(c) arcosh(1 + 2c|x - y|^2 / ((1 - c|x|^2)(1 - c|y|^2)))``, exact on the diagonal and
    accurate up to the boundary. Symmetric, zero iff ``x == y``, satisfies the triangle inequality.
    """
    cv = curvature_value(c)
    p = _prepare([("x", x), ("y", y)], c=cv, points=("x", "y"))
    xa, ya = p.arrays
    return p.finish(_dist(xa, ya, cv, p.xp))


def pairwise_distance(x: Any, y: Any, c: float = 1.0) -> Array:
    """All distances ``d_c(x_i, y_j)`` between ``x (..., M, D)`` and ``y (..., N, D)``: ``(..., M, N)``."""
    cv = curvature_value(c)
    p = _prepare([("x", x), ("y", y)], c=cv, points=("x", "y"), same_dim=False)
    a, b = p.arrays
    for name, arr in (("x", a), ("y", b)):
        if arr.ndim < 2:
            raise ShapeError(f"{name}: expected an array of points (..., N, D), got shape {shape_str(arr.shape)}")
    if a.shape[-1] != b.shape[-1]:
        raise ShapeError(f"y: expected vectors of width D = {a.shape[-1]} (as x) along the last axis, got {b.shape[-1]}")
    try:
        _bshapes(tuple(a.shape[:-2]), tuple(b.shape[:-2]))
    except ValueError:
        raise ShapeError(f"x, y: leading dimensions {shape_str(a.shape[:-2])} and {shape_str(b.shape[:-2])} do not broadcast") from None
    return p.finish(pairwise_dist_kernel(a, b, cv, p.xp))


def project(x: Any, c: float = 1.0, eps: float | None = None) -> Array:
    """Project points into the ball: vectors with ``|x| > (1 - eps)/sqrt(c)`` are scaled back to that
    norm, the others are returned unchanged (as geoopt's ``PoincareBall.projx``).

    ``eps`` (a fraction of the radius, in (0, 1)) defaults to a dtype-aware margin: 1e-5 for
    float64, 4e-3 for float32 (where ``1 - c|x|^2`` closer to the boundary loses too many digits),
    1e-2 for float16 and 4e-2 for bfloat16.
    """
    cv = curvature_value(c)
    p = _prepare([("x", x)], c=cv)
    e = _margin_value(eps, p.out_dtype)
    return p.finish(_project(p.arrays[0], cv, e, p.xp))


def to_poincare(u: Any, c: float = 1.0) -> Array:
    """Map a Euclidean (tangent) vector into the ball by the exponential map at the origin:
    ``exp_0(u) = tanh(sqrt(c)|u|) u / (sqrt(c)|u|)`` (Ganea et al. 2018, Lemma 2 with ``lambda_0 = 2``),
    projected into the ball. :func:`from_poincare` inverts it.
    """
    cv = curvature_value(c)
    p = _prepare([("u", u)], c=cv)
    return p.finish(expmap0_kernel(p.arrays[0], cv, margin(p.out_dtype), p.xp))


def from_poincare(x: Any, c: float = 1.0) -> Array:
    """Map a point of the ball to the tangent space at the origin by the logarithmic map:
    ``log_0(x) = artanh(sqrt(c)|x|) x / (sqrt(c)|x|)`` (Ganea et al. 2018). Inverse of :func:`to_poincare`;
    its norm is half the distance of ``x`` from the origin.
    """
    cv = curvature_value(c)
    p = _prepare([("x", x)], c=cv, points=("x",))
    return p.finish(_logmap0(p.arrays[0], cv, p.xp))


def poincare_to_klein(x: Any, c: float = 1.0) -> Array:
    """The Beltrami-Klein coordinates ``k = 2x / (1 + c|x|^2)`` of a point ``x`` of the Poincaré ball."""
    cv = curvature_value(c)
    p = _prepare([("x", x)], c=cv, points=("x",))
    return p.finish(_to_klein(p.arrays[0], cv, p.xp))


def klein_to_poincare(k: Any, c: float = 1.0) -> Array:
    """The Poincaré coordinates ``x = k / (1 + sqrt(1 - c|k|^2))`` of a Klein point ``k`` (``c|k|^2 < 1``)."""
    cv = curvature_value(c)
    p = _prepare([("k", k)], c=cv, points=("k",))
    return p.finish(_from_klein(p.arrays[0], cv, margin(p.out_dtype), p.xp))


def _points_and_weights(x: Any, weights: Any, c: float) -> tuple[_Prepared, Array]:
    """Validate ``x (..., N, D)`` and ``weights (..., N)`` (non-negative; None = uniform)."""
    if weights is None:
        p = _prepare([("x", x)], c=c, points=("x",))
        a = p.arrays[0]
        if a.ndim < 2:
            raise ShapeError(f"x: expected a set of points (..., N, D), got shape {shape_str(a.shape)}")
        w = p.xp.ones(tuple(a.shape[:-1]), dtype=a.dtype, device=array_api_compat.device(a))
    else:
        p = _prepare([("x", x), ("weights", weights)], c=c, points=("x",), same_dim=False)
        a, w = p.arrays
        if a.ndim < 2:
            raise ShapeError(f"x: expected a set of points (..., N, D), got shape {shape_str(a.shape)}")
        if w.ndim < 1 or w.shape[-1] != a.shape[-2]:
            raise ShapeError(f"weights: expected shape (..., N) with N = {a.shape[-2]} (the points of x), got {shape_str(w.shape)}")
        try:
            _bshapes(tuple(w.shape[:-1]), tuple(a.shape[:-2]))
        except ValueError:
            raise ShapeError(
                f"weights: leading dimensions {shape_str(w.shape[:-1])} do not broadcast with those of x {shape_str(a.shape[:-2])}"
            ) from None
        nonneg = p.xp.all(w >= 0.0)
        if not is_traced(nonneg) and not bool(nonneg):
            raise AttentionError(f"weights: expected non-negative weights, got a minimum of {float(p.xp.min(w)):.6g}")
    if a.shape[-2] == 0:
        raise ShapeError("x: expected at least one point (N >= 1), got an empty set")
    return p, w


def einstein_midpoint(x: Any, weights: Any = None, c: float = 1.0) -> Array:
    """Weighted Einstein midpoint of the points ``x (..., N, D)`` with ``weights (..., N)`` -> ``(..., D)``.

    Through the Klein model (Gulcehre et al. 2019, "Hyperbolic Attention Networks", eq. 5; Ungar 2008):
    ``k_i = 2x_i/(1 + c|x_i|^2)``, Lorentz factors ``gamma_i = 1/sqrt(1 - c|k_i|^2)``,
    ``m_K = sum_i w_i gamma_i k_i / sum_i w_i gamma_i``, mapped back with
    ``m = m_K / (1 + sqrt(1 - c|m_K|^2))``. Equals Ungar's Möbius gyromidpoint
    ``1/2 (x) (sum_i w_i lambda_i x_i / sum_i w_i (lambda_i - 1))`` and the Klein image of the
    normalised weighted sum of the points on the hyperboloid. Only the ratios of the (non-negative)
    weights matter; all-zero weights give the origin. ``weights=None`` is uniform.
    """
    cv = curvature_value(c)
    p, w = _points_and_weights(x, weights, cv)
    xp = p.xp
    out = einstein_aggregate(xp.expand_dims(w, axis=-2), p.arrays[0], cv, margin(p.out_dtype), xp)
    return p.finish(out[..., 0, :])


def default_tol(dtype: Any) -> float:
    """Default Fréchet-mean stopping tolerance (a distance): ``100 * eps`` of ``dtype``."""
    return 100.0 * float(np.finfo(np.float32 if _dtype_name(dtype) != "float64" else np.float64).eps)


def frechet_mean(x: Any, weights: Any = None, c: float = 1.0, iters: int = 100, tol: float | None = None) -> Array:
    """Weighted Fréchet (Karcher) mean ``argmin_mu sum_i w_i d_c(mu, x_i)^2`` of ``x (..., N, D)`` -> ``(..., D)``.

    Iterates ``mu <- exp_mu(t sum_i w_i log_mu(x_i))`` with normalised weights from the Einstein
    midpoint, with the step ``t = 1/sum_i w_i sqrt(c) d_i coth(sqrt(c) d_i)`` (``t = 1`` is the classic
    Karcher step; it diverges for spread points in negative curvature), until the step is shorter than
    ``tol`` (default ``100 * eps`` of the dtype) or after ``iters`` steps. The mean exists and is unique
    on the ball (a Hadamard manifold). All-zero weights give the origin.
    """
    cv = curvature_value(c)
    iters = positive_int(iters, "iters")
    tolv = None if tol is None else finite_float(tol, "tol")
    if tolv is not None and tolv <= 0.0:
        raise ConfigError(f"tol: expected a finite number > 0, got {tol!r}")
    p, w = _points_and_weights(x, weights, cv)
    xp = p.xp
    total = xp.sum(w, axis=-1, keepdims=True)
    w = w / xp.where(total == 0.0, xp.ones_like(total), total)
    e = margin(p.out_dtype)
    out = frechet_aggregate(xp.expand_dims(w, axis=-2), p.arrays[0], cv, e, xp, iters, tolv if tolv is not None else default_tol(p.cdtype))
    return p.finish(out[..., 0, :])
