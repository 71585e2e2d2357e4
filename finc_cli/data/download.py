"""`finc data download`: MNIST, CIFAR-10 and CelebA fetched by torchvision (md5-checked) into the layout finc reads."""

from __future__ import annotations

import contextlib
import http.client
import importlib
import os
import shutil
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from torchvision.datasets import CIFAR10, MNIST, CelebA

from finc_cli.data.data_dir import ENV_VAR, resolve_data_dir
from finc_cli.data.datasets import DATASETS
from finc_cli.errors import DatasetError, DownloadError

__all__ = ["DOWNLOADABLE", "download"]


@dataclass(frozen=True)
class _Source:
    folder: str  # the one folder that lands in DATA_DIR
    required: tuple[tuple[str, ...], ...]  # inside `folder`: each entry is present under one of its names
    fetch: Callable[[Path], None]  # torchvision's downloader, run with `root` as its root
    needs: Optional[str] = None  # an optional package the downloader imports


def _fetch_mnist(root: Path) -> None:

    MNIST(str(root), train=True, download=True)  # fetches both splits; md5 of each .gz, then gunzips


def _fetch_cifar10(root: Path) -> None:

    CIFAR10(str(root), train=True, download=True)  # md5 of the tarball, then of every extracted batch


def _fetch_celeba(root: Path) -> None:

    try:
        CelebA(str(root), split="all", target_type=[], download=True)  # md5 of the zip and of each list file
    except Exception as e:  # noqa: BLE001 - gdown's own errors (e.g. Drive's daily quota) derive from Exception
        if type(e).__module__.split(".")[0] != "gdown":
            raise
        raise RuntimeError(f"Google Drive refused the file, often its daily quota; retry later: {e}") from e
    (root / "celeba" / "img_align_celeba.zip").unlink(missing_ok=True)  # extracted: finc reads the JPEGs


def _idx(stem: str) -> tuple[str, str]:
    return (f"raw/{stem}", f"raw/{stem}.gz")


_SOURCES = {
    "mnist": _Source("MNIST", (_idx("train-images-idx3-ubyte"), _idx("t10k-images-idx3-ubyte")), _fetch_mnist),
    "cifar10": _Source(
        "cifar-10-batches-py",
        tuple((f"data_batch_{k}",) for k in range(1, 6)) + (("test_batch",),),
        _fetch_cifar10,
    ),
    "celeba64": _Source("celeba", (("img_align_celeba",), ("list_eval_partition.txt",)), _fetch_celeba, "gdown"),
}
DOWNLOADABLE: tuple[str, ...] = tuple(_SOURCES)

# What a failed transfer raises inside torchvision: URLError and socket errors are OSErrors; a checksum
# mismatch or a mirror that failed is a RuntimeError; a cut connection may surface from http.client or an archive.
_TRANSFER_ERRORS = (OSError, RuntimeError, EOFError, http.client.HTTPException, tarfile.TarError, zipfile.BadZipFile)


def download(name: str, data_dir: str | os.PathLike | None = None) -> dict:
    """Download dataset `name` into `data_dir` (else $FINC_DATA_DIR) unless it is already there.

    torchvision fetches into a temporary folder inside the data directory and checks every md5;
    only a complete dataset folder is renamed into place, so a failure leaves nothing behind.
    """
    start = time.perf_counter()
    source = _source(name)
    root = resolve_data_dir(data_dir)
    if root is None:
        raise DatasetError(f"{name}: say where to download it: pass --data-dir DIR or set {ENV_VAR}")
    if root.exists() and not root.is_dir():
        raise DatasetError(f"data directory {root} exists and is not a folder")
    target = root / source.folder
    if not _missing(source, target):
        return _report(name, root, target, start, already_present=True)
    if target.exists():
        raise DatasetError(
            f"{target} exists but lacks {', '.join(_missing(source, target))}; "
            "move it away (or complete it), then run the download again"
        )
    _require(source.needs, name)
    _fetch_into(name, source, root, target)
    return _report(name, root, target, start, already_present=False)


def _source(name: str) -> _Source:
    """The download recipe of `name`; one line saying what to do instead for every other dataset."""
    if name in _SOURCES:
        return _SOURCES[name]
    if name in ("imagenet32", "imagenet64"):
        s = name[len("imagenet") :]
        raise DatasetError(
            f"{name} needs an image-net.org login, so finc cannot download it: log in at "
            f"https://image-net.org/download-images.php, download 'Downsampled ImageNet {s}x{s}' "
            f"(train and val), and unpack it as DATA_DIR/Imagenet{s}_train/train_data_batch_1..10 "
            f"and DATA_DIR/Imagenet{s}_val/val_data (or the Imagenet{s}_train_npz/ and Imagenet{s}_val_npz/ .npz files)"
        )
    if name == "digits":
        raise DatasetError("digits is bundled with scikit-learn and needs no download: finc train --preset digits")
    raise DatasetError(
        f"unknown dataset {name!r}; finc can download {', '.join(DOWNLOADABLE)} (known datasets: {', '.join(DATASETS)})"
    )


def _missing(source: _Source, folder: Path) -> list[str]:
    """The required entries absent from `folder` (a folder counts only when it is not empty)."""

    def present(path: Path) -> bool:
        return path.is_file() or (path.is_dir() and any(path.iterdir()))

    return [names[0] for names in source.required if not any(present(folder / n) for n in names)]


def _require(module: Optional[str], name: str) -> None:
    if module is None:
        return
    try:
        importlib.import_module(module)
    except ImportError:
        message = f"{name}: torchvision needs the optional package {module} to fetch it: pip install {module}"
        raise DownloadError(message) from None


def _fetch_into(name: str, source: _Source, root: Path, target: Path) -> None:
    """Run the downloader in DATA_DIR/.finc-download-*, then rename the finished folder to `target`."""
    created = _make_dirs(root)
    tmp = Path(tempfile.mkdtemp(prefix=".finc-download-", dir=root))
    done = False
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout is for --json alone
            source.fetch(tmp)
        missing = _missing(source, tmp / source.folder)
        if missing:
            raise DownloadError(f"{name}: the download finished without {', '.join(missing)}; nothing was kept")
        os.replace(tmp / source.folder, target)
        done = True
    except DownloadError:
        raise
    except _TRANSFER_ERRORS as e:
        raise DownloadError(
            f"{name}: download failed ({_one_line(e)}); nothing was kept in {root}; check the network and retry"
        ) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # archives, and everything of a failed attempt
        if not done:
            _remove_empty(created)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "corrupted" in text:  # torchvision's words for an md5 mismatch
        text += " - checksum mismatch or truncated transfer"
    return text if len(text) <= 300 else text[:297] + "..."


def _make_dirs(root: Path) -> list[Path]:
    """Create `root` and its missing parents; return the ones created, deepest first."""
    created = []
    path = root
    while not path.exists():
        created.append(path)
        path = path.parent
    root.mkdir(parents=True, exist_ok=True)
    return created


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first; stop at one that something else has filled meanwhile
        try:
            folder.rmdir()
        except OSError:
            return


def _report(name: str, root: Path, target: Path, start: float, already_present: bool) -> dict:
    files = [Path(d) / f for d, _, names in os.walk(target) for f in names]
    return {
        "dataset": name,
        "data_dir": str(root),
        "path": str(target),
        "files": len(files),
        "bytes": sum(f.stat().st_size for f in files),
        "seconds": round(time.perf_counter() - start, 3),
        "already_present": already_present,
    }
