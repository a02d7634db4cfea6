"""``attnkit compute``: one mechanism, arrays from files or random ones, output to a file."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .. import io as aio
from ..mechanisms import registry
from ._common import (
    State,
    UsageError,
    array_stats,
    check_finite_output,
    check_not_input,
    console,
    create_mechanism,
    emit_json,
    fmt_shape,
    parse_extra_args,
    parse_pairs,
    progress_after,
)

log = logging.getLogger("attnkit.cli")

#: names an array may have in a multi-array input file, by role
ROLE_KEYS: dict[str, tuple[str, ...]] = {
    "q": ("q", "query", "queries", "Q"),
    "k": ("k", "key", "keys", "K"),
    "v": ("v", "value", "values", "V"),
    "mask": ("mask", "attn_mask", "attention_mask"),
}
_ROLE_NAMES = {"q": "query", "k": "keys", "v": "values", "mask": "mask"}


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
    found: dict[str, np.ndarray] = {}
    if inputs is not None:
        path, key = aio.split_key(inputs)
        if key is not None:
            raise UsageError(f"--inputs: give a whole file, not {inputs!r}; pick single arrays with -q/-k/-v FILE:KEY")
        arrays = aio.read_arrays(path, input_format, name="inputs", dtype=dtype)
        for role, names in ROLE_KEYS.items():
            hit = next((n for n in names if n in arrays), None)
            if hit is not None:
                arr = arrays[hit]
                if role in shapes:
                    arr = aio._reshape(arr, shapes[role], f"inputs[{hit!r}]", repr(path))
                found[role] = arr
        if "q" not in found:
            raise aio.FileFormatError(
                f"inputs: {path!r} has no query array (named q or query); it holds {', '.join(arrays)}"
            )
    for role, spec in (("q", query), ("k", keys), ("v", values), ("mask", mask)):
        if spec is None:
            continue
        found[role] = aio.read_array(
            spec, input_format, shape=shapes.get(role), name=_ROLE_NAMES[role], prefer=ROLE_KEYS[role],
            dtype=dtype if role != "mask" else None,
        )
        log.info("%s: %s %s from %s", _ROLE_NAMES[role], fmt_shape(found[role].shape), found[role].dtype, spec)
    return found


def run_compute(
    state: State,
    extra_args: Sequence[str],
    *,
    type_: str | None,
    inputs: str | None,
    query: str | None,
    keys: str | None,
    values: str | None,
    mask: str | None,
    random: int | None,
    output: str | None,
    motif: int | None = None,
    shape: Sequence[str],
    input_format: str | None,
    output_format: str | None,
    dtype: str | None,
    common: Mapping[str, Any],
    seed: int | None,
    opt: Sequence[str],
    weights: str | None,
    heatmap: str | None,
    as_json: bool,
    scheduler: str | None = None,
    chunks: str | None = None,
) -> None:
    config = state.config
    name = registry.get(type_ or config.get("attention", "default_type")).name
    specs = {s.name: s for s in registry.option_specs(name)}
    explicit: dict[str, Any] = {k: v for k, v in common.items() if v is not None}
    for source in (parse_pairs(opt), parse_extra_args(list(extra_args), specs, name)):
        for k, v in source.items():
            if k in explicit:
                raise UsageError(f"--{k.replace('_', '-')}: given twice")
            explicit[k] = v
    if seed is None:
        seed = config.get("attention", "seed")
        seed = 0 if seed is None else seed
    from .._array import seed_option

    seed = seed_option(seed, "--seed")
    if "seed" in specs and "seed" not in explicit:
        explicit["seed"] = seed
    if dtype is not None and dtype not in ("float32", "float64", "float16"):
        raise UsageError(f"--dtype: expected float32, float64 or float16, got {dtype!r}")
    if random is not None and random < 1:
        raise UsageError(f"--random: expected a positive length, got {random}")
    if motif is not None and (random is None or motif < 1):
        raise UsageError(f"--motif: expected a positive period together with --random LENGTH, got {motif}" + ("" if random else " without --random"))
    if random is not None and (inputs or query):
        raise UsageError("--random: give either --random LENGTH or input files (-q/--inputs), not both")
    if random is None and not (inputs or query):
        raise UsageError("query: give -q/--query FILE, -i/--inputs FILE, or --random LENGTH")
    if (keys or values or mask) and not (inputs or query):
        raise UsageError("query: -k/-v/--mask need a query (-q FILE)")
    if sum(1 for s in (inputs, query, keys, values, mask) if s is not None and aio.split_key(s)[0] == "-") > 1:
        raise UsageError("only one input may be read from standard input ('-')")
    in_files = (inputs, query, keys, values, mask, weights, state.config_path)
    check_not_input(output, in_files, "--output")
    check_not_input(heatmap, in_files, "--heatmap")
    if output is not None and heatmap is not None and output != "-" and _same(output, heatmap):
        raise UsageError(f"--heatmap: {heatmap!r} is also the --output file; write them to different paths")

    mech = create_mechanism(name, explicit, config)
    if weights is not None:
        _load_weights(mech, weights)
    if scheduler is not None or chunks is not None:
        if scheduler is None:
            raise UsageError("--chunks: give --scheduler too (local, threads or a scheduler address)")
        if random is not None or inputs is not None or mask is not None or heatmap is not None:
            raise UsageError("--scheduler: give -q/-k/-v files (.zarr or .npy); --random, --inputs, --mask and --heatmap are not supported there")
        from .cluster import run_cluster_compute

        run_cluster_compute(mech, scheduler=scheduler, chunks=chunks, query=query, keys=keys, values=values, output=output, as_json=as_json)
        return

    extras: dict[str, Any] = {}
    if random is not None:
        _check_random_size(mech, random, dtype)
        drawn = mech.example_inputs(random, np.random.default_rng(seed))
        extras = mech.example_extras(random, np.random.default_rng(seed + 1))
        if motif is not None:
            from ._plot import motif_inputs

            drawn = motif_inputs(mech, random, motif=motif, seed=seed)
            if len(drawn) > 1 and drawn[1].shape == drawn[0].shape:
                drawn = (drawn[0], drawn[0], *drawn[2:])  # keys = query: the motif meets itself
        arrays = dict(zip(("q", "k", "v", "mask"), drawn, strict=False))
        if dtype is not None:
            arrays = {r: (a.astype(dtype) if a.dtype.kind == "f" else a) for r, a in arrays.items()}
    else:
        arrays = load_inputs(
            inputs=inputs, query=query, keys=keys, values=values, mask=mask, shapes=parse_shapes(shape),
            input_format=input_format, dtype=dtype,
        )

    q, k, v, m = arrays.get("q"), arrays.get("k"), arrays.get("v"), arrays.get("mask")
    if k is not None and v is None:
        v = k  # as --values documents: the values default to the keys
    t0 = time.perf_counter()
    with progress_after(1.0, f"computing {name} ..."):
        out = mech.forward(q, k, v, mask=m, **extras)
    elapsed = time.perf_counter() - t0
    from .._array import to_numpy

    out = to_numpy(out)
    log.info("forward: %.3f ms", elapsed * 1e3)
    check_finite_output(out)

    written = None
    if output is not None and output != "-":
        fmt = aio.write_array(output, out, output_format, name="output")
        written = {"path": aio.split_key(output)[0], "format": fmt}

    heat = None
    if heatmap is not None:
        from ._plot import heatmap as draw
        from ._plot import pooled_weights

        heat = draw(pooled_weights(mech, q, k, m, extras=extras), heatmap, title=f"{name} attention weights")

    summary = {
        "type": name,
        "options": mech.options(),
        "inputs": {_ROLE_NAMES[r]: {"shape": list(a.shape), "dtype": str(a.dtype)} for r, a in arrays.items()},
        "output": array_stats(out),
        "time_ms": elapsed * 1e3,
        "written": written,
        "heatmap": heat,
    }
    if output == "-":
        import sys

        sys.stdout.write(aio.dumps(out, "json").decode())
        if not as_json:
            _print_summary(summary, stderr=True)
        return
    if as_json:
        emit_json(summary)
    else:
        _print_summary(summary)


def _same(a: str, b: str) -> bool:
    from ._common import same_file

    return same_file(aio.split_key(a)[0], aio.split_key(b)[0])


def _check_random_size(mech: Any, length: int, dtype: str | None) -> None:
    """Refuse ``--random LENGTH`` before drawing when the inputs would not fit the allocation bound
    (the size of one position comes from a draw of length 1)."""
    from .._array import check_allocation

    one = [*mech.example_inputs(1, np.random.default_rng(0)), *mech.example_extras(1, np.random.default_rng(1)).values()]
    per_position = sum(int(np.size(a)) for a in one if a is not None)
    itemsize = np.dtype(dtype or "float32").itemsize
    check_allocation(float(per_position) * length * itemsize, "--random", f"random inputs of length {length}")


def _load_weights(mech: Any, path: str) -> None:
    loader = getattr(mech, "load_weights", None)
    if not callable(loader):
        raise UsageError(f"--weights: mechanism {mech.name!r} has no learned weights to load")
    from ..weights import load_state

    # load_state reads .safetensors/.npz and torch files (weights_only=True); the mechanism's
    # load_weights accepts attnkit's, torch MultiheadAttention's and HF BERT's layouts
    loader(load_state(path))
    log.info("weights: loaded %s", path)


def _print_summary(s: Mapping[str, Any], stderr: bool = False) -> None:
    from rich.table import Table

    con = console(stderr=stderr)
    t = Table(title=f"attnkit compute: {s['type']}", show_header=True, header_style="bold")
    t.add_column("array")
    t.add_column("shape")
    t.add_column("dtype")
    t.add_column("min / mean / max", justify="right")
    for role, info in s["inputs"].items():
        t.add_row(role, fmt_shape(info["shape"]), info["dtype"], "")
    o = s["output"]
    stats = f"{o['min']:.4g} / {o['mean']:.4g} / {o['max']:.4g}" if "mean" in o else ""
    t.add_row("[bold]output[/bold]", fmt_shape(o["shape"]), o["dtype"], stats)
    con.print(t)
    opts = ", ".join(f"{k}={v!r}" for k, v in s["options"].items())
    con.print(f"options: {opts}")
    con.print(f"time: {s['time_ms']:.3f} ms")
    if o.get("finite") is False:
        con.print("[yellow]warning: the output holds NaN or infinity[/yellow]")
    if s["written"]:
        con.print(f"wrote {s['written']['path']} ({s['written']['format']})")
    if s["heatmap"]:
        con.print(f"wrote heatmap {s['heatmap']}")
