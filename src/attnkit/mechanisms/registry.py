"""The registry of mechanisms by name: the one list the SDK, CLI and server read.

A mechanism class registers itself with :func:`register`; front ends call :func:`names`,
:func:`get`, :func:`create` and :func:`option_specs` and never list mechanisms by hand.
Option specs come from the constructor's signature and type hints.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any

from ..errors import ConfigError

__all__ = ["register", "get", "names", "create", "option_specs", "OptionSpec", "coerce_option"]

_REGISTRY: dict[str, type] = {}


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """One constructor option: its name, a type name (int, float, bool, str, str|None, ...), default."""

    name: str
    type: str
    default: Any
    required: bool

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "default": self.default, "required": self.required}


def register(cls: type) -> type:
    """Class decorator: register ``cls`` under ``cls.name``."""
    key = getattr(cls, "name", "")
    if not key:
        raise TypeError(f"{cls.__name__}: set a class attribute 'name' to register it")
    _REGISTRY[key] = cls
    return cls


def _load_all() -> None:
    from .. import mechanisms  # noqa: F401  (importing the package registers every class)


def names() -> list[str]:
    """Registered mechanism names, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def get(name: str) -> type:
    """The class registered as ``name`` (case-insensitive; '-' and '_' are the same)."""
    _load_all()
    key = str(name).strip().lower().replace("-", "_")
    if key not in _REGISTRY:
        raise ConfigError(f"type: unknown mechanism {name!r}; expected one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def _type_name(tp: Any) -> str:
    if tp is inspect.Parameter.empty:
        return "any"
    if isinstance(tp, type):
        return tp.__name__
    args = typing.get_args(tp)
    if args:
        return "|".join(_type_name(a) for a in args if a is not type(None)) + ("|None" if type(None) in args else "")
    return str(tp).replace("typing.", "")


def option_specs(name_or_cls: str | type) -> list[OptionSpec]:
    """The constructor options of a mechanism, with types and defaults."""
    cls = get(name_or_cls) if isinstance(name_or_cls, str) else name_or_cls
    hints = typing.get_type_hints(cls.__init__)
    out = []
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        required = p.default is inspect.Parameter.empty
        out.append(OptionSpec(p.name, _type_name(hints.get(p.name, p.annotation)), None if required else p.default, required))
    return out


def coerce_option(spec: OptionSpec, value: Any) -> Any:
    """Convert a string from a command line or query string to the option's type."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    kinds = spec.type.split("|")
    if "None" in kinds and text.lower() in ("none", "null", ""):
        return None
    for kind in kinds:
        try:
            if kind == "bool":
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                continue
            if kind == "int":
                return int(text)
            if kind == "float":
                return float(text)
            if kind == "str":
                return text
        except ValueError:
            continue
    raise ConfigError(f"{spec.name}: expected {spec.type}, got {value!r}")


def create(name: str, **options: Any) -> Any:
    """Construct the mechanism ``name`` with ``options``; unknown options raise ``ConfigError``."""
    cls = get(name)
    specs = {s.name: s for s in option_specs(cls)}
    unknown = sorted(set(options) - set(specs))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown option for {cls.name!r}; expected one of {', '.join(specs)}")
    missing = [s.name for s in specs.values() if s.required and s.name not in options]
    if missing:
        raise ConfigError(f"{missing[0]}: required option of {cls.name!r} is missing")
    return cls(**{k: coerce_option(specs[k], v) for k, v in options.items()})
