"""Contrastive losses with analytic gradients: InfoNCE and triplet (local contrastive).

Both compute in float64 NumPy, offer ``compute(...) -> float`` and ``compute_with_gradients(...) ->
(float, grads)`` with ``grads`` a dict of arrays shaped like the inputs (``"anchor"``, ``"positive"``,
``"negatives"``), and are checked against central finite differences in the tests.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._array import finite_float, one_of, positive_float
from ..errors import NonFiniteError, ShapeError
from ._checks import matrix, vectors

__all__ = ["InfoNCELoss", "TripletLoss", "LocalContrastiveLoss"]

_EPS = 1e-12


def _normalise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    big = float(np.max(np.abs(x))) if x.size else 0.0
    if big > 1e150:  # |x|^2 would overflow: the scaled norm m |x / m|, m = max |x_i| per row
        m = np.max(np.abs(x), axis=-1, keepdims=True)
        n = np.maximum(m * np.linalg.norm(x / np.where(m > 0, m, 1.0), axis=-1, keepdims=True), _EPS)
    else:
        n = np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPS)
    return x / n, n


def _unnormalise_grad(g_hat: np.ndarray, x_hat: np.ndarray, norm: np.ndarray) -> np.ndarray:
    """Back-propagate a gradient w.r.t. ``x / |x|`` to ``x``: ``(g - (g . x_hat) x_hat) / |x|``."""
    return (g_hat - np.sum(g_hat * x_hat, axis=-1, keepdims=True) * x_hat) / norm


def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = np.max(z, axis=-1, keepdims=True)
    return (m + np.log(np.sum(np.exp(z - m), axis=-1, keepdims=True)))[..., 0]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


_FMAX = float(np.finfo(np.float64).max)


def _pow2_below(x: float) -> float:
    """A power of two ``<= max(x, 1)`` (dividing by it is exact)."""
    return math.ldexp(1.0, max(0, math.frexp(x)[1] - 1)) if x > 1.0 else 1.0


def _gain_terms(zs: np.ndarray, log_gain: float, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(logsumexp(z) - z_target, softmax(z))`` per row for logits ``z = exp(log_gain) * zs`` that may exceed float64.

    Only the differences ``z - max z = gain (zs - max zs) <= 0`` enter (the log-sum-exp shift), clamped
    at ``-FMAX`` (whose ``exp`` is 0, as that of the exact value); ``zs`` is finite. The flag says
    whether a target's difference was clamped, i.e. the loss itself exceeds float64.
    """
    gap = np.max(zs, axis=-1, keepdims=True) - zs  # >= 0
    g = math.exp(min(log_gain, math.log(_FMAX)))
    with np.errstate(over="ignore"):  # a product rounded past FMAX is -inf: exp gives the same 0
        zd = -(np.minimum(gap, _FMAX / g) * g)
    e = np.exp(zd)
    tot = np.sum(e, axis=-1)
    gap_t = np.take_along_axis(gap, target[:, None], axis=-1)[:, 0]
    pos = gap_t[gap_t > 0]
    clamped = bool(pos.size) and float(np.max(np.log(pos))) + log_gain >= math.log(_FMAX / 2.0)
    return np.log(tot) - np.take_along_axis(zd, target[:, None], axis=-1)[:, 0], e / tot[:, None], clamped


