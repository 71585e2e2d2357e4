"""Where a dataset's files live: --data-dir > $FINC_DATA_DIR, and how a missing dataset is reported."""

from __future__ import annotations

import os
from pathlib import Path

from finc_cli.errors import DatasetError

__all__ = ["ENV_VAR", "FIX", "first_file", "not_found", "resolve_data_dir"]

ENV_VAR = "FINC_DATA_DIR"
FIX = f"pass --data-dir DIR or set {ENV_VAR}"


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """Explicit argument > $FINC_DATA_DIR > None."""
    chosen = data_dir if data_dir else os.environ.get(ENV_VAR) or None
    return Path(chosen).expanduser() if chosen else None


def not_found(name: str, layout: str) -> DatasetError:
    """The error for a dataset whose files are not where its layout says: what was expected and the fix."""
    return DatasetError(f"{name} not found: expected {layout}; {FIX}")


def first_file(*candidates: Path) -> Path | None:
    """The first candidate that is a file, in order of preference."""
    return next((c for c in candidates if c.is_file()), None)
