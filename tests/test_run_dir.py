"""One writer per run directory, checkpoint retention, the low-space warning and the resume rules."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny import TINY_ARGS as TINY_FLAGS
from tiny import TINY_OVERRIDES
from typer.testing import CliRunner

import finc_cli.train.saving as saving
from finc_cli.checkpoint import read_checkpoint
from finc_cli.cli.main import app
from finc_cli.config import load_preset
from finc_cli.files.locking import exclusive_lock, lock_holder
from finc_cli.train import Reporter, train
from finc_cli.train.run_dir import RunDir

TINY = {**TINY_OVERRIDES, "train.eval_every": 1000, "train.log_every": 1}


def _cfg(**train):
    return load_preset("digits", {**TINY, **{f"train.{k}": v for k, v in train.items()}})


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _steps(run: Path) -> list[int]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in lines if "loss_bpd" in r and "event" not in r]


class _Log(Reporter):
    def __init__(self):
        self.lines: list[str] = []

    def log(self, text: str) -> None:
        self.lines.append(text)


def _start_training(run: Path, steps: int) -> subprocess.Popen:
    """`finc train --resume RUN` in a new process; returns once it holds the run's lock."""
    cmd = [sys.executable, "-m", "finc_cli", "train", "--resume", str(run), "--steps", str(steps), *TINY_FLAGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while (lock_holder(run / ".lock") or {}).get("pid") != proc.pid:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    return proc


@pytest.mark.slow
def test_a_second_writer_fails_at_once_and_the_log_has_no_duplicate_steps(tmp_path):
    run = tmp_path / "run"
    train(_cfg(steps=2, checkpoint_every=1), run)
    first = _start_training(run, steps=100_000)
    try:
        second = _invoke("train", "--resume", run, "--steps", 100_000, *TINY_FLAGS)
        assert second.exit_code == 2
        line = second.output.strip()
        assert len(line.splitlines()) == 1 and f"PID {first.pid}" in line and "in use" in line
        deadline = time.monotonic() + 60
        while max(_steps(run)) <= 2:  # the first one goes on training meanwhile
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.1)
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    assert first.returncode == 143, err
    steps = _steps(run)
    assert len(steps) == len(set(steps)) and steps == sorted(steps) and steps[-1] > 2
    assert read_checkpoint(run / "last.pt")["train_state"]["step"] == steps[-1]


@pytest.mark.slow
def test_the_lock_dies_with_its_holder(tmp_path):
    run = tmp_path / "run"
    train(_cfg(steps=2, checkpoint_every=1), run)
    holder = _start_training(run, steps=100_000)
    holder.kill()  # kill -9: no cleanup runs
    holder.wait()
    with exclusive_lock(run / ".lock", "the run"):  # free at once
        pass
    assert _invoke("train", "--resume", run, "--steps", 4, *TINY_FLAGS).exit_code == 0


def test_a_lock_file_left_by_a_dead_process_does_not_block(tmp_path):
    """After a reboot the file remains, naming a process that is gone: it holds nothing."""
    run = tmp_path / "run"
    train(_cfg(steps=2), run)
    (run / ".lock").write_text(json.dumps({"pid": 999_999, "host": "before-reboot", "started": "yesterday"}))
    result = _invoke("train", "--resume", run, "--steps", 3, *TINY_FLAGS)
    assert result.exit_code == 0, result.output


def test_retention_keeps_exactly_the_last_n_periodic_checkpoints(tmp_path):
    run = tmp_path / "run"
    train(_cfg(steps=10, checkpoint_every=2, keep_checkpoints=2), run)
    kept = sorted(p.name for p in run.glob("step-*.pt"))
    assert kept == ["step-0000008.pt", "step-0000010.pt"]
    assert read_checkpoint(run / "step-0000008.pt")["train_state"]["step"] == 8
    assert os.path.samefile(run / "step-0000010.pt", run / "last.pt")  # a hard link, no second copy
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["files"] for e in events if e.get("event") == "pruned"] == [
        ["step-0000002.pt"],
        ["step-0000004.pt"],
        ["step-0000006.pt"],
    ]


