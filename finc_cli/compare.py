"""Train and measure one model per invertible convolution: the plain function behind `finc compare`.

Every variant gets the same preset, overrides, seed (hence data order) and step budget; only
`model.conv` differs (docs/model.md §10). Each trains in OUT/<conv>/ with the trainer of
`finc train` and is then scored with the functions of `finc bpd`, `finc invert` and
`finc benchmark model`; its row is written to OUT/<conv>/compare.json, so a rerun skips finished
variants and resumes an interrupted one from its last.pt.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Callable, Iterable, Optional

from finc_cli.errors import ConfigError

__all__ = ["COMPARE_COLUMNS", "compare", "compare_markdown", "variant_row"]

ROW_FILE = "compare.json"

# (header, key, format) of the comparison table.
COMPARE_COLUMNS = [
    ("conv", "label", "s"),
    ("test bits/dim", ("bpd", "bpd_stderr"), "±"),
    ("params", "params", ",d"),
    ("train images/s", "train_images_per_s", ".0f"),
    ("FT s", "ft_s", ".3g"),
    ("ST s", "st_s", ".3g"),
    ("ST/FT", "st_over_ft", ".2f"),
    ("ST ÷ FInC ST", "st_vs_finc", ".2f"),
    ("inverse", "backend", "s"),
    ("max recon err", "max_recon_err", ".1e"),
    ("exact", "exact", "s"),
]


def _flat(cfg) -> dict:
    """{'section.key': value} of every data / model / train key: the whole config as overrides."""
    from finc_cli.config import SECTIONS

    raw = cfg.to_dict()
    return {f"{s}.{k}": v for s in SECTIONS for k, v in raw[s].items()}


def _check_same_run(run_dir: Path, cfg) -> None:
    """Refuse to reuse a variant directory trained with a different architecture, data or seed."""
    from finc_cli.config import check_resume_overrides, load_preset

    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    try:
        check_resume_overrides(load_preset(saved), _flat(cfg))
    except ConfigError as exc:
        raise ConfigError(f"{run_dir} was trained differently: {exc}") from None


def _train_images_per_s(run_dir: Path, batch_size: int) -> Optional[float]:
    """Images per second of the training steps alone (median of the logged batch wait + compute; no eval)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    step_s = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "compute_s" in record and "data_s" in record:
            step_s.append(record["data_s"] + record["compute_s"])
    step_s = [s for s in step_s if s > 0]
    return batch_size / statistics.median(step_s) if step_s else None


def variant_row(
    conv: str, run_dir: Path, device: str, recon_images: int = 256, notify: Optional[Callable[[str], None]] = None
) -> dict:
    """Score a trained variant: test bits/dim ± stderr (best.pt), exact round trip, parameters, training speed.

    FT and ST are measured later for all variants at once (`_timing`), so that their ratios share one run.
    """
    from finc_cli.checkpoint import model_from_checkpoint, read_checkpoint
    from finc_cli.evaluate import evaluate
    from finc_cli.flows.convolutions import CONV_LABELS
    from finc_cli.invert import invert

    ckpt = run_dir / "best.pt"
    data = read_checkpoint(ckpt)
    cfg_steps = int(data["config"]["train"]["steps"])
    scored = evaluate(str(ckpt), split="test", device=device, notify=notify)
    recon = invert(str(ckpt), split="test", limit=recon_images, device=device, notify=notify)
    return {
        "conv": conv,
        "label": CONV_LABELS[conv],
        "steps": cfg_steps,
        "bpd": scored["bpd"],
        "bpd_stderr": scored["bpd_stderr"],
        "n_test_images": scored["n_images"],
        "params": model_from_checkpoint(data, ckpt)[0].num_parameters(),
        "train_images_per_s": _train_images_per_s(run_dir, int(data["config"]["train"]["batch_size"])),
        "max_recon_err": max([recon["max_abs_err"], *(r["max_abs_err"] for r in recon["layers"])]),
        "max_pixel_err_levels": recon["max_abs_err"],
        "exact": recon["exact"],
        "run_dir": str(run_dir),
    }


def compare(
    preset: str,
    convs: Iterable[str],
    steps: int,
    out_dir,
    overrides: Optional[dict] = None,
    device: str = "auto",
    timing: Optional[dict] = None,
    reporter_for: Optional[Callable[[str], object]] = None,
    notify: Optional[Callable[[str], None]] = None,
) -> dict:
    """Train (or resume, or skip) one run per conv in out_dir/<conv>/, score each, write the table.

    Returns {preset, steps, seed, out_dir, rows, best_baseline, finc_within_stderr}; out_dir holds
    compare.json and compare.md (written atomically after every variant). `timing`: batch, repeats,
    warmup, threads and recon_images for the FT/ST and reconstruction columns. `reporter_for(conv)`
    gives the trainer's progress reporter; `notify` gets one-line notes (skips, resumes, data).
    """
    from finc_cli.bench.model import parse_convs
    from finc_cli.config import load_preset
    from finc_cli.train import train

    if steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}")
    convs = parse_convs(convs)
    timing = {"batch": 100, "repeats": 3, "warmup": 1, "threads": 2, "recon_images": 256, **(timing or {})}
    out, overrides = Path(out_dir), {**(overrides or {}), "train.steps": steps}
    if device != "auto":
        overrides["train.device"] = device
    cfgs = {conv: load_preset(preset, {**overrides, "model.conv": conv}) for conv in convs}  # bad input: fail now
    say = notify or (lambda _text: None)
    rows = []
    for i, (conv, cfg) in enumerate(cfgs.items(), start=1):
        run_dir = out / conv
        _check_same_run(run_dir, cfg)
        row = _finished_row(run_dir, steps)
        if row is not None:
            say(f"[{i}/{len(cfgs)}] {conv}: finished before ({steps} steps), skipped")
        else:
            resume = "auto" if (run_dir / "last.pt").is_file() else None
            # A directory without last.pt holds nothing resumable (stopped before its first checkpoint): start over.
            force = resume is None and run_dir.is_dir() and any(run_dir.iterdir())
            say(f"[{i}/{len(cfgs)}] {conv}: {'resuming' if resume else 'training'} in {run_dir}")
            reporter = reporter_for(conv) if reporter_for else None
            train(cfg, run_dir, resume=resume, force=force, overrides=_flat(cfg) if resume else None, reporter=reporter)
            row = variant_row(conv, run_dir, device, timing["recon_images"], notify)
            _write_json(run_dir / ROW_FILE, row)
        rows.append(row)
        _write_tables(out, preset, steps, cfgs[convs[0]].train.seed, rows)
    timed = _timing(out, preset, overrides, convs, device, timing, say)
    rows = [{**row, **timed[row["conv"]]} for row in rows]
    _write_tables(out, preset, steps, cfgs[convs[0]].train.seed, rows)
    return _summary(out, preset, steps, cfgs[convs[0]].train.seed, rows)


