"""Training: the plain function behind `finc train` (returns a summary dict, prints via a reporter)."""

from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from finc_cli.checkpoint import read_checkpoint, save_checkpoint
from finc_cli.config import Config, config_from_dict, save_config
from finc_cli import distributed as dist_utils


class RunDirError(ValueError):
    """The run directory cannot be used as asked (exists, or nothing to resume)."""


class TrainingInterrupted(Exception):
    def __init__(self, step: int, signum: int, path: Path):
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}; resumable checkpoint {path}")
        self.step, self.signum, self.path = step, signum, path


class TrainingDiverged(RuntimeError):
    """Rollbacks did not help: the run keeps producing non-finite steps."""


MAX_ROLLBACKS = 10  # each halves the learning rate: 2^-10 of it is no longer training


@dataclass
class TrainState:
    step: int = 0
    best_val_bpd: float = math.inf
    bad_steps: int = 0  # consecutive non-finite steps
    rollbacks: int = 0
    lr_scale: float = 1.0  # lowered after each rollback
    history: list = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# building blocks


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


@torch.no_grad()
def evaluate_bpd(model, ds, batch_size: int, device, seed: int = 1234, progress: Optional[Callable] = None) -> dict:
    """Per-image bits/dim over a whole dataset with fixed dequantization noise: mean and stderr."""
    was_training = model.training
    model.eval()
    net = model
    values = []
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist_utils.active() else (0, 1)
    shard = torch.arange(rank, len(ds), world)  # each rank evaluates every world-th image
    for start in range(0, len(shard), batch_size):
        idx = shard[start : start + batch_size]
        x = fetch(ds, idx).to(device)
        # Noise seeded by image index: the figure does not depend on batch size or rank count.
        g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + int(idx[0]))
        values.append(net.nll_bits_per_dim(x, generator=g).double().cpu())
        if progress is not None:
            progress(len(idx))
    model.train(was_training)
    per_image = torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)
    per_image, count = dist_utils.gather_values(per_image)
    mean = per_image.mean().item() if count else float("nan")
    stderr = (per_image.std(unbiased=True) / math.sqrt(count)).item() if count > 1 else 0.0
    return {"bpd": mean, "bpd_stderr": stderr, "n_images": count}


# ---------------------------------------------------------------------------------------------
# run directory, checkpoints, resume


RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "config.yaml")


def prepare_run_dir(out: Path, resume: Optional[str], force: bool) -> Optional[Path]:
    """Return the checkpoint to resume from (or None); refuse to clobber a non-empty directory.

    Only checks: nothing is created or deleted here (see `create_run_dir`), so a run that then
    fails on bad input (a missing dataset, a bad checkpoint) leaves no partial output behind.
    """
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file; give a directory")
    occupied = out.is_dir() and any(out.iterdir())
    if resume is not None:
        run = out if resume == "auto" else Path(resume)
        ckpt = run / "last.pt" if run.is_dir() else run
        if ckpt.is_file():
            same_dir = ckpt.parent.resolve() == out.resolve()
            if occupied and not same_dir and not force:
                raise RunDirError(f"run directory {out} is not empty; resuming {ckpt} into it needs --force")
            return ckpt
        if resume != "auto":
            raise RunDirError(f"nothing to resume: {ckpt} does not exist; start a new run without --resume")
    if occupied and not force and resume is None:
        raise RunDirError(f"run directory {out} is not empty; use --resume {out} to continue it or --force to overwrite")
    return None


def create_run_dir(out: Path, fresh: bool) -> None:
    """Create the run directory; drop stale temporary files, and a fresh (--force) run's old files."""
    from finc_cli.atomic import remove_stale_temporaries

    import os

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create run directory {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK):
        raise RunDirError(f"run directory {out} is not writable")
    for name in RUN_FILES:
        remove_stale_temporaries(out, name)  # left by a process killed mid-write
        if fresh:
            (out / name).unlink(missing_ok=True)


def params_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer's bytes: equal digests mean bit-identical weights."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_payload(model, optimizer, state: TrainState, cfg: Config) -> dict:
    return {
        "config": cfg.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "train_state": {
            "step": state.step,
            "best_val_bpd": state.best_val_bpd,
            "bad_steps": state.bad_steps,
            "rollbacks": state.rollbacks,
            "lr_scale": state.lr_scale,
        },
        "rng": rng_state(),
    }


