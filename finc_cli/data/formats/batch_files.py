"""Batch files of RGB rows (CIFAR-10, downsampled ImageNet): a pickled dict or an .npz whose `data` is (N, 3·S·S)."""

from __future__ import annotations

import contextlib
import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

from finc_cli.data.safe_pickle import load_pickle
from finc_cli.errors import DatasetError

__all__ = ["images_from_rows", "read_batch_images", "read_batch_labels", "to_rows", "write_pickle", "write_py2_pickle"]


def images_from_rows(data: object, path: Path, size: int) -> np.ndarray:
    """(N, 3·S·S) rows of R, G, B planes -> (N, 3, S, S) uint8."""
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * size * size:
        shape = getattr(data, "shape", type(data).__name__)
        raise DatasetError(f"{path}: 'data' has shape {shape}, expected (N, {3 * size * size}) for {size}x{size} RGB")
    if data.dtype != np.uint8:
        if data.dtype.kind not in "iu" or (data.size and (data.min() < 0 or data.max() > 255)):
            raise DatasetError(f"{path}: 'data' has dtype {data.dtype}, expected uint8 pixels")
        data = data.astype(np.uint8)
    return data.reshape(-1, 3, size, size)  # row-major: (N, 3·S·S) -> (N, C, H, W)


def read_batch_images(path: Path, size: int) -> np.ndarray:
    """The images of one pickled batch dict or .npz file holding `data` (foreign pickles unpickled safely)."""
    if path.suffix == ".npz":
        with _open_npz(path, f"cannot read {path}") as npz:
            if "data" not in npz.files:
                raise DatasetError(f"{path} has keys {npz.files}, expected 'data'")
            data = npz["data"]
    else:
        batch = load_pickle(path)
        key = b"data" if b"data" in batch else "data"
        if key not in batch:
            raise DatasetError(f"{path} has keys {sorted(map(repr, batch))}, expected 'data'")
        data = batch[key]
    return images_from_rows(data, path, size)


def read_batch_labels(path: Path, fix: str) -> np.ndarray:
    """The `labels` of one pickled batch dict or .npz file, one per row of its `data` (not range-checked).

    An .npz's `data` is not read: its row count comes from the array's header. A pickle is
    unpickled whole (its labels sit beside its pixels).
    """
    if path.suffix == ".npz":
        with _open_npz(path, f"cannot read the labels of {path}", f"; {fix}") as npz:
            if "labels" not in npz.files:
                raise DatasetError(f"{path} has keys {npz.files} and no 'labels'; {fix}")
            labels, rows = npz["labels"], _npz_rows(path, npz, "data")
    else:
        batch = load_pickle(path)
        key, data = b"labels" if b"labels" in batch else "labels", batch.get(b"data", batch.get("data"))
        if key not in batch:
            raise DatasetError(f"{path} has keys {sorted(map(repr, batch))} and no 'labels'; {fix}")
        labels, rows = batch[key], getattr(data, "shape", (None,))[0]
    try:
        labels = np.asarray(labels)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{path}: 'labels' is not a list of integers ({e}); {fix}") from None
    if labels.ndim != 1 or len(labels) != rows:
        raise DatasetError(f"{path} holds {labels.shape} labels for {rows} images in 'data', expected one each; {fix}")
    return labels


@contextlib.contextmanager
def _open_npz(path: Path, what: str, fix: str = "") -> Iterator:
    """np.load(path) without pickles; a damaged file fails anywhere in numpy, inside the `with` too: that
    becomes one DatasetError line, "{what}: {error}{fix}" (a DatasetError raised inside passes unchanged)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            yield npz
    except DatasetError:
        raise
    except Exception as e:  # noqa: BLE001 - one line for the user
        raise DatasetError(f"{what}: {type(e).__name__}: {e}{fix}") from None


def _npz_rows(path: Path, npz, key: str) -> int:
    """The first dimension of array `key` in an .npz: from its .npy header alone, else by reading it."""
    if key not in npz.files:
        raise DatasetError(f"{path} has keys {npz.files}, expected {key!r}")
    try:
        with zipfile.ZipFile(path) as z, z.open(f"{key}.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape = read(f)[0]
    except (KeyError, ValueError, OSError, zipfile.BadZipFile):  # an unusual member or header version
        shape = npz[key].shape
    return shape[0] if shape else 0


def to_rows(images: np.ndarray) -> np.ndarray:
    """(N, 3, S, S) -> (N, 3·S·S): R, G, B planes in order, as the batch files store them."""
    return np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), -1)


def write_pickle(path: Path, obj: object, protocol: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` (BINSTRING), as in the CIFAR-10 python batches, pickled by Python 2:
    their keys load as str with encoding="latin1" (torchvision) and as bytes with encoding="bytes" (finc)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes) -> None:
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def write_py2_pickle(path: Path, obj: object) -> Path:
    """`obj` pickled (protocol 2) as Python 2 wrote it: every bytes object a Python 2 str."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path
