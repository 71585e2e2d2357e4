"""CelebA: celeba/img_align_celeba/*.jpg and list_eval_partition.txt, read lazily as 64×64 crops."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from finc_cli.data.celeba import celeba64_batch, celeba64_from_file
from finc_cli.data.data_dir import not_found
from finc_cli.errors import DatasetError

__all__ = [
    "CelebAImages",
    "PARTITION",
    "celeba_files",
    "celeba_folder",
    "celeba_sources",
    "encode_jpeg",
    "layout",
    "read_partition",
    "write_celeba",
]

PARTITION = "list_eval_partition.txt"
_IMAGES = "img_align_celeba"
_CODES = {"train": "0", "val": "1", "test": "2"}  # the split codes of the partition file


class CelebAImages(Dataset):
    """CelebA read lazily: centre crop 148×148, antialiased bilinear resize to 64×64 (`data/celeba.py`)."""

    crop, size = 148, 64

    def __init__(self, files: list[Path], transform: Callable | None = None):
        self.files = files
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        """The images at `idx` decoded as one uint8 batch (B, 3, 64, 64), not augmented."""
        return celeba64_batch([self.files[int(i)] for i in idx])

    def __getitem__(self, i: int) -> torch.Tensor:
        x = celeba64_from_file(self.files[i])
        return self.transform(x) if self.transform is not None else x


def layout(root: Path | str) -> str:
    return f"{Path(root) / 'celeba'}/{_IMAGES}/*.jpg and {Path(root) / 'celeba'}/{PARTITION}"


def celeba_folder(root: Path) -> Path:
    """The folder holding img_align_celeba/ and the partition file: ROOT/celeba or ROOT."""
    for folder in (root / "celeba", root):
        if (folder / _IMAGES).is_dir() and (folder / PARTITION).is_file():
            return folder
    raise not_found("celeba64", layout(root))


def celeba_sources(root: Path) -> list[Path]:
    """The partition file and the image folder, which every split is read from."""
    folder = celeba_folder(root)
    return [folder / PARTITION, folder / _IMAGES]


def celeba_files(root: Path, split: str) -> list[Path]:
    """The image files the partition file assigns to `split`."""
    partition, images = celeba_sources(root)
    code = _CODES[split]
    files = [images / f for f, c in read_partition(partition) if c == code]
    if not files:
        raise DatasetError(f"celeba64: {partition} lists no images for split {split!r} (code {code})")
    for path in files[:1] + files[-1:]:  # cheap check now; the rest fail clearly on load
        if not path.is_file():
            raise DatasetError(f"celeba64: image listed in {partition} is missing: {path}")
    return files


def read_partition(path: Path) -> list[tuple[str, str]]:
    """Lines "000001.jpg 0" -> [("000001.jpg", "0"), ...]."""
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in _CODES.values():
            raise DatasetError(f"{path}:{lineno}: expected '<image>.jpg <0|1|2>', got {line.strip()!r}")
        rows.append((fields[0], fields[1]))
    return rows


def write_celeba(root: Path, codes: Sequence[int], images: Iterable, quality: int = 75) -> list[Path]:
    """ROOT/celeba/img_align_celeba/000001.jpg … and list_eval_partition.txt ("000001.jpg 0|1|2").

    `images` yields, per entry of `codes`, a uint8 (3, H, W) array (saved as a JPEG of `quality`) or
    the bytes of an encoded JPEG (written as they are); it may be a generator, one image at a time.
    """
    folder = Path(root) / "celeba"
    (folder / _IMAGES).mkdir(parents=True, exist_ok=True)
    names = [f"{i:06d}.jpg" for i in range(1, len(codes) + 1)]
    for name, image in zip(names, images, strict=True):
        (folder / _IMAGES / name).write_bytes(image if isinstance(image, bytes) else encode_jpeg(image, quality))
    (folder / PARTITION).write_text("".join(f"{name} {code}\n" for name, code in zip(names, codes)))
    return [folder / PARTITION, folder / _IMAGES]


def encode_jpeg(image: np.ndarray, quality: int = 75) -> bytes:
    """uint8 (3, H, W) -> the bytes of a JPEG of `quality`."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
