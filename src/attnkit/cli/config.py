"""attnkit's TOML configuration file: where it is found, what it may hold, how it is checked.

One file is used, the first found of:

1. ``--config PATH`` (a missing file is an error),
2. the ``ATTNKIT_CONFIG`` environment variable (a missing file is an error),
3. ``./attnkit.toml`` in the working directory,
4. the user config file: ``$XDG_CONFIG_HOME/attnkit/config.toml`` (default ``~/.config``), on macOS
   ``~/Library/Application Support/attnkit/config.toml``, on Windows ``%APPDATA%\\attnkit\\config.toml``.

Sections follow the platform spec's ``config.toml``: ``[attention]``, ``[optimization]``, ``[server]``
and ``[logging]``, plus ``[attention.<mechanism>]`` tables holding options of one mechanism by their
constructor names. Every key is checked when the file is read: an unknown section, key, mechanism
or option, or a value of the wrong type, is a :class:`~attnkit.errors.ConfigError` naming it.
Command-line flags override the file, which overrides the built-in defaults.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = [
    "SCHEMA",
    "Config",
    "Key",
    "find_config",
    "load_config",
    "parse_config",
    "user_config_path",
    "default_config_text",
]


@dataclasses.dataclass(frozen=True)
class Key:
    """One config key: its type (``str``/``int``/``float``/``bool``), default (None: not set) and meaning."""

    type: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None


#: section -> key -> Key. ``None`` defaults leave the mechanism's own default in place.
SCHEMA: dict[str, dict[str, Key]] = {
    "attention": {
        "default_type": Key("str", "flash", "mechanism used when --type is not given (see `attnkit mechanisms`)"),
        "num_heads": Key("int", None, "number of heads: the mechanism's heads option", minimum=1),
        "hidden_dim": Key("int", None, "dimension: the mechanism's dim option (model_dim for multi-head layers)", minimum=1),
        "dropout": Key("float", None, "dropout on attention probabilities (training mode only)", minimum=0.0, maximum=1.0),
        "causal": Key("bool", None, "causal masking (bottom-right aligned)"),
        "block_size": Key("int", None, "key block size of tiled kernels", minimum=1),
        "seed": Key("int", None, "seed of random weights, random inputs and dropout", minimum=0),
    },
    "optimization": {
        "use_simd": Key("bool", True, "allow the vectorised NumPy fast path (the mechanism's simd option)"),
        "num_threads": Key("int", 0, "cap on BLAS/compute threads; 0 = every CPU this process may use", minimum=0),
        "batch_size": Key("int", 1, "sequences per timed forward in `attnkit benchmark` (a leading batch axis)", minimum=1),
    },
    "server": {
        "host": Key("str", "127.0.0.1", "interface to listen on (0.0.0.0 exposes the server to the network)"),
        "port": Key("int", 8080, "TCP port", minimum=0, maximum=65535),
        "workers": Key("int", 1, "server worker processes", minimum=1),
        "max_body_bytes": Key("int", None, "largest request body, in bytes", minimum=1),
        "max_batch_items": Key("int", None, "most requests in one POST /v1/batch", minimum=1),
        "max_elements": Key("int", None, "most elements of one tensor", minimum=1),
        "max_option_int": Key("int", None, "largest integer mechanism option a request may set", minimum=1),
        "request_timeout_s": Key("float", None, "time limit of one computation, in seconds", minimum=0.001),
        "max_concurrency": Key("int", None, "computations running at once (0 = one per CPU)", minimum=0),
        "queue": Key("int", None, "requests that may wait for a free slot", minimum=0),
        "api_key": Key("str", None, "require this key (Authorization: Bearer / X-API-Key); prefer $ATTNKIT_SERVER_API_KEY"),
        "cors_origins": Key("list[str]", None, "origins allowed by CORS (empty: CORS off)"),
        "cache_size": Key("int", None, "constructed mechanisms kept per (name, options)", minimum=1),
        "cache_bytes": Key("int", None, "most bytes of weights the cached mechanisms may hold (per process)", minimum=1),
        "max_flops": Key("float", None, "most floating-point operations one forward pass may need (estimated first)", minimum=1),
        "max_work_bytes": Key("int", None, "most bytes of scores and buffers one forward pass may need", minimum=1),
        "isolation": Key("str", None, "where computations run: process (killable on timeout) or thread", choices=("process", "thread")),
        "worker_memory_bytes": Key("int", None, "memory cap of each compute worker process (0: none)", minimum=0),
        "header_timeout_s": Key("float", None, "seconds a client has to send a request head", minimum=0.001),
        "body_timeout_s": Key("float", None, "most seconds between two parts of a request body", minimum=0.001),
        "inline_max_flops": Key("float", None, "requests of at most this many FLOPs run on the event loop (0: all in workers)", minimum=0),
        "http": Key("str", None, "HTTP/1.1 parser (auto: httptools when installed)", choices=("auto", "httptools", "h11")),
        "loop": Key("str", None, "event loop (auto: uvloop when installed)", choices=("auto", "uvloop", "asyncio")),
        # the platform spec's names, accepted so that its config.toml loads
        "max_batch_size": Key("int", None, "the spec's name for max_batch_items", minimum=1),
        "timeout_ms": Key("int", None, "the spec's name for request_timeout_s, in milliseconds", minimum=1),
        "max_connections": Key("int", None, "the spec's connection cap; attnkit's server bounds max_concurrency + queue instead", minimum=1),
    },
    "logging": {
        "level": Key("str", "warning", "log level", choices=("debug", "info", "warning", "error")),
        "format": Key("str", "text", "log line format", choices=("text", "json")),
    },
}


def _toml_loads(text: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    return tomllib.loads(text)


def _toml_error_type() -> type[Exception]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib.TOMLDecodeError


def user_config_path(env: Mapping[str, str] | None = None) -> Path:
    """The per-user config file path for this platform (it may not exist)."""
    env = os.environ if env is None else env
    if sys.platform == "win32":  # pragma: no cover - platform specific
        base = Path(env.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":  # pragma: no cover - platform specific
        base = Path.home() / "Library" / "Application Support"
    else:
        xdg = env.get("XDG_CONFIG_HOME")
        base = Path(xdg) if xdg else Path(env.get("HOME") or Path.home()) / ".config"
    return base / "attnkit" / "config.toml"


def find_config(
    explicit: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> tuple[Path | None, str]:
    """The config file in use and why: ``(path, source)``; ``(None, "built-in defaults")`` when none."""
    env = os.environ if env is None else env
    if explicit is not None and str(explicit) != "":
        p = Path(explicit)
        if not p.is_file():
            raise ConfigError(f"--config: file not found: {str(explicit)!r}")
        return p, "--config"
    from_env = env.get("ATTNKIT_CONFIG")
    if from_env:
        p = Path(from_env)
        if not p.is_file():
            raise ConfigError(f"ATTNKIT_CONFIG: file not found: {from_env!r}")
        return p, "ATTNKIT_CONFIG"
    local = Path(cwd or os.getcwd()) / "attnkit.toml"
    if local.is_file():
        return local, "./attnkit.toml"
    user = user_config_path(env)
    if user.is_file():
        return user, "user config dir"
    return None, "built-in defaults"


def _check_value(where: str, key: Key, value: Any) -> Any:
    t = key.type
    ok = (
        (t == "bool" and isinstance(value, bool))
        or (t == "int" and isinstance(value, int) and not isinstance(value, bool))
        or (t == "float" and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (t == "str" and isinstance(value, str))
        or (t == "list[str]" and isinstance(value, list) and all(isinstance(v, str) for v in value))
    )
    if not ok:
        raise ConfigError(f"{where}: expected {'a' if t != 'int' else 'an'} {t}, got {value!r}")
    if t == "float":
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    if key.choices is not None and str(value).lower() not in key.choices:
        raise ConfigError(f"{where}: expected one of {', '.join(key.choices)}, got {value!r}")
    if key.choices is not None:
        value = str(value).lower()
    if key.minimum is not None and value < key.minimum:
        raise ConfigError(f"{where}: expected a value >= {key.minimum:g}, got {value!r}")
    if key.maximum is not None and value > key.maximum:
        raise ConfigError(f"{where}: expected a value <= {key.maximum:g}, got {value!r}")
    return value


def _check_option(where: str, spec: Any, value: Any) -> Any:
    """Check a ``[attention.<mechanism>]`` value against the option's type name from the registry."""
    from ..mechanisms.registry import coerce_option

    kinds = spec.type.split("|")
    if isinstance(value, str) and "str" not in kinds:
        try:
            return coerce_option(spec, value)
        except ConfigError:
            raise ConfigError(f"{where}: expected {spec.type}, got {value!r}") from None
    if isinstance(value, bool):
        if "bool" in kinds or "any" in kinds:
            return value
    elif isinstance(value, int):
        if {"int", "float", "any"} & set(kinds):
            return float(value) if "int" not in kinds and "float" in kinds else value
    elif isinstance(value, float):
        if "float" in kinds or "any" in kinds:
            return value
    elif isinstance(value, str):
        return value
    elif isinstance(value, list) and ("any" in kinds or any(k.startswith(("list", "tuple", "Sequence")) for k in kinds)):
        return value
    raise ConfigError(f"{where}: expected {spec.type}, got {value!r}")


