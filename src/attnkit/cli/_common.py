"""Shared pieces of the command line: state, logging, output, mechanism options from flags and config.

Nothing here imports NumPy-heavy or optional modules at import time; commands import what they use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from ..errors import AttentionError, ConfigError

log = logging.getLogger("attnkit.cli")


class UsageError(AttentionError):
    """Bad command-line input that is not about arrays or mechanism options (exit code 2)."""


class MissingExtra(AttentionError):
    """An optional dependency a command needs is not installed (exit code 2, with the pip command)."""

    def __init__(self, what: str, module: str, extra: str) -> None:
        super().__init__(f"{what} needs {module}, which is not installed: pip install 'attnkit[{extra}]'")


# ---------------------------------------------------------------------------------------------- state
@dataclasses.dataclass
class State:
    """Global flags of one invocation and the config, loaded on first use."""

    verbose: int = 0
    log_format: str | None = None
    config_path: str | None = None
    _config: Any = None

    @property
    def config(self) -> Any:
        if self._config is None:
            from .config import load_config

            self._config = load_config(self.config_path)
            setup_logging(self.verbose, self.log_format, self._config)
            if self._config.path is not None:
                log.info("config: %s (from %s)", self._config.path, self._config.source)
            limit_threads(self._config.get("optimization", "num_threads"))
        return self._config


def limit_threads(n: int | None) -> None:
    """Cap BLAS/OpenMP thread pools at ``n`` for this process (``[optimization] num_threads``; 0 = no cap)."""
    if not n:
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        log.warning("optimization.num_threads = %d ignored: install threadpoolctl (the cli extra has it)", n)
        return
    threadpool_limits(limits=int(n))
    log.info("threads: BLAS/OpenMP pools capped at %d", n)


STATE = State()


# ---------------------------------------------------------------------------------------------- logging
class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def setup_logging(verbose: int, log_format: str | None, config: Any = None) -> None:
    """Log to stderr: ``-v`` info, ``-vv`` debug, else the config's level (warning by default)."""
    if verbose >= 2:
        level = logging.DEBUG
    elif verbose == 1:
        level = logging.INFO
    else:
        level = _LEVELS.get(config.get("logging", "level") if config is not None else "warning", logging.WARNING)
    fmt = log_format or (config.get("logging", "format") if config is not None else "text")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("attnkit")
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


# ---------------------------------------------------------------------------------------------- output
def to_jsonable(obj: Any) -> Any:
    """Make results JSON-safe: NumPy scalars and arrays, paths, dataclasses, non-finite floats (as None)."""
    import math

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def emit_json(obj: Any) -> None:
    """Print ``obj`` as JSON on stdout (the ``--json`` output for scripts)."""
    sys.stdout.write(json.dumps(to_jsonable(obj), indent=2) + "\n")
    sys.stdout.flush()


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def progress_after(seconds: float, message: str, con: Any = None) -> Iterator[None]:
    """Show a spinner with ``message`` on ``con`` (stderr by default) once the block has run ``seconds``,
    and only on a terminal: work that ends sooner prints nothing, scripts and pipes never see it."""
    import threading

    con = con if con is not None else console(stderr=True)
    if not con.is_terminal:
        yield
        return
    status = con.status(message)
    lock = threading.Lock()
    state = {"done": False}

    def start() -> None:
        with lock:
            if not state["done"]:
                status.start()

    timer = threading.Timer(seconds, start)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        with lock:
            state["done"] = True
            status.stop()


def fmt_shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"


def array_stats(x: Any) -> dict[str, Any]:
    """Shape, dtype and summary statistics of an array (NaN-aware), for summaries and the REPL."""
    import numpy as np

    from .._array import to_numpy

    a = to_numpy(x)
    out: dict[str, Any] = {"shape": list(a.shape), "dtype": str(a.dtype)}
    if a.size and a.dtype.kind in "fiub":
        f = a.astype(np.float64)
        finite = np.isfinite(f)
        out["finite"] = bool(finite.all())
        vals = f[finite]
        if vals.size:
            out.update(min=float(vals.min()), max=float(vals.max()), mean=float(vals.mean()), std=float(vals.std()))
    return out


