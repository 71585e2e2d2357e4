"""Image grids and single images: uint8 tensors with `bins` levels <-> PNG files."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Sequence, Union

from finc_cli.errors import ImageInputError

__all__ = ["load_images", "make_grid", "save_grid", "save_png", "to_uint8_255"]


def to_uint8_255(images, bins: int):
    """(N, C, H, W) integers in [0, bins-1] -> uint8 in [0, 255]."""
    import torch

    x = images.detach().to("cpu", torch.float64)
    if bins != 256:
        x = torch.round(x * (255.0 / (bins - 1)))
    return x.clamp(0, 255).to(torch.uint8)


def make_grid(images, nrow: Optional[int] = None, padding: int = 2):
    """(N, C, H, W) uint8 -> (C, H', W') uint8 grid with `nrow` images per row."""
    import torch

    n, c, h, w = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / nrow))
    grid = torch.zeros(c, rows * (h + padding) + padding, nrow * (w + padding) + padding, dtype=torch.uint8)
    for idx in range(n):
        r, col = divmod(idx, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = images[idx]
    return grid


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
    scale = max(1, 32 // imgs.shape[-1])  # 8x8 digits become visible
    save_png(make_grid(imgs, nrow), Path(path), scale=scale)


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