def parse_config(text: str, where: str = "config") -> dict[str, Any]:
    """Parse and check TOML text. Returns ``{section: {key: value}}`` holding only what the text sets,
    with ``attention`` possibly holding ``{mechanism: {option: value}}`` tables."""
    try:
        raw = _toml_loads(text)
    except _toml_error_type() as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{where}: not valid TOML: arrays or tables nested too deeply") from None
    out: dict[str, Any] = {}
    for section, body in raw.items():
        if section not in SCHEMA:
            raise ConfigError(f"{where}: [{section}]: unknown section; expected one of {', '.join(f'[{s}]' for s in SCHEMA)}")
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: {section}: expected a [{section}] table, got {body!r}")
        keys = SCHEMA[section]
        sec: dict[str, Any] = {}
        spelled: dict[str, str] = {}
        for raw_key, value in body.items():
            if section == "attention" and isinstance(value, dict):
                sec[raw_key] = _parse_mechanism_table(where, raw_key, value)
                continue
            key = _schema_key(section, raw_key)
            if key is None:
                raise ConfigError(f"{where}: [{section}] {raw_key}: unknown key; expected one of {', '.join(keys)}")
            if key in spelled:
                raise ConfigError(f"{where}: [{section}] {key}: given twice, as {spelled[key]!r} and as {raw_key!r}")
            spelled[key] = raw_key
            sec[key] = _check_value(f"{where}: [{section}] {raw_key}", keys[key], value)
        if section == "attention" and "default_type" in sec:
            from ..mechanisms import registry

            try:
                sec["default_type"] = registry.get(sec["default_type"]).name
            except ConfigError as exc:
                raise ConfigError(f"{where}: [attention] default_type: {str(exc).split(': ', 1)[-1]}") from None
        out[section] = sec
    return out


