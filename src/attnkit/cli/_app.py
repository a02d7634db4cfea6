"""The ``attnkit`` command tree (typer). Each command is a thin shell over a module of this package,
imported only when the command runs, so ``attnkit --help`` stays fast."""

from typing import Annotated

import typer

from ._common import STATE, setup_logging

_HELP = """attnkit: attention mechanisms from the command line.

Run every mechanism on built-in data with `attnkit demo`; list them with `attnkit mechanisms`.
Exit codes: 0 ok, 2 bad input (one line on stderr), 1 internal error.
"""

app = typer.Typer(
    name="attnkit",
    help=_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(help="Show or create the TOML config file.", no_args_is_help=True)
app.add_typer(config_app, name="config")


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"attnkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[
        int,
        typer.Option("--verbose", "-v", count=True, help="More logging: -v info, -vv debug; tracebacks on errors."),
    ] = 0,
    log_format: Annotated[str | None, typer.Option("--log-format", help="Log lines as 'text' or 'json' (stderr).")] = None,
    config: Annotated[
        str | None,
        typer.Option("--config", "-c", help="Config file (else $ATTNKIT_CONFIG, ./attnkit.toml, user config).", metavar="PATH"),
    ] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    if log_format is not None and log_format not in ("text", "json"):
        raise typer.BadParameter(f"expected 'text' or 'json', got {log_format!r}", param_hint="--log-format")
    STATE.verbose = verbose
    STATE.log_format = log_format
    STATE.config_path = config
    setup_logging(verbose, log_format)


_MECH_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": ["-h", "--help"]}


@app.command(context_settings=_MECH_EXTRA)
def compute(
    ctx: typer.Context,
    type_: Annotated[
        str | None,
        typer.Option("--type", "-t", help="Mechanism (`attnkit mechanisms`); default: config \\[attention] default_type."),
    ] = None,
    inputs: Annotated[
        str | None,
        typer.Option("--inputs", "-i", help="One .npz/.safetensors/.json file holding q, k, v (and mask).", metavar="FILE"),
    ] = None,
    query: Annotated[str | None, typer.Option("--query", "-q", help="Query array: FILE or FILE:KEY ('-' = stdin).", metavar="FILE")] = None,
    keys: Annotated[
        str | None,
        typer.Option("--keys", "-k", help="Key array (default: the mechanism's, usually the query).", metavar="FILE"),
    ] = None,
    values: Annotated[str | None, typer.Option("--values", "-v", help="Value array (default: the keys).", metavar="FILE")] = None,
    mask: Annotated[
        str | None,
        typer.Option("--mask", "-m", help="Mask array: bool (True = may attend) or float (added to scores).", metavar="FILE"),
    ] = None,
    random: Annotated[
        int | None,
        typer.Option("--random", "-r", help="Generate random inputs of this length (the mechanism's sample_inputs).", metavar="LENGTH"),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="Write the output; format from the extension ('-' = JSON on stdout).", metavar="FILE"),
    ] = None,
    motif: Annotated[
        int | None,
        typer.Option(
            "--motif",
            help="With --random: repeat a motif of this many positions, keys = query (structured inputs for --heatmap).",
            metavar="PERIOD",
        ),
    ] = None,
    shape: Annotated[
        list[str] | None,
        typer.Option("--shape", help="Reshape inputs (needed for raw .bin): DIMS for all, or ROLE=DIMS (q=8,2,16).", metavar="[ROLE=]DIMS"),
    ] = None,
    input_format: Annotated[str | None, typer.Option("--input-format", help="Input format when the extension does not tell.")] = None,
    output_format: Annotated[str | None, typer.Option("--output-format", help="Output format when the extension does not tell.")] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="Cast float inputs: float32 or float64.")] = None,
    heads: Annotated[int | None, typer.Option("--heads", help="Heads (mechanism option heads/num_heads).")] = None,
    dim: Annotated[int | None, typer.Option("--dim", help="Dimension (mechanism option dim/model_dim).")] = None,
    causal: Annotated[bool | None, typer.Option("--causal/--no-causal", help="Causal mask (bottom-right aligned).")] = None,
    block_size: Annotated[int | None, typer.Option("--block-size", help="Key block size of tiled kernels.")] = None,
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
        typer.Option("--weights", "-w", help="Load learned weights (attnkit/torch/HF layout) into the mechanism.", metavar="FILE"),
    ] = None,
    heatmap: Annotated[
        str | None,
        typer.Option("--heatmap", help="Draw the attention weights to this PNG (needs matplotlib).", metavar="FILE"),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print a JSON summary for scripts.")] = False,
    scheduler: Annotated[
        str | None,
        typer.Option("--scheduler", help="Run on Dask: 'local' (a cluster of processes here), a scheduler ADDRESS, or 'threads'.", metavar="ADDRESS"),
    ] = None,
    chunks: Annotated[
        str | None,
        typer.Option("--chunks", help="With --scheduler: chunk sizes of the inputs' leading axes, N[,N...] (e.g. 1,4096).", metavar="N[,N...]"),
    ] = None,
) -> None:
    """Run one mechanism on arrays from files (or random ones) and write the output.

    Every constructor option of the chosen mechanism is also accepted as a flag, e.g.
    `--num-neighbors 8` or `--aggregation frechet`; `attnkit mechanisms NAME` lists them.
    """
    from .compute import run_compute

    run_compute(
        STATE,
        ctx.args,
        type_=type_,
        inputs=inputs,
        query=query,
        keys=keys,
        values=values,
        mask=mask,
        random=random,
        output=output,
        motif=motif,
        shape=shape or [],
        input_format=input_format,
        output_format=output_format,
        dtype=dtype,
        common={
            "heads": heads,
            "dim": dim,
            "causal": causal,
            "block_size": block_size,
            "curvature": curvature,
            "feature_map": feature_map,
            "scale": scale,
        },
        seed=seed,
        opt=opt or [],
        weights=weights,
        heatmap=heatmap,
        as_json=json_,
        scheduler=scheduler,
        chunks=chunks,
    )


