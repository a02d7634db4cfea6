"""``attnkit compute``: one mechanism, arrays from files or random ones, output to a file.

:func:`run_compute` is a list of named steps: check the flags, build the mechanism, get the inputs,
run the forward pass (with a spinner after a second), write the output and the heatmap, report.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any

from .. import io as aio
from ._common import State, UsageError, array_stats, check_finite_output, check_not_input, console, emit_json, fmt_shape, progress_after
from ._inputs import (
    ROLE_KEYS,
    ROLE_NAMES,
    InputFlags,
    MechanismChoice,
    build_mechanism,
    check_input_flags,
    load_inputs,
    parse_shapes,
    read_or_draw,
)

__all__ = ["ComputeOutput", "run_compute", "ROLE_KEYS", "load_inputs", "parse_shapes"]

log = logging.getLogger("attnkit.cli")

#: the documented wait before the progress spinner shows (``compute --help``)
PROGRESS_AFTER_S = 1.0


@dataclasses.dataclass
class ComputeOutput:
    """Where results go: ``--output`` (``-`` = JSON on stdout), ``--output-format``, ``--heatmap``, ``--json``,
    and the Dask flags ``--scheduler``/``--chunks``."""

    output: str | None = None
    output_format: str | None = None
    heatmap: str | None = None
    as_json: bool = False
    scheduler: str | None = None
    chunks: str | None = None


def run_compute(state: State, choice: MechanismChoice, src: InputFlags, dst: ComputeOutput) -> None:
    check_input_flags(src)
    check_output_paths(state, choice, src, dst)
    mech, seed = build_mechanism(state, choice)
    if dst.scheduler is not None or dst.chunks is not None:
        return run_on_cluster(mech, src, dst)
    arrays, extras = read_or_draw(mech, src, seed)
    out, elapsed = forward(mech, arrays, extras)
    summary = {
        "type": mech.name,
        "options": mech.options(),
        "inputs": {ROLE_NAMES[r]: {"shape": list(a.shape), "dtype": str(a.dtype)} for r, a in arrays.items()},
        "output": array_stats(out),
        "time_ms": elapsed * 1e3,
        "written": write_output(out, dst),
        "heatmap": draw_heatmap(mech, arrays, extras, dst.heatmap),
    }
    report(out, summary, dst)
    return None


def check_output_paths(state: State, choice: MechanismChoice, src: InputFlags, dst: ComputeOutput) -> None:
    """Refuse an output or heatmap path that is an input file, or both at one path."""
    in_files = (*src.files, choice.weights, state.config_path)
    check_not_input(dst.output, in_files, "--output")
    check_not_input(dst.heatmap, in_files, "--heatmap")
    if dst.output is not None and dst.heatmap is not None and dst.output != "-" and _same(dst.output, dst.heatmap):
        raise UsageError(f"--heatmap: {dst.heatmap!r} is also the --output file; write them to different paths")


def run_on_cluster(mech: Any, src: InputFlags, dst: ComputeOutput) -> None:
    """``--scheduler``: the forward pass on Dask, inputs read chunk by chunk (:mod:`.cluster`)."""
    if dst.scheduler is None:
        raise UsageError("--chunks: give --scheduler too (local, threads or a scheduler address)")
    if src.random is not None or src.inputs is not None or src.mask is not None or dst.heatmap is not None:
        raise UsageError("--scheduler: give -q/-k/-v files (.zarr or .npy); --random, --inputs, --mask and --heatmap are not supported there")
    from .cluster import run_cluster_compute

    run_cluster_compute(
        mech, scheduler=dst.scheduler, chunks=dst.chunks, query=src.query, keys=src.keys, values=src.values, output=dst.output, as_json=dst.as_json
    )


def forward(mech: Any, arrays: Mapping[str, Any], extras: Mapping[str, Any]) -> tuple[Any, float]:
    """The output (NumPy, finite) and the seconds it took; a spinner shows after :data:`PROGRESS_AFTER_S`."""
    from .._array import to_numpy

    t0 = time.perf_counter()
    with progress_after(PROGRESS_AFTER_S, f"computing {mech.name} ..."):
        out = mech.forward(arrays.get("q"), arrays.get("k"), arrays.get("v"), mask=arrays.get("mask"), **extras)
    elapsed = time.perf_counter() - t0
    out = to_numpy(out)
    log.info("forward: %.3f ms", elapsed * 1e3)
    check_finite_output(out)
    return out, elapsed


def write_output(out: Any, dst: ComputeOutput) -> dict[str, str] | None:
    if dst.output is None or dst.output == "-":
        return None
    fmt = aio.write_array(dst.output, out, dst.output_format, name="output")
    return {"path": aio.split_key(dst.output)[0], "format": fmt}


def draw_heatmap(mech: Any, arrays: Mapping[str, Any], extras: Mapping[str, Any], path: str | None) -> str | None:
    """``--heatmap FILE``: the attention weights, pooled to a readable size (off by default)."""
    if path is None:
        return None
    from ._plot import heatmap as draw
    from ._plot import pooled_weights

    weights = pooled_weights(mech, arrays.get("q"), arrays.get("k"), arrays.get("mask"), extras=dict(extras))
    return draw(weights, path, title=f"{mech.name} attention weights")


def report(out: Any, summary: Mapping[str, Any], dst: ComputeOutput) -> None:
    """``-o -``: the output as JSON on stdout (summary on stderr); ``--json``: the summary; else a table."""
    if dst.output == "-":
        import sys

        sys.stdout.write(aio.dumps(out, "json").decode())
        if not dst.as_json:
            _print_summary(summary, stderr=True)
    elif dst.as_json:
        emit_json(summary)
    else:
        _print_summary(summary)


def _same(a: str, b: str) -> bool:
    from ._common import same_file

    return same_file(aio.split_key(a)[0], aio.split_key(b)[0])


def _print_summary(s: Mapping[str, Any], stderr: bool = False) -> None:
    from rich.table import Table

    con = console(stderr=stderr)
    t = Table(title=f"attnkit compute: {s['type']}", show_header=True, header_style="bold")
    t.add_column("array")
    t.add_column("shape")
    t.add_column("dtype")
    t.add_column("min / mean / max", justify="right")
    for role, info in s["inputs"].items():
        t.add_row(role, fmt_shape(info["shape"]), info["dtype"], "")
    o = s["output"]
    stats = f"{o['min']:.4g} / {o['mean']:.4g} / {o['max']:.4g}" if "mean" in o else ""
    t.add_row("[bold]output[/bold]", fmt_shape(o["shape"]), o["dtype"], stats)
    con.print(t)
    opts = ", ".join(f"{k}={v!r}" for k, v in s["options"].items())
    con.print(f"options: {opts}")
    con.print(f"time: {s['time_ms']:.3f} ms")
    if o.get("finite") is False:
        con.print("[yellow]warning: the output holds NaN or infinity[/yellow]")
    if s["written"]:
        con.print(f"wrote {s['written']['path']} ({s['written']['format']})")
    if s["heatmap"]:
        con.print(f"wrote heatmap {s['heatmap']}")
