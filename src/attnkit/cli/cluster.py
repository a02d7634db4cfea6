"""``attnkit compute --scheduler ...``: one mechanism over chunked inputs on a Dask cluster, zarr out."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from ._common import UsageError, console, emit_json

log = logging.getLogger("attnkit.cli")


def run_cluster_compute(
    mech: Any,
    *,
    scheduler: str,
    chunks: str | None,
    query: str | None,
    keys: str | None,
    values: str | None,
    output: str | None,
    as_json: bool,
    quiet: bool = False,
) -> Mapping[str, Any]:
    """Read ``query``/``keys``/``values`` lazily, build the graph, compute it into ``output`` (.zarr)."""
    try:
        from ..dask.cluster import connect, describe, parse_chunks, read_lazy, store_lazily, write_zarr
    except ImportError:  # pragma: no cover - the extra is missing
        raise UsageError("--scheduler: needs the dask extra: pip install 'attnkit[dask]'") from None
    if query is None:
        raise UsageError("query: with --scheduler, give -q FILE (.zarr or .npy)")
    if output is None:
        raise UsageError("output: with --scheduler, give -o OUT.zarr")
    sizes = parse_chunks(chunks)
    q = read_lazy(query, sizes, "query")
    k = read_lazy(keys, sizes, "keys") if keys else None
    v = read_lazy(values, sizes, "values") if values else (k if k is not None else None)
    if k is None and values:
        raise UsageError("values: give -k/--keys with -v/--values")
    lazy = mech.forward(q, k, v)
    t0 = time.perf_counter()
    with connect(scheduler) as client:
        cluster = describe(client)
        if client is None:
            import sys

            from dask.diagnostics import ProgressBar

            if quiet or as_json:
                write_zarr(lazy, output)
            else:
                with ProgressBar(out=sys.stderr):
                    write_zarr(lazy, output)
        else:
            import distributed

            stored = store_lazily(lazy, output)
            fut = client.compute(stored)
            if not quiet and not as_json:
                distributed.progress(fut)
            fut.result()
    summary = {
        "type": mech.name,
        "scheduler": cluster,
        "inputs": {n: list(a.shape) for n, a in (("query", q), ("keys", k), ("values", v)) if a is not None},
        "chunks": [list(c) for c in q.chunks],
        "output": {"path": output, "shape": list(lazy.shape), "chunks": [list(c) for c in lazy.chunks]},
        "tasks": len(lazy.__dask_graph__()),
        "time_ms": (time.perf_counter() - t0) * 1e3,
    }
    if as_json:
        emit_json(summary)
    elif not quiet:
        con = console()
        con.print(
            f"{mech.name}: {tuple(lazy.shape)} in {summary['tasks']} tasks on {cluster['scheduler']} "
            f"({len(cluster['workers'])} workers), {summary['time_ms']:.0f} ms"
        )
        con.print(f"wrote {output}")
    return summary
