"""`finc evaluate` (and its alias `finc bpd`): a thin wrapper over finc_cli.commands.evaluate."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from finc_cli.cli.common import console, emit_json, handle_errors, note, render_table, use_threads
from finc_cli.cli.options import (
    CacheDirOpt,
    CheckpointArg,
    DataDirOpt,
    DeviceOpt,
    JsonOpt,
    Split,
    SplitOpt,
    ThreadsOpt,
    Weights,
    WeightsOpt,
)

__all__ = ["evaluate_cli", "register"]


def register(app: typer.Typer) -> None:
    """Add `evaluate` and its alias `bpd` to the `finc` app."""
    app.command("evaluate")(evaluate_cli)
    app.command("bpd", help="Alias of evaluate: bits per dimension over a split.")(evaluate_cli)


@handle_errors
def evaluate_cli(
    checkpoint: CheckpointArg,
    split: SplitOpt = Split.test,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Evaluation batch size.")] = None,
    device: DeviceOpt = "auto",
    samples: Annotated[
        int,
        typer.Option(
            "--samples", "-k", help="Dequantization draws per image: K > 1 adds the importance-weighted bits/dim."
        ),
    ] = 1,
    weights: WeightsOpt = Weights.auto,
    classify: Annotated[
        bool,
        typer.Option(
            "--classify",
            help="Class-conditional models: also the accuracy of the Bayes classifier argmax_y p(x|y)p(y) and of the "
            "class head.",
        ),
    ] = False,
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Bits per dimension over a whole split, with its standard error (a class-conditional model: given the true
    class, and the marginal over classes)."""
    from finc_cli.cli.progress import count_progress
    from finc_cli.commands.evaluate import evaluate

    use_threads(threads)
    result = evaluate(
        checkpoint,
        split=split.value,
        data_dir=data_dir,
        batch_size=batch_size,
        device=device,
        progress=None if json_out else count_progress("evaluating"),
        cache_dir=cache_dir,
        notify=note,
        samples=samples,
        weights=weights.value,
        classify=classify,
    )
    if json_out:
        emit_json(result)
        return
    render_table(f"bits/dim on {result['dataset']} {result['split']}", result)
    console.print(
        f"{result['split']} bits/dim: {result['bpd']:.4f} ± {result['bpd_stderr']:.4f} "
        f"({result['n_images']} images, {result['weights']} weights)"
    )
    if "bpd_iw" in result:
        console.print(
            f"{result['split']} bits/dim, importance-weighted over {samples} draws: "
            f"{result['bpd_iw']:.4f} ± {result['bpd_iw_stderr']:.4f} (single-sample bound above)"
        )
    if "bpd_marginal" in result:
        console.print(
            f"{result['split']} bits/dim, marginal over {result['num_classes']} classes (uniform p(y)): "
            f"{result['bpd_marginal']:.4f} ± {result['bpd_marginal_stderr']:.4f} (given the true class above)"
        )
    if "accuracy_bayes" in result:
        head = result["accuracy_head"]
        console.print(
            f"{result['split']} accuracy: Bayes classifier {100 * result['accuracy_bayes']:.2f}%, class head "
            + (f"{100 * head:.2f}%" if head is not None else "none (train.class_weight 0)")
        )
