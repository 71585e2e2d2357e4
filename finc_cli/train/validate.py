"""Per-image bits/dim of a model over a whole dataset: what validation measures, and what `finc bpd` reports."""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from finc_cli.data.batches import fetch_labelled
from finc_cli.model import eval_mode
from finc_cli.runtime import distributed

__all__ = ["evaluate_bpd", "evaluate_classes", "lower_scorer", "validation_record", "validation_scores"]


@torch.no_grad()
def evaluate_bpd(
    model, ds, batch_size: int, device, seed: int = 1234, progress: Optional[Callable] = None, samples: int = 1
) -> dict:
    """Per-image bits/dim over a whole dataset with fixed dequantization noise: mean and stderr.

    `bpd` is the single-sample bound (the first draw, as training measures it). With `samples` K > 1
    each image also gets the importance-weighted estimate of -log2 P(x) per dimension: a
    log-mean-exp of the K draws' log-weights, log p(x + u_k) - log q(u_k | x) (docs/model.md §7),
    reported as `bpd_iw` with its standard error over images. It is never above the bound in
    expectation and approaches the exact discrete bits/dim as K grows. A class-conditional model is
    scored given each image's class (`ds` a `LabelledDataset`): -log2 p(x | y) per dimension.
    """
    first, weighted = [], []
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed.active() else (0, 1)
    shard = torch.arange(rank, len(ds), world)  # each rank evaluates every world-th image
    nats_per_bpd = model.num_dims * math.log(2)  # bits/dim of an image -> its NLL in nats
    with eval_mode(model):
        for start in range(0, len(shard), batch_size):
            idx = shard[start : start + batch_size]
            x, y = _batch(model, ds, idx, device)
            # Noise seeded by the batch's first image index: repeatable for a given batch size and process count.
            g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + int(idx[0]))
            given = {} if y is None else {"y": y}  # an unconditional model's forward is called as it always was
            draws = torch.stack(
                [model(x, generator=g, **given).double().cpu() for _ in range(samples)]
            )  # (K, B) bits/dim
            first.append(draws[0])
            log_w = -draws * nats_per_bpd  # (K, B) log-weights in nats
            weighted.append(-(torch.logsumexp(log_w, 0) - math.log(samples)) / nats_per_bpd)
            if progress is not None:
                progress(len(idx))
    result = {**_mean_stderr(first, "bpd"), "samples": samples}
    if samples > 1:
        result.update(_mean_stderr(weighted, "bpd_iw"))
    return result


@torch.no_grad()
def evaluate_classes(
    model, ds, batch_size: int, device, seed: int = 1234, progress: Optional[Callable] = None, classify: bool = False
) -> dict:
    """A class-conditional model over a labelled dataset: the marginal bits/dim and, with `classify`, accuracies.

    Each image gets -log2 p(x | c) per dimension for every class c with the same dequantization
    noise (the first draw `evaluate_bpd` makes for the same seed and batch size), so `bpd` here is
    its single-sample figure given the true class. The marginal is -log2 Σ_c p(x | c) p(c) per
    dimension with p(c) = 1/num_classes, a log-sum-exp over the classes (docs/model.md §14).
    `classify` adds the accuracy of the Bayes classifier argmax_c p(x | c) p(c) and, when the model
    has one, of its class head.
    """
    given, marginal, bayes, head = [], [], [], []
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed.active() else (0, 1)
    shard = torch.arange(rank, len(ds), world)
    nats_per_bpd = model.num_dims * math.log(2)
    dtype = next(model.parameters()).dtype
    with eval_mode(model):
        for start in range(0, len(shard), batch_size):
            idx = shard[start : start + batch_size]
            x, y = _batch(model, ds, idx, device)
            g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + int(idx[0]))  # as evaluate_bpd's
            noise = torch.rand(x.shape, generator=g, device=g.device, dtype=dtype).to(device)
            scores, logits = model.class_scores(x, noise)  # one pass through the flow for every class and the head
            bpd = scores.double()  # (B, K)
            given.append(bpd.gather(1, y[:, None])[:, 0].cpu())
            log_joint = -bpd * nats_per_bpd - math.log(model.num_classes)  # log p(x | c) + log p(c), nats
            marginal.append((-torch.logsumexp(log_joint, 1) / nats_per_bpd).cpu())
            if classify:
                bayes.append((bpd.argmin(1) == y).double().cpu())  # uniform p(c): the least bits/dim wins
                if model.has_class_head:
                    head.append((logits.argmax(1) == y).double().cpu())
            if progress is not None:
                progress(len(idx))
    result = {**_mean_stderr(given, "bpd"), **_mean_stderr(marginal, "bpd_marginal"), "num_classes": model.num_classes}
    if classify:
        result["accuracy_bayes"] = _mean_stderr(bayes, "accuracy")["accuracy"]
        result["accuracy_head"] = _mean_stderr(head, "accuracy")["accuracy"] if model.has_class_head else None
    return result


def _batch(model, ds, idx: torch.Tensor, device) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(images, classes or None) of `idx` on `device`; the classes only for a class-conditional model."""
    x, y = fetch_labelled(ds, idx)
    if not getattr(model, "conditional", False):
        return x.to(device), None
    if y is None or y.dim() != 1:
        raise ValueError("a class-conditional model is evaluated on a dataset with one class per image")
    return x.to(device), y.to(device)


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
