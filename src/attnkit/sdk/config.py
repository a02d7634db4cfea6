"""``AttentionConfig``: a validated dataclass that round-trips to and from a dict and TOML.

TOML is read with the standard library's ``tomllib`` (``tomli`` on Python 3.10) and written with
``tomli-w`` (in the ``cli`` extra); the SDK imports without either and only writing TOML needs
``tomli-w``. A TOML document is read from its ``[attention]`` table when it has one (so the CLI's
config file, which also holds ``[server]`` and others, works as is), else from its top level. The
spec's key names are accepted: ``default_type`` for ``type``, ``num_heads`` for ``heads``,
``hidden_dim`` for ``dim``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import re
from collections.abc import Mapping
from typing import Any

from .._array import positive_int, probability
from ..errors import ConfigError
from .types import AttentionType, normalize_name

__all__ = ["AttentionConfig", "parse_bytes", "SETTINGS"]

#: the named builder settings, in the order they are applied
SETTINGS = ("dim", "heads", "dropout", "causal", "block_size", "curvature", "feature_map")

_KEY_ALIASES = {"default_type": "type", "attention_type": "type", "num_heads": "heads", "hidden_dim": "dim"}

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tb": 1000**4, "tib": 1024**4}


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
        from ..mechanisms import registry

        key = normalize_name(value)
        if key in registry.names():  # a mechanism registered after this enum was written
            return key
        raise ConfigError(
            f"type: expected 'auto' or one of {', '.join(registry.names())}, got {value!r}"
        ) from None


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
        for raw_key, value in data.items():
            key = _KEY_ALIASES.get(str(raw_key), str(raw_key))
            if key not in fields:
                raise ConfigError(f"{raw_key}: unknown config key; expected one of {', '.join(sorted(fields))}")
            if key in kwargs:
                raise ConfigError(f"{raw_key}: given twice (as {key!r} and an alias of it)")
            kwargs[key] = value
        return cls(**kwargs)

    # ---------------------------------------------------------------- TOML
    def to_toml(self) -> str:
        """This config as a TOML document with an ``[attention]`` table (needs ``tomli-w``)."""
        try:
            import tomli_w
        except ImportError:
            raise ImportError(
                "writing TOML needs the 'tomli-w' package: pip install 'attnkit[cli]' (or pip install tomli-w)"
            ) from None
        try:
            return tomli_w.dumps({"attention": self.to_dict()})
        except TypeError as exc:
            raise ConfigError(f"options: a value cannot be written as TOML ({exc})") from exc

    @classmethod
    def from_toml(cls, text: str | bytes) -> AttentionConfig:
        """Parse a TOML document (its ``[attention]`` table if present, else its top level)."""
        try:
            import tomllib
        except ImportError:  # pragma: no cover - Python 3.10
            try:
                import tomli as tomllib  # type: ignore[no-redef]
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
    def builder(self) -> Any:
        """An :class:`~attnkit.sdk.AttentionBuilder` holding a copy of this config."""
        from .builder import AttentionBuilder

        return AttentionBuilder.from_config(self)

    def build(self) -> Any:
        """Build the mechanism this config describes (same as ``self.builder().build()``)."""
        return self.builder().build()
