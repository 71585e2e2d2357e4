"""Training batches as pure functions of (seed, step), and fetching a batch of images from a dataset."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

__all__ = ["StepBatch", "batch_indices", "fetch", "step_batch", "step_generator"]


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


def fetch(ds, idx: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """uint8 batch (B, C, H, W) for the given indices, augmented when the dataset says so."""
    transform = getattr(ds, "transform", None)
    batch = ds.batch(idx) if hasattr(ds, "batch") else torch.stack([ds[int(i)] for i in idx])
    return transform(batch, generator) if transform is not None else batch


class StepBatch(NamedTuple):
    step: int
    images: torch.Tensor  # (B / world, C, H, W) uint8: this process's slice of the global batch
    noise: torch.Tensor  # (B / world, C, H, W) float32 in [0, 1): its dequantization noise


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of everything random in step `step`'s batch (augmentation, then noise)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step + 1)


def step_batch(ds, step: int, seed: int, batch_size: int, rank: int = 0, world: int = 1) -> StepBatch:
    """This process's slice of the global batch of optimizer step `step`: a pure function of (seed, step).

    The global batch's indices, augmentation parameters and noise are drawn whole, in a fixed order,
    from `step_generator(seed, step)`; each process then reads and augments only its own images
    (every world-th), so N processes see exactly what one process with the global batch would.
    """
    g = step_generator(seed, step)
    idx = batch_indices(len(ds), batch_size, seed, step)
    mine = slice(rank, None, world)
    images = ds.batch(idx[mine]) if hasattr(ds, "batch") else torch.stack([ds[int(i)] for i in idx[mine]])
    transform = getattr(ds, "transform", None)
    if transform is not None:
        _, c, h, w = images.shape
        rows, cols = transform.draw(len(idx), h, w, g)  # the whole batch's parameters, in draw order
        images = transform.apply(images, (rows[mine], cols[mine]))
    noise = torch.rand((len(idx), *images.shape[1:]), generator=g)[mine]  # (B, C, H, W) drawn whole
    return StepBatch(step, images, noise)
