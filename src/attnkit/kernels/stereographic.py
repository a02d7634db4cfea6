r"""The κ-stereographic model: one set of formulas for every constant curvature, smooth through κ = 0.

For a curvature ``κ`` the model is ``M_κ = {x in R^D : κ|x|^2 > -1}`` with the metric
``λ_x^2 g_E``, ``λ_x = 2 / (1 + κ|x|^2)`` (Bachmann, Bécigneul & Ganea 2020, "Constant Curvature Graph
Convolutional Networks"; Skopek et al. 2020; geoopt's ``Stereographic``):

* ``κ < 0``: the Poincaré ball of radius ``1/sqrt(-κ)`` and sectional curvature ``κ``
  (:mod:`attnkit.kernels.poincare` writes it with ``c = -κ > 0``);
* ``κ = 0``: Euclidean space (every formula below reduces to ``+``, ``-``, scaling and ``|x - y|``);
* ``κ > 0``: the stereographic projection of the sphere of radius ``1/sqrt(κ)`` from its north pole
  (which sits at infinity); the whole of ``R^D`` is the chart and the point opposite ``x`` (its
  antipode) is ``-x / (κ|x|^2)``.

**Sign convention.** Here ``κ`` *is* the sectional curvature: negative is hyperbolic, positive spherical
(geoopt's ``Stereographic(k)`` and ``PoincareBall(c)`` = ``Stereographic(-c)``). The functions of
:mod:`attnkit.kernels.poincare` and the ``curvature`` option of :class:`~attnkit.HyperbolicAttention`
take the *ball parameter* instead, where both ``c`` and ``-c`` mean the ball of curvature ``-|c|``;
:class:`~attnkit.MixedCurvatureAttention`'s factor curvatures are signed ``κ`` as here.

With the curvature trigonometric functions (``tan_κ = tan`` for ``κ > 0``, ``tanh`` for ``κ < 0``,
identity at ``κ = 0``, scaled by ``sqrt|κ|``)::

    tan_κ(r)   = r T(κ r^2),   T(s) = tan(sqrt s)/sqrt s,  tanh(sqrt -s)/sqrt -s,  1 + s/3 + 2s^2/15 + ...
    artan_κ(r) = r A(κ r^2),   A(s) = atan(sqrt s)/sqrt s, artanh(sqrt -s)/sqrt -s, 1 - s/3 + s^2/5 - ...

the primitives are (Ganea et al. 2018 for ``κ < 0``, Bachmann et al. 2020 for every ``κ``):

* Möbius addition ``x (+) y = ((1 - 2κ<x,y> - κ|y|^2) x + (1 + κ|x|^2) y) / (1 - 2κ<x,y> + κ^2|x|^2|y|^2)``;
* scalar multiplication ``r (x) x = tan_κ(r artan_κ|x|) x/|x|``;
* ``exp_x(u) = x (+) tan_κ(λ_x|u|/2) u/|u|``, ``log_x(y) = 2/λ_x artan_κ|w| w/|w|`` with ``w = (-x) (+) y``,
  and at the origin ``exp_0(u) = tan_κ|u| u/|u|``, ``log_0(y) = artan_κ|y| y/|y|``;
* distance ``d_κ(x, y) = 2 artan_κ |(-x) (+) y|``;
* gyration ``gyr[u, v]w = (-(u (+) v)) (+) (u (+) (v (+) w))`` (closed form as geoopt's);
* weighted gyromidpoint (below).

Numerics. ``T`` and ``A`` are evaluated as power series in ``s = κ r^2`` for ``|s| < 1e-3`` (6 terms:
the truncation error is below 1e-19), which makes every formula a smooth function of ``κ`` through 0,
with the right derivative in ``κ`` there (the series has no ``sqrt|κ|``). No formula divides by a norm:
``tan_κ(ρ) u/|u| = ρ T(κρ^2) u/|u|`` is written as ``T(...) (ρ/|u|) u`` with ``ρ/|u|`` a ratio that stays
finite, so gradients at the origin are zeros, not NaN. Denominators use the form that has no
cancellation for the sign of ``κ``: ``1 - 2κ<x,y> + κ^2|x|^2|y|^2`` is
``-κ|x + y|^2 + (1 + κ|x|^2)(1 + κ|y|^2)`` (two non-negative terms) for ``κ < 0`` and
``(1 - κ<x,y>)^2 + κ^2(|x|^2|y|^2 - <x,y>^2)`` for ``κ > 0``; ``artanh`` is
``log1p(z) - log(1 - z^2)/2`` with ``1 - z^2`` formed without cancellation.

Curvature. ``k`` is a Python number or an array of the inputs' library; it broadcasts against the
``(..., 1)`` shape of the vectors' norms, so ``k`` of shape ``(B, 1)`` gives every row of ``x (B, D)``
its own curvature (for pairwise kernels ``(..., M, N)``, a per-batch ``k`` has shape ``(..., 1, 1)``).
Nothing branches in Python on values of ``k`` or of the data (``xp.where`` picks the formula for each
element), so every kernel traces under ``jax.jit`` and ``torch.func`` and differentiates in ``k``.
These kernels do not validate: the public wrappers and mechanisms check shapes, finiteness and (for
``κ < 0``) that points lie inside the ball.
"""

