"""The `finc` Typer app: thin wrappers around finc_cli.train / evaluate / sample / invert / benchmark."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from finc_cli import __version__
from finc_cli.cli.common import (
    DecodePrecision,
    Split,
    Weights,
    console,
    decode_notes,
    emit_json,
    err_console,
    handle_errors,
    parse_sets,
    render_table,
    state,
)

__all__ = [
    "Device",
    "evaluate_cli",
    "EXIT_CODES",
    "invert_cli",
    "main",
    "Precision",
    "root",
    "sample_cli",
    "Split",
    "train_cli",
]

EXIT_CODES = (
    "Exit codes: 0 success; 1 the run failed while writing (disk full, permission denied), training "
    "diverged, or an internal error (a bug; --debug shows its traceback) - the previous files are intact; "
    "2 bad input (preset, config key or value, dataset, checkpoint, image, output path), one line on stderr, "
    "nothing written; 130 / 143 training "
    "stopped by SIGINT / SIGTERM after saving a resumable last.pt (continue with --resume)."
)

app = typer.Typer(
    name="finc",
    help="FInC Flow: train, evaluate, sample and invert normalizing flows with fast invertible k×k convolutions.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


WeightsOpt = Annotated[
    Optional[Weights],
    typer.Option("--weights", help="ema (the averaged weights) or raw; default: ema when the checkpoint has them."),
]


class Precision(str, Enum):
    fp32 = "32"
    bf16 = "bf16"


DeviceOpt = Annotated[Device, typer.Option("--device", help="Where to run.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]
BackendOpt = Annotated[
    Optional[str], typer.Option("--backend", help="FInC inverse backend: auto, wavefront, native, cupy, reference.")
]
ScaleOpt = Annotated[
    Optional[int],
    typer.Option("--scale", min=1, help="Integer upscale, nearest neighbour (default: a grid at least 512 px wide)."),
]
DecodePrecisionOpt = Annotated[
    DecodePrecision,
    typer.Option("--decode-precision", help="auto (float64 where float32 is not exact), float32 or float64."),
]
DataDirOpt = Annotated[Optional[str], typer.Option("--data-dir", help="Dataset root (else $FINC_DATA_DIR).")]
CacheDirOpt = Annotated[
    Optional[str],
    typer.Option("--cache-dir", help="Prepared-data folder (else $FINC_CACHE_DIR, else DATA_DIR/.finc_cache)."),
]


def _version(value: bool) -> None:
    if value:
        console.print(f"finc {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of an internal error (also FINC_DEBUG=1).")
    ] = False,
) -> None:
    """FInC Flow command line."""
    state["debug"] = debug


# ---------------------------------------------------------------------------------------------
# train


@app.command("train")
@handle_errors
def train_cli(
    preset: Annotated[
        str, typer.Option("--preset", "-p", help="Preset name (presets/NAME.yaml) or a YAML path.")
    ] = "digits",
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Run directory (default runs/PRESET).")] = None,
    resume: Annotated[
        Optional[str], typer.Option("--resume", help="Run directory or checkpoint to continue, or 'auto'.")
    ] = None,
    start: Annotated[
        Optional[str],
        typer.Option("--from", help="With --resume: resume from this older checkpoint of the run (step-XXXXXXX.pt)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite a non-empty run directory.")] = False,
    sets: Annotated[
        Optional[list[str]], typer.Option("--set", help="Override any key: section.key=value (repeatable).")
    ] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="train.steps")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="train.batch_size (global)")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="train.lr")] = None,
    device: Annotated[Optional[Device], typer.Option("--device", help="train.device")] = None,
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
    json_out: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    tensorboard: Annotated[
        bool, typer.Option("--tensorboard", help="train.tensorboard: also log to RUN_DIR/tensorboard.")
    ] = False,
) -> None:
    """Train a FInC Flow from a preset; writes config.yaml, metrics.jsonl, last.pt, best.pt, samples/."""

    from finc_cli.config import load_preset
    from finc_cli.train import TrainingInterrupted, train

    overrides = parse_sets(sets)
    flags = {
        "train.steps": steps,
        "train.batch_size": batch_size,
        "train.lr": lr,
        "train.device": device.value if device else None,
        "train.seed": seed,
        "data.data_dir": data_dir,
        "data.cache_dir": cache_dir,
        "data.num_workers": num_workers,
        "train.precision": precision.value if precision else None,
        "train.accumulate": accumulate,
        "train.tensorboard": True if tensorboard else None,
    }
    overrides.update({k: v for k, v in flags.items() if v is not None})
    cfg = load_preset(preset, overrides)
    run_dir = _run_dir(out, resume, cfg.name)
    from finc_cli.cli.progress import RichReporter

    reporter = RichReporter(enabled=not quiet and not json_out)
    try:
        summary = train(cfg, run_dir, resume=resume, force=force, overrides=overrides, reporter=reporter, start=start)
    except TrainingInterrupted as exc:
        err_console.print(f"{exc}; continue with: finc train --resume {run_dir}", highlight=False, soft_wrap=True)
        raise typer.Exit(128 + exc.signum) from None  # 130 for SIGINT, 143 for SIGTERM: the shell convention
    if not _is_main_process():
        return
    if json_out:
        emit_json(summary)
    else:
        render_table(f"finc train: {cfg.name}", summary)


def _run_dir(out: Optional[str], resume: Optional[str], name: str):
    """--out, else the directory given to --resume (a run continues in place), else runs/NAME."""
    from pathlib import Path

    if out:
        return Path(out)
    if resume and resume != "auto":
        path = Path(resume)
        return path if path.is_dir() or not path.suffix else path.parent
    return Path("runs") / name


def _note(text: str) -> None:
    """A one-line note about the data (a missing or unusable prepared cache), on stderr."""
    err_console.print(text, highlight=False, soft_wrap=True)


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


# ---------------------------------------------------------------------------------------------
# evaluate / bpd


@handle_errors
def evaluate_cli(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint file (e.g. runs/digits/best.pt).")],
    split: Annotated[Split, typer.Option("--split", help="Dataset split.")] = Split.test,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Evaluation batch size.")] = None,
    device: DeviceOpt = Device.auto,
    samples: Annotated[
        int,
        typer.Option(
            "--samples", "-k", help="Dequantization draws per image: K > 1 adds the importance-weighted bits/dim."
        ),
    ] = 1,
    weights: WeightsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Bits per dimension over a whole split, with its standard error."""
    from finc_cli.cli.progress import count_progress
    from finc_cli.commands.evaluate import evaluate

    result = evaluate(
        checkpoint,
        split.value,
        data_dir,
        batch_size,
        device.value,
        progress=None if json_out else count_progress("evaluating"),
        cache_dir=cache_dir,
        notify=_note,
        samples=samples,
        weights=weights.value if weights else None,
    )
    if json_out:
        emit_json(result)
    else:
        render_table(f"bits/dim on {result['dataset']} {result['split']}", result)
        console.print(
            f"{result['split']} bits/dim: {result['bpd']:.4f} ± {result['bpd_stderr']:.4f} "
            f"({result['n_images']} images)"
        )
        if "bpd_iw" in result:
            console.print(
                f"{result['split']} bits/dim, importance-weighted over {samples} draws: "
                f"{result['bpd_iw']:.4f} ± {result['bpd_iw_stderr']:.4f} (single-sample bound above)"
            )


