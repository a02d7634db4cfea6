"""``attnkit info`` and ``attnkit mechanisms``."""

from __future__ import annotations

import platform
import sys
from typing import Any

from ._common import State, console, emit_json


def collect_info(state: State) -> dict[str, Any]:
    """Everything ``attnkit info`` reports, as a dict."""
    import numpy as np

    from .. import __version__
    from ..mechanisms import registry
    from ..system import blas_info, check_simd_support, check_thread_support, optional_backends

    config = state.config
    simd = check_simd_support()
    threads = check_thread_support()
    return {
        "attnkit": __version__,
        "python": f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})",
        "platform": platform.platform(),
        "numpy": np.__version__,
        "blas": blas_info(),
        "simd": simd.as_dict(),
        "threads": threads.as_dict(),
        "backends": optional_backends(),
        "config": {"path": str(config.path) if config.path else None, "source": config.source},
        "mechanisms": registry.names(),
    }


def run_info(state: State, *, as_json: bool, scheduler: str | None = None) -> None:
    data = collect_info(state)
    if scheduler is not None:
        try:
            from ..dask.cluster import connect, describe
        except ImportError:  # pragma: no cover - the extra is missing
            from ._common import UsageError

            raise UsageError("--scheduler: needs the dask extra: pip install 'attnkit[dask]'") from None
        with connect(scheduler) as client:
            data["cluster"] = describe(client)
    if as_json:
        emit_json(data)
        return
    from rich.table import Table

    con = console()
    t = Table(title="attnkit info", show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("attnkit", data["attnkit"])
    t.add_row("python", data["python"])
    t.add_row("platform", data["platform"])
    t.add_row("numpy", data["numpy"])
    for lib in data["blas"] or [{"note": "no BLAS reported"}]:
        if "internal_api" in lib:
            t.add_row("  blas", f"{lib.get('internal_api')} {lib.get('version')} ({lib.get('architecture')}, {lib.get('num_threads')} threads)")
        else:
            t.add_row("  blas", str(lib.get("note", lib)))
    simd = data["simd"]
    t.add_row(
        "simd",
        f"{'on' if simd['enabled'] else 'off'}; baseline {' '.join(simd['baseline']) or '-'}; dispatched {' '.join(simd['dispatched']) or '-'}",
    )
    th = data["threads"]
    t.add_row("threads", f"{th['cpus']} CPUs usable, threading {'yes' if th['threading'] else 'no'}")
    backends = ", ".join(f"{k} {v}" for k, v in data["backends"].items() if v) or "none"
    missing = ", ".join(k for k, v in data["backends"].items() if not v)
    t.add_row("backends", backends + (f" (not installed: {missing})" if missing else ""))
    cfg = data["config"]
    t.add_row("config", f"{cfg['path']} ({cfg['source']})" if cfg["path"] else cfg["source"])
    t.add_row("mechanisms", ", ".join(data["mechanisms"]))
    if "cluster" in data:
        cl = data["cluster"]
        t.add_row(
            "cluster",
            f"{cl['scheduler']}: {len(cl['workers'])} workers, {cl.get('threads', 0)} threads, "
            f"{cl.get('memory_limit', 0) / 2**30:.1f} GiB memory limit",
        )
        for w in cl["workers"]:
            t.add_row("  worker", f"{w['address']} ({w['threads']} threads, {(w['memory_limit'] or 0) / 2**30:.1f} GiB)")
    con.print(t)


def run_mechanisms(state: State, name: str | None, *, as_json: bool) -> None:
    from ..mechanisms import registry

    if name is not None:
        cls = registry.get(name)
        aliases = registry.option_aliases(cls)
        specs = [{**s.as_dict(), "aliases": aliases[s.name]} for s in registry.option_specs(cls)]
        data: Any = {"name": cls.name, "class": cls.__name__, "summary": getattr(cls, "summary", ""), "options": specs}
        if as_json:
            emit_json(data)
            return
        from rich.table import Table

        con = console()
        con.print(f"[bold]{cls.name}[/bold] ({cls.__name__}): {data['summary']}")
        t = Table(show_header=True, header_style="bold")
        t.add_column("flag")
        t.add_column("type")
        t.add_column("default")
        t.add_column("also")
        for s in specs:
            t.add_row(
                "--" + s["name"].replace("_", "-"),
                s["type"],
                "required" if s["required"] else repr(s["default"]),
                ", ".join("--" + a.replace("_", "-") for a in s["aliases"]),
            )
        con.print(t)
        return
    rows = [{"name": n, "class": registry.get(n).__name__, "summary": getattr(registry.get(n), "summary", "")} for n in registry.names()]
    if as_json:
        emit_json(rows)
        return
    from rich.table import Table

    t = Table(title="attnkit mechanisms", show_header=True, header_style="bold")
    t.add_column("name")
    t.add_column("class")
    t.add_column("summary")
    for r in rows:
        t.add_row(r["name"], r["class"], r["summary"])
    con = console()
    con.print(t)
    con.print("options of one: attnkit mechanisms NAME")
