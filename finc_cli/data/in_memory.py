"""A dataset held in memory as one uint8 tensor of images (N, C, H, W)."""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import Dataset

__all__ = ["ImageTensorDataset"]


class ImageTensorDataset(Dataset):
    """All images in memory as one uint8 tensor `images` (N, C, H, W); `ds[i]` is (C, H, W).

    When `transform` is set (training augmentation), it also accepts a batch (B, C, H, W), so
    training code may index `ds.images` directly and call `ds.transform` on the batch.
    """

    def __init__(self, images: torch.Tensor, transform: Callable | None = None):
        assert images.dtype == torch.uint8 and images.ndim == 4, (images.dtype, images.shape)
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.images[i]  # (C, H, W)
        return self.transform(x) if self.transform is not None else x

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        """The images at `idx` as one uint8 batch (B, C, H, W), not augmented."""
        return self.images[idx]
