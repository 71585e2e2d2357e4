"""Shared CLI plumbing: clean one-line errors, JSON or Rich output, override parsing."""

from __future__ import annotations

import functools
import json
import math
import sys
from typing import Any, Callable, Optional

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

EXIT_IO = 1  # an I/O failure while running (disk full, permission denied): previous files intact
EXIT_USAGE = 2  # bad input: a one-line error, no traceback, nothing written


def _user_errors() -> tuple:
    """Exception types whose message is meant for users (imported lazily, after the command ran)."""
    from finc_cli.checkpoint import CheckpointError
    from finc_cli.config import ConfigError

    types: list = [CheckpointError, ConfigError]
    for module, name in (
        ("finc_cli.data.errors", "DatasetError"),
        ("finc_cli.run_dir", "RunDirError"),
        ("finc_cli.sample", "OutputError"),
        ("finc_cli.invert", "ImageInputError"),
        ("finc_cli.inverse", "InverseBackendError"),
    ):
        mod = sys.modules.get(module)
        if mod is not None:
            types.append(getattr(mod, name))
    return tuple(types)


def _io_message(exc: OSError) -> str:
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
    return f"{reason}{where}; the previous file was left as it was (free space or fix permissions, then retry)"


def fail(message: str, code: int = EXIT_USAGE) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(fn: Callable) -> Callable:
    """Turn user-facing exceptions into one line on stderr: exit 2 for bad input, 1 for I/O failures.

    Anything else is a bug and keeps its traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except OSError as exc:  # I/O failure mid-run (e.g. ENOSPC): writes are atomic, so nothing is half-written
            fail(_io_message(exc), EXIT_IO)
        except Exception as exc:  # noqa: BLE001 - filtered below
            if isinstance(exc, _user_errors()) or type(exc) is ValueError:
                fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise

    return wrapper


def parse_sets(pairs: Optional[list[str]]) -> dict:
    from finc_cli.config import parse_override

    out = {}
    for text in pairs or []:
        key, value = parse_override(text)
        out[key] = value
    return out


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def emit_json(data: dict) -> None:
    """One JSON object on stdout (non-finite floats as null), nothing else."""
    sys.stdout.write(json.dumps(_clean(data)) + "\n")
    sys.stdout.flush()


def render_table(title: str, data: dict, keys: Optional[list[str]] = None) -> None:
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    for key in keys or list(data):
        value = data.get(key)
        if isinstance(value, float):
            value = f"{value:.4g}" if abs(value) < 1e4 else f"{value:.6g}"
        table.add_row(key, str(value))
    console.print(table)
