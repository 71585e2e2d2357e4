"""`finc interpolate`: a thin wrapper over finc_cli.commands.interpolate (torch imported lazily)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from finc_cli.cli.common import console, decode_notes, emit_json, handle_errors, note, use_threads
from finc_cli.cli.options import (
    BackendOpt,
    CacheDirOpt,
    CheckpointArg,
    DataDirOpt,
    DecodePrecision,
    DecodePrecisionOpt,
    DeviceOpt,
    JsonOpt,
    ScaleOpt,
    Split,
    ThreadsOpt,
    Weights,
    WeightsOpt,
)

__all__ = ["interpolate_cli", "Mode", "register"]


class Mode(str, Enum):
    linear = "linear"
    spherical = "spherical"


def register(app: typer.Typer) -> None:
    """Add `interpolate` to the `finc` app."""
    app.command("interpolate")(interpolate_cli)


@handle_errors
def interpolate_cli(
    checkpoint: CheckpointArg,
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
    scale: ScaleOpt = None,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = "auto",
    backend: BackendOpt = None,
    weights: WeightsOpt = Weights.auto,
    threads: ThreadsOpt = None,
    decode_precision: DecodePrecisionOpt = DecodePrecision.auto,
    json_out: JsonOpt = False,
) -> None:
    """Interpolate every latent between A and B and decode exactly: the strip's ends are A and B, bit for bit."""
    from finc_cli.commands.interpolate import interpolate

    use_threads(threads)

    result = interpolate(
        checkpoint,
        images=images,
        out=out,
        steps=steps,
        mode=mode.value,
        split=split.value if split else None,
        pairs=pairs if split else 1,
        scale=scale,
        data_dir=data_dir,
        cache_dir=cache_dir,
        device=device,
        backend=backend,
        weights=weights.value,
        decode_precision=decode_precision.value,
        notify=note,
    )
    decode_notes(result, decode_precision.value)
    if json_out:
        emit_json(result)
        return
    console.print(
        f"wrote {result['pairs']} × {result['steps']} frames ({result['mode']}) to {result['out']} "
        f"at {result['scale']}x; ends exact: {result['ends_exact']} ({result['source']}; {result['weights']} weights)",
        highlight=False,
    )
