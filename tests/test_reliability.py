"""Reliability: nothing lost, no crash, no code run from files.

Covers items 1-5 end to end: bad checkpoints through the CLI, interruption (SIGINT / SIGTERM /
kill -9) and bit-exact resume, the non-finite guard and rollback, bad input (exit 2, one line,
nothing written), ENOSPC (exit 1, previous file intact), and numerical-health flags.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_run import invoke, ok
from PIL import Image
from tiny import TINY_ARGS as TINY
from tiny import TINY_OVERRIDES

import finc_cli.train as train_mod
from finc_cli.checkpoint import read_checkpoint, save_checkpoint
from finc_cli.config import load_preset
from finc_cli.model import FlowModel
from finc_cli.train.step import lr_factor


def one_line_error(result, code: int = 2, *words: str) -> str:
    """The contract for every user-facing failure: exit code, one line on stderr, no traceback."""
    assert result.exit_code == code, f"exit {result.exit_code} != {code}\n{result.output}\n{result.exception!r}"
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()  # `finc train` may print progress events before it
    errors = [i for i, text in enumerate(lines) if text.startswith("error:")]
    assert errors == [len(lines) - 1], f"not one error line, last: {result.stderr!r}"
    line = lines[-1]
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    return line


def tmp_files(folder: Path) -> list[Path]:
    return list(folder.rglob(".*.tmp"))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rel") / "run"
    ok(invoke("train", "--out", out, "--steps", 2, *TINY))
    return out


@pytest.fixture(scope="module")
def ckpt(trained_run) -> Path:
    return trained_run / "last.pt"


# ---------------------------------------------------------------------------------------------
# 1. checkpoints: truncated, corrupted, foreign, mismatched, malicious


class RunsCode:
    """Unpickling this calls os.system: what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_checkpoints(ckpt: Path, folder: Path) -> dict[str, Path]:
    good = ckpt.read_bytes()
    files = {
        "truncated": good[: len(good) // 2],
        "corrupted": good[:1500] + bytes(b ^ 0xFF for b in good[1500:3000]) + good[3000:],
        "text": b"this is not a checkpoint\n",
        "empty": b"",
    }
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.pt"
        paths[name].write_bytes(data)
    paths["foreign"] = folder / "foreign.pt"
    torch.save({"a": 1}, paths["foreign"])
    data = read_checkpoint(ckpt)
    data["config"]["model"]["hidden"] = 16  # the weights are width 8
    paths["mismatch"] = folder / "mismatch.pt"
    save_checkpoint(
        paths["mismatch"], {k: v for k, v in data.items() if k not in ("format", "format_version", "finc_version")}
    )
    return paths


@pytest.mark.parametrize("kind", ["truncated", "corrupted", "text", "empty", "foreign", "mismatch"])
def test_bad_checkpoint_is_one_line_and_overwrites_nothing(ckpt, tmp_path, kind):
    bad = _bad_checkpoints(ckpt, tmp_path)[kind]
    existing = tmp_path / "existing.png"
    existing.write_bytes(b"previous content")
    line = one_line_error(invoke("sample", bad, "--out", existing), 2, bad.name)
    assert existing.read_bytes() == b"previous content"
    if kind == "mismatch":
        assert "do not match" in line and "wrong shape" in line
    one_line_error(invoke("evaluate", bad, "--json"), 2, bad.name)
    one_line_error(invoke("invert", bad, "--json"), 2, bad.name)


def test_resume_from_a_bad_checkpoint_writes_nothing(ckpt, tmp_path):
    bad = _bad_checkpoints(ckpt, tmp_path)["truncated"]
    out = tmp_path / "new_run"
    one_line_error(invoke("train", "--out", out, "--resume", bad, *TINY), 2, "truncated")
    assert not out.exists()


def _zip_with_malicious_pickle(ckpt: Path, dest: Path, marker: Path) -> None:
    """A real checkpoint whose data.pkl is replaced by a pickle that runs a shell command."""
    import pickle
    import zipfile

    with zipfile.ZipFile(ckpt) as src, zipfile.ZipFile(dest, "w") as out:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("data.pkl"):
                data = pickle.dumps({"format": "finc-checkpoint", "model": RunsCode(marker)}, protocol=2)
            out.writestr(item, data)


@pytest.mark.parametrize("how", ["torch.save", "zip data.pkl"])
def test_malicious_checkpoint_does_not_run_code(ckpt, tmp_path, how):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    if how == "torch.save":
        torch.save({"format": "finc-checkpoint", "config": {}, "model": RunsCode(marker)}, evil)
    else:
        _zip_with_malicious_pickle(ckpt, evil, marker)
    for args in (["sample", evil, "--out", tmp_path / "s.png"], ["train", "--out", tmp_path / "r", "--resume", evil]):
        line = one_line_error(invoke(*args), 2, "safe load refuses", "nothing run")
        assert "system" in line
    assert not marker.exists(), "unpickling ran code"
    assert not (tmp_path / "s.png").exists() and not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------
# 2. interruption


def _cli(out: Path, *extra: str) -> list[str]:
    every = ["--set", "train.log_every=1", "--set", "train.eval_every=100000", "--set", "train.sample_every=100000"]
    return [sys.executable, "-m", "finc_cli", "train", "--out", str(out), *TINY, *every, *extra]


def _start(cmd: list[str], out: Path, after_lines: int) -> subprocess.Popen:
    """Start `finc train` and return once metrics.jsonl has more than `after_lines` step records (event lines,
    such as the thread count logged before the loop starts, do not count)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    metrics = out / "metrics.jsonl"
    while time.monotonic() < deadline:
        if metrics.is_file() and len([r for r in metrics.read_text().splitlines() if '"event"' not in r]) > after_lines:
            return proc
        if proc.poll() is not None:
            pytest.fail(f"training exited early ({proc.returncode}): {proc.stderr.read()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("training did not log a step within 120 s")


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_writes_a_resumable_checkpoint_and_exits_cleanly(tmp_path, sig, code):
    out = tmp_path / "run"
    proc = _start(_cli(out, "--steps", "100000", "--set", "train.checkpoint_every=100000"), out, 0)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert f"interrupted by {sig.name}" in stderr and "--resume" in stderr and "Traceback" not in stderr
    step = read_checkpoint(out / "last.pt")["train_state"]["step"]
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert step >= 1 and max(logged) == step  # saved at the step it stopped, not an older one
    ok(invoke("train", "--out", out, "--resume", "auto", "--steps", step + 1, "--quiet"))
    assert read_checkpoint(out / "last.pt")["train_state"]["step"] == step + 1


@pytest.mark.slow
def test_kill_9_at_random_moments_leaves_last_pt_loadable(tmp_path):
    rng = random.Random(9)
    out = tmp_path / "run"
    cmd = _cli(out, "--steps", "100000", "--set", "train.checkpoint_every=1", "--resume", "auto")
    lines = 0
    for _ in range(2):
        proc = _start(cmd, out, lines)
        time.sleep(rng.uniform(0.0, 0.5))  # mid-step, mid-log or mid-checkpoint
        proc.kill()
        proc.communicate(timeout=60)
        step = read_checkpoint(out / "last.pt")["train_state"]["step"]  # old or new, never half-written
        lines = len([r for r in (out / "metrics.jsonl").read_text().splitlines() if '"event"' not in r])
    ok(invoke("train", "--out", out, "--resume", "auto", "--steps", step + 2, "--quiet"))
    assert not tmp_files(out), "stale temporary files survived the resume"
    steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss_bpd" in r]
    assert steps == list(range(1, step + 3))  # nothing lost, nothing logged twice


class _StopAt(train_mod.Reporter):
    """Sends this process a signal after a given step: an interruption at a known moment."""

    def __init__(self, step: int):
        self.step = step

    def advance(self, step: int, metrics: dict) -> None:
        if step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def _bitexact_cfg():
    every = {"train.log_every": 1, "train.eval_every": 2, "train.sample_every": 2, "train.checkpoint_every": 4}
    return load_preset("digits", {**TINY_OVERRIDES, "train.steps": 6, "train.device": "cpu", **every})


def _comparable(records: list[dict]) -> list[dict]:
    """The records without timings and without the thread count each session logs as it starts."""
    timings = ("it_s", "elapsed_s", "wall_s", "data_s", "compute_s")
    return [{k: v for k, v in r.items() if k not in timings} for r in records if r.get("event") != "threads"]


def test_resume_after_interruption_is_bit_exact_on_cpu(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    train_mod.train(_bitexact_cfg(), whole)
    with pytest.raises(train_mod.TrainingInterrupted) as info:
        train_mod.train(_bitexact_cfg(), split, reporter=_StopAt(3))
    assert info.value.step == 3 and read_checkpoint(split / "last.pt")["train_state"]["step"] == 3
    torch.manual_seed(12345)  # whatever the global RNG holds between the runs must not matter
    train_mod.train(_bitexact_cfg(), split, resume="auto")
    a, b = read_checkpoint(whole / "last.pt"), read_checkpoint(split / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), key
    assert {**a["train_state"], "wall_s": None} == {**b["train_state"], "wall_s": None}  # all but the timing
    whole_log = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    split_log = [json.loads(line) for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert len(_comparable(whole_log)) == 6 + 3 and _comparable(split_log) == _comparable(
        whole_log
    )  # same losses, lr; no duplicates
    assert [r["step"] for r in split_log if r.get("event") == "threads"] == [0, 3]  # one per session


# ---------------------------------------------------------------------------------------------
# 3. the non-finite guard


class _Inject:
    """Replace FlowModel.forward in train mode: call k is optimizer step k (accumulate=1); poison chosen steps."""

    def __init__(self, monkeypatch, out: Path, action, watch=()):
        self.calls, self.out, self.action = 0, out, action
        self.snapshot: dict = {}
        self.ckpt_at: dict = {}
        original = FlowModel.forward
        inject = self

        def forward(net, x, noise=None, generator=None):
            if not net.training:  # validation, not an optimizer step
                return original(net, x, noise, generator)
            inject.calls += 1
            inject.snapshot[inject.calls] = {k: t.clone() for k, t in net.state_dict().items()}
            if inject.calls in watch:
                inject.ckpt_at[inject.calls] = read_checkpoint(out / "last.pt")
            return action(inject.calls, net, original(net, x, noise, generator))

        monkeypatch.setattr(FlowModel, "forward", forward)


class _InfGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


class _Log(train_mod.Reporter):
    def __init__(self):
        self.lines: list[str] = []

    def log(self, text: str) -> None:
        self.lines.append(text)


def _guard_cfg(steps: int, **train):
    overrides = {
        **TINY_OVERRIDES,
        "train.steps": steps,
        "train.log_every": 1,
        "train.eval_every": 1000,
        "train.max_bad_steps": 2,
    }
    return load_preset("digits", {**overrides, **{f"train.{k}": v for k, v in train.items()}})


def _events(out: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r.get("event") == kind]


@pytest.mark.parametrize("memory", ["store", "invert"])  # invert rebuilds activations by the inverse in backward
def test_nan_loss_is_skipped_logged_and_rolled_back(tmp_path, monkeypatch, memory):
    out = tmp_path / "run"
    inject = _Inject(monkeypatch, out, lambda k, net, lp: lp * float("nan") if k in (6, 7) else lp, watch=(7,))
    log = _Log()
    summary = train_mod.train(_guard_cfg(8, checkpoint_every=4, memory=memory), out, reporter=log)
    bad = _events(out, "nonfinite")
    assert [(e["step"], e["loss_bpd"]) for e in bad] == [(6, None), (7, None)]  # recorded, not replaced
    assert all("non-finite loss (nan)" in e["reason"] for e in bad)
    (rollback,) = _events(out, "rollback")
    assert (rollback["step"], rollback["to_step"], rollback["lr_scale"]) == (7, 4, 0.5)
    assert summary["rollbacks"] == 1
    good_at_4 = inject.ckpt_at[7]["model"]  # last.pt when the rollback happened
    assert good_at_4 and inject.ckpt_at[7]["train_state"]["step"] == 4
    for key, value in good_at_4.items():  # step 8 starts from the step-4 weights, not step 5's
        assert torch.equal(inject.snapshot[8][key], value), key
    assert not torch.equal(
        inject.snapshot[6]["levels.0.steps.0.coupling.net.0.weight"],
        good_at_4["levels.0.steps.0.coupling.net.0.weight"],
    )
    assert any(line.startswith("step 6: non-finite loss") for line in log.lines)
    assert any("rolled back" in line and "step 4" in line for line in log.lines)
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "lr" in r}
    cfg = _guard_cfg(8, memory=memory)
    assert lrs[8] == pytest.approx(cfg.train.lr * lr_factor(7, cfg) * 0.5)  # halved after the rollback
    # the EMA count: 5 applied updates, back to step 4's count at the rollback, then step 8's update
    assert read_checkpoint(out / "last.pt")["ema"]["updates"] == 5


def test_infinite_gradient_with_finite_loss_is_skipped(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _Inject(monkeypatch, out, lambda k, net, lp: _InfGrad.apply(lp) if k == 2 else lp)
    train_mod.train(_guard_cfg(3), out, reporter=_Log())
    (bad,) = _events(out, "nonfinite")
    assert bad["step"] == 2 and "non-finite gradient" in bad["reason"] and bad["loss_bpd"] is not None
    assert not _events(out, "rollback")  # one bad step < max_bad_steps
    assert read_checkpoint(out / "last.pt")["ema"]["updates"] == 2  # the skipped step left the average alone


def test_nan_parameters_never_reach_a_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"

    def poison(k, net, lp):
        if k == 5:  # a blown-up update: step 5 itself looks fine, its result is NaN weights
            with torch.no_grad():
                next(net.parameters()).fill_(float("nan"))
        return lp

    _Inject(monkeypatch, out, poison)
    train_mod.train(_guard_cfg(8, checkpoint_every=1), out, reporter=_Log())
    skipped = _events(out, "checkpoint_skipped")
    assert [e["step"] for e in skipped] == [5, 6]  # last.pt stays the step-4 weights
    assert [e["step"] for e in _events(out, "nonfinite")] == [6, 7]
    (rollback,) = _events(out, "rollback")
    assert (rollback["step"], rollback["to_step"]) == (7, 4)
    final = read_checkpoint(out / "last.pt")
    assert final["train_state"]["step"] == 8
    assert all(torch.isfinite(t).all() for t in final["model"].values() if t.is_floating_point())


def test_training_that_keeps_diverging_stops_with_exit_1(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _Inject(monkeypatch, out, lambda k, net, lp: lp * float("nan") if k > 1 else lp)
    args = ["train", "--out", out, "--steps", 40, "--set", "train.max_bad_steps=1", *TINY]
    result = invoke(*args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1].startswith("error: training diverged")  # after the event lines
    data = read_checkpoint(out / "last.pt")  # still the last good weights (the step-0 checkpoint)
    assert data["train_state"]["step"] == 0
    assert len(_events(out, "rollback")) == 10


# ---------------------------------------------------------------------------------------------
# 4. bad input: exit 2, one line, nothing written


@pytest.mark.parametrize(
    "args,words",
    [
        (["--preset", "nope"], ["unknown preset 'nope'", "digits"]),
        (["--set", "train.lr=abc"], ["train.lr", "must be a number"]),
        (["--set", "model.nope=1"], ["unknown config key 'model.nope'"]),
        (["--set", "model.levels=0"], ["model.levels must be >= 1"]),
        (["--set", "train.lr"], ["section.key=value"]),
        (["--preset", "cifar10", "--data-dir", "/nonexistent"], ["cifar10 not found", "/nonexistent"]),
    ],
)
def test_bad_training_input(tmp_path, args, words):
    out = tmp_path / "run"
    one_line_error(invoke("train", "--out", out, *args), 2, *words)
    assert not out.exists()


def test_malformed_yaml_preset(tmp_path):
    preset = tmp_path / "bad.yaml"
    preset.write_text("model:\n  levels: [2\n  steps: 4\n")
    one_line_error(invoke("train", "--preset", preset, "--out", tmp_path / "run"), 2, "not valid YAML", "line")
    assert not (tmp_path / "run").exists()


def test_malformed_dataset(tmp_path):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(b"not a pickle")
    args = ["train", "--preset", "cifar10", "--data-dir", tmp_path / "data", "--out", tmp_path / "run"]
    one_line_error(invoke(*args), 2, "data_batch_1")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "size,mode,words",
    [((10, 10), "L", ["10×10", "8×8"]), ((8, 8), "RGB", ["RGB", "expects L"]), (None, None, ["not a readable image"])],
)
def test_invert_rejects_wrong_images(ckpt, tmp_path, size, mode, words):
    image = tmp_path / "in.png"
    if size is None:
        image.write_text("not an image")
    else:
        Image.new(mode, size).save(image)
    one_line_error(invoke("invert", ckpt, image, "--save-latents", tmp_path / "z.pt"), 2, str(image), *words)
    assert not (tmp_path / "z.pt").exists()


@pytest.mark.parametrize(
    "args,words",
    [
        (["-n", "0"], ["-n must be at least 1"]),
        (["-n", "-3"], ["-n must be at least 1"]),
        (["--temperature", "0,"], ["--temperature must be"]),  # 0 itself is allowed: every latent at its mean
        (["--temperature", "-0.5"], ["--temperature must be"]),
        (["--temperature", "nan"], ["--temperature must be"]),
    ],
)
def test_bad_sample_arguments(ckpt, tmp_path, args, words):
    out = tmp_path / "s.png"
    one_line_error(invoke("sample", ckpt, "--out", out, *args), 2, *words)
    assert not out.exists()


@pytest.mark.parametrize("command", ["sample", "invert-latents", "invert-out", "train"])
def test_output_in_a_missing_directory(ckpt, tmp_path, command):
    target = tmp_path / "missing" / "x.png"
    args = {
        "sample": ["sample", ckpt, "--out", target],
        "invert-latents": ["invert", ckpt, "--save-latents", target],
        "invert-out": ["invert", ckpt, "--out", target],
        "train": ["train", "--out", tmp_path / "file.txt" / "run", "--steps", 1, *TINY],
    }[command]
    (tmp_path / "file.txt").write_text("a file, not a directory")
    one_line_error(invoke(*args), 2)
    assert not (tmp_path / "missing").exists()


def test_output_in_an_unwritable_directory(ckpt, tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == folder else real_access(p, mode, **kw))
    one_line_error(invoke("sample", ckpt, "--out", folder / "x.png"), 2, "not writable")
    one_line_error(invoke("train", "--out", folder, "--steps", 1, *TINY), 2, "not writable")
    assert not list(folder.iterdir())


# ---------------------------------------------------------------------------------------------
# 4. the disk filling up: exit 1, one line, previous file intact, no temporary file


def _enospc_after_partial_write(target_arg: int = 1):
    def write_then_fail(*args, **kwargs):
        dest = args[target_arg]
        if hasattr(dest, "write"):
            dest.write(b"\x89PNG partial")
        else:
            Path(dest).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    return write_then_fail


def test_enospc_writing_a_sample_grid(ckpt, tmp_path, monkeypatch):
    out = tmp_path / "grid.png"
    out.write_bytes(b"previous grid")
    monkeypatch.setattr(Image.Image, "save", _enospc_after_partial_write(1))
    one_line_error(invoke("sample", ckpt, "-n", 4, "--out", out), 1, "No space left on device", str(out))
    assert out.read_bytes() == b"previous grid" and not tmp_files(tmp_path)


def test_enospc_writing_individual_samples_removes_them(ckpt, tmp_path, monkeypatch):
    from finc_cli.files import images  # `finc sample` calls its writers through this module

    real, calls = images.save_png, []

    def fail_third(chw, path, scale=1):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(chw, path, scale)

    monkeypatch.setattr(images, "save_png", fail_third)
    one_line_error(invoke("sample", ckpt, "-n", 5, "--individual", "--out", tmp_path / "each"), 1, "No space left")
    assert not (tmp_path / "each").exists()


def test_enospc_writing_a_checkpoint(run, tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = {name: (copy / name).read_bytes() for name in ("last.pt", "best.pt")}
    monkeypatch.setattr(torch, "save", _enospc_after_partial_write(1))
    one_line_error(
        invoke("train", "--out", copy, "--resume", "auto", "--steps", 3, "--quiet"), 1, "No space left", ".pt"
    )
    assert {name: (copy / name).read_bytes() for name in before} == before and not tmp_files(copy)
    assert read_checkpoint(copy / "last.pt")["train_state"]["step"] == 2


def test_enospc_writing_latents(ckpt, tmp_path, monkeypatch):
    z = tmp_path / "z.pt"
    z.write_bytes(b"old latents")
    monkeypatch.setattr(torch, "save", _enospc_after_partial_write(1))
    one_line_error(invoke("invert", ckpt, "--limit", 2, "--save-latents", z), 1, "No space left", "z.pt")
    assert z.read_bytes() == b"old latents" and not tmp_files(tmp_path)


# ---------------------------------------------------------------------------------------------
# 5. numerical health


def test_invert_flags_ill_conditioned_finc_units(ckpt, tmp_path):
    data = read_checkpoint(ckpt)
    for key, value in data["model"].items():
        if key.endswith("finc.weight"):
            value.mul_(150.0)  # large off-diagonal taps: the float32 triangular solve loses accuracy
    scaled = tmp_path / "scaled.pt"
    save_checkpoint(scaled, {k: v for k, v in data.items() if k not in ("format", "format_version", "finc_version")})
    raw = ("--weights", "raw")  # the scaled ones (the preset also keeps EMA weights)
    healthy = json.loads(ok(invoke("invert", ckpt, "--limit", 16, "--threshold", 1e-4, *raw, "--json")).stdout)
    assert healthy["flagged_layers"] == []
    sick = json.loads(ok(invoke("invert", scaled, "--limit", 16, "--threshold", 1e-4, *raw, "--json")).stdout)
    assert sick["flagged_layers"], [row["max_abs_err"] for row in sick["layers"]]
    for row in sick["layers"]:
        assert row["flagged"] == (row["max_abs_err"] > 1e-4)
    text = ok(invoke("invert", scaled, "--limit", 16, "--threshold", 1e-4, *raw))
    assert "FLAG" in text.stdout and "exceed the threshold" in text.stderr


def test_training_warns_when_the_probe_reconstruction_degrades(tmp_path):
    out = tmp_path / "run"
    result = ok(invoke("train", "--out", out, "--steps", 1, "--set", "train.health_threshold=1.0e-12", *TINY))
    assert "warning: FInC reconstruction error" in result.stderr  # printed even with --quiet
    (val,) = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "val_bpd" in r]
    assert val["recon_max_err"] > 1e-12 and val["health_warning"] is True
