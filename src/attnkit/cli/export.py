"""``attnkit export``: write one mechanism as an ONNX model (see :func:`attnkit.export_onnx`).

The mechanism is chosen and configured with the same flags as ``attnkit compute`` (``--type``, the
common option flags, ``-O KEY=VALUE``, any constructor option as ``--name value``, ``--weights``);
example inputs come from files (``-q/-k/-v/--mask``, ``-i``) or are drawn (``--random LENGTH``,
default the mechanism's example inputs of length 8). They fix ranks and widths only: batch and
sequence axes stay dynamic unless ``--static``.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ._common import STATE

__all__ = ["export", "register", "run_export"]

_MECH_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": ["-h", "--help"]}


def export(
    ctx: typer.Context,
    output: Annotated[str, typer.Option("--output", "-o", help="Where to write the ONNX model (.onnx).", metavar="FILE")],
    type_: Annotated[
        str | None,
        typer.Option("--type", "-t", help="Mechanism (`attnkit mechanisms`); default: config \\[attention] default_type."),
    ] = None,
    inputs: Annotated[
        str | None,
        typer.Option("--inputs", "-i", help="One .npz/.safetensors/.json file holding example q, k, v (and mask).", metavar="FILE"),
    ] = None,
    query: Annotated[str | None, typer.Option("--query", "-q", help="Example query: FILE or FILE:KEY.", metavar="FILE")] = None,
    keys: Annotated[str | None, typer.Option("--keys", "-k", help="Example keys.", metavar="FILE")] = None,
    values: Annotated[str | None, typer.Option("--values", "-v", help="Example values.", metavar="FILE")] = None,
    mask: Annotated[
        str | None,
        typer.Option("--mask", "-m", help="Example mask (bool or float): the model gets a mask input of that kind.", metavar="FILE"),
    ] = None,
    random: Annotated[
        int | None,
        typer.Option("--random", "-r", help="Draw example inputs of this length (default: the mechanism's, length 8).", metavar="LENGTH"),
    ] = None,
    shape: Annotated[
        list[str] | None,
        typer.Option("--shape", help="Reshape inputs (needed for raw .bin): DIMS for all, or ROLE=DIMS (q=8,2,16).", metavar="[ROLE=]DIMS"),
    ] = None,
    input_format: Annotated[str | None, typer.Option("--input-format", help="Input format when the extension does not tell.")] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="Accepted for compute's flags; the model computes in float32.")] = None,
    heads: Annotated[int | None, typer.Option("--heads", help="Heads (mechanism option heads/num_heads).")] = None,
    dim: Annotated[int | None, typer.Option("--dim", help="Dimension (mechanism option dim/model_dim).")] = None,
    causal: Annotated[bool | None, typer.Option("--causal/--no-causal", help="Causal mask (bottom-right aligned).")] = None,
    block_size: Annotated[int | None, typer.Option("--block-size", help="Key block size of tiled kernels (unused in the graph).")] = None,
    curvature: Annotated[float | None, typer.Option("--curvature", help="Hyperbolic curvature.")] = None,
    feature_map: Annotated[str | None, typer.Option("--feature-map", help="Linear attention feature map (elu, relu, dpfp, favor).")] = None,
    scale: Annotated[float | None, typer.Option("--scale", help="Score scale (default 1/sqrt(dim)).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of random inputs and weights (default: config, else 0).")] = None,
    opt: Annotated[
        list[str] | None,
        typer.Option("--opt", "-O", help="Any mechanism option, KEY=VALUE (repeatable).", metavar="KEY=VALUE"),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option("--weights", "-w", help="Load learned weights into the mechanism before exporting.", metavar="FILE"),
    ] = None,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset of the file (default: the exporter's).")] = None,
    attention_weights: Annotated[
        bool,
        typer.Option("--attention-weights", help="Export the attention weights softmax(scores + mask) instead of the output."),
    ] = False,
    static: Annotated[bool, typer.Option("--static", help="Fix every axis to the example's (default: batch and lengths dynamic).")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print a JSON summary for scripts.")] = False,
) -> None:
    """Write a mechanism as an ONNX model that ONNX Runtime (Python, Node, browsers) runs at any length.

    Every constructor option of the chosen mechanism is also accepted as a flag, as in `attnkit compute`.
    """
    run_export(
        ctx.args, output=output, type_=type_, inputs=inputs, query=query, keys=keys, values=values, mask=mask,
        random=random, shape=shape or [], input_format=input_format, dtype=dtype,
        common={"heads": heads, "dim": dim, "causal": causal, "block_size": block_size, "curvature": curvature,
                "feature_map": feature_map, "scale": scale},
        seed=seed, opt=opt or [], weights=weights, opset=opset, static=static, as_json=json_,
        attention_weights=attention_weights,
    )  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add ``export`` to the ``attnkit`` command tree."""
    app.command("export", context_settings=_MECH_EXTRA)(export)


