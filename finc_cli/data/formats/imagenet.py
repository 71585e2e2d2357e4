"""Downsampled ImageNet 32×32 / 64×64 (Chrabaszcz et al. 2017): train_data_batch_1..10 and val_data, pickles or .npz."""

from __future__ import annotations

from itertools import chain
from pathlib import Path
from typing import Iterable

import numpy as np

from finc_cli.data.data_dir import first_file, not_found
from finc_cli.data.formats.batch_files import read_batch_images, read_batch_labels, to_rows, write_pickle
from finc_cli.data.labels import Labels, check_classes

__all__ = ["imagenet_files", "layout", "read_imagenet", "read_imagenet_labels", "write_imagenet"]

_FIX = "replace it with the file from image-net.org's Downsampled ImageNet"


def layout(root: Path | str, size: int) -> str:
    r, s = Path(root), size
    return (
        f"{r / f'Imagenet{s}_train'}/train_data_batch_1..10 and {r / f'Imagenet{s}_val'}/val_data "
        f"(or Imagenet{s}_train_npz/ + Imagenet{s}_val_npz/ with .npz files, or all in {r / f'imagenet{s}'}/)"
    )


def _folders(root: Path, size: int) -> list[tuple[Path, Path]]:
    """(train folder, val folder) pairs of each accepted layout, in order of preference."""
    pairs = [(root / f"Imagenet{size}_train{s}", root / f"Imagenet{size}_val{s}") for s in ("", "_npz")]
    return pairs + [(root / f"imagenet{size}",) * 2, (root, root)]


def _find_batch(folder: Path, name: str) -> Path | None:
    """A batch file `name` as .npz (preferred: no unpickling) or as a pickle."""
    return first_file(folder / f"{name}.npz", folder / name)


def _train_files(folder: Path) -> list[Path]:
    """train_data_batch_<k>[.npz] for k in 1..10, sorted numerically (k, not name: 10 after 9)."""
    found = [_find_batch(folder, f"train_data_batch_{k}") for k in range(1, 11)]
    return [p for p in found if p is not None]


def imagenet_files(root: Path, split: str, size: int) -> list[Path]:
    """The batch files of the official "train" split, or the val_data file ("test")."""
    for train_dir, val_dir in _folders(root, size):
        if split == "train":
            files = _train_files(train_dir)
        else:
            files = [f for f in [_find_batch(val_dir, "val_data")] if f is not None]
        if files:
            return files
    raise not_found(f"imagenet{size}", layout(root, size))


def read_imagenet(root: Path, split: str, size: int) -> list[np.ndarray]:
    return [read_batch_images(f, size) for f in imagenet_files(root, split, size)]


def read_imagenet_labels(root: Path, split: str, size: int) -> Labels:
    """The classes of the official split's batches: the files' `labels` 1..1000 as 0..999."""
    values = [check_classes(read_batch_labels(p, _FIX), 1, 1000, p, _FIX) for p in imagenet_files(root, split, size)]
    return Labels(np.concatenate(values) - 1, "class", 1000)


def write_imagenet(
    root: Path,
    size: int,
    train: Iterable[np.ndarray],
    val: np.ndarray,
    npz: bool = False,
    one_folder: bool = False,
    train_labels: Iterable[np.ndarray] | None = None,
    val_labels: np.ndarray | None = None,
) -> list[Path]:
    """uint8 (N, 3, S, S) batches `train` as train_data_batch_1, 2, … (at most 10) and `val` as val_data.

    `train` may be a generator: each batch is written before the next is asked for. Folders
    Imagenet{S}_train/ and Imagenet{S}_val/ (…_npz/ with `npz`), or imagenet{S}/ with `one_folder`.
    Pickles (protocol 4) hold "data", "labels" and, in training batches, "mean"; .npz files "data" and "labels".
    `train_labels` (one array per batch of `train`) and `val_labels` are classes 0..999, stored as
    the files do, 1..1000; without them every label is 1 (class 0).
    """
    root, suffix = Path(root), "_npz" if npz else ""
    train_dir = root / (f"imagenet{size}" if one_folder else f"Imagenet{size}_train{suffix}")
    val_dir = root / (f"imagenet{size}" if one_folder else f"Imagenet{size}_val{suffix}")
    train_classes = iter(train_labels) if train_labels is not None else None
    named = (
        (train_dir / f"train_data_batch_{k}", b, None if train_classes is None else next(train_classes))
        for k, b in enumerate(train, start=1)
    )
    batches = chain(named, [(val_dir / "val_data", val, val_labels)])
    return [_write_batch(path, images, npz, classes) for path, images, classes in batches]


def _write_batch(path: Path, images: np.ndarray, npz: bool, classes: np.ndarray | None = None) -> Path:
    rows = to_rows(images)
    labels = np.ones(len(images), dtype=np.int64) if classes is None else np.asarray(classes, dtype=np.int64) + 1
    assert len(labels) == len(images), (len(labels), len(images))
    if npz:
        path = path.with_name(path.name + ".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, data=rows, labels=labels)
        return path
    batch = {"data": rows, "labels": labels.tolist()}
    if path.name != "val_data":
        batch["mean"] = rows.mean(axis=0)
    return write_pickle(path, batch, protocol=4)
