"""CelebA 64×64 preprocessing: JPEG file -> centre crop 148×148 -> antialiased bilinear resize to uint8 (3, 64, 64)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2.functional import InterpolationMode, center_crop, resize

from finc_cli.errors import DatasetError

__all__ = ["celeba64_batch", "celeba64_from_file"]

# Why torchvision: its antialiased bilinear resize runs on uint8 tensors of any batch size, so a
# whole batch of crops is resized in one call (and matches PIL's BILINEAR within one level). The
# JPEGs are decoded by PIL: torchvision 0.29 deprecates its own decoders in favour of TorchCodec.
# torchvision is imported inside the functions: importing it costs about as much as torch.

_CROP, _SIZE = 148, 64  # the usual CelebA 64×64 preprocessing (aligned images are 178×218)


def celeba64_from_file(path: str | os.PathLike):
    """One image file -> uint8 (3, 64, 64): RGB, centre crop 148×148, antialiased bilinear resize to 64×64.

    Grayscale and CMYK JPEGs come out as RGB. A missing or undecodable file raises DatasetError.
    """
    return _resize(_crop(_decode(path))[None])[0].contiguous()  # (1, 3, 148, 148) -> (3, 64, 64)


def celeba64_batch(paths: Sequence[str | os.PathLike]):
    """Image files -> uint8 (N, 3, 64, 64), equal to celeba64_from_file on each; resized as one batch.

    Every crop is 148×148 whatever its image's size (smaller images are zero-padded, as by
    torchvision's CenterCrop), so the crops always stack.
    """

    if not paths:
        return torch.empty((0, 3, _SIZE, _SIZE), dtype=torch.uint8)
    return _resize(torch.stack([_crop(_decode(p)) for p in paths])).contiguous()  # (N, 3, 148, 148) -> (N, 3, 64, 64)


def _decode(path: str | os.PathLike):
    """File -> uint8 (3, H, W) RGB (grayscale and CMYK converted), or DatasetError naming the file."""

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")  # decodes: a truncated file fails here
    except FileNotFoundError:
        raise DatasetError(f"celeba64: image listed in list_eval_partition.txt is missing: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DatasetError(f"celeba64: cannot decode image {path}: {e}") from None
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def _crop(image):
    """(3, H, W) -> (3, 148, 148), top/left rounded as torchvision's CenterCrop (a view when it fits)."""

    return center_crop(image, [_CROP, _CROP])


def _resize(crops):
    """(N, 3, 148, 148) uint8 -> (N, 3, 64, 64) uint8, bilinear with antialiasing (as PIL's BILINEAR)."""

    return resize(crops, [_SIZE, _SIZE], interpolation=InterpolationMode.BILINEAR, antialias=True)
