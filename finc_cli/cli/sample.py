"""`finc sample`: a thin wrapper over finc_cli.commands.sample (torch imported lazily)."""

from __future__ import annotations

from typing import Annotated, Optional

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

__all__ = ["register", "sample_cli"]


def register(app: typer.Typer) -> None:
    """Add `sample` to the `finc` app."""
    app.command("sample")(sample_cli)


@handle_errors
def sample_cli(
    checkpoint: CheckpointArg,
    n: Annotated[
        Optional[int],
        typer.Option("-n", "--num", help="Number of samples (per temperature row with a list; default 64, 8 per row)."),
    ] = None,
    out: Annotated[
        str, typer.Option("--out", "-o", help="PNG grid path (a directory with --individual).")
    ] = "samples.png",
    temperature: Annotated[
        str,
        typer.Option(
            "--temperature", "-t", help="Prior temperature T >= 0, or a list (0,0.5,0.7,0.85,1): one labelled row each."
        ),
    ] = "1",
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed.")] = None,
    nrow: Annotated[Optional[int], typer.Option("--nrow", min=1, help="Images per grid row.")] = None,
    scale: ScaleOpt = None,
    class_: Annotated[
        Optional[str],
        typer.Option(
            "--class",
            help="Class-conditional models: sample this class (a number), or 'all' for one labelled row per class.",
        ),
    ] = None,
    individual: Annotated[
        bool, typer.Option("--individual", help="One PNG per sample in the --out directory.")
    ] = False,
    device: DeviceOpt = "auto",
    backend: BackendOpt = None,
    weights: WeightsOpt = Weights.auto,
    threads: ThreadsOpt = None,
    decode_precision: DecodePrecisionOpt = DecodePrecision.auto,
    json_out: JsonOpt = False,
) -> None:
    """Sample images and write a PNG grid (one labelled row per temperature); reports the sampling time."""
    from finc_cli.commands.sample import sample

    use_threads(threads)
    result = sample(
        checkpoint,
        n=n,
        out=out,
        temperature=temperature,
        seed=seed,
        nrow=nrow,
        individual=individual,
        device=device,
        backend=backend,
        weights=weights.value,
        decode_precision=decode_precision.value,
        scale=scale,
        class_=class_,
    )
    decode_notes(result, decode_precision.value)
    if json_out:
        emit_json(result)
        return
    temps = ",".join(f"{t:g}" for t in result["temperatures"])
    classes = result.get("classes")
    which = (
        ""
        if classes is None
        else f", class {classes[0]}"
        if len(classes) == 1
        else f", classes 0..{classes[-1]} by row"
    )
    console.print(
        f"wrote {result['n']} samples to {result['out']} in {result['sampling_seconds']:.3f} s "
        f"({1e3 * result['seconds_per_image']:.2f} ms/image, T={temps}{which}, seed {result['seed']}, "
        f"scale {result['scale']}x, {result['weights']} weights)",
        highlight=False,
    )
