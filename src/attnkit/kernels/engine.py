"""Which engine runs exact attention on NumPy inputs: attnkit's NumPy fast path or torch's fused SDPA.

With NumPy inputs the work can run on either of two exact kernels that agree to rounding:

* ``"numpy"``: :func:`attnkit.kernels.dense_numpy.sdpa_numpy` (BLAS GEMMs and NumPy ufuncs, threaded);
* ``"torch"``: ``torch.nn.functional.scaled_dot_product_attention`` (its fused flash kernel on CPU) on
  zero-copy ``torch.from_numpy`` views, the result handed back as a NumPy view.

Which is faster depends on the CPU: NumPy's float32 ``exp`` is vectorised only with AVX-512, torch's
with AVX2 too; torch's wheels link MKL, NumPy's OpenBLAS. ``"auto"`` (the default) decides per call:

1. torch is considered only when it is installed and either already imported (``sys.modules``; it
   costs nothing more) or the call is large enough (at least :data:`IMPORT_WORK` flops) that the
   seconds and hundreds of MB of ``import torch`` pay off;
2. a short calibration (both engines, interleaved, at :data:`_POINTS`, well under a second) says which
   engine is faster at the calibrated point nearest to the call: the same masking (causal or not: torch's
   kernel and the NumPy path skip the hidden key blocks at different speeds) and the nearest work
   (``4 B H Lq Lk D``); it is cached per machine in
   the user cache directory (``platformdirs``, the ``fast`` extra; without it, once per process),
   keyed by CPU model, thread count and the libraries' versions. Each engine's time is its fastest
   of :data:`_REPEATS` interleaved runs (the one least disturbed by other processes); a calibration
   that other processes did disturb (an engine's median more than :data:`_STEADY` above its fastest
   run: on a loaded machine torch's threaded kernel stalls by several times) serves the running
   process only and is not stored, so it cannot fix a wrong choice for later ones.

Override: ``engine="numpy"|"torch"|"auto"`` on :class:`~attnkit.FlashAttention` (and
:func:`attnkit.kernels.dense.sdpa`), or the environment variable ``ATTNKIT_ENGINE`` for ``"auto"``
calls; ``ATTNKIT_ENGINE_CACHE=0`` disables the cache file (calibrating once per process).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["ENGINES", "IMPORT_WORK", "calibration", "cache_path", "choose_engine", "check_engine", "sdpa_torch_numpy", "cpu_model"]

ENGINES = ("auto", "numpy", "torch")

#: flops (4 B H Lq Lk D) above which "auto" imports torch to use it (about 0.3 s of attention here)
IMPORT_WORK = 3e10

#: calibration points (B, H, L, D, causal): a small and a medium problem, each without and with the causal
#: mask; a call uses the nearest by work among the points of its own masking. (A long one-head point,
#: (1, 1, 4096, 64), misled: there torch's causal kernel has one head to spread over its threads and lost
#: to the NumPy path, which it beats at every multi-head shape of the dense table.)
_POINTS = (
    (1, 1, 512, 64, False),
    (1, 4, 1024, 64, False),
    (1, 1, 512, 64, True),
    (1, 4, 1024, 64, True),
)
#: the key prefix of a causal point in a calibration (``"causal:<log work>"``; plain ``"<log work>"`` otherwise)
_CAUSAL = "causal:"
#: torch is chosen where it is at least this much faster (ties keep the NumPy path: no torch calls)
_MARGIN = 1.03
#: interleaved runs of each engine per calibration point
_REPEATS = 7
#: a calibration is stored only where every engine's median run is within this factor of its fastest
_STEADY = 1.25
_VERSION = 4

_lock = threading.Lock()
_calibration: dict[str, float] | None = None


def check_engine(engine: object, name: str = "engine") -> str:
    """Validate an engine name (``"auto"``, ``"numpy"`` or ``"torch"``)."""
    if not isinstance(engine, str) or engine.strip().lower() not in ENGINES:
        raise ConfigError(f"{name}: expected one of {', '.join(map(repr, ENGINES))}, got {engine!r}")
    value = engine.strip().lower()
    if value == "torch" and not torch_available():
        raise ConfigError(f"{name}: 'torch' needs torch installed (pip install attnkit[torch]); use 'auto' or 'numpy'")
    return value


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def torch_available() -> bool:
    return "torch" in sys.modules or importlib.util.find_spec("torch") is not None


def cache_path() -> Path | None:
    """The calibration cache file, or None (no ``platformdirs``, or ``ATTNKIT_ENGINE_CACHE=0``)."""
    if os.environ.get("ATTNKIT_ENGINE_CACHE", "1").strip() == "0":
        return None
    try:
        import platformdirs
    except ImportError:
        return None
    return Path(platformdirs.user_cache_dir("attnkit")) / "engine.json"


def _machine_key() -> str:
    import torch

    from .._threads import get_num_threads

    threads = f"threads={get_num_threads()}|torch_threads={torch.get_num_threads()}"
    return f"v{_VERSION}|{cpu_model()}|{threads}|numpy={np.__version__}|torch={torch.__version__}"


def _work(b: int, h: int, lq: int, lk: int, d: int) -> float:
    return 4.0 * b * h * lq * lk * d


def _point_key(work: float, causal: bool) -> str:
    return f"{_CAUSAL if causal else ''}{math.log(max(work, 1.0)):.3f}"


def _measure() -> tuple[dict[str, float], bool]:
    """``({point key: t_numpy / t_torch}, steady)`` at each calibration point (:func:`_point_key`): each engine's fastest of
    :data:`_REPEATS` interleaved runs; ``steady`` where every median is within :data:`_STEADY` of its fastest."""
    import torch

    from .dense_numpy import sdpa_numpy

    rng = np.random.default_rng(0)
    result: dict[str, float] = {}
    steady = True
    for b, h, length, d, causal in _POINTS:
        q, k, v = (rng.standard_normal((b, h, length, d), dtype=np.float32) for _ in range(3))
        scale = 1.0 / math.sqrt(d)
        fns = {
            "numpy": lambda q=q, k=k, v=v, s=scale, c=causal: sdpa_numpy(q, k, v, scale=s, causal=c),
            "torch": lambda q=q, k=k, v=v, s=scale, c=causal: sdpa_torch_numpy(q, k, v, scale=s, causal=c, torch=torch),
        }
        times: dict[str, list[float]] = {n: [] for n in fns}
        for f in fns.values():  # warm up
            f()
        for _ in range(_REPEATS):
            for n, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[n].append(time.perf_counter() - t0)
        steady = steady and all(float(np.median(t)) <= _STEADY * min(t) for t in times.values())
        result[_point_key(_work(b, h, length, length, d), causal)] = min(times["numpy"]) / min(times["torch"])
    return result, steady


def calibration(refresh: bool = False) -> dict[str, float]:
    """The calibration ``{log(work): t_numpy / t_torch}`` for this machine (imports torch), from the
    cache file when it holds this machine's key, else measured (and stored)."""
    global _calibration
    with _lock:
        if _calibration is not None and not refresh:
            return _calibration
        path = cache_path()
        key = _machine_key()
        if path is not None and not refresh:
            try:
                stored = json.loads(path.read_text(encoding="utf-8"))
                if stored.get("key") == key:
                    _calibration = {str(a): float(r) for a, r in stored["ratios"].items()}
                    return _calibration
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                pass
        _calibration, steady = _measure()
        if path is not None and steady:  # a disturbed calibration serves this process only
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps({"key": key, "ratios": _calibration}), encoding="utf-8")
                os.replace(tmp, path)
            except OSError:
                pass
        return _calibration


