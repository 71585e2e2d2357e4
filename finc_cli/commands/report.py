"""One picture of a run: bits/dim, learning rate, gradient norm, throughput, samples, health (docs/training.md §13)."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import yaml
from PIL import Image

from finc_cli.errors import FincError, RunDirError
from finc_cli.files.atomic import atomic_path, check_output_file
from finc_cli.train.run_dir import RunDir

__all__ = ["PANELS", "report", "summarize"]


# The report's panels, left to right and top to bottom: the titles the figure's axes carry.
PANELS = (
    "bits/dim",
    "learning rate",
    "gradient norm",
    "throughput",
    "latest samples",
    "reconstruction health",
)
_STAGES = 4  # read the run, draw the curves, draw samples and health, write the PNG


def _read_config(run: RunDir) -> dict:
    path = run.config
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _check_run(run: RunDir) -> None:
    if not run.path.is_dir():
        raise RunDirError(
            f"{run.path} is not a directory; give a run directory written by finc train (e.g. runs/digits)"
        )
    if not run.metrics.is_file():
        raise RunDirError(
            f"{run.path} is not a run directory (no {RunDir.METRICS}); give the --out folder of finc train"
        )


def _batch_sizes(records: list[dict], batch_size: Optional[int]) -> list[Optional[int]]:
    """The global batch size in force at each record: config.yaml holds the last, config_changed events the earlier."""
    changes = [r for r in records if r.get("event") == "config_changed" and r.get("key") == "train.batch_size"]
    current = changes[0].get("from") if changes else batch_size
    at_change = {id(r) for r in changes}
    sizes = []
    for r in records:
        if id(r) in at_change:
            current = r.get("to")
        sizes.append(current if isinstance(current, int) else None)
    return sizes


def _wall_seconds(train: list[dict]) -> float:
    """The run's wall time: the last `wall_s` (cumulative across resumes), plus, for sessions logged
    before records carried it, each session's last `elapsed_s` (which restarts at each resume)."""
    total, last = 0.0, 0.0
    for r in train:
        e = r.get("elapsed_s")
        if "wall_s" in r or not isinstance(e, (int, float)):
            continue
        if e < last:  # a new session
            total += last
        last = e
    walls = [r["wall_s"] for r in train if isinstance(r.get("wall_s"), (int, float))]
    return total + last + (walls[-1] if walls else 0.0)


def _wait_share(record: dict) -> Optional[float]:
    """The share of a logged step spent waiting for its batch (docs/training.md §13), when the record times it."""
    data_s, compute_s = record.get("data_s"), record.get("compute_s")
    if isinstance(data_s, (int, float)) and isinstance(compute_s, (int, float)) and data_s + compute_s > 0:
        return data_s / (data_s + compute_s)
    return None


def _median(values: list[float]) -> Optional[float]:
    values = sorted(v for v in values if isinstance(v, (int, float)) and math.isfinite(v))
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


