"""`finc interpolate`: a thin wrapper over finc_cli.commands.interpolate (torch imported lazily)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from finc_cli.cli.common import (
    DecodePrecision,
    Split,
    Weights,
    console,
    decode_notes,
    emit_json,
    err_console,
    handle_errors,
)

__all__ = ["interpolate_cli", "Mode", "register"]


class Mode(str, Enum):
    linear = "linear"
    spherical = "spherical"


def register(app: typer.Typer) -> None:
    """Add `interpolate` to the `finc` app."""
    app.command("interpolate")(interpolate_cli)


def _note(text: str) -> None:
    err_console.print(text, highlight=False, soft_wrap=True)


@handle_errors
def interpolate_cli(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint file.")],
    images: Annotated[Optional[list[str]], typer.Argument(help="Two images A and B (or none with --split).")] = None,
    out: Annotated[str, typer.Option("--out", "-o", help="PNG strip: one row of --steps frames per pair.")] = (
        "interpolation.png"
    ),
    steps: Annotated[int, typer.Option("--steps", help="Frames per pair, both ends included (>= 2).")] = 8,
    mode: Annotated[Mode, typer.Option("--mode", help="linear, or spherical (slerp) in every latent.")] = Mode.linear,
    split: Annotated[
        Optional[Split], typer.Option("--split", help="Take pairs from this split instead of image files.")
    ] = None,
    pairs: Annotated[int, typer.Option("--pairs", help="With --split: how many pairs (the first 2N images).")] = 4,
    scale: Annotated[
        Optional[int],
        typer.Option("--scale", min=1, help="Integer upscale, nearest neighbour (default: at least 512 px wide)."),
    ] = None,
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", help="Dataset root (else $FINC_DATA_DIR).")] = None,
    cache_dir: Annotated[Optional[str], typer.Option("--cache-dir", help="Prepared-data folder.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    backend: Annotated[Optional[str], typer.Option("--backend", help="FInC inverse backend.")] = None,
    weights: Annotated[Optional[Weights], typer.Option("--weights", help="ema or raw (default: ema if saved).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    decode_precision: Annotated[
        DecodePrecision,
        typer.Option("--decode-precision", help="auto (float64 where float32 is not exact), float32 or float64."),
    ] = DecodePrecision.auto,
) -> None:
    """Interpolate every latent between A and B and decode exactly: the strip's ends are A and B, bit for bit."""
    from finc_cli.commands.interpolate import interpolate

    result = interpolate(
        checkpoint,
        images,
        out,
        steps,
        mode.value,
        split.value if split else None,
        pairs if split else 1,
        scale,
        data_dir,
        cache_dir,
        device,
        backend,
        weights.value if weights else None,
        notify=_note,
        decode_precision=decode_precision.value,
    )
    decode_notes(result, decode_precision.value)
    if json_out:
        emit_json(result)
        return
    console.print(
        f"wrote {result['pairs']} × {result['steps']} frames ({result['mode']}) to {result['out']} "
        f"at {result['scale']}x; ends exact: {result['ends_exact']} ({result['source']})",
        highlight=False,
    )
