"""A split to read: the prepared cache when it is current, else the source files (and why, in one line); its labels."""

from __future__ import annotations

import os
from typing import Callable, TypeVar

from torch.utils.data import Dataset

from finc_cli.data.augment import Augment
from finc_cli.data.cache import MappedImages, open_prepared, open_prepared_labels
from finc_cli.data.datasets import check_split, read_labels, read_split
from finc_cli.data.labels import LabelledDataset, Labels
from finc_cli.errors import DatasetError

__all__ = ["get_dataset", "get_labelled_dataset", "get_labels"]

T = TypeVar("T")


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
    return _prepared_else_sources(
        lambda: open_prepared(name, split, data_dir, cache_dir, transform),
        lambda: read_split(name, split, data_dir, transform),
        use_cache,
        notify,
    )


def get_labels(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    notify: Callable[[str], None] | None = None,
    images_checked: bool = False,
) -> Labels:
    """The labels of `split`, in the order of `get_dataset`'s images (docs/data.md §4).

    With `use_cache`, those of a current prepared split whose label files are unchanged; else read
    from the source files (a missing or broken label file raises one line naming it), and why the
    prepared ones were not used goes to `notify`. `images_checked`: the caller has just found the
    prepared images current (as `get_labelled_dataset` has), so they are not checked again.
    """
    check_split(name, split)
    return _prepared_else_sources(
        lambda: open_prepared_labels(name, split, data_dir, cache_dir, checked=images_checked),
        lambda: read_labels(name, split, data_dir),
        use_cache,
        notify,
    )


def _prepared_else_sources(
    open_prepared_part: Callable[[], tuple], read_sources: Callable[[], T], use_cache: bool, notify
) -> T:
    """What `open_prepared_part` maps from a usable prepared cache; else `read_sources()`, and then why the cache
    was not used goes to `notify` in one line (after the read, so that a source error is the one reported)."""
    note = ""
    if use_cache:
        got, note = open_prepared_part()
        if got is not None:
            return got
    got = read_sources()
    if note and notify is not None:
        notify(note)
    return got


def get_labelled_dataset(
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
) -> LabelledDataset:
    """`get_dataset`'s split with its labels: `ds[i]` is (image, label), `ds.batch(idx)` (images, labels).

    The labels come from the prepared cache only when the images do; otherwise from the sources.
    """
    images = get_dataset(
        name,
        split,
        data_dir,
        train_transform=train_transform,
        hflip=hflip,
        translate=translate,
        cache_dir=cache_dir,
        use_cache=use_cache,
        notify=notify,
    )
    mapped = isinstance(images, MappedImages)
    labels = get_labels(
        name, split, data_dir, cache_dir=cache_dir, use_cache=mapped, notify=notify, images_checked=mapped
    )
    if len(labels) != len(images):
        fix = f"finc data prepare {name} --force" + (f" --data-dir {data_dir}" if data_dir else "")
        raise DatasetError(f"{name}/{split}: {len(labels)} labels for {len(images)} images; refresh it with `{fix}`")
    return LabelledDataset(images, labels)
