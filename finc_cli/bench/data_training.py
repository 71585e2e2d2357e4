"""The share of a training step spent waiting for data: short celeba64 trainings per (source, workers)."""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from finc_cli.bench.data_synthetic import DEFAULT_IMAGES, DEFAULT_ROOT, ensure, read_by, warm
from finc_cli.config import load_preset
from finc_cli.train import train
from finc_cli.train.run_dir import read_metrics

__all__ = ["SMALL_MODEL", "data_wait_rows"]

# A short step, so that the data share is visible: no learned dequantizer and no weight average either.
SMALL_MODEL = {
    "model.levels": 2,
    "model.steps": 1,
    "model.hidden": 16,
    "model.dequantization": "uniform",
    "train.ema_decay": 0.0,
}


def _data_share(metrics: Path) -> dict:
    """Mean data_s and compute_s per step over the logged intervals, the first (warm-up) left out."""
    logged = [r for r in read_metrics(metrics) if "data_s" in r]
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


def data_wait_rows(
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
        warm(read_by("celeba64", source, setup["data_dir"], setup["cache_dir"]))
        seconds, share = _train(cfg, Path(root))
        m = cfg.model
        rows.append(
            {
                "source": source,
                "reads": "memory-mapped .npy" if source == "cache" else "JPEGs",
                "workers": workers,
                "batch": batch_size,
                "steps": steps,
                "model": f"L={m.levels} K={m.steps} width {m.hidden}",
                "seconds": seconds,
                "load_avg": os.getloadavg()[0],
                **share,
            }
        )
    return rows


def _train(cfg, root: Path) -> tuple[float, dict]:
    """Train `cfg` in a scratch run folder under `root`, removed after: seconds taken and the data share."""
    out = Path(tempfile.mkdtemp(prefix="train-", dir=root))
    try:
        t0 = time.perf_counter()
        train(cfg, out / "run")
        return time.perf_counter() - t0, _data_share(out / "run" / "metrics.jsonl")
    finally:
        shutil.rmtree(out, ignore_errors=True)
