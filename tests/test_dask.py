"""attnkit on Dask (issue 15): lazy graphs that equal NumPy, per-chunk finiteness, split-K exact
attention against a float64 dense reference, and the same on a ``dask.distributed`` LocalCluster of two
worker processes (loopback only), with worker memory bounded by the chunk sizes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

import attnkit  # noqa: E402
from attnkit.dask import split_k_attention  # noqa: E402
from attnkit.mechanisms import registry  # noqa: E402

NAMES = registry.names()


def _no_compute(*args: object, **kwargs: object) -> None:
    raise AssertionError("something was computed")


def batched(mech: attnkit.Mechanism, n: int, batch: int, seed: int) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """The example inputs stacked ``batch`` times with different values (graph layouts: neighbours per target)."""
    rng = np.random.default_rng(seed)
    items = [mech.example_inputs(n, rng) for _ in range(batch)]
    extras = [mech.example_extras(n, rng) for _ in range(batch)]
    arrays = [np.stack([it[i] for it in items]) for i in range(len(items[0]))]
    ex = {k: np.stack([e[k] for e in extras])[:, None] for k in extras[0]}
    if mech.input_layout == "graph":
        arrays = [arrays[0]] + [x[:, None] for x in arrays[1:]]
    return arrays, ex


def chunked(x: np.ndarray) -> da.Array:
    return da.from_array(x, chunks=(1,) + x.shape[1:])


def build(name: str) -> attnkit.Mechanism:
    opts = dict(registry.get(name).example_options)
    if name == "moe":
        opts["expert_capacity"] = None  # capacity is per call: with it, each chunk routes within its own tokens
    return registry.create(name, **opts)


@pytest.mark.parametrize("name", NAMES)
def test_every_mechanism_is_lazy_keeps_batch_chunks_and_equals_numpy(name: str) -> None:
    mech = build(name)
    arrays, extras = batched(mech, 6, 4, seed=1)
    expected = np.asarray(mech.forward(*arrays, **extras))
    with dask.config.set(scheduler=_no_compute):
        lazy = mech.forward(*(chunked(x) for x in arrays), **{k: chunked(v) for k, v in extras.items()})
    assert isinstance(lazy, da.Array)
    assert lazy.chunks[0] == (1, 1, 1, 1), lazy.chunks
    out = lazy.compute(scheduler="sync")
    assert out.shape == expected.shape and out.dtype == expected.dtype
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_moe_with_capacity_routes_each_chunk_like_a_separate_call() -> None:
    mech = attnkit.MoEAttention(dim=4, num_experts=2, top_k=1, expert_capacity=0.5)
    arrays, _ = batched(mech, 8, 3, seed=2)
    lazy = mech.forward(*(chunked(x) for x in arrays)).compute(scheduler="sync")
    for b in range(3):
        np.testing.assert_allclose(lazy[b], mech.forward(*(x[b] for x in arrays)), rtol=1e-6, atol=1e-7)


def test_a_chunk_with_nan_raises_when_computed_and_the_others_stay_computable() -> None:
    mech = attnkit.FlashAttention(heads=2, dim=4)
    q = np.random.default_rng(3).standard_normal((3, 5, 2, 4)).astype(np.float32)
    q[1, 2, 0, 1] = np.nan
    with dask.config.set(scheduler=_no_compute):
        lazy = mech.forward(chunked(q))
    with pytest.raises(attnkit.NonFiniteError, match="^query:"):
        lazy.compute(scheduler="sync")
    np.testing.assert_allclose(lazy[0].compute(scheduler="sync"), mech.forward(q[0]), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(lazy[2].compute(scheduler="sync"), mech.forward(q[2]), rtol=1e-6, atol=1e-7)


def dense_reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool, allowed: np.ndarray | None = None) -> np.ndarray:
    """float64 softmax(q k^T / sqrt(D)) v, causal bottom-right aligned, rows with no key -> 0;
    ``allowed``: a further boolean (Lq, Lk) pattern (True = may attend)."""
    q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
    s = np.einsum("...qhd,...khd->...hqk", q64, k64) / math.sqrt(q.shape[-1])
    lq, lk = q.shape[-3], k.shape[-3]
    if causal:
        s = np.where(np.arange(lk)[None, :] <= np.arange(lq)[:, None] + (lk - lq), s, -np.inf)
    if allowed is not None:
        s = np.where(allowed, s, -np.inf)
    m = s.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(s - m)
    tot = p.sum(-1, keepdims=True)
    p = p / np.where(tot == 0, 1.0, tot)
    return np.einsum("...hqk,...khd->...qhd", p, v64)


@pytest.mark.parametrize(
    ("lq", "lk", "qc", "kc", "causal"),
    [
        (37, 53, 10, 12, False),
        (37, 53, 10, 12, True),
        (53, 37, 9, 11, True),
        (64, 64, 16, 16, True),
        (5, 70, 5, 7, False),
    ],
)
def test_split_k_equals_dense_with_shards_that_do_not_divide_l(lq: int, lk: int, qc: int, kc: int, causal: bool) -> None:
    rng = np.random.default_rng(lq * lk)
    q = rng.standard_normal((2, lq, 3, 4)).astype(np.float32)
    k = rng.standard_normal((2, lk, 3, 4)).astype(np.float32)
    v = rng.standard_normal((2, lk, 3, 5)).astype(np.float32)
    mech = attnkit.FlashAttention(heads=3, dim=4, causal=causal)
    with dask.config.set(scheduler=_no_compute):
        lazy = mech.forward(da.from_array(q, chunks=(1, qc, 3, 4)), da.from_array(k, chunks=(1, kc, 3, 4)), da.from_array(v, chunks=(1, kc, 3, 5)))
    assert lazy.chunks[1] == da.from_array(q, chunks=(1, qc, 3, 4)).chunks[1]
    out = lazy.compute(scheduler="sync")
    ref = dense_reference(q, k, v, causal)
    assert np.abs(out - ref).max() / max(1.0, np.abs(ref).max()) < 1e-5
    np.testing.assert_allclose(out, mech.forward(q, k, v), rtol=1e-5, atol=1e-5)


def test_causal_split_k_skips_the_shards_above_the_diagonal() -> None:
    q = da.zeros((64, 2, 4), chunks=(16, 2, 4), dtype=np.float32)
    full = split_k_attention(q, q, q, heads=2, dim=4, causal=False)
    causal = split_k_attention(q, q, q, heads=2, dim=4, causal=True)
    parts = lambda a: sum(1 for key in a.__dask_graph__() if isinstance(key, tuple) and key[0].endswith("-part"))  # noqa: E731
    assert parts(full) == 16 and parts(causal) == 10  # 4 x 4 tiles; causal keeps the 10 on or below the diagonal


def _longformer_pattern(length: int, radius: int, globals_: list[int], causal: bool) -> np.ndarray:
    """Longformer's pattern written out from its definition: |i - j| <= radius, or i or j global."""
    allowed = np.zeros((length, length), dtype=bool)
    for i in range(length):
        for j in range(length):
            allowed[i, j] = (abs(i - j) <= radius or i in globals_ or j in globals_) and (j <= i or not causal)
    return allowed


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("global_tokens", [0, 3, [5, 40, 77]])
def test_local_global_over_sequence_shards_equals_the_dense_pattern(causal: bool, global_tokens: int | list[int]) -> None:
    rng = np.random.default_rng(7)
    length, chunk = 101, 16  # 7 shards, the last one short
    q, k, v = (rng.standard_normal((2, length, 2, 4)).astype(np.float32) for _ in range(3))
    mech = attnkit.LocalGlobalAttention(heads=2, dim=4, window=10, global_tokens=global_tokens, causal=causal)
    with dask.config.set(scheduler=_no_compute):
        lazy = mech.forward(*(da.from_array(x, chunks=(1, chunk, 2, 4)) for x in (q, k, v)))
    assert lazy.chunks[1] == da.from_array(q, chunks=(1, chunk, 2, 4)).chunks[1]
    out = lazy.compute(scheduler="sync")
    globals_ = list(range(global_tokens)) if isinstance(global_tokens, int) else global_tokens
    ref = dense_reference(q, k, v, False, _longformer_pattern(length, mech.radius, globals_, causal))
    assert np.abs(out - ref).max() / max(1.0, np.abs(ref).max()) < 1e-5
    np.testing.assert_allclose(out, mech.forward(q, k, v), rtol=1e-5, atol=1e-5)


