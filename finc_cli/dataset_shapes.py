"""The datasets finc knows, by name: image shape, number of intensity levels and labels (no I/O, no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from finc_cli.errors import DatasetError

__all__ = ["DATASETS", "DatasetInfo", "dataset_info"]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    channels: int
    height: int
    width: int
    bins: int  # number of intensity levels: 256 for 8-bit images, 17 for sklearn digits
    num_classes: int  # classes of its labels, or binary attributes when label_kind is "attributes"
    label_kind: str  # "class": one class per image; "attributes": a multi-hot {0, 1} row per image


_INFO = {
    "digits": DatasetInfo("digits", 1, 8, 8, 17, 10, "class"),
    "mnist": DatasetInfo("mnist", 1, 28, 28, 256, 10, "class"),
    "cifar10": DatasetInfo("cifar10", 3, 32, 32, 256, 10, "class"),
    "imagenet32": DatasetInfo("imagenet32", 3, 32, 32, 256, 1000, "class"),
    "imagenet64": DatasetInfo("imagenet64", 3, 64, 64, 256, 1000, "class"),
    "celeba64": DatasetInfo("celeba64", 3, 64, 64, 256, 40, "attributes"),
}
DATASETS: tuple[str, ...] = tuple(_INFO)


def dataset_info(name: str) -> DatasetInfo:
    """Shape, number of intensity levels and labels of a named dataset (docs/data.md §4)."""
    if name not in _INFO:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return _INFO[name]
