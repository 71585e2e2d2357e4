"""Threads and parallel runs: `finc train` processes launched side by side, steps/s per run and combined."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

from finc_cli.errors import InputError
from finc_cli.runtime.threads import THREADS_ENV, cpu_count
from finc_cli.text import comma_list
from finc_cli.train.run_dir import RunDir

__all__ = ["DEFAULT", "parse_counts", "thread_rows"]

DEFAULT = "default"  # no --threads: finc's own choice (FINC_THREADS and OMP_NUM_THREADS removed)


def parse_counts(text: str, name: str, allow_default: bool = False) -> list:
    """'1,2' -> [1, 2]; with allow_default, 'default' stays as is."""
    out: list = []
    for item in comma_list(text):
        if allow_default and item == DEFAULT:
            out.append(DEFAULT)
        elif item.isdigit() and int(item) > 0:
            out.append(int(item))
        else:
            extra = " or 'default'" if allow_default else ""
            raise InputError(f"{name} {text!r}: give positive integers{extra}, comma-separated")
    if not out:
        raise InputError(f"{name} {text!r} names nothing")
    return out


def _command(preset: str, out: Path, steps: int, threads, sets: Sequence[str]) -> list[str]:
    every = {f"train.{k}={steps}" for k in ("eval_every", "sample_every", "checkpoint_every")}
    args = [sys.executable, "-m", "finc_cli", "train", "--preset", preset, "--out", str(out), "--force", "--json"]
    args += ["-q", "--set", f"train.steps={steps}", "--set", f"train.log_every={max(1, steps // 10)}"]
    for text in [*sorted(every), *sets]:
        args += ["--set", text]
    return args + ([] if threads == DEFAULT else ["--threads", str(threads)])


def _steps_per_s(run: RunDir) -> float:
    """Median steps/s over the logged intervals, the first (warm-up) left out."""
    rates = [r["it_s"] for r in run.read_metrics() if "it_s" in r and "event" not in r]
    return statistics.median(rates[1:] or rates)


def _launch(preset: str, root: Path, jobs: int, threads, steps: int, sets: Sequence[str]) -> list[dict]:
    """`jobs` training processes at once; each one's steps/s and the thread count it chose."""
    env = {k: v for k, v in os.environ.items() if k not in (THREADS_ENV, "OMP_NUM_THREADS")}
    outs = [root / f"jobs{jobs}-threads{threads}-{i}" for i in range(jobs)]
    procs = [
        subprocess.Popen(_command(preset, out, steps, threads, sets), env=env, stdout=subprocess.PIPE, text=True)
        for out in outs
    ]
    results = []
    for proc, out in zip(procs, outs):
        stdout, _ = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"finc train in {out} failed with exit code {proc.returncode}")
        summary = json.loads(stdout.strip().splitlines()[-1])
        results.append({"steps_per_s": _steps_per_s(RunDir(out)), "threads": summary["threads"]})
    return results


def thread_rows(
    preset: str = "digits",
    steps: int = 200,
    jobs_list: Sequence[int] = (1, 2),
    threads_list: Sequence = (1, 2, DEFAULT),
    sets: Sequence[str] = (),
    repeats: int = 1,
    root: Optional[Path] = None,
    progress: Optional[Callable] = None,
) -> list[dict]:
    """One row per (runs at once, threads each): median steps/s of each run over `repeats` rounds.

    Every round runs the whole grid once, so each row meets the same mix of load. `combined` is the
    runs' steps/s summed; `vs_all_cores` divides it by one run alone on all cores (before finc chose
    threads, every run used all cores). Keys: jobs, threads (asked: a count or 'default'),
    threads_used, steps_per_s (each run), steps_per_s_each (their mean), combined, vs_all_cores,
    load_avg (the 1-minute load average after the round), steps, preset.
    """
    grid = [(j, t) for j in jobs_list for t in threads_list]
    advance = progress(repeats * len(grid)) if progress else None
    measured: dict = {cell: [] for cell in grid}
    loads = []
    with tempfile.TemporaryDirectory(prefix="finc-threads-", dir=root) as tmp:
        for _ in range(repeats):
            for jobs, threads in grid:
                measured[(jobs, threads)].append(_launch(preset, Path(tmp), jobs, threads, steps, sets))
                if advance:
                    advance(1)
            loads.append(os.getloadavg()[0])
    rows = [_row(jobs, threads, measured[(jobs, threads)], steps, preset) for jobs, threads in grid]
    reference = _reference(preset, steps, sets, rows, root)
    for row in rows:
        row["vs_all_cores"] = row["combined"] / reference
        row["load_avg"] = max(loads)
    return rows


def _row(jobs: int, threads, rounds: list[list[dict]], steps: int, preset: str) -> dict:
    each = [statistics.median(r[i]["steps_per_s"] for r in rounds) for i in range(jobs)]
    return {
        "preset": preset,
        "steps": steps,
        "jobs": jobs,
        "threads": threads,
        "threads_used": rounds[0][0]["threads"],
        "steps_per_s": each,
        "steps_per_s_each": statistics.fmean(each),
        "combined": sum(each),
    }


def _reference(preset: str, steps: int, sets: Sequence[str], rows: list[dict], root: Optional[Path]) -> float:
    """Combined steps/s of one run on all cores: its row when measured, else one more run now."""
    cores = cpu_count()
    for row in rows:
        if row["jobs"] == 1 and row["threads_used"] == cores and row["threads"] != DEFAULT:
            return row["combined"]
    with tempfile.TemporaryDirectory(prefix="finc-threads-", dir=root) as tmp:
        return _launch(preset, Path(tmp), 1, cores, steps, sets)[0]["steps_per_s"]
