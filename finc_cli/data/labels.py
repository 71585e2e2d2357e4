"""Labels of a split: one class per image, or CelebA's binary attributes; and images paired with them.

Nothing here reads a file: each format's reader (`data/formats/`) builds a `Labels`, and
`datasets.read_labels` aligns it with the images of a split (docs/data.md §4).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from finc_cli.errors import DatasetError

__all__ = ["KINDS", "LabelledDataset", "Labels", "check_classes"]

KINDS = ("class", "attributes")


@dataclass(frozen=True, eq=False)
class Labels:
    """The labels of N images, in the order of the images.

    `values` is int64: (N,) classes 0..num_classes-1 when `kind` is "class", or (N, A) multi-hot
    {0, 1} rows when `kind` is "attributes" (then `num_classes` is A). `names` names the classes or
    attributes when the files do (CIFAR-10's batches.meta, CelebA's attribute header), else None.
    """

    values: np.ndarray
    kind: str
    num_classes: int
    names: Optional[tuple[str, ...]] = None

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=np.int64)
        assert self.kind in KINDS, self.kind
        assert values.ndim == (1 if self.kind == "class" else 2), (self.kind, values.shape)
        assert self.kind == "class" or values.shape[1] == self.num_classes, (values.shape, self.num_classes)
        assert self.names is None or len(self.names) == self.num_classes, (len(self.names), self.num_classes)
        object.__setattr__(self, "values", values)

    def __len__(self) -> int:
        return len(self.values)

    def take(self, idx: np.ndarray) -> Labels:
        """The labels of the images at `idx`, in that order."""
        return Labels(self.values[np.asarray(idx, dtype=np.int64)], self.kind, self.num_classes, self.names)


def check_classes(values: np.ndarray, low: int, high: int, path: Path | str, fix: str) -> np.ndarray:
    """`values` as int64 (N,), or DatasetError naming `path` when one is outside low..high (inclusive)."""
    values = np.asarray(values)
    if values.ndim != 1 or (values.size and values.dtype.kind not in "iu"):
        raise DatasetError(
            f"{path}: labels have shape {values.shape} and dtype {values.dtype}, expected integers; {fix}"
        )
    values = values.astype(np.int64)
    if values.size and (values.min() < low or values.max() > high):
        bad = int(values[(values < low) | (values > high)][0])
        raise DatasetError(f"{path}: holds label {bad}, expected {low}..{high}; {fix}")
    return values


class LabelledDataset(Dataset):
    """An image dataset with its labels: `ds[i]` is (uint8 image (C, H, W), int64 label () or (A,)).

    `images` is the dataset `get_dataset` returns (its `transform`, if any, augments the image);
    `labels` its `Labels`, in the same order. `batch(idx)` is (uint8 (B, C, H, W) not augmented,
    int64 (B,) or (B, A)).
    """

    def __init__(self, images: Dataset, labels: Labels):
        if len(images) != len(labels):
            raise DatasetError(f"{len(labels)} labels for {len(images)} images; prepare the dataset again")
        self.images, self.labels = images, labels
        self._values = torch.from_numpy(labels.values)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self._values[int(i)]

    def batch(self, idx) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(idx, dtype=torch.int64)
        images = (
            self.images.batch(idx) if hasattr(self.images, "batch") else torch.stack([self.images[int(i)] for i in idx])
        )
        return images, self._values[idx]
