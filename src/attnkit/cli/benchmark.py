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
import dataclasses
import logging
import statistics
import time
from collections.abc import Mapping, Sequence
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
    extra: dict[str, Any],
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
    given = [(k, v) for k, v in extra.items() if registry.find_option(specs, k) is not None]
    if "seed" in specs:
        explicit.setdefault("seed", seed)
    try:
        explicit.update(registry.canonical_options(specs, given))  # one option under two names: an error row
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


@dataclasses.dataclass
class Grid:
    """The cells to time: ``--types`` x ``--dims`` x ``--neighbors``, ``--batch`` sequences per forward."""

    types: str
    dims: str
    lengths: str
    batch: int | None = None


@dataclasses.dataclass
class Timing:
    """How each cell is timed: ``--iterations``, ``--max-time``, ``--warmup``, ``--seed``."""

    iterations: int = 1000
    max_time: float = 1.0
    warmup: int = 2
    seed: int = 0


def run_benchmark(
    state: State,
    grid: Grid,
    timing: Timing,
    *,
    options: Mapping[str, Any] | None = None,
    opt: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    output: str | None = None,
    plot: str | None = None,
    compare: str | None = None,
    as_json: bool = False,
) -> int:
    config = state.config
    names = resolve_types(grid.types)
    check_timing(timing)
    batch = resolve_batch(grid.batch, config)
    extra = grid_options(names, options or {}, opt, extra_args)
    if output is not None and Path(output).suffix.lower() not in (".json", ".csv"):
        raise UsageError(f"--output: expected a .json or .csv file, got {output!r}")
    torch_mod = torch_for(compare)
    cells = grid_cells(names, _int_list(grid.dims, "--dims"), _int_list(grid.lengths, "--neighbors"))
    rows = time_cells(cells, config=config, extra=extra, timing=timing, batch=batch, torch_mod=torch_mod, quiet=as_json)
    meta = run_meta(state, timing, batch, compare)
    if output is not None:
        _write_results(output, rows, meta)
    plotted = plot_rows(rows, plot)
    if as_json:
        emit_json({"meta": meta, "results": rows, "output": output, "plot": plotted})
    else:
        _print_table(rows, torch_mod is not None)
        for path in (output, plotted):
            if path:
                console().print(f"wrote {path}")
    return report_failures(rows)


def resolve_types(types: str) -> list[str]:
    """``--types``: registry names (aliases resolved, duplicates dropped), or every mechanism for 'all'."""
    raw = [t.strip() for t in types.split(",") if t.strip()]
    if not raw:
        raise UsageError(f"--types: expected mechanism names or 'all', got {types!r}")
    if [t.lower() for t in raw] == ["all"]:
        return registry.names()
    return list(dict.fromkeys(registry.get(t).name for t in raw))


def check_timing(timing: Timing) -> None:
    if timing.iterations < 1:
        raise UsageError(f"--iterations: expected a positive integer, got {timing.iterations}")
    if not timing.max_time > 0:
        raise UsageError(f"--max-time: expected a positive number of seconds, got {timing.max_time}")
    if timing.warmup < 0:
        raise UsageError(f"--warmup: expected 0 or more, got {timing.warmup}")


def resolve_batch(batch: int | None, config: Any) -> int:
    """``--batch``, else config ``[optimization] batch_size``; positive."""
    value = int(batch if batch is not None else config.get("optimization", "batch_size"))
    if value < 1:
        raise UsageError(f"--batch: expected a positive integer, got {value}")
    return value


def grid_options(names: Sequence[str], options: Mapping[str, Any], opt: Sequence[str], extra_args: Sequence[str]) -> dict[str, Any]:
    """The mechanism flags and ``-O`` pairs, each applied to every type that has it; one that no type has,
    or one name given both ways, is an error."""
    if extra_args:
        tok = extra_args[0]
        raise UsageError(f"{tok.partition('=')[0]}: no such option" if tok.startswith("--") else f"unexpected argument {tok!r}")
    extra: dict[str, Any] = dict(options)
    for key, value in parse_pairs(opt).items():
        if key in extra:
            raise UsageError(f"--{key.replace('_', '-')}: given twice")
        extra[key] = value
    for k in extra:
        if not any(registry.find_option(n, k) for n in names):
            raise UsageError(f"--opt {k}: none of {', '.join(names)} has an option {k!r}")
    return extra


def torch_for(compare: str | None) -> Any:
    """``--compare torch``: the torch module (the ``torch`` extra), else None."""
    if compare is None:
        return None
    if compare.strip().lower() != "torch":
        raise UsageError(f"--compare: expected 'torch', got {compare!r}")
    try:
        import torch
    except ImportError:
        raise MissingExtra("--compare torch", "torch", "torch") from None
    return torch


def grid_cells(names: Sequence[str], dims: Sequence[int], lengths: Sequence[int]) -> list[tuple[str, int | None, int]]:
    """(type, dim, length) cells; a type without a dimension option gets one cell per length (dim None)."""
    return [(n, d, L) for n in names for d in (dims if dim_options(n, 1) else [None]) for L in lengths]


def time_cells(
    cells: Sequence[tuple[str, int | None, int]],
    *,
    config: Any,
    extra: dict[str, Any],
    timing: Timing,
    batch: int,
    torch_mod: Any,
    quiet: bool,
) -> list[dict[str, Any]]:
    """One row per cell, with a progress bar on a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    err = console(stderr=True)
    rows: list[dict[str, Any]] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True, disable=quiet or not err.is_terminal) as progress:
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
                    iterations=timing.iterations,
                    max_time=timing.max_time,
                    warmup=timing.warmup,
                    batch=batch,
                    seed=timing.seed,
                    torch_mod=torch_mod,
                )
            )
            log.info("benchmark %s", rows[-1])
            progress.advance(task)
    return rows


def run_meta(state: State, timing: Timing, batch: int, compare: str | None) -> dict[str, Any]:
    from .info import collect_info

    meta = {k: v for k, v in collect_info(state).items() if k in ("attnkit", "python", "numpy", "blas", "simd", "threads")}
    meta.update(dataclasses.asdict(timing), batch=batch, compare=compare)
    return meta


def plot_rows(rows: Sequence[dict[str, Any]], plot: str | None) -> str | None:
    good = [r for r in rows if "error" not in r]
    if plot is None or not good:
        return None
    from ._plot import benchmark_plot

    return benchmark_plot(good, plot)


def report_failures(rows: Sequence[dict[str, Any]]) -> int:
    """One stderr line per failed cell and exit 2, else 0."""
    failed = [r for r in rows if "error" in r]
    if not failed:
        return 0
    import sys

    for r in failed:
        sys.stderr.write(f"attnkit: error: {r['type']} dim={r['dim']} n={r['length']}: {' '.join(r['error'].split())}\n")
    import typer

    raise typer.Exit(2)


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
