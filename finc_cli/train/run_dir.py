"""The run directory of `finc train`: every file name in it, its creation and cleaning, and the metrics.jsonl log."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

from finc_cli.errors import RunDirError
from finc_cli.files.atomic import atomic_path, atomic_write_text, remove_stale_temporaries
from finc_cli.text import finite_or_none

__all__ = ["RunDir", "free_bytes", "read_metrics"]


class RunDir:
    """One run directory: the names of its files, and the one writer (and reader) of its metrics.jsonl.

    Everything that reads or writes a run's files asks this class for their paths.
    """

    CONFIG = "config.yaml"  # the resolved config of the run
    METRICS = "metrics.jsonl"  # one JSON record per line: train steps, evaluations, events
    LAST = "last.pt"  # the resumable checkpoint of the latest step
    BEST = "best.pt"  # the checkpoint of the best validation bits/dim
    SAMPLES = "samples"  # sample grids, samples/step_XXXXXXX.png
    REPORT = "report.png"  # `finc report`'s default picture
    TENSORBOARD = "tensorboard"  # TensorBoard event files (train.tensorboard)
    LOCK = ".lock"  # held by the one process writing the run (finc_cli.files.locking)
    RUN_FILES = (LAST, BEST, METRICS, CONFIG)  # what a fresh (--force) run replaces

    def __init__(self, path):
        self.path = Path(path)
        # The paths of the files above (the names stay class attributes: RunDir.LAST names last.pt anywhere).
        self.config, self.metrics, self.last, self.best, self.report, self.tensorboard, self.lock = (
            self.path / name
            for name in (self.CONFIG, self.METRICS, self.LAST, self.BEST, self.REPORT, self.TENSORBOARD, self.LOCK)
        )

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def sample_grid(self, step: int) -> Path:
        """The sample grid drawn at `step`."""
        return self.path / self.SAMPLES / f"step_{step:07d}.png"

    def latest_sample_grid(self) -> Optional[Path]:
        grids = sorted((self.path / self.SAMPLES).glob("step_*.png"))
        return grids[-1] if grids else None

    def step_checkpoint(self, step: int) -> Path:
        """The periodic checkpoint kept at `step` (train.keep_checkpoints)."""
        return self.path / f"step-{step:07d}.pt"

    def step_checkpoints(self) -> list[Path]:
        """The run's periodic checkpoints step-XXXXXXX.pt, oldest first."""
        return sorted(p for p in self.path.glob("step-*.pt") if _step_of(p) is not None)

    def occupied(self) -> bool:
        """Whether the directory holds anything but its lock."""
        return self.path.is_dir() and any(p.name != self.LOCK for p in self.path.iterdir())

    def make(self) -> None:
        """Create the run directory (and its parents) and check that it is writable."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {self.path}: {exc.strerror}") from None
        if not os.access(self.path, os.W_OK):
            raise RunDirError(f"run directory {self.path} is not writable")

    def clean(self, fresh: bool) -> None:
        """Drop stale temporary files; a fresh (--force) run also drops the old run's files. Needs the lock."""
        for name in (*self.RUN_FILES, *(p.name for p in self.step_checkpoints())):
            remove_stale_temporaries(self.path, name)  # left by a process killed mid-write
            if fresh:
                (self.path / name).unlink(missing_ok=True)
        if fresh:  # what the old run's report and TensorBoard showed is no longer this run
            self.report.unlink(missing_ok=True)
            shutil.rmtree(self.tensorboard, ignore_errors=True)

    def keep_step_checkpoint(self, step: int, keep: int) -> list[Path]:
        """Keep last.pt (just written) as step-XXXXXXX.pt, then prune the oldest beyond `keep`; returns the pruned.

        The step file is a hard link to last.pt (a copy where links are not supported), made under a
        temporary name and renamed, so it is whole or absent. Only checkpoints of steps up to `step`
        count and are pruned: those of a later step (left by a run resumed --from an older one) stay.
        """
        with atomic_path(self.step_checkpoint(step)) as tmp:
            tmp.unlink()
            try:
                os.link(self.last, tmp)
            except OSError:
                shutil.copyfile(self.last, tmp)
        older = [p for p in self.step_checkpoints() if _step_of(p) <= step]
        pruned = older[: max(0, len(older) - keep)]
        for path in pruned:
            path.unlink(missing_ok=True)
        return pruned

    def read_metrics(self) -> list[dict]:
        """The records of metrics.jsonl (see `read_metrics`)."""
        return read_metrics(self.metrics)

    def append_metrics(self, record: dict) -> None:
        """One strict-JSON object per line; a line cut by a crash is dropped on resume."""
        with open(self.metrics, "a") as fh:
            fh.write(json.dumps(finite_or_none(record), allow_nan=False) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """On resume, drop log lines written after the checkpoint's step (they will be redone)."""
        if not self.metrics.is_file():
            return
        kept = [record for record in self.read_metrics() if record["step"] <= step]
        atomic_write_text(self.metrics, "".join(json.dumps(record, allow_nan=False) + "\n" for record in kept))


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; a line cut short (a run writing it, or killed mid-write) is skipped."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
    return records


def free_bytes(folder: Path) -> int:
    """Free bytes on the file system holding `folder`."""
    return shutil.disk_usage(folder).free


def _step_of(path: Path) -> Optional[int]:
    digits = path.stem.removeprefix("step-")
    return int(digits) if digits.isdigit() else None
