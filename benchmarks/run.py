"""Run attnkit's performance table (issue 4) and write ``benchmarks/results/<name>.json`` and ``<name>.png``.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.run --name dev-2core

Everything is float32 on ``--threads`` threads (2 by default) in one process; every time is the
median of ``--repeats`` interleaved repeats (the contenders alternate within each repeat, so load
from other processes hits them alike). Sections (``--only`` picks some):

* ``dense``: exact attention, batch 1, 8 heads, head dim 64, L in 512..8192, causal and not, plus
  head dim 128 and batch 4 at L = 2048: attnkit ``FlashAttention.forward`` on NumPy arrays (its
  ``(B, L, H, D)`` layout, input checks included) against ``torch.nn.functional.
  scaled_dot_product_attention`` on torch tensors in torch's ``(B, H, L, D)`` layout, and a naive
  NumPy ``softmax(q k^T) v`` (up to ``--naive-max-len``). Ratio = torch time / attnkit time.
* ``memory``: peak memory of one forward at L = 16384 (8 heads, d 64) beyond inputs and output,
  by tracemalloc and by the process's peak RSS.
* ``torch``: attnkit with torch tensors in (dispatch to torch's fused kernel) against calling
  torch directly: the kernel entry point and ``FlashAttention.forward``.
* ``neighbour``: ``ScaledDotProduct(128)``: 10,000 queries over their own 100 neighbours in one call
  against a Python loop of single-query calls; one single-query call against a bare NumPy version.
* ``linear``: ``LinearAttention(dim=64, heads=8)`` at L = 65536 against exact attention at the same
  L, and its time for L, 2L, 4L.
* ``profile`` (run second, on a fresh process state): where the time goes in the NumPy fast path at L = 4096 (one thread, per phase).
* ``hyperbolic``: ``HyperbolicAttention`` (T = 1 and T = 0.7), ``MixedCurvatureAttention`` and ``DualSpaceAttention``
  at Lq = Lk = 2048, d 64, one head, against ``FlashAttention`` on each engine (target: hyperbolic <= 3x flash).
* ``local``: ``LocalGlobalAttention`` at L = 16384, window 512, 8 heads, d 64, against ``FlashAttention`` with the
  equivalent dense mask (target >= 8x faster) and against its band's FLOPs at the sgemm rate (target <= 1.5x):
  ``4 d H sum_i keys(i)``, ``keys(i) = min(L, i + w + 1) - max(0, i - w)`` (:func:`local_flops`).

With the ``numba`` extra installed the NumPy kernels fuse their exponential and row sums into one
compiled pass (:mod:`attnkit.kernels._accel`); the dense and local sections then also time the pure
NumPy kernels (``ATTNKIT_NUMBA=0``) beside them, and the environment records ``accel``.

Every section also goes to ``<name>-<section>.json`` (and ``.png`` where it has a figure) with the
environment: CPU model, BLAS, thread counts and attnkit's engine calibration. Points are reported also
as a fraction of this machine's own limit: their FLOPs at the best sgemm rate (NumPy's BLAS or torch's)
measured in the same run (:func:`sgemm_rate`). The dense section times attnkit on NumPy inputs on each
engine (``numpy``, ``torch``, ``auto``; see :mod:`attnkit.kernels.engine`).

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, where a machine sets them, pin OpenBLAS to an older kernel
(Haswell instead of SkylakeX on this AVX-512 machine) and slow every GEMM; unset both for this
command only, as above. The BLAS kernel in use is recorded in the results.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.machine import environment

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("dense", "profile", "memory", "torch", "neighbour", "linear", "hyperbolic", "local")


# ---------------------------------------------------------------------------------------------- timing
def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per contender; each repeat runs every contender once, alternating the order."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times: dict[str, list[float]] = {name: [] for name in fns}
    items = list(fns.items())
    for r in range(repeats):
        for name, f in items if r % 2 == 0 else items[::-1]:
            gc.collect()
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def back_to_back(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per contender run ``repeats`` times in a row (no other library in between)."""
    out = {}
    for name, f in fns.items():
        f()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        out[name] = statistics.median(ts)
    return out


def geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def log(msg: str) -> None:
    print(msg, flush=True)


def sgemm_rate(repeats: int = 5, threads: int | None = None) -> dict[str, float]:
    """This machine's best float32 GEMM rate now (FLOP/s): 1024^3 products through NumPy's BLAS and
    through torch (MKL), best of ``repeats``; ``best`` is the limit each point is measured against.

    ``numpy_split``: ``threads`` independent 1024^3 products at once, one per thread, each in
    single-threaded BLAS - the way attnkit's NumPy kernels use the cores. On a loaded machine a
    multi-threaded BLAS call waits for its slowest thread at every step and can read 2-4x low, which
    would flatter every limit fraction; the best of all routes keeps the limit honest."""
    from attnkit._threads import BlasOneThread, get_num_threads, get_pool

    threads = threads if threads is not None else get_num_threads()
    rng = np.random.default_rng(7)
    a, b = (rng.standard_normal((1024, 1024), dtype=np.float32) for _ in range(2))
    flops = 2.0 * 1024**3
    fns: dict[str, Callable[[], object]] = {"numpy": lambda: a @ b}
    work = {"numpy": flops}
    if threads > 1:
        pool = get_pool(threads - 1)
        outs = [np.empty((1024, 1024), dtype=np.float32) for _ in range(threads)]

        def split() -> None:
            with BlasOneThread():
                futures = [pool.submit(np.matmul, a, b, out=o) for o in outs[1:]]
                np.matmul(a, b, out=outs[0])
                for f in futures:
                    f.result()

        fns["numpy_split"] = split
        work["numpy_split"] = flops * threads
    try:
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        fns["torch"] = lambda: ta @ tb
        work["torch"] = flops
    except ImportError:
        pass
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, f in fns.items():
            t0 = time.perf_counter()
            f()
            best[name] = min(best[name], time.perf_counter() - t0)
    rates = {name: work[name] / t for name, t in best.items()}
    rates["best"] = max(rates.values())
    return rates


