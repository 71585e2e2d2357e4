"""`finc compare`: a thin wrapper over finc_cli.commands.compare (torch imported lazily)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from finc_cli.cli.common import console, emit_json, err_console, handle_errors, note, parse_sets, use_threads
from finc_cli.cli.options import DeviceOpt, JsonOpt, PresetOpt, QuietOpt, ThreadsOpt

__all__ = ["compare_cli", "register"]


def register(app: typer.Typer) -> None:
    """Add `compare` to the `finc` app."""
    app.command("compare")(handle_errors(compare_cli))


def compare_cli(
    preset: PresetOpt = "digits",
    convs: Annotated[
        Optional[list[str]],
        typer.Option("--conv", help="Convolutions: finc, emerging, cinc, none (comma-separated or repeated)."),
    ] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Training steps of every variant (the budget).")] = 1500,
    out: Annotated[
        Optional[str], typer.Option("--out", "-o", help="Folder of the variant runs (default runs/compare-PRESET).")
    ] = None,
    sets: Annotated[
        Optional[list[str]], typer.Option("--set", help="Override for every variant: section.key=value (repeatable).")
    ] = None,
    seeds: Annotated[
        Optional[list[str]],
        typer.Option(
            "--seeds",
            help="Train every variant once per seed (comma-separated or repeated), in OUT/CONV/seed-S/; "
            "bits/dim is then the mean ± standard error over seeds.",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    timing_batch: Annotated[
        int, typer.Option("--timing-batch", min=1, help="Images per FT/ST call (the paper's: 100).")
    ] = 100,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed FT/ST calls per variant.")] = 3,
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train one model per convolution with the same seed, data order and steps; tabulate test bits/dim ± stderr,
    parameters, training images/s, FT, ST and reconstruction error. Rerun the same command to resume."""
    from pathlib import Path

    from finc_cli.cli.progress import RichReporter
    from finc_cli.commands.compare import compare, compare_markdown
    from finc_cli.config import load_preset
    from finc_cli.train import TrainingInterrupted

    timing_threads = use_threads(threads)  # the FT/ST timing; each training run picks its own without --threads
    chosen = convs or ["finc,emerging,cinc,none"]
    out_dir = Path(out) if out else Path("runs") / f"compare-{load_preset(preset).name}"

    try:
        result = compare(
            preset,
            convs=chosen,
            steps=steps,
            out_dir=out_dir,
            overrides=parse_sets(sets),
            device=device,
            timing={"batch": timing_batch, "repeats": repeats, "warmup": 1, "threads": timing_threads},
            reporter_for=lambda _conv: RichReporter(enabled=not quiet and not json_out),
            notify=note,
            seeds=seeds,
            threads=threads,
        )
    except TrainingInterrupted as exc:
        err_console.print(f"{exc}; rerun the same finc compare command to resume", highlight=False, soft_wrap=True)
        raise typer.Exit(128 + exc.signum) from None
    if json_out:
        emit_json(result)
    else:
        console.print(compare_markdown(result), highlight=False, markup=False, soft_wrap=True)
        console.print(f"written: {out_dir / 'compare.md'}, {out_dir / 'compare.json'}", highlight=False)
