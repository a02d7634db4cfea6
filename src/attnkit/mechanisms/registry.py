"""The registry of mechanisms by name: the one list the SDK, CLI and server read.

A mechanism class registers itself with :func:`register`; front ends call :func:`names`,
:func:`get`, :func:`create` and :func:`option_specs` and never list mechanisms by hand.
Option specs come from the constructor's signature and type hints.

:data:`OPTION_ALIASES` is the one table of option names and their aliases. The SDK builder, the
SDK config, the CLI (flags, ``-O``, the config file) and the server resolve every option name through
:func:`resolve_option`, so every name works in every front end. :func:`canonical_options` resolves a
whole set of options and rejects one option given under two names.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import ConfigError

if TYPE_CHECKING:
    from .base import Mechanism

_M = TypeVar("_M", bound=type)

__all__ = [
    "register",
    "get",
    "names",
    "create",
    "option_specs",
    "OptionSpec",
    "coerce_option",
    "OPTION_ALIASES",
    "resolve_option",
    "find_option",
    "canonical_options",
    "option_aliases",
    "setting_name",
]

_REGISTRY: dict[str, type[Mechanism]] = {}


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """One constructor option: its name, a type name (int, float, bool, str, str|None, ...), default."""

    name: str
    type: str
    default: Any
    required: bool

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "default": self.default, "required": self.required}


#: generic name -> every name that means it, in the order a mechanism's option is looked for.
#: A name given to a mechanism resolves to itself if the mechanism has such an option, else to the
#: first name of the first group that holds it and that the mechanism has. So ``dim`` reaches
#: ``model_dim`` on multi_head and self (the model width), ``query_dim`` on cross, and ``dim`` on the
#: others (flash, linear, local_global: the width of one head; hyperbolic, scaled_dot_product,
#: graph mechanisms: the embedding width); ``head_dim`` reaches only a per-head ``dim``.
OPTION_ALIASES: dict[str, tuple[str, ...]] = {
    "dim": ("model_dim", "query_dim", "dim", "embed_dim", "d_model", "hidden_dim", "hidden_size"),
    "head_dim": ("dim", "head_dim"),
    "key_dim": ("key_dim", "kdim"),
    "value_dim": ("vdim", "value_dim"),
    "heads": ("heads", "num_heads", "n_heads", "nhead", "num_attention_heads"),
    "dropout": ("dropout", "dropout_p", "attention_dropout"),
    "causal": ("causal", "is_causal"),
    "block_size": ("block_size", "block"),
    "curvature": ("curvature", "c"),
    "feature_map": ("feature_map", "kernel"),
    "nb_features": ("nb_features", "num_features", "n_features"),
    "window": ("window", "window_size"),
    "top_k": ("top_k", "k"),
    "simd": ("simd", "use_simd"),
}


def _norm(name: str) -> str:
    return str(name).strip().replace("-", "_")


def setting_name(name: str) -> str | None:
    """The generic name (a key of :data:`OPTION_ALIASES`) that ``name`` spells, or None."""
    key = _norm(name)
    if key in OPTION_ALIASES:
        return key
    return next((g for g, spellings in OPTION_ALIASES.items() if key in spellings), None)


def _option_names(mechanism: str | type | Iterable[str]) -> tuple[str, set[str]]:
    if isinstance(mechanism, (str, type)):
        cls = get(mechanism) if isinstance(mechanism, str) else mechanism
        return str(getattr(cls, "name", cls.__name__)), set(_spec_names(cls))
    names_ = set(mechanism)
    return "", names_


def find_option(mechanism: str | type | Iterable[str], name: str) -> str | None:
    """The constructor option of ``mechanism`` (a registry name, a class, or a set of option names)
    that ``name`` or one of its aliases names; None if there is none."""
    _, specs = _option_names(mechanism)
    key = _norm(name)
    if key in specs:
        return key
    for generic, spellings in OPTION_ALIASES.items():
        if key == generic or key in spellings:
            hit = next((n for n in spellings if n in specs), None)
            if hit is not None:
                return hit
    return None


def resolve_option(mechanism: str | type | Iterable[str], name: str) -> str:
    """The canonical constructor option of ``mechanism`` that ``name`` means (see :data:`OPTION_ALIASES`).

    Raises :class:`~attnkit.errors.ConfigError` naming ``name`` when the mechanism has no such option.
    """
    found = find_option(mechanism, name)
    if found is None:
        label, specs = _option_names(mechanism)
        raise ConfigError(f"{name}: not an option of {label or 'this mechanism'!r}; its options are {', '.join(sorted(specs)) or '(none)'}")
    return found


def option_aliases(mechanism: str | type | Iterable[str]) -> dict[str, list[str]]:
    """Each option of ``mechanism`` -> the other names of :data:`OPTION_ALIASES` that reach it."""
    _, specs = _option_names(mechanism)
    out: dict[str, list[str]] = {name: [] for name in sorted(specs)}
    spellings = dict.fromkeys(n for generic, names_ in OPTION_ALIASES.items() for n in (generic, *names_))
    for spelling in spellings:
        target = find_option(specs, spelling)
        if target is not None and target != spelling:
            out[target].append(spelling)
    return out


def canonical_options(mechanism: str | type | Iterable[str], options: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """``options`` under the mechanism's own option names. An unknown name, or one option given under
    two names (``heads`` and ``num_heads``), raises :class:`~attnkit.errors.ConfigError` naming them."""
    pairs = options.items() if isinstance(options, Mapping) else options
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for name, value in pairs:
        target = resolve_option(mechanism, name)
        if target in out:
            raise ConfigError(f"{target}: given twice, as {given[target]!r} and as {name!r}")
        out[target] = value
        given[target] = name
    return out


def register(cls: _M) -> _M:
    """Class decorator: register ``cls`` (a :class:`~attnkit.mechanisms.base.Mechanism`) under ``cls.name``."""
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


def get(name: str) -> type[Mechanism]:
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
    return list(_specs_of(cls))


@functools.lru_cache(maxsize=512)
def _spec_names(cls: type) -> frozenset[str]:
    return frozenset(s.name for s in _specs_of(cls))


@functools.lru_cache(maxsize=512)
def _specs_of(cls: type) -> tuple[OptionSpec, ...]:
    """The option specs of ``cls``, read once per class (type hints and the signature cost ~0.1 ms, and
    the server resolves options on every request)."""
    init = vars(cls).get("__init__") or next(vars(c)["__init__"] for c in cls.__mro__ if "__init__" in vars(c))
    hints = typing.get_type_hints(init)
    out = []
    for p in list(inspect.signature(init).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        required = p.default is inspect.Parameter.empty
        out.append(OptionSpec(p.name, _type_name(hints.get(p.name, p.annotation)), None if required else p.default, required))
    return tuple(out)


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


def create(name: str, **options: Any) -> Mechanism:
    """Construct the mechanism ``name`` with ``options`` (any name of :data:`OPTION_ALIASES` works);
    unknown options and one option under two names raise ``ConfigError``."""
    cls = get(name)
    specs = {s.name: s for s in option_specs(cls)}
    unknown = sorted(k for k in options if find_option(specs, k) is None)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown option for {cls.name!r}; expected one of {', '.join(specs)}")
    options = canonical_options(specs, options)
    missing = [s.name for s in specs.values() if s.required and s.name not in options]
    if missing:
        raise ConfigError(f"{missing[0]}: required option of {cls.name!r} is missing")
    return cls(**{k: coerce_option(specs[k], v) for k, v in options.items()})
