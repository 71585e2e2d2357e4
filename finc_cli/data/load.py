"""A split to read: the prepared cache when it is current, else the source files (and why, in one line)."""

from __future__ import annotations

import os
from typing import Callable

from torch.utils.data import Dataset

from finc_cli.data.augment import Augment
from finc_cli.data.cache import open_prepared
from finc_cli.data.datasets import check_split, read_split

__all__ = ["get_dataset"]


def get_dataset(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    train_transform: bool = False,
    hflip: bool = False,
    translate: int = 0,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    notify: Callable[[str], None] | None = None,
) -> Dataset:
    """The `split` ("train", "val" or "test") of dataset `name`; items are uint8 (C, H, W) tensors.

    Validation is held out of the official training set with a fixed seed; "test" is the official
    test split (for ImageNet the official validation set, `val_data`). Augmentation applies only
    to the training split and only when `train_transform` is set.

    With `use_cache`, a prepared cache (`finc data prepare`) whose manifest matches the sources is
    memory-mapped instead of reading the sources; a missing one or one that cannot be used (stale,
    truncated, corrupted) is reported through `notify` in one line once the sources are read.
    """
    check_split(name, split)
    transform = Augment(hflip, translate) if train_transform and split == "train" else None
    note = ""
    if use_cache:
        mapped, note = open_prepared(name, split, data_dir, cache_dir, transform)
        if mapped is not None:
            return mapped
    ds = read_split(name, split, data_dir, transform)
    if note and notify is not None:
        notify(note)
    return ds
