"""`finc benchmark layer|model|scaling`: thin wrappers over finc_cli.bench (torch imported lazily)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from finc_cli.cli.common import console, emit_json, handle_errors, parse_sets

__all__ = [
    "DType",
    "layer_cli",
    "model_cli",
    "register",
    "scaling_cli",
]

bench_app = typer.Typer(
    name="benchmark",
    help="Time FInC against Emerging, CInC and Glow: one layer, a preset's model, or scaling with n and k.",
    no_args_is_help=True,
)


class DType(str, Enum):
    float32 = "float32"
    float64 = "float64"


DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")]
DTypeOpt = Annotated[DType, typer.Option("--dtype", help="Floating point type.")]
ThreadsOpt = Annotated[int, typer.Option("--threads", min=1, help="torch.set_num_threads (CPU).")]
RepeatsOpt = Annotated[int, typer.Option("--repeats", min=1, help="Timed calls per variant.")]
WarmupOpt = Annotated[int, typer.Option("--warmup", min=0, help="Untimed calls per variant first.")]
JsonOpt = Annotated[bool, typer.Option("--json", help='Print one JSON object {"env":..., "rows":[...]}.')]
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
    threads: ThreadsOpt = 2,
    repeats: RepeatsOpt = 20,
    warmup: WarmupOpt = 2,
    json_out: JsonOpt = False,
    csv_path: CsvOpt = None,
) -> None:
    """Forward and inverse time of one invertible layer (FInC per inverse backend, Emerging, CInC, Glow 1×1)."""
    from finc_cli.bench.layer import LAYERS, layer_rows

    parsed = [_parse_shape(s) for s in shapes] if shapes else [(16, 12, 32, 32, 3)]
    rows = layer_rows(parsed, layers or LAYERS, backends, (dtype.value,), (device,), repeats, warmup, threads)
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
    no_glow: Annotated[bool, typer.Option("--no-glow", help="Skip the same-depth Glow model.")] = False,
    temperature: Annotated[float, typer.Option("--temperature", "-t", min=0.0, help="Sampling temperature.")] = 1.0,
    device: DeviceOpt = "cpu",
    dtype: DTypeOpt = DType.float32,
    threads: ThreadsOpt = 2,
    repeats: RepeatsOpt = 3,
    warmup: WarmupOpt = 1,
    json_out: JsonOpt = False,
    csv_path: CsvOpt = None,
) -> None:
    """FT (forward, bits/dim) and ST (sampling) of a preset's FInC model beside the same-depth Glow, and the paper's."""
    from finc_cli.bench.model import model_rows, paper_rows

    rows = model_rows(
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
        not no_glow,
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
    threads: ThreadsOpt = 2,
    repeats: Annotated[
        int, typer.Option("--repeats", min=1, help="Timed calls per measurement (fewer when slow).")
    ] = 5,
    warmup: WarmupOpt = 1,
    json_out: JsonOpt = False,
    csv_path: CsvOpt = None,
) -> None:
    """Inverse time against image size n and kernel size k per backend, with the fitted growth exponent."""
    from finc_cli.bench.scaling import fit_exponents, scaling_rows

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