from __future__ import annotations

import math
from typing import Any, cast

import array_api_compat

from .._array import Array, Namespace, finite_float, is_traced, namespace
from .._array import broadcast_shapes as _bshapes
from .._array import length as _dim

__all__ = [
    "tan_k",
    "artan_k",
    "lambda_x",
    "mobius_add",
    "mobius_sub",
    "mobius_scalar_mul",
    "gyration",
    "expmap",
    "expmap0",
    "logmap",
    "logmap0",
    "dist",
    "dist0",
    "pairwise_sqdist",
    "pairwise_dist",
    "project",
    "antipode",
    "weighted_midpoint",
    "midpoint_aggregate",
    "frechet_aggregate",
    "curvature_from_raw",
    "raw_from_curvature",
    "margin",
]

#: below this ``|s| = |κ| r^2`` the series of T and A are used (truncation error < 1e-19)
_SERIES = 1e-3
#: T(s) = tan(sqrt s)/sqrt s = sum_n _T[n] s^n ; A(s) = atan(sqrt s)/sqrt s = sum_n (-1)^n s^n / (2n + 1)
_T_COEF = (1.0, 1.0 / 3.0, 2.0 / 15.0, 17.0 / 315.0, 62.0 / 2835.0, 1382.0 / 155925.0)
_A_COEF = (1.0, -1.0 / 3.0, 1.0 / 5.0, -1.0 / 7.0, 1.0 / 9.0, -1.0 / 11.0)
_MIN_SQ = 1e-30
#: projection margins relative to the radius, as geoopt (float32 4e-3, float64 1e-5)
_MARGINS = {"float64": 1e-5, "float32": 4e-3, "float16": 1e-2, "bfloat16": 4e-2}
_PAIR_BLOCK = 1 << 21


def margin(dtype: Any) -> float:
    """Default projection margin for ``dtype``, a fraction of the ball radius ``1/sqrt(-κ)``."""
    return _MARGINS.get(str(dtype).replace("torch.", "").split(".")[-1].rstrip("'>"), 1e-5)


def _tiny(a: Array, xp: Namespace) -> float:
    return float(xp.finfo(a.dtype).smallest_normal)


def _k(k: Any, like: Array, xp: Namespace) -> Array:
    """``k`` as an array of ``like``'s dtype and device (a Python number becomes a 0-d array)."""
    if array_api_compat.is_array_api_obj(k):
        return k if k.dtype == like.dtype else xp.astype(k, like.dtype)
    return xp.asarray(finite_float(k, "k"), dtype=like.dtype, device=array_api_compat.device(like))


def _sq(x: Array, xp: Namespace) -> Array:
    return xp.sum(x * x, axis=-1, keepdims=True)


def _dot(x: Array, y: Array, xp: Namespace) -> Array:
    return xp.sum(x * y, axis=-1, keepdims=True)


def _poly(s: Array, coef: tuple[float, ...]) -> Array:
    out = coef[-1] + 0.0 * s
    for c in coef[-2::-1]:
        out = out * s + c
    return out


def _sign(k: Any) -> int | None:
    """The sign of a curvature given as a Python number (a configuration value, not data), else None.

    With it the kernels evaluate only the branch of that sign (half the transcendental functions);
    an array ``k`` (per row, learnable, traced) takes every branch and picks per element."""
    if array_api_compat.is_array_api_obj(k):
        return None
    v = float(k)
    return (v > 0) - (v < 0)


