"""`finc invert`: a thin wrapper over finc_cli.commands.invert (torch imported lazily)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from finc_cli.cli.common import console, decode_notes, emit_json, err_console, handle_errors, note, use_threads
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
    SplitOpt,
    ThreadsOpt,
    Weights,
    WeightsOpt,
)

__all__ = ["invert_cli", "register"]


def register(app: typer.Typer) -> None:
    """Add `invert` to the `finc` app."""
    app.command("invert")(invert_cli)


@handle_errors
def invert_cli(
    checkpoint: CheckpointArg,
    images: Annotated[
        Optional[list[str]], typer.Argument(help="Image files to encode (default: --split images).")
    ] = None,
    split: SplitOpt = Split.test,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Images taken from the split.")] = 256,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = "auto",
    backend: BackendOpt = None,
    save_latents: Annotated[Optional[str], typer.Option("--save-latents", help="Write the latents to FILE.")] = None,
    latents: Annotated[
        Optional[str], typer.Option("--latents", help="Decode latents from FILE instead of encoding.")
    ] = None,
    out: Annotated[
        Optional[str],
        typer.Option("--out", "-o", help="PNG grid: originals above their reconstructions (with --latents: decoded)."),
    ] = None,
    scale: ScaleOpt = None,
    threshold: Annotated[
        Optional[float], typer.Option("--threshold", help="Flag k×k convolutions whose error exceeds this.")
    ] = None,
    weights: WeightsOpt = Weights.auto,
    threads: ThreadsOpt = None,
    decode_precision: DecodePrecisionOpt = DecodePrecision.auto,
    json_out: JsonOpt = False,
) -> None:
    """Encode and decode exactly; report reconstruction error per k×k convolution (FInC, Emerging, CInC) and timings."""
    from finc_cli.cli.progress import progress_bars
    from finc_cli.commands.invert import invert

    use_threads(threads)
    with progress_bars("inverting", enabled=not json_out and not latents) as bars:
        result = invert(
            checkpoint,
            images=images,
            split=split.value,
            limit=limit,
            data_dir=data_dir,
            device=device,
            backend=backend,
            save_latents_to=save_latents,
            latents_from=latents,
            decoded_out=out,
            threshold=threshold,
            cache_dir=cache_dir,
            notify=note,
            weights=weights.value,
            decode_precision=decode_precision.value,
            progress=bars,
            scale=scale,
        )
    decode_notes(result, decode_precision.value)
    if json_out:
        emit_json(result)
    elif latents:
        console.print(
            f"decoded {result['n_images']} images in {result['decode_seconds']:.3f} s ({result['weights']} weights)",
            highlight=False,
        )
    else:
        _render(result)


def _render(result: dict) -> None:
    from rich.table import Table

    table = Table(title=f"per k×k convolution reconstruction error (flag > {result['threshold']:g})")
    for col in ("layer", "max abs err", "mean abs err", "flag"):
        table.add_column(col)
    for row in result["layers"]:
        table.add_row(
            row["layer"],
            f"{row['max_abs_err']:.2e}",
            f"{row['mean_abs_err']:.2e}",
            "[red]FLAG[/]" if row["flagged"] else "",
        )
    console.print(table)
    console.print(
        f"{result['n_images']} images ({result['source']}): exact={result['exact']}, "
        f"max error {result['max_abs_err']:.2e} levels, mean {result['mean_abs_err']:.2e}; "
        f"encode {result['encode_seconds']:.3f} s, decode {result['decode_seconds']:.3f} s; "
        f"worst unit {result['worst_layer']}; {result['weights']} weights",
        highlight=False,
    )
    if result["flagged_layers"]:
        err_console.print(
            f"warning: {len(result['flagged_layers'])} convolution(s) exceed the threshold", highlight=False
        )
