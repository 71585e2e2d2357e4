"""MNIST idx files (torchvision layout): MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte, optionally gzipped."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from finc_cli.data.data_dir import first_file, not_found
from finc_cli.data.labels import Labels, check_classes
from finc_cli.errors import DatasetError

__all__ = [
    "layout",
    "mnist_files",
    "mnist_label_files",
    "read_idx_count",
    "read_idx_images",
    "read_idx_labels",
    "read_mnist",
    "read_mnist_labels",
    "write_idx",
    "write_mnist",
]

_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
_LABELS = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}
_FIX = (
    "put the split's label file from the MNIST site there (`finc data download mnist` into an empty folder fetches it)"
)


def layout(root: Path | str) -> str:
    return (
        f"{Path(root) / 'MNIST/raw'}/train-images-idx3-ubyte and t10k-images-idx3-ubyte (optionally .gz), "
        f"or the same files in {Path(root) / 'raw'} or {root}"
    )


def mnist_files(root: Path, split: str) -> list[Path]:
    """The idx file of the official "train" or "test" split."""
    name = _FILES[split]
    for folder in (root / "MNIST" / "raw", root / "raw", root):
        path = first_file(folder / name, folder / f"{name}.gz")
        if path is not None:
            return [path]
    raise not_found("mnist", layout(root))


def read_mnist(root: Path, split: str) -> list[np.ndarray]:
    return [read_idx_images(path, 28, 28) for path in mnist_files(root, split)]


def mnist_label_files(root: Path, split: str) -> list[Path]:
    """The idx1 label file beside the split's image file (same folder, gzipped or not)."""
    (images,) = mnist_files(root, split)
    name = _LABELS[split]
    path = first_file(images.parent / name, images.parent / f"{name}.gz")
    if path is None:
        raise DatasetError(f"mnist labels not found: expected {images.parent / name}[.gz] beside {images.name}; {_FIX}")
    return [path]


def read_mnist_labels(root: Path, split: str) -> Labels:
    """The classes 0..9 of the official split's images, checked against the image file's count."""
    (images,), (path,) = mnist_files(root, split), mnist_label_files(root, split)
    values = read_idx_labels(path)
    n = read_idx_count(images)
    if len(values) != n:
        raise DatasetError(f"idx label file {path} holds {len(values)} labels for the {n} images of {images}; {_FIX}")
    return Labels(check_classes(values, 0, 9, path, _FIX), "class", 10)


def _read(path: Path, size: int = -1) -> bytes:
    """The first `size` bytes (all with -1) of an idx file, gunzipped if it ends in .gz."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            return f.read(size)
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"cannot read idx file {path}: {e}") from None


def read_idx_count(path: Path) -> int:
    """The number of items an idx file's header declares (its first 8 bytes: magic, count)."""
    raw = _read(path, 8)
    if len(raw) < 8:
        raise DatasetError(f"idx file {path} is truncated: {len(raw)} bytes, header needs 8")
    return int(np.frombuffer(raw, dtype=">i4")[1])


def read_idx_labels(path: Path) -> np.ndarray:
    """An idx1 uint8 label file (magic 2049, big-endian count), gzipped or not, as int64 (N,)."""
    raw = _read(path)
    if len(raw) < 8:
        raise DatasetError(f"idx label file {path} is truncated: {len(raw)} bytes, header needs 8; {_FIX}")
    magic, n = np.frombuffer(raw[:8], dtype=">i4")
    if magic != 2049:
        raise DatasetError(f"idx file {path} has magic number {magic}, expected 2049 (uint8 labels); {_FIX}")
    if len(raw) != 8 + n:
        raise DatasetError(f"idx label file {path} is truncated or padded: {len(raw)} bytes, expected {8 + n}; {_FIX}")
    return np.frombuffer(raw, dtype=np.uint8, offset=8).astype(np.int64)


def read_idx_images(path: Path, height: int, width: int) -> np.ndarray:
    """An idx3 uint8 image file (magic 2051, big-endian dims), gzipped or not, as (N, 1, H, W).

    finc keeps its own reader rather than torchvision's `read_image_file`: that one reads only the
    extracted files, checks them with `assert` statements (gone under `python -O`, and a bare
    AssertionError otherwise), while finc also reads the .gz files as distributed and names the
    file and the fix when one is truncated, padded or not an image file. `finc data download mnist`
    does use torchvision's downloader, which writes exactly the layout read here.
    """
    raw = _read(path)
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


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """A uint8 array as an idx file: magic 2048 + ndim (2051 images (N, H, W), 2049 labels (N,)), big-endian dims.

    Images (N, 1, H, W) are written as (N, H, W). With `gz`, PATH.gz (no timestamp: same bytes each time).
    """
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if array.ndim == 4:
        array = array[:, 0]  # (N, 1, H, W) -> (N, H, W)
    header = np.array([2048 + array.ndim, *array.shape], dtype=">i4").tobytes()
    raw = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw, mtime=0)
    path.write_bytes(raw)
    return path


def write_mnist(
    root: Path,
    train: np.ndarray,
    test: np.ndarray,
    gz: bool = False,
    train_labels: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
) -> list[Path]:
    """ROOT/MNIST/raw/{train,t10k}-images-idx3-ubyte[.gz] holding uint8 (N, 1, 28, 28) images.

    With `train_labels` / `test_labels` (classes 0..9, one per image), also the split's
    {train,t10k}-labels-idx1-ubyte[.gz]; without, no label file (an images-only folder).
    """
    raw = Path(root) / "MNIST" / "raw"
    paths = []
    for split, images, labels in (("train", train, train_labels), ("test", test, test_labels)):
        paths.append(write_idx(raw / _FILES[split], images, gz))
        if labels is not None:
            assert len(labels) == len(images), (len(labels), len(images))
            paths.append(write_idx(raw / _LABELS[split], np.asarray(labels), gz))
    return paths
