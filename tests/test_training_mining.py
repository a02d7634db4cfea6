"""Negative mining: each strategy against a brute-force definition; seeded and reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from attnkit import ConfigError, ShapeError
from attnkit.training import NegativeMiner, TripletLoss, gather


def data(seed=0, b=4, n=12, d=3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((b, d)), rng.standard_normal((n, d)), rng.standard_normal((b, d))


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_hard_is_the_nearest_allowed(distance) -> None:
    a, c, _ = data()
    exclude = np.array([0, 3, 3, 11])
    idx = NegativeMiner("hard", num_negatives=4, distance=distance).mine(a, c, exclude=exclude)
    for i in range(a.shape[0]):
        if distance == "euclidean":
            d = np.linalg.norm(c - a[i], axis=1)
        else:
            d = 1 - c @ a[i] / (np.linalg.norm(c, axis=1) * np.linalg.norm(a[i]))
        d[exclude[i]] = np.inf
        np.testing.assert_array_equal(idx[i], np.argsort(d)[:4])


def test_semi_hard_order_on_a_line() -> None:
    anchor = np.array([[0.0]])
    positive = np.array([[1.0]])  # d(a, p) = 1
    cand = np.array([[0.5], [1.2], [1.4], [2.0], [3.0], [0.9]])
    idx = NegativeMiner("semi_hard", num_negatives=6, margin=0.5).mine(anchor, cand, positives=positive)
    # semi-hard (1, 1.5): 1.2, 1.4; then easy nearest first: 2.0, 3.0; then hard farthest first: 0.9, 0.5
    np.testing.assert_array_equal(idx[0], [1, 2, 3, 4, 5, 0])
    idx = NegativeMiner("semi_hard", num_negatives=2, margin=0.5).mine(anchor, cand, positives=positive, exclude=[[1]])
    np.testing.assert_array_equal(idx[0], [2, 3])


def test_random_is_seeded_uniform_and_respects_exclude() -> None:
    a, c, _ = data()
    m1, m2 = NegativeMiner("random", 5, seed=3), NegativeMiner("random", 5, seed=3)
    first = m1.mine(a, c, exclude=[[0, 1], [2], [], [11]])
    np.testing.assert_array_equal(first, m2.mine(a, c, exclude=[[0, 1], [2], [], [11]]))
    assert not np.array_equal(first, NegativeMiner("random", 5, seed=4).mine(a, c, exclude=[[0, 1], [2], [], [11]]))
    assert 0 not in first[0] and 1 not in first[0] and 2 not in first[1] and 11 not in first[3]
    assert all(len(set(row)) == 5 for row in first)
    m1.reset()
    np.testing.assert_array_equal(m1.mine(a, c, exclude=[[0, 1], [2], [], [11]]), first)
    counts = np.bincount(NegativeMiner("random", 1, seed=0).mine(np.zeros((6000, 3)), c).ravel(), minlength=12)
    assert counts.min() > 6000 / 12 * 0.8 and counts.max() < 6000 / 12 * 1.2


def test_distance_weighted_follows_the_inverse_sphere_density() -> None:
    rng = np.random.default_rng(5)
    d = 8
    anchor = rng.standard_normal((1, d))
    cand = rng.standard_normal((10, d))
    miner = NegativeMiner("distance_weighted", num_negatives=1, cutoff=0.5, nonzero_loss_cutoff=1.4, seed=1)
    an = anchor[0] / np.linalg.norm(anchor[0])
    cn = cand / np.linalg.norm(cand, axis=1, keepdims=True)
    dist = np.linalg.norm(cn - an, axis=1)
    dc = np.maximum(dist, 0.5)
    q = dc ** (d - 2) * (1 - dc**2 / 4) ** ((d - 3) / 2)
    w = np.where(dist < 1.4, 1 / q, 0.0)
    assert (w > 0).sum() >= 2  # the test needs a real choice
    prob = w / w.sum()
    draws = miner.mine(np.repeat(anchor, 4000, axis=0), cand)[:, 0]  # 4000 independent draws
    freq = np.bincount(draws, minlength=10) / draws.size
    np.testing.assert_allclose(freq, prob, atol=0.03)
    assert np.all(freq[w == 0] == 0)
    again = NegativeMiner("distance_weighted", num_negatives=3, seed=9)
    np.testing.assert_array_equal(again.mine(anchor, cand), NegativeMiner("distance_weighted", num_negatives=3, seed=9).mine(anchor, cand))


def test_in_batch() -> None:
    _, _, p = data(b=5)
    a = p + 0.01
    idx = NegativeMiner("in_batch", num_negatives=4).mine(a, positives=p)
    np.testing.assert_array_equal(idx, [[j for j in range(5) if j != i] for i in range(5)])
    few = NegativeMiner("in_batch", num_negatives=2, seed=0).mine(a, positives=p)
    assert few.shape == (5, 2) and all(i not in row and len(set(row)) == 2 for i, row in enumerate(few))
    negs = gather(p, idx)
    assert negs.shape == (5, 4, 3)
    assert TripletLoss().compute(a, p, negs) >= 0


def test_bad_input() -> None:
    a, c, p = data()
    with pytest.raises(ConfigError, match="strategy"):
        NegativeMiner("hardest")
    with pytest.raises(ConfigError, match="num_negatives"):
        NegativeMiner(num_negatives=0)
    with pytest.raises(ConfigError, match="num_negatives"):
        NegativeMiner("hard", num_negatives=13).mine(a, c)
    with pytest.raises(ShapeError, match="positives"):
        NegativeMiner("semi_hard").mine(a, c)
    with pytest.raises(ShapeError, match="candidates"):
        NegativeMiner("hard").mine(a)
    with pytest.raises(ShapeError, match="candidates"):
        NegativeMiner("hard").mine(a, np.ones((5, 4)))
    with pytest.raises(ShapeError, match="exclude"):
        NegativeMiner("hard").mine(a, c, exclude=np.array([0, 1]))
    with pytest.raises(ShapeError, match="exclude"):
        NegativeMiner("hard").mine(a, c, exclude=[[0], [1], [2], [99]])
    with pytest.raises(ShapeError, match="positives"):
        NegativeMiner("in_batch").mine(a)
    with pytest.raises(ShapeError, match="indices"):
        gather(c, np.array([[0, 12]]))