def _T(s: Array, xp: Namespace, sign: int | None = None) -> Array:
    """``tan_κ(r)/r`` as a function of ``s = κ r^2``: ``tan(sqrt s)/sqrt s`` (s > 0), ``tanh(sqrt -s)/sqrt -s`` (s < 0)."""
    if sign == 0:
        return xp.ones_like(s)
    if sign is not None:
        big = s * sign >= _SERIES
        r = xp.sqrt(xp.where(big, s * sign, xp.ones_like(s)))
        closed = (xp.tan(r) if sign > 0 else xp.tanh(r)) / r
        return xp.where(big, closed, _poly(s, _T_COEF))
    pos = s >= _SERIES
    neg = s <= -_SERIES
    one = xp.ones_like(s)
    rp = xp.sqrt(xp.where(pos, s, one))
    rn = xp.sqrt(xp.where(neg, -s, one))
    return xp.where(pos, xp.tan(rp) / rp, xp.where(neg, xp.tanh(rn) / rn, _poly(s, _T_COEF)))


def _A(s: Array, xp: Namespace, one_plus: Array | None = None, sign: int | None = None) -> Array:
    """``artan_κ(r)/r`` as a function of ``s = κ r^2``; ``one_plus`` is ``1 + s`` when the caller can form
    it without cancellation (it is ``1 - z^2`` of the ``artanh(z)`` for ``s < 0``)."""
    if sign == 0:
        return xp.ones_like(s)
    if sign is not None:
        big = s * sign >= _SERIES
        one = xp.ones_like(s)
        r = xp.sqrt(xp.where(big, s * sign, one))
        if sign > 0:
            closed = xp.atan(r) / r
        else:
            opl = 1.0 + s if one_plus is None else one_plus
            opl = xp.where(big, xp.clip(opl, min=_tiny(s, xp)), one)
            closed = (xp.log1p(r) - 0.5 * xp.log(opl)) / r
        return xp.where(big, closed, _poly(s, _A_COEF))
    pos = s >= _SERIES
    neg = s <= -_SERIES
    one = xp.ones_like(s)
    rp = xp.sqrt(xp.where(pos, s, one))
    rn = xp.sqrt(xp.where(neg, -s, one))
    opl = 1.0 + s if one_plus is None else one_plus
    opl = xp.where(neg, xp.clip(opl, min=_tiny(s, xp)), one)
    artanh = xp.log1p(rn) - 0.5 * xp.log(opl)
    return xp.where(pos, xp.atan(rp) / rp, xp.where(neg, artanh / rn, _poly(s, _A_COEF)))


def _den(x2: Array, y2: Array, xy: Array | None, ss: Array, k: Array, xp: Namespace, sign: int | None = None) -> Array:
    """``1 - 2κ<x,y> + κ^2|x|^2|y|^2`` (the denominator of ``x (+) y``) without cancellation, >= 0;
    ``ss`` is ``|x + y|^2``, computed by the caller from the sum itself (``xy`` is not needed for κ <= 0)."""
    hyp = -k * ss + (1.0 + k * x2) * (1.0 + k * y2)
    if sign is not None and sign <= 0:
        return xp.clip(hyp, min=_tiny(x2, xp))
    xy = cast(Array, xy)  # given by every caller that may meet κ > 0
    sph = (1.0 - k * xy) ** 2 + (k * k) * xp.clip(x2 * y2 - xy * xy, min=0.0)
    return xp.clip(xp.where(k < 0, hyp, sph), min=_tiny(x2, xp))


def _one_plus(x2: Array, k: Array, xp: Namespace) -> Array:
    """``1 + κ|x|^2`` (``2/λ_x``), kept positive."""
    return xp.clip(1.0 + k * x2, min=_tiny(x2, xp))


def _norm(x: Array, xp: Namespace) -> Array:
    return xp.sqrt(xp.clip(_sq(x, xp), min=_MIN_SQ))


def _sqrt0(t: Array, xp: Namespace) -> Array:
    """``sqrt(t)`` for ``t >= 0``, exactly 0 at 0 with a zero (not infinite) gradient there."""
    pos = t > 0
    return xp.where(pos, xp.sqrt(xp.where(pos, t, xp.ones_like(t))), xp.zeros_like(t))


# --------------------------------------------------------------------------------------------------
# kernels: arrays in the compute dtype, k an array (or number) broadcasting against (..., 1)
# --------------------------------------------------------------------------------------------------
def tan_k(r: Array, k: Any, xp: Namespace | None = None) -> Array:
    """``tan_κ(r) = tan(sqrt κ r)/sqrt κ`` (κ > 0), ``tanh(sqrt -κ r)/sqrt -κ`` (κ < 0), ``r`` (κ = 0), elementwise."""
    xp = xp or namespace(r)
    sg, k = _sign(k), _k(k, r, xp)
    return r * _T(k * r * r, xp, sg)


