"""The package-level API and the contract every mechanism shares (lifecycle, memory, benchmark, batch, registry)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import time

import numpy as np
import pytest
from conftest import TOL64, assert_close, randn, ref_seq_attention, seq_inputs

import attnkit
from attnkit import (
    BenchmarkResult,
    ConfigError,
    CrossAttention,
    DisposedError,
    FlashAttention,
    MemoryInfo,
    MultiHeadAttention,
    ScaledDotProduct,
    SelfAttention,
    check_simd_support,
    check_thread_support,
)
from attnkit.mechanisms import registry
from attnkit.mechanisms.base import Mechanism

CORE = {
    "flash": FlashAttention,
    "multi_head": MultiHeadAttention,
    "cross": CrossAttention,
    "self": SelfAttention,
    "scaled_dot_product": ScaledDotProduct,
}


# ------------------------------------------------------------------ package-level functions


def test_version():
    assert attnkit.version() == attnkit.__version__ == importlib.metadata.version("attnkit")
    parts = attnkit.version().split(".")
    assert len(parts) >= 2 and all(p.isdigit() for p in parts[:2])


def test_supported_features_lists_registered_mechanisms():
    feats = attnkit.supported_features()
    assert all(isinstance(f, str) for f in feats)
    assert set(registry.names()) <= set(feats)
    assert set(CORE) <= set(feats)


def test_check_simd_support_reports_numpy_dispatch():
    try:
        from numpy._core import _multiarray_umath as m
    except ImportError:  # NumPy 1.x
        from numpy.core import _multiarray_umath as m
    info = check_simd_support()
    assert tuple(info.baseline) == tuple(m.__cpu_baseline__)
    assert set(info.dispatched) <= set(m.__cpu_dispatch__)
    assert all(m.__cpu_features__[d] for d in info.dispatched)  # only targets this CPU really has
    assert bool(info) == bool(info.baseline or info.dispatched)
    assert info.as_dict()["enabled"] == bool(info)


def test_check_thread_support():
    info = check_thread_support()
    assert info.cpus == len(os.sched_getaffinity(0)) and info.threading
    assert bool(info) == (info.cpus > 1)
    assert info.as_dict() == {"enabled": bool(info), "cpus": info.cpus, "threading": True}


def test_spec_defaults():
    f = FlashAttention()
    assert (f.heads, f.dim, f.block_size, f.causal, f.dropout, f.scale, f.simd) == (8, 64, 256, False, 0.0, None, True)
    assert f.effective_scale == pytest.approx(1 / 8)
    m = MultiHeadAttention(64)
    assert (m.heads, m.dropout, m.bias, m.kdim, m.vdim, m.causal) == (8, 0.0, True, None, None, False)
    c = CrossAttention(16, 8)
    assert (c.heads, c.dropout) == (8, 0.0)
    assert ScaledDotProduct(16).effective_scale == pytest.approx(0.25)


def test_options_and_repr_round_trip():
    f = FlashAttention(heads=2, dim=4, block_size=16, causal=True, dropout=0.1, seed=3)
    opts = f.options()
    assert opts["heads"] == 2 and opts["block_size"] == 16 and opts["causal"] is True and opts["seed"] == 3
    g = FlashAttention(**opts)
    assert g.options() == opts
    assert repr(f).startswith("FlashAttention(") and "block_size=16" in repr(f)


# ------------------------------------------------------------------ memory_usage


def test_memory_usage_counts_parameters():
    e = 16
    info = MultiHeadAttention(e, heads=4).memory_usage()
    assert isinstance(info, MemoryInfo)
    assert info.param_count == 4 * e * e + 4 * e
    assert info.heap_used >= info.param_count * 4  # float32 weights
    assert info.heap_total > info.heap_used
    assert MultiHeadAttention(e, heads=4, bias=False).memory_usage().param_count == 4 * e * e
    assert MultiHeadAttention(e, heads=4, kdim=3, vdim=5).memory_usage().param_count == e * e + e * 3 + e * 5 + e * e + 4 * e
    assert FlashAttention(heads=2, dim=4).memory_usage().param_count == 0
    assert ScaledDotProduct(4).memory_usage().param_count == 0


def test_memory_usage_includes_kept_attention_weights(rng):
    m = MultiHeadAttention(8, heads=2)
    before = m.memory_usage().heap_used
    m.forward(randn(rng, 50, 8))
    after = m.memory_usage().heap_used
    assert after - before >= m.get_attention_weights().nbytes


# ------------------------------------------------------------------ benchmark


def test_benchmark_measures_real_forwards(monkeypatch):
    f = FlashAttention(heads=2, dim=4)
    calls = []
    real = f.forward

    def slow_forward(*args, **kw):
        calls.append(args[0].shape)
        time.sleep(0.002)
        return real(*args, **kw)

    monkeypatch.setattr(f, "forward", slow_forward)
    res = f.benchmark(16, repeats=5, warmup=1)
    assert isinstance(res, BenchmarkResult)
    assert len(calls) == 6 and all(s == (16, 2, 4) for s in calls)
    assert res.latency_ms >= 2.0  # each timed forward slept 2 ms
    assert res.ops_per_second == pytest.approx(1000.0 / res.latency_ms)
    nbytes = 4 * 16 * 2 * 4 * 4  # q, k, v and the output, float32
    assert res.throughput_gbps == pytest.approx(nbytes / (res.latency_ms / 1e3) / 1e9)


@pytest.mark.parametrize("name", sorted(CORE))
def test_benchmark_every_core_mechanism(name):
    obj = {
        "flash": lambda: FlashAttention(heads=2, dim=4),
        "multi_head": lambda: MultiHeadAttention(8, heads=2),
        "cross": lambda: CrossAttention(8, 4, heads=2),
        "self": lambda: SelfAttention(8, heads=2),
        "scaled_dot_product": lambda: ScaledDotProduct(4),
    }[name]()
    res = obj.benchmark(8, repeats=2, warmup=1)
    assert res.latency_ms > 0 and np.isfinite(res.ops_per_second) and res.throughput_gbps > 0
    assert res.simd_enabled == bool(check_simd_support())


def test_benchmark_simd_flag_follows_option():
    assert FlashAttention(heads=1, dim=4, simd=False).benchmark(4, repeats=1, warmup=0).simd_enabled is False


# ------------------------------------------------------------------ dispose and context manager


def test_context_manager_disposes(rng):
    q, k, v = seq_inputs(rng, 3, 3, 2, 4)
    with FlashAttention(heads=2, dim=4) as f:
        assert_close(f.forward(q, k, v), ref_seq_attention(q, k, v), TOL64)
        assert not f.disposed
    assert f.disposed
    with pytest.raises(DisposedError, match="disposed"):
        f.forward(q, k, v)
    with pytest.raises(DisposedError):
        with f:
            pass


def test_dispose_frees_weights_and_blocks_every_method(rng):
    m = MultiHeadAttention(8, heads=2)
    x = randn(rng, 3, 8)
    m.forward(x)
    m.dispose()
    assert m._params == {} and m._cache == {}
    for call in (
        lambda: m.forward(x),
        m.get_attention_weights,
        m.save_weights,
        m.memory_usage,
        m.parameters,
        lambda: m.benchmark(4),
        lambda: m.forward_batch([x]),
        lambda: asyncio.run(m.forward_async(x)),
    ):
        with pytest.raises(DisposedError, match="MultiHeadAttention"):
            call()
    m.dispose()  # disposing twice is harmless
    assert m.disposed


def test_exception_inside_context_still_disposes():
    with pytest.raises(RuntimeError):
        with ScaledDotProduct(4) as s:
            raise RuntimeError("boom")
    assert s.disposed


# ------------------------------------------------------------------ batch and async forms


def test_forward_batch_flash_with_masks(rng):
    f = FlashAttention(heads=2, dim=4, causal=True)
    qs = [randn(rng, n, 2, 4) for n in (1, 3, 5)]
    ks = [randn(rng, 6, 2, 4) for _ in qs]
    vs = [randn(rng, 6, 2, 3) for _ in qs]
    masks = [rng.random((n, 6)) > 0.3 for n in (1, 3, 5)]
    outs = f.forward_batch(qs, ks, vs, mask=masks)
    for q, k, v, m, o in zip(qs, ks, vs, masks, outs, strict=True):
        np.testing.assert_array_equal(o, f.forward(q, k, v, mask=m))
        assert_close(o, ref_seq_attention(q, k, v, mask=m, causal=True), TOL64)
    shared = f.forward_batch(qs, ks[0], vs[0], mask=np.ones(6, dtype=bool))
    for q, o in zip(qs, shared, strict=True):
        np.testing.assert_array_equal(o, f.forward(q, ks[0], vs[0], mask=np.ones(6, dtype=bool)))
    assert f.forward_batch([], ks[0], vs[0]) == []


def test_forward_batch_flat_number_list_is_one_shared_array():
    """A flat list of numbers (the spec's flat arrays) is one shared key/value array, not a list of items."""
    f = FlashAttention(heads=1, dim=2)
    keys = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5]  # Lk = 3 keys of width 2, flat
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    qs = [np.array([1.0, 0.0]), np.array([0.0, 1.0, 1.0, 1.0])]
    outs = f.forward_batch(qs, keys, values)
    for q, o in zip(qs, outs, strict=True):
        assert o.shape == q.shape
        exp = ref_seq_attention(q.reshape(-1, 1, 2), np.reshape(keys, (3, 1, 2)), np.reshape(values, (3, 1, 2)))
        assert_close(o, exp.ravel(), TOL64)