app.command("evaluate")(evaluate_cli)
app.command("bpd", help="Alias of evaluate: bits per dimension over a split.")(evaluate_cli)


# ---------------------------------------------------------------------------------------------
# sample


@app.command("sample")
@handle_errors
def sample_cli(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint file.")],
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
    individual: Annotated[
        bool, typer.Option("--individual", help="One PNG per sample in the --out directory.")
    ] = False,
    device: DeviceOpt = Device.auto,
    backend: BackendOpt = None,
    weights: WeightsOpt = None,
    json_out: JsonOpt = False,
    decode_precision: DecodePrecisionOpt = DecodePrecision.auto,
) -> None:
    """Sample images and write a PNG grid (one labelled row per temperature); reports the sampling time."""
    from finc_cli.commands.sample import sample

    result = sample(
        checkpoint,
        n,
        out,
        temperature,
        seed,
        nrow,
        individual,
        device.value,
        backend,
        weights.value if weights else None,
        scale,
        decode_precision=decode_precision.value,
    )
    decode_notes(result, decode_precision.value)
    if json_out:
        emit_json(result)
    else:
        temps = ",".join(f"{t:g}" for t in result["temperatures"])
        console.print(
            f"wrote {result['n']} samples to {result['out']} in {result['sampling_seconds']:.3f} s "
            f"({1e3 * result['seconds_per_image']:.2f} ms/image, T={temps}, seed {result['seed']}, "
            f"scale {result['scale']}x)",
            highlight=False,
        )


# ---------------------------------------------------------------------------------------------
# invert


@app.command("invert")
@handle_errors
def invert_cli(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint file.")],
    images: Annotated[
        Optional[list[str]], typer.Argument(help="Image files to encode (default: --split images).")
    ] = None,
    split: Annotated[
        Split, typer.Option("--split", help="Split to take images from when none are given.")
    ] = Split.test,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Images taken from the split.")] = 256,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = Device.auto,
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
    weights: WeightsOpt = None,
    json_out: JsonOpt = False,
    decode_precision: DecodePrecisionOpt = DecodePrecision.auto,
) -> None:
    """Encode and decode exactly; report reconstruction error per k×k convolution (FInC, Emerging, CInC) and timings."""
    from finc_cli.cli.progress import progress_bars
    from finc_cli.commands.invert import invert

    with progress_bars("inverting", enabled=not json_out and not latents) as bars:
        result = invert(
            checkpoint,
            images,
            split.value,
            limit,
            data_dir,
            device.value,
            backend,
            save_latents,
            latents,
            out,
            threshold,
            cache_dir,
            _note,
            weights.value if weights else None,
            progress=bars,
            scale=scale,
            decode_precision=decode_precision.value,
        )
    decode_notes(result, decode_precision.value)
    if json_out:
        emit_json(result)
        return
    if latents:
        console.print(f"decoded {result['n_images']} images in {result['decode_seconds']:.3f} s", highlight=False)
        return
    _render_invert(result)


def _render_invert(result: dict) -> None:
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
        f"worst unit {result['worst_layer']}",
        highlight=False,
    )
    if result["flagged_layers"]:
        err_console.print(
            f"warning: {len(result['flagged_layers'])} convolution(s) exceed the threshold", highlight=False
        )


from finc_cli.cli.benchmark import register as _register_benchmark  # noqa: E402 (needs `app`)
from finc_cli.cli.compare import register as _register_compare  # noqa: E402 (needs `app`)
from finc_cli.cli.data import register as _register_data  # noqa: E402 (needs `app`)
from finc_cli.cli.interpolate import register as _register_interpolate  # noqa: E402 (needs `app`)
from finc_cli.cli.presets import register as _register_presets  # noqa: E402 (needs `app`)
from finc_cli.cli.report import register as _register_report  # noqa: E402 (needs `app`)

_register_benchmark(app)
_register_data(app)
_register_compare(app)
_register_interpolate(app)
_register_presets(app)
_register_report(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
