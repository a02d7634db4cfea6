"""One pass per input for the finiteness check and the overflow guard; a KV cache's running max (issue 16).

``check_finite`` bounds ``max |x|`` by ``sqrt(sum x^2)`` in the same pass that proves ``x`` finite and notes
the bound for the rest of the call; the overflow guard (``kernels.overflow.at_risk``) reads it there, and
a :class:`~attnkit.KVCache` notes the exact maximum of its keys/values, kept per entry. Checked here:

* the errors are the ones of the separate checks: :class:`NonFiniteError` naming ``query``/``key``/
  ``value``/``mask`` for NaN or infinity anywhere (hypothesis picks the argument, position and value);
* the bound is a bound: ``>= max |x|`` computed in float64 NumPy (the oracle), for any magnitudes,
  permuted views and dtypes; and the guard's decision equals the one written out here from the exact
  float64 maxima (``|scale| D max|q| max|k|`` and ``Lk max|v|`` against ``finfo.max / MARGIN``);
* the noted bound is found only for the same memory (a permuted view: yes; a slice: no; outside a call:
  nothing is kept);
* ``KVCache.abs_max()`` equals ``max |keys|``, ``max |values|`` of what the cache holds (NumPy oracle)
  after appends, truncation, reset and a ring buffer's wrap; decode steps give bit-for-bit the results
  of steps whose cache notes nothing (the guard then reads the whole cache), at normal scale and where
  the guard widens.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import attnkit
from attnkit import FlashAttention, KVCache
from attnkit._array import check_finite, known_magnitude, magnitude_bound_numpy, magnitude_scope, namespace
from attnkit.errors import NonFiniteError
from attnkit.kernels import overflow
from attnkit.mechanisms import kv_cache as kv_module

torch = pytest.importorskip("torch")

ARGS = ("query", "key", "value")


def _inputs(lib: str, dtype: str, seed: int = 0, shape: tuple[int, ...] = (2, 5, 2, 4)) -> list:
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(shape).astype(np.float32 if dtype == "bfloat16" else dtype) for _ in range(3)]
    if lib == "numpy":
        return arrays
    tdt = getattr(torch, dtype)
    return [torch.from_numpy(a).to(tdt) for a in arrays]


def _poke(x, index: tuple[int, ...], value: float):
    if isinstance(x, np.ndarray):
        x = x.copy()
    else:
        x = x.clone()
    x[index] = value
    return x


@settings(max_examples=40, deadline=None)
@given(
    which=st.sampled_from(ARGS),
    bad=st.sampled_from([math.nan, math.inf, -math.inf]),
    flat=st.integers(0, 2 * 5 * 2 * 4 - 1),
    case=st.sampled_from([("numpy", "float32"), ("numpy", "float64"), ("torch", "float32"), ("torch", "float64"), ("torch", "bfloat16")]),
)
def test_non_finite_input_named(which: str, bad: float, flat: int, case: tuple[str, str]) -> None:
    lib, dtype = case
    arrays = _inputs(lib, dtype)
    index = tuple(int(i) for i in np.unravel_index(flat, (2, 5, 2, 4)))
    arrays[ARGS.index(which)] = _poke(arrays[ARGS.index(which)], index, bad)
    fa = FlashAttention(heads=2, dim=4)
    with pytest.raises(NonFiniteError, match=f"^{which}: expected finite values"):
        fa.forward(*arrays)
    if lib == "numpy":  # the NumPy message also says what and where
        with pytest.raises(NonFiniteError, match=rf"at index {re.escape(str(index))}"):
            fa.forward(*arrays)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_mask_named(lib: str, bad: float) -> None:
    q, k, v = _inputs(lib, "float32")
    mask = np.zeros((5, 5), dtype=np.float32)
    mask[1, 2] = bad
    m = mask if lib == "numpy" else torch.from_numpy(mask)
    with pytest.raises(NonFiniteError, match="^mask: "):
        FlashAttention(heads=2, dim=4).forward(q, k, v, mask=m)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_self_attention_and_shared_key_value_named(lib: str) -> None:
    """One array serving as several arguments is checked once; the error names the first argument."""
    q, k, _ = _inputs(lib, "float32")
    k = _poke(k, (0, 1, 0, 2), math.nan)
    with pytest.raises(NonFiniteError, match="^key: "):
        FlashAttention(heads=2, dim=4).forward(q, k, k)
    with pytest.raises(NonFiniteError, match="^query: "):
        FlashAttention(heads=2, dim=4).forward(k)


def test_finite_values_whose_squares_overflow_pass() -> None:
    """1e20 in float32: the sum of squares overflows, the values are finite: no error, and the bound
    noted is max |x| itself."""
    x = np.full((3, 4, 2, 4), 1e20, dtype=np.float32)
    x[0, 0, 0, 0] = -3e20
    with magnitude_scope():
        check_finite(x, "query", namespace(x))
        bound, exact = known_magnitude(x)
    assert exact and bound == float(np.float32(3e20))
    out = FlashAttention(heads=2, dim=4).forward(x, x, x)
    assert np.isfinite(out).all()


magnitudes = st.floats(min_value=1e-40, max_value=1e36)


@settings(max_examples=60, deadline=None)
@given(
    scale=magnitudes,
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([np.float32, np.float64]),
    perm=st.permutations([0, 1, 2, 3]),
)
def test_bound_is_an_upper_bound(scale: float, seed: int, dtype: type, perm: list[int]) -> None:
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((2, 3, 5, 4)) * scale
    if seed % 3 == 0:  # one element dominating, the rest tiny or zero
        base[...] *= 1e-30
        base[1, 2, 3, 1] = scale
    a = base.astype(dtype)
    view = np.transpose(a, perm)
    exact = float(np.max(np.abs(a.astype(np.float64))))
    bound, is_exact = magnitude_bound_numpy(view)
    if math.isfinite(bound):
        assert bound >= exact
        if is_exact:
            assert bound == exact
    else:  # the sum of squares past the dtype's range: the caller then asks for max |x| itself
        assert np.isfinite(a).all() and exact * exact * a.size > float(np.finfo(dtype).max) / 2


def _decision_reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, dtype: type) -> bool:
    """The guard's test written out from exact float64 maxima (kernels.overflow's docstring)."""
    limit = float(np.finfo(dtype).max) / overflow.MARGIN
    mq, mk, mv = (float(np.max(np.abs(x.astype(np.float64)))) for x in (q, k, v))
    d, lk = q.shape[-1], k.shape[-2]
    logits = 0.0 if mq == 0 or mk == 0 else math.exp(min(709.0, math.log(abs(scale)) + math.log(d) + math.log(mq) + math.log(mk)))
    return logits > limit or mv / limit * lk > 1.0


@settings(max_examples=60, deadline=None)
@given(
    mq=st.floats(min_value=1e-30, max_value=1e36),
    mk=st.floats(min_value=1e-30, max_value=1e36),
    mv=st.floats(min_value=1e-30, max_value=1e37),
    lib=st.sampled_from(["numpy", "torch"]),
    noted=st.booleans(),
)
def test_guard_decision_unchanged(mq: float, mk: float, mv: float, lib: str, noted: bool) -> None:
    """Upper bounds first, exact maxima where they do not clear the limit: the decision is the exact one."""
    rng = np.random.default_rng(1)
    q, k, v = (rng.uniform(-1, 1, (2, 6, 4)).astype(np.float32) * np.float32(m) for m in (mq, mk, mv))
    want = _decision_reference(q, k, v, 0.5, np.float32)
    arrays = [q, k, v] if lib == "numpy" else [torch.from_numpy(x) for x in (q, k, v)]
    xp = namespace(*arrays)
    with magnitude_scope():
        if noted:  # as in a mechanism call: the input checks note their bounds first
            for name, x in zip(ARGS, arrays, strict=True):
                check_finite(x, name, xp)
        got = overflow.at_risk(xp, arrays[0].dtype, logits=(arrays[0], arrays[1], 4, 0.5), values=(arrays[2], 6))
    assert got == want


def test_noted_bound_found_only_for_the_same_memory() -> None:
    a = np.random.default_rng(0).standard_normal((2, 7, 3, 4)).astype(np.float32)
    t = torch.from_numpy(a.copy())
    with magnitude_scope():
        check_finite(a, "query", namespace(a))
        check_finite(t, "query", namespace(t))
        for same in (a, np.moveaxis(a, -3, -2), a[None], np.transpose(a, (3, 1, 0, 2))):
            assert known_magnitude(same) is not None
        for other in (a[:, :3], a[..., ::2], a.copy()):
            assert known_magnitude(other) is None
        assert known_magnitude(t.movedim(-3, -2)) is not None
        assert known_magnitude(t[:, 1:]) is None
    assert known_magnitude(a) is None  # nothing is kept outside a call


def test_guard_still_widens_inside_a_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Logits beyond float32 with the bounds noted by the input check: the guard reruns wider and the
    result matches float64 (the oracle), for NumPy and torch inputs."""
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((6, 2, 4)).astype(np.float32) * np.float32(1e19) for _ in range(3))
    qh, kh, vh = (np.moveaxis(x, -3, -2).astype(np.float64) for x in (q, k, v))  # heads-first, float64
    s = 0.5 * qh @ np.swapaxes(kh, -1, -2)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    want = np.moveaxis((p / p.sum(axis=-1, keepdims=True)) @ vh, -3, -2)
    calls = []
    run_wider = overflow.run_wider
    monkeypatch.setattr(overflow, "run_wider", lambda *a, **kw: calls.append(1) or run_wider(*a, **kw))
    for arrays in ([q, k, v], [torch.from_numpy(x) for x in (q, k, v)]):
        out = np.asarray(FlashAttention(heads=2, dim=4, scale=0.5).forward(*arrays), dtype=np.float64)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6 * 1e19)
    assert len(calls) == 2


