"""InfoNCE and triplet losses: values against torch and hand computation, gradients by finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attnkit import ConfigError, NonFiniteError, ShapeError
from attnkit.training import InfoNCELoss, LocalContrastiveLoss, TripletLoss


def numeric_grad(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        up = f()
        x[i] = old - h
        down = f()
        x[i] = old
        g[i] = (up - down) / (2 * h)
    return g


def check_grads(loss, args: dict[str, np.ndarray]) -> None:
    value, grads = loss.compute_with_gradients(**args)
    assert value == pytest.approx(loss.compute(**args), rel=1e-14)
    for name, x in args.items():
        if x is None:
            continue
        num = numeric_grad(lambda: loss.compute(**args), x)
        np.testing.assert_allclose(grads[name], num, rtol=1e-5, atol=1e-7, err_msg=name)


def torch_infonce(a, p, n, t, cosine):
    ta, tp = torch.tensor(a, requires_grad=True), torch.tensor(p, requires_grad=True)
    tn = None if n is None else torch.tensor(n, requires_grad=True)
    na, np_ = (F.normalize(ta, dim=-1), F.normalize(tp, dim=-1)) if cosine else (ta, tp)
    if tn is None:
        logits = na @ np_.T / t
        loss = F.cross_entropy(logits, torch.arange(a.shape[0]))
    else:
        nn_ = F.normalize(tn, dim=-1) if cosine else tn
        neg = na @ nn_.T if nn_.ndim == 2 else torch.einsum("bd,bnd->bn", na, nn_)
        logits = torch.cat([(na * np_).sum(-1, keepdim=True), neg], dim=1) / t
        loss = F.cross_entropy(logits, torch.zeros(a.shape[0], dtype=torch.long))
    loss.backward()
    return loss.item(), ta.grad.numpy(), tp.grad.numpy(), None if tn is None else tn.grad.numpy()


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("neg_shape", ["shared", "per_anchor", "in_batch"])
def test_infonce_against_torch_and_finite_differences(similarity, neg_shape) -> None:
    rng = np.random.default_rng(0)
    b, d, n = 4, 5, 6
    a, p = rng.standard_normal((b, d)), rng.standard_normal((b, d))
    neg = {"shared": rng.standard_normal((n, d)), "per_anchor": rng.standard_normal((b, n, d)), "in_batch": None}[neg_shape]
    loss = InfoNCELoss(temperature=0.5, similarity=similarity)
    value, grads = loss.compute_with_gradients(a, p, neg)
    tv, ga, gp, gn = torch_infonce(a, p, neg, 0.5, similarity == "cosine")
    assert value == pytest.approx(tv, rel=1e-12)
    np.testing.assert_allclose(grads["anchor"], ga, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["positive"], gp, rtol=1e-10, atol=1e-12)
    if neg is not None:
        np.testing.assert_allclose(grads["negatives"], gn, rtol=1e-10, atol=1e-12)
    else:
        assert "negatives" not in grads
    check_grads(loss, {"anchor": a, "positive": p, "negatives": neg})


def test_infonce_hand_value_single_anchor_and_sum_reduction() -> None:
    loss = InfoNCELoss(temperature=1.0, similarity="dot")
    # s_p = 1, s_n = 0 -> -log(e / (e + 1))
    assert loss.compute([1.0, 0.0], [1.0, 0.0], [[0.0, 1.0]]) == pytest.approx(math.log1p(math.exp(-1)), rel=1e-14)
    value, g = loss.compute_with_gradients(np.array([1.0, 0.0]), np.array([1.0, 0.0]), np.array([[0.0, 1.0]]))
    assert g["anchor"].shape == (2,) and g["negatives"].shape == (1, 2)
    rng = np.random.default_rng(1)
    a, p, n = rng.standard_normal((3, 4)), rng.standard_normal((3, 4)), rng.standard_normal((5, 4))
    s = InfoNCELoss(reduction="sum")
    assert s.compute(a, p, n) == pytest.approx(3 * InfoNCELoss().compute(a, p, n), rel=1e-12)
    check_grads(s, {"anchor": a, "positive": p, "negatives": n})
    # lower temperature sharpens: a perfect match gets a smaller loss
    assert InfoNCELoss(temperature=0.05).compute(a, a, n) < InfoNCELoss(temperature=1.0).compute(a, a, n)


def triplet_reference(a, p, n, margin, distance):
    """Loop over every (anchor, positive, negative) triplet, float64."""

    def dist(x, y):
        if distance == "euclidean":
            return np.linalg.norm(x - y)
        if distance == "squared":
            return np.sum((x - y) ** 2)
        return 1 - x @ y / (np.linalg.norm(x) * np.linalg.norm(y))

    terms = [max(0.0, dist(a[i], pp) - dist(a[i], nn) + margin) for i in range(a.shape[0]) for pp in p[i] for nn in n[i]]
    return float(np.mean(terms))


@pytest.mark.parametrize("distance", ["euclidean", "squared", "cosine"])
def test_triplet_reference_and_finite_differences(distance) -> None:
    rng = np.random.default_rng(2)
    a, p, n = rng.standard_normal((3, 4)), rng.standard_normal((3, 2, 4)), rng.standard_normal((3, 5, 4))
    margin = {"euclidean": 0.7, "squared": 1.0, "cosine": 0.3}[distance]
    loss = TripletLoss(margin=margin, distance=distance)
    assert loss.compute(a, p, n) == pytest.approx(triplet_reference(a, p, n, margin, distance), rel=1e-12)
    # no hinge sits at its kink, so finite differences are valid
    value, _ = loss.compute_with_gradients(a, p, n)
    assert value > 0
    check_grads(loss, {"anchor": a, "positive": p, "negatives": n})


def test_triplet_matches_torch_triplet_margin_loss() -> None:
    rng = np.random.default_rng(3)
    a, p, n = (rng.standard_normal((6, 8)) for _ in range(3))
    loss = TripletLoss(margin=1.0)
    value, g = loss.compute_with_gradients(a, p, n)
    ta, tp, tn = (torch.tensor(x, requires_grad=True) for x in (a, p, n))
    tl = F.triplet_margin_loss(ta, tp, tn, margin=1.0, eps=0.0)
    tl.backward()
    assert value == pytest.approx(tl.item(), rel=1e-12)
    for name, t in (("anchor", ta), ("positive", tp), ("negatives", tn)):
        np.testing.assert_allclose(g[name], t.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_triplet_inactive_hinge_and_single_anchor_forms() -> None:
    loss = LocalContrastiveLoss(margin=0.1)
    a = np.array([0.0, 0.0])
    value, g = loss.compute_with_gradients(a, np.array([[0.1, 0.0], [0.0, 0.1]]), np.array([[5.0, 0.0]]))
    assert value == 0.0 and np.all(g["anchor"] == 0) and g["positive"].shape == (2, 2)
    rng = np.random.default_rng(4)
    x, y, z = rng.standard_normal(3), rng.standard_normal(3), rng.standard_normal((4, 3))
    check_grads(TripletLoss(margin=3.0), {"anchor": x, "positive": y, "negatives": z})


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="temperature"):
        InfoNCELoss(temperature=0)
    with pytest.raises(ConfigError, match="similarity"):
        InfoNCELoss(similarity="l1")
    with pytest.raises(ConfigError, match="distance"):
        TripletLoss(distance="manhattan")
    with pytest.raises(ConfigError, match="margin"):
        TripletLoss(margin=float("nan"))
    loss = InfoNCELoss()
    with pytest.raises(ShapeError, match="positive"):
        loss.compute(np.ones((2, 3)), np.ones((3, 3)), np.ones((4, 3)))
    with pytest.raises(ShapeError, match="negatives"):
        loss.compute(np.ones((2, 3)), np.ones((2, 3)), np.ones((4, 2)))
    with pytest.raises(ShapeError, match="negatives"):
        loss.compute(np.ones((2, 3)), np.ones((2, 3)), np.ones((3, 4, 3)))
    with pytest.raises(ShapeError, match="negatives"):
        loss.compute(np.ones((1, 3)), np.ones((1, 3)))
    with pytest.raises(NonFiniteError, match="anchor"):
        loss.compute(np.array([[np.nan, 1.0, 1.0]]), np.ones((1, 3)), np.ones((2, 3)))
    with pytest.raises(TypeError, match="anchor"):
        loss.compute(np.ones((2, 3), dtype=np.int64), np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(ShapeError, match="negatives"):
        TripletLoss().compute(np.ones((2, 3)), np.ones((2, 3)), np.ones((3, 3)))
    with pytest.raises(ShapeError, match="positive"):
        TripletLoss().compute(np.ones((2, 3)), np.ones((2, 2)), np.ones((2, 3)))
    loss.temperature = -1.0
    with pytest.raises(ConfigError, match="temperature"):
        loss.compute(np.ones((2, 3)), np.ones((2, 3)))
