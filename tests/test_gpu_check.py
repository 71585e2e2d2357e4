"""`make gpu-check` rehearsed on the CPU: every section on tiny shapes, the emulated CuPy for the kernels.

The first lent GPU must not be spent on defects a CPU can find: a section that cannot run, a
training step timed without autograd, results written only at the end, a deadline never checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from emu.emulator import Emulator, compiler
from emu.fake_cupy import FakeCupy

from finc_cli.bench import gpu_check as gc
from finc_cli.bench.timing import time_interleaved
from finc_cli.errors import InverseBackendError
from finc_cli.flows import finc_conv
from finc_cli.inverse import cupy_backend as cb
from finc_cli.runtime.device import resolve_device
from finc_cli.runtime.precision import exact_float32_convs

REPO = Path(__file__).resolve().parents[1]


def test_time_interleaved_runs_without_autograd_unless_asked():
    w = torch.ones(3, requires_grad=True)

    def step():
        (w * 2).sum().backward()

    with pytest.raises(RuntimeError, match="does not require grad"):
        time_interleaved({"step": step}, repeats=1, warmup=0)
    times = time_interleaved({"step": step}, repeats=2, warmup=1, grad=True)
    assert len(times["step"]) == 2
    assert torch.equal(w.grad, torch.full((3,), 6.0))  # three calls, each adding 2


def test_exact_float32_convs_turns_tf32_off_and_restores_it(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    seen = []
    real = finc_conv.F.conv2d

    def conv2d(*args, **kw):
        seen.append(torch.backends.cudnn.allow_tf32)
        return real(*args, **kw)

    monkeypatch.setattr(finc_conv.F, "conv2d", conv2d)
    layer = finc_conv.FInCConv2d(8)
    layer(torch.randn(2, 8, 5, 5))
    assert seen == [False] * 4  # every group's convolution in exact float32
    assert torch.backends.cudnn.allow_tf32 is True  # the caller's setting is back
    with pytest.raises(ValueError), exact_float32_convs():
        raise ValueError
    assert torch.backends.cudnn.allow_tf32 is True


def test_resolve_device_leaves_tf32_alone_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert resolve_device("cpu") == torch.device("cpu")
    assert torch.backends.cudnn.allow_tf32 is True


def test_make_gpu_check_keeps_pythonpath_and_writes_under_out(tmp_path):
    show = tmp_path / "show.py"
    show.write_text("import json, os, sys\nprint(json.dumps([os.environ['PYTHONPATH'], sys.argv[1:]]))\n")
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHONPATH="/device/site")
    proc = subprocess.run(
        ["make", "-s", "gpu-check", f"PY={sys.executable} {show}"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    pythonpath, argv = json.loads(proc.stdout.strip().splitlines()[-1])
    assert pythonpath == ".:/device/site"
    assert argv == ["-m", "finc_cli.bench.gpu_check", "--out", f"{tmp_path / 'out'}/gpu_check.json"]


def test_pytest_section_is_killed_at_its_timeout():
    lines = []
    result = gc.run_gpu_tests(paths=("tests/test_gpu_inverse.py",), timeout_s=0.3, echo=lines.append)
    assert result["timed_out"] and result["returncode"] != 0
    assert result["tail"].endswith("pytest timed out after 0.3 s")
    assert result["seconds"] < 30


@pytest.fixture
def emulated_cupy(tmp_path_factory, monkeypatch) -> FakeCupy:
    """cupy_backend with the CuPy stand-in of tests/emu, on CPU tensors (its CUDA checks bypassed)."""
    fake = FakeCupy(Emulator(tmp_path_factory.mktemp("cuda_emulation")))
    monkeypatch.setattr(cb, "_require", lambda y: fake)
    monkeypatch.setattr(cb, "_import_cupy", lambda: fake)
    monkeypatch.setattr(cb, "_device_index", lambda device: 0)
    monkeypatch.setattr(cb, "unavailable_reason", lambda device=None: None)
    for name in ("_kernels", "_shared_optin", "_optin_set"):
        monkeypatch.setattr(cb, name, {})
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: SimpleNamespace(cuda_stream=0))
    return fake


def test_rows_past_their_deadline_are_skipped(emulated_cupy):
    units = gc.unit_rows(device="cpu", deadline=0.0)
    assert len(units) == len(gc.LEVEL_SHAPES) * len(gc.BATCHES)
    assert {row["note"] for row in units} == {"skipped: time budget"}
    train = gc.train_step_rows(device="cpu", deadline=0.0)
    assert [row["note"] for row in train] == ["skipped: time budget"] * 4
    assert gc.preset_rows(device="cpu", deadline=0.0)[0]["note"] == "skipped: time budget"
    assert gc.memory_rows("digits", 2, device="cpu", deadline=0.0)[0]["note"] == "skipped: time budget"
    assert gc.torchrun_row(device="cpu", deadline=0.0)[0]["note"] == "skipped: time budget"
    assert not emulated_cupy.launches


def test_units_section_says_why_cupy_cannot_run():
    with pytest.raises(InverseBackendError, match="CuPy cannot use cpu: cpu is not a CUDA device"):
        gc.unit_rows(device="cpu")


@pytest.mark.slow  # compiles one emulated kernel instance, runs pytest in a subprocess (about 30 s)
@pytest.mark.skipif(compiler() is None, reason="g++ is not on PATH (the CUDA emulation compiles with it)")
def test_dry_run_of_every_section(emulated_cupy, monkeypatch, tmp_path, capsys):
    snapshots = []
    real_write = gc.atomic_write_text

    def write(path, text):
        real_write(path, text)
        snapshots.append(json.loads(Path(path).read_text()))

    def broken(**kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(gc, "atomic_write_text", write)
    monkeypatch.setattr(gc, "preset_rows", broken)
    out = tmp_path / "gpu_check.json"
    rc = gc.main(["--device", "cpu", "--dry-run", "--out", str(out)])
    printed = capsys.readouterr()

    # The JSON is rewritten after every section, each time with that section in it.
    assert len(snapshots) == len(gc.SECTIONS)
    for n, snapshot in enumerate(snapshots):
        done = [s for s in gc.SECTIONS if s in snapshot or s in snapshot["failures"]]
        assert done == list(gc.SECTIONS[: n + 1])
    result = json.loads(out.read_text())
    assert result == snapshots[-1]

    # The section that raised is recorded, the ones after it still ran, and the exit code says so.
    assert rc == 1
    assert list(result["failures"]) == ["models"]
    assert result["failures"]["models"]["error"] == "RuntimeError: boom"
    assert "failed: models: RuntimeError: boom" in printed.err

    assert result["tests"]["returncode"] == 0 and not result["tests"]["timed_out"]
    assert "test_gpu_inverse.py" in printed.out  # pytest's lines streamed, not captured
    (unit,) = result["units"]
    assert unit["ok"] and unit["path"] == "tile" and unit["max_err_cupy_vs_wavefront"] < 1e-5
    assert all(unit[f"{name}_ms"] > 0 for name in ("forward", "cupy_kernel", "paper", "wavefront"))
    assert emulated_cupy.launches, "the unit's kernels ran in the emulator"
    assert [r["model"] for r in result["convs"]] == ["finc", "emerging", "cinc", "glow"]
    assert all(r["st_ms"] > 0 for r in result["convs"])
    assert [(r["precision"], r.get("note")) for r in result["train"]] == [("32", None), ("bf16", None)]
    assert all(isinstance(r["step_ms"], float) and r["step_ms"] > 0 for r in result["train"])
    (launched,) = result["torchrun"]  # `finc train` under torchrun, gloo on the CPU
    assert launched["returncode"] == 0 and launched["world_size"] == 1 and launched["steps"] == 2, launched
    memory = {(r["steps_per_level"], r["memory"]): r for r in result["memory"]}
    assert sorted(memory) == [(1, m) for m in sorted(("store", "checkpoint", "invert"))]
    assert all(r["peak_mb"] >= 0 and r["state_mb"] > 0 for r in memory.values())
    assert memory[(1, "store")]["time_vs_store"] == 1.0 and memory[(1, "invert")]["time_vs_store"] > 0

    # Each table is printed as its section ends, in order.
    titles = [gc.TABLES[name][0] for name in ("units", "convs", "train", "torchrun", "memory")]
    assert all(t in printed.out for t in titles)
    assert sorted(titles, key=printed.out.index) == titles
