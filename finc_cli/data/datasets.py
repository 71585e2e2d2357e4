"""Dataset loaders: standard on-disk image formats read into uint8 (C, H, W) tensors, no labels."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from finc_cli.data.celeba import celeba64_batch, celeba64_from_file
from finc_cli.data.safe_pickle import load_pickle
from finc_cli.dataset_shapes import DATASETS, DatasetInfo, dataset_info
from finc_cli.errors import DatasetError

__all__ = [
    "CelebAImages",
    "dataset_info",
    "DatasetInfo",
    "DATASETS",
    "ENV_VAR",
    "check_split",
    "ImageTensorDataset",
    "read_split",
    "recipe",
    "RECIPE_VERSION",
    "resolve_data_dir",
    "source_files",
    "SPLITS",
]


SPLITS: tuple[str, ...] = ("train", "val", "test")
ENV_VAR = "FINC_DATA_DIR"
_FIX = f"pass --data-dir DIR or set {ENV_VAR}"
# Validation images held out of the official training set (the usual sizes in the flow literature).
_VAL_SIZE = {"mnist": 5000, "cifar10": 5000, "imagenet32": 10000, "imagenet64": 10000}
_SPLIT_SEED = 0
RECIPE_VERSION = 2  # bump when the images a split yields change (a prepared cache of an older recipe is stale)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """Explicit argument > $FINC_DATA_DIR > None."""
    chosen = data_dir if data_dir else os.environ.get(ENV_VAR) or None
    return Path(chosen).expanduser() if chosen else None


# ---------------------------------------------------------------------------------------------
# datasets


class ImageTensorDataset(Dataset):
    """All images in memory as one uint8 tensor `images` (N, C, H, W); `ds[i]` is (C, H, W).

    When `transform` is set (training augmentation), it also accepts a batch (B, C, H, W), so
    training code may index `ds.images` directly and call `ds.transform` on the batch.
    """

    def __init__(self, images: torch.Tensor, transform: Callable | None = None):
        assert images.dtype == torch.uint8 and images.ndim == 4, (images.dtype, images.shape)
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.images[i]  # (C, H, W)
        return self.transform(x) if self.transform is not None else x

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        """The images at `idx` as one uint8 batch (B, C, H, W), not augmented."""
        return self.images[idx]


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


# ---------------------------------------------------------------------------------------------
# entry point


def check_split(name: str, split: str) -> None:
    dataset_info(name)
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def _root(name: str, data_dir: str | os.PathLike | None) -> Path:
    root = resolve_data_dir(data_dir)
    if root is None:
        raise DatasetError(f"{name} needs a data directory holding {_LAYOUT[name]('DIR')}; {_FIX}")
    return root


def read_split(name: str, split: str, data_dir=None, transform: Callable | None = None) -> Dataset:
    """The split read from its source files (no cache): images in memory, CelebA decoded lazily."""
    check_split(name, split)
    if name == "digits":
        return ImageTensorDataset(torch.from_numpy(_digits(split)), transform)
    root = _root(name, data_dir)
    if name == "celeba64":
        return CelebAImages(_celeba_files(root, split), transform)
    parts = _LOADERS[name](root, "test" if split == "test" else "train")
    n = sum(len(p) for p in parts)
    idx = np.arange(n) if split == "test" else _holdout(n, _VAL_SIZE[name], name)[split]
    return ImageTensorDataset(torch.from_numpy(_take(parts, idx)), transform)


def source_files(name: str, split: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The files (and, for CelebA, the image folder) that `split` of `name` is read from."""
    check_split(name, split)
    if name == "digits":
        import sklearn.datasets

        return [Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"]
    root = _root(name, data_dir)
    if name == "celeba64":
        folder = _celeba_folder(root)
        return [folder / "list_eval_partition.txt", folder / "img_align_celeba"]
    return _FILES[name](root, "test" if split == "test" else "train")


def recipe(name: str) -> dict:
    """What turns the sources into a split's images; a prepared cache made with another recipe is stale."""
    out = {"version": RECIPE_VERSION, "split_seed": _SPLIT_SEED, "val_size": _VAL_SIZE.get(name)}
    if name == "celeba64":
        out.update(crop=CelebAImages.crop, size=CelebAImages.size)
    return out


def _holdout(n: int, val_size: int, name: str) -> dict[str, np.ndarray]:
    """Fixed-seed split of n training images into sorted train / val indices."""
    if n < 2:
        raise DatasetError(f"{name}: need at least 2 training images to hold out validation, found {n}")
    n_val = min(val_size, max(1, n // 10))  # small copies (tests, subsets) keep 90% for training
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_SPLIT_SEED)).numpy()
    return {"val": np.sort(perm[:n_val]), "train": np.sort(perm[n_val:])}


def _take(parts: list[np.ndarray], idx: np.ndarray) -> np.ndarray:
    """Rows `idx` (sorted) of the concatenated `parts`, dropping each part once copied.

    ImageNet64 is ~16 GB: copying part by part into one lazily committed array keeps the peak
    near one copy of the data instead of two.
    """
    out = np.empty((len(idx), *parts[0].shape[1:]), dtype=np.uint8)
    start = filled = 0
    for k in range(len(parts)):
        part, parts[k] = parts[k], None
        lo, hi = np.searchsorted(idx, [start, start + len(part)])
        out[filled : filled + hi - lo] = part[idx[lo:hi] - start]
        start, filled = start + len(part), filled + hi - lo
    return out


# ---------------------------------------------------------------------------------------------
# digits (scikit-learn, offline)


def _digits(split: str) -> np.ndarray:
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.uint8)[:, None]  # (1797, 8, 8) -> (1797, 1, 8, 8)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(_SPLIT_SEED)).numpy()
    parts = {"test": perm[:360], "val": perm[360:540], "train": perm[540:]}
    return images[np.sort(parts[split])]


