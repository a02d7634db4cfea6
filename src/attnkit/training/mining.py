"""Negative mining for contrastive training: random, hard, semi-hard, distance-weighted, in-batch.

``NegativeMiner(strategy, num_negatives, ...).mine(anchors, candidates, positives=None, exclude=None)``
returns an ``(B, num_negatives)`` int64 array of candidate indices for each anchor; :func:`gather`
turns it into the ``(B, K, D)`` negatives the losses take. Randomness comes from a seeded
``numpy.random.Generator``, so a run is reproducible.

* ``random``: uniformly without replacement among the allowed candidates;
* ``hard``: the ``K`` closest allowed candidates to the anchor;
* ``semi_hard`` (Schroff et al. 2015, FaceNet): candidates with ``d(a,p) < d(a,n) < d(a,p) + margin``,
  closest first; if fewer than ``K`` exist the list is filled with the nearest easier negatives
  (``d(a,n) >= d(a,p) + margin``) and then the least hard of the hard ones (``d(a,n) <= d(a,p)``,
  farthest first); needs ``positives``;
* ``distance_weighted`` (Wu et al. 2017, "Sampling Matters in Deep Embedding Learning"): on
  L2-normalised embeddings in ``D`` dimensions, sample ``n`` with probability proportional to
  ``1/q(d)`` with ``q(d) ∝ d^(D-2) (1 - d^2/4)^((D-3)/2)`` the density of pairwise distances on the
  sphere; ``d`` is clipped below at ``cutoff`` (which bounds the weights, the paper's ``lambda``) and
  candidates farther than ``nonzero_loss_cutoff`` are excluded (all allowed ones are used, uniformly,
  for an anchor with fewer than ``K`` inside it); without replacement (Gumbel top-k on the log weights);
* ``in_batch``: the other items of the batch are the negatives: ``candidates`` defaults to
  ``positives`` and anchor ``i`` may not take candidate ``i``; ``K`` of the ``B - 1`` are drawn at random
  (all of them, in order, when ``K = B - 1``).

``exclude``: per anchor, candidate indices that are never chosen (e.g. the anchor's own positive):
an ``(B,)`` int array or a list of lists. Distances are Euclidean (``distance="euclidean"``) or
``1 - cos`` (``"cosine"``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._array import checked_options, finite_float, one_of, positive_float, positive_int
from ..errors import ConfigError, ShapeError
from ._checks import matrix, vectors

__all__ = ["NegativeMiner", "gather", "STRATEGIES"]

STRATEGIES = ("random", "hard", "semi_hard", "distance_weighted", "in_batch")


def gather(candidates: Any, indices: Any) -> np.ndarray:
    """``candidates[indices]``: ``(N, D)`` and ``(B, K)`` -> ``(B, K, D)`` negatives."""
    c = matrix(candidates, "candidates", (2,))
    idx = np.asarray(indices)
    if idx.dtype.kind not in "iu" or idx.ndim != 2:
        raise ShapeError(f"indices: expected a (B, K) integer array, got {idx.dtype} shape {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= c.shape[0]):
        raise ShapeError(f"indices: expected values in [0, {c.shape[0]}), got {int(idx.min())}..{int(idx.max())}")
    return c[idx]


class NegativeMiner:
    """Pick negatives for each anchor (see the module docstring for the strategies)."""

    @checked_options
    def __init__(
        self,
        strategy: str = "hard",
        num_negatives: int = 5,
        margin: float = 0.2,
        distance: str = "euclidean",
        cutoff: float = 0.5,
        nonzero_loss_cutoff: float = 1.4,
        seed: int | None = None,
    ) -> None:
        self.strategy = one_of(strategy.replace("-", "_") if isinstance(strategy, str) else strategy, "strategy", STRATEGIES)
        self.num_negatives = positive_int(num_negatives, "num_negatives")
        self.margin = finite_float(margin, "margin")
        self.distance = one_of(distance, "distance", ("euclidean", "cosine"))
        self.cutoff = positive_float(cutoff, "cutoff")
        self.nonzero_loss_cutoff = positive_float(nonzero_loss_cutoff, "nonzero_loss_cutoff")
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def __repr__(self) -> str:
        return f"NegativeMiner(strategy={self.strategy!r}, num_negatives={self.num_negatives}, seed={self.seed!r})"

    def reset(self) -> None:
        """Restart the random stream from ``seed``."""
        self.rng = np.random.default_rng(self.seed)

    def _dist(self, a: np.ndarray, c: np.ndarray) -> np.ndarray:
        if self.distance == "cosine":
            an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
            cn = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
            return 1.0 - an @ cn.T
        sq = np.sum(a * a, 1)[:, None] + np.sum(c * c, 1)[None, :] - 2.0 * a @ c.T
        return np.sqrt(np.maximum(sq, 0.0))

    def _allowed(self, b: int, n: int, exclude: Any) -> np.ndarray:
        allowed = np.ones((b, n), dtype=bool)
        if exclude is None:
            return allowed
        if (
            isinstance(exclude, np.ndarray)
            and exclude.ndim == 1
            or (isinstance(exclude, (list, tuple)) and exclude and all(isinstance(e, (int, np.integer)) for e in exclude))
        ):
            ex = np.asarray(exclude)
            if ex.dtype.kind not in "iu" or ex.shape != (b,):
                raise ShapeError(f"exclude: expected one index per anchor, shape ({b},), or a list of {b} lists, got {ex.shape}")
            rows = [[int(e)] for e in ex]
        else:
            rows = list(exclude)
            if len(rows) != b:
                raise ShapeError(f"exclude: expected one entry per anchor ({b}), got {len(rows)}")
        for i, r in enumerate(rows):
            for e in np.atleast_1d(np.asarray(r, dtype=np.int64)):
                if not 0 <= e < n:
                    raise ShapeError(f"exclude: candidate index {int(e)} is outside [0, {n})")
                allowed[i, e] = False
        return allowed

    def _gumbel_topk(self, logw: np.ndarray, k: int) -> np.ndarray:
        """Sample ``k`` columns per row without replacement with probabilities ∝ exp(logw) (Gumbel top-k)."""
        g = -np.log(-np.log(self.rng.uniform(np.finfo(np.float64).tiny, 1.0, size=logw.shape)))
        keys = np.where(np.isfinite(logw), logw + g, -np.inf)
        return np.argsort(-keys, axis=1, kind="stable")[:, :k]

    def mine(self, anchors: Any, candidates: Any = None, positives: Any = None, exclude: Any = None) -> np.ndarray:
        """``(B, num_negatives)`` candidate indices per anchor."""
        a, _ = vectors(anchors, "anchors")
        b, d = a.shape
        p = None
        if positives is not None:
            p, _ = vectors(positives, "positives", d)
            if p.shape[0] != b:
                raise ShapeError(f"positives: expected one positive per anchor, B = {b} rows, got {p.shape[0]}")
        if self.strategy == "in_batch":
            if candidates is None:
                if p is None:
                    raise ShapeError("positives: the in_batch strategy needs positives (or candidates) to draw from")
                c = p
            else:
                c = matrix(candidates, "candidates", (2,), d)
            if c.shape[0] != b:
                raise ShapeError(f"candidates: in-batch negatives need one candidate per anchor, B = {b}, got {c.shape[0]}")
            allowed = self._allowed(b, b, exclude) & ~np.eye(b, dtype=bool)
        else:
            if candidates is None:
                raise ShapeError(f"candidates: expected an (N, {d}) array of candidate negatives, got None")
            c = matrix(candidates, "candidates", (2,), d)
            allowed = self._allowed(b, c.shape[0], exclude)
        k = self.num_negatives
        fewest = int(allowed.sum(1).min()) if b else 0
        if fewest < k:
            raise ConfigError(f"num_negatives: an anchor has only {fewest} allowed candidates, fewer than num_negatives = {k}")
        if self.strategy in ("random", "in_batch"):
            if self.strategy == "in_batch" and k == b - 1 and exclude is None:
                return np.stack([np.delete(np.arange(b), i) for i in range(b)]).astype(np.int64)
            return self._gumbel_topk(np.where(allowed, 0.0, -np.inf), k).astype(np.int64)
        dist = self._dist(a, c)
        if self.strategy == "hard":
            return np.argsort(np.where(allowed, dist, np.inf), axis=1, kind="stable")[:, :k].astype(np.int64)
        if self.strategy == "semi_hard":
            if p is None:
                raise ShapeError("positives: the semi_hard strategy needs the anchors' positives")
            dap = self._dist_pairs(a, p)[:, None]
            semi = (dist > dap) & (dist < dap + self.margin)
            easy = dist >= dap + self.margin
            # rank key: tier (0 semi-hard, 1 easy, 2 hard) then distance (ascending; hard ones descending)
            tier = np.where(semi, 0, np.where(easy, 1, 2)).astype(np.float64)
            span = float(np.max(np.abs(dist))) + 1.0
            within = np.where(tier == 2, -dist, dist) / (2 * span) + 0.5  # in (0, 1)
            key = np.where(allowed, tier + within, np.inf)
            return np.argsort(key, axis=1, kind="stable")[:, :k].astype(np.int64)
        # distance-weighted sampling on the unit sphere
        an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        cn = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
        dd = np.sqrt(np.maximum(2.0 - 2.0 * an @ cn.T, 0.0))
        dcl = np.clip(dd, self.cutoff, 2.0 - 1e-6)
        log_q = (d - 2.0) * np.log(dcl) + 0.5 * (d - 3.0) * np.log(np.maximum(1.0 - 0.25 * dcl * dcl, 1e-12))
        logw = -log_q
        ok = allowed & (dd < self.nonzero_loss_cutoff)
        logw = np.where(ok, logw - np.max(np.where(ok, logw, -np.inf), axis=1, keepdims=True, initial=-np.inf), -np.inf)
        # rows with too few candidates under the loss cutoff fall back to uniform among the allowed
        short = ok.sum(1) < k
        if short.any():
            logw[short] = np.where(allowed[short], 0.0, -np.inf)
        return self._gumbel_topk(logw, k).astype(np.int64)

    def _dist_pairs(self, a: np.ndarray, p: np.ndarray) -> np.ndarray:
        if self.distance == "cosine":
            num = np.sum(a * p, 1)
            return 1.0 - num / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(p, axis=1), 1e-12)
        return np.linalg.norm(a - p, axis=1)
