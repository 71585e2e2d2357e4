"""The run directory of `finc train`: checks before a run, creation, and the metrics.jsonl log."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

from finc_cli.errors import RunDirError

__all__ = ["RUN_FILES", "append_metrics", "create_run_dir", "prepare_run_dir", "truncate_metrics"]

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
        raise RunDirError(
            f"run directory {out} is not empty; use --resume {out} to continue it or --force to overwrite"
        )
    return None


def create_run_dir(out: Path, fresh: bool) -> None:
    """Create the run directory; drop stale temporary files, and a fresh (--force) run's old files."""
    import os

    from finc_cli.atomic import remove_stale_temporaries

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