# `attnkit export` (ONNX) lives in its own module, with compute's option flags
from .export import register as _register_export  # noqa: E402

_register_export(app)


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def benchmark(
    types: Annotated[
        str,
        typer.Option("--types", "-t", help="Comma-separated mechanisms, or 'all'."),
    ] = "scaled-dot-product,multi-head,hyperbolic",
    dims: Annotated[str, typer.Option("--dims", "-d", help="Comma-separated dimensions (the dim/model_dim option).")] = "128,256,512",
    neighbors: Annotated[
        str,
        typer.Option("--neighbors", "--lengths", "-n", help="Comma-separated lengths (neighbours / sequence length)."),
    ] = "100,500,1000",
    iterations: Annotated[int, typer.Option("--iterations", help="Most timed runs per cell.")] = 1000,
    max_time: Annotated[float, typer.Option("--max-time", help="Seconds of timed runs per cell (stops earlier than --iterations).")] = 1.0,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed runs per cell.")] = 2,
    batch: Annotated[
        int | None,
        typer.Option("--batch", help="Sequences per forward (default: config optimization.batch_size, 1)."),
    ] = None,
    opt: Annotated[
        list[str] | None,
        typer.Option("--opt", "-O", help="Mechanism option KEY=VALUE for every type that has it.", metavar="KEY=VALUE"),
    ] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write results to .json or .csv.", metavar="FILE")] = None,
    plot: Annotated[str | None, typer.Option("--plot", help="Draw latency against length to this PNG.", metavar="FILE")] = None,
    compare: Annotated[str | None, typer.Option("--compare", help="Also time each mechanism on torch tensors ('torch').")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random inputs.")] = 0,
    json_: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
) -> None:
    """Time mechanisms over a grid of types x dims x lengths (defaults: the platform spec's grid)."""
    from .benchmark import run_benchmark

    run_benchmark(
        STATE,
        types=types,
        dims=dims,
        lengths=neighbors,
        iterations=iterations,
        max_time=max_time,
        warmup=warmup,
        batch=batch,
        opt=opt or [],
        output=output,
        plot=plot,
        compare=compare,
        seed=seed,
        as_json=json_,
    )


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def convert(
    source: Annotated[str, typer.Argument(help="Input file (FILE or FILE:KEY).", metavar="IN")],
    dest: Annotated[str, typer.Argument(help="Output file; format from the extension.", metavar="OUT")],
    from_: Annotated[str, typer.Option("--from", help="auto | tensors | torch-mha | hf-bert | attnkit")] = "auto",
    to: Annotated[str, typer.Option("--to", help="auto | tensors | torch-mha | hf-bert | attnkit (weights: default attnkit).")] = "auto",
    prefix: Annotated[str | None, typer.Option("--prefix", help="HF BERT key prefix (e.g. bert.encoder.layer.0.attention.).")] = None,
    unpacked: Annotated[bool, typer.Option("--unpacked", help="torch-mha output with separate q/k/v_proj_weight.")] = False,
    shape: Annotated[str | None, typer.Option("--shape", help="Shape of a raw input (or reshape any input).", metavar="DIMS")] = None,
    input_format: Annotated[str | None, typer.Option("--input-format", help="Input format when the extension does not tell.")] = None,
    output_format: Annotated[str | None, typer.Option("--output-format", help="Output format when the extension does not tell.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Convert tensors between npy/npz/safetensors/raw/JSON/CSV, or attention weights between
    torch nn.MultiheadAttention, Hugging Face BERT self-attention and attnkit's layout."""
    from .convert import run_convert

    run_convert(
        STATE,
        source,
        dest,
        from_=from_,
        to=to,
        prefix=prefix,
        unpacked=unpacked,
        shape=shape,
        input_format=input_format,
        output_format=output_format,
        as_json=json_,
    )


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def serve(
    host: Annotated[str | None, typer.Option("--host", help="Interface (default: config \\[server] host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", "-p", help="TCP port (default: config, 8080).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Worker processes (default: config, 1).")] = None,
    max_body_bytes: Annotated[int | None, typer.Option("--max-body-bytes", help="Largest request body (bytes).")] = None,
    max_batch_items: Annotated[
        int | None,
        typer.Option("--max-batch-items", "--max-batch-size", help="Most items in one batch request."),
    ] = None,
    request_timeout_s: Annotated[float | None, typer.Option("--timeout", help="Time limit of one computation (seconds).")] = None,
    max_concurrency: Annotated[int | None, typer.Option("--max-concurrency", help="Computations at once (0 = one per CPU).")] = None,
    queue: Annotated[int | None, typer.Option("--queue", help="Requests that may wait for a slot.")] = None,
    limit: Annotated[
        list[str] | None,
        typer.Option("--limit", "-L", help="Any server setting KEY=VALUE (repeatable).", metavar="KEY=VALUE"),
    ] = None,
    models: Annotated[
        str | None,
        typer.Option("--models", help="Model repository: a directory of NAME.toml (+ NAME.safetensors) loaded at start.", metavar="DIR"),
    ] = None,
    max_batch_delay_ms: Annotated[
        float | None,
        typer.Option("--max-batch-delay-ms", help="Dynamic batching: most a request waits for others while its model is busy (ms)."),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="One model NAME=TYPE[:weights.safetensors] (repeatable).", metavar="NAME=TYPE[:WEIGHTS]"),
    ] = None,
) -> None:
    """Start the HTTP server (needs the `server` extra). Stop it with Ctrl-C."""
    from .serve import run_serve

    run_serve(
        STATE,
        host=host,
        port=port,
        workers=workers,
        limits={
            "max_body_bytes": max_body_bytes,
            "max_batch_items": max_batch_items,
            "request_timeout_s": request_timeout_s,
            "max_concurrency": max_concurrency,
            "queue": queue,
            "models_dir": models,
            "max_batch_delay_ms": max_batch_delay_ms,
            "models": tuple(model) if model else None,
        },
        extra=limit or [],
    )


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def repl(
    type_: Annotated[str | None, typer.Option("--type", "-t", help="Create this mechanism at start.")] = None,
    history: Annotated[bool, typer.Option("--history/--no-history", help="Keep command history in the user state dir.")] = True,
) -> None:
    """Interactive session: create a mechanism, load or generate arrays, run, inspect, save. Type `help`."""
    from .repl import run_repl

    raise typer.Exit(run_repl(STATE, type_=type_, history=history))


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def info(
    json_: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    scheduler: Annotated[
        str | None, typer.Option("--scheduler", help="Also describe this Dask cluster ('local' or a scheduler ADDRESS).", metavar="ADDRESS")
    ] = None,
) -> None:
    """Version, Python, NumPy and its BLAS, SIMD, threads, optional backends, config file in use (and a Dask cluster)."""
    from .info import run_info

    run_info(STATE, as_json=json_, scheduler=scheduler)


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def mechanisms(
    name: Annotated[str | None, typer.Argument(help="Show the options of this mechanism.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """List the registered mechanisms, or the options of one."""
    from .info import run_mechanisms

    run_mechanisms(STATE, name, as_json=json_)


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def demo(
    length: Annotated[int, typer.Option("--length", "-n", help="Sequence length of the sample data.")] = 64,
    heatmap: Annotated[
        str | None,
        typer.Option("--heatmap", help="Where to draw the attention weights (default: attnkit-demo.png in the temp dir).", metavar="FILE"),
    ] = None,
    no_heatmap: Annotated[bool, typer.Option("--no-heatmap", help="Do not draw the heatmap.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sample data and weights.")] = 0,
    json_: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
) -> None:
    """Run every registered mechanism on built-in sample data, print a table, draw a heatmap."""
    from .demo import default_heatmap_path, run_demo

    where = None if no_heatmap else (heatmap or default_heatmap_path())
    raise typer.Exit(run_demo(STATE, length=length, heatmap=where, seed=seed, as_json=json_))


@config_app.command("show", context_settings={"help_option_names": ["-h", "--help"]})
def config_show(json_: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """Print the effective configuration and the file it came from."""
    from .config_cmd import run_show

    run_show(STATE, as_json=json_)


@config_app.command("init", context_settings={"help_option_names": ["-h", "--help"]})
def config_init(
    path: Annotated[str | None, typer.Argument(help="Where to write (default ./attnkit.toml).")] = None,
    user: Annotated[bool, typer.Option("--user", help="Write the user config file instead.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented config file with every key."""
    from .config_cmd import run_init

    run_init(STATE, path, user=user, force=force)
