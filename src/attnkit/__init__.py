"""attnkit: one attention toolkit, many mechanisms, every runtime.

Exact (flash-tiled), multi-head, cross, self, linear, hyperbolic and neighbour attention on NumPy
by default and on any Python array-API library (PyTorch, JAX, CuPy, Dask).

Public names are imported lazily (PEP 562), so ``import attnkit`` stays cheap and front ends load
only what they use.
"""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _pkg_version
from typing import Any

from .errors import AttentionError, ConfigError, DisposedError, DTypeError, NonFiniteError, ShapeError

#: public name -> module that defines it
_LAZY: dict[str, str] = {
    # system and masks
    "create_mask": "attnkit.kernels.masks",
    "check_simd_support": "attnkit.system",
    "check_thread_support": "attnkit.system",
    # base types
    "Mechanism": "attnkit.mechanisms.base",
    "MemoryInfo": "attnkit.mechanisms.base",
    "BenchmarkResult": "attnkit.mechanisms.base",
    "functional_call": "attnkit.mechanisms.functional",
    # core mechanisms
    "FlashAttention": "attnkit.mechanisms.flash",
    "MultiHeadAttention": "attnkit.mechanisms.multihead",
    "CrossAttention": "attnkit.mechanisms.multihead",
    "SelfAttention": "attnkit.mechanisms.multihead",
    "LinearAttention": "attnkit.mechanisms.linear",
    "HyperbolicAttention": "attnkit.mechanisms.hyperbolic",
    "ScaledDotProduct": "attnkit.mechanisms.neighbour",
    # Poincare ball primitives
    "poincare_distance": "attnkit.kernels.poincare",
    "mobius_add": "attnkit.kernels.poincare",
    "exp_map": "attnkit.kernels.poincare",
    "log_map": "attnkit.kernels.poincare",
    "to_poincare": "attnkit.kernels.poincare",
    "from_poincare": "attnkit.kernels.poincare",
    "project": "attnkit.kernels.poincare",
    # further mechanisms
    "LocalGlobalAttention": "attnkit.mechanisms.local_global",
    "MoEAttention": "attnkit.mechanisms.moe",
    "EdgeFeaturedAttention": "attnkit.mechanisms.graph",
    "GraphRoPEAttention": "attnkit.mechanisms.graph",
    "RotaryEmbedding": "attnkit.kernels.rope",
    "MixedCurvatureAttention": "attnkit.mechanisms.mixed_curvature",
    "DualSpaceAttention": "attnkit.mechanisms.mixed_curvature",
    # SDK
    "AttentionType": "attnkit.sdk",
    "AttentionConfig": "attnkit.sdk",
    "AttentionBuilder": "attnkit.sdk",
    "Pipeline": "attnkit.sdk",
}


#: optional front-end submodules reachable as attributes without importing them with attnkit
_SUBMODULES = frozenset({"torch"})


@functools.cache
def _installed_version() -> str:
    """The version in the installed package's metadata, which pyproject.toml's ``version`` sets (the one place
    it is written); from a source tree that is not installed, read from that pyproject.toml."""
    try:
        return _pkg_version("attnkit")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return _source_version()


def _source_version() -> str:
    """``[project] version`` of the pyproject.toml beside ``src/`` (``0+unknown`` when there is none)."""
    import re
    from pathlib import Path

    try:
        text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return "0+unknown"
    project = text.split("[project]", 1)[-1].split("\n[", 1)[0]
    found = re.search(r'^version\s*=\s*"([^"]+)"', project, re.MULTILINE)
    return found.group(1) if found else "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":  # read from the package metadata on first use (it costs ~28 ms at import)
        return _installed_version()
    if name in _SUBMODULES:  # e.g. attnkit.torch: imported on first use (it imports PyTorch)
        return importlib.import_module(f"attnkit.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'attnkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | {"__version__"})


def version() -> str:
    """The installed attnkit version (the spec's ``version()``)."""
    return _installed_version()


def supported_features() -> list[str]:
    """Names of every registered mechanism plus the capabilities of this build."""
    from .mechanisms import registry

    return [*registry.names(), "batch", "async", "streaming", "simd", "masks"]


__all__ = [  # noqa: F822  (lazy names resolve through __getattr__)
    "__version__",
    "version",
    "supported_features",
    "AttentionError",
    "ConfigError",
    "DisposedError",
    "DTypeError",
    "NonFiniteError",
    "ShapeError",
    *_LAZY,
]