def restore(data: dict, model, optimizer, state: TrainState, path: Path = Path("checkpoint")) -> None:
    """Load weights, optimizer, step counters and RNG from a checkpoint; a mismatch is a CheckpointError."""
    from finc_cli.checkpoint import CheckpointError, load_weights

    load_weights(model, data["model"], path)
    try:
        if "optimizer" in data:
            optimizer.load_state_dict(data["optimizer"])
        ts = data.get("train_state", {})
        state.step = int(ts.get("step", 0))
        state.best_val_bpd = float(ts.get("best_val_bpd", math.inf))
        state.bad_steps = int(ts.get("bad_steps", 0))
        state.rollbacks = int(ts.get("rollbacks", 0))
        state.lr_scale = float(ts.get("lr_scale", 1.0))
        if "rng" in data:
            set_rng_state(data["rng"])
    except (ValueError, KeyError, TypeError, RuntimeError, AttributeError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"{path}: its optimizer or training state does not fit this run ({detail})") from None


def _json_safe(value: Any) -> Any:
    """Non-finite floats become null (strict JSON); the event records say which value was bad."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def append_metrics(path: Path, record: dict) -> None:
    """One strict-JSON object per line; a line cut by a crash is dropped on resume."""
    with open(path, "a") as fh:
        fh.write(json.dumps(_json_safe(record), allow_nan=False) + "\n")


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop log lines written after the checkpoint's step (they will be redone)."""
    if not path.is_file():
        return
    from finc_cli.atomic import atomic_write_text

    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


# ---------------------------------------------------------------------------------------------
# the loop


class LogProb(torch.nn.Module):
    """The training forward, log p(v) of dequantized images: what DistributedDataParallel wraps."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.model.log_prob(v)


class Reporter:
    """Silent progress reporting; the CLI passes a Rich one."""

    def start(self, total: int, completed: int) -> None: ...

    def advance(self, step: int, metrics: dict) -> None: ...

    def log(self, text: str) -> None: ...

    def stop(self) -> None: ...


class _Signals:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the next step boundary.

    A second signal aborts at once (KeyboardInterrupt) without writing anything.
    """

    def __init__(self):
        self.received: Optional[int] = None
        self._old: dict = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None:  # asked twice: stop now; last.pt is the previous, whole one
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _resolve_config(cfg: Config, ckpt: Optional[Path], overrides: Optional[dict]) -> tuple[Config, Optional[dict]]:
    if ckpt is None:
        return cfg, None
    from finc_cli.config import apply_overrides

    data = read_checkpoint(ckpt)
    resumed = apply_overrides(config_from_dict(data["config"]), overrides)
    return resumed, data


