"""The mechanism classes users hold.

Importing this package imports every module in it, so each class registers itself in
:mod:`.registry` without a hand-kept list.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from .base import BenchmarkResult, Mechanism, MemoryInfo
from .flash import FlashAttention

for _mod in _pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_") and _mod.name not in ("base", "registry"):
        _importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["BenchmarkResult", "Mechanism", "MemoryInfo", "FlashAttention"]