def run_export(
    extra_args: list[str],
    *,
    output: str,
    type_: str | None,
    inputs: str | None,
    query: str | None,
    keys: str | None,
    values: str | None,
    mask: str | None,
    random: int | None,
    shape: list[str],
    input_format: str | None,
    dtype: str | None,
    common: dict[str, Any],
    seed: int | None,
    opt: list[str],
    weights: str | None,
    opset: int | None,
    static: bool,
    as_json: bool,
    attention_weights: bool = False,
) -> None:
    import numpy as np

    from ..export import export_onnx
    from ..mechanisms import registry
    from ._common import UsageError, console, create_mechanism, emit_json, parse_extra_args, parse_pairs
    from .compute import _load_weights, load_inputs, parse_shapes

    config = STATE.config
    cls: Any = registry.get(type_ or config.get("attention", "default_type"))
    name = str(cls.name)
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
    if "seed" in specs and "seed" not in explicit:
        explicit["seed"] = seed
    if random is not None and random < 1:
        raise UsageError(f"--random: expected a positive length, got {random}")
    if random is not None and (inputs or query):
        raise UsageError("--random: give either --random LENGTH or input files (-q/--inputs), not both")
    if (keys or values or mask) and not (inputs or query):
        raise UsageError("query: -k/-v/--mask need a query (-q FILE)")
    if dtype is not None and dtype not in ("float32", "float64", "float16"):
        raise UsageError(f"--dtype: expected float32, float64 or float16, got {dtype!r}")

    mech = create_mechanism(name, explicit, config)
    if weights is not None:
        _load_weights(mech, weights)
    extras: dict[str, Any] = {}
    if inputs or query:
        arrays = load_inputs(
            inputs=inputs,
            query=query,
            keys=keys,
            values=values,
            mask=mask,
            shapes=parse_shapes(shape),
            input_format=input_format,
            dtype=dtype,
        )
        example = [arrays[r] for r in ("q", "k", "v") if arrays.get(r) is not None]
        example_mask = arrays.get("mask")
    else:
        length = 8 if random is None else random
        example = list(mech.example_inputs(length, np.random.default_rng(seed)))
        extras = mech.example_extras(length, np.random.default_rng(seed + 1))
        example_mask = None
    info = export_onnx(
        mech, output, *example, mask=example_mask, dynamic=not static, opset=opset, output="weights" if attention_weights else "forward", **extras
    )
    summary = {
        "type": name,
        "options": mech.options(),
        "path": info.path,
        "inputs": list(info.inputs),
        "output": info.output,
        "initializers": list(info.initializers),
        "opset": info.opset,
        "size_bytes": info.size_bytes,
        "dynamic": not static,
    }
    if as_json:
        emit_json(summary)
        return
    console().print(
        f"attnkit export: {name} -> {info.path} ({info.size_bytes} bytes, opset {info.opset}); "
        f"inputs {', '.join(info.inputs)}; {len(info.initializers)} initializers"
    )