def artan_k(r: Array, k: Any, xp: Namespace | None = None) -> Array:
    """Inverse of :func:`tan_k`: ``atan``/``artanh`` scaled by ``sqrt|κ|``, ``r`` at κ = 0, elementwise."""
    xp = xp or namespace(r)
    sg, k = _sign(k), _k(k, r, xp)
    return r * _A(k * r * r, xp, None, sg)


def lambda_x(x: Array, k: Any, xp: Namespace | None = None) -> Array:
    """Conformal factor ``λ_x = 2/(1 + κ|x|^2)``, shape ``(..., 1)``."""
    xp = xp or namespace(x)
    return 2.0 / _one_plus(_sq(x, xp), _k(k, x, xp), xp)


def _add(x: Array, y: Array, x2: Array, y2: Array, xy: Array, k: Array, xp: Namespace, sg: int | None = None) -> Array:
    # ((1 + κ|x|^2) s - κ|s|^2 x) / den with s = x + y: identical to the textbook numerator, and for
    # y close to -x it is computed from the small s rather than by cancellation
    s = x + y
    ss = _sq(s, xp)
    return ((1.0 + k * x2) * s - (k * ss) * x) / _den(x2, y2, xy, ss, k, xp, sg)


def mobius_add(x: Array, y: Array, k: Any, xp: Namespace | None = None) -> Array:
    """Möbius addition ``x (+)_κ y`` (Ungar 2008; Bachmann et al. 2020, eq. 2). ``(-x) (+) x = 0``;
    at κ = 0 it is ``x + y``. Not commutative, not associative (see :func:`gyration`)."""
    xp = xp or namespace(x, y)
    sg, k = _sign(k), _k(k, x, xp)
    return _add(x, y, _sq(x, xp), _sq(y, xp), _dot(x, y, xp), k, xp, sg)


def mobius_sub(x: Array, y: Array, k: Any, xp: Namespace | None = None) -> Array:
    """``x (-) y = x (+) (-y)``."""
    return mobius_add(x, -y, k, xp)


def gyration(u: Array, v: Array, w: Array, k: Any, xp: Namespace | None = None) -> Array:
    """``gyr[u, v]w = (-(u (+) v)) (+) (u (+) (v (+) w))`` in closed form (Ungar 2008, eq. 1.54; geoopt):
    ``w + 2(a u + b v)/d`` with ``a = -κ^2<u,w>|v|^2 - κ<v,w> + 2κ^2<u,v><v,w>``,
    ``b = -κ^2<v,w>|u|^2 + κ<u,w>`` and ``d`` the denominator of ``u (+) v``. It gives gyrocommutativity
    ``u (+) v = gyr[u, v](v (+) u)`` and is the identity at κ = 0."""
    xp = xp or namespace(u, v, w)
    sg, k = _sign(k), _k(k, u, xp)
    u2, v2, uv, uw, vw = _sq(u, xp), _sq(v, xp), _dot(u, v, xp), _dot(u, w, xp), _dot(v, w, xp)
    kk = k * k
    a = -kk * uw * v2 - k * vw + 2.0 * kk * uv * vw
    b = -kk * vw * u2 + k * uw
    return w + 2.0 * (a * u + b * v) / _den(u2, v2, uv, _sq(u + v, xp), k, xp, sg)


def mobius_scalar_mul(r: Any, x: Array, k: Any, xp: Namespace | None = None) -> Array:
    """``r (x)_κ x = tan_κ(r artan_κ|x|) x/|x|`` (Ganea et al. 2018, eq. 3): scales the distance from the
    origin by ``r`` (a number or an array broadcasting against ``(..., 1)``). ``r x`` at κ = 0."""
    xp = xp or namespace(x)
    sg, k = _sign(k), _k(k, x, xp)
    x2 = _sq(x, xp)
    ra = r * _A(k * x2, xp, 1.0 + k * x2, sg)  # r artan_κ|x| / |x|
    return _T(k * ra * ra * x2, xp, sg) * ra * x


def expmap0(u: Array, k: Any, xp: Namespace | None = None) -> Array:
    """``exp_0(u) = tan_κ(|u|) u/|u|`` (``λ_0 = 2``)."""
    xp = xp or namespace(u)
    sg, k = _sign(k), _k(k, u, xp)
    return _T(k * _sq(u, xp), xp, sg) * u


