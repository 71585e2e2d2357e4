"""Where a run starts: the run directory's lock, the checkpoint to resume from (--resume, --from) and its config."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from finc_cli import errors
from finc_cli.checkpoint import config_from_checkpoint, read_checkpoint
from finc_cli.config import Config, apply_overrides, changed_keys, check_resume_overrides
from finc_cli.errors import FincError, RunDirError
from finc_cli.files.locking import exclusive_lock
from finc_cli.runtime import distributed
from finc_cli.train.run_dir import RunDir

__all__ = ["RunLock", "Start", "find_checkpoint", "resolve_start"]


class RunLock:
    """Rank 0's hold on DIR/.lock, kept until `held` closes (the end of the run); the lock file names the holder."""

    def __init__(self, run: RunDir, held: contextlib.ExitStack):
        self.run, self.held = run, held
        self.taken = False

    def take(self) -> None:
        """Take the lock (once); a second writer of the run fails here at once."""
        if self.taken:
            return
        path = self.run.path
        if not os.access(path, os.W_OK):
            raise RunDirError(f"run directory {path} is not writable")
        try:
            self.held.enter_context(exclusive_lock(self.run.lock, f"run directory {path}"))
        except PermissionError as exc:
            raise RunDirError(f"run directory {path} is not writable ({exc.strerror})") from None
        self.taken = True


@dataclass
class Start:
    """A run's config and, when it resumes, the checkpoint it resumes from, that checkpoint's contents and
    the (key, before, after) of each setting this call changed."""

    cfg: Config
    ckpt: Optional[Path] = None
    saved: Optional[dict] = None
    changes: list = field(default_factory=list)

    @property
    def fresh(self) -> bool:
        return self.saved is None


def find_checkpoint(run: RunDir, resume: Optional[str], force: bool, start: Optional[str] = None) -> Optional[Path]:
    """Return the checkpoint to resume from (or None); refuse to clobber a non-empty directory.

    `start` (--from) names an older checkpoint of the run, e.g. step-0004000.pt, to resume from
    instead of last.pt. Only checks: nothing is created or deleted here (see `RunDir.make`), so a
    run that then fails on bad input (a missing dataset, a bad checkpoint) leaves no partial output.
    """
    out = run.path
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file; give a directory")
    if start is not None and resume is None:
        raise RunDirError(f"--from {start} needs --resume RUN_DIR: it names a checkpoint of that run")
    occupied = run.occupied()
    if resume is not None:
        source = run if resume == "auto" else RunDir(resume)
        ckpt = source.path / (start or RunDir.LAST) if source.path.is_dir() else source.path
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


def resolve_start(
    cfg: Config,
    run: RunDir,
    lock: RunLock,
    resume: Optional[str],
    force: bool,
    start: Optional[str],
    overrides: Optional[dict],
    is_main: bool = True,
) -> Start:
    """Rank 0 (`is_main`) locks and checks the run directory; every rank learns the checkpoint to resume
    from, or rank 0's error. A resumed run takes its checkpoint's config with `overrides` on top; an
    override of a key fixed by the run is refused (`config.RESUMABLE_KEYS` lists those that may change).
    """
    ckpt = _broadcast_checkpoint(run, lock, resume, force, start, is_main)
    if ckpt is None:
        return Start(cfg)
    saved = read_checkpoint(ckpt)
    check_resume_overrides(config_from_checkpoint(saved, ckpt), overrides)  # before the weights go anywhere
    resolved = apply_overrides(config_from_checkpoint(saved, ckpt), overrides)
    return Start(resolved, ckpt, saved, changed_keys(config_from_checkpoint(saved, ckpt), resolved))


def _broadcast_checkpoint(
    run: RunDir, lock: RunLock, resume: Optional[str], force: bool, start: Optional[str], is_main: bool
) -> Optional[Path]:
    found: tuple = (None, None)
    if is_main:
        try:
            if run.path.is_dir():
                lock.take()  # before anything is read: a second writer stops here
            ckpt = find_checkpoint(run, resume, force, start)
            found = (str(ckpt) if ckpt else None, None)
        except FincError as exc:
            found = (None, (type(exc).__name__, str(exc)))
    ckpt, error = distributed.broadcast_object(found)
    if error is not None:  # every rank stops with rank 0's error, rather than wait for it
        raise getattr(errors, error[0], FincError)(error[1])
    return Path(ckpt) if ckpt else None
