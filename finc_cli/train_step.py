"""One optimizer update: its batch, its learning rate and its randomness, all from (seed, step)."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from finc_cli.config import Config
from finc_cli import distributed as dist_utils
from finc_cli.train_state import TrainState


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


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices of the batch for optimizer step `step`: epoch-wise permutations from (seed, epoch).

    A pure function of the step, so a resumed run sees exactly the batches it would have seen.
    """
    per_epoch = max(1, n // batch_size)  # drop the last incomplete batch
    epoch, pos = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    return perm[pos * batch_size : (pos + 1) * batch_size]


def fetch(ds, idx: torch.Tensor) -> torch.Tensor:
    """uint8 batch (B, C, H, W) for the given indices, augmented when the dataset says so."""
    images = getattr(ds, "images", None)
    if images is not None:
        batch = images[idx]
        transform = getattr(ds, "transform", None)
        return transform(batch) if transform is not None else batch
    return torch.stack([ds[int(i)] for i in idx])


class LogProb(torch.nn.Module):
    """The training forward, log p(v) of dequantized images: what DistributedDataParallel wraps."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.model.log_prob(v)


def train_step(net, model, optimizer, train_ds, cfg: Config, state: TrainState, ctx, num_dims: int) -> dict:
    """One optimizer update over the global batch; a pure function of (seed, step) for its randomness.

    Returns {loss, grad_norm, skipped}: a non-finite loss or gradient skips the update and counts
    in `state.bad_steps`.
    """
    t = cfg.train
    set_lr(optimizer, t.lr * lr_factor(state.step, cfg) * state.lr_scale)
    torch.manual_seed(t.seed * 1_000_003 + state.step + 1)  # augmentation and noise of this step
    idx = batch_indices(len(train_ds), t.batch_size, t.seed, state.step)
    x = fetch(train_ds, idx)  # (B_global, C, H, W) uint8
    noise = torch.rand(x.shape)  # the same on every rank: DDP = one process with the global batch
    mine = slice(ctx.rank, None, ctx.world_size)
    x, noise = x[mine].to(ctx.device), noise[mine].to(ctx.device)
    optimizer.zero_grad(set_to_none=True)
    loss = _backward(net, x, noise, model.bins, t.accumulate, ctx, num_dims)
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip if t.grad_clip else float("inf"))
    if not (math.isfinite(loss) and math.isfinite(float(grad_norm))):
        optimizer.zero_grad(set_to_none=True)
        state.bad_steps += 1
        return {"loss": loss, "grad_norm": float(grad_norm), "skipped": True}
    optimizer.step()
    state.bad_steps = 0
    return {"loss": loss, "grad_norm": float(grad_norm), "skipped": False}


def _backward(net, x: torch.Tensor, noise: torch.Tensor, bins: int, accumulate: int, ctx, num_dims: int) -> float:
    """Gradients of the mean bits/dim over `accumulate` micro-batches; returns that mean over all ranks."""
    from finc_cli.losses import bits_per_dim

    micro = x.shape[0] // accumulate
    total = torch.zeros((), device=ctx.device, dtype=torch.float64)
    for m in range(accumulate):
        part = slice(m * micro, (m + 1) * micro)
        v = (x[part].float() + noise[part]) / bins  # dequantized, bin-scaled (DESIGN §3)
        sync = m == accumulate - 1 or not ctx.distributed  # DDP all-reduces gradients once, at the end
        with (net.no_sync() if not sync else nullcontext()):
            bpd = bits_per_dim(-net(v), num_dims, bins).mean()
            (bpd / accumulate).backward()
        total += bpd.detach().double() / accumulate
    total = dist_utils.all_reduce_sum(total) / ctx.world_size
    return float(total)


def nonfinite_reason(stats: dict) -> str:
    if not math.isfinite(stats["loss"]):
        return f"non-finite loss ({stats['loss']})"
    return f"non-finite gradient (norm {stats['grad_norm']})"
