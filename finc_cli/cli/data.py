"""`finc data download|prepare|info`: thin wrappers over finc_cli.data (torch imported lazily)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from finc_cli.cli.common import console, emit_json, handle_errors, render_table
from finc_cli.cli.options import CacheDirOpt, DataDirOpt, JsonOpt

__all__ = ["download_cli", "info_cli", "prepare_cli", "register"]

data_app = typer.Typer(
    name="data",
    help="Datasets: download (where allowed), prepare a memory-mapped cache, and show what is found.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add `data` to the `finc` app."""
    app.add_typer(data_app, name="data")


@data_app.command("download")
@handle_errors
def download_cli(
    dataset: Annotated[str, typer.Argument(help="mnist, cifar10 or celeba64 (ImageNet needs a login).")],
    data_dir: DataDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Download a dataset into the layout finc reads, checking its checksums."""
    from finc_cli.data.download import download

    result = download(dataset, data_dir)
    if json_out:
        emit_json(result)
    else:
        render_table(f"finc data download: {result['dataset']}", result)


@data_app.command("prepare")
@handle_errors
def prepare_cli(
    dataset: Annotated[str, typer.Argument(help="Dataset or preset name (e.g. celeba64, imagenet64, cifar10).")],
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    split: Annotated[
        Optional[list[str]], typer.Option("--split", help="Split to prepare (repeatable; default all).")
    ] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Decoding processes (CelebA).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rewrite splits that are already current.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Convert each split once into a memory-mapped uint8 array with a manifest; later commands map it."""
    from finc_cli.cli.progress import count_progress
    from finc_cli.data.cache import prepare

    name, data_dir = _dataset_of(dataset, data_dir)
    progress = None if json_out else (lambda what, total: count_progress(f"prepare {what}")(total))
    result = prepare(name, data_dir, cache_dir, tuple(split) if split else _splits(), force, workers, progress)
    if json_out:
        emit_json(result)
        return
    for row in result["splits"]:
        done = f"wrote {row['shape']} in {row['seconds']:.1f} s" if row["written"] else "already current"
        labels = "labels stored" if row.get("labels") else f"no labels ({row.get('labels_problem') or 'none read'})"
        console.print(f"{result['dataset']}/{row['split']}: {done}, {labels} -> {row['path']}", highlight=False)


@data_app.command("info")
@handle_errors
def info_cli(
    dataset: Annotated[str, typer.Argument(help="Dataset or preset name.")],
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    verify: Annotated[
        bool,
        typer.Option("--verify", help="Recompute every prepared split's checksum; stat every source file."),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """What was found: the source files, the splits and their sizes, and whether a prepared cache is current."""
    from rich.table import Table

    from finc_cli.data.info import data_info

    name, data_dir = _dataset_of(dataset, data_dir)
    result = data_info(name, data_dir, cache_dir, verify)
    if json_out:
        emit_json(result)
        return
    c, h, w = result["shape"]
    where = result["data_dir"] or "no data directory"
    console.print(f"{name}: {c}×{h}×{w}, {result['bins']} levels; data {where}; cache {result['cache_dir']}")
    if result["problem"]:
        console.print(f"[red]not found:[/] {result['problem']}", highlight=False)
    table = Table("split", "images", "source files", "prepared cache", "why", "labels")
    for row in result["splits"]:
        images = "?" if row["images"] is None else str(row["images"])
        table.add_row(row["split"], images, str(row["sources"] or "–"), row["cache"], row["reason"], row["labels"])
    console.print(table)
    if verify:
        counts = ", ".join(f"{row['split']} {row['checked']}" for row in result["splits"])
        console.print(f"verified: size and modification time of every source file ({counts})", highlight=False)


def _splits() -> tuple:
    from finc_cli.data.datasets import SPLITS

    return SPLITS


def _dataset_of(name: str, data_dir: Optional[str]) -> tuple[str, Optional[str]]:
    """A dataset name as given, or a preset's dataset (and its data_dir when none is given)."""
    from finc_cli.data.datasets import DATASETS

    if name in DATASETS:
        return name, data_dir
    from finc_cli.config import list_presets, load_preset

    if name in list_presets() or name.endswith((".yaml", ".yml")):
        cfg = load_preset(name)
        return cfg.data.name, data_dir or cfg.data.data_dir
    from finc_cli.errors import DatasetError

    raise DatasetError(f"unknown dataset or preset {name!r}; datasets: {', '.join(DATASETS)}")
