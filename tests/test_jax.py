"""Every registered mechanism under ``jax.jit`` and ``jax.grad`` (issue 10), and the traceability fixes.

Oracles: the NumPy forward of the same mechanism (``jax.jit(forward)``), torch autograd in float64
(``jax.jit(jax.grad(loss))`` over the inputs, and over the parameters through ``functional_call``),
plain float64 torch formulas written here (relu/dpfp linear attention), NumPy (array_api_strict on its
second device, near-boundary Poincaré results) and the previous NumPy routing (MoE).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
torch = pytest.importorskip("torch")
jnp = jax.numpy
jax.config.update("jax_enable_x64", True)  # float64 comparisons with NumPy and torch

import attnkit  # noqa: E402
from attnkit._array import check_finite, is_traced, namespace  # noqa: E402
from attnkit.errors import AttentionError, NonFiniteError  # noqa: E402
from attnkit.kernels import poincare as pc  # noqa: E402
from attnkit.kernels.moe import top_k_routing  # noqa: E402
from attnkit.mechanisms import registry  # noqa: E402

NAMES = registry.names()
SEQ = 4


@functools.cache
def _case(name: str) -> tuple[Any, tuple[np.ndarray, ...], dict[str, np.ndarray]]:
    """The mechanism built from its example options, float64 example inputs and extras."""
    cls = registry.get(name)
    mech = registry.create(name, **cls.example_options)
    inputs = tuple(np.asarray(x, dtype=np.float64) for x in mech.example_inputs(SEQ, np.random.default_rng(0)))
    extras = {k: np.asarray(v, dtype=np.float64) for k, v in mech.example_extras(SEQ, np.random.default_rng(1)).items()}
    return mech, inputs, extras


@functools.cache
def _probe(name: str) -> np.ndarray:
    """A fixed random cotangent for the loss ``sum(out * probe)`` (every output entry matters)."""
    mech, inputs, extras = _case(name)
    out = mech.forward(*inputs, **extras)
    return np.random.default_rng(2).standard_normal(np.shape(out))


@functools.cache
def _jitted(name: str) -> tuple[Any, Any, Any]:
    """Cached ``jit(forward)``, ``jit(grad(loss))`` over the inputs and over the parameters."""
    mech, inputs, extras = _case(name)
    jextras = {k: jnp.asarray(v) for k, v in extras.items()}
    probe = jnp.asarray(_probe(name))

    def fwd(*xs: Any) -> Any:
        return mech.forward(*xs, **jextras)

    def loss_inputs(*xs: Any) -> Any:
        return jnp.sum(fwd(*xs) * probe)

    def loss_params(params: dict[str, Any], *xs: Any) -> Any:
        return jnp.sum(attnkit.functional_call(mech, params, *xs, **jextras) * probe)

    return jax.jit(fwd), jax.jit(jax.grad(loss_inputs, argnums=tuple(range(len(inputs))))), jax.jit(jax.grad(loss_params))


def _torch_grads(name: str, params: bool) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    mech, inputs, extras = _case(name)
    xs = [torch.tensor(x, requires_grad=True) for x in inputs]
    textras = {k: torch.tensor(v) for k, v in extras.items()}
    probe = torch.tensor(_probe(name))
    if params:
        tp = {k: torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=True) for k, v in mech.parameters().items()}
        out = attnkit.functional_call(mech, tp, *xs, **textras)
    else:
        tp = {}
        out = mech.forward(*xs, **textras)
    (out * probe).sum().backward()
    return [x.grad.numpy() for x in xs], {k: v.grad.numpy() for k, v in tp.items()}


def _close(actual: Any, expected: Any, tol: float = 1e-9) -> None:
    a, e = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape
    assert np.all(np.isfinite(a))
    np.testing.assert_allclose(a, e, rtol=tol, atol=tol * max(1.0, float(np.max(np.abs(e), initial=0.0))))


# ------------------------------------------------------------------ every mechanism
@pytest.mark.parametrize("name", NAMES)
def test_jit_forward_equals_numpy(name: str) -> None:
    mech, inputs, extras = _case(name)
    assert mech.check_finite if hasattr(mech, "check_finite") else True  # the default is left on
    fwd, _, _ = _jitted(name)
    out = fwd(*(jnp.asarray(x) for x in inputs))
    assert isinstance(out, jax.Array)
    _close(out, mech.forward(*inputs, **extras), 1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_jit_grad_over_inputs_equals_torch_autograd(name: str) -> None:
    _, inputs, _ = _case(name)
    _, grad_inputs, _ = _jitted(name)
    got = grad_inputs(*(jnp.asarray(x) for x in inputs))
    expected, _ = _torch_grads(name, params=False)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        _close(g, e)


#: the parameterised mechanisms with their own code paths (cross and self share multi_head's)
PARAM_NAMES = [n for n in ("multi_head", "edge_featured", "moe") if n in NAMES]


@pytest.mark.parametrize("name", PARAM_NAMES)
def test_jit_grad_over_params_equals_torch_autograd(name: str) -> None:
    mech, inputs, _ = _case(name)
    _, _, grad_params = _jitted(name)
    params = {k: jnp.asarray(np.asarray(v, dtype=np.float64)) for k, v in mech.parameters().items()}
    got = grad_params(params, *(jnp.asarray(x) for x in inputs))
    _, expected = _torch_grads(name, params=True)
    assert set(got) == set(expected) == set(mech.param_shapes())
    for k in expected:
        _close(got[k], expected[k])
    if name == "multi_head":  # the parameters all matter: no gradient is identically zero
        assert all(float(np.abs(np.asarray(got[k])).max()) > 0 for k in got)


#: option variants whose forward paths the example options do not reach: (name, options, mask kind)
VARIANTS = [
    ("linear", {"dim": 4, "heads": 2, "causal": True, "chunk_size": 2}, None),  # the causal scan (spread estimate)
    ("linear", {"dim": 4, "heads": 2, "feature_map": "dpfp"}, "key"),  # key mask (equal-rows check)
    ("flash", {"dim": 4, "heads": 2, "causal": True}, "float"),  # float mask (NaN/+inf check)
    ("hyperbolic", {"dim": 4, "input_space": "tangent"}, "key"),
    ("moe", {"dim": 4, "num_experts": 3, "top_k": 2, "expert_capacity": 0.5}, "key"),
]


def _mask(kind: str | None, mech: Any, query: np.ndarray) -> np.ndarray | None:
    rng = np.random.default_rng(9)
    if kind is None:
        return None
    if kind == "key":
        m = rng.random(SEQ) > 0.3
        m[0] = True
        return m
    return np.where(rng.random((SEQ, SEQ)) > 0.2, rng.standard_normal((SEQ, SEQ)), -np.inf)


@pytest.mark.parametrize(("name", "options", "kind"), VARIANTS, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(VARIANTS)])
def test_option_variants_under_jit_and_grad(name: str, options: dict[str, Any], kind: str | None) -> None:
    mech = registry.create(name, **options)
    inputs = tuple(np.asarray(x, dtype=np.float64) for x in mech.example_inputs(SEQ, np.random.default_rng(0)))
    mask = _mask(kind, mech, inputs[0])
    ref = mech.forward(*inputs, mask=mask)
    jmask = None if mask is None else jnp.asarray(mask)
    out = jax.jit(lambda *a: mech.forward(*a[:-1], mask=a[-1]))(*(jnp.asarray(x) for x in inputs), jmask)
    _close(out, ref, 1e-12)
    probe = np.random.default_rng(2).standard_normal(ref.shape)
    g = jax.jit(jax.grad(lambda q, *r: jnp.sum(mech.forward(q, *r[:-1], mask=r[-1]) * probe)))(*(jnp.asarray(x) for x in inputs), jmask)
    tq = torch.tensor(inputs[0], requires_grad=True)
    tm = None if mask is None else torch.tensor(mask)
    (mech.forward(tq, *(torch.tensor(x) for x in inputs[1:]), mask=tm) * torch.tensor(probe)).sum().backward()
    _close(g, tq.grad.numpy())


@pytest.mark.parametrize("name", ["hyperbolic", "mixed_curvature"])
def test_learned_curvature_gradient_under_jit_equals_torch(name: str) -> None:
    mech = registry.create(name, dim=4, learn_curvature=True)
    inputs = tuple(np.asarray(x, dtype=np.float64) for x in mech.example_inputs(SEQ, np.random.default_rng(0)))
    probe = np.random.default_rng(2).standard_normal(np.shape(mech.forward(*inputs)))
    params = {k: np.asarray(v, dtype=np.float64) for k, v in mech.parameters().items()}
    assert params
    got = jax.jit(jax.grad(lambda p: jnp.sum(attnkit.functional_call(mech, p, *map(jnp.asarray, inputs)) * probe)))(
        {k: jnp.asarray(v) for k, v in params.items()}
    )
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    (attnkit.functional_call(mech, tp, *map(torch.tensor, inputs)) * torch.tensor(probe)).sum().backward()
    for k in params:
        _close(got[k], tp[k].grad.numpy())
        assert float(np.abs(np.asarray(got[k])).max()) > 0


# ------------------------------------------------------------------ is_traced / check_finite
def test_is_traced_and_check_finite_skips_tracers_only() -> None:
    assert not is_traced(np.ones(2)) and not is_traced(jnp.ones(2)) and not is_traced(torch.ones(2))
    assert is_traced(torch.ones(2, device="meta"))
    seen = []

    def f(x: Any) -> Any:
        seen.append(is_traced(x))
        check_finite(x, "x", namespace(x))  # no TracerBoolConversionError, no raise inside the graph
        return x * 2

    out = jax.jit(f)(jnp.asarray([1.0, math.nan]))
    assert seen == [True] and bool(jnp.isnan(out[1]))
    with pytest.raises(NonFiniteError, match="x"):
        check_finite(jnp.asarray([1.0, math.nan]), "x", jnp)  # concrete values are still checked


def test_torch_values_count_as_traced_while_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    """``torch.compile`` traces real-looking tensors: ``torch.compiler.is_compiling()`` decides."""
    x = torch.tensor([1.0, math.nan])
    with pytest.raises(NonFiniteError, match="x"):
        check_finite(x, "x", namespace(x))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert is_traced(x) and not is_traced(np.asarray([1.0]))
    check_finite(x, "x", namespace(x))  # skipped: it could not raise from inside the graph


def test_nan_input_is_still_refused_outside_jit() -> None:
    mech = attnkit.FlashAttention(**registry.get("flash").example_options)
    q = np.asarray(mech.example_inputs(SEQ, np.random.default_rng(0))[0], dtype=np.float64)
    q[0, 0, 0] = math.nan
    with pytest.raises(NonFiniteError, match="query|q"):
        mech.forward(jnp.asarray(q))


# ------------------------------------------------------------------ Poincaré ball
def test_ball_check_raises_on_concrete_and_traced_math_stays_finite() -> None:
    x = np.array([[0.3, 0.2], [1.5, 0.0]])  # the second point is outside the unit ball
    y = np.array([[0.1, -0.4], [0.2, 0.1]])
    with pytest.raises(AttentionError, match="x: expected points strictly inside"):
        pc.poincare_distance(jnp.asarray(x), jnp.asarray(y))
    d = jax.jit(lambda a, b: pc.poincare_distance(a, b))(jnp.asarray(x), jnp.asarray(y))
    assert np.all(np.isfinite(np.asarray(d)))
    np.testing.assert_allclose(np.asarray(d)[0], pc.poincare_distance(x[:1], y[:1])[0], rtol=1e-12)


def test_frechet_aggregation_traced_equals_numpy() -> None:
    """The data-dependent stopping rule under jit: all steps traced, frozen once converged."""
    rng = np.random.default_rng(3)
    q, k, v = (0.2 * rng.standard_normal((5, 4)) for _ in range(3))
    mech = attnkit.HyperbolicAttention(dim=4, aggregation="frechet", frechet_iters=8, frechet_tol=1e-7)
    ref = mech.forward(q, k, v)
    # the loop stopped early on NumPy (more steps allowed change nothing), so the freeze is exercised
    np.testing.assert_array_equal(attnkit.HyperbolicAttention(dim=4, aggregation="frechet", frechet_iters=50, frechet_tol=1e-7).forward(q, k, v), ref)
    assert not np.array_equal(attnkit.HyperbolicAttention(dim=4, aggregation="frechet", frechet_iters=1, frechet_tol=1e-7).forward(q, k, v), ref)
    jk, jv = jnp.asarray(k), jnp.asarray(v)
    out = jax.jit(lambda a: mech.forward(a, jk, jv))(jnp.asarray(q))
    _close(out, ref, 1e-12)
    # (its gradient is left out here: XLA compiles the backward of the unrolled steps slowly, about
    # 10 s per step on a loaded CPU; the default einstein aggregation is differentiated above)


def test_dtype_name_recognises_array_api_strict() -> None:
    xs = pytest.importorskip("array_api_strict")
    assert pc.margin(xs.float32) == pc.margin(np.float32) == 4e-3
    assert pc.margin(xs.float64) == pc.margin(np.float64) == 1e-5
    assert pc.default_tol(xs.float64) == pc.default_tol(np.float64) < pc.default_tol(xs.float32)
    assert pc.margin(jnp.float32) == 4e-3 and pc.margin(torch.bfloat16) == pc.margin("bfloat16")
    # near the boundary the float32 margin decides the result: array_api_strict now agrees with NumPy
    u = np.array([[3.0, 2.0, 1.0], [0.5, -6.0, 2.0]], dtype=np.float32)
    x = np.array([[0.9995, 0.0, 0.0], [0.0, 0.6, -0.7999]], dtype=np.float32)
    for f, arg in ((pc.to_poincare, u), (pc.project, x)):
        ref = f(arg)
        got = f(xs.asarray(arg))
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ MoE routing
def _numpy_routing(probs: np.ndarray, top_k: int, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """The routing written with NumPy loops: rank-major priority, then token order."""
    t, e = probs.shape
    experts = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
    keep = np.zeros((t, top_k), dtype=bool)
    used = np.zeros(e, dtype=int)
    for r in range(top_k):
        for i in range(t):
            if used[experts[i, r]] < capacity:
                keep[i, r] = True
                used[experts[i, r]] += 1
    return experts, keep


def test_moe_routing_traced_equals_numpy_loops() -> None:
    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(5), size=9)
    probs[3] = probs[4]  # ties between tokens
    probs[0, 1] = probs[0, 2] = probs[0].max() + 0.1  # a tie between experts
    for top_k, cap in ((1, 2), (2, 3), (3, 4), (2, 9)):
        ref = _numpy_routing(probs, top_k, cap)
        got = jax.jit(lambda p, k=top_k, c=cap: top_k_routing(p, k, c))(jnp.asarray(probs))
        np.testing.assert_array_equal(np.asarray(got[0]), ref[0])
        np.testing.assert_array_equal(np.asarray(got[1]), ref[1])
        tg = top_k_routing(torch.tensor(probs), top_k, cap)
        np.testing.assert_array_equal(tg[1].numpy(), ref[1])


def test_moe_equals_per_token_mixture() -> None:
    """``out_t = sum_{kept r} g_{t,r} expert_{e(t,r)}(q_t)``, each expert called on one query at a time."""
    moe = attnkit.MoEAttention(dim=8, num_experts=3, top_k=2, expert_capacity=0.6)
    rng = np.random.default_rng(10)
    q, k, v = (rng.standard_normal((2, 5, 8)) for _ in range(3))
    out = moe.forward(q, k, v)
    routing = moe.last_routing
    probs = routing["probs"]
    ref = np.zeros_like(out)
    for t in range(10):
        b, i = divmod(t, 5)
        chosen = routing["experts"][t]
        gates = probs[t, chosen] / probs[t, chosen].sum()
        for r, e in enumerate(chosen):
            if routing["keep"][t, r]:
                ref[b, i] += gates[r] * moe._call_expert(int(e), moe.expert_modules[int(e)].parameters(), q[b, i : i + 1], k[b], v[b], None)[0]
    _, keep = _numpy_routing(probs, 2, int(routing["capacity"]))
    np.testing.assert_array_equal(routing["keep"], keep)
    assert not keep.all()  # some assignments overflow
    _close(out, ref, 1e-12)


def test_moe_under_jit_equals_numpy_with_drops_and_leaves_stats_alone() -> None:
    moe = attnkit.MoEAttention(dim=8, num_experts=3, top_k=2, expert_capacity=0.6, overflow="pass_through")
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((2, 6, 8)) for _ in range(3))
    mask = rng.random((2, 6)) > 0.3
    ref = moe.forward(q, k, v, mask=mask)
    stats = moe.usage_stats()
    assert stats["dropped_tokens"] > 0  # the capacity drops some tokens: pass_through is exercised
    out = jax.jit(lambda *a: moe.forward(*a[:3], mask=a[3]))(*(jnp.asarray(a) for a in (q, k, v, mask)))
    _close(out, ref, 1e-12)
    assert moe.usage_stats() == stats  # traced calls do not touch the statistics


def test_moe_torch_bfloat16() -> None:
    moe = attnkit.MoEAttention(dim=8, num_experts=3, top_k=2)
    rng = np.random.default_rng(6)
    q, k, v = (torch.tensor(rng.standard_normal((5, 8)), dtype=torch.bfloat16) for _ in range(3))
    out = moe.forward(q, k, v)
    assert out.dtype == torch.bfloat16
    routing = moe.last_routing
    stats = moe.usage_stats()  # raised "Got unsupported ScalarType BFloat16"
    assert isinstance(stats["last_aux_loss"], float) and sum(stats["kept"]) > 0
    ref = moe.forward(q.float(), k.float(), v.float())  # the same (bfloat16-rounded) inputs in float32
    if np.array_equal(moe.last_routing["experts"], routing["experts"]):
        np.testing.assert_allclose(out.float().numpy(), ref.numpy(), atol=5e-2, rtol=5e-2)


def test_moe_and_forward_graph_stay_on_the_callers_device() -> None:
    xs = pytest.importorskip("array_api_strict")
    dev = xs.Device("device1")
    cpu = xs.Device("CPU_DEVICE")
    rng = np.random.default_rng(7)
    moe = attnkit.MoEAttention(dim=4, num_experts=2, top_k=1)
    q, k, v = (rng.standard_normal((5, 4)) for _ in range(3))
    out = moe.forward(*(xs.asarray(a, device=dev) for a in (q, k, v)))
    assert out.device == dev
    np.testing.assert_allclose(np.asarray(out.to_device(cpu)), moe.forward(q, k, v), rtol=1e-12, atol=1e-12)
    ei = np.array([[0, 1, 2, 3, 4, 1], [1, 2, 3, 4, 0, 0]])
    gat = attnkit.EdgeFeaturedAttention(dim=4, heads=2, edge_dim=3)
    x, ea = rng.standard_normal((5, 4)), rng.standard_normal((6, 3))
    for edge_index in (ei, xs.asarray(ei, device=dev)):
        out = gat.forward_graph(xs.asarray(x, device=dev), edge_index, xs.asarray(ea, device=dev))
        assert out.device == dev
        np.testing.assert_allclose(np.asarray(out.to_device(cpu)), gat.forward_graph(x, ei, ea), rtol=1e-12, atol=1e-12)
    rope = attnkit.GraphRoPEAttention(dim=4)
    out = rope.forward_graph(*(xs.asarray(a, device=dev) for a in (q,)), ei, xs.asarray(k, device=dev), xs.asarray(v, device=dev))
    assert out.device == dev
    np.testing.assert_allclose(np.asarray(out.to_device(cpu)), rope.forward_graph(q, ei, k, v), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ linear attention at exact zeros
def _torch_linear_reference(q: Any, k: Any, v: Any, feature_map: str, eps: float) -> Any:
    """``phi(q_i) . sum_j phi(k_j) v_j / (phi(q_i) . sum_j phi(k_j) + eps)`` per head, plain torch."""

    def phi(x: Any) -> Any:
        if feature_map == "relu":
            return torch.relu(x)
        xp = torch.cat([torch.relu(x), torch.relu(-x)], dim=-1)
        return xp * torch.roll(xp, 1, dims=-1)

    fq, fk = phi(q.transpose(0, 1)), phi(k.transpose(0, 1))  # (H, L, F)
    num = fq @ (fk.transpose(-1, -2) @ v.transpose(0, 1))
    den = fq @ fk.sum(dim=-2, keepdim=True).transpose(-1, -2) + eps
    return (num / den).transpose(0, 1)


@pytest.mark.parametrize("feature_map", ["relu", "dpfp"])
def test_linear_gradients_finite_at_exact_zeros(feature_map: str) -> None:
    mech = attnkit.LinearAttention(dim=4, heads=2, feature_map=feature_map, eps=1e-12)  # eps scaling aside
    rng = np.random.default_rng(8)
    q, k, v = (rng.standard_normal((5, 2, 4)) for _ in range(3))
    q[0, 0, :2] = 0.0
    q[3, 1, 2] = 0.0
    k[1, 1, 1] = 0.0
    k[:, 0, 3] = 0.0  # a zero-padded feature column
    probe = rng.standard_normal((5, 2, 4))
    ts = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    (mech.forward(*ts) * torch.tensor(probe)).sum().backward()
    rs = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    (_torch_linear_reference(*rs, feature_map, mech.eps) * torch.tensor(probe)).sum().backward()
    jg = jax.jit(jax.grad(lambda *a: jnp.sum(mech.forward(*a) * probe), argnums=(0, 1, 2)))(*map(jnp.asarray, (q, k, v)))
    for t, r, j in zip(ts, rs, jg, strict=True):
        _close(t.grad.numpy(), r.grad.numpy(), 1e-9)
        _close(np.asarray(j), r.grad.numpy(), 1e-9)


def test_segment_reductions_in_the_callers_namespace() -> None:
    """Generic (array_api_strict, second device) and JAX segment sums/maxima equal NumPy's ``ufunc.at``,
    with an empty segment (max -inf, sum 0) and an empty edge list."""
    from attnkit.kernels.segment import segment_max, segment_softmax, segment_sum

    xs = pytest.importorskip("array_api_strict")
    dev, cpu = xs.Device("device1"), xs.Device("CPU_DEVICE")
    rng = np.random.default_rng(11)
    x = rng.standard_normal((7, 2, 3))
    seg = np.array([0, 2, 2, 4, 0, 4, 4])  # segments 1 and 3 are empty
    for f in (segment_sum, segment_max):
        ref = f(x, seg, 5, namespace(x))
        got = f(xs.asarray(x, device=dev), xs.asarray(seg, device=dev), 5, xs)
        assert got.device == dev
        np.testing.assert_allclose(np.asarray(got.to_device(cpu)), ref, rtol=1e-15, atol=0)
        np.testing.assert_allclose(np.asarray(jax.jit(lambda a, f=f: f(a, jnp.asarray(seg), 5, jnp))(jnp.asarray(x))), ref, rtol=1e-15)
        empty = f(xs.asarray(np.zeros((0, 3)), device=dev), xs.asarray(np.zeros(0, dtype=np.int64), device=dev), 2, xs)
        np.testing.assert_array_equal(np.asarray(empty.to_device(cpu)), f(np.zeros((0, 3)), np.zeros(0, dtype=np.int64), 2, np))
    soft = segment_softmax(xs.asarray(x, device=dev), xs.asarray(seg, device=dev), 5, xs)
    np.testing.assert_allclose(np.asarray(soft.to_device(cpu)), segment_softmax(x, seg, 5, namespace(x)), rtol=1e-13)
