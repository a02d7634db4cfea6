"""``attnkit demo``: every registered mechanism on built-in sample data, a table and a heatmap
(written to the temp directory unless ``--heatmap PATH`` says where; never into the working tree).

The newcomer's first command: no files needed. Each mechanism is built from the registry with its
own defaults (required dimensions get 32), fed ``sample_inputs(length)`` from a seeded generator,
timed, and checked: the output must be finite, and where the mechanism exposes attention weights,
each row of them must sum to 1 (or 0 for a fully masked row).
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import numpy as np

from .._array import to_numpy
from ..mechanisms import registry
from ._common import State, console, create_mechanism, emit_json, has_weights

log = logging.getLogger("attnkit.cli")


def _row_sum_error(w: Any) -> float:
    a = np.asarray(to_numpy(w), dtype=np.float64)
    if a.ndim == 0:
        return float("nan")
    s = a.sum(axis=-1)
    # a row whose keys are all masked sums to 0 by design (DESIGN.md); every other row to 1
    return float(np.min(np.stack([np.abs(s - 1.0), np.abs(s)]), axis=0).max())


def _compact(shape: list[int]) -> str:
    return "(" + ",".join(str(d) for d in shape) + ")"


def _shapes(shapes: list[list[int]]) -> str:
    """``(64,8,64)x3`` when all inputs share a shape, else the shapes one after another."""
    if shapes and all(s == shapes[0] for s in shapes):
        return _compact(shapes[0]) + (f"x{len(shapes)}" if len(shapes) > 1 else "")
    return " ".join(_compact(s) for s in shapes)


def demo_one(name: str, length: int, seed: int, config: Any, repeats: int = 3) -> dict[str, Any]:
    """Run one mechanism on its sample inputs; returns the table row (status ``ok`` or ``failed``)."""
    specs = {s.name for s in registry.option_specs(name)}
    explicit = {"seed": seed} if "seed" in specs else {}
    row: dict[str, Any] = {"name": name, "class": registry.get(name).__name__}
    try:
        mech = create_mechanism(name, explicit, None, fill_required=True)
        row["options"] = mech.options()
        inputs = mech.example_inputs(length, np.random.default_rng(seed))
        extras = mech.example_extras(length, np.random.default_rng(seed + 1))
        row["inputs"] = [list(x.shape) for x in inputs]
        out = mech.forward(*inputs, **extras)  # warm-up, and the output we check
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            mech.forward(*inputs, **extras)
            times.append(time.perf_counter() - t0)
        out_np = np.asarray(to_numpy(out))
        row.update(
            output=list(out_np.shape),
            time_ms=statistics.median(times) * 1e3,
            mean=float(out_np.mean()) if out_np.size else 0.0,
            std=float(out_np.std()) if out_np.size else 0.0,
            finite=bool(np.isfinite(out_np).all()),
        )
        if has_weights(mech):
            w = mech.attention_weights(inputs[0], inputs[1] if len(inputs) > 1 else None, **extras)
            row["row_sum_error"] = _row_sum_error(w)
        ok = row["finite"] and (row.get("row_sum_error") is None or row["row_sum_error"] < 1e-4)
        row["status"] = "ok" if ok else "failed"
        if not ok:
            row["error"] = "non-finite output" if not row["finite"] else f"weights rows sum to 1 +- {row['row_sum_error']:.2g}"
    except Exception as exc:  # noqa: BLE001 - a failing mechanism is reported in its row, not fatal to the demo
        log.debug("demo: %s failed", name, exc_info=True)
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    return row


def default_heatmap_path() -> str:
    """Where ``attnkit demo`` draws when no ``--heatmap`` is given: the temp dir, never the working tree."""
    import os

    from ._plot import default_picture_dir

    return os.path.join(default_picture_dir(), "attnkit-demo.png")


def draw_demo_pictures(path: str, length: int, seed: int) -> tuple[str | None, str | None]:
    """Draw the attention patterns of :data:`attnkit.cli._plot.PICTURES` on motif inputs of ``length``
    (a motif of 8 positions repeated, so each mechanism's own pattern shows); returns ``(path, None)``,
    or ``(None, why)`` when matplotlib is missing."""
    from ._common import MissingExtra
    from ._plot import _pyplot, heatmap_grid, pictures

    try:
        _pyplot("the demo heatmap")
    except MissingExtra as exc:
        return None, str(exc)
    items = []
    for label, name, compute in pictures(length, seed):
        try:
            items.append((label, compute()))
        except Exception:  # noqa: BLE001 - a mechanism that fails is reported in the table, not drawn
            log.debug("demo: no picture of %s", name, exc_info=True)
    title = f"attnkit demo: attention weights on a repeated 8-position motif (length {length}, self-attention)"
    return heatmap_grid(items, path, title=title), None


def run_demo(state: State, *, length: int, heatmap: str | None, seed: int, as_json: bool) -> int:
    from ..errors import ConfigError

    if length < 1:
        raise ConfigError(f"--length: expected a positive integer, got {length}")
    config = state.config
    names = registry.names()
    rows: list[dict[str, Any]] = []
    from rich.progress import Progress

    err = console(stderr=True)
    with Progress(console=err, transient=True, disable=as_json or not err.is_terminal) as progress:
        task = progress.add_task("running mechanisms", total=len(names))
        for name in names:
            progress.update(task, description=f"running {name}")
            rows.append(demo_one(name, length, seed, config))
            progress.advance(task)

    heat_path = None
    heat_note = None
    if heatmap is not None:
        heat_path, heat_note = draw_demo_pictures(heatmap, length, seed)
    failed = [r for r in rows if r["status"] != "ok"]
    if as_json:
        emit_json(
            {
                "length": length,
                "seed": seed,
                "mechanisms": rows,
                "heatmap": heat_path,
                "heatmap_note": heat_note,
                "ok": not failed,
            }
        )
        return 1 if failed else 0

    from rich.markup import escape

    con = console()
    con.print(_demo_table(rows, length, seed))
    con.print("|Σw-1|: largest error of the attention weights' row sums (each row must sum to 1); - : no weights exposed")
    if heat_path:
        con.print(f"wrote the attention-weight heatmap to {heat_path}")
    elif heat_note:
        con.print(f"[yellow]no heatmap: {escape(heat_note)}[/yellow]")
    con.print("next: `attnkit mechanisms NAME` for options, `attnkit compute --type NAME --random 128` to run one.")
    if failed:
        con.print(f"[red]{len(failed)} mechanism(s) failed: {', '.join(r['name'] for r in failed)}[/red]")
        return 1
    return 0


def _demo_table(rows: list[dict[str, Any]], length: int, seed: int) -> Any:
    """The demo's table: one row per mechanism (inputs, output, time, spread, row-sum error, status)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    t = Table(
        title=f"attnkit demo: every mechanism on sample data (length {length}, seed {seed})",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        pad_edge=False,
    )
    for col, just in (
        ("mechanism", "left"),
        ("inputs", "left"),
        ("output", "left"),
        ("ms", "right"),
        ("out std", "right"),
        ("|Σw-1|", "right"),
        ("status", "left"),
    ):
        t.add_column(col, justify=just, no_wrap=col != "inputs", min_width=11 if col == "inputs" else None)  # type: ignore[arg-type]
    for r in rows:
        if "output" in r:
            err = r.get("row_sum_error")
            weights = f"{err:.0e}" if err is not None else "-"
            t.add_row(
                r["name"],
                _shapes(r["inputs"]),
                _compact(r["output"]),
                f"{r['time_ms']:.2f}",
                f"{r['std']:.3f}",
                weights,
                "[green]ok[/green]" if r["status"] == "ok" else f"[red]{escape(r.get('error', 'failed'))}[/red]",
            )
        else:
            t.add_row(r["name"], "", "", "", "", "", f"[red]failed: {escape(r.get('error', ''))}[/red]")
    return t
