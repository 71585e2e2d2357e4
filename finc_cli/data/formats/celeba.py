"""CelebA: celeba/img_align_celeba/*.jpg, list_eval_partition.txt and list_attr_celeba.txt; 64×64 crops, read lazily."""

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
from finc_cli.data.labels import Labels
from finc_cli.errors import DatasetError

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_NAMES",
    "CelebAImages",
    "PARTITION",
    "celeba_attribute_files",
    "celeba_attributes",
    "celeba_files",
    "celeba_folder",
    "celeba_sources",
    "encode_jpeg",
    "layout",
    "read_attributes",
    "read_partition",
    "write_celeba",
]

PARTITION = "list_eval_partition.txt"
ATTRIBUTES = "list_attr_celeba.txt"  # line 1: image count; line 2: the attribute names; then "<image>.jpg ±1 …"
# CelebA's 40 attributes, in the order of its attribute file.
ATTRIBUTE_NAMES = tuple(
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young".split()
)
_FIX = "put CelebA's list_attr_celeba.txt there (`finc data download celeba64` into an empty folder fetches it)"
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


def celeba_attribute_files(root: Path) -> list[Path]:
    """The attribute file beside the partition file (DatasetError naming it when it is missing)."""
    path = celeba_sources(root)[0].parent / ATTRIBUTES
    if not path.is_file():
        raise DatasetError(f"celeba64 attributes not found: expected {path}; {_FIX}")
    return [path]


def celeba_attributes(root: Path, split: str) -> Labels:
    """The (N, 40) {0, 1} attributes of the split's images, in the order of `celeba_files`."""
    (path,) = celeba_attribute_files(root)
    names, rows = read_attributes(path)
    if len(names) != len(ATTRIBUTE_NAMES):
        raise DatasetError(f"{path} names {len(names)} attributes, expected CelebA's {len(ATTRIBUTE_NAMES)}; {_FIX}")
    files = celeba_files(root, split)
    missing = next((f.name for f in files if f.name not in rows), None)
    if missing is not None:
        raise DatasetError(f"{path} has no attributes for {missing}, which {PARTITION} lists; {_FIX}")
    values = np.array([rows[f.name] for f in files], dtype=np.int64).reshape(len(files), len(names))
    return Labels((values + 1) // 2, "attributes", len(names), names)  # -1, 1 -> 0, 1


def read_attributes(path: Path) -> tuple[tuple[str, ...], dict[str, list[int]]]:
    """(attribute names, {image file name: its values, each -1 or 1}) of a list_attr_celeba.txt."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read {path}: {e}; {_FIX}") from None
    if len(lines) < 2 or not lines[0].strip().isdigit():
        got = lines[0].strip() if lines else "an empty file"
        raise DatasetError(f"{path}:1: expected the number of images, got {got!r}; {_FIX}")
    names, rows = tuple(lines[1].split()), {}
    for lineno, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(names) + 1 or any(v not in ("-1", "1") for v in fields[1:]):
            raise DatasetError(
                f"{path}:{lineno}: expected '<image>.jpg' and {len(names)} values of -1 or 1, "
                f"got {len(fields) - 1} fields after {fields[0]!r}; {_FIX}"
            )
        if fields[0] in rows:
            raise DatasetError(f"{path}:{lineno}: {fields[0]} is listed twice; {_FIX}")
        rows[fields[0]] = [int(v) for v in fields[1:]]
    if len(rows) != int(lines[0]):
        raise DatasetError(
            f"{path} is truncated or padded: its first line says {int(lines[0])} images, it lists {len(rows)}; {_FIX}"
        )
    return names, rows


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


def write_celeba(
    root: Path,
    codes: Sequence[int],
    images: Iterable,
    quality: int = 75,
    attributes: np.ndarray | None = None,
    attribute_names: Sequence[str] = ATTRIBUTE_NAMES,
) -> list[Path]:
    """ROOT/celeba/img_align_celeba/000001.jpg … and list_eval_partition.txt ("000001.jpg 0|1|2").

    `images` yields, per entry of `codes`, a uint8 (3, H, W) array (saved as a JPEG of `quality`) or
    the bytes of an encoded JPEG (written as they are); it may be a generator, one image at a time.
    With `attributes` ((N, A) of {0, 1}, a row per entry of `codes`), also list_attr_celeba.txt as
    CelebA lays it out: the count, the A `attribute_names`, then "000001.jpg -1  1 …" (0 written -1).
    """
    folder = Path(root) / "celeba"
    (folder / _IMAGES).mkdir(parents=True, exist_ok=True)
    names = [f"{i:06d}.jpg" for i in range(1, len(codes) + 1)]
    for name, image in zip(names, images, strict=True):
        (folder / _IMAGES / name).write_bytes(image if isinstance(image, bytes) else encode_jpeg(image, quality))
    (folder / PARTITION).write_text("".join(f"{name} {code}\n" for name, code in zip(names, codes)))
    if attributes is not None:
        signs = 2 * np.asarray(attributes, dtype=np.int64) - 1  # 0, 1 -> -1, 1
        assert signs.shape == (len(names), len(attribute_names)), (signs.shape, len(names), len(attribute_names))
        rows = ["".join([name, *(f" {v:2d}" for v in row)]) + "\n" for name, row in zip(names, signs)]
        (folder / ATTRIBUTES).write_text(f"{len(names)}\n{' '.join(attribute_names)} \n" + "".join(rows))
    return [folder / PARTITION, folder / _IMAGES]


def encode_jpeg(image: np.ndarray, quality: int = 75) -> bytes:
    """uint8 (3, H, W) -> the bytes of a JPEG of `quality`."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
