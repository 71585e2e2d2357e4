"""Training batches as pure functions of (seed, step), and fetching a batch of images from a dataset."""

from __future__ import annotations

import torch

__all__ = ["batch_indices", "fetch"]


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices of the batch for optimizer step `step`: epoch-wise permutations from (seed, epoch).

    A pure function of the step, so a resumed run sees exactly the batches it would have seen
    (docs/training.md).
    """
    per_epoch = max(1, n // batch_size)  # drop the last incomplete batch
    epoch, pos = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    return perm[pos * batch_size : (pos + 1) * batch_size]


def fetch(ds, idx: torch.Tensor) -> torch.Tensor:
    """uint8 batch (B, C, H, W) for the given indices, augmented when the dataset says so."""
    images = getattr(ds, "images", None)
    if images is not None:
        batch = images[idx]
        transform = getattr(ds, "transform", None)
        return transform(batch) if transform is not None else batch
    return torch.stack([ds[int(i)] for i in idx])
