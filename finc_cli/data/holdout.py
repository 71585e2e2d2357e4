"""The validation split: a fixed-seed share of the official training images, held out of training."""

from __future__ import annotations

import numpy as np
import torch

from finc_cli.errors import DatasetError

__all__ = ["SPLIT_SEED", "VAL_SIZE", "holdout", "seeded_permutation", "take"]

# Validation images held out of the official training set (the usual sizes in the flow literature).
VAL_SIZE = {"mnist": 5000, "cifar10": 5000, "imagenet32": 10000, "imagenet64": 10000}
SPLIT_SEED = 0


def seeded_permutation(n: int) -> np.ndarray:
    """The same permutation of range(n) on every machine and run (torch's generator, seed SPLIT_SEED)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED)).numpy()


def holdout(n: int, val_size: int, name: str) -> dict[str, np.ndarray]:
    """Fixed-seed split of n training images into sorted train / val indices."""
    if n < 2:
        raise DatasetError(f"{name}: need at least 2 training images to hold out validation, found {n}")
    n_val = min(val_size, max(1, n // 10))  # small copies (tests, subsets) keep 90% for training
    perm = seeded_permutation(n)
    return {"val": np.sort(perm[:n_val]), "train": np.sort(perm[n_val:])}


def take(parts: list[np.ndarray], idx: np.ndarray) -> np.ndarray:
    """Rows `idx` (sorted) of the concatenated `parts`, dropping each part once copied.

    ImageNet64 is ~16 GB: copying part by part into one lazily committed array keeps the peak
    near one copy of the data instead of two.
    """
    out = np.empty((len(idx), *parts[0].shape[1:]), dtype=np.uint8)
    start = filled = 0
    for k in range(len(parts)):
        part, parts[k] = parts[k], None
        lo, hi = np.searchsorted(idx, [start, start + len(part)])
        out[filled : filled + hi - lo] = part[idx[lo:hi] - start]
        start, filled = start + len(part), filled + hi - lo
    return out
