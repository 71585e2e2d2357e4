"""Shared CLI plumbing: clean one-line errors and exit codes, JSON or Rich output, override parsing."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from enum import Enum
from typing import Any, Callable, Optional

import typer
from rich.console import Console

__all__ = [
    "DecodePrecision",
    "decode_notes",
    "Split",
    "Weights",
    "debug_enabled",
    "DEBUG_ENV",
    "emit_json",
    "err_console",
    "EXIT_INTERNAL",
    "EXIT_IO",
    "EXIT_USAGE",
    "console",
    "fail",
    "handle_errors",
    "parse_sets",
    "render_table",
    "state",
]

console = Console()
err_console = Console(stderr=True)

EXIT_IO = 1  # an I/O failure while running (disk full, permission denied): previous files intact
EXIT_USAGE = 2  # bad input: a one-line error, no traceback, nothing written
EXIT_INTERNAL = 1  # a bug in finc: one line, the traceback under --debug
DEBUG_ENV = "FINC_DEBUG"

state = {"debug": False}  # set by `finc --debug`

# Typer's own exits and usage errors pass through to Typer.
_TYPER_EXCEPTIONS = (typer.Exit, typer.Abort, typer.BadParameter)


def _io_message(exc: OSError) -> str:
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
    return f"{reason}{where}; the previous file was left as it was (free space or fix permissions, then retry)"


def fail(message: str, code: int = EXIT_USAGE) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def debug_enabled() -> bool:
    """`finc --debug ...` or FINC_DEBUG=1: internal errors keep their traceback."""
    return state["debug"] or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def handle_errors(fn: Callable) -> Callable:
    """Map exceptions to exit codes: a FincError is one line with its code (2: bad input, 1: a failed
    run), an OSError is an I/O failure (1), anything else is a bug in finc: one line that says so
    (1), with the traceback only under --debug or FINC_DEBUG=1.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from finc_cli.errors import FincError

        try:
            return fn(*args, **kwargs)
        except _TYPER_EXCEPTIONS:
            raise
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except FincError as exc:
            fail(_first_line(exc), exc.exit_code)
        except OSError as exc:  # I/O failure mid-run (e.g. ENOSPC): writes are atomic, so nothing is half-written
            fail(_io_message(exc), EXIT_IO)
        except Exception as exc:  # noqa: BLE001 - a bug: say so in one line unless asked for the traceback
            if debug_enabled():
                raise
            fail(
                f"internal error ({type(exc).__name__}: {_first_line(exc)}); this is a bug in finc, "
                f"please report it with the traceback from: finc --debug ... (or {DEBUG_ENV}=1)",
                EXIT_INTERNAL,
            )

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


class Split(str, Enum):
    """A dataset split, as the commands' --split options take it."""

    train = "train"
    val = "val"
    test = "test"


class Weights(str, Enum):
    """Which weights of a checkpoint a command uses: the EMA average or the raw ones."""

    ema = "ema"
    raw = "raw"


class DecodePrecision(str, Enum):
    """Precision of the inverse (docs/inverse.md §11): auto is float64 where the own round trip is not trusted."""

    auto = "auto"
    float32 = "float32"
    float64 = "float64"


def decode_notes(result: dict, asked: str) -> None:
    """On stderr: the composed check's warning line, and one line when auto chose float64."""
    composed = result.get("composed") or {}
    if composed.get("warning"):
        err_console.print(composed["warning"], highlight=False, soft_wrap=True)
    if asked == "auto" and result.get("decode_precision") == "float64" and composed:
        err_console.print(
            f"note: decoded in float64 (--decode-precision auto): the {composed['precision']} round trip is not "
            f"trusted",
            highlight=False,
            soft_wrap=True,
        )
