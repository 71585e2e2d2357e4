"""`finc train`: a thin wrapper over finc_cli.train (torch imported lazily)."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from finc_cli.cli.common import emit_json, err_console, handle_errors, parse_sets, render_table
from finc_cli.cli.options import CacheDirOpt, DataDirOpt, DeviceOpt, JsonOpt, PresetOpt, QuietOpt, SetsOpt, ThreadsOpt

__all__ = ["Memory", "Precision", "register", "train_cli"]


class Precision(str, Enum):
    fp32 = "32"
    bf16 = "bf16"


class Memory(str, Enum):
    store = "store"
    checkpoint = "checkpoint"
    invert = "invert"


def register(app: typer.Typer) -> None:
    """Add `train` to the `finc` app."""
    app.command("train")(train_cli)


@handle_errors
def train_cli(
    preset: PresetOpt = "digits",
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Run directory (default runs/PRESET).")] = None,
    resume: Annotated[
        Optional[str], typer.Option("--resume", help="Run directory or checkpoint to continue, or 'auto'.")
    ] = None,
    start: Annotated[
        Optional[str],
        typer.Option("--from", help="With --resume: resume from this older checkpoint of the run (step-XXXXXXX.pt)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite a non-empty run directory.")] = False,
    sets: SetsOpt = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="train.steps")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="train.batch_size (global)")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="train.lr")] = None,
    device: DeviceOpt = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="train.seed")] = None,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    num_workers: Annotated[
        Optional[int], typer.Option("--num-workers", help="data.num_workers: batch-assembling processes.")
    ] = None,
    precision: Annotated[
        Optional[Precision], typer.Option("--precision", help="32 or bf16 (coupling nets under autocast)")
    ] = None,
    accumulate: Annotated[
        Optional[int], typer.Option("--accumulate", help="Gradient accumulation micro-batches.")
    ] = None,
    memory: Annotated[
        Optional[Memory],
        typer.Option(
            "--memory",
            help="train.memory: store (keep activations), checkpoint (recompute each step), "
            "invert (rebuild them by the exact inverse: memory flat in depth).",
        ),
    ] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    tensorboard: Annotated[
        bool, typer.Option("--tensorboard", help="train.tensorboard: also log to RUN_DIR/tensorboard.")
    ] = False,
    threads: ThreadsOpt = None,
) -> None:
    """Train a FInC Flow from a preset; writes config.yaml, metrics.jsonl, last.pt, best.pt, samples/."""
    from finc_cli.cli.progress import RichReporter
    from finc_cli.config import load_preset
    from finc_cli.train import TrainingInterrupted, train

    overrides = parse_sets(sets)
    flags = {
        "train.steps": steps,
        "train.batch_size": batch_size,
        "train.lr": lr,
        "train.device": device,
        "train.seed": seed,
        "data.data_dir": data_dir,
        "data.cache_dir": cache_dir,
        "data.num_workers": num_workers,
        "train.precision": precision.value if precision else None,
        "train.accumulate": accumulate,
        "train.memory": memory.value if memory else None,
        "train.tensorboard": True if tensorboard else None,
    }
    overrides.update({k: v for k, v in flags.items() if v is not None})
    cfg = load_preset(preset, overrides)
    run_dir = _run_dir(out, resume, cfg.name)
    reporter = RichReporter(enabled=not quiet and not json_out)
    try:
        summary = train(
            cfg,
            run_dir,
            resume=resume,
            force=force,
            overrides=overrides,
            reporter=reporter,
            start=start,
            threads=threads,
        )
    except TrainingInterrupted as exc:
        err_console.print(f"{exc}; continue with: finc train --resume {run_dir}", highlight=False, soft_wrap=True)
        raise typer.Exit(128 + exc.signum) from None  # 130 for SIGINT, 143 for SIGTERM: the shell convention
    if os.environ.get("RANK", "0") != "0":  # under torchrun only the main process reports
        return
    if json_out:
        emit_json(summary)
    else:
        render_table(f"finc train: {cfg.name}", summary)


def _run_dir(out: Optional[str], resume: Optional[str], name: str) -> Path:
    """--out, else the directory given to --resume (a run continues in place), else runs/NAME."""
    if out:
        return Path(out)
    if resume and resume != "auto":
        path = Path(resume)
        return path if path.is_dir() or not path.suffix else path.parent
    return Path("runs") / name
