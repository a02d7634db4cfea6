"""``AttentionConfig``: a validated dataclass that round-trips to and from a dict and TOML.

TOML is read with the standard library's ``tomllib`` (``tomli`` on Python 3.10) and written with
``tomli-w`` (in the ``cli`` extra); the SDK imports without either and only writing TOML needs
``tomli-w``. A TOML document is read from its ``[attention]`` table when it has one (so the CLI's
config file, which also holds ``[server]`` and others, works as is), else from its top level. The
spec's key names are accepted (``default_type`` for ``type``), and every option name of the registry's
alias table (:data:`attnkit.mechanisms.registry.OPTION_ALIASES`): ``num_heads`` for ``heads``,
``hidden_dim`` for ``dim``, and any other mechanism option or alias (kept in ``options``).

:meth:`AttentionConfig.plan` resolves a config into the mechanism and constructor options
:meth:`AttentionConfig.build` constructs; :class:`~attnkit.sdk.AttentionBuilder` only collects settings
into a config, so this module does not import the builder.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

from .._array import positive_int, probability
from ..errors import ConfigError
from ..mechanisms import registry
from .selection import Selection, select_sequence_mechanism
from .types import AttentionType, normalize_name

__all__ = ["AttentionConfig", "Plan", "parse_bytes", "SETTINGS"]

#: the named builder settings, in the order they are applied (each a key of ``registry.OPTION_ALIASES``)
SETTINGS = ("dim", "heads", "dropout", "causal", "block_size", "curvature", "feature_map")

#: the names of the ``type`` key in a config document (the spec calls it ``default_type``)
_TYPE_KEYS = ("type", "default_type", "attention_type")

#: the candidates of automatic selection
_AUTO_CANDIDATES = ("flash", "linear")


def _no_op(setting: str, value: Any) -> bool:
    return (setting == "causal" and value is False) or (setting == "dropout" and value == 0.0)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What :meth:`AttentionConfig.build` constructs: the mechanism, its options and why."""

    name: str
    kwargs: dict[str, Any]
    mapping: list[tuple[str, Any, str]]  # (setting or option as given, value, constructor option)
    ignored: list[tuple[str, Any]]
    selection: Selection | None
    reason: str


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tb": 1000**4,
    "tib": 1024**4,
}


