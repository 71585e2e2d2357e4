"""The dataset registry: each name's source files, reader and recipe; splits read into uint8 (C, H, W) images."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from finc_cli.data.data_dir import ENV_VAR, FIX, resolve_data_dir
from finc_cli.data.formats import celeba, cifar10, imagenet, mnist
from finc_cli.data.formats.celeba import CelebAImages
from finc_cli.data.formats.digits import digits_files, read_digits
from finc_cli.data.holdout import SPLIT_SEED, VAL_SIZE, holdout, take
from finc_cli.data.in_memory import ImageTensorDataset
from finc_cli.dataset_shapes import DATASETS, DatasetInfo, dataset_info
from finc_cli.errors import DatasetError

__all__ = [
    "CelebAImages",
    "dataset_info",
    "DatasetInfo",
    "DATASETS",
    "ENV_VAR",
    "check_split",
    "ImageTensorDataset",
    "read_split",
    "recipe",
    "RECIPE_VERSION",
    "resolve_data_dir",
    "source_files",
    "SPLITS",
]


SPLITS: tuple[str, ...] = ("train", "val", "test")
RECIPE_VERSION = 2  # bump when the images a split yields change (a prepared cache of an older recipe is stale)


@dataclass(frozen=True)
class _Batches:
    """A dataset stored as files of images: its official "train" or "test" files, and their images (one part each)."""

    files: Callable[[Path, str], list[Path]]
    read: Callable[[Path, str], list[np.ndarray]]


_BATCHES = {
    "mnist": _Batches(mnist.mnist_files, mnist.read_mnist),
    "cifar10": _Batches(cifar10.cifar10_files, cifar10.read_cifar10),
    "imagenet32": _Batches(partial(imagenet.imagenet_files, size=32), partial(imagenet.read_imagenet, size=32)),
    "imagenet64": _Batches(partial(imagenet.imagenet_files, size=64), partial(imagenet.read_imagenet, size=64)),
}

# The expected layout under a data directory, for error messages.
_LAYOUT: dict[str, Callable[[Path | str], str]] = {
    "mnist": mnist.layout,
    "cifar10": cifar10.layout,
    "imagenet32": partial(imagenet.layout, size=32),
    "imagenet64": partial(imagenet.layout, size=64),
    "celeba64": celeba.layout,
}


def check_split(name: str, split: str) -> None:
    dataset_info(name)
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def _root(name: str, data_dir: str | os.PathLike | None) -> Path:
    root = resolve_data_dir(data_dir)
    if root is None:
        raise DatasetError(f"{name} needs a data directory holding {_LAYOUT[name]('DIR')}; {FIX}")
    return root


def _official(split: str) -> str:
    """The official split a split is read from: validation is held out of the training files."""
    return "test" if split == "test" else "train"


def read_split(name: str, split: str, data_dir=None, transform: Callable | None = None) -> Dataset:
    """The split read from its source files (no cache): images in memory, CelebA decoded lazily."""
    check_split(name, split)
    if name == "digits":
        return ImageTensorDataset(torch.from_numpy(read_digits(split)), transform)
    root = _root(name, data_dir)
    if name == "celeba64":
        return CelebAImages(celeba.celeba_files(root, split), transform)
    parts = _BATCHES[name].read(root, _official(split))
    n = sum(len(p) for p in parts)
    idx = np.arange(n) if split == "test" else holdout(n, VAL_SIZE[name], name)[split]
    return ImageTensorDataset(torch.from_numpy(take(parts, idx)), transform)


def source_files(name: str, split: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The files (and, for CelebA, the image folder) that `split` of `name` is read from."""
    check_split(name, split)
    if name == "digits":
        return digits_files()
    root = _root(name, data_dir)
    if name == "celeba64":
        return celeba.celeba_sources(root)
    return _BATCHES[name].files(root, _official(split))


def recipe(name: str) -> dict:
    """What turns the sources into a split's images; a prepared cache made with another recipe is stale."""
    out = {"version": RECIPE_VERSION, "split_seed": SPLIT_SEED, "val_size": VAL_SIZE.get(name)}
    if name == "celeba64":
        out.update(crop=CelebAImages.crop, size=CelebAImages.size)
    return out
