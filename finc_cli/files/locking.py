"""One writer per folder: an OS-level exclusive lock (flock) that is released when its process dies."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Iterator, Optional

from finc_cli.errors import LockError

__all__ = ["exclusive_lock", "lock_holder"]


def lock_holder(path: Path) -> Optional[dict]:
    """Who wrote the lock file last ({pid, host, started}), or None when it cannot be read."""
    try:
        return json.loads(Path(path).read_text() or "null")
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def exclusive_lock(path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if needed) inside the block.

    The kernel drops the lock when the process exits, however it exits (kill -9 included), so a
    lock is never stale. With `wait` the call blocks until the holder is done; without it a held
    lock raises LockError naming the holder. The file records the holder for that message.
    """

    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = lock_holder(path) or {}
            who = f"PID {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
            raise LockError(
                f"{what} is in use by another finc process ({who}); wait for it to finish or stop it, "
                f"or use another folder"
            ) from None
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
