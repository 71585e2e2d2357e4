"""Image grids and single images: uint8 tensors with `bins` levels <-> PNG files."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Union


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