def logmap0(y: Array, k: Any, xp: Namespace | None = None) -> Array:
    """``log_0(y) = artan_κ(|y|) y/|y|``, the inverse of :func:`expmap0`."""
    xp = xp or namespace(y)
    sg, k = _sign(k), _k(k, y, xp)
    y2 = _sq(y, xp)
    return _A(k * y2, xp, 1.0 + k * y2, sg) * y


def expmap(x: Array, u: Array, k: Any, xp: Namespace | None = None) -> Array:
    """``exp_x(u) = x (+) tan_κ(λ_x|u|/2) u/|u|`` (Bachmann et al. 2020, eq. 4): the end of the geodesic
    leaving ``x`` with velocity ``u``. Not projected (see :func:`project`)."""
    xp = xp or namespace(x, u)
    sg, k = _sign(k), _k(k, x, xp)
    x2 = _sq(x, xp)
    half = 1.0 / _one_plus(x2, k, xp)  # λ_x / 2
    second = _T(k * half * half * _sq(u, xp), xp, sg) * half * u
    return _add(x, second, x2, _sq(second, xp), _dot(x, second, xp), k, xp, sg)


def logmap(x: Array, y: Array, k: Any, xp: Namespace | None = None) -> Array:
    """``log_x(y) = 2/λ_x artan_κ|w| w/|w|``, ``w = (-x) (+) y``; inverse of :func:`expmap` at ``x``."""
    xp = xp or namespace(x, y)
    sg, k = _sign(k), _k(k, x, xp)
    x2, y2, xy = _sq(x, xp), _sq(y, xp), _dot(x, y, xp)
    w = _add(-x, y, x2, y2, -xy, k, xp, sg)
    sq = _sq(y - x, xp)
    den = _den(x2, y2, -xy, sq, k, xp, sg)
    w2 = sq / den  # |(-x) (+) y|^2 = |x - y|^2 / den
    return _one_plus(x2, k, xp) * _A(k * w2, xp, _one_plus(x2, k, xp) * _one_plus(y2, k, xp) / den, sg) * w


def _dist_from(sq: Array, x2: Array, y2: Array, xy: Array | None, k: Array, xp: Namespace, sg: int | None = None) -> Array:
    """``d_κ`` from ``|x - y|^2``, ``|x|^2``, ``|y|^2``, ``<x, y>`` (any broadcast shape; None for κ <= 0)."""
    den = _den(x2, y2, None if xy is None else -xy, sq, k, xp, sg)
    w2 = sq / den
    wn = _sqrt0(w2, xp)
    # 1 + κ|w|^2 = (1 + κ|x|^2)(1 + κ|y|^2) / den, without cancellation for κ < 0
    return 2.0 * wn * _A(k * w2, xp, _one_plus(x2, k, xp) * _one_plus(y2, k, xp) / den, sg)


def dist(x: Array, y: Array, k: Any, xp: Namespace | None = None) -> Array:
    """Geodesic distance ``d_κ(x, y) = 2 artan_κ|(-x) (+) y|`` (Bachmann et al. 2020), shape ``(..., 1)``.
    Exactly 0 for ``x = y``. At κ = 0 it is ``2|x - y|``: the metric is ``λ_x^2 g_E = 4 g_E`` there
    (as geoopt's ``Stereographic(0)``), so the κ -> 0 limit is the Euclidean distance scaled by 2."""
    xp = xp or namespace(x, y)
    sg, k = _sign(k), _k(k, x, xp)
    d = x - y
    return _dist_from(_sq(d, xp), _sq(x, xp), _sq(y, xp), _dot(x, y, xp), k, xp, sg)


def dist0(x: Array, k: Any, xp: Namespace | None = None) -> Array:
    """``d_κ(0, x) = 2 artan_κ|x|``, shape ``(..., 1)``."""
    xp = xp or namespace(x)
    sg, k = _sign(k), _k(k, x, xp)
    x2 = _sq(x, xp)
    return 2.0 * _sqrt0(x2, xp) * _A(k * x2, xp, 1.0 + k * x2, sg)


