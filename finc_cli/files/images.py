"""Image grids and single images: uint8 tensors with `bins` levels <-> PNG files."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError
from torchvision.utils import make_grid

from finc_cli.errors import ImageInputError, InputError
from finc_cli.files.atomic import atomic_path

__all__ = [
    "GRID_MIN_WIDTH",
    "default_scale",
    "load_images",
    "save_grid",
    "save_labelled_columns",
    "save_labelled_rows",
    "save_pairs_grid",
    "save_png",
    "to_uint8_255",
]

GRID_MIN_WIDTH = 512  # pixels: the default --scale makes a grid at least this wide
PADDING = 2  # pixels between grid cells, before upscaling


def to_uint8_255(images, bins: int):
    """(N, C, H, W) integers in [0, bins-1] -> uint8 in [0, 255]."""

    x = images.detach().to("cpu", torch.float64)
    if bins != 256:
        x = torch.round(x * (255.0 / (bins - 1)))
    return x.clamp(0, 255).to(torch.uint8)


def _grid(images, nrow: int, padding: int = PADDING):
    """(N, C, H, W) uint8 -> (C, H', W') uint8: torchvision's grid, `nrow` columns even when N < nrow."""

    n, c, h, w = images.shape
    if n < nrow:  # torchvision would drop the empty columns; blank cells keep the grid nrow wide
        images = torch.cat([images, images.new_zeros((nrow - n, c, h, w))])
    if images.shape[0] == 1:  # torchvision returns a lone image unpadded; pad it like any grid
        return torch.nn.functional.pad(images[0], (padding,) * 4)
    grid = make_grid(images, nrow=nrow, padding=padding)  # one channel comes back as 3 equal ones
    return grid[:c].contiguous()  # (C, H', W')


def _to_pil(chw, scale: int = 1):

    arr = chw.permute(1, 2, 0).numpy()  # (H, W, C)
    img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr, mode="L" if arr.shape[2] == 1 else "RGB")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def save_png(chw_uint8, path: Union[str, os.PathLike], scale: int = 1) -> None:
    """Write one (C, H, W) uint8 image atomically."""

    with atomic_path(path) as tmp:
        _to_pil(chw_uint8, scale).save(tmp, format="PNG")


def default_scale(width: int) -> int:
    """The integer upscale that makes a picture `width` pixels wide at least GRID_MIN_WIDTH wide."""
    return max(1, math.ceil(GRID_MIN_WIDTH / max(1, width)))


def _check_scale(scale: Optional[int]) -> None:
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int) or scale < 1):
        raise InputError(f"--scale must be a whole number >= 1, got {scale!r}")


def save_grid(
    images, path: Union[str, os.PathLike], bins: int, nrow: Optional[int] = None, scale: Optional[int] = None
) -> int:
    """Write (N, C, H, W) images with `bins` levels as one PNG grid, upscaled by the integer `scale`
    (nearest neighbour; default: the least making the grid GRID_MIN_WIDTH wide). Returns the scale.
    """
    _check_scale(scale)
    imgs = to_uint8_255(images, bins)
    nrow = nrow or max(1, int(math.ceil(math.sqrt(imgs.shape[0]))))
    grid = _grid(imgs, nrow)  # (C, H', W')
    scale = scale or default_scale(grid.shape[-1])
    save_png(grid, Path(path), scale=scale)
    return scale


def save_pairs_grid(
    top,
    bottom,
    path: Union[str, os.PathLike],
    bins: int,
    nrow: Optional[int] = None,
    scale: Optional[int] = None,
) -> int:
    """Write images `top` (N, C, H, W) each above its partner in `bottom`: rows of `nrow` from top,
    then the same `nrow` from bottom, and so on (e.g. originals above their reconstructions).
    """

    if top.shape != bottom.shape:
        raise InputError(f"cannot pair images of shapes {tuple(top.shape)} and {tuple(bottom.shape)}")
    _check_scale(scale)
    n = top.shape[0]
    nrow = nrow or min(n, 16)
    a, b = to_uint8_255(top, bins), to_uint8_255(bottom, bins)
    blocks = []
    for start in range(0, n, nrow):
        for half in (a[start : start + nrow], b[start : start + nrow]):
            blank = half.new_zeros((nrow - half.shape[0], *half.shape[1:]))  # fill the last row
            blocks.append(torch.cat([half, blank]))
    grid = _grid(torch.cat(blocks), nrow)  # (C, H', W')
    scale = scale or default_scale(grid.shape[-1])
    save_png(grid, Path(path), scale=scale)
    return scale