# ---------------------------------------------------------------------------------------------
# MNIST idx files


_MNIST_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}


def _find_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _mnist_files(root: Path, split: str) -> list[Path]:
    name = _MNIST_FILES[split]
    for folder in (root / "MNIST" / "raw", root / "raw", root):
        path = _find_file(folder, name)
        if path is not None:
            return [path]
    raise DatasetError(f"mnist not found: expected {_LAYOUT['mnist'](root)}; {_FIX}")


def _mnist(root: Path, split: str) -> list[np.ndarray]:
    return [_read_idx_images(path, 28, 28) for path in _mnist_files(root, split)]


def _read_idx_images(path: Path, height: int, width: int) -> np.ndarray:
    """An idx3 uint8 image file (magic 2051, big-endian dims), gzipped or not, as (N, 1, H, W).

    finc keeps its own reader rather than torchvision's `read_image_file`: that one reads only the
    extracted files, checks them with `assert` statements (gone under `python -O`, and a bare
    AssertionError otherwise), while finc also reads the .gz files as distributed and names the
    file and the fix when one is truncated, padded or not an image file. `finc data download mnist`
    does use torchvision's downloader, which writes exactly the layout read here.
    """
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"cannot read idx file {path}: {e}") from None
    if len(raw) < 16:
        raise DatasetError(f"idx file {path} is truncated: {len(raw)} bytes, header needs 16")
    magic, n, h, w = np.frombuffer(raw[:16], dtype=">i4")
    if magic != 2051:
        raise DatasetError(f"idx file {path} has magic number {magic}, expected 2051 (uint8 images)")
    if (h, w) != (height, width):
        raise DatasetError(f"idx file {path} holds {h}x{w} images, expected {height}x{width}")
    if len(raw) != 16 + n * h * w:
        raise DatasetError(f"idx file {path} is truncated or padded: {len(raw)} bytes, expected {16 + n * h * w}")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 1, h, w)


# ---------------------------------------------------------------------------------------------
# pickled batches (CIFAR-10, downsampled ImageNet): foreign files, unpickled by safe_pickle


def _images_from_rows(data: object, path: Path, size: int) -> np.ndarray:
    """(N, 3·S·S) rows of R, G, B planes -> (N, 3, S, S) uint8."""
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * size * size:
        shape = getattr(data, "shape", type(data).__name__)
        raise DatasetError(f"{path}: 'data' has shape {shape}, expected (N, {3 * size * size}) for {size}x{size} RGB")
    if data.dtype != np.uint8:
        if data.dtype.kind not in "iu" or (data.size and (data.min() < 0 or data.max() > 255)):
            raise DatasetError(f"{path}: 'data' has dtype {data.dtype}, expected uint8 pixels")
        data = data.astype(np.uint8)
    return data.reshape(-1, 3, size, size)  # row-major: (N, 3·S·S) -> (N, C, H, W)


def _batch_images(path: Path, size: int) -> np.ndarray:
    """The images of one pickled batch dict or .npz file holding `data`."""
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                if "data" not in npz.files:
                    raise DatasetError(f"{path} has keys {npz.files}, expected 'data'")
                data = npz["data"]
        except DatasetError:
            raise
        except Exception as e:  # noqa: BLE001 - a damaged npz fails anywhere in numpy: one line for the user
            raise DatasetError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    else:
        batch = load_pickle(path)
        key = b"data" if b"data" in batch else "data"
        if key not in batch:
            raise DatasetError(f"{path} has keys {sorted(map(repr, batch))}, expected 'data'")
        data = batch[key]
    return _images_from_rows(data, path, size)


# ---------------------------------------------------------------------------------------------
# CIFAR-10


def _cifar10_files(root: Path, split: str) -> list[Path]:
    names = [f"data_batch_{k}" for k in range(1, 6)] if split == "train" else ["test_batch"]
    for folder in (root / "cifar-10-batches-py", root):
        if all((folder / n).is_file() for n in names):
            return [folder / n for n in names]
    raise DatasetError(f"cifar10 not found: expected {_LAYOUT['cifar10'](root)}; {_FIX}")


def _cifar10(root: Path, split: str) -> list[np.ndarray]:
    return [_batch_images(path, 32) for path in _cifar10_files(root, split)]


# ---------------------------------------------------------------------------------------------
# downsampled ImageNet (Chrabaszcz et al. 2017)


