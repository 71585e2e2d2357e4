"""Atomic file writes: temporary file in the same directory, fsync, rename."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

from finc_cli.errors import OutputError

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_file",
    "remove_stale_temporaries",
]

TMP_SUFFIX = ".tmp"  # temporary files are named .NAME.<random>.tmp beside their target


def _file_mode(path: Path) -> int:
    """The mode a plain open() would give: the existing file's, else 0o666 minus the umask."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_dir(folder: Path) -> None:
    try:  # make the rename itself durable; not every filesystem allows it
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


@contextmanager
def atomic_path(path: Union[str, os.PathLike]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed over `path`.

    On any error (a full disk included) the temporary file is removed and `path` is left as it
    was; an OSError is re-raised naming `path`, so the user sees which file could not be written.
    A process killed mid-write leaves at most a stale `.NAME.*.tmp` (see `remove_stale_temporaries`).
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _file_mode(path))
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def remove_stale_temporaries(folder: Union[str, os.PathLike], name: str) -> list[Path]:
    """Delete `.NAME.*.tmp` files a killed writer left in `folder`; returns what was removed."""
    removed = []
    for stale in Path(folder).glob(f".{name}.*{TMP_SUFFIX}"):
        stale.unlink(missing_ok=True)
        removed.append(stale)
    return removed


def atomic_write_bytes(path: Union[str, os.PathLike], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Union[str, os.PathLike], text: str) -> None:
    atomic_write_bytes(path, text.encode())


def check_output_file(path: Path) -> None:
    """Fail before any work if `path` cannot be written: a missing or unwritable folder, a directory."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output directory {parent} is not writable")
    if path.is_dir():
        raise OutputError(f"--out {path} is a directory; give a .png file (or use --individual)")
