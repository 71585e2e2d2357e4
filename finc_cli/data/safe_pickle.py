"""A restricted unpickler for foreign batch files (CIFAR-10, downsampled ImageNet): numpy arrays only."""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path

import numpy as np

try:
    from numpy._core import multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray

from finc_cli.errors import DatasetError

__all__ = [
    "load_pickle",
]


def _frombuffer(buf: object, dtype: np.dtype, shape: tuple, order: str) -> np.ndarray:
    """numpy's own protocol-5 array rebuild, restated so that nothing else from its module is reachable."""
    if np.dtype(dtype).hasobject:
        raise pickle.UnpicklingError("refusing an object array")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def _numpy_globals() -> dict[tuple[str, str], object]:
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):  # pickles name the numpy 1 or numpy 2 module path
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = _frombuffer  # pickle protocol 5
    allowed[("_codecs", "encode")] = codecs.encode  # bytes pickled by Python 3 at protocol 2
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Refuses every global except what numpy arrays need to rebuild (no arbitrary code)."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def load_pickle(path: Path) -> dict:
    """The dict pickled in `path`, rebuilt by `_ArrayUnpickler`; DatasetError (one line) on any failure."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - anything from a corrupt or hostile file: report it, never a traceback
        raise DatasetError(f"cannot unpickle {path}: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{path} holds a {type(obj).__name__}, expected a dict with key 'data'")
    return obj
