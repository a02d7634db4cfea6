"""``attnkit convert``: the Typer shell of :func:`attnkit.cli.convert.run_convert`."""

from __future__ import annotations

from typing import Annotated

import typer

from .._common import STATE
from .._flags import CONTEXT, InputFormatFlag, JsonFlag, OutputFormatFlag

app = typer.Typer()

_KINDS = "auto | tensors | torch-mha | hf-bert | attnkit"


@app.command("convert", context_settings=CONTEXT)
def convert(
    source: Annotated[str, typer.Argument(help="Input file (FILE or FILE:KEY).", metavar="IN")],
    dest: Annotated[str, typer.Argument(help="Output file; format from the extension.", metavar="OUT")],
    from_: Annotated[
        str, typer.Option("--from", help=f"{_KINDS} (default: auto, weights if the keys are a known layout).", show_default=False)
    ] = "auto",
    to: Annotated[str, typer.Option("--to", help=f"{_KINDS} (default: auto, weights go to attnkit's layout).", show_default=False)] = "auto",
    prefix: Annotated[str | None, typer.Option("--prefix", help="HF layer key prefix (e.g. h.0.attn., model.layers.0.self_attn.).")] = None,
    unpacked: Annotated[bool, typer.Option("--unpacked", help="torch-mha output with separate q/k/v_proj_weight.")] = False,
    shape: Annotated[str | None, typer.Option("--shape", help="Shape of a raw input (or reshape any input).", metavar="DIMS")] = None,
    input_format: InputFormatFlag = None,
    output_format: OutputFormatFlag = None,
    json_: JsonFlag = False,
) -> None:
    """Convert tensors between npy/npz/safetensors/raw/JSON/CSV, or attention weights between
    torch nn.MultiheadAttention, Hugging Face BERT self-attention and attnkit's layout."""
    from .. import convert as impl

    impl.run_convert(
        STATE,
        impl.Conversion(source, dest, from_, to, prefix, unpacked),
        shape=shape,
        input_format=input_format,
        output_format=output_format,
        as_json=json_,
    )
