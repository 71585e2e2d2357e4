"""The run directory of `finc train`: checks before a run, creation, and the metrics.jsonl log."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

from finc_cli.errors import RunDirError
from finc_cli.files.atomic import atomic_path, atomic_write_text, remove_stale_temporaries
from finc_cli.text import finite_or_none
from finc_cli.train.tensorboard import LOG_DIR

__all__ = [
    "read_metrics",
    "REPORT_FILE",
    "LOCK_FILE",
    "RUN_FILES",
    "append_metrics",
    "clean_run_dir",
    "free_bytes",
    "keep_step_checkpoint",
    "make_run_dir",
    "prepare_run_dir",
    "step_checkpoints",
    "truncate_metrics",
]

RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "config.yaml")
REPORT_FILE = "report.png"  # `finc report`'s default picture
LOCK_FILE = ".lock"  # held by the one process writing the run (finc_cli.files.locking)


def prepare_run_dir(out: Path, resume: Optional[str], force: bool, start: Optional[str] = None) -> Optional[Path]:
    """Return the checkpoint to resume from (or None); refuse to clobber a non-empty directory.

    `start` (--from) names an older checkpoint of the run, e.g. step-0004000.pt, to resume from
    instead of last.pt. Only checks: nothing is created or deleted here (see `make_run_dir`), so a
    run that then fails on bad input (a missing dataset, a bad checkpoint) leaves no partial output.
    """
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file; give a directory")
    if start is not None and resume is None:
        raise RunDirError(f"--from {start} needs --resume RUN_DIR: it names a checkpoint of that run")
    occupied = out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir())
    if resume is not None:
        run = out if resume == "auto" else Path(resume)
        ckpt = run / (start or "last.pt") if run.is_dir() else run
        if ckpt.is_file():
            same_dir = ckpt.parent.resolve() == out.resolve()
            if occupied and not same_dir and not force:
                raise RunDirError(f"run directory {out} is not empty; resuming {ckpt} into it needs --force")
            return ckpt
        if resume != "auto":
            raise RunDirError(f"nothing to resume: {ckpt} does not exist; start a new run without --resume")
    if occupied and not force and resume is None:
        raise RunDirError(
            f"run directory {out} is not empty; use --resume {out} to continue it or --force to overwrite"
        )
    return None


def make_run_dir(out: Path) -> None:
    """Create the run directory (and its parents) and check that it is writable."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create run directory {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK):
        raise RunDirError(f"run directory {out} is not writable")


def clean_run_dir(out: Path, fresh: bool) -> None:
    """Drop stale temporary files; a fresh (--force) run also drops the old run's files. Needs the lock."""

    for name in (*RUN_FILES, *(p.name for p in step_checkpoints(out))):
        remove_stale_temporaries(out, name)  # left by a process killed mid-write
        if fresh:
            (out / name).unlink(missing_ok=True)
    if fresh:  # what the old run's report and TensorBoard showed is no longer this run
        (out / REPORT_FILE).unlink(missing_ok=True)
        shutil.rmtree(out / LOG_DIR, ignore_errors=True)


def step_checkpoints(out: Path) -> list[Path]:
    """The run's periodic checkpoints step-XXXXXXX.pt, oldest first."""
    return sorted(p for p in Path(out).glob("step-*.pt") if _step_of(p) is not None)


def _step_of(path: Path) -> Optional[int]:
    digits = path.stem.removeprefix("step-")
    return int(digits) if digits.isdigit() else None


def keep_step_checkpoint(out: Path, step: int, keep: int) -> list[Path]:
    """Keep last.pt (just written) as step-XXXXXXX.pt, then prune the oldest beyond `keep`; returns the pruned.

    The step file is a hard link to last.pt (a copy where links are not supported), made under a
    temporary name and renamed, so it is whole or absent. Only checkpoints of steps up to `step`
    count and are pruned: those of a later step (left by a run resumed --from an older one) stay.
    """

    target = out / f"step-{step:07d}.pt"
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(out / "last.pt", tmp)
        except OSError:
            shutil.copyfile(out / "last.pt", tmp)
    older = [p for p in step_checkpoints(out) if _step_of(p) <= step]
    pruned = older[: max(0, len(older) - keep)]
    for path in pruned:
        path.unlink(missing_ok=True)
    return pruned


def free_bytes(folder: Path) -> int:
    """Free bytes on the file system holding `folder`."""
    return shutil.disk_usage(folder).free


def append_metrics(path: Path, record: dict) -> None:
    """One strict-JSON object per line (non-finite floats as null: the event records say which value was bad);
    a line cut by a crash is dropped on resume."""
    with open(path, "a") as fh:
        fh.write(json.dumps(finite_or_none(record), allow_nan=False) + "\n")


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop log lines written after the checkpoint's step (they will be redone)."""
    if not path.is_file():
        return

    kept = [record for record in read_metrics(path) if record["step"] <= step]
    atomic_write_text(path, "".join(json.dumps(record, allow_nan=False) + "\n" for record in kept))


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
