"""Synthetic datasets in the real on-disk formats for the data benchmark: written once, prepared, warmed.

The files are written by each format's own writer (`finc_cli.data.formats`), so the benchmark reads
exactly what the readers read for real data.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from finc_cli.data.cache import prepare
from finc_cli.data.datasets import source_files
from finc_cli.data.formats.celeba import encode_jpeg, write_celeba
from finc_cli.data.formats.cifar10 import write_cifar10
from finc_cli.data.formats.imagenet import write_imagenet
from finc_cli.data.formats.mnist import write_mnist
from finc_cli.errors import InputError

__all__ = [
    "CELEBA_FILES",
    "CHUNK",
    "DEFAULT_IMAGES",
    "DEFAULT_ROOT",
    "child_parser",
    "dir_args",
    "ensure",
    "read_by",
    "warm",
    "write_synthetic",
]

# Official training images per synthetic set: MNIST's, CIFAR-10's and CelebA's real counts; 100k for ImageNet64.
DEFAULT_IMAGES = {"mnist": 60_000, "cifar10": 50_000, "imagenet32": 100_000, "imagenet64": 100_000, "celeba64": 162_770}
CELEBA_FILES = 202_599  # images in CelebA's official partition (162,770 train, 19,867 val, 19,962 test)
DEFAULT_ROOT = Path(tempfile.gettempdir()) / "finc-bench-data"
SYNTHETIC_VERSION = 2  # 2: the CIFAR-10 batches are pickled as Python 2 wrote them, labels are constant
JPEG_QUALITY = 90  # with the noise of `_pixels`: ~10 KB per 178×218 image, as CelebA's aligned JPEGs
CHUNK = 512  # images generated at a time


def _held_out(n: int) -> int:
    """Images in the official test (or CelebA val and test) files beside n training images."""
    return max(2, n // 8)


def _pixels(rng: np.random.Generator, n: int, c: int, h: int, w: int) -> np.ndarray:
    """(n, c, h, w) uint8: a random smooth gradient and wave per image plus ±8 of noise (compresses like a photo)."""
    y = np.linspace(-1, 1, h, dtype=np.float32)[:, None]  # (H, 1)
    x = np.linspace(-1, 1, w, dtype=np.float32)[None, :]  # (1, W)
    mean, a, b = (rng.uniform(lo, hi, (n, c, 1, 1)).astype(np.float32) for lo, hi in ((60, 190), (-60, 60), (-60, 60)))
    freq = rng.uniform(2, 8, (n, 1, 1, 1)).astype(np.float32)
    smooth = mean + a * y + b * x + 40 * np.sin(3 * freq * x * y + a / 20)  # (n, c, h, w)
    return np.clip(smooth + rng.integers(-8, 9, smooth.shape, dtype=np.int16), 0, 255).astype(np.uint8)


def _chunks(rng: np.random.Generator, n: int, c: int, h: int, w: int):
    """`_pixels` for n images, CHUNK at a time."""
    for start in range(0, n, CHUNK):
        yield _pixels(rng, min(CHUNK, n - start), c, h, w)


def _array(rng: np.random.Generator, n: int, c: int, size: int) -> np.ndarray:
    """`_pixels` for n square images as one array (n, c, S, S)."""
    return np.concatenate([*_chunks(rng, n, c, size, size), np.empty((0, c, size, size), np.uint8)])


def _mnist(root: Path, n: int, rng: np.random.Generator) -> list[Path]:
    return write_mnist(root, _array(rng, n, 1, 28), _array(rng, _held_out(n), 1, 28))


def _cifar10(root: Path, n: int, rng: np.random.Generator) -> list[Path]:
    return write_cifar10(root, _array(rng, n, 3, 32), _array(rng, _held_out(n), 3, 32))


def _imagenet(root: Path, n: int, rng: np.random.Generator, size: int) -> list[Path]:
    """Ten training batches, each generated only when it is written (ImageNet64's 100k images are 1.2 GB)."""
    batches = (_array(rng, len(p), 3, size) for p in np.array_split(np.arange(n), 10))
    return write_imagenet(root, size, batches, _array(rng, _held_out(n), 3, size))


def _celeba(root: Path, n: int, rng: np.random.Generator, files: Optional[int] = None) -> list[Path]:
    """n training JPEGs of CelebA's aligned size (178×218) and held-out ones beside them.

    With `files`, that many images in all (n of them train, the rest split between val and test),
    each a copy of one tiny 8×8 JPEG: a valid set whose cost is its file count, for the source check.
    """
    val = _held_out(n) if files is None else (files - n) // 2
    codes = [0] * n + [1] * val + [2] * (_held_out(n) if files is None else files - n - val)
    if files is not None:
        return write_celeba(root, codes, [encode_jpeg(_pixels(rng, 1, 3, 8, 8)[0])] * len(codes))
    images = (image for chunk in _chunks(rng, len(codes), 3, 218, 178) for image in chunk)  # (3, H, W) each
    return write_celeba(root, codes, images, quality=JPEG_QUALITY)


_WRITERS: dict[str, Callable[[Path, int, np.random.Generator], list[Path]]] = {
    "mnist": _mnist,
    "cifar10": _cifar10,
    "imagenet32": partial(_imagenet, size=32),
    "imagenet64": partial(_imagenet, size=64),
    "celeba64": _celeba,
    "celeba64-files": lambda root, n, rng: _celeba(root, n - 2 * (n // 10), rng, files=n),  # tiny JPEGs
}


def _stat(path: Path) -> dict:
    if path.is_dir():
        with os.scandir(path) as it:
            return {"entries": sum(1 for _ in it)}
    return {"size": path.stat().st_size}


def _bytes(path: Path) -> int:
    if path.is_dir():
        with os.scandir(path) as it:
            return sum(e.stat().st_size for e in it)
    return path.stat().st_size


def _complete(marker: Path, want: dict) -> bool:
    """Whether `marker` describes `want` and every file it lists is still there, whole."""
    try:
        info = json.loads(marker.read_text())
        return {k: info.get(k) for k in want} == want and all(
            _stat(marker.parent / p) == s for p, s in info["files"].items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def write_synthetic(fmt: str, root, n: int, seed: int = 0) -> dict:
    """Write `fmt` with n training images into `root` in its real layout; kept when already complete.

    Returns {format, images, held_out, written, bytes, seconds}. digits is bundled with scikit-learn:
    nothing is written.
    """
    root = Path(root)
    row = {"format": fmt, "images": n, "held_out": _held_out(n), "written": False, "bytes": None, "seconds": 0.0}
    if fmt == "digits":
        return {**row, "images": None, "held_out": None}
    if fmt not in _WRITERS:
        raise InputError(f"no synthetic writer for {fmt!r}; choose one of: digits, {', '.join(_WRITERS)}")
    if n < 10:
        raise InputError(f"a synthetic {fmt} set needs at least 10 training images, got {n}")
    marker = root / f".finc-synthetic-{fmt}.json"
    want = {"format": fmt, "images": n, "seed": seed, "version": SYNTHETIC_VERSION}
    if _complete(marker, want):
        return {**row, "bytes": json.loads(marker.read_text())["bytes"]}
    t0 = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)  # written again last: a set cut short by a crash is never taken as complete
    paths = _WRITERS[fmt](root, n, np.random.default_rng(seed))
    size = sum(_bytes(p) for p in paths)
    files = {str(p.relative_to(root)): _stat(p) for p in paths}
    marker.write_text(json.dumps({**want, "bytes": size, "files": files}, indent=1) + "\n")
    return {**row, "written": True, "bytes": size, "seconds": time.perf_counter() - t0}


def ensure(fmt: str, root, n: Optional[int] = None, cache: bool = True, splits=("train", "val")) -> dict:
    """The synthetic `fmt` in ROOT/FMT, and its `splits` prepared in ROOT/FMT/prepared when `cache`.

    Returns {data_dir, cache_dir, write_s, prepare_s}; prepare_s is None when every split was current.
    """
    folder = Path(root) / fmt
    data_dir = None if fmt == "digits" else folder
    n = n or DEFAULT_IMAGES.get(fmt, 0)
    written = write_synthetic(fmt, folder, n) if data_dir is not None else {"seconds": 0.0}
    prepare_s = None
    if cache:
        done = prepare(fmt, data_dir, folder / "prepared", splits=splits)["splits"]
        prepare_s = sum(s["seconds"] for s in done if s["written"]) if any(s["written"] for s in done) else None
    return {
        "data_dir": data_dir,
        "cache_dir": folder / "prepared",
        "write_s": written["seconds"],
        "prepare_s": prepare_s,
    }


def read_by(fmt: str, source: str, data_dir, cache_dir) -> list[Path]:
    """The files that reading the training split of `fmt` from `source` ("sources" or "cache") touches."""
    if source == "cache":
        return [Path(cache_dir) / f"{fmt}-train.npy"]
    return source_files(fmt, "train", data_dir)


def warm(paths: Sequence[Path]) -> None:
    """Read each file (and each file in a folder) once, so that the measurement finds it in the page cache."""
    buf = bytearray(16 << 20)
    for path in map(Path, paths):
        with os.scandir(path) if path.is_dir() else contextlib.nullcontext([path]) as entries:
            for entry in entries:
                with open(entry, "rb") as f:
                    while f.readinto(buf):
                        pass


def dir_args(data_dir, cache_dir) -> list[str]:
    """The --data-dir and --cache-dir arguments of a measuring process."""
    return (["--data-dir", str(data_dir)] if data_dir else []) + ["--cache-dir", str(cache_dir)]


def child_parser(module: str, description: str) -> argparse.ArgumentParser:
    """The arguments every measuring process (`python -m MODULE`) takes: which set it reads, and from where."""
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    p.add_argument("--format", required=True)
    p.add_argument("--source", choices=("sources", "cache"), required=True)
    p.add_argument("--data-dir")
    p.add_argument("--cache-dir", required=True)
    return p