# ----------------------------------------------------------------------------- KV cache running max


def _cache_max(cache: KVCache) -> tuple[float, float]:
    k, v = (np.asarray(attnkit._array.to_numpy(x), dtype=np.float64) for x in (cache.keys, cache.values))
    return float(np.max(np.abs(k))), float(np.max(np.abs(v)))


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("window", [None, 5])
def test_cache_abs_max_tracks_contents(lib: str, window: int | None) -> None:
    rng = np.random.default_rng(7)
    dtype = np.float32 if lib == "numpy" else torch.float32
    cache = KVCache(32, 2, 4, dtype=dtype, window=window)
    assert cache.abs_max() == (0.0, 0.0)
    wrap = lambda a: a if lib == "numpy" else torch.from_numpy(a)  # noqa: E731

    def append(n: int, scale: float) -> None:
        k = (rng.standard_normal((1, n, 2, 4)) * scale).astype(np.float32)
        v = (rng.standard_normal((1, n, 2, 4)) * scale * 2).astype(np.float32)
        cache.append(wrap(k), wrap(v))
        assert cache.abs_max() == _cache_max(cache)

    append(3, 100.0)  # a large start, then small tokens: the max must drop once they leave
    append(1, 1.0)
    append(2, 1.0)
    if window is None:
        cache.truncate(4)
        assert cache.abs_max() == _cache_max(cache)
        cache.truncate(0)
        assert cache.abs_max() == (0.0, 0.0)
    else:
        append(4, 1.0)  # the ring has wrapped: the large first tokens are gone
        assert cache.abs_max()[0] < 10.0
    append(2, 3.0)
    cache.reset()
    assert cache.abs_max() == (0.0, 0.0)
    append(7 if window is None else 9, 0.5)  # more than the window: only the last ones are held


