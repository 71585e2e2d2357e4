"""Image grids and single images: uint8 tensors with `bins` levels <-> PNG files."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Sequence, Union

from finc_cli.errors import ImageInputError

__all__ = ["load_images", "save_grid", "save_png", "to_uint8_255"]


def to_uint8_255(images, bins: int):
    """(N, C, H, W) integers in [0, bins-1] -> uint8 in [0, 255]."""
    import torch

    x = images.detach().to("cpu", torch.float64)
    if bins != 256:
        x = torch.round(x * (255.0 / (bins - 1)))
    return x.clamp(0, 255).to(torch.uint8)


def _grid(images, nrow: int, padding: int = 2):
    """(N, C, H, W) uint8 -> (C, H', W') uint8: torchvision's grid, `nrow` columns even when N < nrow."""
    import torch
    from torchvision.utils import make_grid

    n, c, h, w = images.shape
    if n < nrow:  # torchvision would drop the empty columns; blank cells keep the grid nrow wide
        images = torch.cat([images, images.new_zeros((nrow - n, c, h, w))])
    if images.shape[0] == 1:  # torchvision returns a lone image unpadded; pad it like any grid
        return torch.nn.functional.pad(images[0], (padding,) * 4)
    grid = make_grid(images, nrow=nrow, padding=padding)  # one channel comes back as 3 equal ones
    return grid[:c].contiguous()  # (C, H', W')


def _to_pil(chw, scale: int = 1):
    from PIL import Image

    arr = chw.permute(1, 2, 0).numpy()  # (H, W, C)
    img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr, mode="L" if arr.shape[2] == 1 else "RGB")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def save_png(chw_uint8, path: Union[str, os.PathLike], scale: int = 1) -> None:
    """Write one (C, H, W) uint8 image atomically."""
    from finc_cli.atomic import atomic_path

    with atomic_path(path) as tmp:
        _to_pil(chw_uint8, scale).save(tmp, format="PNG")


def save_grid(images, path: Union[str, os.PathLike], bins: int, nrow: Optional[int] = None) -> None:
    """Write (N, C, H, W) images with `bins` levels as one PNG grid; small images are upscaled."""
    imgs = to_uint8_255(images, bins)
    nrow = nrow or max(1, int(math.ceil(math.sqrt(imgs.shape[0]))))
    scale = max(1, 32 // imgs.shape[-1])  # 8x8 digits become visible
    save_png(_grid(imgs, nrow), Path(path), scale=scale)


def load_images(paths: Sequence[str], channels: int, height: int, width: int, bins: int):
    """PNG/JPEG files -> uint8 (N, C, H, W) with values in [0, bins-1] (inverse of the grid scaling)."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    mode = {1: "L", 3: "RGB"}[channels]
    images = []
    for p in paths:
        try:
            with Image.open(p) as img:
                img.load()
                if img.mode != mode:
                    raise ImageInputError(
                        f"{p} is a {img.mode} image but the model expects {mode} "
                        f"({channels} channel{'s' if channels > 1 else ''})"
                    )
                if img.size != (width, height):
                    raise ImageInputError(
                        f"{p} is {img.size[0]}×{img.size[1]} but the model expects {width}×{height}; resize it first"
                    )
                arr = np.asarray(img, dtype=np.float64)
        except FileNotFoundError:
            raise ImageInputError(f"image {p} does not exist") from None
        except (UnidentifiedImageError, OSError):
            raise ImageInputError(f"{p} is not a readable image file") from None
        arr = arr[:, :, None] if arr.ndim == 2 else arr  # (H, W, C)
        if bins != 256:
            arr = np.round(arr * (bins - 1) / 255.0)
        images.append(torch.from_numpy(arr.astype(np.uint8)).permute(2, 0, 1))  # (C, H, W)
    return torch.stack(images)
