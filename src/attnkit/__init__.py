"""attnkit: one attention toolkit, many mechanisms, every runtime.

Exact (flash-tiled), multi-head, cross, self, linear, hyperbolic and neighbour attention on NumPy
by default and on any Python array-API library (PyTorch, JAX, CuPy, Dask).

Public names are imported lazily (PEP 562), so ``import attnkit`` stays cheap and front ends load
only what they use; so are the subpackages (``attnkit.sdk``, ``attnkit.training``, ... work after a plain
``import attnkit``). Type checkers see the real names through the ``TYPE_CHECKING`` block below, which
mirrors ``_LAZY`` (a test keeps the two equal).
"""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _pkg_version
from typing import TYPE_CHECKING, Any

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
    "KVCache": "attnkit.mechanisms.kv_cache",
    "export_onnx": "attnkit.export",
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


#: subpackages and modules reached as attributes of ``attnkit`` (imported on first use)
_SUBMODULES: frozenset[str] = frozenset(
    {"sdk", "io", "weights", "kernels", "mechanisms", "training", "cli", "server", "system", "errors", "dask", "torch"}
)

if TYPE_CHECKING:  # the names of _LAZY (and the subpackages), for mypy and IDEs; at run time they load on first use
    from . import cli as cli
    from . import dask as dask
    from . import errors as errors
    from . import io as io
    from . import kernels as kernels
    from . import mechanisms as mechanisms
    from . import sdk as sdk
    from . import server as server
    from . import system as system
    from . import torch as torch
    from . import training as training
    from . import weights as weights
    from .export import export_onnx as export_onnx
    from .kernels.masks import create_mask as create_mask
    from .kernels.poincare import exp_map as exp_map
    from .kernels.poincare import from_poincare as from_poincare
    from .kernels.poincare import log_map as log_map
    from .kernels.poincare import mobius_add as mobius_add
    from .kernels.poincare import poincare_distance as poincare_distance
    from .kernels.poincare import project as project
    from .kernels.poincare import to_poincare as to_poincare
    from .kernels.rope import RotaryEmbedding as RotaryEmbedding
    from .mechanisms.base import BenchmarkResult as BenchmarkResult
    from .mechanisms.base import Mechanism as Mechanism
    from .mechanisms.base import MemoryInfo as MemoryInfo
    from .mechanisms.flash import FlashAttention as FlashAttention
    from .mechanisms.functional import functional_call as functional_call
    from .mechanisms.graph import EdgeFeaturedAttention as EdgeFeaturedAttention
    from .mechanisms.graph import GraphRoPEAttention as GraphRoPEAttention
    from .mechanisms.hyperbolic import HyperbolicAttention as HyperbolicAttention
    from .mechanisms.kv_cache import KVCache as KVCache
    from .mechanisms.linear import LinearAttention as LinearAttention
    from .mechanisms.local_global import LocalGlobalAttention as LocalGlobalAttention
    from .mechanisms.mixed_curvature import DualSpaceAttention as DualSpaceAttention
    from .mechanisms.mixed_curvature import MixedCurvatureAttention as MixedCurvatureAttention
    from .mechanisms.moe import MoEAttention as MoEAttention
    from .mechanisms.multihead import CrossAttention as CrossAttention
    from .mechanisms.multihead import MultiHeadAttention as MultiHeadAttention
    from .mechanisms.multihead import SelfAttention as SelfAttention
    from .mechanisms.neighbour import ScaledDotProduct as ScaledDotProduct
    from .sdk import AttentionBuilder as AttentionBuilder
    from .sdk import AttentionConfig as AttentionConfig
    from .sdk import AttentionType as AttentionType
    from .sdk import Pipeline as Pipeline
    from .system import check_simd_support as check_simd_support
    from .system import check_thread_support as check_thread_support


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
    module = _LAZY.get(name)
    if module is None:
        if name in _SUBMODULES:
            return _submodule(name)
        raise AttributeError(f"module 'attnkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def _submodule(name: str) -> Any:
    """``attnkit.<name>`` imported on first attribute access (``attnkit.training`` after ``import attnkit``)."""
    try:
        return importlib.import_module(f"{__name__}.{name}")  # the import binds it in this module's globals
    except ImportError as exc:  # an optional front end without its extra (cli, server, torch)
        raise AttributeError(f"module 'attnkit' has no attribute {name!r}: importing attnkit.{name} failed ({exc})") from exc


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