def _parse_mechanism_table(where: str, name: str, table: dict[str, Any]) -> dict[str, Any]:
    from ..mechanisms import registry

    try:
        cls = registry.get(name)
    except ConfigError:
        raise ConfigError(f"{where}: [attention.{name}]: unknown mechanism {name!r}; expected one of {', '.join(registry.names())}") from None
    specs = {s.name: s for s in registry.option_specs(cls)}
    for key in table:
        if registry.find_option(specs, key) is None:
            raise ConfigError(f"{where}: [attention.{name}] {key}: unknown option of {cls.name!r}; expected one of {', '.join(specs)}")
    try:
        options = registry.canonical_options(specs, table)  # any name of the registry's alias table
    except ConfigError as exc:
        raise ConfigError(f"{where}: [attention.{name}] {exc}") from None
    given = {registry.find_option(specs, key): key for key in table}
    return {opt: _check_option(f"{where}: [attention.{name}] {given[opt]}", specs[opt], value) for opt, value in options.items()}


def _schema_key(section: str, key: str) -> str | None:
    """The schema key of ``section`` that ``key`` spells: itself, or (in ``[attention]``) an alias from the
    registry's table (``heads``/``n_heads`` for ``num_heads``, ``dim``/``model_dim`` for ``hidden_dim``, ...)."""
    keys = SCHEMA[section]
    if key in keys:
        return key
    if section != "attention":
        return None
    from ..mechanisms import registry

    generic = registry.setting_name(key)
    if generic is None:
        return None
    return next((k for k in keys if registry.setting_name(k) == generic), None)


