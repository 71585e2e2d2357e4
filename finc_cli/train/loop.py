"""Training: the plain function behind `finc train` (returns a summary dict, prints via a reporter)."""

from __future__ import annotations

import contextlib
import gc
import time
from functools import partial
from pathlib import Path
from typing import Any, Optional

import torch

from finc_cli.checkpoint import check_ema_weights
from finc_cli.config import Config, save_config
from finc_cli.data.batches import batch_indices, fetch, step_batch, step_noise
from finc_cli.data.load import get_dataset, get_labelled_dataset
from finc_cli.data.prefetch import Prefetcher, to_device
from finc_cli.errors import InputError, RebuildDrift
from finc_cli.files.images import save_grid
from finc_cli.flows.convolutions import CONV_LABELS
from finc_cli.health import health_record
from finc_cli.model import build_model, eval_mode
from finc_cli.runtime import distributed
from finc_cli.runtime.threads import apply_threads, resolve_threads, step_work
from finc_cli.train.ema import EMA
from finc_cli.train.resume import RunLock, resolve_start
from finc_cli.train.run_dir import RunDir
from finc_cli.train.saving import CheckpointWriter
from finc_cli.train.signals import StopSignals, TrainingInterrupted
from finc_cli.train.state import (
    TrainState,
    checkpoint_payload,
    params_digest,
    restore,
    roll_back,
)
from finc_cli.train.step import build_optimizer, nonfinite_reason, train_step
from finc_cli.train.tensorboard import TensorBoardLogger, require_tensorboard
from finc_cli.train.validate import lower_scorer, validation_record, validation_scores

__all__ = ["Reporter", "Trainer", "train"]