def _decode(lib: str, scale: float, noting: bool, monkeypatch: pytest.MonkeyPatch, window: int | None = None) -> list[np.ndarray]:
    """Prefill 6 tokens, then decode 5 one at a time, truncate 2, decode 2 more: every step's output."""
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((1, 13, 4, 8)) * scale).astype(np.float32)
    kv = (rng.standard_normal((1, 13, 2, 8)) * scale).astype(np.float32)
    wrap = (lambda a: a) if lib == "numpy" else torch.from_numpy
    with monkeypatch.context() as mp:
        if not noting:  # the cache notes nothing: the guard reads the whole cache, as before
            mp.setattr(kv_module, "note_magnitude", lambda *a, **kw: None)
        fa = FlashAttention(heads=4, dim=8, causal=True)
        cache = KVCache(16, 2, 8, dtype=np.float32 if lib == "numpy" else torch.float32, window=window)
        outs = [fa.forward(wrap(x[:, :6]), wrap(kv[:, :6]), wrap(kv[:, :6] * 0.5), cache=cache)]
        for t in range(6, 11):
            outs.append(fa.forward(wrap(x[:, t : t + 1]), wrap(kv[:, t : t + 1]), wrap(kv[:, t : t + 1] * 0.5), cache=cache))
        if window is None:
            cache.truncate(9)
        for t in range(11, 13):
            outs.append(fa.forward(wrap(x[:, t : t + 1]), wrap(kv[:, t : t + 1]), wrap(kv[:, t : t + 1] * 0.5), cache=cache))
    return [np.asarray(attnkit._array.to_numpy(o)) for o in outs]


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("scale", [1.0, 1e19])
@pytest.mark.parametrize("window", [None, 4])
def test_decode_steps_bitwise_unchanged(lib: str, scale: float, window: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    noted = _decode(lib, scale, True, monkeypatch, window)
    plain = _decode(lib, scale, False, monkeypatch, window)
    for a, b in zip(noted, plain, strict=True):
        assert np.isfinite(a).all()
        np.testing.assert_array_equal(a, b)


def test_decode_reads_only_new_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch decode step over a cache of 64 tokens measures the magnitude of the new q, k, v only."""
    seen: list[tuple[int, ...]] = []
    bound = overflow.magnitude_bound_numpy
    exact = overflow._max_abs
    monkeypatch.setattr(overflow, "magnitude_bound_numpy", lambda a: seen.append(tuple(a.shape)) or bound(a))
    monkeypatch.setattr(overflow, "_max_abs", lambda x: seen.append(tuple(x.shape)) or exact(x))
    monkeypatch.setattr(attnkit._array, "magnitude_bound_numpy", lambda a: seen.append(tuple(a.shape)) or bound(a))
    cache = KVCache(65, 2, 8, dtype=torch.float32)
    cache.append(torch.randn(1, 64, 2, 8), torch.randn(1, 64, 2, 8))
    fa = FlashAttention(heads=4, dim=8, causal=True)
    seen.clear()
    fa.forward(torch.randn(1, 1, 4, 8), torch.randn(1, 1, 2, 8), torch.randn(1, 1, 2, 8), cache=cache)
    assert seen and all(64 not in s and 65 not in s for s in seen), seen


def test_numpy_decode_guarded_like_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys of 1e19 in float32 (logits past the range): the NumPy decode step takes the guarded path
    (it used to raise NonFiniteError) and agrees with the torch engine's steps."""
    a = _decode("numpy", 1e19, True, monkeypatch)
    b = _decode("torch", 1e19, True, monkeypatch)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e19 * 1e-6)


