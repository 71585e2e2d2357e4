"""One optimizer update: the optimizer, the learning-rate schedule, and the step itself (batch, noise, guard)."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Optional

import torch

from finc_cli.config import Config
from finc_cli.runtime import distributed
from finc_cli.train.state import TrainState

__all__ = ["build_optimizer", "lr_factor", "nonfinite_reason", "set_lr", "train_step"]


def build_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    t = cfg.train
    cls = {"adam": torch.optim.Adam, "adamax": torch.optim.Adamax, "adamw": torch.optim.AdamW}[t.optimizer]
    return cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


def lr_factor(step: int, cfg: Config) -> float:
    """Linear warm-up, then none / cosine / exponential decay (step counts optimizer updates)."""
    t = cfg.train
    if t.warmup_steps and step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    after = step - t.warmup_steps
    if t.lr_decay == "cosine":
        span = max(1, t.steps - t.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(after, span) / span))
    if t.lr_decay == "exponential":
        return t.lr_decay_rate**after
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_step(
    net,
    model,
    optimizer,
    images: torch.Tensor,
    noise: torch.Tensor,
    cfg: Config,
    state: TrainState,
    ctx,
    labels: Optional[torch.Tensor] = None,
) -> dict:
    """One optimizer update on this process's slice of the step's global batch (`data.batches.step_batch`).

    `images` (uint8) and `noise` are already on the device. `net` is the model itself, or the model
    wrapped in DistributedDataParallel: either way its forward is the model's one loss, bits/dim of
    integer images (docs/training.md §3–5). A class-conditional model gets the images' classes
    `labels` (on the device) and its training objective (docs/model.md §14).

    Returns {loss, grad_norm, skipped}: a non-finite loss or gradient skips the update and counts
    in `state.bad_steps`.
    """
    t = cfg.train
    set_lr(optimizer, t.lr * lr_factor(state.step, cfg) * state.lr_scale)
    optimizer.zero_grad(set_to_none=True)
    loss = _backward(net, images, noise, t.accumulate, ctx, labels)
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip if t.grad_clip else float("inf"))
    if not (math.isfinite(loss) and math.isfinite(float(grad_norm))):
        optimizer.zero_grad(set_to_none=True)
        state.bad_steps += 1
        return {"loss": loss, "grad_norm": float(grad_norm), "skipped": True}
    optimizer.step()
    state.bad_steps = 0
    return {"loss": loss, "grad_norm": float(grad_norm), "skipped": False}


def _backward(
    net, x: torch.Tensor, noise: torch.Tensor, accumulate: int, ctx, labels: Optional[torch.Tensor] = None
) -> float:
    """Gradients of the mean bits/dim over `accumulate` micro-batches; returns that mean over all ranks.

    With `labels` (a class-conditional model) the figure is the training objective: bits/dim given
    the class plus the weighted class-head term (docs/model.md §14).
    """
    micro = x.shape[0] // accumulate
    total = torch.zeros((), device=ctx.device, dtype=torch.float64)
    for m in range(accumulate):
        part = slice(m * micro, (m + 1) * micro)
        sync = m == accumulate - 1 or not ctx.distributed  # DDP all-reduces gradients once, at the end
        with net.no_sync() if not sync else nullcontext():
            if labels is None:
                bpd = net(x[part], noise=noise[part]).mean()
            else:
                bpd = net(x[part], noise=noise[part], y=labels[part], objective=True).mean()
            (bpd / accumulate).backward()
        total += bpd.detach().double() / accumulate
    total = distributed.all_reduce_sum(total) / ctx.world_size
    return float(total)


def nonfinite_reason(stats: dict) -> str:
    if not math.isfinite(stats["loss"]):
        return f"non-finite loss ({stats['loss']})"
    return f"non-finite gradient (norm {stats['grad_norm']})"
