"""``attnkit benchmark``: time mechanisms over a grid of types x dims x lengths.

The defaults are the platform spec's grid: types ``scaled-dot-product, multi-head, hyperbolic``,
dims ``128, 256, 512``, neighbours ``100, 500, 1000``, up to 1000 iterations. Each cell builds the
mechanism through the registry with the dimension given to its ``dim``-like option (``dim``,
``model_dim``, and required ``*_dim`` options), draws ``sample_inputs(length)``, runs ``warmup``
untimed forwards and then timed ones until ``iterations`` runs or ``max_time`` seconds, whichever
comes first, and reports the median (and mean, standard deviation, min). ``--compare torch`` times the
same mechanism on torch CPU tensors of the same values (attnkit's array-API path, which hands exact
attention to torch's fused ``scaled_dot_product_attention``).
"""

from __future__ import annotations

import csv
import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AttentionError
from ..mechanisms import registry
from ._common import MissingExtra, State, UsageError, console, create_mechanism, emit_json, parse_pairs

log = logging.getLogger("attnkit.cli")


def _int_list(text: str, flag: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            v = int(part)
        except ValueError:
            raise UsageError(f"{flag}: expected comma-separated positive integers, got {part!r}") from None
        if v < 1:
            raise UsageError(f"{flag}: expected positive integers, got {v}")
        out.append(v)
    if not out:
        raise UsageError(f"{flag}: expected at least one value, got {text!r}")
    return out


def dim_options(name: str, dim: int) -> dict[str, int]:
    """The options of mechanism ``name`` that take the grid's dimension (empty if it has none)."""
    specs = {s.name: s for s in registry.option_specs(name)}
    out = {}
    target = registry.find_option(specs, "dim")
    if target is not None:
        out[target] = dim
    for s in specs.values():
        if s.required and "dim" in s.name and "int" in s.type.split("|"):
            out[s.name] = dim
    return out


def _time(fn: Any, iterations: int, max_time: float, warmup: int, min_warm_s: float = 0.0) -> list[float]:
    t_warm = time.perf_counter()
    done = 0
    while done < warmup or (time.perf_counter() - t_warm < min_warm_s and done < 1000):
        fn()
        done += 1
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < iterations:
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if t1 - start >= max_time and len(times) >= 3:
            break
    return times


def bench_cell(
    name: str,
    dim: int | None,
    length: int,
    *,
    config: Any,
    extra: dict[str, str],
    iterations: int,
    max_time: float,
    warmup: int,
    batch: int,
    seed: int,
    torch_mod: Any = None,
) -> dict[str, Any]:
    """Time one (mechanism, dim, length) cell; the row holds ``error`` instead of timings on bad options."""
    specs = {s.name: s for s in registry.option_specs(name)}
    row: dict[str, Any] = {"type": name, "dim": dim, "length": length, "batch": batch}
    explicit: dict[str, Any] = dim_options(name, dim) if dim is not None else {}
    for k, v in extra.items():
        target = registry.find_option(specs, k)
        if target is not None:
            explicit[target] = v
    if "seed" in specs:
        explicit.setdefault("seed", seed)
    try:
        mech = create_mechanism(name, explicit, config, fill_required=True)
        inputs = mech.example_inputs(length, np.random.default_rng(seed))
        extras = mech.example_extras(length, np.random.default_rng(seed + 1))
        if batch > 1:
            inputs = tuple(np.ascontiguousarray(np.broadcast_to(x, (batch, *x.shape))) for x in inputs)
            extras = {n: np.ascontiguousarray(np.broadcast_to(x, (batch, *x.shape))) for n, x in extras.items()}
        row["shapes"] = [list(x.shape) for x in inputs]
        times = _time(lambda: mech.forward(*inputs, **extras), iterations, max_time, warmup)
    except AttentionError as exc:
        row["error"] = str(exc)
        return row
    med = statistics.median(times)
    row.update(
        runs=len(times),
        median_ms=med * 1e3,
        mean_ms=statistics.fmean(times) * 1e3,
        std_ms=(statistics.stdev(times) * 1e3) if len(times) > 1 else 0.0,
        min_ms=min(times) * 1e3,
        ops_per_s=batch / med if med > 0 else None,
    )
    if torch_mod is not None:
        tin = tuple(torch_mod.from_numpy(np.ascontiguousarray(x)) for x in inputs)
        with torch_mod.no_grad():
            # torch's first calls in a process are slow (thread pool start, lazy init): warm it for a while
            ttimes = _time(lambda: mech.forward(*tin), iterations, max_time, warmup, min_warm_s=0.1)
        tmed = statistics.median(ttimes)
        row.update(torch_runs=len(ttimes), torch_median_ms=tmed * 1e3, torch_speedup=tmed / med if med > 0 else None)
    return row


def _write_results(path: str, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    from .. import io as aio

    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        import json

        from ._common import to_jsonable

        aio._write_bytes(path, (json.dumps(to_jsonable({"meta": meta, "results": rows}), indent=2) + "\n").encode(), "--output")
    elif suffix == ".csv":
        import io

        cols = [
            "type",
            "dim",
            "length",
            "batch",
            "runs",
            "median_ms",
            "mean_ms",
            "std_ms",
            "min_ms",
            "ops_per_s",
            "torch_runs",
            "torch_median_ms",
            "torch_speedup",
            "error",
        ]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in cols})
        aio._write_bytes(path, buf.getvalue().encode(), "--output")
    else:
        raise UsageError(f"--output: expected a .json or .csv file, got {path!r}")