def summarize(records: list[dict], config: Optional[dict] = None) -> dict[str, Any]:
    """The numbers of a run: best validation bits/dim and its step, last step, images/s, wall time, health."""
    config = config or {}
    train_cfg = config.get("train", {}) if isinstance(config.get("train"), dict) else {}
    sizes = _batch_sizes(records, train_cfg.get("batch_size"))
    train = [(r, b) for r, b in zip(records, sizes) if "loss_bpd" in r and "event" not in r]
    evals = [r for r in records if "val_bpd" in r]
    best = min((r for r in evals if isinstance(r["val_bpd"], (int, float))), key=lambda r: r["val_bpd"], default=None)
    images_s = [r["it_s"] * b for r, b in train if b and isinstance(r.get("it_s"), (int, float))]
    shares = [_wait_share(r) for r, _ in train]
    health = [r for r in evals if isinstance(r.get("recon_max_err"), (int, float))]
    return {
        "name": config.get("name"),
        "dataset": (config.get("data") or {}).get("name") if isinstance(config.get("data"), dict) else None,
        "target_steps": train_cfg.get("steps"),
        "last_step": max((r["step"] for r in records), default=0),
        "best_val_bpd": best["val_bpd"] if best else None,
        "best_val_step": best["step"] if best else None,
        "last_val_bpd": evals[-1]["val_bpd"] if evals else None,
        "last_val_bpd_raw": evals[-1].get("val_bpd_raw") if evals else None,
        "last_val_weights": evals[-1].get("val_weights") if evals else None,
        "last_train_bpd": train[-1][0]["loss_bpd"] if train else None,
        "images_per_s": _median(images_s),  # median over the log intervals: robust to the ones holding an eval
        "data_wait_share": _median(shares),
        "wall_s": _wall_seconds([r for r, _ in train]),
        "recon_max_err": health[-1]["recon_max_err"] if health else None,
        "recon_worst_err": max((r["recon_max_err"] for r in health), default=None),
        "rebuild_max_err": next((r["rebuild_max_err"] for r in reversed(evals) if "rebuild_max_err" in r), None),
        "health_threshold": train_cfg.get("health_threshold"),
        "health_warnings": sum(1 for r in evals if r.get("health_warning")),
        "decode_amplification": next(
            (r["decode_amplification"] for r in reversed(evals) if "decode_amplification" in r), None
        ),
        "roundtrip_failures": sum(1 for r in evals if r.get("roundtrip_exact") is False),
        "rollbacks": sum(1 for r in records if r.get("event") == "rollback"),
        "skipped_steps": sum(1 for r in records if r.get("event") == "nonfinite"),
    }


def _figure():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise FincError("finc report needs matplotlib: pip install matplotlib") from None
    fig = Figure(figsize=(12, 7), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas, without pyplot's global state
    return fig


def _plot_curves(axes, records: list[dict], summary: dict, sizes: list) -> None:
    """bits/dim, learning rate, gradient norm and throughput against step."""
    train = [(r, b) for r, b in zip(records, sizes) if "loss_bpd" in r and "event" not in r]
    _plot_bpd(axes[0], records, [r for r, _ in train], summary)
    _plot_schedule(axes[1], axes[2], [r for r, _ in train])
    _plot_throughput(axes[3], train)


def _plot_bpd(bpd, records: list[dict], train: list[dict], summary: dict) -> None:
    evals = [r for r in records if isinstance(r.get("val_bpd"), (int, float))]
    bpd.plot([r["step"] for r in train], [r["loss_bpd"] for r in train], color="tab:blue", lw=1, label="train")
    if evals:
        bpd.errorbar(
            [r["step"] for r in evals],
            [r["val_bpd"] for r in evals],
            yerr=[r.get("val_bpd_stderr") or 0.0 for r in evals],
            color="tab:orange",
            marker="o",
            ms=4,
            lw=1.5,
            capsize=2,
            label="validation",
        )
    raw = [r for r in evals if isinstance(r.get("val_bpd_raw"), (int, float))]
    if raw:  # the raw weights' score beside the default weights' (the lower of raw and EMA)
        bpd.plot(
            [r["step"] for r in raw],
            [r["val_bpd_raw"] for r in raw],
            color="tab:olive",
            ls="--",
            marker=".",
            lw=1,
            label="validation, raw weights",
        )
    if summary["best_val_step"] is not None:
        bpd.annotate(
            f"best {summary['best_val_bpd']:.4f}",
            (summary["best_val_step"], summary["best_val_bpd"]),
            textcoords="offset points",
            xytext=(0, 10),
            ha="center",
            fontsize=8,
        )
    for r in records:  # rollbacks and resumes with changed settings, where they happened
        if r.get("event") in ("rollback", "config_changed"):
            bpd.axvline(r["step"], color="grey", ls=":", lw=0.8)
    bpd.set(title="bits/dim", xlabel="step", ylabel="bits/dim")
    bpd.legend(fontsize=8)


def _plot_schedule(lr, grad, train: list[dict]) -> None:
    steps = [r["step"] for r in train]
    lr.plot(steps, [r.get("lr", math.nan) for r in train], color="tab:green", lw=1)
    lr.set(title="learning rate", xlabel="step")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))

    norms = [r.get("grad_norm", math.nan) for r in train]
    grad.plot(steps, norms, color="tab:red", lw=1)
    positive = [v for v in norms if isinstance(v, (int, float)) and math.isfinite(v) and v > 0]
    if positive and max(positive) > 20 * min(positive):  # a spike: keep the ordinary steps readable
        grad.set_yscale("log")
    grad.set(title="gradient norm", xlabel="step")


