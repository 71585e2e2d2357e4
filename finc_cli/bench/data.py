"""Data benchmark: images/s, time to the first batch and memory of each format, read from its sources or prepared.

Synthetic datasets in the real on-disk formats (`write_synthetic`) are read exactly as training
reads them (`get_dataset`, `step_batch`, `Prefetcher`). Each (format, source, workers) is measured
in a fresh process (`python -m finc_cli.bench.data --one ...`) so that its peak memory and its time
to the first batch start from nothing. The files a measurement reads are read once just before
it, so every figure is a warm-page-cache figure (only root can drop the cache). Peak RSS counts
the page-cache pages a process has mapped, which a memory-mapped array shares between processes;
`pss_rows` measures what processes cost together.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import pickle
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

import finc_cli.data.cache  # noqa: F401 - what training imports torch is in the Pss before the data
import finc_cli.data.datasets  # noqa: F401
from finc_cli.config import load_preset
from finc_cli.data.batches import step_batch
from finc_cli.data.cache import MappedImages, prepare, source_state
from finc_cli.data.datasets import source_files
from finc_cli.data.load import get_dataset
from finc_cli.data.prefetch import Prefetcher
from finc_cli.errors import InputError
from finc_cli.train import train

__all__ = [
    "DEFAULT_IMAGES",
    "DEFAULT_ROOT",
    "FORMATS",
    "NOISE",
    "SMALL_MODEL",
    "data_rows",
    "ensure",
    "main",
    "measure",
    "measure_fresh",
    "pss_rows",
    "source_check_rows",
    "train_rows",
    "write_synthetic",
]

FORMATS = ("digits", "mnist", "cifar10", "imagenet64", "celeba64")
# Where a step's dequantization noise is drawn: by the data path on the CPU (CPU training), or by
# the step on the training device (GPU training: the batch carries uint8 images only).
NOISE = ("cpu", "device")
# Official training images per synthetic set: MNIST's, CIFAR-10's and CelebA's real counts; 100k for ImageNet64.
DEFAULT_IMAGES = {"mnist": 60_000, "cifar10": 50_000, "imagenet32": 100_000, "imagenet64": 100_000, "celeba64": 162_770}
CELEBA_FILES = 202_599  # images in CelebA's official partition (162,770 train, 19,867 val, 19,962 test)
DEFAULT_ROOT = Path(tempfile.gettempdir()) / "finc-bench-data"
# A short step, so that the data share is visible: no learned dequantizer and no weight average either.
SMALL_MODEL = {
    "model.levels": 2,
    "model.steps": 1,
    "model.hidden": 16,
    "model.dequantization": "uniform",
    "train.ema_decay": 0.0,
}
SYNTHETIC_VERSION = 1
JPEG_QUALITY = 90  # with the noise of `_pixels`: ~10 KB per 178×218 image, as CelebA's aligned JPEGs
CHUNK = 512  # images generated at a time
READS = {"digits": "csv.gz", "mnist": "idx3", "cifar10": "pickles", "celeba64": "JPEGs"}


# ---------------------------------------------------------------------------------------------
# synthetic datasets in the real formats


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


def _images(rng: np.random.Generator, n: int, c: int, h: int, w: int):
    """`_pixels` for n images, CHUNK at a time."""
    for start in range(0, n, CHUNK):
        yield _pixels(rng, min(CHUNK, n - start), c, h, w)


def _rows(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """(n, 3·S·S) uint8 rows of R, G, B planes, as CIFAR-10 and downsampled ImageNet store them."""
    out = np.empty((n, 3 * size * size), dtype=np.uint8)
    for start in range(0, n, CHUNK):
        chunk = _pixels(rng, min(CHUNK, n - start), 3, size, size)
        out[start : start + len(chunk)] = chunk.reshape(len(chunk), -1)  # (B, 3, S, S) -> (B, 3·S·S)
    return out


def _pickle(path: Path, obj: dict, protocol: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


def _write_mnist(root: Path, n: int, rng: np.random.Generator) -> list[Path]:
    """MNIST/raw/{train,t10k}-images-idx3-ubyte: big-endian header (2051, N, 28, 28), then the pixels."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, count in (("train-images-idx3-ubyte", n), ("t10k-images-idx3-ubyte", _held_out(n))):
        with open(raw / name, "wb") as f:
            f.write(struct.pack(">iiii", 2051, count, 28, 28))
            for chunk in _images(rng, count, 1, 28, 28):
                f.write(chunk.tobytes())
        paths.append(raw / name)
    return paths


