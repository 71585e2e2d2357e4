"""Prepared datasets: each split once as an uncompressed uint8 .npy (N, C, H, W), memory-mapped, with a manifest.

Layout: CACHE_DIR/NAME-SPLIT.npy, its labels CACHE_DIR/NAME-SPLIT.labels.npy (int64, (N,) or (N, A))
and CACHE_DIR/NAME-SPLIT.json, where CACHE_DIR is `--cache-dir`,
else $FINC_CACHE_DIR, else DATA_DIR/.finc_cache beside the data (the user cache folder for the
bundled digits). A split is used only while its manifest matches: same format version and
recipe, same source files (sizes and modification times; for a folder of many files, CelebA's
images, one SHA-256 over every file's name, size and modification time), the array file of the
recorded size and shape, and its SHA-256. The checksum is recomputed whenever the array file's size,
modification time or inode differ from the ones recorded when it was written, and always with
`verify=True` (`finc data info --verify`). Writes are atomic and one preparer at a time holds
CACHE_DIR/.lock (docs/training.md §1).

Labels are checked apart from the images (docs/data.md §4): a split whose label files cannot be
read is still prepared, for unconditional use, and its manifest says why it holds no labels; its
label files are recorded and checked only when labels are asked for, so a label file that is
missing, touched or broken never makes the images stale.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from finc_cli import __version__
from finc_cli.data.data_dir import resolve_data_dir
from finc_cli.data.datasets import SPLITS, dataset_info, label_files, read_labels, read_split, recipe, source_files
from finc_cli.data.formats.celeba import CelebAImages
from finc_cli.data.labels import Labels
from finc_cli.errors import DatasetError
from finc_cli.files.atomic import atomic_path, atomic_write_text, remove_stale_temporaries
from finc_cli.files.locking import exclusive_lock
from finc_cli.text import first_line

__all__ = [
    "ENV_VAR",
    "FORMAT_VERSION",
    "CacheStatus",
    "MappedImages",
    "check",
    "open_prepared",
    "open_prepared_labels",
    "prepare",
    "resolve_cache_dir",
    "source_state",
]

FORMAT = "finc-prepared-split"
FORMAT_VERSION = 3  # 2: a source folder is recorded by a digest of its files' sizes and times; 3: labels
ENV_VAR = "FINC_CACHE_DIR"
FOLDER = ".finc_cache"
CHUNK_BYTES = 64 << 20  # hashing and copying go through memory in pieces of this size

Progress = Callable[[str, int], Callable[[int], None]]  # (description, total) -> advance(n)


def resolve_cache_dir(data_dir=None, cache_dir=None) -> Path:
    """--cache-dir > $FINC_CACHE_DIR > DATA_DIR/.finc_cache > the user cache folder (no data dir)."""
    chosen = cache_dir or os.environ.get(ENV_VAR)
    if chosen:
        return Path(chosen).expanduser()
    root = resolve_data_dir(data_dir)
    if root is not None:
        return root / FOLDER
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "finc" / "data"


def _paths(folder: Path, name: str, split: str) -> tuple[Path, Path]:
    return folder / f"{name}-{split}.npy", folder / f"{name}-{split}.json"


def _labels_path(folder: Path, name: str, split: str) -> Path:
    return folder / f"{name}-{split}.labels.npy"


# ---------------------------------------------------------------------------------------------
# the memory-mapped dataset


class MappedImages(Dataset):
    """A prepared split, memory-mapped read-only: the processes of a node share one copy in the page cache."""

    def __init__(self, path, transform: Optional[Callable] = None):
        self.path, self.transform = Path(path), transform
        self._array: Optional[np.ndarray] = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:  # opened on first use, so a DataLoader worker maps its own view
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}  # a pickled dataset re-maps the file, never copies it

    def __len__(self) -> int:
        return self.array.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        x = torch.from_numpy(np.array(self.array[int(i)]))  # (C, H, W), a private copy
        return self.transform(x) if self.transform is not None else x

    def batch(self, idx) -> torch.Tensor:
        """The images at `idx` as one uint8 batch (B, C, H, W), read in file order, not augmented."""
        idx = np.asarray(idx, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        out = np.empty((len(idx), *self.array.shape[1:]), dtype=np.uint8)
        out[order] = self.array[idx[order]]  # sorted reads: sequential pages where the batch allows
        return torch.from_numpy(out)


# ---------------------------------------------------------------------------------------------
# checking


@dataclass
class CacheStatus:
    state: str  # current | missing | stale | corrupt
    reason: str
    array: Path
    manifest: Path
    info: Optional[dict] = None  # the manifest, when it could be read
    checked: int = 0  # source files whose size and modification time were compared


def _stat(path: Path) -> dict:
    """A file's size and modification time; a folder's file count and the digest of its files."""
    if path.is_dir():
        return {"path": str(path.resolve()), **_folder_digest(path)}
    st = path.stat()
    return {"path": str(path.resolve()), "mtime_ns": st.st_mtime_ns, "size": st.st_size}


def _folder_digest(folder: Path) -> dict:
    """{files, digest}: SHA-256 over every entry's (name, size, modification time in ns), in name order.

    A rewritten file changes its modification time (and mostly its size) even when its name and
    the folder's entry count stay. One stat per file, nothing opened: os.scandir over the folder's
    descriptor, so each DirEntry.stat() is an fstatat relative to it (no path walked per file).
    """
    fd = os.open(folder, os.O_RDONLY)
    try:
        with os.scandir(fd) as it:
            rows = sorted((e.name, (st := e.stat()).st_size, st.st_mtime_ns) for e in it)
    finally:
        os.close(fd)
    return {"files": len(rows), "digest": hashlib.sha256(repr(rows).encode("utf-8", "surrogateescape")).hexdigest()}


def source_state(name: str, split: str, data_dir=None) -> list[dict]:
    """What a manifest records of the split's sources: each file's size and time, each folder's digest."""
    return [_stat(p) for p in source_files(name, split, data_dir)]