def test_forward_batch_multihead_and_cross(rng):
    m = MultiHeadAttention(8, heads=2, seed=0)
    xs = [randn(rng, n, 8) for n in (2, 4)]
    mem = randn(rng, 5, 8)
    for o, x in zip(m.forward_batch(xs, mem, mem), xs, strict=True):
        np.testing.assert_array_equal(o, m.forward(x, mem, mem))
    c = CrossAttention(8, 3, heads=2, seed=0)
    kvs = [randn(rng, 4, 3), randn(rng, 7, 3)]
    for o, x, kv in zip(c.forward_batch(xs, kvs), xs, kvs, strict=True):
        np.testing.assert_array_equal(o, c.forward(x, kv))


def test_forward_async_equals_forward(rng):
    q, k, v = seq_inputs(rng, 4, 6, 2, 4)
    f = FlashAttention(heads=2, dim=4)
    np.testing.assert_array_equal(asyncio.run(f.forward_async(q, k, v)), f.forward(q, k, v))


def test_train_eval_switch():
    f = FlashAttention(heads=1, dim=2, dropout=0.5)
    assert f.training is False
    assert f.train() is f and f.training is True
    assert f.eval() is f and f.training is False


# ------------------------------------------------------------------ registry


def test_registry_names_and_get():
    names = registry.names()
    assert names == sorted(names) and set(CORE) <= set(names)
    for name, cls in CORE.items():
        assert registry.get(name) is cls
        assert cls.name == name and cls.summary
    assert registry.get("Multi-Head") is MultiHeadAttention
    assert registry.get("  FLASH ") is FlashAttention