# ---------------------------------------------------------------------------------------------- contenders
def naive_numpy(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, causal: bool) -> np.ndarray:
    """The textbook ``softmax(scale q k^T) v`` with the whole L x L score matrix in memory."""
    s = (q @ np.swapaxes(k, -1, -2)) * np.float32(scale)
    if causal:
        s = np.where(np.tri(q.shape[-2], k.shape[-2], dtype=bool), s, np.float32(-np.inf))
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return s @ v


# ---------------------------------------------------------------------------------------------- sections
def bench_dense(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from attnkit import FlashAttention

    rng = np.random.default_rng(0)
    configs = [(1, 8, length, 64, 1.0) for length in args.lengths]
    configs += [(1, 8, args.extra_len, 128, 1.0), (4, 8, args.extra_len, 64, 1.0)]
    # q scaled by 8: logits up to ~80, beyond the bounded-logit range, so every tile runs the
    # online softmax (running maximum) - the general path, shown apart from the target table
    configs += [(1, 8, args.profile_len, 64, 8.0)]
    rows = []
    from attnkit.kernels import _accel, engine

    accel = _accel.enabled() and _accel.exp_rowsum() is not None  # loaded before any timing
    calibration = engine.calibration(refresh=True)  # measured now, under this run's load, and cached for "auto"
    rate = sgemm_rate()
    log("\n== dense exact attention, fp32 (ratio = torch / attnkit; > 1 means attnkit is faster)")
    log(f"engine calibration (log work -> numpy time / torch time): {calibration}")
    log(f"NumPy engine exp pass: {'numba (the numba extra; pure NumPy shown per row too)' if accel else 'NumPy'}")
    log(
        "attnkit with NumPy inputs on each engine: numpy (its NumPy path), torch (torch's fused kernel on zero-copy views), "
        "auto (the calibrated choice); auto/best = the faster engine's time / auto's (target >= 0.97)"
    )
    log(
        f"limit = the point's FLOPs at this machine's best sgemm rate, {rate['best'] / 1e9:.0f} GFLOP/s (numpy "
        f"{rate['numpy'] / 1e9:.0f}, numpy split over threads {rate.get('numpy_split', float('nan')) / 1e9:.0f}, "
        f"torch {rate.get('torch', float('nan')) / 1e9:.0f}), as a fraction of each time"
    )
    log(
        f"{'B':>2} {'H':>2} {'L':>6} {'D':>4} {'causal':>6} | {'numpy ms':>9} {'torch-eng':>9} {'auto ms':>8} {'torch ms':>9} | "
        f"{'ratio np':>8} {'ratio au':>8} {'au/best':>7} | {'lim np':>6} {'lim te':>6} {'lim th':>6} | {'naive ms':>9}"
    )
    for b, h, length, d, qscale in configs:
        for causal in (False, True):
            x = [rng.standard_normal((b, length, h, d), dtype=np.float32) for _ in range(3)]
            x[0] *= np.float32(qscale)
            th = [torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, 1, 2))) for a in x]
            engines = {e: FlashAttention(heads=h, dim=d, causal=causal, engine=e) for e in ("numpy", "torch", "auto")}
            scale = 1.0 / math.sqrt(d)
            fns: dict[str, Callable[[], object]] = {f"attnkit_{e}": (lambda fa=fa, x=x: fa.forward(*x)) for e, fa in engines.items()}
            fns["torch"] = lambda th=th, c=causal: F.scaled_dot_product_attention(*th, is_causal=c)
            if accel:  # the NumPy engine uses the numba extra's exp pass; the pure-NumPy kernel beside it
                fns["attnkit_numpy_pure"] = _without_accel(fns["attnkit_numpy"])
            naive_ok = length <= args.naive_max_len and (b, h, d, qscale) == (1, 8, 64, 1.0)
            if naive_ok:
                hx = [np.ascontiguousarray(np.moveaxis(a, 1, 2)) for a in x]
                fns["naive"] = lambda hx=hx, c=causal, s=scale: naive_numpy(*hx, s, c)
            # correctness of what is timed: attnkit (each engine) against torch on the same numbers
            ref = F.scaled_dot_product_attention(*th, is_causal=causal).numpy()
            err = max(float(np.max(np.abs(np.moveaxis(np.asarray(fa.forward(*x)), 1, 2) - ref))) for fa in engines.values())
            t = interleaved(fns, args.repeats)
            scores = b * h * (length * (length + 1) / 2 if causal else length * length)
            flops = 4.0 * scores * d
            limit = flops / rate["best"]
            best = min(t["attnkit_numpy"], t["attnkit_torch"])
            # the engine "auto" runs here (the same code as that engine's own column, so its time there is the
            # same run measured again: choice_vs_best says whether the choice was right, free of that noise)
            chosen = engine.choose_engine("auto", work=4.0 * b * h * length * length * d, dtype=np.float32, causal=causal)
            row = dict(
                batch=b,
                heads=h,
                length=length,
                dim=d,
                causal=causal,
                q_scale=qscale,
                attnkit_s=t["attnkit_numpy"],
                attnkit_numpy_s=t["attnkit_numpy"],
                attnkit_torch_engine_s=t["attnkit_torch"],
                attnkit_auto_s=t["attnkit_auto"],
                torch_s=t["torch"],
                naive_s=t.get("naive"),
                ratio=t["torch"] / t["attnkit_numpy"],
                ratio_auto=t["torch"] / t["attnkit_auto"],
                auto_vs_best=best / t["attnkit_auto"],
                auto_engine=chosen,
                choice_vs_best=best / t[f"attnkit_{chosen}"],
                flops=flops,
                limit_s=limit,
                limit_fraction_numpy=limit / t["attnkit_numpy"],
                limit_fraction_torch_engine=limit / t["attnkit_torch"],
                limit_fraction_torch=limit / t["torch"],
                max_abs_diff_vs_torch=err,
                attnkit_numpy_pure_s=t.get("attnkit_numpy_pure", t["attnkit_numpy"]),
                ratio_pure_numpy=t["torch"] / t.get("attnkit_numpy_pure", t["attnkit_numpy"]),
                limit_fraction_pure_numpy=limit / t.get("attnkit_numpy_pure", t["attnkit_numpy"]),
            )
            rows.append(row)
            naive = f"{t['naive'] * 1e3:9.2f}" if "naive" in t else f"{'-':>9}"
            note = "  (q x 8: large logits, online softmax)" if qscale != 1.0 else ""
            if accel:
                pure = row["attnkit_numpy_pure_s"] * 1e3
                note += f"  pure NumPy {pure:.2f} ms ratio {row['ratio_pure_numpy']:.2f} lim {row['limit_fraction_pure_numpy']:.2f}"
            log(
                f"{b:>2} {h:>2} {length:>6} {d:>4} {causal!s:>6} | {t['attnkit_numpy'] * 1e3:9.2f} {t['attnkit_torch'] * 1e3:9.2f} "
                f"{t['attnkit_auto'] * 1e3:8.2f} {t['torch'] * 1e3:9.2f} | {row['ratio']:8.2f} {row['ratio_auto']:8.2f} "
                f"{row['auto_vs_best']:7.2f} | {row['limit_fraction_numpy']:6.2f} {row['limit_fraction_torch_engine']:6.2f} "
                f"{row['limit_fraction_torch']:6.2f} | {naive} | auto: {chosen} ({row['choice_vs_best']:.2f}){note}"
            )
            for fa in engines.values():
                fa.dispose()
    main = [r for r in rows if (r["batch"], r["heads"], r["dim"], r["q_scale"]) == (1, 8, 64, 1.0)]
    ratios = [r["ratio"] for r in main]
    auto = [r["auto_vs_best"] for r in rows]
    summary = dict(
        geomean_ratio=geomean(ratios),
        min_ratio=min(ratios),
        target_geomean=1.0,
        target_min=0.8,
        geomean_ratio_auto=geomean([r["ratio_auto"] for r in main]),
        geomean_ratio_pure_numpy=geomean([r["ratio_pure_numpy"] for r in main]),
        min_ratio_pure_numpy=min(r["ratio_pure_numpy"] for r in main),
        accel="numba" if accel else None,
        min_auto_vs_best=min(auto),
        min_choice_vs_best=min(r["choice_vs_best"] for r in rows),
        target_auto_vs_best=0.97,
        sgemm_rate=rate,
        passed=geomean(ratios) >= 1.0 and min(ratios) >= 0.8,
    )
    log(
        f"NumPy engine: geometric mean ratio {summary['geomean_ratio']:.2f}, minimum {summary['min_ratio']:.2f} "
        f"(pure NumPy {summary['geomean_ratio_pure_numpy']:.2f}, {summary['min_ratio_pure_numpy']:.2f}); "
        f"auto: geometric mean ratio {summary['geomean_ratio_auto']:.2f}, worst auto/best {summary['min_auto_vs_best']:.2f} (target >= 0.97); "
        f"worst time of the engine auto chose / the faster engine's {summary['min_choice_vs_best']:.2f}"
    )
    return dict(rows=rows, summary=summary)