@settings(max_examples=40, deadline=None)
@given(
    lk=st.integers(1, 300),
    mv=st.floats(min_value=1e-20, max_value=1e30),
    case=st.sampled_from([("numpy", "float32"), ("numpy", "float64"), ("torch", "float32"), ("torch", "bfloat16")]),
    causal=st.booleans(),
)
def test_noted_output_bound_holds(lk: int, mv: float, case: tuple[str, str], causal: bool) -> None:
    """The bound a kernel notes for its output (so the call's output check is skipped) is >= max|out|."""
    from attnkit.kernels.dense import sdpa

    lib, dtype = case
    rng = np.random.default_rng(lk)
    arrays = [rng.standard_normal((2, 3, lk, 4)), rng.standard_normal((2, 3, lk, 4)), rng.standard_normal((2, 3, lk, 4)) * mv]
    if lib == "numpy":
        arrays = [a.astype(dtype) for a in arrays]
    else:
        arrays = [torch.from_numpy(a).to(getattr(torch, dtype)) for a in arrays]
    xp = namespace(*arrays)
    with magnitude_scope():
        for name, x in zip(ARGS, arrays, strict=True):
            check_finite(x, name, xp)
        out = sdpa(*arrays, xp=xp, scale=0.5, causal=causal)
        known = known_magnitude(out)
    got = float(np.max(np.abs(np.asarray(attnkit._array.to_numpy(out), dtype=np.float64))))
    assert known is not None and math.isfinite(known[0]) and known[0] >= got


