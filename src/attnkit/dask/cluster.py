"""Running attnkit on a Dask cluster: connect, read inputs lazily, write results, describe the cluster.

``connect("local")`` starts a :class:`distributed.LocalCluster` of worker processes on 127.0.0.1;
``connect("tcp://host:8786")`` joins a running scheduler (``dask scheduler`` by hand, dask-kubernetes'
``KubeCluster``, dask-jobqueue's ``SLURMCluster`` ...; pass its ``scheduler_address``);
``connect("threads")`` / ``connect("sync")`` use Dask's local schedulers without ``distributed``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ShapeError

__all__ = ["connect", "read_lazy", "write_zarr", "store_lazily", "describe", "parse_chunks"]


def parse_chunks(text: str | None) -> tuple[int, ...] | None:
    """``"1,4096"`` -> ``(1, 4096)``: chunk sizes of the leading axes (the others stay whole)."""
    if text is None:
        return None
    try:
        sizes = tuple(int(t) for t in str(text).split(",") if t.strip())
    except ValueError:
        raise ConfigError(f"chunks: expected positive integers separated by commas, got {text!r}") from None
    if not sizes or any(s < 1 for s in sizes):
        raise ConfigError(f"chunks: expected positive integers separated by commas, got {text!r}")
    return sizes


def read_lazy(path: str, chunks: Sequence[int] | None, name: str) -> Any:
    """A Dask array over ``path`` (``.zarr`` store or ``.npy`` memory map), chunked along its leading axes."""
    import dask.array as da

    p = Path(path).resolve()  # workers may run in another directory (or on another machine with a shared path)
    if p.suffix == ".zarr" or (p.is_dir() and (p / "zarr.json").exists() or (p / ".zarray").exists()):
        try:
            arr = da.from_zarr(str(p))
        except Exception as exc:  # noqa: BLE001 - zarr raises many types for a bad store
            raise ShapeError(f"{name}: cannot read the zarr array {path!r} ({type(exc).__name__}: {exc})") from None
    elif p.suffix == ".npy":
        try:
            mm = np.load(p, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ShapeError(f"{name}: cannot read {path!r} as .npy ({exc})") from None
        arr = da.from_array(mm, chunks=mm.shape or ())
    else:
        raise ConfigError(f"{name}: on a cluster, inputs are .zarr stores or .npy files, got {path!r}")
    if arr.dtype.kind != "f":
        raise ShapeError(f"{name}: expected a float array, got {arr.dtype}")
    if chunks:
        if len(chunks) > arr.ndim:
            raise ConfigError(f"chunks: {len(chunks)} sizes for an array of {arr.ndim} dimensions ({name} {tuple(arr.shape)})")
        arr = arr.rechunk(tuple(chunks) + tuple(arr.shape[len(chunks) :]))
    return arr


def write_zarr(arr: Any, path: str) -> None:
    """Compute ``arr`` into a new ``.zarr`` store at ``path`` (an existing path is refused)."""
    p = Path(path).resolve()
    if p.suffix != ".zarr":
        raise ConfigError(f"output: on a cluster the output is a .zarr store, got {path!r}")
    if p.exists():
        raise ConfigError(f"output: {path!r} exists; remove it or choose another path")
    arr.to_zarr(str(p))


def store_lazily(arr: Any, path: str) -> Any:
    """The delayed write of ``arr`` into a new ``.zarr`` store at ``path`` (checked like :func:`write_zarr`)."""
    import dask.array as da

    p = Path(path).resolve()
    if p.suffix != ".zarr":
        raise ConfigError(f"output: on a cluster the output is a .zarr store, got {path!r}")
    if p.exists():
        raise ConfigError(f"output: {path!r} exists; remove it or choose another path")
    return da.to_zarr(arr, str(p), compute=False)


@contextlib.contextmanager
def connect(scheduler: str) -> Iterator[Any]:
    """A Dask client for ``scheduler`` (see the module docstring); ``None`` for the local schedulers."""
    import dask

    if scheduler in ("threads", "sync", "synchronous", "processes"):
        with dask.config.set(scheduler="sync" if scheduler == "synchronous" else scheduler):
            yield None
        return
    try:
        import distributed
    except ImportError as exc:  # pragma: no cover - the extra is missing
        raise ConfigError("scheduler: a cluster needs the dask extra: pip install 'attnkit[dask]'") from exc
    if scheduler == "local":
        with (
            distributed.LocalCluster(processes=True, host="127.0.0.1", dashboard_address=None, silence_logs=logging.ERROR) as lc,
            distributed.Client(lc) as client,
        ):
            yield client
        return
    try:
        client = distributed.Client(scheduler, timeout="10s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise ConfigError(f"scheduler: cannot reach {scheduler!r} ({type(exc).__name__}: {exc})") from None
    with client:
        yield client


def describe(client: Any) -> dict[str, Any]:
    """The cluster behind ``client``: scheduler address, workers with their threads and memory limits."""
    if client is None:
        import dask

        return {"scheduler": dask.config.get("scheduler", "threads"), "workers": []}
    info = client.scheduler_info()
    workers = [
        {"address": addr, "threads": w.get("nthreads"), "memory_limit": w.get("memory_limit")} for addr, w in sorted(info.get("workers", {}).items())
    ]
    return {
        "scheduler": info.get("address"),
        "workers": workers,
        "threads": sum(int(w["threads"] or 0) for w in workers),
        "memory_limit": sum(int(w["memory_limit"] or 0) for w in workers),
    }
