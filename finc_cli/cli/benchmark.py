"""`finc benchmark layer|model|scaling|data|threads|memory`: thin wrappers over finc_cli.bench (lazy torch)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from finc_cli.cli.common import console, emit_json, handle_errors, parse_sets, use_threads
from finc_cli.cli.options import DeviceOpt, JsonOpt, ThreadsOpt
from finc_cli.cli.progress import progress_bars
from finc_cli.text import comma_list

__all__ = [
    "conditioning_cli",
    "DType",
    "data_cli",
    "layer_cli",
    "memory_cli",
    "model_cli",
    "register",
    "scaling_cli",
    "threads_cli",
]

bench_app = typer.Typer(
    name="benchmark",
    help=(
        "Time FInC against Emerging, CInC and Glow: one layer, a preset's model, or scaling with n and k; "
        "the data pipeline of each dataset format; training runs side by side with a thread count each; "
        "and training memory per train.memory mode."
    ),
    no_args_is_help=True,
)


class DType(str, Enum):
    float32 = "float32"
    float64 = "float64"


DTypeOpt = Annotated[DType, typer.Option("--dtype", help="Floating point type.")]
RepeatsOpt = Annotated[int, typer.Option("--repeats", min=1, help="Timed calls per variant.")]
WarmupOpt = Annotated[int, typer.Option("--warmup", min=0, help="Untimed calls per variant first.")]
JsonRowsOpt = Annotated[bool, typer.Option("--json", help='Print one JSON object {"env":..., "rows":[...]}.')]
CsvOpt = Annotated[Optional[str], typer.Option("--csv", help="Also write the rows to this CSV file.")]
BackendsOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--backend", help="Inverse backend (repeatable): wavefront, native, paper, cupy; default all available."
    ),
]


def register(app: typer.Typer) -> None:
    """Add `benchmark` to the `finc` app."""
    app.add_typer(bench_app, name="benchmark")


def _parse_shape(text: str) -> tuple:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise typer.BadParameter(f"shape '{text}' must be five integers B,C,H,W,k, e.g. 16,12,32,32,3") from None
    if len(shape) != 5 or min(shape) < 1:
        raise typer.BadParameter(f"shape '{text}' must be five positive integers B,C,H,W,k, e.g. 16,12,32,32,3")
    return shape


def _output(env: dict, rows: list[dict], json_out: bool, csv_path: Optional[str], extra: Optional[dict] = None) -> bool:
    """Write the CSV; print JSON and return True when --json, else return False (render a table)."""
    if csv_path:
        from finc_cli.bench.tables import write_csv

        write_csv(rows, csv_path)
    if json_out:
        emit_json({"env": env, "rows": rows, **(extra or {})})
    return json_out


def _rich_table(title: str, columns: list, rows: list[dict]):
    from rich.table import Table

    from finc_cli.bench.tables import cells

    table = Table(title=title)
    for header, _, _ in columns:
        table.add_column(header, justify="right", overflow="fold")
    for row in rows:
        table.add_row(*cells(row, columns))
    return table


def _environment(rows: list[dict], device: str, threads: int, dtype: DType) -> dict:
    """Where the rows were measured: the device they ran on ("auto" resolved), else the one asked for."""
    from finc_cli.bench.timing import environment

    return environment(rows[0]["device"] if rows else device, threads, dtype.value)


def _print_env(env: dict) -> None:
    keys = ("device", "gpu", "cpu", "threads", "dtype", "torch", "cuda", "cupy")
    console.print(", ".join(f"{k}={env[k]}" for k in keys if env.get(k) is not None), highlight=False)


@bench_app.command("layer")
@handle_errors
def layer_cli(
    shapes: Annotated[Optional[list[str]], typer.Option("--shape", help="B,C,H,W,k (repeatable).")] = None,
    layers: Annotated[
        Optional[list[str]], typer.Option("--layer", help="finc, emerging, cinc, glow (repeatable).")
    ] = None,
    backends: BackendsOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DTypeOpt = DType.float32,
    threads: ThreadsOpt = None,
    repeats: RepeatsOpt = 20,
    warmup: WarmupOpt = 2,
    json_out: JsonRowsOpt = False,
    csv_path: CsvOpt = None,
) -> None:
    """Forward and inverse time of one invertible layer (FInC per inverse backend, Emerging, CInC, Glow 1×1)."""
    from finc_cli.bench.layer import LAYERS, layer_rows

    threads = use_threads(threads)

    parsed = [_parse_shape(s) for s in shapes] if shapes else [(16, 12, 32, 32, 3)]
    with progress_bars("benchmark layer", enabled=not json_out) as bars:
        rows = layer_rows(
            parsed,
            layers or LAYERS,
            backends,
            (dtype.value,),
            (device,),
            repeats,
            warmup,
            threads,
            progress=bars,
        )
    env = _environment(rows, device, threads, dtype)
    if not _output(env, rows, json_out, csv_path):
        _print_env(env)
        from finc_cli.bench.tables import COLUMNS

        console.print(_rich_table("finc benchmark layer (ms, median; inverse/forward)", COLUMNS["layer"], rows))


@bench_app.command("model")
@handle_errors
def model_cli(
    preset: Annotated[str, typer.Option("--preset", "-p", help="Preset whose architecture is timed.")] = "cifar10",
    batch_sizes: Annotated[
        Optional[list[int]], typer.Option("--batch-size", min=1, help="Images per call (repeatable).")
    ] = None,
    sets: Annotated[
        Optional[list[str]], typer.Option("--set", help="Override, e.g. model.steps=8 (repeatable).")
    ] = None,
    backends: Annotated[
        Optional[list[str]],
        typer.Option("--backend", help="FInC inverse backend for sampling (repeatable; default auto)."),
    ] = None,
    convs: Annotated[
        Optional[list[str]],
        typer.Option("--conv", help="Convolutions to time: finc, emerging, cinc, none (comma-separated or repeated)."),
    ] = None,
    no_glow: Annotated[bool, typer.Option("--no-glow", help="Skip the same-depth Glow model (conv none).")] = False,
    temperature: Annotated[float, typer.Option("--temperature", "-t", min=0.0, help="Sampling temperature.")] = 1.0,
    device: DeviceOpt = "cpu",
    dtype: DTypeOpt = DType.float32,
    threads: ThreadsOpt = None,
    repeats: RepeatsOpt = 3,
    warmup: WarmupOpt = 1,
    json_out: JsonRowsOpt = False,
    csv_path: CsvOpt = None,
) -> None:
    """FT (forward, bits/dim) and ST (sampling) of a preset's model per convolution (default FInC and Glow), and
    the paper's. Emerging and CInC invert in their published raster schedules; the `inverse` column says which."""
    from finc_cli.bench.model import ft_st_rows, paper_rows
    from finc_cli.config import parse_conv_list

    threads = use_threads(threads)

    chosen = [c for c in parse_conv_list(convs or ["finc,none"]) if not (no_glow and c == "none")]

    with progress_bars("benchmark model", enabled=not json_out) as bars:
        rows = ft_st_rows(
            preset,
            parse_sets(sets),
            batch_sizes or [100],
            backends or ["auto"],
            device,
            dtype.value,
            repeats,
            warmup,
            threads,
            temperature,
            chosen,
            progress=bars,
        )
    env = _environment(rows, device, threads, dtype)
    paper = paper_rows()
    if _output(env, rows, json_out, csv_path, {"paper": paper}):
        return
    from rich.columns import Columns

    from finc_cli.bench.tables import COLUMNS

    _print_env(env)
    measured = _rich_table(f"measured: {preset} (s per call, median)", COLUMNS["model"], rows)
    console.print(Columns([measured, _rich_table("the paper's table (s, 100 images)", COLUMNS["paper"], paper)]))


