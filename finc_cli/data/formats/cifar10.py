"""CIFAR-10, python version: cifar-10-batches-py/data_batch_1..5 and test_batch, pickled dicts of RGB rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from finc_cli.data.data_dir import not_found
from finc_cli.data.formats.batch_files import read_batch_images, to_rows, write_py2_pickle

__all__ = ["cifar10_files", "layout", "read_cifar10", "write_cifar10"]

_FOLDER = "cifar-10-batches-py"


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


def write_cifar10(root: Path, train: np.ndarray, test: np.ndarray) -> list[Path]:
    """ROOT/cifar-10-batches-py/: uint8 (N, 3, 32, 32) `train` in 5 batches and `test`, as Python 2 pickled them.

    Each batch dict holds b"batch_label", b"labels" (all 0 here), b"data" (N, 3072) and b"filenames".
    """
    parts = [*np.array_split(train, 5), test]
    paths = []
    for name, images in zip(_names("train") + _names("test"), parts):
        batch = {
            b"batch_label": name.encode(),
            b"labels": [0] * len(images),
            b"data": to_rows(images),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(len(images))],
        }
        paths.append(write_py2_pickle(Path(root) / _FOLDER / name, batch))
    return paths