@dataclasses.dataclass
class Config:
    """The configuration in effect: built-in defaults overlaid by one file (``path``, found via ``source``)."""

    values: dict[str, dict[str, Any]]
    mechanisms: dict[str, dict[str, Any]]
    path: Path | None = None
    source: str = "built-in defaults"

    def get(self, section: str, key: str) -> Any:
        """A value of the effective configuration (``None`` when unset and without a default)."""
        if section not in SCHEMA or key not in SCHEMA[section]:
            raise ConfigError(f"config: [{section}] {key}: unknown key")
        return self.values[section].get(key)

    def mechanism_defaults(self, name: str) -> dict[str, Any]:
        """Soft defaults for mechanism ``name``: generic keys under CLI option names (``heads``, ``dim``,
        ``dropout``, ``causal``, ``block_size``, ``seed``, ``simd``, ``threads``) that apply where the
        mechanism has such an option, then its own ``[attention.<name>]`` table (exact option names)."""
        a, o = self.values["attention"], self.values["optimization"]
        generic = {
            "heads": a.get("num_heads"),
            "dim": a.get("hidden_dim"),
            "dropout": a.get("dropout"),
            "causal": a.get("causal"),
            "block_size": a.get("block_size"),
            "seed": a.get("seed"),
            "simd": o.get("use_simd"),
            "threads": o.get("num_threads") or None,
        }
        out = {k: v for k, v in generic.items() if v is not None}
        out.update(self.mechanisms.get(name, {}))
        return out

    def as_dict(self) -> dict[str, Any]:
        """The effective configuration as nested dicts (unset keys left out), mechanism tables included."""
        out: dict[str, Any] = {s: {k: v for k, v in body.items() if v is not None} for s, body in self.values.items()}
        for name, table in self.mechanisms.items():
            out["attention"][name] = dict(table)
        return out

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.as_dict())


def load_config(
    explicit: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Config:
    """Find (see :func:`find_config`), read and check the config file; defaults when there is none."""
    path, source = find_config(explicit, env=env, cwd=cwd)
    values = {s: {k: key.default for k, key in keys.items()} for s, keys in SCHEMA.items()}
    mechanisms: dict[str, dict[str, Any]] = {}
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            what = "is not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else "cannot be read"
            raise ConfigError(f"{source}: {str(path)!r} {what}: {exc}") from None
        parsed = parse_config(text, str(path))
        for section, body in parsed.items():
            for key, value in body.items():
                if isinstance(value, dict):
                    mechanisms[key] = value
                else:
                    values[section][key] = value
    return Config(values=values, mechanisms=mechanisms, path=path, source=source)


def _toml_value(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


def default_config_text() -> str:
    """A commented config file with every key (what ``attnkit config init`` writes)."""
    lines = [
        "# attnkit configuration (TOML). Flags on the command line override these values.",
        "# Found through --config, $ATTNKIT_CONFIG, ./attnkit.toml or the user config dir.",
        "# Commented keys are unset: the mechanism's own default applies.",
    ]
    examples = {
        "num_heads": 8,
        "hidden_dim": 64,
        "dropout": 0.0,
        "causal": False,
        "block_size": 256,
        "seed": 0,
        "max_body_bytes": 16 << 20,
        "max_batch_items": 64,
        "max_elements": 4 << 20,
        "max_option_int": 4096,
        "request_timeout_s": 30.0,
        "max_concurrency": 0,
        "queue": 64,
        "api_key": "change-me",
        "cors_origins": ["http://localhost:5173"],
        "cache_size": 32,
        "max_batch_size": 256,
        "timeout_ms": 5000,
        "max_connections": 1000,
    }
    for section, keys in SCHEMA.items():
        lines += ["", f"[{section}]"]
        for name, key in keys.items():
            choices = f" ({' | '.join(key.choices)})" if key.choices else ""
            if key.default is None:
                lines.append(f"# {name} = {_toml_value(examples.get(name, 0))}  # {key.help}{choices}")
            else:
                lines.append(f"{name} = {_toml_value(key.default)}  # {key.help}{choices}")
        if section == "attention":
            lines += [
                "",
                "# Options of one mechanism, by constructor name (`attnkit mechanisms NAME` lists them):",
                "# [attention.flash]",
                "# block_size = 128",
                "# [attention.linear]",
                '# feature_map = "favor"',
            ]
    return "\n".join(lines) + "\n"