def _write_cifar10(root: Path, n: int, rng: np.random.Generator) -> list[Path]:
    """cifar-10-batches-py/data_batch_1..5 and test_batch: protocol-2 pickles with bytes keys, b"data" (N, 3072)."""
    sizes = [len(p) for p in np.array_split(np.arange(n), 5)] + [_held_out(n)]
    names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    paths = []
    for name, count in zip(names, sizes):
        batch = {
            b"batch_label": name.encode(),
            b"labels": rng.integers(0, 10, count).tolist(),
            b"data": _rows(rng, count, 32),
            b"filenames": [f"synthetic_{i}.png".encode() for i in range(count)],
        }
        paths.append(_pickle(root / "cifar-10-batches-py" / name, batch, protocol=2))
    return paths


def _write_imagenet(root: Path, n: int, rng: np.random.Generator, size: int = 64) -> list[Path]:
    """Imagenet{S}_train/train_data_batch_1..10 and Imagenet{S}_val/val_data: pickles of "data" (N, 3·S·S) uint8."""
    parts = [
        (root / f"Imagenet{size}_train" / f"train_data_batch_{k}", len(p))
        for k, p in enumerate(np.array_split(np.arange(n), 10), start=1)
    ]
    paths = []
    for path, count in parts + [(root / f"Imagenet{size}_val" / "val_data", _held_out(n))]:
        data = _rows(rng, count, size)
        batch = {"data": data, "labels": rng.integers(1, 1001, count).tolist()}
        if path.name != "val_data":
            batch["mean"] = data.mean(axis=0)
        paths.append(_pickle(path, batch, protocol=4))
    return paths


def _write_celeba(root: Path, n: int, rng: np.random.Generator, files: Optional[int] = None) -> list[Path]:
    """celeba/img_align_celeba/NNNNNN.jpg (178×218) and list_eval_partition.txt ("NNNNNN.jpg 0|1|2").

    With `files`, that many images in all (n of them train, the rest split between val and test),
    each a copy of one tiny 8×8 JPEG: a valid set whose cost is its file count, for the source check.
    """

    folder = root / "celeba"
    images = folder / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    val = _held_out(n) if files is None else (files - n) // 2
    codes = [0] * n + [1] * val + [2] * (_held_out(n) if files is None else files - n - val)
    names = [f"{i:06d}.jpg" for i in range(1, len(codes) + 1)]
    if files is not None:
        tiny = io.BytesIO()
        Image.fromarray(_pixels(rng, 1, 3, 8, 8)[0].transpose(1, 2, 0)).save(tiny, format="JPEG")  # (H, W, C)
        for name in names:
            (images / name).write_bytes(tiny.getvalue())
    done = len(names) if files is not None else 0
    for chunk in _images(rng, len(codes) - done, 3, 218, 178):
        for pixels in chunk:
            Image.fromarray(pixels.transpose(1, 2, 0)).save(images / names[done], quality=JPEG_QUALITY)  # (H, W, C)
            done += 1
    partition = folder / "list_eval_partition.txt"
    partition.write_text("".join(f"{name} {code}\n" for name, code in zip(names, codes)))
    return [partition, images]