@bench_app.command("conditioning")
@handle_errors
def conditioning_cli(
    preset: Annotated[str, typer.Option("--preset", "-p", help="Architecture to perturb.")] = "celeba64",
    sizes: Annotated[Optional[list[int]], typer.Option("--size", "-n", min=2, help="Image size (repeatable).")] = None,
    rms: Annotated[
        Optional[list[float]], typer.Option("--tap-rms", min=0.0, help="FInC tap rms (repeatable); default init.")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Probe images.")] = 2,
    decode_cost: Annotated[
        Optional[list[str]], typer.Option("--decode-cost", help="Also time float64 decoding for these presets.")
    ] = None,
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Tap rms → FInC unit inverse gain → whole-model decode amplification and round trip (docs/inverse.md §11)."""
    from finc_cli.bench.conditioning import conditioning_rows, decode_cost_rows

    use_threads(threads)
    rows = conditioning_rows(preset, sizes or (32, 64), rms or (None,), batch_size)
    costs = decode_cost_rows(decode_cost) if decode_cost else []
    if json_out:
        emit_json({"rows": rows, "decode_cost": costs})
        return
    from rich.table import Table

    table = Table(title=f"conditioning of the composed inverse ({preset} architecture, {batch_size} random images)")
    for header in ("size", "tap rms", "unit gain med/max", "amplification f32", "wrong f32", "worst levels", "f64"):
        table.add_column(header, justify="right")
    for r in rows:
        table.add_row(
            str(r["size"]),
            f"{r['tap_rms']:.3f}",
            f"{r['unit_gain_median']:.2f} / {r['unit_gain_max']:.2f}",
            f"{r['amplification_f32']:.2g}",
            f"{100 * r['wrong_share_f32']:.1f}%",
            str(r["worst_levels_f32"]),
            "exact" if r["exact_f64"] else "NOT exact",
        )
    console.print(table)
    for c in costs:
        console.print(f"{c['preset']}: float64 decode {c['ratio']:.2f}× float32 (batch {c['batch']})", highlight=False)


@bench_app.command("scaling")
@handle_errors
def scaling_cli(
    sizes: Annotated[
        Optional[list[int]], typer.Option("--size", "-n", min=1, help="Image size n, n×n (repeatable).")
    ] = None,
    kernel_sizes: Annotated[
        Optional[list[int]], typer.Option("--kernel-size", "-k", min=1, help="k (repeatable).")
    ] = None,
    backends: Annotated[
        Optional[list[str]],
        typer.Option("--backend", help="wavefront, native, paper, cupy, emerging, cinc (repeatable); default all."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per call.")] = 1,
    channels: Annotated[int, typer.Option("--channels", min=4, help="Channels C (a multiple of 4).")] = 12,
    max_call_s: Annotated[
        float, typer.Option("--max-call-seconds", min=0.0, help="Stop growing n for a backend past this per call.")
    ] = 1.0,
    device: DeviceOpt = "cpu",
    dtype: DTypeOpt = DType.float32,
    threads: ThreadsOpt = None,
    repeats: Annotated[
        int, typer.Option("--repeats", min=1, help="Timed calls per measurement (fewer when slow).")
    ] = 5,
    warmup: WarmupOpt = 1,
    json_out: JsonRowsOpt = False,
    csv_path: CsvOpt = None,
) -> None:
    """Inverse time against image size n and kernel size k per backend, with the fitted growth exponent."""
    from finc_cli.bench.scaling import fit_exponents, scaling_rows

    threads = use_threads(threads)

    with progress_bars("benchmark scaling", enabled=not json_out) as bars:
        rows = scaling_rows(
            sizes or (8, 16, 32, 64, 128),
            kernel_sizes or (2, 3, 5, 7),
            backends,
            batch_size,
            channels,
            device,
            dtype.value,
            repeats,
            warmup,
            threads,
            max_call_s=max_call_s,
            progress=bars,
        )
    fits = fit_exponents(rows)
    env = _environment(rows, device, threads, dtype)
    if _output(env, rows, json_out, csv_path, {"fits": fits}):
        return
    from finc_cli.bench.tables import scaling_columns, scaling_pivot

    _print_env(env)
    pivot, ns = scaling_pivot(rows, fits)
    title = "finc benchmark scaling (inverse ms, median; exponent e of time ∝ nᵉ)"
    console.print(_rich_table(title, scaling_columns(ns), pivot))


@bench_app.command("data")
@handle_errors
def data_cli(
    root: Annotated[
        Optional[str],
        typer.Option("--root", help="Scratch folder for the synthetic datasets (kept for reruns); default TMPDIR."),
    ] = None,
    formats: Annotated[
        Optional[list[str]],
        typer.Option(
            "--formats", help="digits, mnist, cifar10, imagenet64, celeba64 (repeatable or a,b); default all."
        ),
    ] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Timed batches per measurement.")] = 50,
    warmup: Annotated[int, typer.Option("--warmup", min=1, help="Batches before timing, the first one included.")] = 5,
    batch_size: Annotated[
        Optional[int], typer.Option("--batch-size", min=1, help="Images per batch (default: each preset's).")
    ] = None,
    workers: Annotated[
        Optional[list[int]], typer.Option("--workers", min=0, help="data.num_workers to time (repeatable; 0 and 2).")
    ] = None,
    hflip: Annotated[
        Optional[bool], typer.Option("--hflip/--no-hflip", help="Random flips (default: each preset's).")
    ] = None,
    noise: Annotated[
        Optional[list[str]],
        typer.Option(
            "--noise",
            help="Where the dequantization noise is drawn (repeatable): cpu (in the data path, as CPU training) "
            "or device (by the step, as GPU training: batches carry uint8 only). Default: both.",
        ),
    ] = None,
    translate: Annotated[
        Optional[int], typer.Option("--translate", min=0, help="Random translation, pixels (default: the preset's).")
    ] = None,
    sources: Annotated[bool, typer.Option("--sources/--no-sources", help="Time reading the source files.")] = True,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Time reading the prepared cache.")] = True,
    imagenet_images: Annotated[
        int, typer.Option("--imagenet-images", min=10, help="Training images of the ImageNet64-format set.")
    ] = 100_000,
    celeba_images: Annotated[
        int, typer.Option("--celeba-images", min=10, help="Training JPEGs of the CelebA-format set.")
    ] = 162_770,
    pss: Annotated[
        bool,
        typer.Option("--pss/--no-pss", help="Memory (Pss) of 2 processes reading the ImageNet64 set (when timed)."),
    ] = True,
    train: Annotated[
        bool,
        typer.Option("--train/--no-train", help="Data share of celeba64 training steps, a small model (when timed)."),
    ] = True,
    train_steps: Annotated[int, typer.Option("--train-steps", min=2, help="Steps of each training run.")] = 30,
    check_files: Annotated[
        int,
        typer.Option(
            "--check-files",
            min=0,
            help="Time the prepared cache's check of this many CelebA-format source files (0: skip; "
            "when celeba64 is timed).",
        ),
    ] = 202_599,
    repeats: Annotated[
        int, typer.Option("--repeats", min=1, help="Fresh processes per measurement, round-robin; medians reported.")
    ] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the batches.")] = 0,
    threads: ThreadsOpt = None,
    json_out: JsonRowsOpt = False,
    csv_path: CsvOpt = None,
) -> None:
    """Images/s, time to the first batch and peak memory of each dataset format, from its sources and prepared."""
    from pathlib import Path

    from finc_cli.bench import data as bench

    threads = use_threads(threads)

    chosen = comma_list(formats or []) or list(bench.FORMATS)
    unknown = [f for f in chosen if f not in bench.FORMATS]
    if unknown:
        raise typer.BadParameter(f"unknown format {unknown[0]!r}; choose from {', '.join(bench.FORMATS)}")
    noise_list = comma_list(noise or []) or list(bench.NOISE)
    bad = [n for n in noise_list if n not in bench.NOISE]
    if bad:
        raise typer.BadParameter(f"unknown --noise {bad[0]!r}; choose from {', '.join(bench.NOISE)}")
    folder = Path(root) if root else bench.DEFAULT_ROOT
    with progress_bars("benchmark data", enabled=not json_out) as bars:
        rows = bench.data_rows(
            chosen,
            folder,
            steps=steps,
            warmup=warmup,
            batch_size=batch_size,
            workers_list=workers or [0, 2],
            sources=sources,
            cache=cache,
            seed=seed,
            images={"imagenet64": imagenet_images, "celeba64": celeba_images},
            hflip=hflip,
            translate=translate,
            repeats=repeats,
            noise_list=noise_list,
            progress=bars,
        )
    extra = {
        "pss": bench.pss_rows(folder, imagenet_images) if pss and "imagenet64" in chosen else [],
        "train": bench.data_wait_rows(folder, celeba_images, train_steps, seed=seed)
        if train and "celeba64" in chosen
        else [],
        "source_check": bench.source_check_rows(folder, repeats, check_files)
        if check_files and "celeba64" in chosen
        else [],
    }
    env = _environment([], "cpu", threads, DType.float32)
    if not _output(env, rows, json_out, csv_path, extra):
        _print_data_tables(env, rows, extra)


def _print_data_tables(env: dict, rows: list[dict], extra: dict) -> None:
    from finc_cli.bench.tables import COLUMNS

    _print_env(env)
    console.print(_rich_table("finc benchmark data (warm page cache)", COLUMNS["data"], rows))
    if extra["pss"]:
        console.print(
            _rich_table("2 processes reading the whole ImageNet64 set (Pss)", COLUMNS["data_pss"], extra["pss"])
        )
    if extra["train"]:
        console.print(_rich_table("celeba64 training: waiting for data", COLUMNS["data_train"], extra["train"]))
    if extra["source_check"]:
        title = "the prepared cache's check of its sources (size and time of every file)"
        console.print(_rich_table(title, COLUMNS["data_check"], extra["source_check"]))


@bench_app.command("threads")
@handle_errors
def threads_cli(
    preset: Annotated[str, typer.Option("--preset", "-p", help="Preset each run trains.")] = "digits",
    steps: Annotated[int, typer.Option("--steps", min=2, help="Training steps of each run.")] = 200,
    jobs: Annotated[str, typer.Option("--jobs", help="Runs at once, comma-separated.")] = "1,2",
    threads: Annotated[
        str, typer.Option("--threads", help="Threads of each run, comma-separated; 'default': finc's choice.")
    ] = "1,2,default",
    sets: Annotated[
        Optional[list[str]], typer.Option("--set", help="Override for every run, e.g. train.batch_size=256.")
    ] = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Rounds over the grid; medians reported.")] = 1,
    json_out: JsonRowsOpt = False,
    csv_path: CsvOpt = None,
) -> None:
    """Steps/s of `finc train` runs launched side by side (--jobs) with --threads each, and combined."""
    from finc_cli.bench.threads import parse_counts, thread_rows

    jobs_list, threads_list = parse_counts(jobs, "--jobs"), parse_counts(threads, "--threads", allow_default=True)
    with progress_bars("benchmark threads", enabled=not json_out) as bars:
        rows = thread_rows(preset, steps, jobs_list, threads_list, sets or [], repeats, progress=bars)
    env = _environment([], "cpu", 0, DType.float32)
    env["load_avg"] = rows[0]["load_avg"] if rows else None
    if _output(env, rows, json_out, csv_path):
        return
    from finc_cli.bench.tables import COLUMNS

    _print_env(env)
    title = f"finc benchmark threads: {preset}, {steps} steps, median steps/s (load {env['load_avg']:.2f})"
    console.print(_rich_table(title, COLUMNS["threads"], rows))


@bench_app.command("memory")
@handle_errors
def memory_cli(
    preset: Annotated[str, typer.Option("--preset", "-p", help="Preset whose model trains one step.")] = "cifar10",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images in the measured step.")] = 32,
    memory: Annotated[
        str, typer.Option("--memory", help="train.memory modes, comma-separated: store, checkpoint, invert.")
    ] = "store,checkpoint,invert",
    steps_per_level: Annotated[
        Optional[str],
        typer.Option(
            "--steps-per-level", help="model.steps values, comma-separated, e.g. 8,16,32 (default: the preset's)."
        ),
    ] = None,
    budget_gb: Annotated[
        Optional[float],
        typer.Option(
            "--budget-gb", min=0.0, help="Also find the largest batch within this memory (GB), at the last K."
        ),
    ] = None,
    max_batch: Annotated[
        Optional[int], typer.Option("--max-batch", min=1, help="Confirm the budget batch at most at this batch.")
    ] = None,
    rounds: Annotated[
        int, typer.Option("--rounds", min=0, help="Interleaved timing rounds (median); 0: memory only.")
    ] = 2,
    sets: Annotated[
        Optional[list[str]], typer.Option("--set", help="Override, e.g. model.hidden=256 (repeatable).")
    ] = None,
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
    json_out: JsonRowsOpt = False,
    csv_path: CsvOpt = None,
) -> None:
    """Peak memory above the model and optimizer state, step time ÷ store's, and the largest batch within a budget,
    for one training step per train.memory mode (docs/training.md §18)."""
    from finc_cli.bench.memory import MEMORY_COLUMNS, memory_rows, parse_modes
    from finc_cli.cli.common import err_console
    from finc_cli.config import load_preset
    from finc_cli.errors import InputError

    threads = use_threads(threads)
    try:
        modes = parse_modes(memory)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    try:
        ks = [int(k) for k in comma_list(steps_per_level)] if steps_per_level else None
    except ValueError:
        raise InputError(f"--steps-per-level '{steps_per_level}' must be integers, e.g. 8,16,32") from None
    if ks is not None and (not ks or min(ks) < 1):
        raise InputError("--steps-per-level values must be integers >= 1, e.g. 8,16,32")
    overrides = parse_sets(sets)
    load_preset(preset, overrides)  # an unknown preset or override fails here, in one line
    say = None if json_out else (lambda text: err_console.print(f"[dim]{text}[/dim]"))
    rows = memory_rows(
        preset, batch_size, modes, ks, budget_gb, rounds, max_batch, device, overrides, progress=say, threads=threads
    )
    env = _environment([], device, threads, DType.float32)
    env["budget_gb"] = budget_gb
    if _output(env, rows, json_out, csv_path):
        return
    _print_env(env)
    title = f"finc benchmark memory: {preset}, batch {batch_size}, one training step"
    console.print(_rich_table(title, MEMORY_COLUMNS, rows))