def test_float_mask_output_still_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """An additive float mask can overflow the logits: no bound is noted and the output check runs."""
    checked = []
    all_finite = overflow._all_finite
    monkeypatch.setattr(overflow, "_all_finite", lambda x: checked.append(1) or all_finite(x))
    q, k, v = _inputs("numpy", "float32")
    FlashAttention(heads=2, dim=4).forward(q, k, v, mask=np.zeros((5, 5), np.float32))
    assert checked
    checked.clear()
    FlashAttention(heads=2, dim=4).forward(q, k, v)
    assert not checked  # a plain call: the kernel's bound stands for the check


@settings(max_examples=30, deadline=None)
@given(
    k=st.integers(1, 200),
    mv=st.floats(min_value=1e-20, max_value=1e30),
    dtype=st.sampled_from(["float32", "float64"]),
    masked=st.booleans(),
    one_query=st.booleans(),
)
def test_neighbour_output_bound_holds(k: int, mv: float, dtype: str, masked: bool, one_query: bool) -> None:
    """Neighbour attention notes max|v| * k for its output (no output pass): the note is >= max|out|."""
    from attnkit.kernels.neighbour import neighbour_attention

    rng = np.random.default_rng(k)
    lead = () if one_query else (3,)
    q = rng.standard_normal((*lead, 8)).astype(dtype)
    keys = rng.standard_normal((*lead, k, 8)).astype(dtype)
    values = (rng.standard_normal((*lead, k, 5)) * mv).astype(dtype)
    mask = rng.random((*lead, k)) < 0.6 if masked else None
    with magnitude_scope():
        for name, x in zip(ARGS, (q, keys, values), strict=True):
            check_finite(x, name, np)
        out = neighbour_attention(q, keys, values, xp=np, scale=0.3, mask=mask)
        known = known_magnitude(out)
    assert known is not None and math.isfinite(known[0]) and known[0] >= float(np.max(np.abs(out.astype(np.float64))))


def test_neighbour_float_mask_output_still_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    checked = []
    all_finite = overflow._all_finite
    monkeypatch.setattr(overflow, "_all_finite", lambda x: checked.append(1) or all_finite(x))
    rng = np.random.default_rng(0)
    q, keys = rng.standard_normal(4).astype(np.float32), rng.standard_normal((6, 4)).astype(np.float32)
    attnkit.ScaledDotProduct(4).forward(q, keys, keys, mask=np.zeros(6, np.float32))
    assert checked
    checked.clear()
    attnkit.ScaledDotProduct(4).forward(q, keys, keys)
    assert not checked
