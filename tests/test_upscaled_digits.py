"""The upscaled digits (finc_cli/bench/upscaled_digits.py) read back through the real mnist and imagenet64 loaders."""

from __future__ import annotations

import numpy as np
import torch

from finc_cli.bench.upscaled_digits import upscaled_digits, write_imagenet64_digits, write_mnist_digits
from finc_cli.data.datasets import read_split
from finc_cli.data.formats.digits import read_digits


def _images(ds) -> torch.Tensor:
    return torch.stack([ds[i] for i in range(len(ds))])


def test_upscaling_keeps_black_and_white_and_the_level_scale():
    digits = np.zeros((2, 1, 8, 8), dtype=np.float32)
    digits[1] = 16
    up = upscaled_digits(digits, 28)
    assert up.dtype == np.uint8 and up.shape == (2, 1, 28, 28)
    assert up[0].max() == 0 and up[1].min() == 255


def test_mnist_files_hold_the_digits_split_at_28x28(tmp_path):
    write_mnist_digits(tmp_path)
    test, train, val = (_images(read_split("mnist", s, tmp_path)) for s in ("test", "train", "val"))
    assert test.shape == (360, 1, 28, 28) and len(train) + len(val) == 1437 and len(val) == 143
    expected = torch.from_numpy(upscaled_digits(read_digits("test").astype(np.float32), 28))
    assert torch.equal(test, expected)  # the digits preset's test digits, in its order


def test_imagenet64_batches_hold_tinted_64x64_digits(tmp_path):
    write_imagenet64_digits(tmp_path)
    test = _images(read_split("imagenet64", "test", tmp_path))
    train = read_split("imagenet64", "train", tmp_path)
    assert test.shape == (360, 3, 64, 64) and len(train) + len(read_split("imagenet64", "val", tmp_path)) == 1437
    grey = torch.from_numpy(upscaled_digits(read_digits("test").astype(np.float32), 64)).float()
    assert torch.all(test.float() <= grey + 0.5)  # each channel is the grey digit times a gain in [0.5, 1]
    assert torch.all(test.float() >= 0.5 * grey - 0.5)
    assert not torch.equal(test[:, 0], test[:, 1])  # the channels are not copies of one another
