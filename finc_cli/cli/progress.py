"""Rich progress bars for training and evaluation."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from finc_cli.cli.common import err_console

__all__ = [
    "count_progress",
    "progress_bars",
    "RichReporter",
]


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TextColumn("[cyan]{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )


class RichReporter:
    """Training progress: loss and bits/dim, it/s and ETA, on rank 0 only; events go to stderr."""

    def __init__(self, enabled: bool = True):
        import os

        self.main = os.environ.get("RANK", "0") == "0"
        self.enabled = enabled and self.main  # the bar; warnings print even with --quiet / --json
        self.progress: Optional[Progress] = None
        self.task = None

    def start(self, total: int, completed: int) -> None:
        if not self.enabled:
            return
        self.progress = _progress()
        self.progress.start()
        self.task = self.progress.add_task("train", total=total, completed=completed, stats="", rate="")

    def advance(self, step: int, metrics: dict) -> None:
        if self.progress is None:
            return
        stats = f"loss {metrics['loss']:.3f} bpd"
        if "data_share" in metrics:
            stats += f" · data {100 * metrics['data_share']:.0f}%"
        if "val" in metrics:
            stats += f" · val {metrics['val']:.3f}"
        speed = self.progress.tasks[0].speed
        self.progress.update(self.task, completed=step, stats=stats, rate=f"{speed:.1f} it/s" if speed else "")

    def log(self, text: str) -> None:
        """Events (warnings, skipped steps, rollbacks) on stderr, on rank 0, even without a bar."""
        if self.main:
            (self.progress.console if self.progress else err_console).print(text, highlight=False, soft_wrap=True)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def count_progress(description: str) -> Callable[[int], Callable[[int], None]]:
    """A factory: progress(total) -> advance(n); the bar closes when it reaches total."""

    def factory(total: int) -> Callable[[int], None]:
        progress = _progress()
        progress.start()
        task = progress.add_task(description, total=total, stats="", rate="")
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            progress.update(task, advance=n)
            if done[0] >= total:
                progress.stop()

        return advance

    return factory


@contextlib.contextmanager
def progress_bars(description: str, enabled: bool = True) -> Iterator[Optional[Callable[[int], Callable[[int], None]]]]:
    """count_progress's factory (None when not enabled) whose bars also close when the block ends
    early, so an error's one line is not followed by a bar still drawing.
    """
    started: list[Progress] = []

    def factory(total: int) -> Callable[[int], None]:
        progress = _progress()
        progress.start()
        started.append(progress)
        task = progress.add_task(description, total=total, stats="", rate="")
        return lambda n: progress.update(task, advance=n)

    try:
        yield factory if enabled else None
    finally:
        for progress in started:
            progress.stop()
