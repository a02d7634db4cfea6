"""Server settings: limits, authentication and CORS, from arguments, the environment or a dict.

Every field can also be set by an environment variable ``ATTNKIT_SERVER_<FIELD>`` (upper case), which
is how ``attnkit serve`` hands limits to worker processes and how a deployment can set them without
flags. Explicit arguments win over the environment, the environment over the defaults.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError

__all__ = ["Settings", "ENV_PREFIX"]

ENV_PREFIX = "ATTNKIT_SERVER_"
#: one JSON object with every field, used to pass settings to ``--workers`` processes
ENV_JSON = "ATTNKIT_SERVER_SETTINGS_JSON"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Limits and switches of one server process.

    * ``max_body_bytes``: largest request body; larger ones get 413 before they are read whole.
    * ``max_batch_items``: most requests in one ``POST /v1/batch`` (413 above it).
    * ``max_elements``: most elements of any one tensor (413 above it, checked before allocating).
    * ``max_option_int``: largest integer option (``heads``, ``dim``, ``model_dim`` ...), so that a
      request cannot make the server allocate huge weights (422 above it; ``seed`` is exempt).
    * ``request_timeout_s``: a computation (with its time in the queue) that takes longer gets 504.
    * ``max_concurrency``: computations running at once (default: the number of CPU cores).
    * ``queue``: requests that may wait for a free slot; one more gets 503 with ``Retry-After``.
    * ``api_key``: if set, every route but ``/health`` and the docs needs ``Authorization: Bearer
      <key>`` or ``X-API-Key: <key>`` (401 otherwise).
    * ``cors_origins``: origins allowed by CORS; empty (the default) means CORS is off.
    * ``cache_size``: constructed mechanisms kept per (name, options), least recently used dropped.
    * ``cache_bytes``: most bytes of weights and arrays those cached mechanisms may hold (per process).
    * ``max_flops`` / ``max_work_bytes``: most floating-point operations, and bytes of scores and buffers,
      one forward pass may need, estimated from the shapes before computing (413 above; see
      :mod:`attnkit.server.admission`).
    * ``isolation``: ``"process"`` (default) runs computations in worker processes, one per slot, and
      kills a computation that runs past ``request_timeout_s`` (its worker is replaced), so the slot is
      free again at once; ``"thread"`` runs them on threads of the server process, which cannot be
      stopped (a timed-out computation keeps its slot until it ends).
    * ``worker_memory_bytes``: with process isolation, the most memory (``RLIMIT_DATA``) a worker may
      allocate; a request past it (options whose weights need gigabytes, say) gets 413 instead of
      exhausting the machine. ``-1`` (the default): half the physical memory shared among the
      ``max_concurrency`` workers (at least 1 GiB each); ``0``: no limit.
    * ``inline_max_flops``: a request whose estimated work is at most this many floating-point operations
      (and whose mechanism is known to build quickly) is computed on the server's event loop instead of
      in a worker process: it cannot run past its time limit, and skipping the trip to a worker is most
      of its cost (see :mod:`attnkit.server.inline`); ``0`` sends every request to the workers.
    * ``http``: the HTTP/1.1 parser: ``"httptools"`` (C, the cheapest per request), ``"h11"`` (pure
      Python) or ``"auto"`` (the default: httptools when installed, else h11); see :mod:`.protocol`.
    * ``loop``: the event loop: ``"uvloop"``, ``"asyncio"`` or ``"auto"`` (the default: uvloop when
      installed, else asyncio).
    * ``header_timeout_s``: a client must send a request's headers within this time (else the
      connection is answered 408 and closed); ``body_timeout_s``: the most time between two chunks of
      a request body (408).
    """

    max_body_bytes: int = 16 * 1024 * 1024
    max_batch_items: int = 64
    max_elements: int = 4 * 1024 * 1024
    max_option_int: int = 4096
    request_timeout_s: float = 30.0
    max_concurrency: int = 0
    queue: int = 64
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    cache_size: int = 32
    #: issue 14: a model repository directory (``NAME.toml`` + ``NAME.safetensors``) and single models
    #: ``NAME=TYPE[:weights.safetensors]``, loaded at start-up (see :mod:`attnkit.server.models`)
    models_dir: str | None = None
    models: tuple[str, ...] = ()
    #: issue 14: dynamic batching of the Open Inference Protocol route (see :mod:`attnkit.server.batching`):
    #: how long requests queued behind a busy model wait before a batch of them may run beside it (while fewer
    #: than max_concurrency batches of the kind run; else they run when a batch ends), and the most batch items merged
    max_batch_delay_ms: float = 2.0
    max_batch_size: int = 64
    cache_bytes: int = 256 * 1024 * 1024
    max_flops: float = 2e11
    max_work_bytes: int = 2 * 1024**3
    isolation: str = "process"
    worker_memory_bytes: int = -1
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    inline_max_flops: float = 1e6
    http: str = "auto"
    loop: str = "auto"

    def __post_init__(self) -> None:
        def positive(name: str, allow_zero: bool = False) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{name}: expected a number, got {value!r}")
            if name not in _FLOAT_FIELDS and not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
                raise ConfigError(f"{name}: expected an integer, got {value!r}")
            if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
                raise ConfigError(f"{name}: expected a finite {'non-negative' if allow_zero else 'positive'} number, got {value!r}")
            if name not in _FLOAT_FIELDS:
                object.__setattr__(self, name, int(value))

        for name in (
            "max_body_bytes",
            "max_batch_items",
            "max_elements",
            "max_option_int",
            "request_timeout_s",
            "cache_size",
            "cache_bytes",
            "max_flops",
            "max_work_bytes",
            "header_timeout_s",
            "body_timeout_s",
        ):
            positive(name)
        positive("max_concurrency", allow_zero=True)
        positive("max_batch_delay_ms", allow_zero=True)
        positive("max_batch_size")
        positive("inline_max_flops", allow_zero=True)
        positive("queue", allow_zero=True)
        if self.worker_memory_bytes != -1:
            positive("worker_memory_bytes", allow_zero=True)
        from .protocol import event_loop, http_protocol

        http_protocol(self.http)  # a choice that is not one, or a parser that is not installed: ConfigError naming it
        event_loop(self.loop)
        if self.isolation not in ("process", "thread"):
            raise ConfigError(f"isolation: expected 'process' or 'thread', got {self.isolation!r}")
        if self.max_concurrency == 0:
            object.__setattr__(self, "max_concurrency", max(1, os.cpu_count() or 1))
        origins = self.cors_origins
        if isinstance(origins, str):
            origins = tuple(o.strip() for o in origins.split(",") if o.strip())
        object.__setattr__(self, "cors_origins", tuple(origins or ()))
        if isinstance(self.models, str):
            object.__setattr__(self, "models", tuple(m.strip() for m in self.models.split(",") if m.strip()))
        object.__setattr__(self, "models", tuple(self.models or ()))
        if self.api_key is not None and not str(self.api_key):
            object.__setattr__(self, "api_key", None)

    # ------------------------------------------------------------------ construction
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Settings:
        """Settings from a dict (a config file's ``[server]`` table); unknown keys raise ``ConfigError``."""
        names = set(cls.field_names())
        clean: dict[str, Any] = {}
        for key, value in values.items():
            k = str(key).replace("-", "_")
            if k not in names:
                raise ConfigError(f"{key}: unknown server setting; expected one of {', '.join(sorted(names))}")
            if value is not None:
                clean[k] = _convert(k, value)
        return cls(**clean)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``ATTNKIT_SERVER_*`` variables, then ``overrides`` (``None`` values ignored)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        blob = env.get(ENV_JSON)
        if blob:
            try:
                loaded = json.loads(blob)
            except (ValueError, RecursionError) as exc:
                raise ConfigError(f"{ENV_JSON}: expected a JSON object ({str(exc)[:80]})") from None
            if not isinstance(loaded, dict):
                raise ConfigError(f"{ENV_JSON}: expected a JSON object, got {type(loaded).__name__}")
            values.update(loaded)
        from_env = set()
        for name in cls.field_names():
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None and raw != "":
                values[name] = raw
                from_env.add(name)
        explicit = {k: v for k, v in overrides.items() if v is not None}
        values.update(explicit)
        try:
            return cls.from_mapping(values)
        except ConfigError as exc:
            bad = str(exc).split(":", 1)[0]
            if bad in from_env and bad not in explicit:  # say where the bad value came from
                raise ConfigError(f"{ENV_PREFIX}{bad.upper()} ({bad}): {str(exc).split(':', 1)[1].strip()}") from None
            raise

    def worker_memory_limit(self) -> int:
        """Bytes one compute worker may allocate (``worker_memory_bytes``, ``-1`` resolved; 0: no limit)."""
        if self.worker_memory_bytes != -1:
            return int(self.worker_memory_bytes)
        from .._array import allocation_limit

        return max(1 << 30, allocation_limit() // max(1, self.max_concurrency))

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["cors_origins"] = list(self.cors_origins)
        d["models"] = list(self.models)
        return json.dumps(d)


_FLOAT_FIELDS = frozenset({"request_timeout_s", "max_flops", "header_timeout_s", "body_timeout_s", "max_batch_delay_ms", "inline_max_flops"})


def _convert(name: str, value: Any) -> Any:
    """Convert strings from the environment or flags to the field's type."""
    if name == "cors_origins":
        if isinstance(value, str):
            return tuple(o.strip() for o in value.split(",") if o.strip())
        if isinstance(value, (list, tuple)) and all(isinstance(o, str) for o in value):
            return tuple(value)
        raise ConfigError(f"cors_origins: expected a list of origins, got {value!r}")
    if name == "models_dir":
        return str(value)
    if name == "models":
        if isinstance(value, str):
            return tuple(m.strip() for m in value.split(",") if m.strip())
        if isinstance(value, (list, tuple)) and all(isinstance(m, str) for m in value):
            return tuple(value)
        raise ConfigError(f"models: expected a list of NAME=TYPE[:weights] specs, got {value!r}")
    if name in ("api_key", "isolation", "http", "loop"):
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value if name == "api_key" else value.strip().lower()
    if isinstance(value, str):
        try:
            return float(value) if name in _FLOAT_FIELDS else int(value.strip())
        except ValueError:
            kind = "a number" if name in _FLOAT_FIELDS else "an integer"
            raise ConfigError(f"{name}: expected {kind}, got {value[:40]!r}") from None
    return value
