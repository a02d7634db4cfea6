"""MoEAttention: equivalence with a single expert, a float64 routing reference, capacity, aux loss, jitter."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import attnkit
from attnkit import ConfigError, DisposedError, DTypeError, NonFiniteError, ShapeError
from attnkit.kernels import poincare as pc
from attnkit.kernels.moe import expert_capacity, top_k_routing
from attnkit.mechanisms import registry
from attnkit.mechanisms.flash import FlashAttention
from attnkit.mechanisms.hyperbolic import HyperbolicAttention
from attnkit.mechanisms.linear import LinearAttention
from attnkit.mechanisms.moe import MoEAttention
from attnkit.mechanisms.neighbour import ScaledDotProduct


def inputs(rng, lq=12, lk=9, d=8, dv=8, batch=()):
    s = 1 / math.sqrt(d)
    return (rng.standard_normal((*batch, lq, d)) * s, rng.standard_normal((*batch, lk, d)) * s, rng.standard_normal((*batch, lk, dv)) * s)


@pytest.mark.parametrize("name", ["scaled_dot_product", "linear", "hyperbolic", "flash"])
def test_one_expert_top1_equals_that_expert(name) -> None:
    rng = np.random.default_rng(0)
    q, k, v = inputs(rng, batch=(2,))
    keep = rng.random((2, 9)) > 0.3
    moe = MoEAttention(dim=8, num_experts=1, top_k=1, experts=name)
    expert = moe.expert_modules[0]
    out = moe(q, k, v, mask=keep)
    for b in range(2):
        if name == "scaled_dot_product":
            ref = expert(q[b], k[b], v[b], mask=keep[b])
        elif name == "hyperbolic":
            ref = pc.from_poincare(expert(q[b], k[b], v[b], mask=keep[b][None]), c=expert.c)
        else:
            ref = expert(q[b][:, None], k[b][:, None], v[b][:, None], mask=keep[b])[:, 0]
        np.testing.assert_allclose(out[b], ref, rtol=1e-12, atol=1e-14)
    assert moe.usage_stats()["kept"] == [24] and moe.usage_stats()["dropped_tokens"] == 0


def reference(moe, q, k, v):
    """float64: router softmax, top-k, renormalised gates, capacity by a plain loop, experts on all queries."""
    p = {n: w.astype(np.float64) for n, w in moe.parameters().items()}
    logits = q @ p["router.weight"].T + p["router.bias"]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    t, e = probs.shape
    order = [sorted(range(e), key=lambda j: (-probs[i, j], j))[: moe.top_k] for i in range(t)]
    cap = t if moe.expert_capacity is None else math.ceil(moe.expert_capacity * t * moe.top_k / e)
    used = [0] * e
    kept = np.zeros((t, moe.top_k), dtype=bool)
    for r in range(moe.top_k):
        for i in range(t):
            j = order[i][r]
            if used[j] < cap:
                used[j] += 1
                kept[i, r] = True
    outs = [moe._call_expert(j, moe.expert_modules[j].parameters(), q, k, v, None) for j in range(e)]
    out = np.zeros((t, v.shape[1]))
    for i in range(t):
        z = sum(probs[i, j] for j in order[i])
        for r, j in enumerate(order[i]):
            if kept[i, r]:
                out[i] += probs[i, j] / z * outs[j][i]
    return out, kept


@pytest.mark.parametrize("top_k,capacity", [(1, 1.0), (2, 1.25), (2, 0.5), (3, None)])
def test_matches_float64_reference(top_k, capacity) -> None:
    rng = np.random.default_rng(1)
    q, k, v = inputs(rng, lq=20)
    moe = MoEAttention(dim=8, num_experts=4, top_k=top_k, expert_capacity=capacity, seed=5, experts="scaled_dot_product,linear,hyperbolic,flash")
    moe.load_weights({"router.weight": rng.standard_normal((4, 8)) * 3, "router.bias": rng.standard_normal(4)})
    out = moe(q, k, v)
    ref, kept = reference(moe, q, k, v)
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(moe.last_routing["keep"], kept)


def test_capacity_overflow_drop_and_pass_through() -> None:
    rng = np.random.default_rng(2)
    q, k, v = inputs(rng, lq=8)
    w = {"router.weight": np.zeros((2, 8)), "router.bias": np.array([5.0, 0.0])}  # everyone prefers expert 0
    drop = MoEAttention(dim=8, num_experts=2, top_k=1, expert_capacity=1.0, experts="scaled_dot_product")
    drop.load_weights(w)
    out = drop(q, k, v)
    assert expert_capacity(8, 2, 1, 1.0) == 4
    ref = ScaledDotProduct(8)(q[:4], k, v)
    np.testing.assert_allclose(out[:4], ref, atol=1e-14)  # first 4 tokens served, gate 1
    assert np.all(out[4:] == 0)
    st = drop.usage_stats()
    assert st["assignments"] == [8, 0] and st["kept"] == [4, 0] and st["dropped"] == [4, 0] and st["dropped_tokens"] == 4
    passing = MoEAttention(dim=8, num_experts=2, top_k=1, expert_capacity=1.0, experts="scaled_dot_product", overflow="pass_through")
    passing.load_weights(w)
    out = passing(q, k, v)
    np.testing.assert_allclose(out[4:], q[4:], atol=0)
    # top-2: second choices are served after every first choice, so all 8 tokens reach expert 1
    two = MoEAttention(dim=8, num_experts=2, top_k=2, expert_capacity=0.5, experts="scaled_dot_product")
    two.load_weights(w)
    two(q, k, v)
    keep = two.last_routing["keep"]
    assert keep[:4, 0].all() and not keep[4:, 0].any() and keep[:4, 1].all() and not keep[4:, 1].any()


def test_top_k_routing_priority_by_rank_then_token() -> None:
    probs = np.array([[0.6, 0.3, 0.1], [0.1, 0.6, 0.3], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]])
    chosen, keep = top_k_routing(probs, 2, capacity=2)
    np.testing.assert_array_equal(chosen, [[0, 1], [1, 2], [0, 1], [2, 0]])  # tie 0.2/0.2 -> lower index
    # first choices: 0,1,0,2 all fit; second choices in token order: 1 (fits, 2nd), 2 (fits), 1 (full), 0 (full)
    np.testing.assert_array_equal(keep, [[True, True], [True, True], [True, False], [True, False]])


def test_aux_loss_and_gates() -> None:
    rng = np.random.default_rng(3)
    q, k, v = inputs(rng, lq=16)
    moe = MoEAttention(dim=8, num_experts=4, top_k=2)
    moe.load_weights({"router.weight": rng.standard_normal((4, 8)) * 4, "router.bias": np.zeros(4)})
    moe(q, k, v)
    probs = moe.last_routing["probs"]
    f = np.bincount(probs.argmax(1), minlength=4) / 16
    assert moe.last_aux_loss == pytest.approx(4 * np.sum(f * probs.mean(0)), rel=1e-12)
    uniform = MoEAttention(dim=8, num_experts=4, top_k=1)
    uniform.load_weights({"router.weight": np.zeros((4, 8)), "router.bias": np.zeros(4)})
    uniform(q, k, v)
    assert uniform.last_aux_loss == pytest.approx(1.0)
    collapsed = MoEAttention(dim=8, num_experts=4, top_k=1)
    collapsed.load_weights({"router.weight": np.zeros((4, 8)), "router.bias": np.array([30.0, 0, 0, 0])})
    collapsed(q, k, v)
    assert collapsed.last_aux_loss == pytest.approx(4.0, rel=1e-6)
    # torch: the loss carries gradient back to the queries through P
    tq = torch.tensor(q, requires_grad=True)
    out = moe(tq, torch.tensor(k), torch.tensor(v))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    (out.sum() + moe.last_aux_loss).backward()
    assert tq.grad is not None and torch.isfinite(tq.grad).all()
    np.testing.assert_allclose(out.detach().numpy(), moe(q, k, v), atol=1e-12)


def test_jitter_only_in_training_and_seeded() -> None:
    rng = np.random.default_rng(4)
    q, k, v = inputs(rng, lq=30)
    a = MoEAttention(dim=8, jitter_noise=0.5, seed=1)
    b = MoEAttention(dim=8, jitter_noise=0.5, seed=1)
    plain = MoEAttention(dim=8, seed=1)
    np.testing.assert_array_equal(a(q, k, v), plain(q, k, v))  # eval mode: no noise
    a.train()
    b.train()
    ta, tb = a(q, k, v), b(q, k, v)
    np.testing.assert_array_equal(ta, tb)
    assert not np.array_equal(a.last_routing["probs"], plain.last_routing["probs"])
    assert not np.array_equal(a(q, k, v), ta)  # the generator moves on


def test_weights_roundtrip_with_expert_parameters() -> None:
    experts = [LinearAttention(8, heads=1, feature_map="favor", seed=s) for s in (1, 2)]
    moe = MoEAttention(dim=8, num_experts=2, top_k=1, experts=experts, seed=3)
    params = moe.parameters()
    assert set(params) == {"router.weight", "router.bias", "experts.0.favor_projection", "experts.1.favor_projection"}
    blob = moe.save_weights()
    other = MoEAttention(dim=8, num_experts=2, top_k=1, experts=[LinearAttention(8, heads=1, feature_map="favor", seed=s) for s in (7, 8)], seed=9)
    rng = np.random.default_rng(5)
    q, k, v = inputs(rng)
    assert not np.allclose(other(q, k, v), moe(q, k, v))
    other.load_weights(blob)
    np.testing.assert_allclose(other(q, k, v), moe(q, k, v), atol=1e-6)
    with pytest.raises(ShapeError, match="router.weight"):
        other.load_weights({**params, "router.weight": np.zeros((3, 8), np.float32)})


def test_registry_features_and_sample_inputs() -> None:
    assert "moe" in attnkit.supported_features()
    moe = registry.create("moe", dim="8", num_experts="3", top_k="1", experts="scaled_dot_product,hyperbolic")
    assert moe.experts == ("scaled_dot_product", "hyperbolic", "scaled_dot_product")
    out = moe(*moe.sample_inputs(10, np.random.default_rng(0)))
    assert out.shape == (10, 8) and out.dtype == np.float32
    single = moe(np.ones(8, dtype=np.float32) * 0.1, np.ones((3, 8), dtype=np.float32) * 0.1)
    assert single.shape == (8,)
    assert isinstance(moe.expert_modules[1], HyperbolicAttention)
    assert attnkit.MoEAttention is MoEAttention


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="top_k"):
        MoEAttention(num_experts=2, top_k=3)
    with pytest.raises(ConfigError, match="expert_capacity"):
        MoEAttention(expert_capacity=0)
    with pytest.raises(ConfigError, match="jitter_noise"):
        MoEAttention(jitter_noise=1.5)
    with pytest.raises(ConfigError, match="experts"):
        MoEAttention(experts="nope")
    with pytest.raises(ConfigError, match="experts"):
        MoEAttention(experts="")
    with pytest.raises(ConfigError, match="experts"):
        MoEAttention(dim=8, num_experts=1, top_k=1, experts=[FlashAttention(heads=1, dim=8, causal=True)])
    with pytest.raises(ConfigError, match="experts"):
        MoEAttention(dim=8, num_experts=1, top_k=1, experts=[ScaledDotProduct(4)])
    with pytest.raises(ConfigError, match="experts"):
        MoEAttention(dim=8, num_experts=2, top_k=1, experts=[ScaledDotProduct(8)])
    with pytest.raises(ConfigError, match="overflow"):
        MoEAttention(overflow="reroute")
    moe = MoEAttention(dim=8)
    with pytest.raises(ShapeError, match="q"):
        moe(np.zeros((3, 7)))
    with pytest.raises(ShapeError, match="key"):
        moe(np.zeros((3, 8)), np.zeros((3, 7)))
    with pytest.raises(ShapeError, match="value"):
        moe(np.zeros((3, 8)), np.zeros((3, 8)), np.zeros((4, 8)))
    with pytest.raises(ShapeError, match="mask"):
        moe(np.zeros((3, 8)), np.zeros((4, 8)), mask=np.ones(3, dtype=bool))
    with pytest.raises(DTypeError, match="mask"):
        moe(np.zeros((3, 8)), np.zeros((4, 8)), mask=np.zeros(4))
    with pytest.raises(NonFiniteError, match="key"):
        moe(np.zeros((3, 8)), np.full((4, 8), np.nan))
    with pytest.raises(ShapeError, match="value"):
        MoEAttention(dim=8, overflow="pass_through")(np.zeros((3, 8)), np.zeros((4, 8)), np.zeros((4, 5)))
    with pytest.raises(TypeError, match="q"):
        moe(np.zeros((3, 8), dtype=np.int64))
    moe.dispose()
    with pytest.raises(DisposedError):
        moe(np.zeros((3, 8)))


def test_capacity_of_a_run_time_token_count_equals_the_python_one() -> None:
    """An exported graph counts T at run time (a 0-d array): the same float64 arithmetic, so the same
    capacity as Python's ceil(factor * T * k / E) for every T, including factors not exact in binary."""
    for factor in (None, 0.1, 0.6, 1.0, 1.1, 1.25, 2.0 / 3.0, 3.7):
        for e, k in ((2, 1), (3, 2), (7, 3), (64, 2)):
            for t in range(0, 300):
                want = t if factor is None else max(1, math.ceil(factor * t * k / e))
                got = expert_capacity(np.asarray(t, dtype=np.int64), e, k, factor)
                assert np.asarray(got).dtype == np.int64 and int(got) == want, (factor, e, k, t)
                assert expert_capacity(t, e, k, factor) == want


@pytest.mark.parametrize("overflow", ["drop", "pass_through"])
def test_traced_batched_path_equals_the_per_item_path(overflow: str) -> None:
    """Traced (jax.jit), every expert computes the whole batch at once with unserved rows masked out; with
    concrete values each computes only its served rows, one batch item at a time: the same numbers
    (float64), for every expert kind, a key mask per batch item, and tokens over capacity."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    moe = MoEAttention(dim=8, num_experts=4, top_k=2, expert_capacity=0.6, experts="flash,linear,hyperbolic,scaled_dot_product", overflow=overflow)
    rng = np.random.default_rng(12)
    q, k, v = inputs(rng, lq=6, lk=5, batch=(3,))
    keep = rng.random((3, 5)) > 0.3
    keep[:, 0] = True
    want = moe(q, k, v, mask=keep)
    assert not moe.last_routing["keep"].all()  # some assignments over capacity
    got = jax.jit(lambda *a: moe.forward(*a[:3], mask=a[3]))(*(jnp.asarray(x) for x in (q, k, v, keep)))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-14)
