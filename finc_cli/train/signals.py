"""SIGINT and SIGTERM during training: finish the step, save a resumable last.pt, stop with TrainingInterrupted."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Optional

__all__ = ["StopSignals", "TrainingInterrupted"]


class TrainingInterrupted(Exception):
    def __init__(self, step: int, signum: int, path: Path):
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}; resumable checkpoint {path}")
        self.step, self.signum, self.path = step, signum, path


class StopSignals:
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
