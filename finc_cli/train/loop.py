"""Training: the plain function behind `finc train` (returns a summary dict, prints via a reporter)."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, Optional

import torch

from finc_cli import errors
from finc_cli.checkpoint import check_ema_weights, config_from_checkpoint, read_checkpoint, save_checkpoint
from finc_cli.config import Config, apply_overrides, changed_keys, check_resume_overrides, config_from_dict, save_config
from finc_cli.data.batches import batch_indices, fetch, step_batch, step_noise
from finc_cli.data.load import get_dataset
from finc_cli.data.prefetch import Prefetcher, to_device
from finc_cli.errors import FincError, InputError, RunDirError, TrainingDiverged
from finc_cli.files.images import save_grid
from finc_cli.files.locking import exclusive_lock
from finc_cli.flows.convolutions import CONV_LABELS
from finc_cli.health import health_record
from finc_cli.model import build_model, eval_mode
from finc_cli.runtime import distributed
from finc_cli.runtime.threads import apply_threads, resolve_threads, step_work
from finc_cli.train.ema import EMA
from finc_cli.train.run_dir import (
    LOCK_FILE,
    append_metrics,
    clean_run_dir,
    free_bytes,
    keep_step_checkpoint,
    make_run_dir,
    prepare_run_dir,
    truncate_metrics,
)
from finc_cli.train.state import TrainState, checkpoint_payload, params_digest, params_finite, restore
from finc_cli.train.step import build_optimizer, nonfinite_reason, train_step
from finc_cli.train.tensorboard import TensorBoardLogger, require_tensorboard
from finc_cli.train.validate import evaluate_bpd

__all__ = ["MAX_ROLLBACKS", "Reporter", "Trainer", "TrainingInterrupted", "train"]


class TrainingInterrupted(Exception):
    def __init__(self, step: int, signum: int, path: Path):
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}; resumable checkpoint {path}")
        self.step, self.signum, self.path = step, signum, path


MAX_ROLLBACKS = 10  # each halves the learning rate: 2^-10 of it is no longer training


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

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame):
        if self.received is not None:  # asked twice: stop now; last.pt is the previous, whole one
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def train(
    cfg: Config,
    out_dir,
    *,
    resume: Optional[str] = None,
    force: bool = False,
    overrides: Optional[dict] = None,
    reporter: Optional[Reporter] = None,
    start: Optional[str] = None,
    threads: Optional[int] = None,
) -> dict[str, Any]:
    """Train a FInC Flow; write config.yaml, metrics.jsonl, last.pt, best.pt and sample grids to out_dir.

    `resume` is a run directory, a checkpoint, or "auto" (resume out_dir if it holds last.pt);
    `start` (--from) names an older checkpoint of that run to resume from instead of last.pt.
    When resuming, the checkpoint's config is used with `overrides` applied on top; an override
    of a key fixed by the run is refused (`config.RESUMABLE_KEYS` lists those that may change).
    Rank 0 holds the run directory's lock for the whole run: a second writer fails at once.
    `threads` (--threads) is the CPU thread count; None follows `threads.resolve_threads`.
    """
    with contextlib.ExitStack() as held:
        trainer = Trainer(
            cfg,
            Path(out_dir),
            resume=resume,
            force=force,
            overrides=overrides,
            reporter=reporter or Reporter(),
            start=start,
            held=held,
            threads=threads,
        )
        return trainer.run()


def _step_draws_noise(device: torch.device) -> bool:
    """Whether the step draws its dequantization noise on the device (off the CPU data path) or the prefetcher
    draws it ahead on the CPU: the same values either way (docs/training.md §4)."""
    return device.type != "cpu"


class Trainer:
    """One run of `train`: __init__ checks inputs, builds, resumes, then writes; run() trains.

    Every rank runs the same sequence of collectives (broadcasts, all-reduces, evaluation
    gathers) in the same order; only rank 0 writes files.
    """

    def __init__(
        self,
        cfg: Config,
        out: Path,
        *,
        resume,
        force,
        overrides,
        reporter: Reporter,
        start=None,
        held: Optional[contextlib.ExitStack] = None,
        threads: Optional[int] = None,
    ):
        self.out, self.reporter = out, reporter
        self.tb: Optional[TensorBoardLogger] = None  # train.tensorboard, rank 0
        self.held = held if held is not None else contextlib.ExitStack()
        self.locked = False
        self.metrics_path = out / "metrics.jsonl"
        self.ctx = distributed.setup(cfg.train.device)
        self.device = self.ctx.device
        self.ckpt = self._find_checkpoint(resume, force, start)
        self.cfg, data = _resolve_config(cfg, self.ckpt, overrides)
        self.changes = changed_keys(config_from_dict(data["config"]), self.cfg) if data is not None else []
        self.t = self.cfg.train
        self._check_batch_size()
        if self.t.tensorboard:
            require_tensorboard()  # a missing optional package fails before anything is written
        self._load_data()
        self._build_model()
        self._set_threads(threads)
        self.fresh = data is None
        self._resume_or_initialize(data)  # also makes self.ema (None with train.ema_decay 0)
        if self.ctx.is_main:  # every input checked: only now is anything written
            make_run_dir(out)
            self._lock()
            clean_run_dir(out, fresh=self.fresh)
            save_config(self.cfg, out / "config.yaml")
            truncate_metrics(self.metrics_path, self.state.step)
            self._log_line({"step": self.state.step, "event": "threads", **self.threads.record()})
            for key, before, after in self.changes:
                self._log_line(
                    {"step": self.state.step, "event": "config_changed", "key": key, "from": before, "to": after}
                )
            if self.t.tensorboard:
                self.tb = TensorBoardLogger(out, self.state.step, self.fresh, self.t.batch_size)
        self._prepare_loop()

    # -- setup ------------------------------------------------------------------------------------

    def _find_checkpoint(self, resume: Optional[str], force: bool, start: Optional[str]) -> Optional[Path]:
        """Rank 0 locks and checks the run directory; every rank learns the checkpoint to resume from, or the error."""
        found: tuple = (None, None)
        if self.ctx.is_main:
            try:
                if self.out.is_dir():
                    self._lock()  # before anything is read: a second writer stops here
                ckpt = prepare_run_dir(self.out, resume, force, start)
                found = (str(ckpt) if ckpt else None, None)
            except FincError as exc:
                found = (None, (type(exc).__name__, str(exc)))
        ckpt, error = distributed.broadcast_object(found)
        if error is not None:  # every rank stops with rank 0's error, rather than wait for it
            raise getattr(errors, error[0], FincError)(error[1])
        return Path(ckpt) if ckpt else None

    def _lock(self) -> None:
        """Hold the run directory's lock until the run ends (rank 0 only); DIR/.lock names the holder."""
        if self.locked:
            return
        if not os.access(self.out, os.W_OK):
            raise RunDirError(f"run directory {self.out} is not writable")
        try:
            self.held.enter_context(exclusive_lock(self.out / LOCK_FILE, f"run directory {self.out}"))
        except PermissionError as exc:
            raise RunDirError(f"run directory {self.out} is not writable ({exc.strerror})") from None
        self.locked = True

    def _check_batch_size(self) -> None:
        t, ctx = self.t, self.ctx
        if t.batch_size % (ctx.world_size * t.accumulate):
            raise InputError(
                f"train.batch_size {t.batch_size} must be divisible by processes × accumulate = "
                f"{ctx.world_size * t.accumulate}"
            )

    def _load_data(self) -> None:

        d = self.cfg.data
        notify = self.reporter.log if self.ctx.is_main else None
        kw = {"cache_dir": d.cache_dir, "notify": notify}
        self.train_ds = get_dataset(
            d.name, "train", d.data_dir, train_transform=True, hflip=d.hflip, translate=d.translate, **kw
        )
        self.val_ds = get_dataset(d.name, "val", d.data_dir, **kw)

    def _build_model(self) -> None:

        torch.manual_seed(self.t.seed)  # identical initial weights on every rank
        self.model = build_model(self.cfg).to(self.device)
        if self.t.precision == "bf16":
            self.model.set_autocast(torch.bfloat16)
        self.optimizer = build_optimizer(self.model, self.cfg)

    def _set_threads(self, flag: Optional[int]) -> None:
        """CPU threads for this run from the per-step work; train() leaves the caller's count as it was."""
        micro = self.t.batch_size // (self.ctx.world_size * self.t.accumulate)
        work = step_work(self.model.num_parameters(), micro, self.model.image_shape)
        self.threads = resolve_threads(flag, work)
        self.held.callback(torch.set_num_threads, torch.get_num_threads())
        apply_threads(self.threads.n)

    def _resume_or_initialize(self, data: Optional[dict]) -> None:
        """Load the checkpoint's full state, or run ActNorm's data-dependent init on a fresh model."""
        self.state = TrainState()
        if data is not None:
            restore(data, self.model, self.optimizer, self.state, self.ckpt)
            self.ema = EMA(self.model, self.t.ema_decay) if self.t.ema_decay else None
            if self.ema is not None and "ema" in data:  # else the average starts from the raw weights
                check_ema_weights(self.model, data["ema"], self.ckpt)
                self.ema.load_state_dict(data["ema"], step=self.state.step)  # older files: the step as the count
            self.reporter.log(f"resumed from {self.ckpt} at step {self.state.step}")
            return
        n, t = len(self.train_ds), self.t
        init_idx = batch_indices(n, min(n, max(t.batch_size, 256)), t.seed, 0)
        self.model.initialize(fetch(self.train_ds, init_idx).to(self.device))
        self.ema = EMA(self.model, t.ema_decay) if t.ema_decay else None  # starts at the initialised weights

    def _prepare_loop(self) -> None:
        self.net = self.model  # training calls the model's one loss, bits/dim, through DDP when distributed
        if self.ctx.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.probe = fetch(self.val_ds, torch.arange(min(16, len(self.val_ds)))).to(self.device)
        self.start_step, self.t0 = self.state.step, time.perf_counter()
        self.state.session_t0 = self.t0  # wall_s = the earlier sessions' + elapsed_s
        self.running: list = []  # losses since the last log line
        self.waits: list = []  # (data_s, compute_s) of each step since the last log line
        self.last_log = time.perf_counter()
        self.last_eval: dict = {}

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        if self.fresh:
            self._save("last.pt")  # a fresh run is resumable (and has a rollback target) from its first moment
        self.reporter.start(self.t.steps, self.state.step)
        self.model.train()
        self.batches = self._prefetcher()
        try:
            with _Signals() as signals:
                while self.state.step < self.t.steps:
                    self._step(signals)
                if not self.last_eval:  # zero steps asked, or resumed at the end: still report a figure
                    self.last_eval = self._evaluate(log=self.start_step == 0)  # a resumed run logged this step already
        finally:
            self.batches.close()
            if self.tb is not None:
                self.tb.close()
            self.reporter.stop()
            distributed.barrier()
            if self.ctx.owns_group:
                distributed.cleanup()
        return self._summary()

    def _prefetcher(self) -> Prefetcher:
        """This process's batches for the remaining steps, assembled ahead (data.num_workers processes, or a thread)."""
        t, ctx = self.t, self.ctx
        make = partial(
            step_batch,
            self.train_ds,
            seed=t.seed,
            batch_size=t.batch_size,
            rank=ctx.rank,
            world=ctx.world_size,
            noise=not _step_draws_noise(self.device),
        )
        pin = self.device.type == "cuda"
        return Prefetcher(make, self.state.step, t.steps, workers=self.cfg.data.num_workers, pin=pin)

    def _step(self, signals: _Signals) -> None:
        """One optimizer update, then whatever falls due after it, in a fixed order."""
        t0 = time.perf_counter()
        images, noise = to_device(self.batches.get(self.state.step), self.device)
        if noise is None:
            shape = (self.t.batch_size, *self.model.image_shape)
            noise = step_noise(self.t.seed, self.state.step, shape, self.ctx.rank, self.ctx.world_size, self.device)
        t1 = time.perf_counter()
        stats = train_step(self.net, self.model, self.optimizer, images, noise, self.cfg, self.state, self.ctx)
        if self.ema is not None and not stats["skipped"]:
            self.ema.update(self.model)
        self.waits.append((t1 - t0, time.perf_counter() - t1))  # the loss read back synchronised the device
        self.state.step += 1
        if stats["skipped"]:
            self._on_nonfinite(stats)
        else:
            self.running.append(stats["loss"])
        if self._due(self.t.log_every):
            self._log_progress(stats)
        val = {"val": self.last_eval["val_bpd"]} if self.last_eval else {}
        data_s, compute_s = self.waits[-1] if self.waits else (0.0, 0.0)
        self.reporter.advance(
            self.state.step, {"loss": stats["loss"], "data_share": data_s / max(data_s + compute_s, 1e-9), **val}
        )
        if self._due(self.t.eval_every):
            self.last_eval = self._evaluate()
        if self.ctx.is_main and self._due(self.t.sample_every):
            with self._chosen_weights():
                _save_samples(self.model, self.cfg, self.out / "samples" / f"step_{self.state.step:07d}.png")
            if self.tb is not None:
                self.tb.sample_grid(self.out / "samples" / f"step_{self.state.step:07d}.png", self.state.step)
        periodic = self._due(self.t.checkpoint_every)
        if periodic:
            self._save("last.pt", periodic=True)
        self._stop_if_signalled(signals, saved=periodic)

    def _due(self, every: int) -> bool:
        return self.state.step % every == 0 or self.state.step == self.t.steps

    def _log_progress(self, stats: dict) -> None:
        now, running = time.perf_counter(), self.running
        its = len(running) / max(now - self.last_log, 1e-9) if running else 0.0
        waits = self.waits or [(0.0, 0.0)]
        record = {
            "step": self.state.step,
            "loss_bpd": sum(running) / len(running) if running else float("nan"),
            "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": stats["grad_norm"],
            "it_s": its,
            "elapsed_s": now - self.t0,  # this process's
            "wall_s": self.state.wall(now),  # the run's, across resumes
            "data_s": sum(w[0] for w in waits) / len(waits),  # mean wait for the batch per step
            "compute_s": sum(w[1] for w in waits) / len(waits),  # mean forward, backward and update per step
        }
        self._log_line(record)
        self.running, self.waits, self.last_log = [], [], now

    def _stop_if_signalled(self, signals: _Signals, saved: bool) -> None:
        """A signal on any rank stops every rank at this step, with last.pt written for --resume."""
        stop = distributed.max_over_ranks(signals.received, self.device)
        if stop is not None:
            if not saved:
                self._save("last.pt")
            raise TrainingInterrupted(self.state.step, stop, self.out / "last.pt")

    # -- evaluation, checkpoints, the metrics log --------------------------------------------------

    def _evaluate(self, log: bool = True) -> dict:
        """Validation bits/dim of the raw and (when kept) EMA weights; the lower one becomes the default weights,
        on which the k×k convolutions' reconstruction health check runs and best.pt is chosen."""
        t, state = self.t, self.state
        scores = self._validation_scores()
        choice = min(scores, key=lambda k: (_finite_or_inf(scores[k]["bpd"]), k != "ema"))  # a tie keeps the average
        state.default_weights = choice
        with self._chosen_weights():
            health = self.model.reconstruction_report(self.probe) if self.model.invertible_convs() else []
            composed, composed_warning = health_record(self.model, self.probe)  # the whole model (docs/inverse.md §11)
            if self.tb is not None and log:
                self.tb.finc_units(self.model, health, state.step)
        worst = max((r["max_abs_err"] for r in health), default=0.0)
        result = scores[choice]
        record = {
            "step": state.step,
            "val_bpd": result["bpd"],
            "val_bpd_stderr": result["bpd_stderr"],
            "val_weights": choice,
            **{f"val_bpd_{k}": v["bpd"] for k, v in scores.items()},
            "recon_max_err": worst,
            **composed,
        }
        if composed_warning:
            self.reporter.log(f"{composed_warning} (step {state.step})")
        if not worst <= t.health_threshold:  # NaN included
            record["health_warning"] = True
            self.reporter.log(
                f"warning: {CONV_LABELS[self.cfg.model.conv]} reconstruction error {worst:.2e} "
                f"exceeds {t.health_threshold:g} at step {state.step}; sampling may break"
            )
        if log:
            self._log_line(record)
        if result["bpd"] < state.best_val_bpd:
            state.best_val_bpd = result["bpd"]
            self._save("best.pt")
        return record

    def _validation_scores(self) -> dict:
        """{"raw": evaluate_bpd result, and "ema": the same for the averaged weights when kept}."""
        evaluate = partial(evaluate_bpd, self.model, self.val_ds, self.t.eval_batch_size, self.device)
        scores = {"raw": evaluate()}
        if self.ema is not None:
            with self.ema.applied(self.model):
                scores["ema"] = evaluate()
        return scores

    def _chosen_weights(self):
        """The model holds the default weights inside the block: the EMA ones unless the latest validation chose
        the raw ones (before any validation, the EMA ones)."""
        if self.ema is None or self.state.default_weights == "raw":
            return contextlib.nullcontext()
        return self.ema.applied(self.model)

    def _save(self, name: str, periodic: bool = False) -> None:
        if self.ctx.is_main:
            self._check_space()
        if self.ctx.is_main and not params_finite(self.model):  # never replace a good checkpoint with NaNs
            self._log_line(
                {
                    "step": self.state.step,
                    "event": "checkpoint_skipped",
                    "file": name,
                    "reason": "non-finite parameters",
                }
            )
            self.reporter.log(
                f"step {self.state.step}: parameters are not finite; {name} not written, the previous one is kept"
            )
        elif self.ctx.is_main:
            save_checkpoint(
                self.out / name, checkpoint_payload(self.model, self.optimizer, self.state, self.cfg, self.ema)
            )
            self.ckpt_bytes = (self.out / name).stat().st_size
            if periodic and name == "last.pt" and self.t.keep_checkpoints:
                pruned = keep_step_checkpoint(self.out, self.state.step, self.t.keep_checkpoints)
                if pruned:
                    self._log_line({"step": self.state.step, "event": "pruned", "files": [p.name for p in pruned]})

    def _check_space(self) -> None:
        """Warn (once per shortage) when the free space will not hold the next checkpoint or the one after."""
        needed = getattr(self, "ckpt_bytes", None) or _estimated_checkpoint_bytes(self.model, self.optimizer)
        free = free_bytes(self.out)
        short = free < 2 * needed  # the next save needs `needed` while the previous file still exists
        if short and not getattr(self, "space_warned", False):
            when = "the next checkpoint" if free < needed else "the checkpoint after next"
            self.reporter.log(
                f"warning: {self.out} has {free / 2**30:.2f} GiB free and a checkpoint takes "
                f"{needed / 2**30:.2f} GiB: {when} may not fit; free some space or move the run"
            )
            self._log_line(
                {"step": self.state.step, "event": "low_space", "free_bytes": free, "checkpoint_bytes": needed}
            )
        self.space_warned = short

    def _log_line(self, record: dict) -> None:
        if self.ctx.is_main:
            append_metrics(self.metrics_path, record)
        if self.tb is not None:
            self.tb.record(record)

    def _summary(self) -> dict[str, Any]:
        state = self.state
        return {
            "out_dir": str(self.out),
            "steps": state.step,
            "steps_this_run": state.step - self.start_step,
            "seconds": time.perf_counter() - self.t0,
            "wall_s": state.wall(),
            "val_bpd": self.last_eval.get("val_bpd"),
            "val_weights": self.last_eval.get("val_weights"),
            "best_val_bpd": state.best_val_bpd,
            "rollbacks": state.rollbacks,
            "resumed_from": str(self.ckpt) if self.ckpt else None,
            "world_size": self.ctx.world_size,
            **self.threads.record(),
            "params_sha256": params_digest(self.model),
        }

    # -- the non-finite guard ---------------------------------------------------------------------

    def _on_nonfinite(self, stats: dict) -> None:
        state = self.state
        reason = nonfinite_reason(stats)
        record = {"step": state.step, "event": "nonfinite", "reason": reason}
        self._log_line({**record, "loss_bpd": stats["loss"], "grad_norm": stats["grad_norm"]})
        self.reporter.log(f"step {state.step}: {reason}; step skipped ({state.bad_steps} in a row)")
        if state.bad_steps >= self.t.max_bad_steps:
            self._rollback(self.out / "last.pt")

    def _rollback(self, path: Path) -> None:
        """Too many bad steps in a row: reload the last good weights and halve the learning rate.

        The step counter moves on (the batches that failed are not retried); after MAX_ROLLBACKS the
        run stops with TrainingDiverged rather than loop forever.
        """
        state = self.state
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
            self.model.load_state_dict(data["model"])
            if "optimizer" in data:
                self.optimizer.load_state_dict(data["optimizer"])
            to_step = data.get("train_state", {}).get("step")
            if self.ema is not None and "ema" in data:
                self.ema.load_state_dict(data["ema"], step=to_step or 0)
            where = f"{path} (step {to_step})"
        else:
            where = "the current weights (no checkpoint yet)"
        self._log_line({"step": state.step, "event": "rollback", "to_step": to_step, "lr_scale": state.lr_scale})
        self.reporter.log(f"step {state.step}: rolled back to {where}; learning rate scaled by {state.lr_scale:g}")


def _resolve_config(cfg: Config, ckpt: Optional[Path], overrides: Optional[dict]) -> tuple[Config, Optional[dict]]:
    """A resumed run takes its checkpoint's config, with this call's overrides on top (fixed keys refused)."""
    if ckpt is None:
        return cfg, None

    data = read_checkpoint(ckpt)
    run = config_from_checkpoint(data, ckpt)
    check_resume_overrides(run, overrides)  # before the weights are loaded into anything
    return apply_overrides(config_from_checkpoint(data, ckpt), overrides), data


def _finite_or_inf(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def _estimated_checkpoint_bytes(model, optimizer) -> int:
    """Before the first save: the weights, plus two moment tensors per weight for Adam-like optimizers."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return weights * (3 if isinstance(optimizer, (torch.optim.Adam, torch.optim.Adamax, torch.optim.AdamW)) else 1)


def _save_samples(model, cfg: Config, path: Path) -> None:

    path.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(cfg.train.seed)
    with eval_mode(model), torch.no_grad():
        images = model.sample(64, temperature=cfg.train.sample_temperature, generator=g)
    save_grid(images, path, model.bins, nrow=8)
