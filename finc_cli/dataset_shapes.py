"""The datasets finc knows, by name: image shape and number of intensity levels (no I/O, no torch)."""

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


_INFO = {
    "digits": DatasetInfo("digits", 1, 8, 8, 17),
    "mnist": DatasetInfo("mnist", 1, 28, 28, 256),
    "cifar10": DatasetInfo("cifar10", 3, 32, 32, 256),
    "imagenet32": DatasetInfo("imagenet32", 3, 32, 32, 256),
    "imagenet64": DatasetInfo("imagenet64", 3, 64, 64, 256),
    "celeba64": DatasetInfo("celeba64", 3, 64, 64, 256),
}
DATASETS: tuple[str, ...] = tuple(_INFO)


def dataset_info(name: str) -> DatasetInfo:
    """Shape and number of intensity levels of a named dataset."""
    if name not in _INFO:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return _INFO[name]
