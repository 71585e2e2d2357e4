"""`finc report`: the run picture's panels and size, its JSON summary, runs in progress, and bad run directories."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_run import invoke, ok
from PIL import Image
from tiny import TINY_ARGS as TINY

from finc_cli.checkpoint import read_checkpoint
from finc_cli.commands.report import PANELS, report, summarize
from finc_cli.train.run_dir import read_metrics

EVERY = ["--set", "train.log_every=1", "--set", "train.eval_every=2", "--set", "train.sample_every=2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    ok(invoke("train", "--preset", "digits", "--out", out, "--steps", 4, "--seed", 3, *TINY, *EVERY))
    return out


def synthetic_run(folder: Path) -> Path:
    """A run of two sessions (resumed at step 20) with known numbers, and a last line cut mid-write."""
    records = [
        {"step": 10, "loss_bpd": 3.0, "lr": 1e-3, "grad_norm": 2.0, "it_s": 4.0, "elapsed_s": 5.0, "data_s": 0.1,
         "compute_s": 0.3},
        {"step": 20, "loss_bpd": 2.5, "lr": 1e-3, "grad_norm": 1.5, "it_s": 6.0, "elapsed_s": 8.0, "data_s": 0.1,
         "compute_s": 0.1},
        {"step": 20, "val_bpd": 2.6, "val_bpd_stderr": 0.01, "recon_max_err": 1e-6},
        {"step": 20, "event": "config_changed", "key": "train.batch_size", "from": 10, "to": 20},
        {"step": 30, "loss_bpd": 2.2, "lr": 5e-4, "grad_norm": 1.0, "it_s": 2.0, "elapsed_s": 3.0, "data_s": 0.0,
         "compute_s": 0.5},
        {"step": 30, "val_bpd": 2.4, "val_bpd_stderr": 0.01, "recon_max_err": 2e-3, "health_warning": True},
        {"step": 40, "loss_bpd": 2.1, "lr": 2e-4, "grad_norm": 0.9, "it_s": 3.0, "elapsed_s": 6.5, "data_s": 0.0,
         "compute_s": 0.5},
        {"step": 40, "val_bpd": 2.45, "val_bpd_stderr": 0.01, "val_bpd_ema": 2.45, "val_bpd_raw": 2.5,
         "val_weights": "ema", "recon_max_err": 5e-6, "rebuild_max_err": 3e-7},
    ]  # fmt: skip
    folder.mkdir()
    text = "".join(json.dumps(r) + "\n" for r in records) + '{"step": 50, "loss_bpd": 2.0, "lr'
    (folder / "metrics.jsonl").write_text(text)
    config = {"name": "tiny", "data": {"name": "digits"}, "train": {"batch_size": 20, "steps": 100,
                                                                    "health_threshold": 1e-3}}  # fmt: skip
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "samples").mkdir()
    for step, value in ((20, 0), (40, 200)):  # the later grid is the one shown
        Image.fromarray(np.full((24, 36), value, np.uint8)).save(folder / "samples" / f"step_{step:07d}.png")
    return folder


def test_summary_of_a_resumed_run_with_a_cut_last_line(tmp_path):
    folder = synthetic_run(tmp_path / "run")
    records = read_metrics(folder / "metrics.jsonl")
    assert len(records) == 8, "the cut last line is skipped, every whole one kept"
    s = summarize(records, yaml.safe_load((folder / "config.yaml").read_text()))
    assert (s["best_val_bpd"], s["best_val_step"], s["last_step"]) == (2.4, 30, 40)
    assert s["last_val_bpd"] == 2.45 and s["last_train_bpd"] == 2.1
    assert (s["last_val_bpd_raw"], s["last_val_weights"]) == (2.5, "ema")
    # images/s: it/s × the batch size then in force (10 before the change at step 20, 20 after): 40, 60, 40, 60
    assert s["images_per_s"] == pytest.approx(50.0)
    assert s["wall_s"] == pytest.approx(8.0 + 6.5), "elapsed_s restarts at a resume: the sessions add up"
    assert s["data_wait_share"] == pytest.approx(0.125)  # median of 0.25, 0.5, 0, 0
    assert (s["recon_max_err"], s["recon_worst_err"], s["health_warnings"]) == (5e-6, 2e-3, 1)
    assert s["rebuild_max_err"] == 3e-7  # train.memory invert's rebuilt inputs, latest


def test_report_png_has_the_panels_and_size(tmp_path):
    folder = synthetic_run(tmp_path / "run")
    result = report(folder)
    out = folder / "report.png"
    assert result["out"] == str(out)
    assert result["panels"] == list(PANELS)
    with Image.open(out) as img:
        assert img.format == "PNG"
        assert img.size == (result["width"], result["height"]) == (1200, 700)
        pixels = np.asarray(img.convert("L"))
    assert pixels.std() > 10, "the picture is not blank"
    assert result["sample_grid"] == str(folder / "samples" / "step_0000040.png")
    assert out.stat().st_size < 200_000
    assert not list(folder.glob(".*.tmp")), "a temporary file was left behind"


def test_the_bpd_panel_draws_the_raw_weights_validation_line(tmp_path):
    olive = np.array([188, 189, 34])  # matplotlib's tab:olive, the colour of that line alone

    def olive_pixels(folder: Path) -> int:
        report(folder)
        with Image.open(folder / "report.png") as img:
            rgb = np.asarray(img.convert("RGB")).astype(int)
        return int((np.abs(rgb - olive).max(axis=-1) < 12).sum())

    with_raw = synthetic_run(tmp_path / "with")
    without = synthetic_run(tmp_path / "without")
    lines = (without / "metrics.jsonl").read_text().splitlines(keepends=True)
    kept = [json.dumps({k: v for k, v in json.loads(x).items() if k != "val_bpd_raw"}) + "\n" for x in lines[:-1]]
    (without / "metrics.jsonl").write_text("".join(kept))
    assert olive_pixels(with_raw) > 20 and olive_pixels(without) == 0


@pytest.mark.slow
def test_report_json_matches_a_real_training_run(run, tmp_path):
    out = tmp_path / "pic.png"
    result = json.loads(ok(invoke("report", run, "--out", out, "--json")).stdout)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_bpd" in r]
    best = min(evals, key=lambda r: r["val_bpd"])
    assert [r["step"] for r in evals] == [2, 4]
    assert result["best_val_bpd"] == best["val_bpd"] and result["best_val_step"] == best["step"]
    assert result["last_step"] == 4 and result["target_steps"] == 4
    train = [r for r in records if "loss_bpd" in r]
    assert result["wall_s"] == pytest.approx(train[-1]["elapsed_s"])
    assert result["images_per_s"] == pytest.approx(16 * float(np.median([r["it_s"] for r in train])))
    assert result["recon_max_err"] == evals[-1]["recon_max_err"] and result["health_warnings"] == 0
    assert result["sample_grid"].endswith("step_0000004.png")
    assert out.is_file() and result["panels"] == list(PANELS)
    assert not (run / "report.png").exists(), "--out was honoured"


def test_report_of_a_run_in_progress(tmp_path):
    """A metrics.jsonl with a half-written last line, no config or sample grid yet, still gives a picture."""
    live = tmp_path / "live"
    live.mkdir()
    lines = (synthetic_run(tmp_path / "run") / "metrics.jsonl").read_text().splitlines()[:2]
    (live / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 30, "loss_bpd": 2.9, "grad_n')
    result = json.loads(ok(invoke("report", live, "--json")).stdout)
    assert result["last_step"] == 20 and result["best_val_bpd"] is None
    assert result["images_per_s"] is None, "no config.yaml: no batch size to turn steps/s into images/s"
    assert result["sample_grid"] is None and result["name"] is None
    assert (live / "report.png").is_file()
    table = ok(invoke("report", live)).stdout
    assert "wrote" in table and "report.png" in table


@pytest.mark.parametrize("make", ["missing", "empty", "file"])
def test_not_a_run_directory_is_one_line_and_exit_2(tmp_path, make):
    target = tmp_path / "nope"
    if make == "empty":
        target.mkdir()
    elif make == "file":
        target.write_text("x")
    result = invoke("report", target)
    assert result.exit_code == 2
    assert "error:" in result.output and len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    if make == "empty":
        assert not any(target.iterdir()), "nothing written"


def test_empty_metrics_gives_empty_summary(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    result = report(tmp_path, out=tmp_path / "r.png")
    assert result["last_step"] == 0 and result["best_val_bpd"] is None and result["images_per_s"] is None
    assert result["wall_s"] == 0.0 and not math.isnan(result["wall_s"])
    assert (tmp_path / "r.png").is_file()


@pytest.mark.slow  # three training processes
def test_wall_time_keeps_counting_across_resumes(tmp_path):
    out = tmp_path / "run"
    for steps in (3, 6, 9):  # a run resumed twice: three processes
        resume = ["--resume", out] if steps > 3 else []
        ok(invoke("train", "--preset", "digits", "--out", out, "--steps", steps, *resume, *TINY, *EVERY))
    train = [r for r in read_metrics(out / "metrics.jsonl") if "loss_bpd" in r]
    assert [r["step"] for r in train] == list(range(1, 10))
    walls, elapsed = [r["wall_s"] for r in train], [r["elapsed_s"] for r in train]
    assert all(b > a for a, b in zip(walls, walls[1:])), f"wall_s went back: {walls}"
    offsets = [w - e for w, e in zip(walls, elapsed)]  # the earlier sessions' wall time: fixed within a session
    assert offsets[:3] == pytest.approx([0.0] * 3), "the first session's wall time is its elapsed time"
    assert offsets[3:6] == pytest.approx([offsets[3]] * 3) and offsets[3] >= walls[2], "elapsed_s restarts, wall_s not"
    assert offsets[6:] == pytest.approx([offsets[6]] * 3) and offsets[6] >= walls[5]
    saved = read_checkpoint(out / "last.pt")["train_state"]["wall_s"]
    assert saved >= walls[-1]  # stored for the next resume
    result = json.loads(ok(invoke("report", out, "--json", "--out", tmp_path / "r.png")).stdout)
    assert result["wall_s"] == pytest.approx(walls[-1])


def test_wall_time_of_a_run_logged_before_wall_s_then_resumed():
    records = [
        {"step": 1, "loss_bpd": 3.0, "elapsed_s": 5.0},
        {"step": 2, "loss_bpd": 2.9, "elapsed_s": 9.0},  # an older finc: elapsed_s only
        {"step": 3, "loss_bpd": 2.8, "elapsed_s": 2.0, "wall_s": 2.0},  # resumed by this one, from 0
        {"step": 4, "loss_bpd": 2.7, "elapsed_s": 4.0, "wall_s": 4.0},
    ]
    assert summarize(records)["wall_s"] == pytest.approx(9.0 + 4.0)
    assert summarize(records[:2])["wall_s"] == pytest.approx(9.0)