def _count(sources: list[dict]) -> int:
    return sum(s.get("files", 1) for s in sources)


def _source_change(now: list[dict], then: list) -> Optional[str]:
    """How the sources differ from the recorded ones (one line), or None."""
    if [s["path"] for s in now] != [s.get("path") if isinstance(s, dict) else None for s in then]:
        return "the list of source files changed since it was prepared"
    for a, b in zip(now, then):
        if a == b:
            continue
        if "files" in a and a["files"] != b.get("files"):
            return f"the source folder {a['path']} holds {a['files']} files, {b.get('files')} when it was prepared"
        if "files" in a:
            return f"a file in the source folder {a['path']} was rewritten or touched since it was prepared"
        return f"the source {a['path']} changed since it was prepared"
    return None


def _array_stat(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def _sha256(path: Path) -> str:
    """SHA-256 of the array's data (the .npy header excluded), read in chunks."""
    array = np.load(path, mmap_mode="r")
    h = hashlib.sha256()
    flat = array.reshape(-1)
    for start in range(0, flat.size, CHUNK_BYTES):
        h.update(flat[start : start + CHUNK_BYTES])
    return h.hexdigest()


def check(name: str, split: str, data_dir=None, cache_dir=None, verify: bool = False) -> CacheStatus:
    """Whether the prepared `split` of `name` can be used, and if not, why (one line).

    `verify` recomputes the array's checksum, and stats every source file even when no manifest
    was compared (`checked` counts them; 0 when they cannot be found).
    """
    status = _status(name, split, data_dir, cache_dir, verify)
    if verify and not status.checked:
        try:
            status.checked = _count(source_state(name, split, data_dir))
        except (DatasetError, OSError):
            pass
    return status


def _status(name: str, split: str, data_dir, cache_dir, verify: bool) -> CacheStatus:
    array, manifest = _paths(resolve_cache_dir(data_dir, cache_dir), name, split)
    if not manifest.is_file():
        reason = "no manifest beside the array" if array.is_file() else "not prepared"
        return CacheStatus("missing" if not array.is_file() else "corrupt", reason, array, manifest)
    try:
        info = json.loads(manifest.read_text())
        assert isinstance(info, dict) and info.get("format") == FORMAT
    except (OSError, ValueError, AssertionError):
        return CacheStatus("corrupt", f"unreadable manifest {manifest.name}", array, manifest)
    status = CacheStatus("current", "matches its sources", array, manifest, info)
    status.state, status.reason = _compare(info, name, split, data_dir, status, verify)
    return status


def _compare(info: dict, name: str, split: str, data_dir, status: CacheStatus, verify: bool) -> tuple[str, str]:
    """(state, reason); sets status.checked to the number of source files compared."""
    if info.get("format_version") != FORMAT_VERSION:
        version = info.get("format_version")
        return "stale", f"its manifest has format {version}; this finc writes and checks format {FORMAT_VERSION}"
    if info.get("recipe") != recipe(name):
        return "stale", "made by another version of finc's preparation"
    if (info.get("dataset"), info.get("split")) != (name, split):
        return "corrupt", f"its manifest describes {info.get('dataset')}/{info.get('split')}"
    try:
        now = source_state(name, split, data_dir)
    except (DatasetError, OSError) as exc:
        return "stale", f"its source files cannot be checked ({first_line(exc)})"
    status.checked = _count(now)
    changed = _source_change(now, info.get("sources") or [])
    if changed:
        return "stale", changed
    array = status.array
    if not array.is_file():
        return "corrupt", "the array file is missing"
    stat = _array_stat(array)
    if stat["size"] != info.get("array_stat", {}).get("size"):
        return "corrupt", f"the array file is {stat['size']} bytes, {info.get('array_stat', {}).get('size')} expected"
    try:
        shape = list(np.load(array, mmap_mode="r").shape)
    except (OSError, ValueError) as exc:
        return "corrupt", f"the array file cannot be read ({exc})"
    if shape != info.get("shape"):
        return "corrupt", f"the array has shape {shape}, {info.get('shape')} expected"
    if (verify or stat != info.get("array_stat")) and _sha256(array) != info.get("sha256"):
        return "corrupt", "its checksum does not match"
    return "current", "matches its sources"


def open_prepared(name, split, data_dir=None, cache_dir=None, transform=None) -> tuple[Optional[MappedImages], str]:
    """(the prepared split, "") if it is current; else (None, why it is not used and how to fix it, in one line).

    The line is empty for the bundled digits without a cache. The caller shows it once the sources
    are read: when they cannot be, their error is the one to see.
    """
    status = check(name, split, data_dir, cache_dir)
    if status.state == "current":
        return MappedImages(status.array, transform), ""
    if name == "digits" and status.state == "missing":
        return None, ""
    fix = f"finc data prepare {name}" + (f" --data-dir {data_dir}" if data_dir else "")
    if status.state == "missing":
        return None, f"hint: `{fix}` would make loading {name}/{split} faster and share it between processes"
    return None, (
        f"warning: prepared {status.array} is {status.state} ({status.reason}); the source files were "
        f"read instead; refresh it with `{fix}`"
    )


def open_prepared_labels(
    name: str, split: str, data_dir=None, cache_dir=None, *, checked: bool = False
) -> tuple[Optional[Labels], str]:
    """(the prepared split's labels, "") if they can be used; else (None, why not and the fix, in one line).

    The line is empty when the images themselves are not prepared and current (`open_prepared`
    says so). With `checked`, the caller has just found the images current: they are not checked again.
    """
    folder = resolve_cache_dir(data_dir, cache_dir)
    if checked:
        try:
            info = json.loads(_paths(folder, name, split)[1].read_text())
        except (OSError, ValueError):
            return None, ""
    else:
        status = check(name, split, data_dir, cache_dir)
        if status.state != "current":
            return None, ""
        info = status.info
    labels, reason = _cached_labels(info, name, split, data_dir, folder)
    if labels is not None:
        return labels, ""
    fix = f"finc data prepare {name}" + (f" --data-dir {data_dir}" if data_dir else "")
    return (
        None,
        f"warning: prepared {name}/{split} {reason}; the labels were read from the source files; `{fix}` stores them",
    )


def _cached_labels(info: dict, name: str, split: str, data_dir, folder: Path) -> tuple[Optional[Labels], str]:
    """(Labels, "") when the manifest's labels match their files and source files; else (None, why not)."""
    info = info if isinstance(info, dict) else {}
    record = info.get("labels")
    if not isinstance(record, dict):
        return None, f"holds no labels ({info.get('labels_problem') or 'none were read'})"
    try:
        now = [_stat(p) for p in label_files(name, split, data_dir)]
    except (DatasetError, OSError) as exc:
        return None, f"holds labels whose files cannot be checked ({first_line(exc)})"
    if now != record.get("sources"):
        return None, "holds labels whose source files changed since it was prepared"
    path = _labels_path(folder, name, split)
    try:
        if _array_stat(path) != record.get("array_stat") and _sha256(path) != record.get("sha256"):
            return None, "holds labels whose checksum does not match"
        values = np.load(path, allow_pickle=False)
        assert list(values.shape) == record["shape"] and values.dtype == np.int64
        names = tuple(record["names"]) if record.get("names") is not None else None
        return Labels(values, record["kind"], record["num_classes"], names), ""
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
        return None, f"holds a labels file that cannot be used ({type(exc).__name__})"


# ---------------------------------------------------------------------------------------------
# preparing


def prepare(
    name: str,
    data_dir=None,
    cache_dir=None,
    splits=SPLITS,
    force: bool = False,
    workers: Optional[int] = None,
    progress: Optional[Progress] = None,
) -> dict:
    """Write each split of `name` as NAME-SPLIT.npy + .json in the cache folder (current ones are kept)."""

    dataset_info(name)
    folder = resolve_cache_dir(data_dir, cache_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cannot create the cache folder {folder}: {exc.strerror}; pass --cache-dir") from None
    rows = []
    with exclusive_lock(folder / ".lock", f"the prepared-data folder {folder}", wait=True):
        for split in splits:
            status = check(name, split, data_dir, cache_dir)
            row = {"split": split, "before": status.state, "path": str(status.array)}
            if status.state == "current" and not force:
                labels = _keep_labels(name, split, data_dir, folder, status.info)
                rows.append({**row, "written": False, "shape": status.info["shape"], "seconds": 0.0, **labels})
                continue
            rows.append({**row, "written": True, **_write(name, split, data_dir, folder, workers, progress)})
    return {"dataset": name, "cache_dir": str(folder), "splits": rows}


def _write(name: str, split: str, data_dir, folder: Path, workers, progress) -> dict:
    """Read the split from its sources into NAME-SPLIT.npy, then write its manifest (both atomically)."""

    t0 = time.perf_counter()
    array, manifest = _paths(folder, name, split)
    for path in (array, manifest):
        remove_stale_temporaries(folder, path.name)
    sources = source_state(name, split, data_dir)
    ds = read_split(name, split, data_dir)
    info = dataset_info(name)
    shape = (len(ds), info.channels, info.height, info.width)
    advance = progress(f"{name}/{split}", shape[0]) if progress else (lambda n: None)
    # An old manifest left beside the new array cannot vouch for it: the array's recorded size,
    # modification time and inode no longer match, so its checksum is recomputed and differs.
    with atomic_path(array) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        digest = _fill(out, ds, name, workers, advance)
        out.flush()
        del out
    labels = _write_labels(name, split, data_dir, folder, shape[0])
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "finc_version": __version__,
        "dataset": name,
        "split": split,
        "shape": list(shape),
        "dtype": "uint8",
        "recipe": recipe(name),
        "sources": sources,
        "sha256": digest,
        "array_stat": _array_stat(array),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **labels,
    }
    atomic_write_text(manifest, json.dumps(record, indent=1) + "\n")
    out = {"shape": list(shape), "bytes": record["array_stat"]["size"], "seconds": time.perf_counter() - t0}
    return {**out, **_labels_row(record)}


def _labels_row(record: dict) -> dict:
    """What a row of `prepare` says of a split's labels: held or not, and why not."""
    return {"labels": isinstance(record.get("labels"), dict), "labels_problem": record.get("labels_problem")}


def _write_labels(name: str, split: str, data_dir, folder: Path, n: int) -> dict:
    """Write NAME-SPLIT.labels.npy (atomically); the manifest's "labels" record, or why there are none.

    A label file that is missing or broken is not an error here: the images are prepared for
    unconditional use and the manifest records the one-line problem.
    """
    path = _labels_path(folder, name, split)
    remove_stale_temporaries(folder, path.name)
    try:
        sources = [_stat(p) for p in label_files(name, split, data_dir)]
        labels = read_labels(name, split, data_dir)
        if len(labels) != n:
            raise DatasetError(f"{len(labels)} labels for the {n} images of {name}/{split}")
    except (DatasetError, OSError) as exc:
        path.unlink(missing_ok=True)
        return {"labels": None, "labels_problem": first_line(exc)}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, labels.values)
    record = {
        "kind": labels.kind,
        "num_classes": labels.num_classes,
        "names": list(labels.names) if labels.names is not None else None,
        "shape": list(labels.values.shape),
        "sha256": _sha256(path),
        "array_stat": _array_stat(path),
        "sources": sources,
    }
    return {"labels": record, "labels_problem": None}


