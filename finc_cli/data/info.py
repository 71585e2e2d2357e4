"""What is on disk for a dataset: its source files, its splits and their sizes, and the state of its prepared cache."""

from __future__ import annotations

from typing import Optional

from finc_cli.data.cache import check, resolve_cache_dir
from finc_cli.data.data_dir import resolve_data_dir
from finc_cli.data.datasets import SPLITS, dataset_info, label_files, read_split, source_files
from finc_cli.errors import DatasetError
from finc_cli.text import first_line

__all__ = ["data_info"]

# Counting these splits from their sources means reading gigabytes: only a prepared cache says.
_COUNTED_FROM_CACHE_ONLY = ("imagenet32", "imagenet64")


def data_info(name: str, data_dir=None, cache_dir=None, verify: bool = False) -> dict:
    """{dataset, shape, bins, data_dir, found, problem, cache_dir, splits: [{split, images, sources, cache, reason,
    labels}]}.

    `images` comes from a current cache, else from the sources when that is cheap, else None. `labels` is what a
    class-conditional run would find (`_labels_status`).
    `verify` recomputes every cache checksum and checks the size and modification time of every
    source file, even of a split with no current manifest; each row's `checked` counts them.
    """
    info = dataset_info(name)
    root = resolve_data_dir(data_dir)
    out = {
        "dataset": name,
        "shape": [info.channels, info.height, info.width],
        "bins": info.bins,
        "data_dir": str(root) if root else None,
        "found": True,
        "problem": None,
        "cache_dir": str(resolve_cache_dir(data_dir, cache_dir)),
        "splits": [],
    }
    for split in SPLITS:
        row = _split_row(name, split, data_dir, cache_dir, verify)
        if row.pop("problem", None) and out["found"]:
            out["found"], out["problem"] = False, row["sources_error"]
        out["splits"].append(row)
    return out


def _split_row(name: str, split: str, data_dir, cache_dir, verify: bool) -> dict:
    row: dict = {"split": split, "images": None, "sources": None, "sources_error": None}
    try:
        row["sources"] = len(source_files(name, split, data_dir))
    except DatasetError as exc:
        row.update(sources_error=str(exc), problem=True)
    status = check(name, split, data_dir, cache_dir, verify=verify)
    row.update(cache=status.state, reason=status.reason, cache_path=str(status.array))
    if verify:
        row["checked"] = status.checked
    if status.state == "current":
        row["images"] = status.info["shape"][0]
    elif row["sources"] and name not in _COUNTED_FROM_CACHE_ONLY:
        row["images"] = _count(name, split, data_dir)
    row["labels"] = _labels_status(name, split, data_dir, status)
    return row


def _labels_status(name: str, split: str, data_dir, status) -> str:
    """A current cache's labels record ("stored: 10 classes", "none: why"), else whether the source files hold
    labels ("in the source files", "none: why"); only file names are looked at, never their contents."""
    if status.state == "current":
        record = status.info.get("labels")
        if isinstance(record, dict):
            what = "classes" if record.get("kind") == "class" else "attributes"
            return f"stored: {record.get('num_classes')} {what}"
        return f"none: {status.info.get('labels_problem') or 'none were read'}"
    try:
        label_files(name, split, data_dir)
    except DatasetError as exc:
        return f"none: {first_line(exc)}"
    return "in the source files"


def _count(name: str, split: str, data_dir) -> Optional[int]:
    try:
        return len(read_split(name, split, data_dir))
    except DatasetError:
        return None
