"""`finc attributes`: a thin wrapper over finc_cli.commands.attributes (torch imported lazily)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from finc_cli.cli.common import console, emit_json, handle_errors, note, use_threads
from finc_cli.cli.options import (
    CacheDirOpt,
    CheckpointArg,
    DataDirOpt,
    DeviceOpt,
    JsonOpt,
    Split,
    SplitOpt,
    ThreadsOpt,
    Weights,
    WeightsOpt,
)

__all__ = ["attributes_cli", "register"]


def register(app: typer.Typer) -> None:
    """Add `attributes` to the `finc` app."""
    app.command("attributes")(attributes_cli)


@handle_errors
def attributes_cli(
    checkpoint: CheckpointArg,
    split: SplitOpt = Split.train,
    out: Annotated[str, typer.Option("--out", "-o", help="File the directions are written to (torch.save).")] = (
        "directions.pt"
    ),
    attribute: Annotated[
        Optional[list[str]],
        typer.Option(
            "--attribute",
            "-a",
            help="Attribute (CelebA: Smiling, …) or class (name or index) to keep; repeatable or a comma list. "
            "Default: every one.",
        ),
    ] = None,
    limit: Annotated[
        Optional[int], typer.Option("--limit", min=1, help="Encode only the first N images of the split.")
    ] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option("--batch-size", min=1, help="Images encoded at once (default train.eval_batch_size)."),
    ] = None,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = "auto",
    weights: WeightsOpt = Weights.auto,
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """One latent direction per attribute or class: mean latent of the images with it minus that of those without."""
    from finc_cli.cli.progress import progress_bars
    from finc_cli.commands.attributes import attributes

    use_threads(threads)
    with progress_bars("encoding", enabled=not json_out) as bars:
        result = attributes(
            checkpoint,
            out=out,
            split=split.value,
            names=attribute,
            limit=limit,
            batch_size=batch_size,
            data_dir=data_dir,
            cache_dir=cache_dir,
            device=device,
            weights=weights.value,
            notify=note,
            progress=bars,
        )
    if json_out:
        emit_json(result)
        return
    strongest = sorted(result["directions"], key=lambda r: -r["norm"])[:5]
    console.print(
        f"wrote {len(result['directions'])} directions ({result['kind']}) to {result['out']} from "
        f"{result['n_images']} images of {result['dataset']}/{result['split']} ({result['weights']} weights); "
        "longest: " + ", ".join(f"{r['name']} {r['norm']:.3g}" for r in strongest),
        highlight=False,
    )