def bench_hyperbolic(args: argparse.Namespace) -> dict[str, Any]:
    """Hyperbolic attention (and the mechanisms built on it) against FlashAttention at the same shape."""
    from attnkit import DualSpaceAttention, FlashAttention, HyperbolicAttention, MixedCurvatureAttention

    length, d = args.hyperbolic_len, 64
    rng = np.random.default_rng(11)
    hyp = HyperbolicAttention(d)
    hq, hk, hv = hyp.example_inputs(length, rng)
    mixed = MixedCurvatureAttention(dim=d)
    mq, mk, mv = mixed.example_inputs(length, rng)
    dual = DualSpaceAttention(dim=d)
    dq, dk, dv = dual.example_inputs(length, rng)
    x = [rng.standard_normal((length, 1, d), dtype=np.float32) for _ in range(3)]
    fa_np, fa_t = FlashAttention(heads=1, dim=d, engine="numpy"), FlashAttention(heads=1, dim=d, engine="torch")
    fns: dict[str, Callable[[], object]] = {
        "hyperbolic": lambda: hyp.forward(hq, hk, hv),
        "hyperbolic_T0.7": lambda h=HyperbolicAttention(d, temperature=0.7): h.forward(hq, hk, hv),
        "mixed_curvature": lambda: mixed.forward(mq, mk, mv),
        "dual_space": lambda: dual.forward(dq, dk, dv),
        "flash_numpy": lambda: fa_np.forward(*x),
        "flash_torch_engine": lambda: fa_t.forward(*x),
    }
    rate = sgemm_rate()
    t = interleaved(fns, args.repeats)
    flops = 4.0 * length * length * d
    log(
        f"\n== hyperbolic attention, Lq = Lk = {length}, d {d}, one head, fp32 NumPy in (ratio = time / FlashAttention's "
        f"NumPy-engine time; target <= 3 for hyperbolic); limit = 4 L^2 d FLOPs at {rate['best'] / 1e9:.0f} GFLOP/s"
    )
    rows = []
    for name, sec in t.items():
        row = dict(
            name=name,
            seconds=sec,
            ratio_to_flash_numpy=sec / t["flash_numpy"],
            ratio_to_flash_torch_engine=sec / t["flash_torch_engine"],
            limit_fraction=flops / rate["best"] / sec,
        )
        rows.append(row)
        log(
            f"{name:<20} {sec * 1e3:9.2f} ms   x{row['ratio_to_flash_numpy']:5.2f} flash(numpy)   "
            f"x{row['ratio_to_flash_torch_engine']:5.2f} flash(torch engine)   limit fraction {row['limit_fraction']:.2f}"
        )
    ratio = t["hyperbolic"] / t["flash_numpy"]
    return dict(rows=rows, length=length, dim=d, sgemm_rate=rate, ratio=ratio, target=3.0, passed=ratio <= 3.0)