def test_local_global_blocks_read_only_their_neighbouring_shards() -> None:
    q = da.zeros((128, 2, 4), chunks=(16, 2, 4), dtype=np.float32)
    shards_read: dict[int, set[int]] = {}
    for global_tokens in (0, 2):
        mech = attnkit.LocalGlobalAttention(heads=2, dim=4, window=10, global_tokens=global_tokens)
        graph = mech.forward(q, q, q).__dask_graph__()
        shards_read = {}
        for key in graph:
            if isinstance(key, tuple) and key[0].endswith("-part"):
                shards_read.setdefault(key[-2], set()).add(key[-1])
        if global_tokens == 0:  # radius 5 < 16: a block reads itself and the shards on either side
            assert shards_read == {i: {j for j in (i - 1, i, i + 1) if 0 <= j < 8} for i in range(8)}
    # globals 0 and 1 live in shard 0: block 0 (holding global queries) reads all 8 shards, the others add shard 0
    assert shards_read[0] == set(range(8))
    assert shards_read[5] == {0, 4, 5, 6}


def test_split_k_bad_inputs_are_named() -> None:
    q = da.zeros((8, 2, 4), chunks=(4, 2, 4))
    with pytest.raises(attnkit.ShapeError, match="^query:"):
        split_k_attention(q, q, q, heads=3, dim=4)
    with pytest.raises(attnkit.ShapeError, match="^value:"):
        split_k_attention(q, q, q[:5], heads=2, dim=4)