def run_benchmark(
    state: State,
    *,
    types: str,
    dims: str,
    lengths: str,
    iterations: int,
    max_time: float,
    warmup: int,
    batch: int | None,
    opt: Sequence[str],
    output: str | None,
    plot: str | None,
    compare: str | None,
    seed: int,
    as_json: bool,
) -> int:
    config = state.config
    raw = [t.strip() for t in types.split(",") if t.strip()]
    if not raw:
        raise UsageError(f"--types: expected mechanism names or 'all', got {types!r}")
    names = registry.names() if [t.lower() for t in raw] == ["all"] else list(dict.fromkeys(registry.get(t).name for t in raw))
    dim_list = _int_list(dims, "--dims")
    len_list = _int_list(lengths, "--neighbors")
    if iterations < 1:
        raise UsageError(f"--iterations: expected a positive integer, got {iterations}")
    if not max_time > 0:
        raise UsageError(f"--max-time: expected a positive number of seconds, got {max_time}")
    if warmup < 0:
        raise UsageError(f"--warmup: expected 0 or more, got {warmup}")
    batch = batch if batch is not None else config.get("optimization", "batch_size")
    if batch < 1:
        raise UsageError(f"--batch: expected a positive integer, got {batch}")
    extra = parse_pairs(opt)
    for k in extra:
        if not any(registry.find_option(n, k) for n in names):
            raise UsageError(f"--opt {k}: none of {', '.join(names)} has an option {k!r}")
    if output is not None and Path(output).suffix.lower() not in (".json", ".csv"):
        raise UsageError(f"--output: expected a .json or .csv file, got {output!r}")
    torch_mod: Any = None
    if compare is not None:
        if compare.strip().lower() != "torch":
            raise UsageError(f"--compare: expected 'torch', got {compare!r}")
        try:
            import torch as torch_mod
        except ImportError:
            raise MissingExtra("--compare torch", "torch", "torch") from None

    cells: list[tuple[str, int | None, int]] = []
    for n in names:
        has_dim = bool(dim_options(n, 1))
        for d in dim_list if has_dim else [None]:
            for L in len_list:
                cells.append((n, d, L))

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    err = console(stderr=True)
    rows: list[dict[str, Any]] = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=as_json or not err.is_terminal,
    ) as progress:
        task = progress.add_task("benchmark", total=len(cells))
        for n, d, L in cells:
            progress.update(task, description=f"{n} dim={d if d is not None else '-'} n={L}")
            rows.append(
                bench_cell(
                    n,
                    d,
                    L,
                    config=config,
                    extra=extra,
                    iterations=iterations,
                    max_time=max_time,
                    warmup=warmup,
                    batch=batch,
                    seed=seed,
                    torch_mod=torch_mod,
                )
            )
            log.info("benchmark %s", rows[-1])
            progress.advance(task)

    from .info import collect_info

    meta = {k: v for k, v in collect_info(state).items() if k in ("attnkit", "python", "numpy", "blas", "simd", "threads")}
    meta.update(iterations=iterations, max_time=max_time, warmup=warmup, batch=batch, seed=seed, compare=compare)
    if output is not None:
        _write_results(output, rows, meta)
    plotted = None
    good = [r for r in rows if "error" not in r]
    if plot is not None and good:
        from ._plot import benchmark_plot

        plotted = benchmark_plot(good, plot)
    failed = [r for r in rows if "error" in r]
    if as_json:
        emit_json({"meta": meta, "results": rows, "output": output, "plot": plotted})
    else:
        _print_table(rows, torch_mod is not None)
        if output:
            console().print(f"wrote {output}")
        if plotted:
            console().print(f"wrote {plotted}")
    if failed:
        import sys

        for r in failed:
            sys.stderr.write(f"attnkit: error: {r['type']} dim={r['dim']} n={r['length']}: {' '.join(r['error'].split())}\n")
        import typer

        raise typer.Exit(2)
    return 0


def _print_table(rows: list[dict[str, Any]], with_torch: bool) -> None:
    from rich import box
    from rich.table import Table

    t = Table(title="attnkit benchmark (median of timed runs)", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("type", "dim", "n", "median ms", "std ms", "runs"):
        t.add_column(col, justify="left" if col == "type" else "right", no_wrap=col != "type")
    if with_torch:
        t.add_column("torch ms", justify="right", no_wrap=True)
        t.add_column("torch÷attnkit", justify="right", no_wrap=True)
    for r in rows:
        d = "-" if r["dim"] is None else str(r["dim"])
        if "error" in r:
            t.add_row(r["type"], d, str(r["length"]), "[red]error[/red]", "", "", *([""] * (2 if with_torch else 0)))
            continue
        cells = [r["type"], d, str(r["length"]), f"{r['median_ms']:.3f}", f"{r['std_ms']:.3f}", str(r["runs"])]
        if with_torch:
            cells += [f"{r['torch_median_ms']:.3f}", f"{r['torch_speedup']:.2f}"]
        t.add_row(*cells)
    console().print(t)
