"""Bits/dim of a checkpoint over a whole split: the plain function behind `finc evaluate` / `finc bpd`."""

from __future__ import annotations

import time
from typing import Callable, Optional


def evaluate(
    checkpoint: str,
    split: str = "test",
    data_dir: Optional[str] = None,
    batch_size: Optional[int] = None,
    device: str = "auto",
    progress: Optional[Callable[[int, int], Callable[[int], None]]] = None,
) -> dict:
    """Returns {bpd, bpd_stderr, n_images, split, dataset, checkpoint, seconds}.

    `progress(total)` may return a callback advanced by the number of images done.
    """
    from finc_cli.checkpoint import load_checkpoint
    from finc_cli.data.datasets import get_dataset
    from finc_cli.device import resolve_device
    from finc_cli.train import evaluate_bpd

    dev = resolve_device(device)
    model, cfg = load_checkpoint(checkpoint, device=str(dev))
    ds = get_dataset(cfg.data.name, split, data_dir or cfg.data.data_dir)
    callback = progress(len(ds)) if progress else None
    t0 = time.perf_counter()
    result = evaluate_bpd(model, ds, batch_size or cfg.train.eval_batch_size, dev, progress=callback)
    return {
        **result,
        "split": split,
        "dataset": cfg.data.name,
        "checkpoint": str(checkpoint),
        "seconds": time.perf_counter() - t0,
    }