# ----------------------------------------------------------------------------- a real cluster
@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None, memory_limit="2GiB"
        ) as lc,
        distributed.Client(lc) as client,
    ):
        yield client


def test_on_a_local_cluster_of_two_processes(cluster) -> None:
    for name in ("flash", "multi_head", "hyperbolic", "moe", "edge_featured"):
        mech = build(name)
        arrays, extras = batched(mech, 6, 4, seed=5)
        lazy = mech.forward(*(chunked(x) for x in arrays), **{k: chunked(v) for k, v in extras.items()})
        np.testing.assert_allclose(cluster.compute(lazy).result(), mech.forward(*arrays, **extras), rtol=1e-6, atol=1e-6)
    rng = np.random.default_rng(6)
    q = rng.standard_normal((300, 2, 8)).astype(np.float32)
    mech = attnkit.FlashAttention(heads=2, dim=8, causal=True)
    lazy = mech.forward(da.from_array(q, chunks=(64, 2, 8)))
    np.testing.assert_allclose(cluster.compute(lazy).result(), dense_reference(q, q, q, True), rtol=1e-5, atol=1e-5)


def _peak_rss() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def test_worker_memory_follows_the_chunks_not_l() -> None:
    """Split-K at two sequence lengths, 4x apart, on fresh workers: the workers' peak memory above their
    start-up stays under a bound set from the chunk sizes (it would grow 16x with L for dense scores)."""
    distributed = pytest.importorskip("distributed")
    h, d, chunk = 4, 32, 256
    per_task = 4 * (3 * chunk * h * d + 2 * chunk * h * d) + 4 * h * 256 * 256 * 4  # blocks, partials, tile scratch
    growth = {}
    for L in (1024, 4096):
        with (
            distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None, memory_limit="2GiB"
            ) as lc,
            distributed.Client(lc) as client,
        ):
            base = max(client.run(_peak_rss).values())
            q = da.random.default_rng(0).standard_normal((L, h, d), chunks=(chunk, h, d), dtype=np.float32)
            out = attnkit.FlashAttention(heads=h, dim=d).forward(q)
            total = float(client.compute(out.sum()).result())
            assert math.isfinite(total)
            growth[L] = max(client.run(_peak_rss).values()) - base
    bound = 64 * 2**20 + 8 * per_task  # allocator and Dask overheads + a few tasks' worth of arrays
    assert growth[1024] < bound and growth[4096] < bound, (growth, bound)