def _without_accel(f: Callable[[], object]) -> Callable[[], object]:
    """``f`` with the compiled exp pass of the ``numba`` extra switched off (the pure-NumPy kernels)."""

    def run() -> object:
        old = os.environ.get("ATTNKIT_NUMBA")
        os.environ["ATTNKIT_NUMBA"] = "0"
        try:
            return f()
        finally:
            if old is None:
                del os.environ["ATTNKIT_NUMBA"]
            else:
                os.environ["ATTNKIT_NUMBA"] = old

    return run


def local_flops(length: int, radius: int, heads: int, dim: int, dim_v: int, n_global: int = 0) -> float:
    """The FLOPs local-global attention needs, counting only the scores its mask keeps.

    Query ``i`` sees keys ``max(0, i - w) .. min(L - 1, i + w)`` (``2w + 1`` away from the ends), the
    ``G`` global keys (counted once where they lie in the band) and, when global, every key. Each kept
    score costs ``2 d`` FLOPs in ``q k^T`` and ``2 dv`` in ``p v``: ``FLOPs = 2 (d + dv) H sum_i keys(i)``,
    about ``4 L (2w + 1) d`` per head for ``dv = d`` and no globals. The softmax is not counted.
    """
    i = np.arange(length)
    band = np.minimum(length, i + radius + 1) - np.maximum(0, i - radius)
    g = np.arange(n_global)
    in_band = (np.abs(i[:, None] - g[None, :]) <= radius).sum(axis=1) if n_global else 0
    keys = np.where(i < n_global, length, band + n_global - in_band)
    return 2.0 * (dim + dim_v) * heads * float(keys.sum())


def bench_local(args: argparse.Namespace) -> dict[str, Any]:
    """Local-global attention against dense attention with the equivalent mask, and against its
    FLOPs (:func:`local_flops`) at this machine's best sgemm rate measured in the same run (the best
    of a measurement before and one after the timings, so that load cannot flatter the ratio)."""
    from attnkit import FlashAttention, LocalGlobalAttention
    from attnkit.kernels import _accel

    length, window, heads, d = args.local_len, 512, 8, 64
    rng = np.random.default_rng(12)
    x = [rng.standard_normal((length, heads, d), dtype=np.float32) for _ in range(3)]
    lg = LocalGlobalAttention(dim=d, heads=heads, window=window)
    mask = lg.dense_mask(length)
    fa = FlashAttention(heads=heads, dim=d, engine="numpy")
    rate = sgemm_rate()
    fns: dict[str, Callable[[], object]] = {"local_global": lambda: lg.forward(*x), "dense_masked_numpy": lambda: fa.forward(*x, mask=mask)}
    accel = _accel.enabled() and _accel.exp_rowsum() is not None
    if accel:  # the default uses the numba extra's exp pass; the pure-NumPy kernel beside it
        fns["local_global_pure_numpy"] = _without_accel(fns["local_global"])
    t = interleaved(fns, args.local_repeats, warmup=0)
    after = sgemm_rate()
    if after["best"] > rate["best"]:
        rate = after
    w = lg.radius
    flops = local_flops(length, w, heads, d, d, 0)
    limit = flops / rate["best"]
    speedup = t["dense_masked_numpy"] / t["local_global"]
    log(f"\n== local-global attention, L = {length}, window {window} (radius {w}), {heads} heads, d {d}, fp32 NumPy in")
    log(
        f"FLOPs counted: 4 d H sum_i keys(i) = {flops / 1e9:.2f} GFLOP (the band only); best sgemm rate "
        f"{rate['best'] / 1e9:.0f} GFLOP/s -> limit {limit * 1e3:.1f} ms; exp pass: {'numba' if accel else 'NumPy'}"
    )
    log(
        f"local_global {t['local_global'] * 1e3:.1f} ms; dense with the equivalent mask: numpy engine "
        f"{t['dense_masked_numpy'] * 1e3:.1f} ms (x{speedup:.1f}, target >= 8); local-global at x{t['local_global'] / limit:.2f} "
        "of the limit (target <= 1.5)"
    )
    if accel:
        log(f"pure NumPy (ATTNKIT_NUMBA=0): {t['local_global_pure_numpy'] * 1e3:.1f} ms, x{t['local_global_pure_numpy'] / limit:.2f} of the limit")
    return dict(
        length=length,
        window=window,
        radius=w,
        heads=heads,
        dim=d,
        seconds=t,
        sgemm_rate=rate,
        flop_count="2 (d + dv) H sum_i keys(i), keys(i) = min(L, i + w + 1) - max(0, i - w) (no global tokens here)",
        band_flops=flops,
        limit_s=limit,
        accel="numba" if accel else None,
        speedup_vs_dense=speedup,
        time_over_limit=t["local_global"] / limit,
        time_over_limit_pure_numpy=t["local_global_pure_numpy"] / limit if accel else t["local_global"] / limit,
        passed=speedup >= 8 and t["local_global"] / limit <= 1.5,
    )


