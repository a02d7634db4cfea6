"""What a benchmark result must record about the machine: CPU model, family/model, SIMD, BLAS, load.

Every script in ``benchmarks/`` writes :func:`environment` into its results file, so a figure can be
read against the CPU (AMD Zen 3/4 or Intel with AVX-512/AMX), the BLAS and the load it was measured on.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["environment", "cpu_model"]


def cpu_model() -> str:
    """The CPU's model name (the same reading attnkit's engine calibration keys its cache on)."""
    from attnkit.kernels.engine import cpu_model as _model

    return _model()


def environment(threads: int | None = None) -> dict[str, Any]:
    import attnkit

    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "attnkit": attnkit.__version__,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_family_model": _cpu_field(("cpu family", "model")),
        "cpu_simd": _cpu_simd(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE"),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        import torch

        env["torch"] = torch.__version__
    except ImportError:
        env["torch"] = None
    env["accel"] = _accel_info()
    try:
        from threadpoolctl import threadpool_info

        env["blas"] = [
            {k: i.get(k) for k in ("internal_api", "architecture", "version", "num_threads", "threading_layer")}
            for i in threadpool_info()
            if i.get("user_api") == "blas"
        ]
    except ImportError:
        env["blas"] = None
    return env


def _accel_info() -> str | None:
    """The compiled exp pass the NumPy kernels use (the ``numba`` extra), or None without it."""
    from attnkit.kernels import _accel

    if not _accel.enabled() or _accel.exp_rowsum() is None:
        return None
    import numba

    return f"numba {numba.__version__}"


def _cpu_field(names: tuple[str, ...]) -> str | None:
    """``/proc/cpuinfo`` fields of the first CPU (family and model tell Zen 3 from Zen 4, Skylake from Sapphire Rapids)."""
    try:
        found = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip()
            if key in names and key not in found:
                found[key] = line.split(":", 1)[1].strip()
        return " ".join(f"{k} {found[k]}" for k in names if k in found) or None
    except OSError:
        return None


def _cpu_simd() -> list[str] | None:
    """The vector extensions that decide NumPy's and torch's kernels (AVX2, AVX-512, AMX)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f in {"avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "amx_tile", "amx_bf16"})
    except OSError:
        pass
    return None