def test_cli_runs_against_the_cluster_zarr_in_and_zarr_out(cluster, tmp_path) -> None:
    import json
    import subprocess
    import sys

    zarr = pytest.importorskip("zarr")
    rng = np.random.default_rng(7)
    q = rng.standard_normal((2, 300, 2, 8)).astype(np.float32)
    k = rng.standard_normal((2, 200, 2, 8)).astype(np.float32)
    zarr.save_array(str(tmp_path / "q.zarr"), q)
    np.save(tmp_path / "k.npy", k)
    cmd = [
        sys.executable,
        "-m",
        "attnkit.cli",
        "compute",
        "-t",
        "flash",
        "--heads",
        "2",
        "--dim",
        "8",
        "--causal",
        "-q",
        "q.zarr",
        "-k",
        "k.npy",
        "-v",
        "k.npy",
        "--scheduler",
        cluster.scheduler.address,
        "--chunks",
        "1,128",
        "-o",
        "out.zarr",
        "--json",
    ]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["scheduler"]["scheduler"] == cluster.scheduler.address and len(summary["scheduler"]["workers"]) == 2
    assert summary["output"]["chunks"][:2] == [[1, 1], [128, 128, 44]]
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    np.testing.assert_allclose(out, dense_reference(q, k, k, True), rtol=1e-5, atol=1e-5)
    # the output is never overwritten, and bad arguments exit 2 with one line
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "exists" in r.stderr
    r = subprocess.run(cmd[:-5] + ["--chunks", "0", "-o", "x.zarr"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "chunks" in r.stderr


@pytest.mark.parametrize("feature_map", ["elu", "relu", "dpfp", "favor"])
@pytest.mark.parametrize("causal", [False, True])
def test_linear_shards_equal_the_single_machine_form(feature_map: str, causal: bool) -> None:
    """Non-causal: a tree of key-state merges; causal: a prefix scan over shards (rounded to chunk_size)."""
    rng = np.random.default_rng(11)
    lk = 150 if causal else 170
    q = rng.standard_normal((2, 150, 2, 4)).astype(np.float32)
    k = rng.standard_normal((2, lk, 2, 4)).astype(np.float32)
    v = rng.standard_normal((2, lk, 2, 3)).astype(np.float32)
    mech = attnkit.LinearAttention(dim=4, heads=2, feature_map=feature_map, causal=causal, seed=0, chunk_size=16)
    with dask.config.set(scheduler=_no_compute):
        lazy = mech.forward(da.from_array(q, chunks=(1, 40, 2, 4)), da.from_array(k, chunks=(1, 33, 2, 4)), da.from_array(v, chunks=(1, 33, 2, 3)))
    assert lazy.numblocks[1] == 4
    if causal:
        assert all(c % 16 == 0 for c in lazy.chunks[1][:-1])
    np.testing.assert_allclose(lazy.compute(scheduler="sync"), mech.forward(q, k, v), rtol=1e-5, atol=1e-6)
    ref64 = attnkit.LinearAttention(dim=4, heads=2, feature_map=feature_map, causal=causal, seed=0, chunk_size=16)
    out64 = ref64.forward(da.from_array(q.astype(np.float64), chunks=(1, 40, 2, 4)), k.astype(np.float64), v.astype(np.float64))
    np.testing.assert_allclose(
        out64.compute(scheduler="sync"), ref64.forward(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64)), rtol=1e-12, atol=1e-13
    )


def test_readme_dask_snippet_runs_and_computes_only_what_it_needs() -> None:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("## Past one machine: Dask") :]
    code = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    scope: dict[str, object] = {"__name__": "__readme__"}
    exec(compile(code, "README.md dask snippet", "exec"), scope)
    out = scope["out"]
    first = scope["first"]
    assert first.shape == (16, 8, 64) and np.isfinite(first).all()  # type: ignore[attr-defined]
    from dask.core import flatten
    from dask.optimization import cull

    head = out[:16]  # type: ignore[index]
    culled, _ = cull(dict(head.__dask_graph__()), list(flatten(head.__dask_keys__())))
    parts = lambda g: sum(1 for k in g if isinstance(k, tuple) and str(k[0]).endswith("-part"))  # noqa: E731
    assert parts(culled) == 1 and parts(dict(out.__dask_graph__())) == 10  # type: ignore[attr-defined]  # causal 4x4: 10 tiles
