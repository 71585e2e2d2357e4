"""The `finc` Typer app: registers one thin module per command (torch is imported only when one runs)."""

from __future__ import annotations

from typing import Annotated

import typer

from finc_cli import __version__
from finc_cli.cli import (
    attributes,
    benchmark,
    compare,
    data,
    evaluate,
    interpolate,
    invert,
    manipulate,
    presets,
    report,
    sample,
    train,
)
from finc_cli.cli.common import console, state

__all__ = ["app", "EXIT_CODES", "main", "root"]

EXIT_CODES = (
    "Exit codes: 0 success; 1 the run failed while writing (disk full, permission denied), training "
    "diverged, or an internal error (a bug; --debug shows its traceback) - the previous files are intact; "
    "2 bad input (preset, config key or value, dataset, checkpoint, image, output path), one line on stderr, "
    "nothing written; 130 / 143 training "
    "stopped by SIGINT / SIGTERM after saving a resumable last.pt (continue with --resume)."
)

app = typer.Typer(
    name="finc",
    help="FInC Flow: train, evaluate, sample and invert normalizing flows with fast invertible k×k convolutions.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        console.print(f"finc {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of an internal error (also FINC_DEBUG=1).")
    ] = False,
) -> None:
    """FInC Flow command line."""
    state["debug"] = debug


# The order of `finc --help`: the run's life cycle first, then the tools around it.
for _command in (
    train,
    evaluate,
    sample,
    invert,
    benchmark,
    data,
    compare,
    interpolate,
    attributes,
    manipulate,
    presets,
    report,
):
    _command.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
