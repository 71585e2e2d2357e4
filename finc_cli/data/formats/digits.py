"""scikit-learn's handwritten digits (1797 images, 8×8, 17 levels), bundled offline: a fixed split of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from finc_cli.data.holdout import seeded_permutation
from finc_cli.data.labels import Labels

__all__ = ["digits_files", "read_digits", "read_digits_labels"]


def _split(n: int, split: str) -> np.ndarray:
    """The sorted indices of `split` among the n digits: 360 test, 180 val, the rest train, by a fixed permutation."""
    perm = seeded_permutation(n)
    parts = {"test": perm[:360], "val": perm[360:540], "train": perm[540:]}
    return np.sort(parts[split])


def read_digits(split: str) -> np.ndarray:
    """The split's images as uint8 (N, 1, 8, 8): 360 test, 180 val, 1257 train, by a fixed permutation."""
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.uint8)[:, None]  # (1797, 8, 8) -> (1797, 1, 8, 8)
    return images[_split(len(images), split)]


def read_digits_labels(split: str) -> Labels:
    """The split's classes 0..9 (scikit-learn's `target`), in the order of `read_digits`."""
    from sklearn.datasets import load_digits

    target = load_digits().target
    return Labels(target[_split(len(target), split)], "class", 10, tuple(str(k) for k in range(10)))


def digits_files() -> list[Path]:
    """The file scikit-learn reads the digits from."""
    import sklearn.datasets

    return [Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"]
