"""The flags of the command line, each defined once.

Two kinds:

* **command flags** shared by several commands (``--type``, the input flags ``-q/-k/-v/-m/-i/-r``,
  ``--opt``, ``--seed``, ``--weights``, ``--json`` ...) are Typer ``Annotated`` aliases: a command
  lists ``query: QueryFlag = None`` and gets the same flag, help and metavar as every other command.
* **mechanism flags** (``--heads``, ``--num-heads``, ``--dim``, ``--causal``, ``--num-neighbors`` ...)
  are generated from the registry: one flag per constructor option of any registered mechanism
  (:func:`attnkit.mechanisms.registry.option_specs`) and one per name of
  :data:`~attnkit.mechanisms.registry.OPTION_ALIASES` (the aliases are hidden from ``--help`` and
  listed in their option's help). Its type comes from the options it reaches (``int`` where every one
  is an int, ``float``, a ``--x/--no-x`` switch for booleans, else text that the registry coerces per
  mechanism). :class:`MechanismCommand` adds them to a Typer command when it is parsed or its help is
  shown (so ``attnkit --help`` never imports the mechanisms) and hands the values given, under the
  names given, to the command in ``ctx.meta`` (:func:`given_mechanism_flags`). The registry then
  resolves each name for the chosen mechanism (``--dim`` is ``model_dim`` on multi_head) and refuses
  one option under two names.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Iterable, Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

__all__ = [
    "MechanismCommand",
    "MechanismFlag",
    "mechanism_flag_table",
    "given_mechanism_flags",
    "BOOL_WORDS",
]

# ------------------------------------------------------------------------------------ command flags
TypeFlag = Annotated[
    str | None,
    typer.Option("--type", "-t", help="Mechanism, one of `attnkit mechanisms` (default: config \\[attention] default_type, else flash)."),
]
InputsFlag = Annotated[
    str | None,
    typer.Option("--inputs", "-i", help="One .npz/.safetensors/.json file holding q, k, v (and mask).", metavar="FILE"),
]
QueryFlag = Annotated[str | None, typer.Option("--query", "-q", help="Query array: FILE or FILE:KEY ('-' = stdin).", metavar="FILE")]
KeysFlag = Annotated[
    str | None,
    typer.Option("--keys", "-k", help="Key array (default: the mechanism's, usually the query).", metavar="FILE"),
]
ValuesFlag = Annotated[str | None, typer.Option("--values", "-v", help="Value array (default: the keys).", metavar="FILE")]
MaskFlag = Annotated[
    str | None,
    typer.Option("--mask", "-m", help="Mask array: bool (True = may attend) or float (added to scores).", metavar="FILE"),
]
RandomFlag = Annotated[
    int | None,
    typer.Option("--random", "-r", help="Draw random inputs of this length (the mechanism's example inputs).", metavar="LENGTH"),
]
ShapeFlag = Annotated[
    list[str] | None,
    typer.Option("--shape", help="Reshape inputs (needed for raw .bin): DIMS for all, or ROLE=DIMS (q=8,2,16).", metavar="[ROLE=]DIMS"),
]
InputFormatFlag = Annotated[str | None, typer.Option("--input-format", help="Input format when the extension does not tell.")]
OutputFormatFlag = Annotated[str | None, typer.Option("--output-format", help="Output format when the extension does not tell.")]
DtypeFlag = Annotated[str | None, typer.Option("--dtype", help="Cast float inputs: float32, float64 or float16.")]
SeedFlag = Annotated[int | None, typer.Option("--seed", help="Seed of random inputs and weights (default: config, else 0).")]
OptFlag = Annotated[
    list[str] | None,
    typer.Option("--opt", "-O", help="Any mechanism option, KEY=VALUE (repeatable).", metavar="KEY=VALUE"),
]
WeightsFlag = Annotated[
    str | None,
    typer.Option("--weights", "-w", help="Load learned weights (attnkit/torch/HF layout) into the mechanism.", metavar="FILE"),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print a JSON summary for scripts.")]

#: context settings of every command; mechanism commands also keep unknown flags, to name them in the error
CONTEXT = {"help_option_names": ["-h", "--help"]}
MECHANISM_CONTEXT = {**CONTEXT, "allow_extra_args": True, "ignore_unknown_options": True}

# ------------------------------------------------------------------------------------ mechanism flags
#: the words a boolean option takes as a value (``--check-finite false``)
BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}

#: a line of help for the most used options; the others say which mechanisms have them
_DESCRIBE = {
    "heads": "Attention heads.",
    "dim": "Width: the model width of multi_head/self, query_dim of cross, else dim.",
    "head_dim": "Width of one head (a per-head dim option only).",
    "causal": "Causal mask (bottom-right aligned).",
    "block_size": "Key block size of tiled kernels.",
    "curvature": "Hyperbolic curvature.",
    "feature_map": "Linear attention feature map (elu, relu, dpfp, favor).",
    "scale": "Score scale (default 1/sqrt(dim)).",
    "dropout": "Dropout probability of the attention weights.",
    "window": "Local window (positions each side).",
}
_PANEL = "Mechanism options: \\[the mechanisms that have it] (`attnkit mechanisms NAME`)"


@dataclasses.dataclass(frozen=True)
class MechanismFlag:
    """One generated flag: the option name it carries, its kind, the mechanisms that have the option it
    reaches, and the other names of :data:`OPTION_ALIASES` listed in its help (hidden aliases)."""

    name: str
    kind: str  # int | float | bool | str
    mechanisms: tuple[str, ...]
    aliases: tuple[str, ...]
    hidden: bool

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _kind(types: Iterable[str]) -> str:
    parts = {p for t in types for p in t.split("|")} - {"None"}
    if parts == {"bool"}:
        return "bool"
    if parts == {"int"}:
        return "int"
    if parts == {"float"}:
        return "float"
    return "str"


@functools.cache
def mechanism_flag_table() -> tuple[MechanismFlag, ...]:
    """The generated flags: every declared option of every mechanism and every name of the alias table."""
    from ..mechanisms import registry

    specs = {m: {s.name: s for s in registry.option_specs(m)} for m in registry.names()}
    spellings = {n for generic, names in registry.OPTION_ALIASES.items() for n in (generic, *names)}
    declared = {n for ss in specs.values() for n in ss}
    visible = declared | set(registry.OPTION_ALIASES)
    out = []
    for name in sorted(declared | spellings):
        reach: dict[str, str] = {}
        for m, ss in specs.items():
            target = registry.find_option(ss, name)
            if target is not None:
                reach[m] = target
        if not reach:
            continue
        # a generic name lists the spellings of its group that have no flag of their own shown
        group = registry.OPTION_ALIASES.get(name, ())
        aliases = tuple(a for a in dict.fromkeys(group) if a not in visible)
        out.append(
            MechanismFlag(
                name=name,
                kind=_kind(specs[m][t].type for m, t in reach.items()),
                mechanisms=tuple(sorted(reach)),
                aliases=aliases,
                hidden=name not in visible,
            )
        )
    return tuple(out)


def _help(f: MechanismFlag) -> str:
    who = ", ".join(f.mechanisms[:3]) + (f" +{len(f.mechanisms) - 3}" if len(f.mechanisms) > 3 else "")
    text = (_DESCRIBE[f.name] + " " if f.name in _DESCRIBE else "") + f"\\[{who}]"
    if f.aliases:
        text += " also " + ", ".join("--" + a.replace("_", "-") for a in f.aliases)
    return text


_PYTYPE: dict[str, Any] = {"int": int, "float": float, "bool": bool, "str": str}


def _typer_params(flags: Sequence[MechanismFlag]) -> list[Any]:
    """Click parameters for ``flags``, made by Typer itself from a signature (public API only)."""
    params = []
    for f in flags:
        decls = [f"{f.flag}/--no-{f.flag[2:]}"] if f.kind == "bool" else [f.flag]
        option = typer.Option(*decls, help=_help(f), hidden=f.hidden, rich_help_panel=_PANEL, show_default=False)
        pytype: Any = _PYTYPE[f.kind] | None
        annotation = Annotated[pytype, option]
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))

    def holder(**kwargs: Any) -> None:  # pragma: no cover - never called: only its signature is read
        return None

    holder.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    holder.__annotations__ = {p.name: p.annotation for p in params}
    sub = typer.Typer()
    sub.command()(holder)
    return [p for p in typer.main.get_command(sub).params if p.name in holder.__annotations__]


_META = "attnkit.mechanism_flags"


class MechanismCommand(TyperCommand):
    """A Typer command that also takes the generated mechanism flags (minus :attr:`exclude`).

    The flags are made on first use (help or parsing), so importing the command tree stays light.
    The values given reach the command through :func:`given_mechanism_flags`, not its signature.
    """

    #: option names a command sets itself (``--seed`` is compute's own flag)
    exclude: frozenset[str] = frozenset({"seed"})
    #: groups of :data:`OPTION_ALIASES` a command sets itself (benchmark's grid sets ``dim``)
    exclude_groups: frozenset[str] = frozenset()

    def mechanism_flags(self) -> tuple[MechanismFlag, ...]:
        from ..mechanisms.registry import setting_name

        return tuple(f for f in mechanism_flag_table() if f.name not in self.exclude and setting_name(f.name) not in self.exclude_groups)

    def generated_params(self) -> list[Any]:
        cached = self.__dict__.get("_generated")
        if cached is None:
            cached = self.__dict__["_generated"] = _typer_params(self.mechanism_flags())
        return cached

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        helpers = [p for p in params if p.name == "help"]
        return [p for p in params if p.name != "help"] + self.generated_params() + helpers

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, bool_values_as_switches(args, [f for f in self.mechanism_flags() if f.kind == "bool"]))

    def invoke(self, ctx: Any) -> Any:
        given = {}
        for p in self.generated_params():
            value = ctx.params.pop(p.name, None)
            if value is not None:
                given[p.name] = value
        ctx.meta[_META] = given
        return super().invoke(ctx)


def mechanism_command(exclude: Iterable[str] = ("seed",), exclude_groups: Iterable[str] = ()) -> type[MechanismCommand]:
    """A :class:`MechanismCommand` without the flags a command sets itself: the option names in
    ``exclude`` and every name of the alias groups in ``exclude_groups``."""
    attrs = {"exclude": frozenset(exclude), "exclude_groups": frozenset(exclude_groups)}
    return type("MechanismCommand", (MechanismCommand,), attrs)


def bool_values_as_switches(args: Sequence[str], flags: Iterable[MechanismFlag]) -> list[str]:
    """``--check-finite false`` / ``--check-finite=no`` -> ``--no-check-finite`` (a boolean option also
    takes a true/false word, as in ``-O check_finite=false`` and the config file)."""
    names = {f.flag for f in flags}
    out: list[str] = []
    i = 0
    while i < len(args):
        tok = args[i]
        name, eq, word = tok.partition("=")
        if name in names and eq and word.lower() in BOOL_WORDS:
            out.append(name if BOOL_WORDS[word.lower()] else "--no-" + name[2:])
        elif tok in names and i + 1 < len(args) and args[i + 1].lower() in BOOL_WORDS:
            out.append(tok if BOOL_WORDS[args[i + 1].lower()] else "--no-" + tok[2:])
            i += 1
        else:
            out.append(tok)
        i += 1
    return out


def given_mechanism_flags(ctx: Any) -> dict[str, Any]:
    """The mechanism flags given on the command line, by the name given (``{"num_heads": 4}``)."""
    return dict(ctx.meta.get(_META, {}))