def test_registry_create_coerces_strings():
    f = registry.create("flash", heads="2", dim="4", causal="true", dropout="0.25", scale="none")
    assert isinstance(f, FlashAttention)
    assert (f.heads, f.dim, f.causal, f.dropout, f.scale) == (2, 4, True, 0.25, None)
    m = registry.create("multi_head", model_dim=8, heads=2, bias="off")
    assert isinstance(m, MultiHeadAttention) and m.bias is False


def test_option_specs():
    specs = {s.name: s for s in registry.option_specs("multi_head")}
    assert specs["model_dim"].required and specs["model_dim"].type == "int"
    assert specs["heads"].default == 8 and not specs["heads"].required
    assert specs["kdim"].type == "int|None"
    assert specs["dropout"].as_dict() == {"name": "dropout", "type": "float", "default": 0.0, "required": False}
    with pytest.raises(ConfigError, match="^heads:"):
        registry.coerce_option(specs["heads"], "two")


def test_register_requires_a_name():
    with pytest.raises(TypeError):
        registry.register(type("Nameless", (Mechanism,), {}))


@pytest.mark.parametrize("name", registry.names())
def test_every_registered_mechanism_meets_the_contract(name):
    """Constructible from its option specs, sample_inputs feed forward, finite output, disposable."""
    cls = registry.get(name)
    assert issubclass(cls, Mechanism) and cls.summary
    required = {s.name: 8 for s in registry.option_specs(name) if s.required}
    obj = registry.create(name, **required)
    inputs = obj.sample_inputs(6, np.random.default_rng(0))
    out = obj.forward(*inputs)
    out = out[0] if isinstance(out, tuple) else out
    assert np.isfinite(np.asarray(out)).all()
    batch = obj.forward_batch([inputs[0]], *inputs[1:3]) if len(inputs) > 1 else obj.forward_batch([inputs[0]])
    np.testing.assert_array_equal(np.asarray(batch[0] if not isinstance(batch[0], tuple) else batch[0][0]), np.asarray(out))
    obj.dispose()
    with pytest.raises(DisposedError):
        obj.forward(*inputs)
