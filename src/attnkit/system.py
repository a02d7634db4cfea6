"""What this machine offers attnkit: NumPy's real SIMD dispatch, threads, BLAS, optional backends."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import threading
from typing import Any

import numpy as np

__all__ = ["SIMDInfo", "ThreadInfo", "check_simd_support", "check_thread_support", "optional_backends", "blas_info"]


@dataclasses.dataclass(frozen=True)
class SIMDInfo:
    """NumPy's CPU dispatch: the baseline it was built for and the extra targets it dispatches to here.

    Truthy when any SIMD extension is in use (the spec's ``checkSIMDSupport(): boolean``).
    """

    baseline: tuple[str, ...]
    dispatched: tuple[str, ...]
    available: tuple[str, ...]

    @property
    def enabled(self) -> bool:
        return bool(self.baseline or self.dispatched)

    def __bool__(self) -> bool:
        return self.enabled

    def as_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "baseline": list(self.baseline), "dispatched": list(self.dispatched), "available": list(self.available)}


@dataclasses.dataclass(frozen=True)
class ThreadInfo:
    """CPU threads usable by attnkit (affinity-aware) and whether Python threading works. Truthy if > 1 thread."""

    cpus: int
    threading: bool

    def __bool__(self) -> bool:
        return self.threading and self.cpus > 1

    def as_dict(self) -> dict[str, Any]:
        return {"enabled": bool(self), "cpus": self.cpus, "threading": self.threading}


def _umath() -> Any:
    try:
        from numpy._core import _multiarray_umath as m  # type: ignore[attr-defined]  # private module, not in numpy's stubs
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core import _multiarray_umath as m
    return m


def check_simd_support() -> SIMDInfo:
    """What NumPy's CPU dispatch really uses on this machine (``__cpu_baseline__``/``__cpu_dispatch__``)."""
    m = _umath()
    features: dict[str, bool] = getattr(m, "__cpu_features__", {})
    baseline = tuple(getattr(m, "__cpu_baseline__", ()))
    dispatch = tuple(d for d in getattr(m, "__cpu_dispatch__", ()) if features.get(d, False))
    available = tuple(sorted(k for k, v in features.items() if v))
    return SIMDInfo(baseline=baseline, dispatched=dispatch, available=available)


def check_thread_support() -> ThreadInfo:
    """Threads attnkit may use: the CPUs this process may run on."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS/Windows
        cpus = os.cpu_count() or 1
    ok = True
    try:
        t = threading.Thread(target=lambda: None)
        t.start()
        t.join()
    except RuntimeError:  # pragma: no cover - e.g. Pyodide without threads
        ok = False
    return ThreadInfo(cpus=cpus, threading=ok)


def optional_backends() -> dict[str, str | None]:
    """Installed optional array libraries and their versions (None when absent). Imports nothing heavy."""
    out: dict[str, str | None] = {}
    for mod in ("torch", "jax", "cupy", "dask", "numba", "threadpoolctl"):
        if importlib.util.find_spec(mod) is None:
            out[mod] = None
            continue
        from importlib.metadata import PackageNotFoundError, version

        try:
            out[mod] = version(mod)
        except PackageNotFoundError:
            out[mod] = "installed"
    return out


def blas_info() -> list[dict[str, Any]]:
    """NumPy's BLAS libraries as threadpoolctl reports them (empty when threadpoolctl is absent)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"note": "install threadpoolctl for BLAS details", "numpy": np.__version__}]
    return [
        {k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture", "filepath")}
        for d in threadpool_info()
        if d.get("user_api") == "blas"
    ]