def train(
    cfg: Config,
    out_dir,
    *,
    resume: Optional[str] = None,
    force: bool = False,
    overrides: Optional[dict] = None,
    reporter: Optional[Reporter] = None,
) -> dict[str, Any]:
    """Train a FInC Flow; write config.yaml, metrics.jsonl, last.pt, best.pt and sample grids to out_dir.

    `resume` is a run directory, a checkpoint, or "auto" (resume out_dir if it holds last.pt).
    When resuming, the checkpoint's config is used with `overrides` applied on top.
    """
    from finc_cli.data.datasets import get_dataset
    from finc_cli.model import build_model

    reporter = reporter or Reporter()
    out = Path(out_dir)
    ctx = dist_utils.setup(cfg.train.device)
    ckpt = prepare_run_dir(out, resume, force) if ctx.is_main else None
    ckpt = dist_utils.broadcast_object(str(ckpt) if ckpt else None)
    ckpt = Path(ckpt) if ckpt else None
    cfg, data = _resolve_config(cfg, ckpt, overrides)
    t = cfg.train
    if t.batch_size % (ctx.world_size * t.accumulate):
        raise ValueError(
            f"train.batch_size {t.batch_size} must be divisible by processes × accumulate = {ctx.world_size * t.accumulate}"
        )
    device = ctx.device

    train_ds = get_dataset(cfg.data.name, "train", cfg.data.data_dir, train_transform=True, hflip=cfg.data.hflip, translate=cfg.data.translate)
    val_ds = get_dataset(cfg.data.name, "val", cfg.data.data_dir)

    torch.manual_seed(t.seed)  # identical initial weights on every rank
    model = build_model(cfg).to(device)
    if t.precision == "bf16":
        model.set_autocast(torch.bfloat16)
    optimizer = build_optimizer(model, cfg)
    state = TrainState()
    if data is not None:
        restore(data, model, optimizer, state, ckpt)
        reporter.log(f"resumed from {ckpt} at step {state.step}")
    else:
        init_idx = batch_indices(len(train_ds), min(len(train_ds), max(t.batch_size, 256)), t.seed, 0)
        model.initialize(fetch(train_ds, init_idx).to(device))  # ActNorm data-dependent init
    if ctx.is_main:  # every input checked: only now is anything written
        create_run_dir(out, fresh=data is None)
        save_config(cfg, out / "config.yaml")
        truncate_metrics(out / "metrics.jsonl", state.step)
    net = LogProb(model)
    if ctx.distributed:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    probe = fetch(val_ds, torch.arange(min(16, len(val_ds)))).to(device)
    metrics_path = out / "metrics.jsonl"
    num_dims = model.num_dims
    start_step, t0 = state.step, time.perf_counter()
    running: list = []
    last_log = time.perf_counter()
    last_eval: dict = {}

    def log_line(record: dict) -> None:
        if ctx.is_main:
            append_metrics(metrics_path, record)

    def save(name: str) -> None:
        if ctx.is_main and not _params_finite(model):  # never replace a good checkpoint with NaNs
            log_line({"step": state.step, "event": "checkpoint_skipped", "file": name, "reason": "non-finite parameters"})
            reporter.log(f"step {state.step}: parameters are not finite; {name} not written, the previous one is kept")
        elif ctx.is_main:
            save_checkpoint(out / name, checkpoint_payload(model, optimizer, state, cfg))

    def run_eval(log: bool = True) -> dict:
        result = evaluate_bpd(model, val_ds, t.eval_batch_size, device)
        health = model.reconstruction_report(probe) if model.finc_units() else []
        worst = max((r["max_abs_err"] for r in health), default=0.0)
        record = {"step": state.step, "val_bpd": result["bpd"], "val_bpd_stderr": result["bpd_stderr"], "recon_max_err": worst}
        if not worst <= t.health_threshold:  # NaN included
            record["health_warning"] = True
            reporter.log(f"warning: FInC reconstruction error {worst:.2e} exceeds {t.health_threshold:g} at step {state.step}; sampling may break")
        if log:
            log_line(record)
        if result["bpd"] < state.best_val_bpd:
            state.best_val_bpd = result["bpd"]
            save("best.pt")
        return record

    if data is None:
        save("last.pt")  # a fresh run is resumable (and has a rollback target) from its first moment
    reporter.start(t.steps, state.step)
    model.train()
    try:
        with _Signals() as signals:
            while state.step < t.steps:
                stats = _train_step(net, model, optimizer, train_ds, cfg, state, ctx, num_dims)
                state.step += 1
                if stats["skipped"]:
                    reason = _nonfinite_reason(stats)
                    log_line({"step": state.step, "event": "nonfinite", "reason": reason, "loss_bpd": stats["loss"], "grad_norm": stats["grad_norm"]})
                    reporter.log(f"step {state.step}: {reason}; step skipped ({state.bad_steps} in a row)")
                    if state.bad_steps >= t.max_bad_steps:
                        _rollback(out / "last.pt", model, optimizer, state, reporter, log_line)
                else:
                    running.append(stats["loss"])
                if state.step % t.log_every == 0 or state.step == t.steps:
                    now = time.perf_counter()
                    its = len(running) / max(now - last_log, 1e-9) if running else 0.0
                    record = {
                        "step": state.step,
                        "loss_bpd": sum(running) / len(running) if running else float("nan"),
                        "lr": optimizer.param_groups[0]["lr"],
                        "grad_norm": stats["grad_norm"],
                        "it_s": its,
                        "elapsed_s": now - t0,
                    }
                    log_line(record)
                    running, last_log = [], now
                reporter.advance(state.step, {"loss": stats["loss"], **({"val": last_eval["val_bpd"]} if last_eval else {})})
                if state.step % t.eval_every == 0 or state.step == t.steps:
                    last_eval = run_eval()
                if ctx.is_main and (state.step % t.sample_every == 0 or state.step == t.steps):
                    _save_samples(model, cfg, out / "samples" / f"step_{state.step:07d}.png")
                periodic = state.step % t.checkpoint_every == 0 or state.step == t.steps
                if periodic:
                    save("last.pt")
                stop = dist_utils.broadcast_object(signals.received)
                if stop is not None:
                    if not periodic:
                        save("last.pt")
                    raise TrainingInterrupted(state.step, stop, out / "last.pt")
            if not last_eval:  # zero steps asked, or resumed at the end: still report a figure
                last_eval = run_eval(log=start_step == 0)  # a resumed run logged this step already
    finally:
        reporter.stop()
        dist_utils.barrier()
        if ctx.owns_group:
            dist_utils.cleanup()
    return {
        "out_dir": str(out),
        "steps": state.step,
        "steps_this_run": state.step - start_step,
        "seconds": time.perf_counter() - t0,
        "val_bpd": last_eval.get("val_bpd"),
        "best_val_bpd": state.best_val_bpd,
        "rollbacks": state.rollbacks,
        "resumed_from": str(ckpt) if ckpt else None,
        "world_size": ctx.world_size,
        "params_sha256": params_digest(model),
    }