class Reporter:
    """Silent progress reporting; the CLI passes a Rich one."""

    def start(self, total: int, completed: int) -> None: ...

    def advance(self, step: int, metrics: dict) -> None: ...

    def log(self, text: str) -> None: ...

    def stop(self) -> None: ...


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

    `resume` is a run directory, a checkpoint, or "auto" (resume out_dir if it holds last.pt); `start`
    (--from) names an older checkpoint of that run; `overrides` go on top of a resumed run's config
    (`resume.resolve_start`). Rank 0 holds the run directory's lock for the whole run: a second writer
    fails at once. `threads` (--threads) is the CPU thread count; None follows `threads.resolve_threads`.
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
        self.run_dir, self.reporter = RunDir(out), reporter
        self.held = held if held is not None else contextlib.ExitStack()
        self.ctx = distributed.setup(cfg.train.device)
        self.device = self.ctx.device
        self.lock = RunLock(self.run_dir, self.held)
        begin = resolve_start(cfg, self.run_dir, self.lock, resume, force, start, overrides, self.ctx.is_main)
        self.cfg, self.ckpt, self.fresh = begin.cfg, begin.ckpt, begin.fresh
        self.t = self.cfg.train
        self._check_batch_size()
        if self.t.tensorboard:
            require_tensorboard()  # a missing optional package fails before anything is written
        self.train_ds, self.val_ds = self._load_data()
        self.model, self.optimizer = self._build_model()
        self.threads = self._set_threads(threads)
        self.state = TrainState()
        self.ema = self._resume_or_initialize(begin.saved)  # None with train.ema_decay 0
        self.tb: Optional[TensorBoardLogger] = None  # train.tensorboard, rank 0
        self.saver = CheckpointWriter(
            self.run_dir, self.model, self.optimizer, self.t.keep_checkpoints, self._log_line, self.reporter.log
        )
        if self.ctx.is_main:  # every input checked: only now is anything written
            self._open_run_dir(begin.changes)
            if self.t.memory == "invert" and self.cfg.model.conv in ("emerging", "cinc"):
                self.reporter.log(
                    f"warning: train.memory invert with model.conv {self.cfg.model.conv} inverts every step in raster "
                    f"order during backward (slow); --memory checkpoint saves the same memory at one extra forward"
                )
        self.net = self._wrap_model()  # training calls the model's one loss, bits/dim, through DDP when distributed
        self.probe = fetch(self.val_ds, torch.arange(min(16, len(self.val_ds)))).to(self.device)
        self.start_step, self.t0 = self.state.step, time.perf_counter()
        self.state.session_t0 = self.t0  # wall_s = the earlier sessions' + elapsed_s
        self.running: list = []  # losses since the last log line
        self.waits: list = []  # (data_s, compute_s) of each step since the last log line
        self.last_log = time.perf_counter()
        self.last_eval: dict = {}
        self.batches: Optional[Prefetcher] = None  # made by run()

    # -- setup ------------------------------------------------------------------------------------

    def _check_batch_size(self) -> None:
        t, ctx = self.t, self.ctx
        if t.batch_size % (ctx.world_size * t.accumulate):
            raise InputError(
                f"train.batch_size {t.batch_size} must be divisible by processes × accumulate = "
                f"{ctx.world_size * t.accumulate}"
            )

    def _load_data(self) -> tuple:
        d = self.cfg.data
        kw = {"cache_dir": d.cache_dir, "notify": self.reporter.log if self.ctx.is_main else None}
        # A class-conditional model trains on (image, class) pairs; an unconditional one never reads labels.
        load = get_labelled_dataset if self.cfg.model.conditional else get_dataset
        train_ds = load(d.name, "train", d.data_dir, train_transform=True, hflip=d.hflip, translate=d.translate, **kw)
        return train_ds, load(d.name, "val", d.data_dir, **kw)

    def _build_model(self) -> tuple:
        torch.manual_seed(self.t.seed)  # identical initial weights on every rank
        model = build_model(self.cfg).to(self.device)
        if self.t.precision == "bf16":
            model.set_autocast(torch.bfloat16)
        model.set_memory(self.t.memory)
        return model, build_optimizer(model, self.cfg)

    def _set_threads(self, flag: Optional[int]):
        """CPU threads for this run from the per-step work; train() leaves the caller's count as it was."""
        micro = self.t.batch_size // (self.ctx.world_size * self.t.accumulate)
        work = step_work(self.model.num_parameters(), micro, self.model.image_shape)
        chosen = resolve_threads(flag, work)
        self.held.callback(torch.set_num_threads, torch.get_num_threads())
        apply_threads(chosen.n)
        return chosen

    def _resume_or_initialize(self, saved: Optional[dict]) -> Optional[EMA]:
        """Load the checkpoint's full state, or run ActNorm's data-dependent init on a fresh model; returns the EMA."""
        t = self.t
        if saved is None:
            n = len(self.train_ds)
            init_idx = batch_indices(n, min(n, max(t.batch_size, 256)), t.seed, 0)
            self.model.initialize(fetch(self.train_ds, init_idx).to(self.device))
            return EMA(self.model, t.ema_decay) if t.ema_decay else None  # starts at the initialised weights
        restore(saved, self.model, self.optimizer, self.state, self.ckpt)
        ema = EMA(self.model, t.ema_decay) if t.ema_decay else None
        if ema is not None and "ema" in saved:  # else the average starts from the raw weights
            check_ema_weights(self.model, saved["ema"], self.ckpt)
            ema.load_state_dict(saved["ema"], step=self.state.step)  # older files: the step as the count
        self.reporter.log(f"resumed from {self.ckpt} at step {self.state.step}")
        return ema

    def _open_run_dir(self, changes: list) -> None:
        """Rank 0: create and lock the run directory, write the config, cut the log back to the resumed step."""
        run, step = self.run_dir, self.state.step
        run.make()
        self.lock.take()
        run.clean(fresh=self.fresh)
        save_config(self.cfg, run.config)
        run.truncate_metrics(step)
        self._log_line({"step": step, "event": "threads", **self.threads.record()})
        for key, before, after in changes:
            self._log_line({"step": step, "event": "config_changed", "key": key, "from": before, "to": after})
        if self.t.tensorboard:
            self.tb = TensorBoardLogger(run.tensorboard, step, self.fresh, self.t.batch_size)

    def _wrap_model(self) -> torch.nn.Module:
        if not self.ctx.distributed:
            return self.model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        if self.fresh:
            self._save(self.run_dir.last)  # a fresh run is resumable (and has a rollback target) from its first moment
        self.reporter.start(self.t.steps, self.state.step)
        self.model.train()
        self.batches = self._prefetcher()
        try:
            with StopSignals() as signals:
                while self.state.step < self.t.steps:
                    self._step(signals)
                if not self.last_eval:  # zero steps asked, or resumed at the end: still report a figure
                    self.last_eval = self._evaluate(log=self.start_step == 0)  # a resumed run logged this step already
        finally:
            self.batches.close()
            if self.tb is not None:
                self.tb.close()
            self.reporter.stop()
            self._release_ddp()
            distributed.barrier()
            if self.ctx.owns_group:
                distributed.cleanup()
        return self._summary()

    def _release_ddp(self) -> None:
        """Free the DDP wrapper (its reducer holds the process group) while the group is still alive.

        Left to the garbage collector, DDP's reference cycles keep gloo's process group alive until interpreter
        shutdown, where tearing it down can abort the process (SIGABRT) after a run that succeeded.
        """
        if self.net is not self.model:
            self.net = self.model
            gc.collect()

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

    def _step(self, signals: StopSignals) -> None:
        """One optimizer update, then whatever falls due after it, in a fixed order."""
        t0 = time.perf_counter()
        batch = self.batches.get(self.state.step)
        images, noise = to_device(batch, self.device)
        labels = batch.labels.to(self.device) if batch.labels is not None else None
        if noise is None:
            shape = (self.t.batch_size, *self.model.image_shape)
            noise = step_noise(self.t.seed, self.state.step, shape, self.ctx.rank, self.ctx.world_size, self.device)
        t1 = time.perf_counter()
        stats = train_step(
            self.net, self.model, self.optimizer, images, noise, self.cfg, self.state, self.ctx, labels=labels
        )
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
            grid = self.run_dir.sample_grid(self.state.step)
            with self._chosen_weights():
                _save_samples(self.model, self.cfg, grid)
            if self.tb is not None:
                self.tb.sample_grid(grid, self.state.step)
        periodic = self._due(self.t.checkpoint_every)
        if periodic:
            self._save(self.run_dir.last, periodic=True)
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

    def _stop_if_signalled(self, signals: StopSignals, saved: bool) -> None:
        """A signal on any rank stops every rank at this step, with last.pt written for --resume."""
        stop = distributed.max_over_ranks(signals.received, self.device)
        if stop is not None:
            if not saved:
                self._save(self.run_dir.last)
            raise TrainingInterrupted(self.state.step, stop, self.run_dir.last)

    # -- evaluation, checkpoints, the metrics log --------------------------------------------------

    def _evaluate(self, log: bool = True) -> dict:
        """Validation bits/dim of the raw and (when kept) EMA weights; the lower one becomes the default weights,
        on which the k×k convolutions' reconstruction health check runs and best.pt is chosen."""
        t, state = self.t, self.state
        scores = validation_scores(self.model, self.ema, self.val_ds, t.eval_batch_size, self.device)
        choice = lower_scorer(scores)
        state.default_weights = choice
        with self._chosen_weights():
            health = self.model.reconstruction_report(self.probe) if self.model.invertible_convs() else []
            composed, composed_warning = health_record(self.model, self.probe)  # the whole model (docs/inverse.md §11)
            if self.tb is not None and log:
                self.tb.finc_units(self.model, health, state.step)
        worst = max((r["max_abs_err"] for r in health), default=0.0)
        record = {**validation_record(state.step, scores, choice, worst), **composed}
        if composed_warning:
            self.reporter.log(f"{composed_warning} (step {state.step})")
        if not worst <= t.health_threshold:  # NaN included
            record["health_warning"] = True
            self.reporter.log(
                f"warning: {CONV_LABELS[self.cfg.model.conv]} reconstruction error {worst:.2e} "
                f"exceeds {t.health_threshold:g} at step {state.step}; sampling may break"
            )
        if t.memory == "invert":
            record["rebuild_max_err"] = max(self.model.rebuild_errors(self.probe[:4]))  # the trained weights
        if log:
            self._log_line(record)
        if t.memory == "invert" and not record["rebuild_max_err"] <= t.health_threshold:  # NaN included
            raise RebuildDrift(
                f"train.memory invert rebuilt activations with error {record['rebuild_max_err']:.2e} > "
                f"train.health_threshold {t.health_threshold:g} at step {state.step}, so its gradients are not "
                f"exact; resume with --memory checkpoint (same memory saving, inputs stored, not rebuilt)"
            )
        if record["val_bpd"] < state.best_val_bpd:
            state.best_val_bpd = record["val_bpd"]
            self._save(self.run_dir.best)
        return record

    def _chosen_weights(self):
        """The model holds the default weights inside the block: the EMA ones unless the latest validation chose
        the raw ones (before any validation, the EMA ones)."""
        if self.ema is None or self.state.default_weights == "raw":
            return contextlib.nullcontext()
        return self.ema.applied(self.model)

    def _save(self, path: Path, periodic: bool = False) -> None:
        if self.ctx.is_main:
            payload = partial(checkpoint_payload, self.model, self.optimizer, self.state, self.cfg, self.ema)
            self.saver.save(path, self.state.step, payload, periodic)

    def _log_line(self, record: dict) -> None:
        if self.ctx.is_main:
            self.run_dir.append_metrics(record)
        if self.tb is not None:
            self.tb.record(record)

    def _summary(self) -> dict[str, Any]:
        state = self.state
        return {
            "out_dir": str(self.run_dir.path),
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
        """A skipped step is logged; max_bad_steps in a row roll back to last.pt at half the learning rate, the step
        counter moving on (`state.roll_back`)."""
        state, reason = self.state, nonfinite_reason(stats)
        record = {"step": state.step, "event": "nonfinite", "reason": reason}
        self._log_line({**record, "loss_bpd": stats["loss"], "grad_norm": stats["grad_norm"]})
        self.reporter.log(f"step {state.step}: {reason}; step skipped ({state.bad_steps} in a row)")
        if state.bad_steps < self.t.max_bad_steps:
            return
        path = self.run_dir.last
        to_step = roll_back(state, path, self.model, self.optimizer, self.ema)
        where = f"{path} (step {to_step})" if path.is_file() else "the current weights (no checkpoint yet)"
        self._log_line({"step": state.step, "event": "rollback", "to_step": to_step, "lr_scale": state.lr_scale})
        self.reporter.log(f"step {state.step}: rolled back to {where}; learning rate scaled by {state.lr_scale:g}")


def _save_samples(model, cfg: Config, path: Path) -> None:
    """A grid of 64 samples at train.sample_temperature, the same noise (train.seed) every time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(cfg.train.seed)
    with eval_mode(model), torch.no_grad():
        images = model.sample(64, temperature=cfg.train.sample_temperature, generator=g)
    save_grid(images, path, model.bins, nrow=8)
