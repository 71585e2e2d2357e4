"""Rank 0's checkpoint saves during training: never NaN weights over a good file, a warning before the disk fills."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from finc_cli.checkpoint import save_checkpoint
from finc_cli.train.run_dir import RunDir, free_bytes
from finc_cli.train.state import estimated_checkpoint_bytes, params_finite

__all__ = ["CheckpointWriter"]


class CheckpointWriter:
    """Writes last.pt, best.pt and the kept step-XXXXXXX.pt of a run; `log` takes metrics records, `say` notes."""

    def __init__(
        self, run: RunDir, model, optimizer, keep: int, log: Callable[[dict], None], say: Callable[[str], None]
    ):
        self.run, self.model, self.optimizer, self.keep = run, model, optimizer, keep
        self.log, self.say = log, say
        self.ckpt_bytes: Optional[int] = None  # the size of the last checkpoint written, for the space check
        self.space_warned = False  # the low-space warning was given for the current shortage

    def save(self, path: Path, step: int, payload: Callable[[], dict], periodic: bool = False) -> None:
        """Write payload() to `path`; a periodic last.pt is also kept as step-XXXXXXX.pt (train.keep_checkpoints)."""
        self._check_space(step)
        if not params_finite(self.model):  # never replace a good checkpoint with NaNs
            self.log(
                {"step": step, "event": "checkpoint_skipped", "file": path.name, "reason": "non-finite parameters"}
            )
            self.say(f"step {step}: parameters are not finite; {path.name} not written, the previous one is kept")
            return
        save_checkpoint(path, payload())
        self.ckpt_bytes = path.stat().st_size
        if periodic and self.keep:
            pruned = self.run.keep_step_checkpoint(step, self.keep)
            if pruned:
                self.log({"step": step, "event": "pruned", "files": [p.name for p in pruned]})

    def _check_space(self, step: int) -> None:
        """Warn (once per shortage) when the free space will not hold the next checkpoint or the one after."""
        needed = self.ckpt_bytes or estimated_checkpoint_bytes(self.model, self.optimizer)
        free = free_bytes(self.run.path)
        short = free < 2 * needed  # the next save needs `needed` while the previous file still exists
        if short and not self.space_warned:
            when = "the next checkpoint" if free < needed else "the checkpoint after next"
            self.say(
                f"warning: {self.run.path} has {free / 2**30:.2f} GiB free and a checkpoint takes "
                f"{needed / 2**30:.2f} GiB: {when} may not fit; free some space or move the run"
            )
            self.log({"step": step, "event": "low_space", "free_bytes": free, "checkpoint_bytes": needed})
        self.space_warned = short