def _keep_labels(name: str, split: str, data_dir, folder: Path, info: dict) -> dict:
    """For a current split: its labels as they are when usable, else read again (only they) into its manifest."""
    if _cached_labels(info, name, split, data_dir, folder)[0] is None:
        labels = _write_labels(name, split, data_dir, folder, info["shape"][0])
        if labels != {key: info.get(key) for key in labels}:
            info = {**info, **labels}
            atomic_write_text(_paths(folder, name, split)[1], json.dumps(info, indent=1) + "\n")
    return _labels_row(info)


def _fill(out: np.ndarray, ds, name: str, workers: Optional[int], advance) -> str:
    """Copy the split into `out` in order, hashing as it goes; CelebA is decoded in parallel processes."""
    h = hashlib.sha256()
    per_chunk = max(1, CHUNK_BYTES // max(1, out[0].nbytes)) if len(out) else 1
    for start, images in _chunks(ds, name, per_chunk, workers):
        out[start : start + len(images)] = images
        h.update(np.ascontiguousarray(images).reshape(-1))
        advance(len(images))
    return h.hexdigest()


def _chunks(ds, name: str, per_chunk: int, workers: Optional[int]):
    """(start, uint8 images) in order: slices of an in-memory split, or CelebA decoded by a process pool."""
    n = len(ds)
    if name != "celeba64":
        images = ds.images.numpy() if isinstance(ds.images, torch.Tensor) else ds.images
        for start in range(0, n, per_chunk):
            yield start, images[start : start + per_chunk]
        return

    size = 256  # images per task: large enough to amortise the pickling, small for a smooth progress bar
    tasks = [[str(p) for p in ds.files[s : s + size]] for s in range(0, n, size)]
    # Spawned, not forked: a forked child of a process whose OpenMP pool is running can hang in its
    # first parallel region (the resize), so each worker starts fresh with one intra-op thread.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers or os.cpu_count() or 1, mp_context=context, initializer=_one_thread) as pool:
        for k, images in enumerate(pool.map(_decode_celeba, tasks)):
            yield k * size, images


def _one_thread() -> None:
    torch.set_num_threads(1)  # the pool's processes are the parallelism


def _decode_celeba(files: list[str]) -> np.ndarray:
    """A process-pool task: decode, crop and resize a list of CelebA JPEGs to (n, 3, 64, 64) uint8."""

    ds = CelebAImages([Path(f) for f in files])
    return ds.batch(torch.arange(len(files))).numpy()
