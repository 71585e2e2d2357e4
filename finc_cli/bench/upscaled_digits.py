"""scikit-learn's digits upscaled and written in a real on-disk format: MNIST idx (28×28) or ImageNet64 (64×64).

No MNIST, ImageNet or CelebA is available offline. These sets let the mnist and the 64×64
architectures train on the CPU from files their loaders read as they would read the real data.
The 1797 digits are split as `finc train --preset digits` splits them: its 360 test digits go to
the test file, the other 1437 (its train and validation digits, in their original order) to the
training file, of which finc holds out its own validation share.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from finc_cli.data.formats.imagenet import write_imagenet
from finc_cli.data.formats.mnist import write_mnist
from finc_cli.data.holdout import seeded_permutation

__all__ = ["DIGIT_LEVELS", "TEST_DIGITS", "upscaled_digits", "write_imagenet64_digits", "write_mnist_digits"]

DIGIT_LEVELS = 17  # the digits' pixel values are 0..16
TEST_DIGITS = 360  # as data/formats/digits.py: the first 360 of the fixed permutation


def _digits_split() -> tuple[np.ndarray, np.ndarray]:
    """(train, test) float (N, 1, 8, 8) digits in 0..16: test as the digits preset's, train the rest in order."""
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32)[:, None]
    perm = seeded_permutation(len(images))
    return images[np.sort(perm[TEST_DIGITS:])], images[np.sort(perm[:TEST_DIGITS])]


def upscaled_digits(images: np.ndarray, size: int) -> np.ndarray:
    """Digits (N, 1, 8, 8) in 0..16 -> uint8 (N, 1, size, size): bilinear, ×255/16, rounded."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)) * (255.0 / (DIGIT_LEVELS - 1))
    up = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return up.round().clamp(0, 255).to(torch.uint8).numpy()


def write_mnist_digits(root: Path | str) -> list[Path]:
    """ROOT/MNIST/raw/{train,t10k}-images-idx3-ubyte: the digits at 28×28 (1437 train, 360 test)."""
    train, test = _digits_split()
    return write_mnist(Path(root), upscaled_digits(train, 28), upscaled_digits(test, 28))


def _tinted(grey: np.ndarray, seed: int) -> np.ndarray:
    """uint8 (N, 1, S, S) -> (N, 3, S, S): each image scaled by its own colour, 3 gains drawn in [0.5, 1].

    Without the tint the three channels would be copies of one another, which a flow can learn to
    exploit far beyond what real colour images allow.
    """
    gains = np.random.default_rng(seed).uniform(0.5, 1.0, size=(len(grey), 3, 1, 1))
    return np.rint(grey.astype(np.float64) * gains).astype(np.uint8)


def write_imagenet64_digits(root: Path | str) -> list[Path]:
    """ROOT/Imagenet64_{train,val}_npz/: the digits at 64×64, tinted RGB, as ImageNet64 .npz batches.

    One training batch of 1437 images and a val_data file of 360 (finc's imagenet64 "test" split).
    """
    train, test = _digits_split()
    train64 = _tinted(upscaled_digits(train, 64), seed=0)
    test64 = _tinted(upscaled_digits(test, 64), seed=1)
    return write_imagenet(Path(root), 64, [train64], test64, npz=True)