def _train_step(net, model, optimizer, train_ds, cfg: Config, state: TrainState, ctx, num_dims: int) -> dict:
    """One optimizer update over the global batch; a pure function of (seed, step) for its randomness."""
    from finc_cli.losses import bits_per_dim

    t = cfg.train
    set_lr(optimizer, t.lr * lr_factor(state.step, cfg) * state.lr_scale)
    torch.manual_seed(t.seed * 1_000_003 + state.step + 1)  # augmentation and noise of this step
    idx = batch_indices(len(train_ds), t.batch_size, t.seed, state.step)
    x = fetch(train_ds, idx)  # (B_global, C, H, W) uint8
    noise = torch.rand(x.shape)  # the same on every rank: DDP = one process with the global batch
    mine = slice(ctx.rank, None, ctx.world_size)
    x, noise = x[mine].to(ctx.device), noise[mine].to(ctx.device)
    bins = model.bins
    optimizer.zero_grad(set_to_none=True)
    micro = x.shape[0] // t.accumulate
    total = torch.zeros((), device=ctx.device, dtype=torch.float64)
    for m in range(t.accumulate):
        part = slice(m * micro, (m + 1) * micro)
        v = (x[part].float() + noise[part]) / bins  # dequantized, bin-scaled (DESIGN §3)
        sync = m == t.accumulate - 1 or not ctx.distributed
        with (net.no_sync() if not sync else _nullcontext()):
            bpd = bits_per_dim(-net(v), num_dims, bins).mean()
            (bpd / t.accumulate).backward()
        total += bpd.detach().double() / t.accumulate
    total = dist_utils.all_reduce_sum(total) / ctx.world_size
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip if t.grad_clip else float("inf"))
    loss = float(total)
    if not (math.isfinite(loss) and math.isfinite(float(grad_norm))):
        optimizer.zero_grad(set_to_none=True)
        state.bad_steps += 1
        return {"loss": loss, "grad_norm": float(grad_norm), "skipped": True}
    optimizer.step()
    state.bad_steps = 0
    return {"loss": loss, "grad_norm": float(grad_norm), "skipped": False}


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _params_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _nonfinite_reason(stats: dict) -> str:
    if not math.isfinite(stats["loss"]):
        return f"non-finite loss ({stats['loss']})"
    return f"non-finite gradient (norm {stats['grad_norm']})"


def _rollback(path: Path, model, optimizer, state: TrainState, reporter: Reporter, log_line) -> None:
    """Too many bad steps in a row: reload the last good weights and halve the learning rate.

    The step counter moves on (the batches that failed are not retried); after MAX_ROLLBACKS the
    run stops with TrainingDiverged rather than loop forever.
    """
    if state.rollbacks >= MAX_ROLLBACKS:
        raise TrainingDiverged(
            f"training diverged: still non-finite at step {state.step} after {state.rollbacks} rollbacks; "
            f"lower train.lr or set train.grad_clip, then --resume"
        )
    state.rollbacks += 1
    state.lr_scale *= 0.5
    state.bad_steps = 0
    to_step = None
    if path.is_file():
        data = read_checkpoint(path)
        model.load_state_dict(data["model"])
        if "optimizer" in data:
            optimizer.load_state_dict(data["optimizer"])
        to_step = data.get("train_state", {}).get("step")
        where = f"{path} (step {to_step})"
    else:
        where = "the current weights (no checkpoint yet)"
    log_line({"step": state.step, "event": "rollback", "to_step": to_step, "lr_scale": state.lr_scale})
    reporter.log(f"step {state.step}: rolled back to {where}; learning rate scaled by {state.lr_scale:g}")


def _save_samples(model, cfg: Config, path: Path) -> None:
    from finc_cli.images import save_grid

    path.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(cfg.train.seed)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        images = model.sample(64, temperature=cfg.train.sample_temperature, generator=g)
    model.train(was_training)
    save_grid(images, path, model.bins, nrow=8)
