"""`finc presets` and `finc config`: what each preset builds, and the resolved config a run would save."""

from __future__ import annotations

from typing import Annotated

import typer

from finc_cli.cli.common import console, emit_json, handle_errors, parse_sets
from finc_cli.cli.options import JsonOpt, PresetOpt, SetsOpt

__all__ = ["config_cli", "presets_cli", "register"]


def register(app: typer.Typer) -> None:
    """Add `presets` and `config` to the `finc` app."""
    app.command("presets")(presets_cli)
    app.command("config")(config_cli)


@handle_errors
def presets_cli(
    json_out: JsonOpt = False,
) -> None:
    """Each preset's dataset, levels L, steps per level K, kernel k, coupling width and parameter count."""
    from finc_cli.commands.preset_info import preset_rows

    rows = preset_rows()
    if json_out:
        emit_json({"presets": rows})
        return
    from rich.table import Table

    table = Table(title="finc presets (finc train --preset NAME)")
    for col in ("name", "dataset", "image", "L", "K", "k", "width", "parameters"):
        table.add_column(col, justify="right" if col in ("L", "K", "k", "width", "parameters") else "left")
    for r in rows:
        c, h, w = r["shape"]
        table.add_row(
            r["name"],
            r["dataset"],
            f"{c}×{h}×{w}",
            str(r["levels"]),
            str(r["steps"]),
            str(r["kernel_size"]),
            str(r["width"]),
            f"{r['parameters']:,}",
        )
    console.print(table)


@handle_errors
def config_cli(
    preset: PresetOpt = "digits",
    sets: SetsOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the config as one JSON object.")] = False,
) -> None:
    """Print the resolved config (preset + --set overrides) as the YAML that `finc train` saves as config.yaml."""
    import sys

    from finc_cli.config import config_yaml, load_preset

    cfg = load_preset(preset, parse_sets(sets))
    if json_out:
        emit_json(cfg.to_dict())
    else:
        sys.stdout.write(config_yaml(cfg))
        sys.stdout.flush()