class InfoNCELoss:
    """InfoNCE (van den Oord et al. 2018, "Representation Learning with Contrastive Predictive Coding"):

        L = mean_b [ -log( exp(s(a_b, p_b)/T) / (exp(s(a_b, p_b)/T) + sum_n exp(s(a_b, n)/T)) ) ]

    ``temperature`` T (0.07); ``similarity`` ``"cosine"`` (default) or ``"dot"``; ``reduction``
    ``"mean"`` or ``"sum"`` over anchors. Negatives: ``(N, D)`` shared by every anchor, ``(B, N, D)`` per
    anchor, or ``None`` for in-batch negatives (anchor ``b`` against every positive ``p_j``, ``j != b``,
    the symmetric-less form of SimCLR/CLIP, needs ``B >= 2``). ``temperature`` may be changed between
    calls (e.g. by a :class:`~attnkit.training.TemperatureScheduler`).
    """

    def __init__(self, temperature: float = 0.07, similarity: str = "cosine", reduction: str = "mean") -> None:
        self.temperature = positive_float(temperature, "temperature")
        self.similarity = one_of(similarity, "similarity", ("cosine", "dot"))
        self.reduction = one_of(reduction, "reduction", ("mean", "sum"))

    def __repr__(self) -> str:
        return f"InfoNCELoss(temperature={self.temperature!r}, similarity={self.similarity!r}, reduction={self.reduction!r})"

    def compute(self, anchor: Any, positive: Any, negatives: Any = None) -> float:
        """The loss (a float)."""
        return self._run(anchor, positive, negatives, grads=False)[0]

    def compute_with_gradients(self, anchor: Any, positive: Any, negatives: Any = None) -> tuple[float, dict[str, np.ndarray]]:
        """The loss and its gradients w.r.t. ``anchor``, ``positive`` and ``negatives`` (when given)."""
        loss, g = self._run(anchor, positive, negatives, grads=True)
        assert g is not None
        return loss, g

    def _run(self, anchor: Any, positive: Any, negatives: Any, grads: bool) -> tuple[float, dict[str, np.ndarray] | None]:
        t = positive_float(self.temperature, "temperature")
        a, single = vectors(anchor, "anchor")
        p, _ = vectors(positive, "positive", a.shape[1])
        b, d = a.shape
        if p.shape[0] != b:
            raise ShapeError(f"positive: expected one positive per anchor, B = {b} rows, got {p.shape[0]}")
        neg = None
        if negatives is not None:
            neg = matrix(negatives, "negatives", (2, 3), d)
            if neg.ndim == 3 and neg.shape[0] != b:
                raise ShapeError(f"negatives: expected (B={b}, N, D) per-anchor negatives or (N, D) shared ones, got B = {neg.shape[0]}")
            if neg.shape[-2] == 0:
                raise ShapeError("negatives: expected at least one negative, got N = 0")
        elif b < 2:
            raise ShapeError("negatives: in-batch negatives (negatives=None) need at least 2 anchors, got 1")
        cos = self.similarity == "cosine"
        if cos:
            ah, an = _normalise(a)
            ph, pn = _normalise(p)
            if neg is not None:
                nh, nn = _normalise(neg)
        else:
            ah, ph = a, p
            if neg is not None:
                nh = neg
        scale = 1.0 / b if self.reduction == "mean" else 1.0
        # dot logits past float64 (|a| |p| D / T ~ 1e400 at 1e200 inputs): exact power-of-two rescaling of
        # the inputs and log-sum-exp over the differences z - max z only (see _gain_terms)
        ma = float(np.max(np.abs(ah))) if ah.size else 0.0
        mp = max(float(np.max(np.abs(x))) if x.size else 0.0 for x in ((ph,) if neg is None else (ph, nh)))
        if not cos and ma * mp * d / t > _FMAX / 2.0**16:
            return self._run_rescaled(ah, ph, nh if neg is not None else None, t, scale, single, grads)
        if neg is None:  # in-batch: logits (B, B), target the diagonal
            z = (ah @ ph.T) / t
            loss_b = _logsumexp(z) - np.diag(z)
            loss = float(np.sum(loss_b) * scale)
            if not grads:
                return loss, None
            gz = (_softmax(z) - np.eye(b)) * (scale / t)
            ga, gp = gz @ ph, gz.T @ ah
            gn = None
        else:
            pos = np.sum(ah * ph, axis=-1)
            negs = ah @ nh.T if nh.ndim == 2 else np.einsum("bd,bnd->bn", ah, nh)
            z = np.concatenate([pos[:, None], negs], axis=-1) / t
            loss = float(np.sum(_logsumexp(z) - z[:, 0]) * scale)
            if not grads:
                return loss, None
            gz = _softmax(z)
            gz[:, 0] -= 1.0
            gz *= scale / t
            gpos, gneg = gz[:, 0], gz[:, 1:]
            ga = gpos[:, None] * ph + (gneg @ nh if nh.ndim == 2 else np.einsum("bn,bnd->bd", gneg, nh))
            gp = gpos[:, None] * ah
            gn = gneg.T @ ah if nh.ndim == 2 else gneg[:, :, None] * ah[:, None, :]
        if cos:
            ga, gp = _unnormalise_grad(ga, ah, an), _unnormalise_grad(gp, ph, pn)
            if gn is not None:
                gn = _unnormalise_grad(gn, nh, nn)
        out = {"anchor": ga[0] if single else ga, "positive": gp[0] if single else gp}
        if gn is not None:
            out["negatives"] = gn
        return loss, out

    def _run_rescaled(
        self, a: np.ndarray, p: np.ndarray, nh: np.ndarray | None, t: float, scale: float, single: bool, grads: bool
    ) -> tuple[float, dict[str, np.ndarray] | None]:
        """The dot-similarity loss for inputs whose logits overflow float64 (same formulas, rescaled)."""
        b = a.shape[0]
        sa = _pow2_below(float(np.max(np.abs(a))))
        sp = _pow2_below(max(float(np.max(np.abs(x))) for x in ((p,) if nh is None else (p, nh))))
        a2, p2 = a / sa, p / sp
        if nh is None:
            zs = (a2 @ p2.T) / t
            target = np.arange(b)
        else:
            n2 = nh / sp
            negs = a2 @ n2.T if n2.ndim == 2 else np.einsum("bd,bnd->bn", a2, n2)
            zs = np.concatenate([np.sum(a2 * p2, axis=-1)[:, None], negs], axis=-1) / t
            target = np.zeros(b, dtype=np.intp)
        loss_b, sm, clamped = _gain_terms(zs, math.log(sa) + math.log(sp), target)
        with np.errstate(over="ignore"):
            loss = float(np.sum(loss_b) * scale)
        if clamped or not math.isfinite(loss):
            raise NonFiniteError(
                "anchor, positive, negatives: the loss of these inputs exceeds the float64 range "
                f"(logits up to ~{float(np.max(np.abs(zs))):.3g} * 2^{math.log2(sa) + math.log2(sp):.0f}); "
                "expected smaller inputs or similarity='cosine'"
            )
        if not grads:
            return loss, None
        gz = sm
        gz[np.arange(b), target] -= 1.0
        gz *= scale / t
        if nh is None:
            ga, gp, gn = gz @ p, gz.T @ a, None
        else:
            gpos, gneg = gz[:, 0], gz[:, 1:]
            ga = gpos[:, None] * p + (gneg @ nh if nh.ndim == 2 else np.einsum("bn,bnd->bd", gneg, nh))
            gp = gpos[:, None] * a
            gn = gneg.T @ a if nh.ndim == 2 else gneg[:, :, None] * a[:, None, :]
        out = {"anchor": ga[0] if single else ga, "positive": gp[0] if single else gp}
        if gn is not None:
            out["negatives"] = gn
        return loss, out