def test_pruning_never_deletes_the_only_good_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    finite = {"ok": True}
    monkeypatch.setattr(saving, "params_finite", lambda model: finite["ok"])
    reporter = _Log()

    class _Poison(Reporter):
        def advance(self, step, metrics):
            finite["ok"] = step < 4  # from step 4 on, every save is refused as non-finite

        def log(self, text):
            reporter.log(text)

    train(_cfg(steps=8, checkpoint_every=2, keep_checkpoints=1), run, reporter=_Poison())
    assert sorted(p.name for p in run.glob("step-*.pt")) == ["step-0000002.pt"]
    assert read_checkpoint(run / "step-0000002.pt")["train_state"]["step"] == 2
    assert any("not written" in line for line in reporter.lines)


def test_resume_from_an_older_checkpoint(tmp_path):
    run = tmp_path / "run"
    train(_cfg(steps=8, checkpoint_every=2, keep_checkpoints=4), run)
    result = _invoke("train", "--resume", run, "--from", "step-0000004.pt", "--steps", 8, "--json", *TINY_FLAGS)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["resumed_from"].endswith("step-0000004.pt") and summary["steps_this_run"] == 4
    assert _steps(run) == list(range(1, 9))  # steps 5..8 were redone, not logged twice
    missing = _invoke("train", "--resume", run, "--from", "step-0000003.pt", *TINY_FLAGS)
    assert missing.exit_code == 2 and "step-0000003.pt does not exist" in missing.output
    alone = _invoke("train", "--from", "step-0000004.pt", "--out", tmp_path / "other", *TINY_FLAGS)
    assert alone.exit_code == 2 and "--from" in alone.output and "--resume" in alone.output


def test_an_architecture_change_on_resume_is_refused_before_anything_is_loaded(tmp_path):
    run = tmp_path / "run"
    train(_cfg(steps=2), run)
    before = {name: (run / name).read_bytes() for name in ("last.pt", "metrics.jsonl", "config.yaml")}
    result = _invoke("train", "--resume", run, "--set", "model.hidden=32", "--quiet")
    assert result.exit_code == 2
    assert (
        result.output.strip().splitlines() == [result.output.strip()]
        and "model.hidden cannot change on resume (8 in the run, 32 given)" in result.output
    )
    assert {name: (run / name).read_bytes() for name in before} == before
    seed = _invoke("train", "--resume", run, "--seed", 7, "--quiet")
    assert seed.exit_code == 2 and "train.seed cannot change on resume" in seed.output


def test_allowed_changes_on_resume_are_recorded(tmp_path):
    run = tmp_path / "run"
    train(_cfg(steps=2), run)
    result = _invoke("train", "--resume", run, "--steps", 3, "--lr", 5e-4, "--quiet")
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    changes = {e["key"]: (e["from"], e["to"]) for e in events if e.get("event") == "config_changed"}
    assert changes == {"train.steps": (2, 3), "train.lr": (_cfg().train.lr, 0.0005)}


def test_low_space_warns_early_naming_the_folder_and_the_figures(tmp_path, monkeypatch):
    run, log = tmp_path / "run", _Log()
    monkeypatch.setattr(saving, "free_bytes", lambda folder: 1_000)
    train(_cfg(steps=4, checkpoint_every=2), run, reporter=log)
    warnings = [line for line in log.lines if "GiB free" in line]
    assert len(warnings) == 1 and str(run) in warnings[0] and "may not fit" in warnings[0]  # once, not every save
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (low,) = [e for e in events if e.get("event") == "low_space"]
    assert low["free_bytes"] == 1_000 and low["checkpoint_bytes"] > 1_000
    assert read_checkpoint(run / "last.pt")["train_state"]["step"] == 4  # a warning, not a stop


def test_plenty_of_space_stays_quiet(tmp_path, monkeypatch):
    run, log = tmp_path / "run", _Log()
    monkeypatch.setattr(saving, "free_bytes", lambda folder: 10**15)
    train(_cfg(steps=2, checkpoint_every=1), run, reporter=log)
    assert not [line for line in log.lines if "GiB free" in line]


