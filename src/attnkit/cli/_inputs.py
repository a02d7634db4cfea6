"""The steps ``compute`` and ``export`` share: pick and configure the mechanism from its flags, check the
input flags, then read the arrays from files or draw them.

:class:`MechanismChoice` and :class:`InputFlags` are the two halves of their flags (see :mod:`._flags`);
each step is a small function that takes them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .. import io as aio
from ..mechanisms import registry
from ._common import State, UsageError, create_mechanism, fmt_shape, parse_pairs

log = logging.getLogger("attnkit.cli")

#: names an array may have in a multi-array input file, by role
ROLE_KEYS: dict[str, tuple[str, ...]] = {
    "q": ("q", "query", "queries", "Q"),
    "k": ("k", "key", "keys", "K"),
    "v": ("v", "value", "values", "V"),
    "mask": ("mask", "attn_mask", "attention_mask"),
}
ROLE_NAMES = {"q": "query", "k": "keys", "v": "values", "mask": "mask"}
DTYPES = ("float32", "float64", "float16")


# ---------------------------------------------------------------------------------------- mechanism
@dataclasses.dataclass
class MechanismChoice:
    """Which mechanism, and its options as given: ``--type``, the generated mechanism flags (by the name
    given), ``-O KEY=VALUE``, leftover tokens click did not know, ``--seed`` and ``--weights``."""

    type_: str | None
    flags: Mapping[str, Any]
    opt: Sequence[str] = ()
    extra_args: Sequence[str] = ()
    seed: int | None = None
    weights: str | None = None


def reject_extra_args(args: Sequence[str], mechanism: str, specs: Mapping[str, Any]) -> None:
    """Name the first token no flag took: an unknown ``--flag`` (with the mechanism's options) or a stray word."""
    if not args:
        return
    tok = args[0]
    if not tok.startswith("--") or tok == "--":
        raise UsageError(f"unexpected argument {tok!r}")
    raise UsageError(
        f"{tok.partition('=')[0]}: no such option for {mechanism!r}; its options are "
        + ", ".join("--" + n.replace("_", "-") for n in specs)
        + " (see `attnkit compute --help` for the command's own flags)"
    )


def explicit_options(choice: MechanismChoice, mechanism: str, specs: Mapping[str, Any]) -> dict[str, Any]:
    """The options given for ``mechanism``: flags, then ``-O`` pairs; one name given both ways is an error
    (two names of one option are refused by the registry, naming both)."""
    reject_extra_args(choice.extra_args, mechanism, specs)
    explicit = dict(choice.flags)
    for key, value in parse_pairs(choice.opt).items():
        if key in explicit:
            raise UsageError(f"--{key.replace('_', '-')}: given twice")
        explicit[key] = value
    return explicit


def resolve_seed(config: Any, seed: int | None) -> int:
    """``--seed``, else config ``[attention] seed``, else 0; range-checked."""
    from .._array import seed_option

    if seed is None:
        seed = config.get("attention", "seed")
    return seed_option(0 if seed is None else seed, "--seed") or 0


def mechanism_name(state: State, type_: str | None) -> str:
    return str(registry.get(type_ or state.config.get("attention", "default_type")).name)


def build_mechanism(state: State, choice: MechanismChoice) -> tuple[Any, int]:
    """The configured mechanism (config soft defaults, then the flags; weights loaded) and the seed."""
    name = mechanism_name(state, choice.type_)
    specs = {s.name: s for s in registry.option_specs(name)}
    explicit = explicit_options(choice, name, specs)
    seed = resolve_seed(state.config, choice.seed)
    if "seed" in specs and "seed" not in explicit:
        explicit["seed"] = seed
    mech = create_mechanism(name, explicit, state.config)
    if choice.weights is not None:
        load_weights(mech, choice.weights)
    return mech, seed


def load_weights(mech: Any, path: str) -> None:
    loader = getattr(mech, "load_weights", None)
    if not callable(loader):
        raise UsageError(f"--weights: mechanism {mech.name!r} has no learned weights to load")
    from ..weights import load_state

    # load_state reads .safetensors/.npz and torch files (weights_only=True); the mechanism's
    # load_weights accepts attnkit's, torch MultiheadAttention's and HF BERT's layouts
    loader(load_state(path))
    log.info("weights: loaded %s", path)


# ---------------------------------------------------------------------------------------- inputs
@dataclasses.dataclass
class InputFlags:
    """Where the inputs come from: files (``-i``, ``-q/-k/-v/-m``, ``--shape``, ``--input-format``) or a
    draw (``--random LENGTH``, ``--motif PERIOD``); ``--dtype`` casts float inputs."""

    inputs: str | None = None
    query: str | None = None
    keys: str | None = None
    values: str | None = None
    mask: str | None = None
    random: int | None = None
    motif: int | None = None
    shape: Sequence[str] = ()
    input_format: str | None = None
    dtype: str | None = None

    @property
    def from_files(self) -> bool:
        return bool(self.inputs or self.query)

    @property
    def files(self) -> tuple[str | None, ...]:
        return (self.inputs, self.query, self.keys, self.values, self.mask)


def check_input_flags(src: InputFlags, *, required: bool = True) -> None:
    """Refuse contradictory or out-of-range input flags before anything is read (exit 2)."""
    if src.dtype is not None and src.dtype not in DTYPES:
        raise UsageError(f"--dtype: expected float32, float64 or float16, got {src.dtype!r}")
    if src.random is not None and src.random < 1:
        raise UsageError(f"--random: expected a positive length, got {src.random}")
    if src.motif is not None and (src.random is None or src.motif < 1):
        raise UsageError(
            f"--motif: expected a positive period together with --random LENGTH, got {src.motif}" + ("" if src.random else " without --random")
        )
    if src.random is not None and src.from_files:
        raise UsageError("--random: give either --random LENGTH or input files (-q/--inputs), not both")
    if required and src.random is None and not src.from_files:
        raise UsageError("query: give -q/--query FILE, -i/--inputs FILE, or --random LENGTH")
    if (src.keys or src.values or src.mask) and not src.from_files:
        raise UsageError("query: -k/-v/--mask need a query (-q FILE)")
    if sum(1 for s in src.files if s is not None and aio.split_key(s)[0] == "-") > 1:
        raise UsageError("only one input may be read from standard input ('-')")


def parse_shapes(items: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """``["8,2,16"]`` -> shape for every role; ``["q=8,2,16", "k=4,2,16"]`` -> per role."""
    out: dict[str, tuple[int, ...]] = {}
    for item in items:
        role, sep, dims = item.partition("=")
        if sep:
            role = role.strip().lower()
            alias = {"query": "q", "keys": "k", "key": "k", "values": "v", "value": "v"}.get(role, role)
            if alias not in ROLE_KEYS:
                raise UsageError(f"--shape: unknown role {role!r}; expected q, k, v or mask (like q=8,2,16)")
            out[alias] = aio.parse_shape(dims, f"--shape {role}")
        else:
            shp = aio.parse_shape(item, "--shape")
            for r in ROLE_KEYS:
                out.setdefault(r, shp)
    return out


def _read_inputs_file(spec: str, shapes: Mapping[str, tuple[int, ...]], input_format: str | None, dtype: str | None) -> dict[str, np.ndarray]:
    path, key = aio.split_key(spec)
    if key is not None:
        raise UsageError(f"--inputs: give a whole file, not {spec!r}; pick single arrays with -q/-k/-v FILE:KEY")
    arrays = aio.read_arrays(path, input_format, name="inputs", dtype=dtype)
    found: dict[str, np.ndarray] = {}
    for role, names in ROLE_KEYS.items():
        hit = next((n for n in names if n in arrays), None)
        if hit is not None:
            arr = arrays[hit]
            found[role] = aio._reshape(arr, shapes[role], f"inputs[{hit!r}]", repr(path)) if role in shapes else arr
    if "q" not in found:
        raise aio.FileFormatError(f"inputs: {path!r} has no query array (named q or query); it holds {', '.join(arrays)}")
    return found


def load_inputs(
    *,
    inputs: str | None,
    query: str | None,
    keys: str | None,
    values: str | None,
    mask: str | None,
    shapes: Mapping[str, tuple[int, ...]],
    input_format: str | None,
    dtype: str | None,
) -> dict[str, np.ndarray]:
    """The arrays by role (q, k, v, mask) from ``--inputs`` and/or the per-role files."""
    found = _read_inputs_file(inputs, shapes, input_format, dtype) if inputs is not None else {}
    for role, spec in (("q", query), ("k", keys), ("v", values), ("mask", mask)):
        if spec is None:
            continue
        found[role] = aio.read_array(
            spec,
            input_format,
            shape=shapes.get(role),
            name=ROLE_NAMES[role],
            prefer=ROLE_KEYS[role],
            dtype=dtype if role != "mask" else None,
        )
        log.info("%s: %s %s from %s", ROLE_NAMES[role], fmt_shape(found[role].shape), found[role].dtype, spec)
    return found


def check_random_size(mech: Any, length: int, dtype: str | None) -> None:
    """Refuse ``--random LENGTH`` before drawing when the inputs would not fit the allocation bound
    (the size of one position comes from a draw of length 1)."""
    from .._array import check_allocation

    one = [*mech.example_inputs(1, np.random.default_rng(0)), *mech.example_extras(1, np.random.default_rng(1)).values()]
    per_position = sum(int(np.size(a)) for a in one if a is not None)
    itemsize = np.dtype(dtype or "float32").itemsize
    check_allocation(float(per_position) * length * itemsize, "--random", f"random inputs of length {length}")


def draw_inputs(mech: Any, length: int, seed: int, *, motif: int | None = None, dtype: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The mechanism's example inputs of ``length`` by role, and its extra inputs (edge features ...).
    With ``motif``: a repeated motif of that period, keys = query (structured pictures)."""
    check_random_size(mech, length, dtype)
    drawn = mech.example_inputs(length, np.random.default_rng(seed))
    extras = mech.example_extras(length, np.random.default_rng(seed + 1))
    if motif is not None:
        from ._plot import motif_inputs

        drawn = motif_inputs(mech, length, motif=motif, seed=seed)
        if len(drawn) > 1 and drawn[1].shape == drawn[0].shape:
            drawn = (drawn[0], drawn[0], *drawn[2:])  # keys = query: the motif meets itself
    arrays = dict(zip(("q", "k", "v", "mask"), drawn, strict=False))
    if dtype is not None:
        arrays = {r: (a.astype(dtype) if a.dtype.kind == "f" else a) for r, a in arrays.items()}
    return arrays, extras


def read_or_draw(mech: Any, src: InputFlags, seed: int, *, default_length: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The input arrays by role and the extra inputs: from the files, else drawn (``--random``, else
    ``default_length``); the values default to the keys (:func:`values_default_to_keys`)."""
    length = src.random if src.random is not None else default_length
    if src.from_files or length is None:
        arrays: dict[str, Any] = load_inputs(
            inputs=src.inputs,
            query=src.query,
            keys=src.keys,
            values=src.values,
            mask=src.mask,
            shapes=parse_shapes(src.shape),
            input_format=src.input_format,
            dtype=src.dtype,
        )
        extras: dict[str, Any] = {}
    else:
        arrays, extras = draw_inputs(mech, length, seed, motif=src.motif, dtype=src.dtype)
    values_default_to_keys(arrays)
    return arrays, extras


def values_default_to_keys(arrays: dict[str, Any]) -> None:
    """As ``--values`` documents: without values, the values are the keys."""
    if arrays.get("k") is not None and arrays.get("v") is None:
        arrays["v"] = arrays["k"]
