"""Shared CLI plumbing: clean one-line errors and exit codes, JSON or Rich output, override parsing."""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Callable, Optional

import typer
from rich.console import Console

from finc_cli.text import finite_or_none, first_line

__all__ = [
    "decode_notes",
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
    "note",
    "state",
    "use_threads",
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


def note(text: str) -> None:
    """A one-line note on stderr (e.g. about the data: a missing or unusable prepared cache)."""
    err_console.print(text, highlight=False, soft_wrap=True)


def debug_enabled() -> bool:
    """`finc --debug ...` or FINC_DEBUG=1: internal errors keep their traceback."""
    return state["debug"] or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


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
            fail(first_line(exc), exc.exit_code)
        except OSError as exc:  # I/O failure mid-run (e.g. ENOSPC): writes are atomic, so nothing is half-written
            fail(_io_message(exc), EXIT_IO)
        except Exception as exc:  # noqa: BLE001 - a bug: say so in one line unless asked for the traceback
            if debug_enabled():
                raise
            fail(
                f"internal error ({type(exc).__name__}: {first_line(exc)}); this is a bug in finc, "
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


def emit_json(data: dict) -> None:
    """One JSON object on stdout (non-finite floats as null), nothing else."""
    sys.stdout.write(json.dumps(finite_or_none(data)) + "\n")
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


def use_threads(flag: Optional[int]) -> int:
    """Resolve --threads (flag > FINC_THREADS > OMP_NUM_THREADS > all cores) and apply it; returns the count."""
    from finc_cli.runtime.threads import apply_threads, resolve_threads

    choice = resolve_threads(flag)
    apply_threads(choice.n)
    return choice.n


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