def pairwise_sqdist(a: Array, b: Array, xp: Namespace) -> Array:
    """``|a_i - b_j|^2`` for ``a (..., M, D)``, ``b (..., N, D)`` -> ``(..., M, N)``, from the differences
    (in blocks of rows, so memory stays bounded), not from ``|a|^2 + |b|^2 - 2<a, b>``, whose
    cancellation gives distances of order ``sqrt(eps)`` between equal points (self-attention)."""

    m, n, d = _dim(a.shape[-2]), _dim(b.shape[-2]), _dim(a.shape[-1])
    shape = (*_bshapes(tuple(a.shape[:-2]), tuple(b.shape[:-2])), n, d)
    bb = xp.expand_dims(b, axis=-3)
    if None in shape or m is None:  # symbolic lengths (a graph being exported): the whole-matrix form
        diff = xp.expand_dims(a, axis=-2) - bb
        return xp.vecdot(diff, diff, axis=-1)
    rows = max(1, _PAIR_BLOCK // max(1, math.prod(shape)))
    if rows >= m:
        diff = xp.expand_dims(a, axis=-2) - bb
        return xp.vecdot(diff, diff, axis=-1)
    parts = []
    for i in range(0, m, rows):
        diff = xp.expand_dims(a[..., i : i + rows, :], axis=-2) - bb
        parts.append(xp.vecdot(diff, diff, axis=-1))
    return xp.concat(parts, axis=-2)


def pairwise_dist(a: Array, b: Array, k: Any, xp: Namespace | None = None) -> Array:
    """``d_κ(a_i, b_j)`` for ``a (..., M, D)``, ``b (..., N, D)`` -> ``(..., M, N)``; ``k`` broadcasts
    against ``(..., M, N)`` (a per-batch curvature has shape ``(..., 1, 1)``)."""
    xp = xp or namespace(a, b)
    sg, k = _sign(k), _k(k, a, xp)
    sq = pairwise_sqdist(a, b, xp)
    a2 = _sq(a, xp)  # (..., M, 1)
    b2 = xp.expand_dims(xp.sum(b * b, axis=-1), axis=-2)  # (..., 1, N)
    ab = None if sg is not None and sg <= 0 else xp.matmul(a, xp.matrix_transpose(b))
    return _dist_from(sq, a2, b2, ab, k, xp, sg)


def project(x: Array, k: Any, eps: float | None = None, xp: Namespace | None = None) -> Array:
    """For κ < 0, scale vectors longer than ``(1 - eps)/sqrt(-κ)`` back to that norm (geoopt's ``projx``;
    ``eps`` defaults to :func:`margin` of the dtype); for κ >= 0 the chart is all of ``R^D`` and ``x`` is
    returned unchanged."""
    xp = xp or namespace(x)
    k = _k(k, x, xp)
    e = margin(x.dtype) if eps is None else float(eps)
    neg = k < 0
    maxnorm = (1.0 - e) / xp.sqrt(xp.where(neg, -k, xp.ones_like(k)))
    # compared as -κ|x|^2 > (1 - e)^2 with the exact |x|^2: the floored norm of _norm (1e-15) would
    # wrongly shrink every point of a ball of radius < 1e-15 (curvature > 1e30)
    sq = _sq(x, xp)
    over = neg & (sq * xp.where(neg, -k, xp.zeros_like(k)) > (1.0 - e) ** 2)
    n = xp.sqrt(xp.where(over, sq, xp.ones_like(sq)))
    return xp.where(over, x * (maxnorm / n), x)


def antipode(x: Array, k: Any, xp: Namespace | None = None) -> Array:
    """The antipode: ``-x/(κ|x|^2)`` for κ > 0 (the point opposite ``x`` on the sphere), ``-x`` for κ <= 0
    (as geoopt). The origin's antipode on the sphere is the north pole at infinity (a huge vector)."""
    xp = xp or namespace(x)
    k = _k(k, x, xp)
    kx2 = xp.clip(k * _sq(x, xp), min=_tiny(x, xp))
    return xp.where(k > 0, -x / kx2, -x)


def midpoint_aggregate(w: Array, x: Array, k: Any, xp: Namespace | None = None) -> Array:
    """Weighted gyromidpoints of ``x (..., N, D)`` for each row of ``w (..., M, N)`` -> ``(..., M, D)``;
    ``k`` broadcasts against ``(..., 1, 1)`` (a per-batch curvature).

    Ungar's gyromidpoint ``1/2 (x) (sum_i w_i λ_i x_i / sum_i w_i (λ_i - 1))`` (Bachmann et al. 2020, eq. 8)
    with ``N = sum_i w_i λ_i x_i`` and ``D = sum_i w_i (λ_i - 1)`` is ``N / (D + sqrt(D^2 + κ|N|^2))``
    (``1/2 (x)_κ y = y/(1 + sqrt(1 + κ|y|^2))``). For κ < 0 this is the Einstein midpoint; for κ = 0 the
    weighted mean; for κ > 0 it is the stereographic image of the normalised weighted sum of the points
    on the sphere (``(λ_i x_i, (λ_i - 1)/sqrt κ)`` in ``R^{D+1}``), which picks between the midpoint and
    its antipode by that extrinsic mean, where geoopt compares unweighted distance sums. For ``D < 0``
    it is evaluated as ``N (sqrt(D^2 + κ|N|^2) - D) / (κ|N|^2)``. Two matrix products; an all-zero row of
    weights gives the origin.
    """
    xp = xp or namespace(w, x)
    k = _k(k, x, xp)
    x2 = _sq(x, xp)  # (..., N, 1)
    lam = 2.0 / _one_plus(x2, k, xp)  # (..., N, 1); a (..., 1, 1) k broadcasts against it
    num = xp.matmul(w, lam * x)  # (..., M, D)
    den = xp.matmul(w, lam - 1.0)  # (..., M, 1)
    n2 = _sq(num, xp)
    root = xp.sqrt(xp.clip(den * den + k * n2, min=0.0))
    tiny = _tiny(x, xp)
    pos = den >= 0
    d_pos = den + root
    d_neg = k * n2
    scale_neg = (root - den) / xp.where(d_neg > tiny, d_neg, xp.ones_like(d_neg))
    scale = xp.where(pos, 1.0 / xp.where(d_pos > 0, d_pos, xp.ones_like(d_pos)), scale_neg)
    scale = xp.where(pos & (d_pos <= 0), xp.zeros_like(scale), scale)
    return scale * num


def weighted_midpoint(x: Array, weights: Array | None, k: Any, xp: Namespace | None = None) -> Array:
    """Weighted gyromidpoint of the points ``x (..., N, D)`` with ``weights (..., N)`` (None = uniform)
    -> ``(..., D)``; ``k`` broadcasts against ``(..., 1)``. See :func:`midpoint_aggregate`."""
    xp = xp or namespace(x, weights)
    if weights is None:
        weights = xp.ones(tuple(x.shape[:-1]), dtype=x.dtype, device=array_api_compat.device(x))
    kk = _k(k, x, xp)
    kk = xp.expand_dims(kk, axis=-1) if kk.ndim else kk
    return midpoint_aggregate(xp.expand_dims(weights, axis=-2), x, kk, xp)[..., 0, :]


def frechet_aggregate(
    w: Array,
    x: Array,
    k: Any,
    xp: Namespace | None = None,
    *,
    iters: int = 100,
    tol: float = 0.0,
    init: Array | None = None,
    eps: float | None = None,
) -> Array:
    """Weighted Fréchet (Karcher) means ``argmin_mu sum_j w_j d_κ(mu, x_j)^2`` of ``x (..., N, D)`` for each
    row of ``w (..., M, N)`` (rows sum to 1, or are 0) -> ``(..., M, D)``; ``k`` broadcasts against
    ``(..., 1, 1)``.

    Riemannian gradient descent from ``init`` (default: the gyromidpoint, :func:`midpoint_aggregate`)::

        mu <- exp_mu(t sum_j w_j log_mu(x_j)),   t = 1 / max(1, sum_j w_j h(d_j))

    with ``h(d) = sqrt(-κ) d coth(sqrt(-κ) d)`` for κ < 0 (a bound on the Hessian of ``d^2/2`` across the
    geodesic; the plain step ``t = 1`` diverges for points spread more than about ``2/sqrt(-κ)``) and
    ``h = 1`` for κ >= 0 (where ``sqrt(κ) d cot(sqrt(κ) d) <= 1``; on the sphere the mean is unique for
    points within an open hemisphere). At κ = 0 the first step lands on the weighted mean.

    The sum of logarithms needs no ``(M, N, D)`` tensor: with ``β = 1 + κ|mu|^2``,
    ``α_j = β - κ|mu - x_j|^2`` and ``δ_j`` the denominator of ``(-mu) (+) x_j``,
    ``log_mu(x_j) = β A(κ|w_j|^2) (β x_j - α_j mu) / δ_j`` (``w_j = (-mu) (+) x_j``), so
    ``sum_j a_j log_mu(x_j) = β (β (a A/δ) @ x - (sum_j a_j A_j α_j/δ_j) mu)``: ``(M, N)`` scalars and
    one matrix product. ``tol > 0`` stops once the longest step (in distance) is shorter than ``tol``
    (on traced values, ``jax.jit`` / ``torch.compile``, all ``iters`` steps are traced and the means
    are frozen from the step where the test would have stopped: the same result; compile time grows
    with ``iters``).
    For κ < 0 every step is projected into the ball with the margin ``eps`` (default :func:`margin`).
    """
    xp = xp or namespace(w, x)
    sg, k = _sign(k), _k(k, x, xp)
    e = margin(x.dtype) if eps is None else float(eps)
    mu = midpoint_aggregate(w, x, k, xp) if init is None else init
    mu = project(mu, k, e, xp)
    x2 = xp.expand_dims(xp.sum(x * x, axis=-1), axis=-2)  # (..., 1, N)
    opx = _one_plus(x2, k, xp)
    done = None
    for _ in range(iters):
        sq = pairwise_sqdist(mu, x, xp)  # (..., M, N)
        mu2 = _sq(mu, xp)  # (..., M, 1)
        mux = xp.matmul(mu, xp.matrix_transpose(x))
        beta = _one_plus(mu2, k, xp)
        den = _den(mu2, x2, -mux, sq, k, xp, sg)
        w2 = sq / den
        a = w * _A(k * w2, xp, beta * opx / den, sg) / den
        alpha = beta - k * sq
        v = beta * (beta * xp.matmul(a, x) - xp.sum(a * alpha, axis=-1, keepdims=True) * mu)
        # step size from the curvature bound h(d), d = 2|w| A(κ|w|^2)
        d = 2.0 * _sqrt0(w2, xp) * _A(k * w2, xp, beta * opx / den, sg)
        r = xp.sqrt(xp.clip(-k * d * d, min=1e-8))
        h = xp.where(k < 0, r / xp.tanh(r), xp.ones_like(r))
        lip = xp.sum(w * h, axis=-1, keepdims=True)
        step = v / xp.clip(lip, min=1.0)
        new = project(expmap(mu, step, k, xp), k, e, xp)
        if tol <= 0 or math.prod(mu.shape) == 0:
            mu = new
            continue
        moved = 2.0 * _norm(step, xp) / beta  # λ_mu |step|, the length of the step
        going = xp.max(moved) > tol
        if is_traced(going):
            # no early exit inside a graph (jax.jit, torch.compile): every step is traced, and the
            # means are frozen from the step on which the loop would have stopped (the same result)
            mu = new if done is None else xp.where(done, mu, new)
            done = ~going if done is None else done | ~going
            continue
        mu = new
        if not bool(going):
            break
    return mu


def curvature_from_raw(raw: Array, lo: float, hi: float, xp: Namespace | None = None) -> Array:
    """A learnable curvature: the unconstrained parameter ``raw`` mapped into the open interval ``(lo, hi)``
    by ``κ = lo + (hi - lo) sigmoid(raw)`` (smooth, and since every formula here is smooth through κ = 0,
    an interval may contain 0 and κ may change sign while it learns)."""
    xp = xp or namespace(raw)
    return lo + (hi - lo) / (1.0 + xp.exp(-raw))


def raw_from_curvature(k: float, lo: float, hi: float) -> float:
    """The inverse of :func:`curvature_from_raw` for a number ``lo < k < hi``: ``logit((k - lo)/(hi - lo))``."""
    t = (k - lo) / (hi - lo)
    return math.log(t / (1.0 - t))


#: curvatures of smaller magnitude are the flat limit to every floating precision (see :func:`effective_curvature`)
FLAT_CURVATURE = 1e-30


def effective_curvature(kappa: float) -> float:
    """``kappa``, or ``0.0`` (the flat limit) when ``|kappa| < FLAT_CURVATURE``.

    The κ-stereographic maps and distances differ from their flat (κ = 0, ``d = 2|x - y|``) forms by a
    relative ``O(|κ| |x|^2)`` (Bachmann, Bécigneul & Ganea 2020, "Constant Curvature Graph Convolutional
    Networks", section 3), below float64's resolution for ``|κ| < 1e-30`` and ``|x| < 1e7``; computing
    with such a ``κ`` itself underflows ``sqrt|κ|`` (``1e-300`` is 0 in float32) and gives ``0/0 = NaN``.
    """
    return 0.0 if abs(kappa) < FLAT_CURVATURE else kappa
