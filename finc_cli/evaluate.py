"""Bits/dim of a model over a whole split: the plain function behind `finc evaluate` / `finc bpd`."""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch

from finc_cli import distributed as dist_utils
from finc_cli.data.batches import fetch

__all__ = ["evaluate", "evaluate_bpd"]


def evaluate(
    checkpoint: str,
    split: str = "test",
    data_dir: Optional[str] = None,
    batch_size: Optional[int] = None,
    device: str = "auto",
    progress: Optional[Callable[[int, int], Callable[[int], None]]] = None,
    cache_dir: Optional[str] = None,
    notify: Optional[Callable[[str], None]] = None,
) -> dict:
    """Returns {bpd, bpd_stderr, n_images, split, dataset, checkpoint, seconds}.

    `progress(total)` may return a callback advanced by the number of images done; `notify` gets
    one-line notes about the data (a missing or unusable prepared cache).
    """
    from finc_cli.checkpoint import load_checkpoint
    from finc_cli.data.datasets import get_dataset
    from finc_cli.device import resolve_device

    dev = resolve_device(device)
    model, cfg = load_checkpoint(checkpoint, device=str(dev))
    ds = get_dataset(
        cfg.data.name, split, data_dir or cfg.data.data_dir, cache_dir=cache_dir or cfg.data.cache_dir, notify=notify
    )
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


@torch.no_grad()
def evaluate_bpd(model, ds, batch_size: int, device, seed: int = 1234, progress: Optional[Callable] = None) -> dict:
    """Per-image bits/dim over a whole dataset with fixed dequantization noise: mean and stderr."""
    was_training = model.training
    model.eval()
    values = []
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist_utils.active() else (0, 1)
    shard = torch.arange(rank, len(ds), world)  # each rank evaluates every world-th image
    for start in range(0, len(shard), batch_size):
        idx = shard[start : start + batch_size]
        x = fetch(ds, idx).to(device)
        # Noise seeded by the batch's first image index: repeatable for a given batch size and process count.
        g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + int(idx[0]))
        values.append(model(x, generator=g).double().cpu())
        if progress is not None:
            progress(len(idx))
    model.train(was_training)
    per_image = torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)
    per_image, count = dist_utils.gather_values(per_image)
    mean = per_image.mean().item() if count else float("nan")
    stderr = (per_image.std(unbiased=True) / math.sqrt(count)).item() if count > 1 else 0.0
    return {"bpd": mean, "bpd_stderr": stderr, "n_images": count}
