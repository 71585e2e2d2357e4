"""The Typer options that several `finc` commands share, each defined once."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

__all__ = [
    "BackendOpt",
    "CacheDirOpt",
    "CheckpointArg",
    "DataDirOpt",
    "DecodePrecision",
    "DecodePrecisionOpt",
    "DeviceOpt",
    "JsonOpt",
    "PresetOpt",
    "QuietOpt",
    "ScaleOpt",
    "SetsOpt",
    "Split",
    "SplitOpt",
    "ThreadsOpt",
    "Weights",
    "WEIGHTS_HELP",
    "WeightsOpt",
]


class Split(str, Enum):
    """A dataset split, as the commands' --split options take it."""

    train = "train"
    val = "val"
    test = "test"


class DecodePrecision(str, Enum):
    """Precision of the inverse (docs/inverse.md §11): auto is float64 where the own round trip is not trusted."""

    auto = "auto"
    float32 = "float32"
    float64 = "float64"


DecodePrecisionOpt = Annotated[
    DecodePrecision,
    typer.Option("--decode-precision", help="auto (float64 where float32 is not exact), float32 or float64."),
]


class Weights(str, Enum):
    """Which weights of a checkpoint a command uses: the run's choice, the EMA average or the raw ones."""

    auto = "auto"
    ema = "ema"
    raw = "raw"


WEIGHTS_HELP = (
    "auto: the weights that scored lower at the run's latest validation (older checkpoints: ema when saved); "
    "ema: the averaged weights; raw: the optimizer's."
)

CheckpointArg = Annotated[str, typer.Argument(help="Checkpoint file (e.g. runs/digits/best.pt).")]
PresetOpt = Annotated[str, typer.Option("--preset", "-p", help="Preset name (presets/NAME.yaml) or a YAML path.")]
SetsOpt = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override any key: section.key=value (repeatable).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
# A string, not a choice: resolve_device checks it, so cuda:N works wherever a device is asked for.
DeviceOpt = Annotated[str, typer.Option("--device", help="Where to run: auto, cpu, cuda or cuda:N.")]
ThreadsOpt = Annotated[
    Optional[int],
    typer.Option(
        "--threads",
        min=1,
        help="CPU threads (torch.set_num_threads); else $FINC_THREADS, else a set $OMP_NUM_THREADS, else finc's "
        "default (one for a small model's training, else all cores).",
    ),
]
WeightsOpt = Annotated[Weights, typer.Option("--weights", help=WEIGHTS_HELP)]
SplitOpt = Annotated[Split, typer.Option("--split", help="Dataset split (of the checkpoint's dataset).")]
DataDirOpt = Annotated[Optional[str], typer.Option("--data-dir", help="Dataset root (else $FINC_DATA_DIR).")]
CacheDirOpt = Annotated[
    Optional[str],
    typer.Option("--cache-dir", help="Prepared-data folder (else $FINC_CACHE_DIR, else DATA_DIR/.finc_cache)."),
]
BackendOpt = Annotated[
    Optional[str], typer.Option("--backend", help="FInC inverse backend: auto, wavefront, native, cupy, reference.")
]
ScaleOpt = Annotated[
    Optional[int],
    typer.Option("--scale", min=1, help="Integer upscale, nearest neighbour (default: a grid at least 512 px wide)."),
]
