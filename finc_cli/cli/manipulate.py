"""`finc manipulate`: a thin wrapper over finc_cli.commands.manipulate (torch imported lazily)."""

from __future__ import annotations

from typing import Annotated

import typer

from finc_cli.cli.common import console, decode_notes, emit_json, handle_errors, use_threads
from finc_cli.cli.options import (
    BackendOpt,
    CheckpointArg,
    DecodePrecision,
    DecodePrecisionOpt,
    DeviceOpt,
    JsonOpt,
    ScaleOpt,
    ThreadsOpt,
    Weights,
    WeightsOpt,
)

__all__ = ["manipulate_cli", "register"]


def register(app: typer.Typer) -> None:
    """Add `manipulate` to the `finc` app."""
    app.command("manipulate")(manipulate_cli)


@handle_errors
def manipulate_cli(
    checkpoint: CheckpointArg,
    images: Annotated[list[str], typer.Argument(help="Image files, one strip row each (the model's size).")],
    attribute: Annotated[
        str, typer.Option("--attribute", "-a", help="The attribute or class to move along (a name in --directions).")
    ],
    directions: Annotated[
        str, typer.Option("--directions", "-d", help="Directions file written by `finc attributes` for this model.")
    ] = "directions.pt",
    alpha: Annotated[
        str, typer.Option("--alpha", help="Steps α along the direction, a comma list: one column each (z + α·d).")
    ] = "-1,0,1,2",
    out: Annotated[str, typer.Option("--out", "-o", help="PNG strip: one column per α, labelled.")] = (
        "manipulated.png"
    ),
    scale: ScaleOpt = None,
    device: DeviceOpt = "auto",
    backend: BackendOpt = None,
    weights: WeightsOpt = Weights.auto,
    threads: ThreadsOpt = None,
    decode_precision: DecodePrecisionOpt = DecodePrecision.auto,
    json_out: JsonOpt = False,
) -> None:
    """Move images along an attribute direction and decode exactly: the α = 0 column is the input, bit for bit."""
    from finc_cli.commands.manipulate import manipulate

    use_threads(threads)
    result = manipulate(
        checkpoint,
        images,
        directions=directions,
        attribute=attribute,
        alphas=alpha,
        out=out,
        scale=scale,
        device=device,
        backend=backend,
        weights=weights.value,
        decode_precision=decode_precision.value,
    )
    decode_notes(result, decode_precision.value)
    if json_out:
        emit_json(result)
        return
    alphas = ",".join(f"{a:g}" for a in result["alphas"])
    exact = "" if result["identity_exact"] is None else f"; α=0 exact: {result['identity_exact']}"
    console.print(
        f"wrote {len(result['images'])} × {len(result['alphas'])} frames ({result['attribute']}, α {alphas}) to "
        f"{result['out']} at {result['scale']}x{exact} ({result['weights']} weights)",
        highlight=False,
    )
