"""Batch files of RGB rows (CIFAR-10, downsampled ImageNet): a pickled dict or an .npz whose `data` is (N, 3·S·S)."""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np

from finc_cli.data.safe_pickle import load_pickle
from finc_cli.errors import DatasetError

__all__ = ["images_from_rows", "read_batch_images", "to_rows", "write_pickle", "write_py2_pickle"]


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
    return images_from_rows(data, path, size)


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