# ---------------------------------------------------------------------------------------------- mechanism options
def parse_pairs(pairs: Iterable[str], what: str = "--opt") -> dict[str, str]:
    """``["heads=4", "causal=true"]`` -> ``{"heads": "4", "causal": "true"}``."""
    out: dict[str, str] = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UsageError(f"{what}: expected KEY=VALUE, got {p!r}")
        out[key] = value.strip()
    return out


def mechanism_options(
    name: str,
    explicit: Mapping[str, Any],
    config: Any = None,
    *,
    fill_required: bool = False,
) -> tuple[str, dict[str, Any]]:
    """The registry name of ``name`` and its options: config soft defaults, then ``explicit`` flags.

    Names resolve through the registry's alias table. Config values apply only where the mechanism has
    such an option; an explicit flag the mechanism does not have, or one option under two names, is an
    error. ``fill_required`` gives required dimension options a small default
    (32), which is what ``demo`` and ``benchmark`` need to run every mechanism without flags.
    """
    from ..mechanisms import registry

    cls = registry.get(name)
    specs = {s.name: s for s in registry.option_specs(cls)}
    opts: dict[str, Any] = {}
    if config is not None:
        for key, value in config.mechanism_defaults(cls.name).items():
            target = registry.find_option(specs, key)
            if target is not None:
                opts[target] = value
    given = [(key, value) for key, value in explicit.items() if value is not None]
    for target, value in registry.canonical_options(cls, given).items():  # ConfigError: unknown, or given twice
        opts[target] = registry.coerce_option(specs[target], value) if isinstance(value, str) else value
    if fill_required:
        for s in specs.values():
            if s.required and s.name not in opts and "int" in s.type.split("|") and "dim" in s.name:
                opts[s.name] = 32
    return cls.name, opts


def create_mechanism(name: str, explicit: Mapping[str, Any], config: Any = None, *, fill_required: bool = False) -> Any:
    """Build a mechanism through the registry from flags and config (see :func:`mechanism_options`)."""
    from ..mechanisms import registry

    key, opts = mechanism_options(name, explicit, config, fill_required=fill_required)
    log.info("mechanism %s(%s)", key, ", ".join(f"{k}={v!r}" for k, v in opts.items()))
    return registry.create(key, **opts)


# ---------------------------------------------------------------------------------------------- files
def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether paths ``a`` and ``b`` name one file: the same real path (symlinks and ``..`` resolved), or
    the same inode (hard links)."""
    try:
        if os.path.realpath(a) == os.path.realpath(b):
            return True
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def check_not_input(output: str | None, inputs: Iterable[str | None], flag: str) -> None:
    """Refuse (exit 2) an output path that is one of the input files, however it is spelled."""
    if output is None or output == "-":
        return
    from ..io import split_key

    out_path = split_key(output)[0]
    for spec in inputs:
        if spec is None:
            continue
        path = split_key(spec)[0]
        if path != "-" and same_file(out_path, path):
            raise UsageError(f"{flag}: {out_path!r} is the input file {spec!r} (or a link to it); write to another path")


def check_finite_output(x: Any, what: str = "output") -> None:
    """Refuse (exit 2) to write or report a result holding NaN or infinity."""
    import numpy as np

    from .._array import to_numpy
    from ..errors import NonFiniteError

    a = to_numpy(x)
    if a.dtype.kind in "fc" and a.size and not np.isfinite(a).all():
        n = int(a.size - np.isfinite(a).sum())
        raise NonFiniteError(
            f"{what}: the result holds {n} NaN or infinite value(s) of {a.size}; nothing was written "
            "(inputs so large that the scores overflow, or options out of range?)"
        )


# ---------------------------------------------------------------------------------------------- weights
def has_weights(mech: Any) -> bool:
    """Whether ``mech`` (an instance or a class) declares attention weights."""
    return bool(getattr(mech, "has_attention_weights", False))


def attention_weights(mech: Any, q: Any, k: Any = None, mask: Any = None, **extras: Any) -> Any:
    """The attention probabilities of ``mech`` for these inputs (``mech.attention_weights``)."""

    if not has_weights(mech):
        raise ConfigError(f"heatmap: mechanism {getattr(mech, 'name', type(mech).__name__)!r} has no attention weights")
    return mech.attention_weights(q, k, mask=mask, **extras)
