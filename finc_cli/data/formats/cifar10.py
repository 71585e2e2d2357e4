"""CIFAR-10, python version: cifar-10-batches-py/data_batch_1..5 and test_batch, pickled RGB rows and labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from finc_cli.data.data_dir import not_found
from finc_cli.data.formats.batch_files import read_batch_images, read_batch_labels, to_rows, write_py2_pickle
from finc_cli.data.labels import Labels, check_classes
from finc_cli.data.safe_pickle import load_pickle
from finc_cli.errors import DatasetError

__all__ = [
    "META",
    "cifar10_files",
    "cifar10_label_files",
    "layout",
    "read_cifar10",
    "read_cifar10_labels",
    "write_cifar10",
]

_FOLDER = "cifar-10-batches-py"
META = "batches.meta"  # optional: b"label_names", the ten class names
_FIX = "replace it with the file of the CIFAR-10 python version (`finc data download cifar10` into an empty folder)"


def layout(root: Path | str) -> str:
    return f"{Path(root) / _FOLDER}/data_batch_1..5 and test_batch (the python version from the CIFAR-10 site)"


def _names(split: str) -> list[str]:
    return [f"data_batch_{k}" for k in range(1, 6)] if split == "train" else ["test_batch"]


def cifar10_files(root: Path, split: str) -> list[Path]:
    """The batch files of the official "train" or "test" split."""
    names = _names(split)
    for folder in (root / _FOLDER, root):
        if all((folder / n).is_file() for n in names):
            return [folder / n for n in names]
    raise not_found("cifar10", layout(root))


def read_cifar10(root: Path, split: str) -> list[np.ndarray]:
    return [read_batch_images(path, 32) for path in cifar10_files(root, split)]


def cifar10_label_files(root: Path, split: str) -> list[Path]:
    """The files the labels of a split come from: its batch files, and batches.meta when present."""
    files = cifar10_files(root, split)
    meta = files[0].parent / META
    return files + [meta] if meta.is_file() else files


def read_cifar10_labels(root: Path, split: str) -> Labels:
    """The `labels` (0..9) of the official split's batches, with the class names of batches.meta if present."""
    values = [check_classes(read_batch_labels(p, _FIX), 0, 9, p, _FIX) for p in cifar10_files(root, split)]
    return Labels(np.concatenate(values), "class", 10, _label_names(root, split))


def _label_names(root: Path, split: str) -> tuple[str, ...] | None:
    path = cifar10_files(root, split)[0].parent / META
    if not path.is_file():
        return None
    meta = load_pickle(path)
    names = meta.get(b"label_names", meta.get("label_names"))
    if not isinstance(names, list) or len(names) != 10 or not all(isinstance(n, (bytes, str)) for n in names):
        raise DatasetError(f"{path}: 'label_names' is not a list of 10 names; {_FIX}")
    return tuple(n.decode("latin1") if isinstance(n, bytes) else n for n in names)


def write_cifar10(
    root: Path,
    train: np.ndarray,
    test: np.ndarray,
    train_labels: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    label_names: list[str] | None = None,
) -> list[Path]:
    """ROOT/cifar-10-batches-py/: uint8 (N, 3, 32, 32) `train` in 5 batches and `test`, as Python 2 pickled them.

    Each batch dict holds b"batch_label", b"labels" (the given classes 0..9, else all 0), b"data"
    (N, 3072) and b"filenames". With `label_names`, also batches.meta (b"label_names", b"num_vis").
    """
    labels = [np.zeros(len(train), np.int64) if train_labels is None else np.asarray(train_labels)]
    labels.append(np.zeros(len(test), np.int64) if test_labels is None else np.asarray(test_labels))
    assert (len(labels[0]), len(labels[1])) == (len(train), len(test))
    parts = zip([*np.array_split(train, 5), test], [*np.array_split(labels[0], 5), labels[1]])
    paths = []
    for name, (images, classes) in zip(_names("train") + _names("test"), parts):
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(c) for c in classes],
            b"data": to_rows(images),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(len(images))],
        }
        paths.append(write_py2_pickle(Path(root) / _FOLDER / name, batch))
    if label_names is not None:
        meta = {b"label_names": [n.encode() for n in label_names], b"num_vis": 3072}
        paths.append(write_py2_pickle(Path(root) / _FOLDER / META, meta))
    return paths