def _plot_throughput(speed, train: list[tuple[dict, Optional[int]]]) -> None:
    """images/s (steps/s where the batch size is unknown) and the data-wait share on a second axis."""
    steps = [r["step"] for r, _ in train]
    per_s = [r.get("it_s", math.nan) * b if b else r.get("it_s", math.nan) for r, b in train]
    unit = "images/s" if all(b for _, b in train) else "steps/s"
    speed.plot(steps, per_s, color="tab:purple", lw=1, label=unit)
    speed.set(title="throughput", xlabel="step", ylabel=unit)
    waits = [(r["step"], 100 * _wait_share(r)) for r, _ in train if _wait_share(r) is not None]
    if waits:
        share = speed.twinx()
        share.plot(*zip(*waits), color="tab:gray", lw=1, ls="--", label="data wait %")
        share.set_ylim(0, 100)
        share.set_ylabel("data wait (% of step)", fontsize=8)
        share.tick_params(labelsize=8)
        lines = speed.get_lines() + share.get_lines()
        speed.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="upper right")


def _plot_samples(ax, grid: Optional[Path]) -> None:
    ax.set_title("latest samples")
    ax.set_axis_off()
    if grid is None:
        ax.text(0.5, 0.5, "no sample grid yet", ha="center", va="center", transform=ax.transAxes)
        return

    with Image.open(grid) as img:
        arr = np.asarray(img.convert("RGB"))
    ax.imshow(arr, interpolation="nearest")
    step = grid.stem.split("_")[-1].lstrip("0") or "0"  # step_0000500 -> 500
    ax.set_title(f"latest samples (step {step})")


def _plot_health(ax, records: list[dict], summary: dict) -> None:
    evals = [r for r in records if isinstance(r.get("recon_max_err"), (int, float))]
    ax.set_title("reconstruction health")
    ax.set(xlabel="step", ylabel="max |x - inverse(forward(x))|")
    if evals:
        errs = [max(r["recon_max_err"], 1e-12) for r in evals]  # exact zero drawn at the floor of the log axis
        ax.semilogy([r["step"] for r in evals], errs, color="tab:brown", marker="o", ms=4, lw=1)
    rebuilt = [r for r in evals if isinstance(r.get("rebuild_max_err"), (int, float))]
    if rebuilt:  # train.memory invert: the rebuilt layer inputs' error (docs/training.md §18)
        ys = [max(r["rebuild_max_err"], 1e-12) for r in rebuilt]
        ax.semilogy(
            [r["step"] for r in rebuilt], ys, color="tab:purple", marker="s", ms=3, lw=1, label="rebuilt inputs"
        )
        errs = errs + ys
    _plot_amplification(ax, records)
    threshold = summary["health_threshold"]
    if isinstance(threshold, (int, float)) and threshold > 0:
        ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"threshold {threshold:g}")
        ax.legend(fontsize=8, loc="center right")
    if not evals:
        ax.text(0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=ax.transAxes)
        return
    worst = summary["recon_worst_err"]
    ok = summary["health_warnings"] == 0 and not summary.get("roundtrip_failures")
    text = f"worst FInC unit, latest {summary['recon_max_err']:.1e}\nworst over the run {worst:.1e}\n" + (
        "healthy" if ok else f"{summary['health_warnings']} warning(s), {summary['roundtrip_failures']} inexact"
    )
    low = min(errs)
    high = max(max(errs), threshold if isinstance(threshold, (int, float)) and threshold > 0 else low)
    ax.set_ylim(low / 100, high * 10)  # the errors and the threshold both in view, room for the text below
    ax.text(
        0.03,
        0.04,
        text,
        transform=ax.transAxes,
        va="bottom",
        fontsize=8,
        color="tab:green" if ok else "tab:red",
        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"},
    )