WRITERS: dict[str, Callable[[Path, int, np.random.Generator], list[Path]]] = {
    "mnist": _write_mnist,
    "cifar10": _write_cifar10,
    "imagenet32": partial(_write_imagenet, size=32),
    "imagenet64": _write_imagenet,
    "celeba64": _write_celeba,
    "celeba64-files": lambda root, n, rng: _write_celeba(root, n - 2 * (n // 10), rng, files=n),  # tiny JPEGs
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
    if fmt not in WRITERS:
        raise InputError(f"no synthetic writer for {fmt!r}; choose one of: digits, {', '.join(WRITERS)}")
    if n < 10:
        raise InputError(f"a synthetic {fmt} set needs at least 10 training images, got {n}")
    marker = root / f".finc-synthetic-{fmt}.json"
    want = {"format": fmt, "images": n, "seed": seed, "version": SYNTHETIC_VERSION}
    if _complete(marker, want):
        return {**row, "bytes": json.loads(marker.read_text())["bytes"]}
    t0 = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)  # written again last: a set cut short by a crash is never taken as complete
    paths = WRITERS[fmt](root, n, np.random.default_rng(seed))
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


# ---------------------------------------------------------------------------------------------
# images/s, time to the first batch, peak memory


def _augment_label(hflip: bool, translate: int) -> str:
    parts = (["flip"] if hflip else []) + ([f"±{translate} px"] if translate else [])
    return ", ".join(parts) or "none"


def _peak_rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # kB on Linux


def _consume(batches, total: int) -> tuple[list[float], list[int]]:
    """perf_counter after each batch arrives, and the images in each."""
    stamps, sizes = [], []
    for step in range(total):
        sizes.append(len(batches.get(step).images))
        stamps.append(time.perf_counter())
    return stamps, sizes


def measure(
    fmt: str,
    source: str,
    data_dir,
    cache_dir,
    steps: int,
    warmup: int,
    batch_size: int,
    workers: int,
    seed: int = 0,
    hflip: bool = False,
    translate: int = 0,
    noise: str = "cpu",
) -> dict:
    """One (format, source, workers), in this process: open the training set as training does, time its batches.

    first_batch_s runs from the `get_dataset` call to the first batch in hand; images_s is the steady
    rate after `warmup` batches (the first included); peak RSS is this process's, and the largest
    DataLoader worker's. noise='cpu': batches carry their dequantization noise, as CPU training's do;
    'device': uint8 images only, as on a GPU, where the step draws the noise on the device.
    """
    if noise not in NOISE:
        raise ValueError(f"noise must be one of {NOISE}, got {noise!r}")

    t0 = time.perf_counter()
    use_cache = source == "cache"
    ds = get_dataset(
        fmt,
        "train",
        data_dir,
        train_transform=True,
        hflip=hflip,
        translate=translate,
        cache_dir=cache_dir,
        use_cache=use_cache,
    )
    if isinstance(ds, MappedImages) != use_cache:
        raise RuntimeError(f"{fmt}: asked to read from {source}, get_dataset gave a {type(ds).__name__}")
    opened, warmup = time.perf_counter(), max(1, warmup)
    make = partial(step_batch, ds, seed=seed, batch_size=batch_size, noise=noise == "cpu")
    batches = Prefetcher(make, 0, warmup + steps, workers=workers)
    try:
        stamps, sizes = _consume(batches, warmup + steps)
    finally:
        batches.close()
        del batches
        gc.collect()  # the DataLoader iterator joins its workers, so RUSAGE_CHILDREN counts them
    steady = np.diff(stamps[warmup - 1 :])
    return {
        "format": fmt,
        "source": source,
        "reads": "memory-mapped .npy" if source == "cache" else READS.get(fmt, "pickles"),
        "workers": workers,
        "images": len(ds),
        "batch": batch_size,
        "augment": _augment_label(hflip, translate),
        "noise": noise,
        "steps": steps,
        "open_s": opened - t0,
        "first_batch_s": stamps[0] - t0,
        "images_s": sum(sizes[warmup:]) / max(stamps[-1] - stamps[warmup - 1], 1e-9),
        "batch_ms": 1e3 * statistics.median(steady) if len(steady) else None,
        "peak_rss_mb": _peak_rss_mb(resource.RUSAGE_SELF),
        "workers_peak_rss_mb": _peak_rss_mb(resource.RUSAGE_CHILDREN) if workers else None,
        "threads": torch.get_num_threads(),
        "load_avg": os.getloadavg()[0],  # other processes on the machine while this was measured
    }


def _child(args: list[str], what: str) -> dict:
    """Run `python -m finc_cli.bench.data ARGS` and return the JSON row it prints last."""
    out = subprocess.run([sys.executable, "-m", "finc_cli.bench.data", *args], capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"measuring {what} failed (exit {out.returncode}): {tail}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _dirs(data_dir, cache_dir) -> list[str]:
    return (["--data-dir", str(data_dir)] if data_dir else []) + ["--cache-dir", str(cache_dir)]


def _warm(paths: Sequence[Path]) -> None:
    """Read each file (and each file in a folder) once, so that the measurement finds it in the page cache."""
    buf = bytearray(16 << 20)
    for path in map(Path, paths):
        with os.scandir(path) if path.is_dir() else contextlib.nullcontext([path]) as entries:
            for entry in entries:
                with open(entry, "rb") as f:
                    while f.readinto(buf):
                        pass


def _read_by(fmt: str, source: str, data_dir, cache_dir) -> list[Path]:
    """The files that reading the training split of `fmt` from `source` touches."""

    if source == "cache":
        return [Path(cache_dir) / f"{fmt}-train.npy"]
    return source_files(fmt, "train", data_dir)


def measure_fresh(
    fmt: str, source: str, data_dir, cache_dir, steps, warmup, batch_size, workers, seed=0, noise="cpu", **aug
):
    """`measure` in a fresh Python process, the files it reads read once first (a warm page cache): its row."""
    _warm(_read_by(fmt, source, data_dir, cache_dir))
    args = ["--one", "--format", fmt, "--source", source, *_dirs(data_dir, cache_dir)]
    args += ["--steps", str(steps), "--warmup", str(warmup), "--batch-size", str(batch_size)]
    args += ["--workers", str(workers), "--seed", str(seed), "--translate", str(aug.get("translate", 0))]
    args += ["--noise", noise] + (["--hflip"] if aug.get("hflip") else [])
    return _child(args, f"{fmt} from {source}, {workers} workers, noise on {noise}")


def data_rows(
    formats: Sequence[str] = FORMATS,
    root=DEFAULT_ROOT,
    steps: int = 50,
    warmup: int = 5,
    batch_size: Optional[int] = None,
    workers_list: Sequence[int] = (0, 2),
    sources: bool = True,
    cache: bool = True,
    seed: int = 0,
    images: Optional[dict] = None,
    hflip: Optional[bool] = None,
    translate: Optional[int] = None,
    repeats: int = 1,
    noise_list: Sequence[str] = ("cpu",),
    progress: Optional[Callable] = None,
) -> list[dict]:
    """One row per (format, source, workers, noise), each measured `repeats` times in fresh processes (`measure_fresh`).

    The repeats go round-robin over every configuration, so that load from other processes hits all
    of them alike; a row holds the medians of images/s and of the time to the first batch. The batch
    size and augmentation are each format's preset's unless given; `images` maps a format to the
    training images of its synthetic set (DEFAULT_IMAGES otherwise). `progress(total)` may return a
    callback advanced once per measurement.
    """
    configs = []  # (fmt, source, data_dir, cache_dir), measure_fresh's keywords, prepare_s
    for fmt in formats if sources or cache else ():  # neither timed: nothing to write
        setup = ensure(fmt, root, (images or {}).get(fmt), cache=cache)
        kw = {"steps": steps, "warmup": warmup, "seed": seed, **_preset_options(fmt, batch_size, hflip, translate)}
        for source in [m for m, on in (("sources", sources), ("cache", cache)) if on]:
            prepare_s = setup["prepare_s"] if source == "cache" else None
            for workers in workers_list:
                for noise in noise_list:
                    where = (fmt, source, setup["data_dir"], setup["cache_dir"])
                    configs.append((where, {**kw, "workers": workers, "noise": noise}, prepare_s))
    advance = progress(len(configs) * max(1, repeats)) if progress else (lambda n: None)
    runs = [
        [_counted(measure_fresh(*where, **kw), advance) for where, kw, _ in configs] for _ in range(max(1, repeats))
    ]
    return [{**_median_row([run[k] for run in runs]), "prepare_s": c[2]} for k, c in enumerate(configs)]


def _counted(row: dict, advance: Callable) -> dict:
    advance(1)
    return row


def _preset_options(fmt: str, batch_size: Optional[int], hflip: Optional[bool], translate: Optional[int]) -> dict:
    """Batch size and augmentation: the format's preset's unless given."""

    cfg = load_preset(fmt)
    return {
        "batch_size": batch_size or cfg.train.batch_size,
        "hflip": cfg.data.hflip if hflip is None else hflip,
        "translate": cfg.data.translate if translate is None else translate,
    }


def _median_row(rows: list[dict]) -> dict:
    """The repeats of one configuration as one row: medians and range of the rates and times, the largest memory."""

    def largest(key: str) -> Optional[float]:
        return max((r[key] for r in rows if r[key] is not None), default=None)

    rates = [r["images_s"] for r in rows]
    return {
        **rows[0],
        "images_s": statistics.median(rates),
        "images_s_min": min(rates),
        "images_s_max": max(rates),
        "first_batch_s": statistics.median(r["first_batch_s"] for r in rows),
        "open_s": statistics.median(r["open_s"] for r in rows),
        "batch_ms": statistics.median(r["batch_ms"] for r in rows if r["batch_ms"] is not None),
        "peak_rss_mb": largest("peak_rss_mb"),
        "workers_peak_rss_mb": largest("workers_peak_rss_mb"),
        "load_avg": max(r["load_avg"] for r in rows),
        "repeats": len(rows),
    }


# ---------------------------------------------------------------------------------------------
# memory of several processes reading one prepared split


def _rollup_kb(pid: int) -> dict:
    """/proc/PID/smaps_rollup as {field: kB}."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            out[key] = int(value.split()[0])
    return out


def _mapping_pss_kb(pid: int, path: str) -> int:
    """Pss of the mappings of file `path` in process `pid` (/proc/PID/smaps)."""
    total, inside = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if fields and not fields[0].endswith(":"):  # a mapping's header: range perms offset dev inode [path]
                inside = " ".join(fields[5:]) == path
            elif inside and fields[0] == "Pss:":
                total += int(fields[1])
    return total


def _read_all(fmt: str, source: str, data_dir, cache_dir) -> tuple[dict, object]:
    """Open the training split as training does and read every image (every page of a mapped array).

    Returns the result and the dataset, which the caller keeps open while its memory is measured.
    """

    t0 = time.perf_counter()
    ds = get_dataset(fmt, "train", data_dir, cache_dir=cache_dir, use_cache=source == "cache")
    array = ds.array if isinstance(ds, MappedImages) else ds.images.numpy()  # (N, C, H, W) uint8
    total = sum(int(array[s : s + CHUNK].sum(dtype=np.uint64)) for s in range(0, len(array), CHUNK))
    return {"pid": os.getpid(), "images": len(array), "checksum": total, "read_s": time.perf_counter() - t0}, ds


def _pss_child(fmt: str, source: str, data_dir, cache_dir) -> int:
    """Import, say "ready", wait for "go", read the split, print the result, hold the data until stdin closes."""

    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":  # stdin closed: the parent gave up
        return 1
    result, ds = _read_all(fmt, source, data_dir, cache_dir)
    print(json.dumps(result), flush=True)
    sys.stdin.read()
    del ds
    return 0


def _start(fmt: str, source: str, setup: dict, rank: int, world: int, log) -> subprocess.Popen:
    args = ["--pss-child", "--format", fmt, "--source", source, *_dirs(setup["data_dir"], setup["cache_dir"])]
    env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)}
    cmd = [sys.executable, "-m", "finc_cli.bench.data", *args]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env)


def _expect(proc: subprocess.Popen, log) -> str:
    line = proc.stdout.readline()
    if not line:
        log.seek(0)
        tail = (log.read().decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"a memory-measuring process exited early: {tail}")
    return line.strip()


def _pss_processes(fmt: str, source: str, setup: dict, processes: int, array_path: str) -> list[dict]:
    """Each process's Pss (MB) once it has read everything, while all are alive, and before it opened the data."""
    with tempfile.TemporaryFile() as log:
        procs = [_start(fmt, source, setup, r, processes, log) for r in range(processes)]
        try:
            [_expect(p, log) for p in procs]
            idle = [_rollup_kb(p.pid)["Pss"] for p in procs]
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            results = [json.loads(_expect(p, log)) for p in procs]
            after = [(_rollup_kb(p.pid), _mapping_pss_kb(p.pid, array_path)) for p in procs]
        except BaseException:
            for p in procs:
                p.kill()
            raise
        finally:
            for p in procs:
                p.stdin.close()
                p.wait(timeout=60)
    return [
        {
            "source": source,
            "process": str(r),
            "images": res["images"],
            "read_s": res["read_s"],
            "pss_mb": roll["Pss"] / 1024,
            "rss_mb": roll["Rss"] / 1024,
            "idle_pss_mb": idle[r] / 1024,
            "array_pss_mb": mapped / 1024,
        }
        for r, (res, (roll, mapped)) in enumerate(zip(results, after))
    ]


def pss_rows(
    root=DEFAULT_ROOT, images: int = 100_000, processes: int = 2, sources=("cache", "sources"), fmt: str = "imagenet64"
) -> list[dict]:
    """Memory of `processes` processes (RANK/WORLD_SIZE set as torchrun does) that each read ALL of one training split.

    Per process: Pss (/proc/PID/smaps_rollup: a page shared by k processes counts 1/k in each) once
    everything is read, while all are alive; its Pss before it opened the data (torch imported);
    the Pss of its mapping of the prepared array. The "all" row adds them up: `ratio` is the total
    Pss ÷ one copy of the array, `added_ratio` the same for the memory added by opening and reading
    the data (the total less the interpreter's and torch's).
    """
    setup = ensure(fmt, root, images, cache=True)
    array_path = str((Path(setup["cache_dir"]) / f"{fmt}-train.npy").resolve())
    one_copy = np.load(array_path, mmap_mode="r").nbytes / 2**20
    rows = []
    for source in sources:
        _warm(_read_by(fmt, source, setup["data_dir"], setup["cache_dir"]))
        each = _pss_processes(fmt, source, setup, processes, array_path)
        total = {k: sum(r[k] for r in each) for k in ("pss_mb", "rss_mb", "idle_pss_mb", "array_pss_mb")}
        added = total["pss_mb"] - total["idle_pss_mb"]
        summary = {"source": source, "process": "all", "images": each[0]["images"], "array_mb": one_copy, **total}
        rows += each + [{**summary, "ratio": total["pss_mb"] / one_copy, "added_ratio": added / one_copy}]
    return rows


# ---------------------------------------------------------------------------------------------
# the prepared cache's check of its sources


def source_check_rows(root=DEFAULT_ROOT, repeats: int = 5, files: int = CELEBA_FILES) -> list[dict]:
    """Seconds to stat and digest the sources of a prepared CelebA split, as every use of the cache does.

    The folder holds `files` CelebA-layout images (CelebA's count by default) as tiny valid JPEGs:
    the check reads only each file's size and modification time. Timed `repeats` times after the
    writing (warm dentry and inode caches, as for any command after the first).
    """
    folder = Path(root) / "celeba64-files"
    written = write_synthetic("celeba64-files", folder, files)
    times, cpu, state = [], [], []
    for _ in range(max(1, repeats)):
        t0, c0 = time.perf_counter(), time.process_time()
        state = source_state("celeba64", "train", folder)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return [
        {
            "format": "celeba64",
            "files": sum(s.get("files", 1) for s in state),
            "write_s": written["seconds"],
            "check_s": statistics.median(times),
            "check_s_min": min(times),
            "check_s_max": max(times),
            "check_cpu_s": statistics.median(cpu),  # this process's CPU time: less sensitive to other load
            "repeats": len(times),
            "load_avg": os.getloadavg()[0],
        }
    ]


# ---------------------------------------------------------------------------------------------
# the share of a training step spent waiting for data


def _data_share(metrics: Path) -> dict:
    """Mean data_s and compute_s per step over the logged intervals, the first (warm-up) left out."""
    logged = [r for r in map(json.loads, metrics.read_text().splitlines()) if "data_s" in r]
    kept = logged[1:] or logged
    data_s = statistics.fmean(r["data_s"] for r in kept)
    compute_s = statistics.fmean(r["compute_s"] for r in kept)
    step_s = data_s + compute_s
    return {
        "intervals": len(kept),
        "data_s": data_s,
        "compute_s": compute_s,
        "step_s": step_s,
        "data_share": data_s / step_s,
    }


def train_rows(
    root=DEFAULT_ROOT,
    images: int = DEFAULT_IMAGES["celeba64"],
    steps: int = 30,
    batch_size: int = 64,
    log_every: int = 5,
    runs: Sequence[tuple[str, int]] = (("cache", 0), ("sources", 0), ("sources", 2)),
    sets: Optional[dict] = None,
    seed: int = 0,
) -> list[dict]:
    """celeba64 training (SMALL_MODEL unless `sets` overrides it) per (source, data.num_workers): data share of a step.

    Reads the data_s (waiting for the batch) and compute_s that training logs in metrics.jsonl.
    """

    setup = ensure("celeba64", root, images, cache=True)
    no_cache = Path(root) / "celeba64" / "no-cache"  # an empty cache folder: training reads the JPEGs
    no_cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for source, workers in runs:
        overrides = {
            **SMALL_MODEL,
            **(sets or {}),
            "data.data_dir": str(setup["data_dir"]),
            "data.cache_dir": str(setup["cache_dir"] if source == "cache" else no_cache),
            "data.num_workers": workers,
            **{f"train.{k}": steps for k in ("steps", "eval_every", "sample_every", "checkpoint_every")},
            **{"train.batch_size": batch_size, "train.log_every": log_every, "train.device": "cpu", "train.seed": seed},
        }
        cfg = load_preset("celeba64", overrides)
        _warm(_read_by("celeba64", source, setup["data_dir"], setup["cache_dir"]))
        out = Path(tempfile.mkdtemp(prefix="train-", dir=root))
        try:
            t0 = time.perf_counter()
            train(cfg, out / "run")
            share = _data_share(out / "run" / "metrics.jsonl")
        finally:
            shutil.rmtree(out, ignore_errors=True)
        m = cfg.model
        rows.append(
            {
                "source": source,
                "reads": "memory-mapped .npy" if source == "cache" else "JPEGs",
                "workers": workers,
                "batch": batch_size,
                "steps": steps,
                "model": f"L={m.levels} K={m.steps} width {m.hidden}",
                "seconds": time.perf_counter() - t0,
                "load_avg": os.getloadavg()[0],
                **share,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------
# the processes the measurements run in


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m finc_cli.bench.data", description="One data measurement (JSON).")
    role = p.add_mutually_exclusive_group(required=True)
    role.add_argument("--one", action="store_true", help="measure one (format, source, workers); print its row")
    role.add_argument("--pss-child", action="store_true", help="read a whole split when told to (pss_rows)")
    p.add_argument("--format", required=True)
    p.add_argument("--source", choices=("sources", "cache"), required=True)
    p.add_argument("--data-dir")
    p.add_argument("--cache-dir", required=True)
    for name, default in (("--steps", 50), ("--warmup", 5), ("--batch-size", 64), ("--workers", 0), ("--seed", 0)):
        p.add_argument(name, type=int, default=default)
    p.add_argument("--translate", type=int, default=0)
    p.add_argument("--hflip", action="store_true")
    p.add_argument("--noise", choices=NOISE, default="cpu")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = _parser().parse_args(argv)
    if a.pss_child:
        return _pss_child(a.format, a.source, a.data_dir, a.cache_dir)
    sizes = dict(steps=a.steps, warmup=a.warmup, batch_size=a.batch_size, workers=a.workers)
    row = measure(
        a.format,
        a.source,
        a.data_dir,
        a.cache_dir,
        **sizes,
        seed=a.seed,
        hflip=a.hflip,
        translate=a.translate,
        noise=a.noise,
    )
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