def save_labelled_rows(
    rows: Sequence[tuple], path: Union[str, os.PathLike], bins: int, scale: Optional[int] = None
) -> dict:
    """Write [(label, images (n, C, H, W)), ...] as one grid, one row each, its label in a left margin.

    Row i of the picture (below the margin) is exactly what save_grid writes for that row's images
    with nrow=n and the same scale. Returns {"scale", "label_width", "row_height"} in output pixels.
    """

    _check_scale(scale)
    n = rows[0][1].shape[0]
    if any(images.shape[0] != n for _, images in rows):
        raise InputError("every labelled row needs the same number of images")
    grid = _grid(torch.cat([to_uint8_255(images, bins) for _, images in rows]), n)  # (C, H', W')
    scale = scale or default_scale(grid.shape[-1])
    body = _to_pil(grid, scale)
    row_height = (rows[0][1].shape[-2] + PADDING) * scale  # one row's stride in the picture
    picture, label_width = _with_labels(body, [label for label, _ in rows], row_height, PADDING * scale)

    with atomic_path(Path(path)) as tmp:
        picture.save(tmp, format="PNG")
    return {"scale": scale, "label_width": label_width, "row_height": row_height}


def save_labelled_columns(
    images, labels: Sequence[str], path: Union[str, os.PathLike], bins: int, scale: Optional[int] = None
) -> dict:
    """Write images (N, C, H, W) as a grid of len(labels) columns, each column's label in a top margin.

    The picture below the margin is exactly what save_grid writes with nrow=len(labels) and the
    same scale. Returns {"scale", "label_height", "column_width"} in output pixels.
    """

    _check_scale(scale)
    if not labels or images.shape[0] % len(labels):
        raise InputError(f"{images.shape[0]} images do not fill rows of {len(labels)} labelled columns")
    grid = _grid(to_uint8_255(images, bins), len(labels))  # (C, H', W')
    scale = scale or default_scale(grid.shape[-1])
    body = _to_pil(grid, scale)
    pad = PADDING * scale
    column_width = (images.shape[-1] + PADDING) * scale  # one column's stride in the picture
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    for size in range(max(8, min(32, (column_width - pad) // 3)), 7, -1):  # the largest that fits every column
        font = _font(size)
        boxes = [measure.textbbox((0, 0), text, font=font) for text in labels]
        if max(box[2] - box[0] for box in boxes) <= column_width - pad:
            break
    label_height = max(box[3] - box[1] for box in boxes) + 2 * max(pad, 4)
    picture = Image.new(body.mode, (body.width, body.height + label_height), 0)
    picture.paste(body, (0, label_height))
    draw = ImageDraw.Draw(picture)
    white = 255 if body.mode == "L" else (255, 255, 255)
    for j, (text, box) in enumerate(zip(labels, boxes)):
        x = j * column_width + pad + (column_width - pad - (box[2] - box[0])) // 2 - box[0]
        draw.text((x, max(pad, 4) - box[1]), text, fill=white, font=font)
    with atomic_path(Path(path)) as tmp:
        picture.save(tmp, format="PNG")
    return {"scale": scale, "label_height": label_height, "column_width": column_width}


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _with_labels(body, labels: Sequence[str], row_height: int, pad: int):
    """(body with a black left margin holding each row's label in white, the margin's width)."""

    font = _font(max(10, min(32, (row_height - pad) // 3)))
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    boxes = [measure.textbbox((0, 0), text, font=font) for text in labels]
    label_width = max(box[2] - box[0] for box in boxes) + 2 * max(pad, 4)
    picture = Image.new(body.mode, (body.width + label_width, body.height), 0)
    picture.paste(body, (label_width, 0))
    draw = ImageDraw.Draw(picture)
    white = 255 if body.mode == "L" else (255, 255, 255)
    for i, (text, box) in enumerate(zip(labels, boxes)):
        y = i * row_height + pad + (row_height - pad - (box[3] - box[1])) // 2 - box[1]
        draw.text((max(pad, 4) - box[0], y), text, fill=white, font=font)
    return picture, label_width


def load_images(paths: Sequence[str], channels: int, height: int, width: int, bins: int):
    """PNG/JPEG files -> uint8 (N, C, H, W) with values in [0, bins-1] (inverse of the grid scaling)."""

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