def _imagenet_folders(root: Path, size: int) -> list[tuple[Path, Path]]:
    """(train folder, val folder) pairs of each accepted layout, in order of preference."""
    pairs = [(root / f"Imagenet{size}_train{s}", root / f"Imagenet{size}_val{s}") for s in ("", "_npz")]
    return pairs + [(root / f"imagenet{size}",) * 2, (root, root)]


def _imagenet_train_files(folder: Path) -> list[Path]:
    """train_data_batch_<k>[.npz] for k in 1..10, sorted numerically (k, not name: 10 after 9)."""
    found = [_find_batch(folder, f"train_data_batch_{k}") for k in range(1, 11)]
    return [p for p in found if p is not None]


def _find_batch(folder: Path, name: str) -> Path | None:
    """A batch file `name` as .npz (preferred: no unpickling) or as a pickle."""
    for candidate in (folder / f"{name}.npz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def _imagenet_files(root: Path, split: str, size: int) -> list[Path]:
    name = f"imagenet{size}"
    for train_dir, val_dir in _imagenet_folders(root, size):
        if split == "train":
            files = _imagenet_train_files(train_dir)
        else:
            files = [f for f in [_find_batch(val_dir, "val_data")] if f is not None]
        if files:
            return files
    raise DatasetError(f"{name} not found: expected {_LAYOUT[name](root)}; {_FIX}")


def _imagenet(root: Path, split: str, size: int) -> list[np.ndarray]:
    return [_batch_images(f, size) for f in _imagenet_files(root, split, size)]


# ---------------------------------------------------------------------------------------------
# CelebA


def _celeba_folder(root: Path) -> Path:
    for folder in (root / "celeba", root):
        if (folder / "img_align_celeba").is_dir() and (folder / "list_eval_partition.txt").is_file():
            return folder
    raise DatasetError(f"celeba64 not found: expected {_LAYOUT['celeba64'](root)}; {_FIX}")


def _celeba_files(root: Path, split: str) -> list[Path]:
    folder = _celeba_folder(root)
    images, partition = folder / "img_align_celeba", folder / "list_eval_partition.txt"
    code = str(SPLITS.index(split))  # 0 train, 1 val, 2 test
    files = [images / f for f, c in _read_partition(partition) if c == code]
    if not files:
        raise DatasetError(f"celeba64: {partition} lists no images for split {split!r} (code {code})")
    for path in files[:1] + files[-1:]:  # cheap check now; the rest fail clearly on load
        if not path.is_file():
            raise DatasetError(f"celeba64: image listed in {partition} is missing: {path}")
    return files


def _read_partition(path: Path) -> list[tuple[str, str]]:
    """Lines "000001.jpg 0" -> [("000001.jpg", "0"), ...]."""
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DatasetError(f"{path}:{lineno}: expected '<image>.jpg <0|1|2>', got {line.strip()!r}")
        rows.append((fields[0], fields[1]))
    return rows


# ---------------------------------------------------------------------------------------------
# registry: loader and expected layout (for error messages) per dataset


# The files each dataset's official "train" or "test" split is read from.
_FILES: dict[str, Callable[[Path, str], list[Path]]] = {
    "mnist": _mnist_files,
    "cifar10": _cifar10_files,
    "imagenet32": lambda root, split: _imagenet_files(root, split, 32),
    "imagenet64": lambda root, split: _imagenet_files(root, split, 64),
}

# Each loader returns the official "train" or "test" split as parts (one per file) of (N, C, H, W).
_LOADERS: dict[str, Callable[[Path, str], list[np.ndarray]]] = {
    "mnist": _mnist,
    "cifar10": _cifar10,
    "imagenet32": lambda root, split: _imagenet(root, split, 32),
    "imagenet64": lambda root, split: _imagenet(root, split, 64),
}

_LAYOUT: dict[str, Callable[[Path | str], str]] = {
    "mnist": lambda r: (
        f"{Path(r) / 'MNIST/raw'}/train-images-idx3-ubyte and t10k-images-idx3-ubyte (optionally .gz), "
        f"or the same files in {Path(r) / 'raw'} or {r}"
    ),
    "cifar10": lambda r: (
        f"{Path(r) / 'cifar-10-batches-py'}/data_batch_1..5 and test_batch (the python version from the CIFAR-10 site)"
    ),
    "imagenet32": lambda r: _imagenet_layout(r, 32),
    "imagenet64": lambda r: _imagenet_layout(r, 64),
    "celeba64": lambda r: (
        f"{Path(r) / 'celeba'}/img_align_celeba/*.jpg and {Path(r) / 'celeba'}/list_eval_partition.txt"
    ),
}


def _imagenet_layout(r: Path | str, s: int) -> str:
    return (
        f"{Path(r) / f'Imagenet{s}_train'}/train_data_batch_1..10 and {Path(r) / f'Imagenet{s}_val'}/val_data "
        f"(or Imagenet{s}_train_npz/ + Imagenet{s}_val_npz/ with .npz files, or all in {Path(r) / f'imagenet{s}'}/)"
    )