def _rss_hwm_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def bench_memory(args: argparse.Namespace) -> dict[str, Any]:
    from attnkit import FlashAttention

    length, h, d = args.memory_len, 8, 64
    rng = np.random.default_rng(1)
    x = [rng.standard_normal((length, h, d), dtype=np.float32) for _ in range(3)]
    fa = FlashAttention(heads=h, dim=d)
    fa.forward(*(a[:1024] for a in x))  # warm: thread pool, scratch buffers, BLAS buffers
    gc.collect()
    out_bytes = length * h * d * 4
    rss_ok = _rss_hwm_reset()
    rss_before = _status_kb("VmRSS")
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fa.forward(*x)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    hwm = _status_kb("VmHWM")
    del out
    traced_extra = (peak - out_bytes) / 2**20
    rss_growth = (hwm - rss_before) / 1024 if (rss_ok and hwm and rss_before) else None
    naive = h * length * length * 4 / 2**20
    res = dict(
        length=length,
        heads=h,
        dim=d,
        seconds=seconds,
        output_mb=out_bytes / 2**20,
        traced_peak_beyond_output_mb=traced_extra,
        rss_peak_growth_mb=rss_growth,
        naive_scores_mb=naive,
        target_mb=64.0,
        passed=traced_extra <= 64.0 and (rss_growth is None or rss_growth <= 64.0 + out_bytes / 2**20),
    )
    log(f"\n== memory: one forward at L={length}, {h} heads, d {d} ({seconds:.1f} s)")
    log(
        f"tracemalloc: peak {traced_extra:.1f} MB beyond the {out_bytes / 2**20:.0f} MB output; process peak RSS grew "
        f"{'n/a' if rss_growth is None else f'{rss_growth:.1f} MB'} (output included); target <= 64 MB beyond inputs and "
        f"output (the L x L scores alone would be {naive:.0f} MB)"
    )
    fa.dispose()
    return res


