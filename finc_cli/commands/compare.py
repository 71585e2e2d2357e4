"""Train and measure one model per invertible convolution: the plain function behind `finc compare`.

Every variant gets the same preset, overrides, seed (hence data order) and step budget; only
`model.conv` differs (docs/model.md §10). Each trains in OUT/<conv>/ with the trainer of
`finc train` and is then scored with the functions of `finc bpd`, `finc invert` and
`finc benchmark model`; its row is written to OUT/<conv>/compare.json, so a rerun skips finished
variants and resumes an interrupted one from its last.pt.

With several seeds (`--seeds 0,1,2`) each variant trains once per seed, in OUT/<conv>/seed-<s>/, and
its bits/dim is the mean over seeds ± the standard error over seeds: the spread that retraining
brings, which one run's standard error over test images does not show. Because a seed fixes the
data order and noise of every variant alike, FInC is also compared with the best baseline seed by
seed (a paired difference).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Callable, Iterable, Optional

from finc_cli.bench.model import ft_st_rows
from finc_cli.bench.tables import markdown_table
from finc_cli.checkpoint import model_from_checkpoint, read_checkpoint
from finc_cli.commands.evaluate import evaluate
from finc_cli.commands.invert import invert
from finc_cli.config import SECTIONS, check_resume_overrides, load_preset, parse_conv_list
from finc_cli.errors import ConfigError
from finc_cli.files.atomic import atomic_write_text
from finc_cli.flows.convolutions import CONV_LABELS
from finc_cli.runtime.device import resolve_device
from finc_cli.text import comma_list
from finc_cli.train import train
from finc_cli.train.run_dir import RunDir

__all__ = ["COMPARE_COLUMNS", "aggregate_seeds", "compare", "compare_markdown", "parse_seeds", "variant_row"]

ROW_FILE = "compare.json"

# (header, key, format) of the comparison table, rendered by bench.tables.markdown_table.
COMPARE_COLUMNS = [
    ("conv", "label", "s"),
    ("test bits/dim", ("bpd", "bpd_stderr"), "±.4f"),
    ("per seed", "bpd_seeds", ".3f"),
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


def parse_seeds(seeds: Iterable) -> list[int]:
    """Seeds from repeatable or comma-separated values ("0,1,2"), in order, each once; non-negative integers."""
    out: list[int] = []
    for text in comma_list(seeds):
        try:
            seed = int(text)
        except ValueError:
            raise ConfigError(f"--seeds takes integers, e.g. --seeds 0,1,2; got {text!r}") from None
        if seed < 0:
            raise ConfigError(f"--seeds takes non-negative integers, got {seed}")
        out += [] if seed in out else [seed]
    if not out:
        raise ConfigError("give at least one seed, e.g. --seeds 0,1,2")
    return out


def _flat(cfg) -> dict:
    """{'section.key': value} of every data / model / train key: the whole config as overrides."""

    raw = cfg.to_dict()
    return {f"{s}.{k}": v for s in SECTIONS for k, v in raw[s].items()}


def _check_same_run(run_dir: Path, cfg) -> None:
    """Refuse to reuse a variant directory trained with a different architecture, data or seed."""

    saved = RunDir(run_dir).config
    if not saved.is_file():
        return
    try:
        check_resume_overrides(load_preset(saved), _flat(cfg))
    except ConfigError as exc:
        raise ConfigError(f"{run_dir} was trained differently: {exc}") from None


def _train_images_per_s(run_dir: Path, batch_size: int) -> Optional[float]:
    """Images per second of the training steps alone (median of the logged batch wait + compute; no eval)."""
    run = RunDir(run_dir)
    if not run.metrics.is_file():
        return None
    step_s = [r["data_s"] + r["compute_s"] for r in run.read_metrics() if "compute_s" in r and "data_s" in r]
    step_s = [s for s in step_s if s > 0]
    return batch_size / statistics.median(step_s) if step_s else None


def variant_row(
    conv: str, run_dir: Path, device: str, recon_images: int = 256, notify: Optional[Callable[[str], None]] = None
) -> dict:
    """Score a trained variant: test bits/dim ± stderr (best.pt), exact round trip, parameters, training speed.

    FT and ST are measured later for all variants at once (`_timing`), so that their ratios share one run.
    """

    ckpt = RunDir(run_dir).best
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
    *,
    convs: Iterable[str],
    steps: int,
    out_dir,
    overrides: Optional[dict] = None,
    device: str = "auto",
    timing: Optional[dict] = None,
    reporter_for: Optional[Callable[[str], object]] = None,
    notify: Optional[Callable[[str], None]] = None,
    seeds: Optional[Iterable] = None,
    threads: Optional[int] = None,
) -> dict:
    """Train (or resume, or skip) one run per conv in out_dir/<conv>/, score each, write the table.

    Returns {preset, steps, seed, seeds, out_dir, rows, runs, best_baseline, finc_within_stderr,
    finc_minus_best}; out_dir holds compare.json and compare.md (written atomically after every
    run). `seeds`: train each conv once per seed, in out_dir/<conv>/seed-<s>/ (None: one run with
    the config's train.seed, in out_dir/<conv>/). `timing`: batch, repeats, warmup, threads and
    recon_images for the FT/ST and reconstruction columns. `reporter_for(conv)` gives the trainer's
    progress reporter; `notify` gets one-line notes (skips, resumes, data). `threads`: CPU threads of
    every training run (None: each run's default, `threads.resolve_threads`).
    """

    if steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}")
    convs = parse_conv_list(convs)
    seed_list = None if seeds is None else parse_seeds(seeds)
    timing = {"batch": 100, "repeats": 3, "warmup": 1, "threads": 2, "recon_images": 256, **(timing or {})}
    out, overrides = Path(out_dir), {**(overrides or {}), "train.steps": steps}
    if seed_list is not None and "train.seed" in overrides:
        raise ConfigError("give the seeds once: --seeds or --set train.seed, not both")
    if device != "auto":
        overrides["train.device"] = device
    # Every (conv, seed) config is built first, so bad input fails before any training.
    plan = []
    for conv in convs:
        for seed in seed_list or [None]:
            extra = {"model.conv": conv} if seed is None else {"model.conv": conv, "train.seed": seed}
            run_dir = out / conv if seed is None else out / conv / f"seed-{seed}"
            plan.append((conv, run_dir, load_preset(preset, {**overrides, **extra})))
    seed_list = seed_list or [plan[0][2].train.seed]
    say = notify or (lambda _text: None)
    runs = []
    for i, (conv, run_dir, cfg) in enumerate(plan, start=1):
        name = conv if len(seed_list) == 1 and run_dir.name == conv else f"{conv} seed {cfg.train.seed}"
        _check_same_run(run_dir, cfg)
        row = _finished_row(run_dir, steps)
        if row is not None:
            say(f"[{i}/{len(plan)}] {name}: finished before ({steps} steps), skipped")
        else:
            resume = "auto" if RunDir(run_dir).last.is_file() else None
            # A directory without last.pt holds nothing resumable (stopped before its first checkpoint): start over.
            force = resume is None and run_dir.is_dir() and any(run_dir.iterdir())
            say(f"[{i}/{len(plan)}] {name}: {'resuming' if resume else 'training'} in {run_dir}")
            reporter = reporter_for(conv) if reporter_for else None
            train(
                cfg,
                run_dir,
                resume=resume,
                force=force,
                overrides=_flat(cfg) if resume else None,
                reporter=reporter,
                threads=threads,
            )
            row = {**variant_row(conv, run_dir, device, timing["recon_images"], notify), "seed": cfg.train.seed}
            _write_json(run_dir / ROW_FILE, row)
        runs.append(row)
        _write_tables(out, preset, steps, seed_list, runs)
    timed = _timing(out, preset, overrides, convs, device, timing, say)
    runs = [{**row, **timed[row["conv"]]} for row in runs]
    return _write_tables(out, preset, steps, seed_list, runs)


def _timing(out: Path, preset: str, overrides: dict, convs: list, device: str, timing: dict, say) -> dict:
    """{conv: FT/ST columns}: every variant's architecture timed in one `ft_st_rows` run, interleaved, so
    the ratios share the machine's load; kept in OUT/timing.json and reused while convs and settings match."""

    path = out / "timing.json"
    settings = {"convs": convs, **{k: timing[k] for k in ("batch", "repeats", "warmup", "threads")}}
    try:
        saved = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        saved = None
    if isinstance(saved, dict) and saved.get("settings") == settings:
        return saved["by_conv"]
    say(f"timing FT and ST of {', '.join(convs)} at batch {timing['batch']}")
    rows = ft_st_rows(
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


def aggregate_seeds(runs: list[dict]) -> list[dict]:
    """One row per conv, in first-seen order, from its per-seed rows.

    One seed: that run's row, ± the standard error over test images. Several: bits/dim is the mean
    over seeds ± the standard error of that mean (sample std over seeds / √n); speed is the median,
    the reconstruction error the largest, and `exact` holds only if every seed's round trip is exact.
    """
    by_conv: dict[str, list[dict]] = {}
    for row in runs:
        by_conv.setdefault(row["conv"], []).append(row)
    rows = []
    for group in by_conv.values():
        bpds = [r["bpd"] for r in group]
        row = {**group[0], "seeds": [r.get("seed") for r in group], "bpd_seeds": bpds}
        row.pop("seed", None)
        row.pop("run_dir", None)
        if len(group) == 1:
            row.update(bpd_stderr_over="test images", run_dir=group[0].get("run_dir"))
        else:
            speeds = [r["train_images_per_s"] for r in group if r.get("train_images_per_s") is not None]
            row.update(
                bpd=statistics.fmean(bpds),
                bpd_stderr=statistics.stdev(bpds) / len(bpds) ** 0.5,
                bpd_stderr_over="seeds",
                train_images_per_s=statistics.median(speeds) if speeds else None,
                max_recon_err=max(r["max_recon_err"] for r in group),
                max_pixel_err_levels=max(r["max_pixel_err_levels"] for r in group),
                exact=all(r["exact"] for r in group),
                run_dirs=[r.get("run_dir") for r in group],
            )
        rows.append(row)
    return rows


def _paired(finc: dict, best: dict, runs: list[dict]) -> Optional[dict]:
    """FInC minus the best baseline, seed by seed (same data order and noise): mean ± stderr over seeds."""
    bpd = {(r["conv"], r.get("seed")): r["bpd"] for r in runs}
    diffs = [bpd[("finc", s)] - bpd[(best["conv"], s)] for s in finc["seeds"] if (best["conv"], s) in bpd]
    if len(diffs) < 2:
        return None
    return {"mean": statistics.fmean(diffs), "stderr": statistics.stdev(diffs) / len(diffs) ** 0.5, "n": len(diffs)}


def _summary(out: Path, preset: str, steps: int, seeds: list[int], runs: list[dict]) -> dict:
    """The per-conv rows plus the check of the paper's claim: FInC's test bits/dim at most the best
    of Emerging and CInC plus that best's standard error (over seeds when there are several)."""
    rows = aggregate_seeds(runs)
    by_conv = {r["conv"]: r for r in rows}
    baselines = [by_conv[c] for c in ("emerging", "cinc") if c in by_conv]
    best = min(baselines, key=lambda r: r["bpd"], default=None)
    within, paired = None, None
    if best is not None and "finc" in by_conv:
        finc = by_conv["finc"]
        within = finc["bpd"] <= best["bpd"] + best["bpd_stderr"]
        paired = _paired(finc, best, runs)
    return {
        "preset": preset,
        "steps": steps,
        "seed": seeds[0],
        "seeds": seeds,
        "out_dir": str(out),
        "rows": rows,
        "runs": runs,
        "best_baseline": best["conv"] if best else None,
        "finc_within_stderr": within,
        "finc_minus_best": paired,
    }


def compare_markdown(result: dict) -> str:
    """The comparison as a Markdown table, with how it was run and the one-stderr check."""

    seeds = result.get("seeds") or [result["seed"]]
    columns = [c for c in COMPARE_COLUMNS if len(seeds) > 1 or c[1] != "bpd_seeds"]
    table = markdown_table(columns, result["rows"])
    batch = result["rows"][0].get("timing_batch", "-") if result["rows"] else "-"
    if len(seeds) > 1:
        how = (
            f"seeds {', '.join(map(str, seeds))} (each the same data order for every variant). Test bits/dim of "
            f"best.pt: mean over the {len(seeds)} seeds ± the standard error over seeds"
        )
    else:
        how = f"seed {seeds[0]} (same data order). Test bits/dim of best.pt ± standard error over test images"
    note = (
        f"\nPreset {result['preset']}, {result['steps']} training steps per variant, {how}; FT and ST in seconds "
        f"for {batch} images; max recon err: largest of the round trip's error (intensity levels) and each "
        "convolution's own inverse error."
    )
    if result["finc_within_stderr"] is not None:
        verdict = "yes" if result["finc_within_stderr"] else "no"
        best = result["best_baseline"]
        note += f" FInC within one standard error of the best of Emerging and CInC ({best}), or better: {verdict}."
    paired = result.get("finc_minus_best")
    if paired:
        note += (
            f" FInC minus {result['best_baseline']}, seed by seed: {paired['mean']:+.4f} ± {paired['stderr']:.4f} "
            f"bits/dim over {paired['n']} seeds."
        )
    return table + "\n" + note + "\n"


def _write_json(path: Path, data: dict) -> None:

    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _write_tables(out: Path, preset: str, steps: int, seeds: list[int], runs: list[dict]) -> dict:

    result = _summary(out, preset, steps, seeds, runs)
    _write_json(out / "compare.json", result)
    atomic_write_text(out / "compare.md", compare_markdown(result))
    return result
