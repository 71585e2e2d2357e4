"""Per-image bits/dim of a model over a whole dataset: what validation measures, and what `finc bpd` reports."""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from finc_cli.data.batches import fetch
from finc_cli.model import eval_mode
from finc_cli.runtime import distributed

__all__ = ["evaluate_bpd", "lower_scorer", "validation_record", "validation_scores"]


@torch.no_grad()
def evaluate_bpd(
    model, ds, batch_size: int, device, seed: int = 1234, progress: Optional[Callable] = None, samples: int = 1
) -> dict:
    """Per-image bits/dim over a whole dataset with fixed dequantization noise: mean and stderr.

    `bpd` is the single-sample bound (the first draw, as training measures it). With `samples` K > 1
    each image also gets the importance-weighted estimate of -log2 P(x) per dimension: a
    log-mean-exp of the K draws' log-weights, log p(x + u_k) - log q(u_k | x) (docs/model.md §7),
    reported as `bpd_iw` with its standard error over images. It is never above the bound in
    expectation and approaches the exact discrete bits/dim as K grows.
    """
    first, weighted = [], []
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed.active() else (0, 1)
    shard = torch.arange(rank, len(ds), world)  # each rank evaluates every world-th image
    nats_per_bpd = model.num_dims * math.log(2)  # bits/dim of an image -> its NLL in nats
    with eval_mode(model):
        for start in range(0, len(shard), batch_size):
            idx = shard[start : start + batch_size]
            x = fetch(ds, idx).to(device)
            # Noise seeded by the batch's first image index: repeatable for a given batch size and process count.
            g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + int(idx[0]))
            draws = torch.stack([model(x, generator=g).double().cpu() for _ in range(samples)])  # (K, B) bits/dim
            first.append(draws[0])
            log_w = -draws * nats_per_bpd  # (K, B) log-weights in nats
            weighted.append(-(torch.logsumexp(log_w, 0) - math.log(samples)) / nats_per_bpd)
            if progress is not None:
                progress(len(idx))
    result = {**_mean_stderr(first, "bpd"), "samples": samples}
    if samples > 1:
        result.update(_mean_stderr(weighted, "bpd_iw"))
    return result


def validation_scores(model, ema, ds, batch_size: int, device) -> dict:
    """{"raw": `evaluate_bpd` of the model, and "ema": the same for the averaged weights when `ema` is kept}."""
    scores = {"raw": evaluate_bpd(model, ds, batch_size, device)}
    if ema is not None:
        with ema.applied(model):
            scores["ema"] = evaluate_bpd(model, ds, batch_size, device)
    return scores


def lower_scorer(scores: dict) -> str:
    """The weights ("raw" or "ema") with the lower validation bits/dim; a tie keeps the average, NaN loses."""
    return min(scores, key=lambda k: (_finite_or_inf(scores[k]["bpd"]), k != "ema"))


def validation_record(step: int, scores: dict, choice: str, recon_max_err: float) -> dict:
    """The metrics.jsonl record of a validation: the chosen weights' bits/dim, every scorer's, the health check."""
    return {
        "step": step,
        "val_bpd": scores[choice]["bpd"],
        "val_bpd_stderr": scores[choice]["bpd_stderr"],
        "val_weights": choice,
        **{f"val_bpd_{k}": v["bpd"] for k, v in scores.items()},
        "recon_max_err": recon_max_err,
    }


def _finite_or_inf(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def _mean_stderr(parts: list, name: str) -> dict:
    """{name, name_stderr, n_images} of per-image values gathered over every rank."""
    values = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
    values, count = distributed.gather_values(values)
    mean = values.mean().item() if count else float("nan")
    stderr = (values.std(unbiased=True) / math.sqrt(count)).item() if count > 1 else 0.0
    return {name: mean, f"{name}_stderr": stderr, "n_images": count}
