"""finc_cli.data.celeba: torchvision's decode, centre crop and resize against the PIL path it replaces."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from finc_cli.data.celeba import celeba64_batch, celeba64_from_file
from finc_cli.errors import DatasetError

# torchvision 0.29 deprecates its image decoders (see finc_cli/data/celeba.py); the pinned version is tested here.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")

W, H = 178, 218  # CelebA's aligned images


def _smooth(rng: np.random.Generator, h: int = H, w: int = W) -> np.ndarray:
    """(h, w, 3) uint8: a sine pattern per channel plus noise, roughly as smooth as a photograph."""
    yy, xx = np.mgrid[0:h, 0:w]
    scale, phase = rng.uniform(20, 50, 3), rng.uniform(0, 2 * np.pi, 3)
    planes = [127 + 100 * np.sin(xx / scale[c] + yy / (scale[c] + 5) + phase[c]) for c in range(3)]
    return (np.stack(planes, -1) + rng.normal(0, 6, (h, w, 3))).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("celeba")
    rng = np.random.default_rng(0)
    out = {}
    for i in range(4):
        out[f"rgb{i}"] = folder / f"{i:06d}.jpg"
        Image.fromarray(_smooth(rng)).save(out[f"rgb{i}"], quality=95)
    out["gray"] = folder / "gray.jpg"
    Image.fromarray(_smooth(rng)[:, :, 0]).save(out["gray"], quality=95)
    out["cmyk"] = folder / "cmyk.jpg"
    Image.fromarray(_smooth(rng)).convert("CMYK").save(out["cmyk"], quality=95)
    out["png"] = folder / "png.jpg"  # a PNG named .jpg: decoded by content, as PIL does
    Image.fromarray(_smooth(rng)).save(out["png"], format="PNG")
    out["small"] = folder / "small.jpg"  # smaller than the crop: zero-padded, as by CenterCrop
    Image.fromarray(_smooth(rng, 120, 100)).save(out["small"], quality=95)
    data = out["rgb0"].read_bytes()
    out["truncated"] = folder / "truncated.jpg"
    out["truncated"].write_bytes(data[: len(data) // 2])
    out["garbage"] = folder / "garbage.jpg"
    out["garbage"].write_bytes(b"not an image, just some bytes\n" * 10)
    out["empty"] = folder / "empty.jpg"
    out["empty"].write_bytes(b"")
    return out


def _pil_celeba64(path: Path) -> np.ndarray:
    """The PIL path that celeba64_from_file replaces: (3, 64, 64) uint8."""
    with Image.open(path) as img:
        img = img.convert("RGB")
    w, h = img.size
    top, left = int(round((h - 148) / 2)), int(round((w - 148) / 2))
    img = img.crop((left, top, left + 148, top + 148)).resize((64, 64), Image.BILINEAR)
    return np.asarray(img).transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)


GOOD = ["rgb0", "rgb1", "rgb2", "rgb3", "gray", "cmyk", "png", "small"]


@pytest.mark.parametrize("name", GOOD)
def test_uint8_rgb_64x64(files, name):
    x = celeba64_from_file(files[name])
    assert x.dtype == torch.uint8 and x.shape == (3, 64, 64) and x.is_contiguous()


def test_matches_the_pil_path_within_one_level(files):
    # Measured on x86-64 (AVX2): the JPEG decode is bit-exact (both use libjpeg-turbo); the
    # resize differs by one level at about 0.05% of values (PIL and torch round their
    # fixed-point filters differently), never by more.
    diff = np.stack([np.abs(celeba64_from_file(files[n]).numpy().astype(int) - _pil_celeba64(files[n])) for n in GOOD])
    assert diff.max() <= 1, f"max abs difference {diff.max()}"
    assert (diff > 0).mean() < 0.01, f"{(diff > 0).mean():.2%} of values differ"


def test_batch_equals_each_file(files):
    paths = [files[n] for n in GOOD]  # mixed sizes, modes and formats: the crops still stack
    batch = celeba64_batch(paths)
    assert batch.dtype == torch.uint8 and batch.shape == (len(paths), 3, 64, 64)
    assert torch.equal(batch, torch.stack([celeba64_from_file(p) for p in paths]))
    assert celeba64_batch([]).shape == (0, 3, 64, 64)


def test_grayscale_gives_three_equal_channels(files):
    x = celeba64_from_file(files["gray"])
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


@pytest.mark.parametrize("name", ["truncated", "garbage", "empty"])
def test_undecodable_file_is_one_line_naming_it(files, name):
    path = files[name]
    with pytest.raises(DatasetError, match=rf"^celeba64: cannot decode image {re.escape(str(path))}: \S") as err:
        celeba64_from_file(path)
    assert "\n" not in str(err.value) and ".cpp" not in str(err.value)
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        celeba64_batch([files["rgb0"], path])


def test_missing_file(files):
    path = files["rgb0"].parent / "000404.jpg"
    expected = f"celeba64: image listed in list_eval_partition.txt is missing: {path}"
    with pytest.raises(DatasetError, match=rf"^{re.escape(expected)}$"):
        celeba64_from_file(path)
    with pytest.raises(DatasetError, match=rf"^{re.escape(expected)}$"):
        celeba64_batch([files["rgb0"], path])