def parse_bytes(value: object, name: str = "memory_budget") -> int:
    """A byte count from an int or a string such as ``"512MiB"``, ``"1.5 GB"`` (> 0)."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", value)
        unit = m.group(2).lower() if m else None
        if not m or unit not in _UNITS:
            raise ConfigError(f"{name}: expected a byte count such as 536870912 or '512MiB', got {value!r}")
        out = float(m.group(1)) * _UNITS[unit]
        if not math.isfinite(out) or out < 1:
            raise ConfigError(f"{name}: expected at least one byte, got {value!r}")
        return int(out)
    return positive_int(value, name)


def _opt(validator: Any, value: Any, name: str) -> Any:
    return None if value is None else validator(value, name)


def _bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    return value


def _curvature(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)) or value == 0:
        raise ConfigError(f"{name}: expected a finite non-zero number, got {value!r}")
    return float(value)


def _str(value: object, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name}: expected a non-empty string, got {value!r}")
    return value.strip().lower()


def _type(value: object) -> AttentionType | str:
    if value is None:
        raise ConfigError("type: expected a mechanism name or 'auto', got None")
    try:
        return AttentionType.parse(value)
    except ConfigError:
        key = normalize_name(value)
        if key in registry.names():  # a mechanism registered after this enum was written
            return key
        raise ConfigError(f"type: expected 'auto' or one of {', '.join(registry.names())}, got {value!r}") from None


@dataclasses.dataclass
class AttentionConfig:
    """Everything an :class:`~attnkit.sdk.AttentionBuilder` knows; ``None`` means "the mechanism's default".

    Mechanism settings: ``type`` (an :class:`AttentionType`, default ``AUTO``), ``dim`` (the width
    the mechanism's constructor calls ``model_dim`` or ``dim``), ``heads``, ``dropout`` in [0, 1),
    ``causal``, ``block_size``, ``curvature`` (finite, non-zero; a negative value means the same
    ball, as in the spec), ``feature_map``, and ``options``: any further constructor options by name.

    Automatic selection (used when ``type`` is ``AUTO``; see
    :func:`~attnkit.sdk.select_sequence_mechanism`): ``max_len`` (longest sequence), ``memory_budget``
    (bytes, or a string such as ``"512MiB"``), ``batch`` (sequences per call), ``exact_max_len``
    (longest sequence given to exact attention) and ``need_scores`` (the caller will ask for the
    dense ``attention_scores``, an ``L x L`` matrix per head).

    Every field is validated on construction and on :func:`dataclasses.replace`; a bad value raises
    :class:`~attnkit.errors.ConfigError` naming the field.
    """

    type: AttentionType | str = AttentionType.AUTO
    dim: int | None = None
    heads: int | None = None
    dropout: float | None = None
    causal: bool | None = None
    block_size: int | None = None
    curvature: float | None = None
    feature_map: str | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    max_len: int | None = None
    memory_budget: int | None = None
    batch: int | None = None
    exact_max_len: int | None = None
    need_scores: bool | None = None

    def __post_init__(self) -> None:
        self.type = _type(self.type)
        self.dim = _opt(positive_int, self.dim, "dim")
        self.heads = _opt(positive_int, self.heads, "heads")
        self.dropout = _opt(probability, self.dropout, "dropout")
        self.causal = _opt(_bool, self.causal, "causal")
        self.block_size = _opt(positive_int, self.block_size, "block_size")
        self.curvature = _opt(_curvature, self.curvature, "curvature")
        self.feature_map = _opt(_str, self.feature_map, "feature_map")
        self.max_len = _opt(positive_int, self.max_len, "max_len")
        self.memory_budget = _opt(parse_bytes, self.memory_budget, "memory_budget")
        self.batch = _opt(positive_int, self.batch, "batch")
        self.exact_max_len = _opt(positive_int, self.exact_max_len, "exact_max_len")
        self.need_scores = _opt(_bool, self.need_scores, "need_scores")
        if not isinstance(self.options, Mapping):
            raise ConfigError(f"options: expected a table of option names to values, got {self.options!r}")
        opts = dict(self.options)
        for key in opts:
            if not isinstance(key, str) or not key.isidentifier():
                raise ConfigError(f"options: expected option names that are identifiers, got {key!r}")
        self.options = opts

    @property
    def attention_type(self) -> AttentionType | str:
        return self.type

    # ---------------------------------------------------------------- dict
    def to_dict(self) -> dict[str, Any]:
        """The set fields as plain Python values (``None`` fields and empty ``options`` left out)."""
        out: dict[str, Any] = {"type": str(self.type)}
        for f in dataclasses.fields(self):
            if f.name in ("type", "options"):
                continue
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value
        if self.options:
            out["options"] = dict(self.options)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AttentionConfig:
        """The inverse of :meth:`to_dict`; also accepts the spec's key names. Unknown keys raise."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"config: expected a table of settings, got {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        options: dict[str, Any] = {}
        given: dict[str, str] = {}
        for raw_key, value in data.items():
            raw = str(raw_key)
            key = "type" if raw in _TYPE_KEYS else raw if raw in fields else registry.setting_name(raw)
            if key not in fields:
                if key is None and not any(registry.find_option(n, raw) for n in registry.names()):
                    raise ConfigError(f"{raw}: unknown config key; expected one of {', '.join(sorted(fields))} or a mechanism option")
                options[raw] = value  # a mechanism option (or alias), resolved when the mechanism is known
                continue
            if key in given:
                raise ConfigError(f"{key}: given twice, as {given[key]!r} and as {raw!r}")
            given[key] = raw
            kwargs[key] = value
        if options:
            if not isinstance(kwargs.get("options", {}), Mapping):
                raise ConfigError(f"options: expected a table of option names to values, got {kwargs['options']!r}")
            kwargs["options"] = {**options, **kwargs.get("options", {})}
        return cls(**kwargs)

    # ---------------------------------------------------------------- TOML
    def to_toml(self) -> str:
        """This config as a TOML document with an ``[attention]`` table (needs ``tomli-w``)."""
        try:
            import tomli_w
        except ImportError:
            raise ImportError("writing TOML needs the 'tomli-w' package: pip install 'attnkit[cli]' (or pip install tomli-w)") from None
        try:
            return tomli_w.dumps({"attention": self.to_dict()})
        except TypeError as exc:
            raise ConfigError(f"options: a value cannot be written as TOML ({exc})") from exc

    @classmethod
    def from_toml(cls, text: str | bytes) -> AttentionConfig:
        """Parse a TOML document (its ``[attention]`` table if present, else its top level)."""
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            try:
                import tomli as tomllib
            except ImportError:
                raise ImportError("reading TOML on Python 3.10 needs 'tomli': pip install 'attnkit[cli]'") from None
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        if not isinstance(text, str):
            raise ConfigError(f"text: expected TOML text, got {type(text).__name__}")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config: invalid TOML ({exc})") from exc
        table = data.get("attention", data)
        return cls.from_dict(table)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_toml` to ``path``."""
        text = self.to_toml()
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AttentionConfig:
        """Read a TOML file written by :meth:`save` (or the CLI's config file)."""
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            raise ConfigError(f"path: cannot read config file {os.fspath(path)!r} ({exc.strerror})") from exc
        return cls.from_toml(raw)

    # ---------------------------------------------------------------- building
    def selection(self) -> Selection | None:
        """The automatic-selection outcome for ``AUTO`` (``None`` for an explicit type)."""
        if self.type != AttentionType.AUTO:
            return None
        defaults = {s.name: s.default for s in registry.option_specs("flash")}
        head_dim = self.dim or defaults.get("dim", 64)
        try:
            from ..kernels.linear import feature_dim

            features: int | None = feature_dim(self.feature_map or "favor", head_dim, self.options.get("nu", 1), self.options.get("nb_features"))
        except (ImportError, ValueError, TypeError):
            features = None  # the estimate falls back to F = D
        return select_sequence_mechanism(
            max_len=self.max_len,
            heads=self.heads or defaults.get("heads", 8),
            head_dim=head_dim,
            batch=self.batch or 1,
            memory_budget=self.memory_budget,
            exact_max_len=self.exact_max_len,
            need_scores=bool(self.need_scores),
            block_size=self.block_size or defaults.get("block_size", 256),
            features=features,
        )

    def plan(self, reason: str | None = None) -> Plan:
        """The mechanism this config builds and its constructor options, each setting and option
        resolved through the registry's alias table (one option under two names is a ConfigError)."""
        selection = self.selection()
        if selection is not None:
            name = selection.type.value
            why = (reason + " " if reason else "") + selection.reason
        else:
            name = normalize_name(self.type)
            why = reason or f"{name}: chosen explicitly with .type({name!r})"
        cls = registry.get(name)  # ConfigError if that mechanism is not available
        specs = {s.name: s for s in registry.option_specs(cls)}
        others: set[str] = set()
        if selection is not None:
            for cand in _AUTO_CANDIDATES:
                if cand != name and cand in registry.names():
                    others |= {s.name for s in registry.option_specs(cand)}
        given: list[tuple[str, Any]] = []
        mapping: list[tuple[str, Any, str]] = []
        ignored: list[tuple[str, Any]] = []
        for setting in SETTINGS:
            value = getattr(self, setting)
            if value is None:
                continue
            target = registry.find_option(specs, setting)
            if target is None:
                if _no_op(setting, value) or registry.find_option(others, setting) is not None:
                    ignored.append((setting, value))
                    continue
                raise ConfigError(f"{setting}: the {name!r} mechanism does not take this setting (got {value!r}); its options are {', '.join(specs)}")
            given.append((setting, value))
            mapping.append((setting, value, target))
        for opt, value in self.options.items():
            target = registry.find_option(specs, opt)
            if target is None:
                if registry.find_option(others, opt) is not None:
                    ignored.append((opt, value))
                    continue
                raise ConfigError(f"{opt}: the {name!r} mechanism has no such option; its options are {', '.join(specs)}")
            given.append((opt, value))
            mapping.append((opt, value, target))
        kwargs = registry.canonical_options(specs, given)
        if selection is not None and selection.type == AttentionType.LINEAR and "feature_map" not in kwargs and "feature_map" in specs:
            kwargs["feature_map"] = "favor"
            mapping.append(("feature_map", "favor", "feature_map"))
            why += " Its feature map is FAVOR+ (it estimates the softmax attention exact attention computes)."
        for spec in specs.values():
            if spec.required and spec.name not in kwargs:
                named = registry.setting_name(spec.name)
                named = named if named in SETTINGS else None
                how = f".{named}(...)" if named else f".option({spec.name!r}, ...)"
                raise ConfigError(f"{named or spec.name}: the {name!r} mechanism needs it (its option {spec.name!r}); call {how}")
        return Plan(name, kwargs, mapping, ignored, selection, why)

    def build(self) -> Any:
        """Build the mechanism this config describes (:meth:`plan`, then ``registry.create``)."""
        plan = self.plan()
        return registry.create(plan.name, **plan.kwargs)
