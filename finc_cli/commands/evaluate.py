"""Bits/dim of a model over a whole split: the plain function behind `finc evaluate` / `finc bpd`."""

from __future__ import annotations

import time
from typing import Callable, Optional

from finc_cli.commands.inference import load_inference
from finc_cli.errors import InputError
from finc_cli.train.validate import evaluate_bpd, evaluate_classes

__all__ = ["evaluate"]


def evaluate(
    checkpoint: str,
    *,
    split: str = "test",
    data_dir: Optional[str] = None,
    batch_size: Optional[int] = None,
    device: str = "auto",
    progress: Optional[Callable[[int, int], Callable[[int], None]]] = None,
    cache_dir: Optional[str] = None,
    notify: Optional[Callable[[str], None]] = None,
    samples: int = 1,
    weights: Optional[str] = None,
    classify: bool = False,
) -> dict:
    """Returns {bpd, bpd_stderr, n_images, samples, split, dataset, checkpoint, weights, seconds}, and with
    `samples` K > 1 also the importance-weighted {bpd_iw, bpd_iw_stderr} over K dequantization draws.

    On a class-conditional model `bpd` is given each image's class, and {bpd_marginal,
    bpd_marginal_stderr, num_classes} come with it (-log2 Σ_y p(x | y) p(y) per dimension, uniform
    p(y)); `classify` adds {accuracy_bayes, accuracy_head} (head None without one). `classify` on an
    unconditional model is an InputError.

    `progress(total)` may return a callback advanced by the number of images done; `notify` gets
    one-line notes about the data (a missing or unusable prepared cache).
    """

    if samples < 1:
        raise InputError(f"--samples must be at least 1, got {samples}")
    run = load_inference(
        checkpoint, device=device, weights=weights, data_dir=data_dir, cache_dir=cache_dir, notify=notify
    )
    conditional = run.model.conditional
    if classify and not conditional:
        raise InputError(f"--classify needs a class-conditional model; {checkpoint} has model.conditional false")
    ds = run.dataset(split)
    passes = 2 if conditional else 1  # the conditional pass scores every class (and the head) at once
    callback = progress(passes * len(ds)) if progress else None
    t0 = time.perf_counter()
    batch = batch_size or run.cfg.train.eval_batch_size
    result = evaluate_bpd(run.model, ds, batch, run.device, progress=callback, samples=samples)
    if conditional:
        each = (lambda k: callback(k * (passes - 1))) if callback else None
        classes = evaluate_classes(run.model, ds, batch, run.device, progress=each, classify=classify)
        result.update({k: v for k, v in classes.items() if not k.startswith("bpd") or k.startswith("bpd_marginal")})
    return {
        **result,
        "split": split,
        "dataset": run.cfg.data.name,
        "checkpoint": str(checkpoint),
        "weights": run.weights,
        "seconds": time.perf_counter() - t0,
    }