class TripletLoss:
    """Triplet margin loss (Schroff et al. 2015, "FaceNet"), also the local contrastive loss:

        L = mean over (b, p, n) of max(0, d(a_b, p) - d(a_b, n) + margin)

    An anchor's *local* neighbourhood gives its positives and the rest its negatives: ``positive`` is
    ``(B, D)`` (one each) or ``(B, P, D)`` (several), ``negatives`` ``(B, D)`` or ``(B, N, D)``; every
    positive is paired with every negative of its anchor. ``distance``: ``"euclidean"`` (default),
    ``"squared"`` (squared Euclidean) or ``"cosine"`` (``1 - cos``). ``reduction`` ``"mean"`` over all
    triplets or ``"sum"``. Gradients are the subgradient 0 on the hinge's flat side (and at ``d = 0``
    for the Euclidean distance).
    """

    def __init__(self, margin: float = 1.0, distance: str = "euclidean", reduction: str = "mean") -> None:
        self.margin = finite_float(margin, "margin")
        self.distance = one_of(distance, "distance", ("euclidean", "squared", "cosine"))
        self.reduction = one_of(reduction, "reduction", ("mean", "sum"))

    def __repr__(self) -> str:
        return f"TripletLoss(margin={self.margin!r}, distance={self.distance!r}, reduction={self.reduction!r})"

    def _dist(self, a: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, Any]:
        """Distances ``(B, K)`` between ``a (B, D)`` and ``x (B, K, D)`` and what the gradient needs."""
        if self.distance == "cosine":
            ah, an = _normalise(a)
            xh, xn = _normalise(x)
            s = np.einsum("bd,bkd->bk", ah, xh)
            return 1.0 - s, (ah, an, xh, xn)
        diff = a[:, None, :] - x
        big = float(np.max(np.abs(diff))) if diff.size else 0.0
        if big > 1e150:  # |diff|^2 would overflow float64: the scaled norm m sqrt(sum (diff/m)^2), m = max|diff|
            m = np.max(np.abs(diff), axis=-1, keepdims=True)
            dist = m[..., 0] * np.sqrt(np.sum(np.square(diff / np.where(m > 0, m, 1.0)), axis=-1))
            if self.distance == "squared":
                with np.errstate(over="ignore"):
                    sq = dist * dist
                if not np.isfinite(sq).all():
                    raise NonFiniteError(
                        "anchor, positive, negatives: squared distances exceed the float64 range; expected smaller inputs or distance='euclidean'"
                    )
                return sq, diff
            return dist, diff
        sq = np.sum(diff * diff, axis=-1)
        if self.distance == "squared":
            return sq, diff
        return np.sqrt(sq), diff

    def _dist_grad(self, g: np.ndarray, dist: np.ndarray, aux: Any) -> tuple[np.ndarray, np.ndarray]:
        """Given dL/dd ``g (B, K)``, return dL/da ``(B, D)`` and dL/dx ``(B, K, D)``."""
        if self.distance == "cosine":
            ah, an, xh, xn = aux
            # d = 1 - a_hat . x_hat
            ga_hat = -np.einsum("bk,bkd->bd", g, xh)
            gx_hat = -g[:, :, None] * ah[:, None, :]
            return _unnormalise_grad(ga_hat, ah, an), _unnormalise_grad(gx_hat, xh, xn)
        diff = aux
        if self.distance == "squared":
            coef = 2.0 * g
        else:
            coef = np.where(dist > 0, g / np.where(dist > 0, dist, 1.0), 0.0)
        gx = -coef[:, :, None] * diff
        return -np.sum(gx, axis=1), gx

    @staticmethod
    def _per_anchor(x: np.ndarray, name: str, k: str, b: int, d: int, single: bool) -> np.ndarray:
        """``(B, K, D)`` view of one or several vectors per anchor (a single anchor: ``(D,)`` or ``(K, D)``)."""
        if single and x.ndim in (1, 2):
            return x.reshape(1, -1, d)
        if not single and x.ndim == 2 and x.shape[0] == b:
            return x[:, None, :]
        if not single and x.ndim == 3 and x.shape[0] == b:
            return x
        want = f"(D,) or ({k}, D)" if single else f"(B={b}, D) or (B={b}, {k}, D)"
        raise ShapeError(f"{name}: expected {want}, got shape {tuple(x.shape)}")

    def compute(self, anchor: Any, positive: Any, negatives: Any) -> float:
        """The loss (a float)."""
        return self._run(anchor, positive, negatives, grads=False)[0]

    def compute_with_gradients(self, anchor: Any, positive: Any, negatives: Any) -> tuple[float, dict[str, np.ndarray]]:
        """The loss and its (sub)gradients w.r.t. ``anchor``, ``positive`` and ``negatives``."""
        loss, g = self._run(anchor, positive, negatives, grads=True)
        assert g is not None
        return loss, g

    def _run(self, anchor: Any, positive: Any, negatives: Any, grads: bool) -> tuple[float, dict[str, np.ndarray] | None]:
        a, single = vectors(anchor, "anchor")
        b, d = a.shape
        pos = matrix(positive, "positive", (1, 2, 3), d)
        neg = matrix(negatives, "negatives", (1, 2, 3), d)
        p_shape, n_shape = pos.shape, neg.shape
        p3 = self._per_anchor(pos, "positive", "P", b, d, single)
        n3 = self._per_anchor(neg, "negatives", "N", b, d, single)
        if p3.shape[1] == 0 or n3.shape[1] == 0:
            raise ShapeError("positive, negatives: expected at least one positive and one negative per anchor")
        dp, auxp = self._dist(a, p3)  # (B, P)
        dn, auxn = self._dist(a, n3)  # (B, N)
        h = dp[:, :, None] - dn[:, None, :] + self.margin  # (B, P, N)
        count = h.size
        scale = 1.0 / count if self.reduction == "mean" else 1.0
        loss = float(np.sum(np.maximum(h, 0.0)) * scale)
        if not grads:
            return loss, None
        active = (h > 0).astype(np.float64) * scale
        ga_p, gp = self._dist_grad(np.sum(active, axis=2), dp, auxp)
        ga_n, gn = self._dist_grad(-np.sum(active, axis=1), dn, auxn)
        ga = ga_p + ga_n
        return loss, {"anchor": ga[0] if single else ga, "positive": gp.reshape(p_shape), "negatives": gn.reshape(n_shape)}


#: The local contrastive loss of upstream's training module is the triplet margin loss over an anchor's
#: local positives and its negatives (see :class:`TripletLoss`).
LocalContrastiveLoss = TripletLoss