def bench_torch(args: argparse.Namespace) -> dict[str, Any]:
    import array_api_compat
    import torch
    import torch.nn.functional as F

    from attnkit import FlashAttention
    from attnkit.kernels.dense import sdpa

    txp = array_api_compat.array_namespace(torch.empty(0))
    rng = np.random.default_rng(2)
    rows = []
    log("\n== torch tensors in: attnkit's dispatch to torch's fused kernel vs calling torch directly")
    log(
        "sdpa = attnkit.kernels.dense.sdpa on (B, H, L, D) tensors; Flash = FlashAttention.forward on (B, L, H, D) tensors "
        "(input checks included), against torch on the same layout; 'no check' = FlashAttention(check_finite=False)"
    )
    log(
        f"{'L':>6} {'causal':>6} | {'torch ms':>9} {'sdpa ms':>9} {'overhead':>8} | {'torch(BLHD) ms':>14} {'Flash ms':>9} {'overhead':>8} | "
        f"{'no check':>9} {'overhead':>8} | {'Flash 3-D':>9} {'overhead':>8}"
    )
    for length in args.torch_lengths:
        for causal in (False, True):
            th = [torch.from_numpy(rng.standard_normal((1, 8, length, 64), dtype=np.float32)) for _ in range(3)]
            tl = [torch.from_numpy(rng.standard_normal((1, length, 8, 64), dtype=np.float32)) for _ in range(3)]
            tg = [th[0], *(torch.from_numpy(rng.standard_normal((1, 2, length, 64), dtype=np.float32)) for _ in range(2))]  # GQA, 2 kv heads
            fa = FlashAttention(heads=8, dim=64, causal=causal)
            fa_bhsd = FlashAttention(heads=8, dim=64, causal=causal, layout="bhsd")
            fa_nc = FlashAttention(heads=8, dim=64, causal=causal, check_finite=False)
            fns = {
                "torch": lambda th=th, c=causal: F.scaled_dot_product_attention(*th, is_causal=c),
                "sdpa": lambda th=th, c=causal: sdpa(*th, xp=txp, scale=0.125, causal=c),
                "torch_blhd": lambda tl=tl, c=causal: F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in tl), is_causal=c).transpose(1, 2),
                "flash": lambda tl=tl, fa=fa: fa.forward(*tl),
                "flash_3d": lambda tl=tl, fa=fa: fa.forward(*(t[0] for t in tl)),  # (L, H, D): no batch dim
                "flash_nocheck": lambda tl=tl, fa=fa_nc: fa.forward(*tl),
                "flash_bhsd": lambda th=th, fa=fa_bhsd: fa.forward(*th),  # torch's layout, passed as is
                "torch_gqa": lambda tg=tg, c=causal: F.scaled_dot_product_attention(*tg, is_causal=c, enable_gqa=True),
                "flash_gqa_bhsd": lambda tg=tg, fa=fa_bhsd: fa.forward(*tg),
            }
            # short calls are the noisiest and the overhead matters most there: more repeats (up to 4x)
            t = interleaved(fns, args.torch_repeats * max(1, min(4, 2048 // length)))
            row = dict(
                length=length,
                causal=causal,
                torch_s=t["torch"],
                sdpa_s=t["sdpa"],
                torch_blhd_s=t["torch_blhd"],
                flash_s=t["flash"],
                flash_nocheck_s=t["flash_nocheck"],
                sdpa_overhead=t["sdpa"] / t["torch"] - 1,
                flash_overhead=t["flash"] / t["torch_blhd"] - 1,
                flash_nocheck_overhead=t["flash_nocheck"] / t["torch_blhd"] - 1,
                flash_3d_s=t["flash_3d"],
                flash_3d_overhead=t["flash_3d"] / t["torch_blhd"] - 1,
                flash_bhsd_s=t["flash_bhsd"],
                flash_bhsd_overhead=t["flash_bhsd"] / t["torch"] - 1,
                torch_gqa_s=t["torch_gqa"],
                flash_gqa_bhsd_s=t["flash_gqa_bhsd"],
                flash_gqa_bhsd_overhead=t["flash_gqa_bhsd"] / t["torch_gqa"] - 1,
            )
            rows.append(row)
            log(
                f"{length:>6} {causal!s:>6} | {t['torch'] * 1e3:9.2f} {t['sdpa'] * 1e3:9.2f} {row['sdpa_overhead']:8.1%} | "
                f"{t['torch_blhd'] * 1e3:14.2f} {t['flash'] * 1e3:9.2f} {row['flash_overhead']:8.1%} | "
                f"{t['flash_nocheck'] * 1e3:9.2f} {row['flash_nocheck_overhead']:8.1%} | "
                f"{t['flash_3d'] * 1e3:9.2f} {row['flash_3d_overhead']:8.1%} | "
                f"bhsd {row['flash_bhsd_overhead']:6.1%} | GQA bhsd {row['flash_gqa_bhsd_overhead']:6.1%}"
            )
            fa.dispose()
            fa_bhsd.dispose()
            fa_nc.dispose()
    # the dispatch's own cost, free of timing noise: torch's kernel replaced by a stub that returns q
    real = F.scaled_dot_product_attention

    def stub(q: Any, k: Any, v: Any, attn_mask: Any = None, is_causal: bool = False, scale: Any = None) -> Any:
        return q

    th = [torch.from_numpy(rng.standard_normal((1, 8, 512, 64), dtype=np.float32)) for _ in range(3)]
    tl = [torch.from_numpy(rng.standard_normal((1, 512, 8, 64), dtype=np.float32)) for _ in range(3)]
    fa, fa_nc = FlashAttention(heads=8, dim=64), FlashAttention(heads=8, dim=64, check_finite=False)
    calls = 2000
    F.scaled_dot_product_attention = stub
    try:
        cost = interleaved(
            {
                "direct": lambda: [F.scaled_dot_product_attention(*th, scale=0.125) for _ in range(calls)],
                "sdpa": lambda: [sdpa(*th, xp=txp, scale=0.125) for _ in range(calls)],
                "direct_blhd": lambda: [F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in tl)).transpose(1, 2) for _ in range(calls)],
                "flash": lambda: [fa.forward(*tl) for _ in range(calls)],
                "flash_nocheck": lambda: [fa_nc.forward(*tl) for _ in range(calls)],
            },
            5,
        )
    finally:
        F.scaled_dot_product_attention = real
    us = {k: v / calls * 1e6 for k, v in cost.items()}
    dispatch = dict(
        sdpa_us=us["sdpa"] - us["direct"],
        flash_us=us["flash"] - us["direct_blhd"],
        flash_nocheck_us=us["flash_nocheck"] - us["direct_blhd"],
        inputs="1 x 8 x 512 x 64 float32",
    )
    t512 = min(r["torch_s"] for r in rows if r["length"] == min(args.torch_lengths)) * 1e6
    log(
        f"dispatch cost with torch's kernel stubbed out (L={min(args.torch_lengths)}): sdpa {dispatch['sdpa_us']:.1f} us, "
        f"FlashAttention.forward {dispatch['flash_us']:.1f} us ({dispatch['flash_nocheck_us']:.1f} us without checks) "
        f"= {dispatch['sdpa_us'] / t512:.1%} / {dispatch['flash_us'] / t512:.1%} of torch's fastest call here ({t512 / 1e3:.2f} ms)"
    )
    fa.dispose()
    fa_nc.dispose()
    worst = max(r["sdpa_overhead"] for r in rows)
    worst_flash = max(r["flash_overhead"] for r in rows)
    worst_nc = max(r["flash_nocheck_overhead"] for r in rows)
    worst_3d = max(r["flash_3d_overhead"] for r in rows)
    worst_bhsd = max(max(r["flash_bhsd_overhead"], r["flash_gqa_bhsd_overhead"]) for r in rows)
    log(f"worst overhead of FlashAttention(layout='bhsd').forward on (B, H, L, D) tensors, GQA included: {worst_bhsd:.1%}")
    log(f"worst overhead of FlashAttention.forward on 3-D (L, H, D) tensors: {worst_3d:.1%}")
    log(
        f"worst overhead: kernel dispatch {worst:.1%}, FlashAttention.forward {worst_flash:.1%} "
        f"({worst_nc:.1%} without the finiteness checks) (target <= 5%)"
    )
    return dict(
        rows=rows,
        worst_sdpa_overhead=worst,
        worst_flash_overhead=worst_flash,
        worst_flash_nocheck_overhead=worst_nc,
        worst_flash_3d_overhead=worst_3d,
        worst_flash_bhsd_overhead=worst_bhsd,
        dispatch_cost=dispatch,
        target=0.05,
        passed=max(worst_flash, worst_3d, worst_bhsd) <= 0.05,
    )


def bench_neighbour(args: argparse.Namespace) -> dict[str, Any]:
    try:
        from attnkit import ScaledDotProduct
    except (ImportError, AttributeError) as exc:
        log(f"\n== neighbour attention: skipped ({exc})")
        return dict(skipped=str(exc))
    n, kn, d = 10_000, 100, 128
    rng = np.random.default_rng(3)
    q = rng.standard_normal((n, d), dtype=np.float32)
    keys = rng.standard_normal((n, kn, d), dtype=np.float32)
    values = rng.standard_normal((n, kn, d), dtype=np.float32)
    sdp = ScaledDotProduct(d)
    scale = 1.0 / math.sqrt(d)

    def loop() -> list:
        return [sdp.forward(q[i], keys[i], values[i]) for i in range(n)]

    batched = sdp.forward(q, keys, values)
    np.testing.assert_allclose(batched[:50], np.stack(loop()[:50]), rtol=1e-4, atol=1e-5)
    t = interleaved({"one_call": lambda: sdp.forward(q, keys, values), "python_loop": loop}, max(3, args.repeats // 2))

    def bare(qi: np.ndarray, ki: np.ndarray, vi: np.ndarray) -> np.ndarray:
        s = ki @ qi * np.float32(scale)
        s -= s.max()
        w = np.exp(s)
        w /= w.sum()
        return w @ vi

    np.testing.assert_allclose(sdp.forward(q[0], keys[0], values[0]), bare(q[0], keys[0], values[0]), rtol=1e-4, atol=1e-5)
    calls = 2000

    def many(f: Callable[..., object]) -> Callable[[], None]:
        def run() -> None:
            for i in range(calls):
                f(q[i], keys[i], values[i])

        return run

    s = interleaved({"attnkit_single": many(sdp.forward), "bare_numpy": many(bare)}, args.repeats)
    res = dict(
        queries=n,
        neighbours=kn,
        dim=d,
        one_call_s=t["one_call"],
        python_loop_s=t["python_loop"],
        speedup=t["python_loop"] / t["one_call"],
        single_call_us=s["attnkit_single"] / calls * 1e6,
        bare_numpy_us=s["bare_numpy"] / calls * 1e6,
        single_vs_bare=s["attnkit_single"] / s["bare_numpy"],
    )
    res["passed"] = res["speedup"] >= 20 and res["single_vs_bare"] <= 2
    log(f"\n== neighbour attention (ScaledDotProduct, {n} queries x {kn} neighbours, d {d})")
    log(f"one call {t['one_call'] * 1e3:.1f} ms vs Python loop {t['python_loop'] * 1e3:.0f} ms: {res['speedup']:.0f}x (target >= 20x)")
    log(f"single query {res['single_call_us']:.1f} us vs bare NumPy {res['bare_numpy_us']:.1f} us: {res['single_vs_bare']:.2f}x (target <= 2x)")
    sdp.dispose()
    return res


def bench_linear(args: argparse.Namespace) -> dict[str, Any]:
    try:
        from attnkit import LinearAttention
    except (ImportError, AttributeError) as exc:
        log(f"\n== linear attention: skipped ({exc})")
        return dict(skipped=str(exc))
    from attnkit import FlashAttention

    h, d = 8, 64
    base = args.linear_len
    rng = np.random.default_rng(4)
    la = LinearAttention(dim=d, heads=h)
    times = {}
    log(f"\n== linear attention (LinearAttention(dim={d}, heads={h}))")
    for length in (base // 2, base, base * 2):
        x = [rng.standard_normal((length, h, d), dtype=np.float32) for _ in range(3)]
        times[length] = interleaved({"linear": lambda x=x: la.forward(*x)}, max(3, args.repeats // 2))["linear"]
        log(f"L={length:>7}: {times[length] * 1e3:9.1f} ms")
    x = [rng.standard_normal((base, h, d), dtype=np.float32) for _ in range(3)]
    fa = FlashAttention(heads=h, dim=d)
    t0 = time.perf_counter()
    fa.forward(*x)
    exact = time.perf_counter() - t0
    growth = [times[base] / times[base // 2], times[base * 2] / times[base]]
    res = dict(
        length=base,
        linear_s=times[base],
        exact_s=exact,
        speedup=exact / times[base],
        times={str(k): v for k, v in times.items()},
        doubling_ratios=growth,
    )
    res["passed"] = res["speedup"] >= 20 and max(growth) <= 2.2
    log(f"exact attention at L={base}: {exact:.1f} s (one run) -> linear is {res['speedup']:.0f}x faster (target >= 20x)")
    log(f"time ratio for doubling L: {growth[0]:.2f}, {growth[1]:.2f} (target <= 2.2)")
    la.dispose()
    fa.dispose()
    return res


def bench_profile(args: argparse.Namespace) -> dict[str, Any]:
    from attnkit.kernels.dense_numpy import sdpa_numpy

    length = args.profile_len
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((1, 8, length, 64), dtype=np.float32) for _ in range(3))
    out: dict[str, Any] = {"length": length}
    log(f"\n== profile of the NumPy fast path at L={length} (8 heads, d 64; one thread, seconds per phase)")
    for causal in (False, True):
        t = interleaved(
            {
                "one": lambda c=causal: sdpa_numpy(q, k, v, scale=0.125, causal=c, num_threads=1),
                "threads": lambda c=causal: sdpa_numpy(q, k, v, scale=0.125, causal=c),
            },
            3,
        )
        t2 = t["threads"]
        prof: dict[str, float] = {}
        t0 = time.perf_counter()
        sdpa_numpy(q, k, v, scale=0.125, causal=causal, num_threads=1, profile=prof)
        total = time.perf_counter() - t0
        scores = 8 * length * (length + 1) / 2 if causal else 8 * length * length
        flops = 4 * scores * 64
        gemm = prof.get("GEMM q k^T", 0.0) + prof.get("GEMM p v", 0.0)
        out["causal" if causal else "full"] = dict(
            total_1thread_s=total, median_1thread_s=t["one"], phases_s=prof, threaded_s=t2, gemm_gflops_1thread=flops / gemm / 1e9 if gemm else None
        )
        log(
            f"causal={causal}: one thread {t['one'] * 1e3:.1f} ms, {args.threads} threads {t2 * 1e3:.1f} ms "
            f"(speed-up {t['one'] / t2:.2f}); profiled one-thread run {total * 1e3:.1f} ms, "
            f"its GEMMs at {flops / gemm / 1e9:.0f} GFLOP/s"
        )
        for name, sec in sorted(prof.items(), key=lambda kv: -kv[1]):
            log(f"    {name:<14} {sec * 1e3:8.1f} ms  {sec / total:6.1%}")
    return out


# ---------------------------------------------------------------------------------------------- plot
def plot(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no plot (pip install attnkit[plot])")
        return False
    rows = [r for r in results["dense"]["rows"] if (r["batch"], r["heads"], r["dim"], r["q_scale"]) == (1, 8, 64, 1.0)]
    fig, ax = plt.subplots(figsize=(7, 5))
    styles = {
        "attnkit_s": ("attnkit (numpy engine)", "tab:blue"),
        "attnkit_torch_engine_s": ("attnkit (torch engine)", "tab:green"),
        "attnkit_auto_s": ("attnkit (auto)", "tab:purple"),
        "torch_s": ("torch SDPA", "tab:orange"),
        "naive_s": ("naive NumPy", "tab:gray"),
    }
    for causal, ls in ((False, "-"), (True, "--")):
        sub = [r for r in rows if r["causal"] == causal]
        for key, (label, color) in styles.items():
            pts = [(r["length"], r[key]) for r in sub if r.get(key)]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, ls, marker="o", color=color, label=f"{label}{' causal' if causal else ''}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length L")
    ax.set_ylabel("seconds per forward (median)")
    env = results["environment"]
    ax.set_title(f"exact attention, fp32, batch 1, 8 heads, d 64, {env['threads']} threads\n{env['cpu']}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _engine_calibration() -> Any:
    """attnkit's cached engine calibration for this machine (None where torch is missing)."""
    try:
        from attnkit.kernels import engine

        return {"cpu": engine.cpu_model(), "ratios_numpy_over_torch": engine.calibration()}
    except ImportError:
        return None


def plot_section(section: str, results: dict[str, Any], path: Path) -> bool:
    """One figure per section where it has one (dense: times by L; hyperbolic, local: bars)."""
    if section == "dense":
        return plot(results, path)
    if section not in ("hyperbolic", "local"):
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no plot (pip install attnkit[plot])")
        return False
    res, env = results[section], results["environment"]
    if section == "hyperbolic":
        names = [r["name"] for r in res["rows"]]
        secs = [r["seconds"] * 1e3 for r in res["rows"]]
        title = f"L = {res['length']}, d {res['dim']}, 1 head, fp32 NumPy in"
    else:
        names = list(res["seconds"]) + ["band FLOPs at sgemm rate"]
        secs = [v * 1e3 for v in res["seconds"].values()] + [res["limit_s"] * 1e3]
        title = f"local-global, L = {res['length']}, window {res['window']}, {res['heads']} heads, d {res['dim']}"
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.barh(names, secs, color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("ms per forward (median of interleaved repeats)")
    ax.set_title(f"{title}\n{env['cpu']}, {env['threads']} threads", fontsize=9)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default="latest", help="results go to benchmarks/results/<name>.json and .png")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats per point (median)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {', '.join(SECTIONS)}")
    p.add_argument("--lengths", default="512,1024,2048,4096,8192")
    p.add_argument("--extra-len", type=int, default=2048, help="L of the head-dim-128 and batch-4 rows")
    p.add_argument("--naive-max-len", type=int, default=4096, help="naive NumPy needs H*L*L*4 bytes of scores")
    p.add_argument("--memory-len", type=int, default=16384)
    p.add_argument("--torch-lengths", default="512,2048")
    p.add_argument("--torch-repeats", type=int, default=15)
    p.add_argument("--linear-len", type=int, default=65536)
    p.add_argument("--profile-len", type=int, default=4096)
    p.add_argument("--hyperbolic-len", type=int, default=2048)
    p.add_argument("--local-len", type=int, default=16384)
    p.add_argument("--local-repeats", type=int, default=3, help="the dense contender takes seconds a run")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    a = p.parse_args(argv)
    a.lengths = [int(x) for x in a.lengths.split(",")]
    a.torch_lengths = [int(x) for x in a.torch_lengths.split(",")]
    a.only = [s.strip() for s in a.only.split(",") if s.strip()]
    unknown = set(a.only) - set(SECTIONS)
    if unknown:
        p.error(f"--only: unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    if a.quick:
        a.lengths, a.naive_max_len, a.memory_len, a.extra_len = [256, 512, 1024], 1024, 2048, 512
        a.torch_lengths, a.torch_repeats, a.linear_len, a.profile_len, a.repeats = [256], 5, 4096, 1024, 3
        a.hyperbolic_len, a.local_len, a.local_repeats = 512, 2048, 1
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from attnkit.kernels import dense_numpy

    dense_numpy.set_num_threads(args.threads)
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        if {"dense", "torch"} & set(args.only):
            log("torch is not installed: the dense and torch sections need it (pip install torch==2.13.0)")
            return 2
    results: dict[str, Any] = {"name": args.name, "environment": environment(args.threads), "argv": sys.argv[1:]}
    env = results["environment"]
    if env["OPENBLAS_CORETYPE"] or env["OPENBLAS_L2_SIZE"]:
        log(
            f"note: OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']} OPENBLAS_L2_SIZE={env['OPENBLAS_L2_SIZE']} are set and "
            "pin an older BLAS kernel; unset both for this command (see the module docstring)"
        )
    log(f"numpy {env['numpy']}, torch {env.get('torch')}, BLAS {env['blas']}, {args.threads} threads, load average {env['load_average_at_start']}")
    runners = {
        "dense": bench_dense,
        "memory": bench_memory,
        "torch": bench_torch,
        "neighbour": bench_neighbour,
        "linear": bench_linear,
        "profile": bench_profile,
        "hyperbolic": bench_hyperbolic,
        "local": bench_local,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    for section in SECTIONS:
        if section in args.only:
            results[section] = runners[section](args)
            # each figure on its own too: <name>-<section>.json (+ .png), with the environment
            single = {"name": f"{args.name}-{section}", "environment": results["environment"], "argv": sys.argv[1:], section: results[section]}
            single["environment"]["engine_calibration"] = _engine_calibration()
            spath = RESULTS / f"{args.name}-{section}.json"
            spath.write_text(json.dumps(single, indent=2, default=float) + "\n")
            if plot_section(section, single, RESULTS / f"{args.name}-{section}.png"):
                log(f"wrote {spath} and its .png")
    results["environment"]["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    path = RESULTS / f"{args.name}.json"
    path.write_text(json.dumps(results, indent=2, default=float) + "\n")
    log(f"\nwrote {path}")
    if "dense" in results and plot(results, RESULTS / f"{args.name}.png"):
        log(f"wrote {RESULTS / f'{args.name}.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