def choose_engine(engine: str, *, work: float, dtype: Any, causal: bool = False) -> str:
    """The engine for one NumPy call of ``work`` flops (``4 B H Lq Lk D``, the mask not counted): ``engine``
    itself unless it is ``"auto"`` (then ``$ATTNKIT_ENGINE``, if set, else the calibrated choice at the
    nearest point of the same masking, ``causal`` or not; see the module docstring)."""
    if engine == "auto":
        env = os.environ.get("ATTNKIT_ENGINE", "").strip().lower()
        if env in ("numpy", "torch"):
            engine = env
    if engine != "auto":
        return engine
    if np.dtype(dtype) != np.float32 or not torch_available():
        return "numpy"
    if "torch" not in sys.modules and work < IMPORT_WORK:
        return "numpy"
    ratios = calibration()
    if not ratios:
        return "numpy"
    lw = math.log(max(work, 1.0))
    same = [a for a in ratios if a.startswith(_CAUSAL) == causal] or list(ratios)
    nearest = min(same, key=lambda a: abs(float(a.removeprefix(_CAUSAL)) - lw))
    return "torch" if ratios[nearest] >= _MARGIN else "numpy"


def sdpa_torch_numpy(q: Any, k: Any, v: Any, *, scale: float, mask: Any = None, causal: bool = False, torch: Any = None) -> np.ndarray | None:
    """torch's fused SDPA on NumPy heads-first arrays through zero-copy ``torch.from_numpy`` views;
    the result is the NumPy view of torch's output. ``None`` where the inputs do not suit."""
    if torch is None:
        import torch
    from .dense_torch import sdpa_torch

    arrays = [q, k, v] + ([] if mask is None else [mask])
    if not all(isinstance(a, np.ndarray) for a in arrays):
        return None
    if any(a.ndim and min(a.strides) < 0 for a in arrays):
        return None
    with np.errstate(all="ignore"):
        tq, tk, tv = (torch.from_numpy(a) if a.flags.writeable else torch.from_numpy(a.copy()) for a in (q, k, v))
        tm = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask))
    out = sdpa_torch(tq, tk, tv, scale=scale, mask=tm, causal=causal)
    return None if out is None else out.numpy()