def _timing(out: Path, preset: str, overrides: dict, convs: list, device: str, timing: dict, say) -> dict:
    """{conv: FT/ST columns}: every variant's architecture timed in one `model_rows` run, interleaved, so
    the ratios share the machine's load; kept in OUT/timing.json and reused while convs and settings match."""
    from finc_cli.bench.model import model_rows
    from finc_cli.device import resolve_device

    path = out / "timing.json"
    settings = {"convs": convs, **{k: timing[k] for k in ("batch", "repeats", "warmup", "threads")}}
    try:
        saved = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        saved = None
    if isinstance(saved, dict) and saved.get("settings") == settings:
        return saved["by_conv"]
    say(f"timing FT and ST of {', '.join(convs)} at batch {timing['batch']}")
    rows = model_rows(
        preset,
        overrides,
        [timing["batch"]],
        ["auto"],
        device=str(resolve_device(device)),  # timed where it trained
        repeats=timing["repeats"],
        warmup=timing["warmup"],
        threads=timing["threads"],
        convs=convs,
    )
    keys = ("ft_s", "st_s", "st_over_ft", "st_vs_finc", "backend", "inverse")
    by_conv = {r["conv"]: {**{k: r[k] for k in keys}, "timing_batch": r["batch"]} for r in rows}
    _write_json(path, {"settings": settings, "by_conv": by_conv})
    return by_conv


def _finished_row(run_dir: Path, steps: int) -> Optional[dict]:
    path = run_dir / ROW_FILE
    if not path.is_file():
        return None
    try:
        row = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable: score the variant again
    return row if isinstance(row, dict) and row.get("steps") == steps else None


def _summary(out: Path, preset: str, steps: int, seed: int, rows: list[dict]) -> dict:
    """The rows plus the check of the paper's claim: FInC's test bits/dim at most the best
    of Emerging and CInC plus that best's standard error."""
    by_conv = {r["conv"]: r for r in rows}
    baselines = [by_conv[c] for c in ("emerging", "cinc") if c in by_conv]
    best = min(baselines, key=lambda r: r["bpd"], default=None)
    within = None
    if best is not None and "finc" in by_conv:
        finc = by_conv["finc"]
        within = finc["bpd"] <= best["bpd"] + best["bpd_stderr"]
    return {
        "preset": preset,
        "steps": steps,
        "seed": seed,
        "out_dir": str(out),
        "rows": rows,
        "best_baseline": best["conv"] if best else None,
        "finc_within_stderr": within,
    }


def compare_markdown(result: dict) -> str:
    """The comparison as a Markdown table, with how it was run and the one-stderr check."""
    from finc_cli.bench.tables import format_cell

    def cell(row: dict, key, spec: str) -> str:
        if spec == "±":
            mean, err = (row.get(k) for k in key)
            return "–" if mean is None else f"{mean:.4f} ± {err:.4f}"
        return format_cell(row.get(key), spec)

    lines = [
        "| " + " | ".join(h for h, _, _ in COMPARE_COLUMNS) + " |",
        "|" + "---|" * len(COMPARE_COLUMNS),
    ]
    lines += ["| " + " | ".join(cell(r, k, s) for _, k, s in COMPARE_COLUMNS) + " |" for r in result["rows"]]
    batch = result["rows"][0].get("timing_batch", "-") if result["rows"] else "-"
    note = (
        f"\nPreset {result['preset']}, {result['steps']} training steps per variant, seed {result['seed']} "
        f"(same data order). Test bits/dim of best.pt ± standard error over test images; FT and ST in seconds "
        f"for {batch} images; max recon err: largest of the round trip's error (intensity levels) and each "
        "convolution's own inverse error."
    )
    if result["finc_within_stderr"] is not None:
        verdict = "yes" if result["finc_within_stderr"] else "no"
        best = result["best_baseline"]
        note += f" FInC within one standard error of the best of Emerging and CInC ({best}), or better: {verdict}."
    return "\n".join(lines) + "\n" + note + "\n"


def _write_json(path: Path, data: dict) -> None:
    from finc_cli.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _write_tables(out: Path, preset: str, steps: int, seed: int, rows: list[dict]) -> None:
    from finc_cli.atomic import atomic_write_text

    result = _summary(out, preset, steps, seed, rows)
    _write_json(out / "compare.json", result)
    atomic_write_text(out / "compare.md", compare_markdown(result))
