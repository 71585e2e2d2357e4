"""`finc benchmark memory`: the budget fit, the option errors, and invert's memory flat in depth on a real step."""

from __future__ import annotations

import json

import pytest
from cli_run import invoke, ok

from finc_cli.bench.memory import _budget_batch, measure_step, memory_rows, parse_modes


def test_budget_batch_is_the_largest_batch_under_the_fitted_line():
    # peak = 20 + 40·batch through both points; state 50: 50 + 20 + 40·23 = 990 ≤ 1000 < 1030.
    assert _budget_batch([(2, 100.0), (4, 180.0)], state_mb=50.0, budget_mb=1000.0) == 23
    assert _budget_batch([(2, 100.0), (4, 180.0)], state_mb=990.0, budget_mb=1000.0) is None  # not even batch 1
    assert _budget_batch([(4, 100.0), (8, 100.0)], state_mb=0.0, budget_mb=1000.0) is None  # flat: no line to follow


def test_modes_are_checked():
    assert parse_modes("invert, store") == ["invert", "store"]
    with pytest.raises(ValueError, match="unknown memory mode 'recompute'"):
        parse_modes("store,recompute")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--memory", "store,recompute"], "unknown memory mode 'recompute'"),
        (["--steps-per-level", "8,x"], "--steps-per-level '8,x' must be integers"),
        (["--steps-per-level", "0"], "must be integers >= 1"),
        (["--preset", "nope"], "nope"),
    ],
)
def test_bad_options_are_one_line_exit_2(args, message):
    result = invoke("benchmark", "memory", "--preset", "digits", *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_one_step_measures_state_and_a_positive_peak():
    got = measure_step("digits", {"model.steps": 1, "model.hidden": 8}, 4, "invert")
    assert got["state_mb"] > 10 and got["peak_mb"] >= 0 and got["step_s"] > 0


WIDE = {"model.hidden": 256, "model.dequantization": "uniform"}  # activations, not libraries, dominate the peak


@pytest.mark.slow
def test_invert_memory_stays_flat_in_depth_and_the_budget_batch_is_confirmed():
    rows = memory_rows("digits", 128, ["store", "invert"], [2, 8], budget_gb=None, rounds=1, overrides=WIDE, threads=1)
    by = {(r["steps_per_level"], r["memory"]): r for r in rows}
    assert by[(8, "store")]["growth"] > 2.0  # store keeps every step: ~4× the steps, several times the memory
    assert by[(8, "invert")]["growth"] < 1.5
    assert by[(8, "invert")]["mem_vs_store"] < 0.6  # at K=8; the K=32 presets reach far lower (BENCHMARKS.md)
    assert by[(8, "invert")]["time_vs_store"] > 0 and by[(8, "store")]["time_vs_store"] == 1.0


@pytest.mark.slow
def test_cli_json_rows_with_a_budget(tmp_path):
    budget = 1.2  # GB: the state (~0.7 GB of libraries and weights) plus room for a few hundred digits images
    result = ok(
        invoke(
            "benchmark",
            "memory",
            "--preset",
            "digits",
            "--batch-size",
            32,
            "--memory",
            "invert",
            "--budget-gb",
            budget,
            "--max-batch",
            256,
            "--rounds",
            1,
            "--set",
            "model.hidden=64",
            "--json",
            "--threads",
            1,
            "--csv",
            tmp_path / "rows.csv",
        )
    )
    (row,) = json.loads(result.output)["rows"]
    assert row["memory"] == "invert" and row["budget_fit"] >= 1
    assert row["budget_peak_gb"] <= budget
    assert (tmp_path / "rows.csv").read_text().startswith("preset,")


def test_rounds_0_is_memory_only_and_a_flat_fit_says_to_measure_larger(monkeypatch):
    import finc_cli.bench.memory as bm

    peaks = {8: 100.0, 4: 100.0}  # the same peak at both batches: no line to extrapolate
    monkeypatch.setattr(
        bm,
        "_measure",
        lambda preset, over, batch, mode, device, threads: {
            "state_mb": 50.0,
            "peak_mb": peaks[batch],
            "grad_mb": 1.0,
            "act_mb": peaks[batch] - 1.0,
            "step_s": 1.0,
        },
    )
    (row,) = bm.memory_rows("digits", 8, ["invert"], [1], budget_gb=1.0, rounds=0)
    assert "step_s" not in row and "time_vs_store" not in row
    assert "peak did not grow from batch 4 to 8" in row["note"] and "budget_batch" not in row


def test_a_measuring_process_killed_for_memory_is_one_line_exit_1(monkeypatch):
    import subprocess

    import finc_cli.bench.memory as bm

    killed = subprocess.CompletedProcess(args=[], returncode=-9, stdout="", stderr="")
    monkeypatch.setattr(bm.subprocess, "run", lambda *a, **k: killed)
    result = invoke("benchmark", "memory", "--preset", "digits", "--batch-size", 4, "--memory", "invert")
    assert result.exit_code == 1 and "Traceback" not in result.output and "internal error" not in result.output
    assert "batch 4 (invert) was killed by SIGKILL, most likely out of memory" in result.output
    assert "--batch-size" in result.output


def test_a_confirming_step_that_runs_out_of_memory_steps_the_batch_down(monkeypatch):
    import finc_cli.bench.memory as bm
    from finc_cli.errors import OutOfMemory

    tried = []

    def measure(preset, over, batch, mode, device, threads):
        tried.append(batch)
        if batch > 30:  # this machine holds less than the budget claims
            raise OutOfMemory("killed")
        return {"state_mb": 50.0, "peak_mb": 10.0 * batch, "grad_mb": 1.0, "act_mb": 10.0 * batch - 1, "step_s": 1.0}

    monkeypatch.setattr(bm, "_measure", measure)
    (row,) = bm.memory_rows("digits", 8, ["invert"], [1], budget_gb=0.5, rounds=0)
    assert row["budget_fit"] == 46 and tried[2:] == [46, 34, 25]  # (512 - 50) // 10, then ×¾ per kill
    assert row["budget_batch"] == "25" and row["note"] == "fit 46; 2 larger tries ran out of this machine's memory"