def test_readers_are_not_blocked_by_a_writer(tmp_path):
    run = tmp_path / "run"
    train(_cfg(steps=2), run)
    with exclusive_lock(run / ".lock", "the run"):  # as a training process holds it
        assert _invoke("bpd", run / "best.pt", "--split", "val", "--json").exit_code == 0
        assert _invoke("sample", run / "last.pt", "-n", 2, "--out", tmp_path / "s.png").exit_code == 0
        assert _invoke("invert", run / "last.pt", "--limit", 4, "--json").exit_code == 0


def test_a_fresh_run_drops_the_old_runs_report_and_tensorboard_events(tmp_path):
    out = tmp_path / "run"
    (out / "tensorboard").mkdir(parents=True)
    (out / "tensorboard" / "events.out.tfevents.1").write_bytes(b"old")
    (out / "report.png").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    RunDir(out).clean(fresh=False)  # a resumed run keeps them
    assert (out / "report.png").exists() and (out / "tensorboard" / "events.out.tfevents.1").exists()
    RunDir(out).clean(fresh=True)
    assert not (out / "report.png").exists() and not (out / "tensorboard").exists()
    assert (out / "notes.txt").read_text() == "mine"  # files finc did not write stay


def test_every_file_a_run_writes_is_named_by_run_dir(tmp_path):
    """RunDir owns the run directory's names: a run with every writer on leaves nothing it does not name."""
    run = RunDir(tmp_path / "run")
    train(_cfg(steps=4, checkpoint_every=2, keep_checkpoints=1, sample_every=2), run.path)
    names = {RunDir.CONFIG, RunDir.METRICS, RunDir.LAST, RunDir.BEST, RunDir.SAMPLES, RunDir.LOCK}
    assert {p.name for p in run.path.iterdir()} == names | {run.step_checkpoint(4).name}
    assert run.step_checkpoints() == [run.step_checkpoint(4)]
    assert run.latest_sample_grid() == run.sample_grid(4) and run.sample_grid(4).is_file()
    assert [r["step"] for r in run.read_metrics() if "loss_bpd" in r and "event" not in r] == [1, 2, 3, 4]


def test_the_metrics_log_is_strict_json_and_cut_back_on_resume(tmp_path):
    run = RunDir(tmp_path)
    for step, loss in ((1, 2.5), (2, float("nan")), (3, 2.25)):
        run.append_metrics({"step": step, "loss_bpd": loss, "nested": {"grad_norm": float("inf")}})
    with open(run.metrics, "a") as fh:
        fh.write('{"step": 4, "loss_b')  # a line cut short by a crash
    lines = run.metrics.read_text().splitlines()
    assert json.loads(lines[1]) == {"step": 2, "loss_bpd": None, "nested": {"grad_norm": None}}
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 3]
    run.truncate_metrics(2)
    assert [json.loads(line)["step"] for line in run.metrics.read_text().splitlines()] == [1, 2]


def test_the_trainer_declares_every_attribute_in_init():
    """Every `self.x = ...` of Trainer happens in __init__ too, so no attribute is read before it exists."""
    import ast
    import inspect

    from finc_cli.train.loop import Trainer

    def assigned(fn: ast.FunctionDef) -> set[str]:
        targets = [
            t
            for node in ast.walk(fn)
            if isinstance(node, (ast.Assign, ast.AnnAssign))
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        ]
        flat = [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
        return {e.attr for e in flat if isinstance(e, ast.Attribute) and getattr(e.value, "id", None) == "self"}

    cls = ast.parse(inspect.getsource(Trainer)).body[0]
    methods = {f.name: f for f in cls.body if isinstance(f, ast.FunctionDef)}
    later = set().union(*(assigned(f) for name, f in methods.items() if name != "__init__"))
    assert later and later <= assigned(methods["__init__"]), later - assigned(methods["__init__"])
    assert "getattr(self" not in inspect.getsource(Trainer)
