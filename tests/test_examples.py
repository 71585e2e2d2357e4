"""The scripts in examples/: the sweep runs, collects and skips; the SLURM script parses and uses real options."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_run import invoke, ok
from tiny import TINY_OVERRIDES, as_sets

ROOT = Path(__file__).resolve().parent.parent
SWEEP, SBATCH = ROOT / "examples" / "sweep.sh", ROOT / "examples" / "slurm.sbatch"
FINC = Path(sys.executable).parent / "finc"
TINY = [*as_sets(TINY_OVERRIDES), "--steps", "3"]


def _finc_train_options(script: str) -> list[str]:
    """The --options of the `finc_cli train` command in the script (backslash-continued lines joined)."""
    command = re.search(r"-m finc_cli train(.*?)(?:&|\n)", script.replace("\\\n", " "), re.S)
    assert command, "no `-m finc_cli train` command"
    return re.findall(r"(--[a-z][a-z-]*)", command.group(1))


@pytest.mark.parametrize("script", [SWEEP, SBATCH], ids=lambda p: p.name)
def test_script_parses(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_slurm_script_uses_only_options_finc_train_has():
    text = SBATCH.read_text()
    used = _finc_train_options(text)
    assert {"--resume", "--out", "--preset"} <= set(used)
    help_text = ok(invoke("train", "--help")).stdout
    assert not [o for o in used if o not in help_text], "the script passes an option finc train does not take"
    assert "#SBATCH --signal=B:USR1@" in text and "scontrol requeue" in text and "--requeue" in text
    assert re.search(r"--rdzv_endpoint=\"?\$head_node", text)  # the first node of the allocation


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("xargs") is None, reason="needs xargs")
def test_sweep_runs_a_grid_collects_bpd_and_skips_finished_points_on_rerun(tmp_path):
    out = tmp_path / "sweep"
    env = {**os.environ, "FINC": str(FINC), "OUT": str(out), "JOBS": "2", "GRID": "train.lr=1e-3 train.lr=2e-3"}
    first = subprocess.run(["bash", str(SWEEP), *TINY], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["point"] for r in lines) == ["train.lr=1e-3", "train.lr=2e-3"]
    for record in lines:
        assert 0 < record["bpd"]["bpd"] < 10
        run = Path(record["out"])
        threads = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"threads"' in x]
        assert threads[0]["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)  # cores ÷ jobs
        assert threads[0]["threads_source"] == "flag"
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/last.pt")}
    assert len(stamps) == 2

    second = subprocess.run(["bash", str(SWEEP), *TINY], env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert second.stderr.count("skip ") == 2 and "train " not in second.stderr  # trained nothing
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/last.pt")} == stamps
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
