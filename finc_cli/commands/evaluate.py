"""Bits/dim of a model over a whole split: the plain function behind `finc evaluate` / `finc bpd`."""

from __future__ import annotations

import time
from typing import Callable, Optional

from finc_cli.checkpoint import load_model
from finc_cli.data.load import get_dataset
from finc_cli.errors import InputError
from finc_cli.runtime.device import resolve_device
from finc_cli.train.validate import evaluate_bpd

__all__ = ["evaluate"]


def evaluate(
    checkpoint: str,
    split: str = "test",
    data_dir: Optional[str] = None,
    batch_size: Optional[int] = None,
    device: str = "auto",
    progress: Optional[Callable[[int, int], Callable[[int], None]]] = None,
    cache_dir: Optional[str] = None,
    notify: Optional[Callable[[str], None]] = None,
    samples: int = 1,
    weights: Optional[str] = None,
) -> dict:
    """Returns {bpd, bpd_stderr, n_images, samples, split, dataset, checkpoint, weights, seconds}, and with
    `samples` K > 1 also the importance-weighted {bpd_iw, bpd_iw_stderr} over K dequantization draws.

    `progress(total)` may return a callback advanced by the number of images done; `notify` gets
    one-line notes about the data (a missing or unusable prepared cache).
    """

    if samples < 1:
        raise InputError(f"--samples must be at least 1, got {samples}")
    dev = resolve_device(device)
    model, cfg, used = load_model(checkpoint, device=str(dev), weights=weights)
    ds = get_dataset(
        cfg.data.name, split, data_dir or cfg.data.data_dir, cache_dir=cache_dir or cfg.data.cache_dir, notify=notify
    )
    callback = progress(len(ds)) if progress else None
    t0 = time.perf_counter()
    result = evaluate_bpd(model, ds, batch_size or cfg.train.eval_batch_size, dev, progress=callback, samples=samples)
    return {
        **result,
        "split": split,
        "dataset": cfg.data.name,
        "checkpoint": str(checkpoint),
        "weights": used,
        "seconds": time.perf_counter() - t0,
    }