def _plot_amplification(ax, records: list[dict]) -> None:
    """The whole model's decode amplification on a second axis (docs/inverse.md §11), when the run logged it."""
    amps = [r for r in records if isinstance(r.get("decode_amplification"), (int, float))]
    if amps:
        twin = ax.twinx()
        twin.semilogy([r["step"] for r in amps], [max(r["decode_amplification"], 1e-12) for r in amps], "tab:purple")
        twin.set_ylabel("decode amplification", color="tab:purple")


def _save_png(fig, path: Path) -> None:
    """The figure as a 256-colour PNG: a third of the RGB file's size, and the curves look the same."""

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    with Image.open(buf) as img:
        img.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(
            path, format="PNG", optimize=True
        )


def _title(run: Path, summary: dict) -> str:
    name = summary["name"] or run.name
    steps = f"step {summary['last_step']}" + (f" of {summary['target_steps']}" if summary["target_steps"] else "")
    parts = [f"{name} ({summary['dataset']})" if summary["dataset"] else name, steps]
    if summary["best_val_bpd"] is not None:
        parts.append(f"best val {summary['best_val_bpd']:.4f} bits/dim at step {summary['best_val_step']}")
    if summary["images_per_s"] is not None:
        parts.append(f"{summary['images_per_s']:.0f} images/s")
    parts.append(f"{summary['wall_s'] / 60:.1f} min")
    return " · ".join(parts)


def report(
    run_dir: Union[str, os.PathLike],
    *,
    out: Union[str, os.PathLike, None] = None,
    progress: Optional[Callable[[int], Callable[[int], None]]] = None,
) -> dict[str, Any]:
    """Draw a run (in progress or finished) as one PNG (default RUN_DIR/report.png); return its summary.

    `progress(total)` returns `advance(n)`, called once per stage. Nothing is written when the
    run directory is not one; the PNG is replaced atomically.
    """

    run = RunDir(run_dir)
    _check_run(run)
    out_path = Path(out) if out is not None else run.report
    check_output_file(out_path)
    advance = progress(_STAGES) if progress is not None else (lambda n: None)

    records = run.read_metrics()
    config = _read_config(run)
    summary = summarize(records, config)
    sizes = _batch_sizes(records, (config.get("train") or {}).get("batch_size"))
    advance(1)

    fig = _figure()
    axes = fig.subplots(2, 3).ravel()
    _plot_curves(axes[:4], records, summary, sizes)
    advance(1)
    grid = run.latest_sample_grid()
    _plot_samples(axes[4], grid)
    _plot_health(axes[5], records, summary)
    for ax in (*axes[:4], axes[5]):  # one step axis for every curve
        ax.set_xlim(0, max(summary["last_step"], 1))
    fig.suptitle(_title(run.path, summary), fontsize=11)
    advance(1)

    with atomic_path(out_path) as tmp:
        _save_png(fig, tmp)
    advance(1)
    width, height = (int(round(v)) for v in fig.get_size_inches() * fig.dpi)
    return {
        "run_dir": str(run.path),
        "out": str(out_path),
        **summary,
        "sample_grid": str(grid) if grid else None,
        "panels": [ax.get_title().split(" (")[0] for ax in axes],
        "width": width,
        "height": height,
    }
