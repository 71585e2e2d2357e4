"""The dataset registry: each name's source files, readers and recipe; a split's uint8 (C, H, W) images and labels."""

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
from finc_cli.data.formats.digits import digits_files, read_digits, read_digits_labels
from finc_cli.data.holdout import SPLIT_SEED, VAL_SIZE, holdout, take
from finc_cli.data.in_memory import ImageTensorDataset
from finc_cli.data.labels import Labels
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
    "label_files",
    "read_labels",
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
    label_files: Callable[[Path, str], list[Path]]  # the files its labels come from
    read_labels: Callable[[Path, str], Labels]  # the labels of the official split, in the order of `read`


def _imagenet(size: int) -> _Batches:
    files = partial(imagenet.imagenet_files, size=size)
    return _Batches(
        files, partial(imagenet.read_imagenet, size=size), files, partial(imagenet.read_imagenet_labels, size=size)
    )


_BATCHES = {
    "mnist": _Batches(mnist.mnist_files, mnist.read_mnist, mnist.mnist_label_files, mnist.read_mnist_labels),
    "cifar10": _Batches(
        cifar10.cifar10_files, cifar10.read_cifar10, cifar10.cifar10_label_files, cifar10.read_cifar10_labels
    ),
    "imagenet32": _imagenet(32),
    "imagenet64": _imagenet(64),
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
    idx = _indices(name, split, sum(len(p) for p in parts))
    return ImageTensorDataset(torch.from_numpy(take(parts, idx)), transform)


def _indices(name: str, split: str, n: int) -> np.ndarray:
    """The rows of the official split's n images that `split` takes (validation is held out of train)."""
    return np.arange(n) if split == "test" else holdout(n, VAL_SIZE[name], name)[split]


def read_labels(name: str, split: str, data_dir: str | os.PathLike | None = None) -> Labels:
    """The labels of `split`, read from the source files, in the order of `read_split`'s images.

    Classes for digits, MNIST, CIFAR-10 and ImageNet (0-based), CelebA's 40 attributes as (N, 40)
    {0, 1}; validation follows the same held-out indices as the images. A missing, truncated or
    mismatched label file raises a one-line DatasetError naming it (docs/data.md §4).
    """
    check_split(name, split)
    if name == "digits":
        labels = read_digits_labels(split)
    elif name == "celeba64":
        labels = celeba.celeba_attributes(_root(name, data_dir), split)
    else:
        full = _BATCHES[name].read_labels(_root(name, data_dir), _official(split))
        labels = full.take(_indices(name, split, len(full)))
    info = dataset_info(name)
    assert (labels.kind, labels.num_classes) == (info.label_kind, info.num_classes), (name, labels.num_classes)
    return labels


def label_files(name: str, split: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The files the labels of `split` are read from (DatasetError naming a missing one)."""
    check_split(name, split)
    if name == "digits":
        return digits_files()
    root = _root(name, data_dir)
    if name == "celeba64":
        return [*celeba.celeba_sources(root)[:1], *celeba.celeba_attribute_files(root)]
    return _BATCHES[name].label_files(root, _official(split))


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
