"""`finc report RUN_DIR`: a thin wrapper over finc_cli.commands.report (matplotlib imported lazily)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from finc_cli.cli.common import console, emit_json, handle_errors

__all__ = ["register", "report_cli"]


def register(app: typer.Typer) -> None:
    """Add `report` to the `finc` app."""
    app.command("report")(report_cli)


@handle_errors
def report_cli(
    run_dir: Annotated[str, typer.Argument(help="Run directory written by finc train (finished or in progress).")],
    out: Annotated[
        Optional[str], typer.Option("--out", "-o", help="PNG to write (default RUN_DIR/report.png).")
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object (the PNG is still written).")
    ] = False,
) -> None:
    """One picture of a run: bits/dim, learning rate, gradient norm, throughput, latest samples, health."""
    from finc_cli.cli.progress import count_progress
    from finc_cli.commands.report import report

    result = report(run_dir, out=out, progress=None if json_out else count_progress("report"))
    if json_out:
        emit_json(result)
        return
    best = result["best_val_bpd"]
    best_text = f"best val {best:.4f} bits/dim at step {result['best_val_step']}" if best is not None else "no eval yet"
    speed = result["images_per_s"]
    console.print(
        f"wrote {result['out']} ({result['width']}x{result['height']} px): step {result['last_step']}, {best_text}, "
        + (f"{speed:.0f} images/s, " if speed is not None else "")
        + f"{result['wall_s'] / 60:.1f} min of training",
        highlight=False,
        soft_wrap=True,
    )
