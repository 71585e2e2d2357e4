"""Data benchmark: images/s, time to the first batch and peak memory of each format, from its sources or prepared.

Synthetic datasets in the real on-disk formats (`data_synthetic`) are read exactly as training
reads them (`get_dataset`, `step_batch`, `Prefetcher`). Each (format, source, workers) is measured
in a fresh process (`python -m finc_cli.bench.data_throughput ...`) so that its peak memory and its
time to the first batch start from nothing. The files a measurement reads are read once just
before it, so every figure is a warm-page-cache figure (only root can drop the cache). Peak RSS
counts the page-cache pages a process has mapped, which a memory-mapped array shares between
processes; `data_memory.pss_rows` measures what processes cost together.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from functools import partial
from typing import Callable, Optional, Sequence

import numpy as np
import torch

import finc_cli.data.cache  # noqa: F401 - what training imports is loaded before the clock starts
from finc_cli.bench.data_synthetic import DEFAULT_ROOT, child_parser, dir_args, ensure, read_by, warm
from finc_cli.config import load_preset
from finc_cli.data.batches import step_batch
from finc_cli.data.cache import MappedImages
from finc_cli.data.load import get_dataset
from finc_cli.data.prefetch import Prefetcher

__all__ = ["FORMATS", "NOISE", "data_rows", "main", "measure", "measure_fresh"]

FORMATS = ("digits", "mnist", "cifar10", "imagenet64", "celeba64")
# Where a step's dequantization noise is drawn: by the data path on the CPU (CPU training), or by
# the step on the training device (GPU training: the batch carries uint8 images only).
NOISE = ("cpu", "device")
_MODULE = "finc_cli.bench.data_throughput"  # run as a fresh process per measurement
READS = {"digits": "csv.gz", "mnist": "idx3", "cifar10": "pickles", "celeba64": "JPEGs"}


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
    """Run `python -m finc_cli.bench.data_throughput ARGS` and return the JSON row it prints last."""
    cmd = [sys.executable, "-m", _MODULE, *args]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"measuring {what} failed (exit {out.returncode}): {tail}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_fresh(
    fmt: str, source: str, data_dir, cache_dir, steps, warmup, batch_size, workers, seed=0, noise="cpu", **aug
):
    """`measure` in a fresh Python process, the files it reads read once first (a warm page cache): its row."""
    warm(read_by(fmt, source, data_dir, cache_dir))
    args = ["--format", fmt, "--source", source, *dir_args(data_dir, cache_dir)]
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
# the process one measurement runs in


def _parser():
    p = child_parser(_MODULE, "Measure one (format, source, workers); print its row (JSON).")
    for name, default in (("--steps", 50), ("--warmup", 5), ("--batch-size", 64), ("--workers", 0), ("--seed", 0)):
        p.add_argument(name, type=int, default=default)
    p.add_argument("--translate", type=int, default=0)
    p.add_argument("--hflip", action="store_true")
    p.add_argument("--noise", choices=NOISE, default="cpu")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = _parser().parse_args(argv)
    sizes = dict(steps=a.steps, warmup=a.warmup, batch_size=a.batch_size, workers=a.workers)
    aug = dict(hflip=a.hflip, translate=a.translate)
    row = measure(a.format, a.source, a.data_dir, a.cache_dir, **sizes, seed=a.seed, noise=a.noise, **aug)
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
