"""`python -m finc_cli.bench.gpu_check`: the GPU tests, then GPU timings of the FInC inverse, models and a train step.

Meant for a lent GPU machine, run from the source tree with its own torch / CuPy / pytest and no
install step (`make gpu-check`). Sections, in order of value: `pytest -m gpu` (output streamed);
one FInC unit's forward and its inverse on every backend at the presets' level shapes; the
cifar10 and imagenet64 models' FT and ST beside a same-depth Glow; the four `model.conv` choices
(the paper's ST comparison); one training step of the celeba64 model in float32 and bf16; 20 digits
steps of `finc train` under torchrun (NCCL, DDP, pinned prefetch); the imagenet64 model's
training memory per `train.memory` mode (K = 8 and 32, a 16 GB budget). Timings use the shared
benchmark timing (CUDA events, warm-up, interleaved repeats, medians), and every fast path is
checked against the wavefront inverse before it is timed.

Each section has its own time budget (BUDGETS_S, checked before every row); one that raises is
recorded and the next still runs; after each, the JSON (default $OUT/gpu_check.json) is rewritten
and the section's Markdown table printed, so a run cut short still returns what it measured. The
exit code is 1 when anything failed. `--device cpu --dry-run` rehearses every section on tiny
shapes (tests/test_gpu_check.py runs it with the emulated CuPy of tests/emu).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

from finc_cli.bench.memory import MEMORY_COLUMNS, memory_rows
from finc_cli.bench.model import ft_st_rows
from finc_cli.bench.tables import markdown_table
from finc_cli.bench.timing import environment, summarize, time_interleaved
from finc_cli.config import load_preset
from finc_cli.errors import InverseBackendError
from finc_cli.files.atomic import atomic_write_text
from finc_cli.flows.finc_conv import FInCConv2d
from finc_cli.inverse import cupy_backend, use_backend
from finc_cli.inverse.cupy_backend import cupy_inverse, cupy_inverse_paper_schedule, plan_launch, shared_memory_limit
from finc_cli.inverse.wavefront import wavefront_inverse
from finc_cli.model import build_model
from finc_cli.runtime.precision import use_exact_float32
from finc_cli.text import first_line

__all__ = [
    "BUDGETS_S",
    "DRY_RUN",
    "PLAN",
    "SECTIONS",
    "conv_rows",
    "failures",
    "gpu_check",
    "main",
    "preset_rows",
    "render",
    "render_section",
    "run_gpu_tests",
    "torchrun_row",
    "train_step_rows",
    "unit_rows",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
# (C, H, W) after each squeeze, 3 levels: 32×32 images (CIFAR-10, ImageNet32), then 64×64 (ImageNet64).
LEVEL_SHAPES = [(12, 16, 16), (24, 8, 8), (48, 4, 4), (12, 32, 32), (24, 16, 16), (48, 8, 8)]
BATCHES = (100, 1)
MODEL_PRESETS = ("cifar10", "imagenet64")
MODEL_BATCHES = (1, 100)
CONV_PRESET, CONV_BATCH, CONVS = "cifar10", 100, ("finc", "emerging", "cinc", "none")  # the paper's ST table
TRAIN_PRESET, TRAIN_BATCHES, TRAIN_PRECISIONS = "celeba64", (32, 64), ("32", "bf16")
SECTIONS = ("tests", "units", "models", "convs", "train", "torchrun", "memory")
# Seconds per section (about 7.5 min in all, inside a 10-minute call); a row that starts past its
# section's budget is skipped, a row already running finishes.
BUDGETS_S = {"tests": 160, "units": 60, "models": 90, "convs": 60, "train": 50, "torchrun": 45, "memory": 45}
PLAN = {  # what each section measures on the GPU
    "tests": {"paths": ("tests",), "timeout_s": BUDGETS_S["tests"]},
    "units": {"shapes": LEVEL_SHAPES, "batches": BATCHES},
    "models": {"presets": MODEL_PRESETS, "batches": MODEL_BATCHES},
    "convs": {"preset": CONV_PRESET, "batch": CONV_BATCH},
    "train": {"preset": TRAIN_PRESET, "batches": TRAIN_BATCHES, "precisions": TRAIN_PRECISIONS},
    "torchrun": {"preset": "digits", "steps": 20, "timeout_s": BUDGETS_S["torchrun"]},
    "memory": {"preset": "imagenet64", "batch": 10, "steps_per_level": (8, 32), "budget_gb": 16.0, "rounds": 3},
}
TINY = {"model.levels": 2, "model.steps": 1, "model.hidden": 8}  # a digits model that builds in milliseconds
DRY_RUN = {  # every section on tiny shapes; the inverse seam and the models on the wavefront inverse
    "tests": {"paths": ("tests/test_gpu_inverse.py",), "timeout_s": 120},
    "units": {"shapes": [(4, 4, 5)], "batches": (2,), "repeats": 1, "seam_backend": "wavefront"},
    "models": {"presets": ("digits",), "batches": (2,), "overrides": TINY, "backends": ("wavefront",), "repeats": 1},
    "convs": {"preset": "digits", "batch": 2, "overrides": TINY, "backends": ("wavefront",), "repeats": 1},
    "train": {"preset": "digits", "batches": (2,), "precisions": TRAIN_PRECISIONS, "overrides": TINY},
    "torchrun": {"preset": "digits", "steps": 2, "sets": TINY, "timeout_s": 90},
    "memory": {"preset": "digits", "batch": 4, "steps_per_level": (1,), "overrides": TINY, "rounds": 1},
}

UNIT_COLUMNS = [
    ("C×H×W", "shape", "s"),
    ("batch", "batch", "d"),
    ("path", "path", "s"),
    ("forward ms", "forward_ms", ".3g"),
    ("cupy ms", "cupy_ms", ".3g"),
    ("cupy kernel ms", "cupy_kernel_ms", ".3g"),
    ("wavefront ms", "wavefront_ms", ".3g"),
    ("paper ms", "paper_ms", ".3g"),
    ("cupy ÷ fwd", "cupy_over_forward", ".2f"),
    ("paper ÷ cupy", "paper_over_cupy", ".1f"),
    ("err vs wavefront", "max_err_cupy_vs_wavefront", ".1e"),
    ("round-trip err", "max_err_reconstruction", ".1e"),
    ("ok", "ok", "s"),
]
MODEL_COLUMNS = [
    ("preset", "preset", "s"),
    ("model", "model", "s"),
    ("inverse", "backend", "s"),
    ("batch", "batch", "d"),
    ("params M", "params_m", ".3g"),
    ("FT ms", "ft_ms", ".3g"),
    ("ST ms", "st_ms", ".3g"),
    ("ST/FT", "st_over_ft", ".2f"),
    ("ST ÷ Glow ST", "st_vs_glow", ".2f"),
    ("unit err", "max_unit_err", ".1e"),
    ("note", "note", "s"),
]
CONV_COLUMNS = [
    ("preset", "preset", "s"),
    ("model", "model", "s"),
    ("inverse", "backend", "s"),
    ("batch", "batch", "d"),
    ("FT ms", "ft_ms", ".3g"),
    ("ST ms", "st_ms", ".3g"),
    ("ST/FT", "st_over_ft", ".2f"),
    ("k×k inverse ms", "conv_inverse_ms", ".3g"),
    ("k×k share of ST", "conv_inverse_share", ".0%"),
    ("ST ÷ FInC ST", "st_vs_finc", ".2f"),
    ("note", "note", "s"),
]
TRAIN_COLUMNS = [
    ("preset", "preset", "s"),
    ("precision", "precision", "s"),
    ("batch", "batch", "d"),
    ("step ms", "step_ms", ".3g"),
    ("images/s", "images_per_s", ".0f"),
    ("peak GiB", "peak_gib", ".2f"),
    ("note", "note", "s"),
]

TORCHRUN_COLUMNS = [
    ("preset", "preset", "s"),
    ("steps", "steps", "d"),
    ("device", "device", "s"),
    ("processes", "world_size", "d"),
    ("exit", "returncode", "d"),
    ("seconds", "seconds", ".1f"),
    ("val bits/dim", "val_bpd", ".4f"),
    ("images/s", "images_per_s", ".0f"),
    ("note", "note", "s"),
]


def _repo_env() -> dict:
    """This environment with the source tree first on PYTHONPATH (kept after it: the device's own entries)."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))


def run_gpu_tests(paths=("tests",), timeout_s: float = 180, echo: Optional[Callable[[str], None]] = None, **_) -> dict:
    """`pytest -m gpu` in a subprocess from the repository root, its output passed line by line to
    `echo` as it comes; killed after `timeout_s`. Its return code, time and last lines."""
    env = _repo_env()
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-v", "-rs", "-p", "no:cacheprovider", *paths]
    start, tail = time.perf_counter(), collections.deque(maxlen=40)
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def pump() -> None:
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            if echo is not None:
                echo(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc, timed_out = proc.wait(timeout=timeout_s), False
    except subprocess.TimeoutExpired:
        proc.kill()
        rc, timed_out = proc.wait(), True
    reader.join(timeout=5)
    if timed_out:
        tail.append(f"pytest timed out after {timeout_s} s")
    lines = [line for line in tail if line.strip()]
    return {
        "returncode": rc,
        "timed_out": timed_out,
        "seconds": round(time.perf_counter() - start, 1),
        "summary": lines[-1] if lines else "",
        "tail": "\n".join(lines),
    }


def _median_ms(times: dict, name: str) -> float:
    return summarize(times[name])["median"]


def _why(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    return f"{type(exc).__name__}: {first_line(exc)[:200]}"


def _late(deadline: Optional[float]) -> bool:
    return deadline is not None and time.perf_counter() > deadline


def _runnable(backends, device: torch.device) -> tuple:
    """The backends to time: "cupy" dropped where CuPy cannot run (its reason is in the result)."""
    kept = tuple(b for b in backends if b != "cupy" or cupy_backend.is_available(device))
    return kept or ("wavefront",)


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def unit_rows(
    shapes=LEVEL_SHAPES,
    batches=BATCHES,
    kernel_size: int = 3,
    device: str = "cuda",
    deadline: Optional[float] = None,
    repeats: int = 30,
    seam_backend: str = "cupy",
) -> list[dict]:
    """Per (C, H, W) and batch: forward and inverse times (ms) of one FInC unit, float32.

    A row that cannot run says why in its note; rows past the deadline are skipped.
    """
    dev = torch.device(device)
    reason = cupy_backend.unavailable_reason(dev)
    if reason is not None:
        raise InverseBackendError(f"CuPy cannot use {dev}: {reason}")
    rows, limit = [], shared_memory_limit(dev)
    for batch in batches:
        for C, H, W in shapes:
            row = {"shape": f"{C}x{H}x{W}", "batch": batch}
            if _late(deadline):
                rows.append({**row, "note": "skipped: time budget"})
                continue
            try:
                row.update(_unit_row(C, H, W, batch, kernel_size, dev, limit, repeats, seam_backend))
            except Exception as exc:  # noqa: BLE001 - e.g. a compile or launch error: reported, the next row runs
                row.update(ok=False, note=f"failed: {_why(exc)}")
            rows.append(row)
    return rows


def _unit_row(C, H, W, batch, kernel_size, device, limit, repeats, seam_backend) -> dict:
    """One unit row: the kernels checked against the wavefront inverse, then timed."""
    torch.manual_seed(0)
    layer = FInCConv2d(C, kernel_size).to(device)
    x = torch.randn(batch, C, H, W, device=device)
    with torch.no_grad():
        y, _ = layer(x)
        weight, linv = layer.inverse_operator()
        wave = wavefront_inverse(y, weight, linv)
        fused = cupy_inverse(y, weight, linv)
        paper = cupy_inverse_paper_schedule(y, weight, linv)
    plan = plan_launch(batch, H, W, kernel_size, C // 4, 4, limit)
    row = {
        "path": plan.path,
        "threads": plan.threads,
        "images_per_block": plan.images_per_block,
        "max_err_cupy_vs_wavefront": (fused - wave).abs().max().item(),
        "max_err_paper_vs_wavefront": (paper - wave).abs().max().item(),
        "max_err_reconstruction": (fused - x).abs().max().item(),
    }
    row.update(_unit_times(layer, x, y, device, repeats, seam_backend))
    row["cupy_over_forward"] = row["cupy_ms"] / row["forward_ms"]
    row["paper_over_cupy"] = row["paper_ms"] / row["cupy_ms"]
    row["ok"] = max(row["max_err_cupy_vs_wavefront"], row["max_err_paper_vs_wavefront"]) < 1e-3
    return row


def _unit_times(layer, x: torch.Tensor, y: torch.Tensor, device, repeats: int, seam_backend: str) -> dict:
    """{name_ms: median}: the unit's forward, its inverse through the seam on each backend, and the raw kernels."""

    def inverse_on(backend):
        with use_backend(backend):
            return layer.inverse(y)

    weight, linv = layer.inverse_operator()
    variants = {
        "forward": lambda: layer(x),
        "cupy": lambda: inverse_on(seam_backend),
        "cupy_kernel": lambda: cupy_inverse(y, weight, linv),
        "wavefront": lambda: inverse_on("wavefront"),
        "paper": lambda: cupy_inverse_paper_schedule(y, weight, linv),
    }
    times = time_interleaved(variants, repeats=repeats, warmup=min(3, repeats), device=device, budget_s=0.5)
    return {f"{name}_ms": _median_ms(times, name) for name in variants}


def preset_rows(
    presets=MODEL_PRESETS,
    batches=MODEL_BATCHES,
    deadline: Optional[float] = None,
    device: str = "cuda",
    overrides: Optional[dict] = None,
    backends=("cupy", "wavefront"),
    repeats: int = 5,
) -> list[dict]:
    """Per preset and batch: FT and ST (cupy and wavefront inverse) of FInC and the same-depth Glow, in ms."""

    rows, dev = [], torch.device(device)
    for preset in presets:
        if _late(deadline):
            rows.append({"preset": preset, "note": "skipped: time budget"})
            continue
        try:
            found = ft_st_rows(
                preset, overrides, batches, _runnable(backends, dev), device, repeats=repeats, warmup=2, threads=0
            )
            err = _unit_error(preset, overrides, dev, _runnable(backends, dev)[0])
        except Exception as exc:  # noqa: BLE001 - reported in the table; the check goes on
            rows.append({"preset": preset, "note": f"failed: {_why(exc)}"})
            continue
        for r in found:
            r.update(ft_ms=1e3 * r["ft_s"], st_ms=1e3 * r["st_s"], max_unit_err=err if r["model"] == "finc" else None)
        rows += found
        _release(dev)
    return rows


def conv_rows(
    preset=CONV_PRESET,
    batch=CONV_BATCH,
    deadline: Optional[float] = None,
    device: str = "cuda",
    overrides: Optional[dict] = None,
    backends=("cupy",),
    repeats: int = 3,
) -> list[dict]:
    """The paper's sampling comparison on this GPU: FT, ST and the k×k inverses' share of ST for every
    `model.conv` (FInC on the cupy backend; Emerging and CInC in their raster schedules), in ms."""

    if _late(deadline):
        return [{"preset": preset, "note": "skipped: time budget"}]
    try:
        backends = _runnable(backends, torch.device(device))
        rows = ft_st_rows(
            preset, overrides, (batch,), backends, device, repeats=repeats, warmup=1, threads=0, convs=CONVS
        )
    except Exception as exc:  # noqa: BLE001 - reported in the table; the check goes on
        return [{"preset": preset, "note": f"failed: {_why(exc)}"}]
    for r in rows:
        r.update(ft_ms=1e3 * r["ft_s"], st_ms=1e3 * r["st_s"], conv_inverse_ms=1e3 * r["conv_inverse_s"])
    _release(torch.device(device))
    return rows


def _unit_error(preset: str, overrides: Optional[dict], device: torch.device, backend: str) -> float:
    """Worst per-unit reconstruction error of the preset's FInC model (random weights) on `backend`."""

    torch.manual_seed(0)
    model = build_model(load_preset(preset, overrides)).to(device)
    x = torch.randint(0, model.bins, (16, *model.image_shape), dtype=torch.uint8, device=device)
    model.initialize(x)
    model.eval()
    with use_backend(backend):
        return max((r["max_abs_err"] for r in model.reconstruction_report(x)), default=0.0)


def train_step_rows(
    preset=TRAIN_PRESET,
    batches=TRAIN_BATCHES,
    precisions=TRAIN_PRECISIONS,
    deadline: Optional[float] = None,
    device: str = "cuda",
    overrides: Optional[dict] = None,
) -> list[dict]:
    """One optimizer step (forward, backward, Adam) of the preset's model on random images.

    Rows: median ms per step, images/s and peak GPU memory, per precision and batch size.
    """

    rows, dev = [], torch.device(device)
    for precision in precisions:
        for batch in batches:
            row = {"preset": preset, "precision": precision, "batch": batch}
            if _late(deadline):
                rows.append({**row, "note": "skipped: time budget"})
                continue
            try:
                torch.manual_seed(0)
                model = build_model(load_preset(preset, overrides)).to(dev)
                model.set_autocast(torch.bfloat16 if precision == "bf16" else None)
                x = torch.randint(0, model.bins, (batch, *model.image_shape), dtype=torch.uint8, device=dev)
                model.initialize(x)
                ms = _train_step_ms(model, x, dev)
                peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
                row.update(step_ms=ms, images_per_s=batch / (ms / 1e3), peak_gib=peak)
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory: reported, the check goes on
                row["note"] = f"failed: {_why(exc)}"
            rows.append(row)
            _release(dev)
    return rows


def torchrun_row(
    preset: str = "digits",
    steps: int = 20,
    device: str = "cuda",
    sets: Optional[dict] = None,
    timeout_s: float = 60,
    deadline: Optional[float] = None,
) -> list[dict]:
    """`torchrun --standalone --nproc_per_node=1 -m finc_cli train` for `steps` steps: the process group (NCCL on
    CUDA, gloo on the CPU), DDP and the pinned-memory prefetch end to end. One row: exit code, seconds, the summary."""
    row: dict = {"preset": preset, "steps": steps, "device": device}
    if _late(deadline):
        return [{**row, "note": "skipped: time budget"}]
    args = ["--preset", preset, "--steps", str(steps), "--device", device, "--json", "--quiet"]
    args += [a for key, value in (sets or {}).items() for a in ("--set", f"{key}={value}")]
    env = _repo_env()
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        cmd = [*launch, "-m", "finc_cli", "train", *args, "--out", str(Path(folder) / "run")]
        try:
            done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return [
                {
                    **row,
                    "seconds": round(time.perf_counter() - start, 1),
                    "note": f"failed: timed out after {timeout_s} s",
                }
            ]
    row.update(returncode=done.returncode, seconds=round(time.perf_counter() - start, 1))
    if done.returncode != 0:
        tail = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        return [{**row, "note": f"failed: exit {done.returncode}: {tail}"}]
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    keys = ("world_size", "device", "steps", "val_bpd", "images_per_s")
    return [{**row, **{k: summary.get(k) for k in keys if k in summary}}]


def _train_step_ms(model, x: torch.Tensor, device: torch.device) -> float:
    """Median ms of zero_grad, forward (bits/dim), backward and an Adam step; peak memory counted from here."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(x).mean().backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = time_interleaved({"step": step}, repeats=5, warmup=2, device=device, grad=True)
    return _median_ms(times, "step")


ENVIRONMENT_KEYS = (
    "date",
    "gpu",
    "capability",
    "driver",
    "cuda_driver_api",
    "cuda_runtime",
    "torch",
    "cuda",
    "cupy",
    "nvrtc",
    "python",
)
TABLES = {
    "units": ("One FInC unit, float32, k = 3 (ms, CUDA-event medians)", UNIT_COLUMNS),
    "models": ("Models (ms, CUDA-event medians; random weights and images)", MODEL_COLUMNS),
    "convs": ("Invertible convolutions, the paper's ST comparison (ms, CUDA-event medians)", CONV_COLUMNS),
    "train": ("One training step (forward, backward, Adam; random images)", TRAIN_COLUMNS),
    "torchrun": ("torchrun, one process: `finc train` end to end", TORCHRUN_COLUMNS),
    "memory": ("Training memory per train.memory mode (one step; peak above model and Adam state)", MEMORY_COLUMNS),
}


def render_section(name: str, result: dict) -> str:
    """One section of the result as Markdown: its table, the test summary, or why it failed."""
    failure = result.get("failures", {}).get(name)
    if failure:
        return f"### {name}: failed\n\n{failure['error']}"
    if name == "tests" and result.get("tests"):
        tests = result["tests"]
        return f"GPU tests (pytest -m gpu): rc={tests['returncode']} in {tests['seconds']} s: {tests['summary']}"
    if name in TABLES and result.get(name):
        title, columns = TABLES[name]
        return f"### {title}\n\n{markdown_table(columns, result[name])}"
    return ""


def render(result: dict) -> str:
    env = result["environment"]
    out = ["## GPU check", ""]
    out += [f"- {key}: {env.get(key)}" for key in ENVIRONMENT_KEYS]
    if result.get("cupy_unavailable"):
        out.append(f"- CuPy unavailable: {result['cupy_unavailable']}")
    out += ["\n" + text for text in map(lambda name: render_section(name, result), SECTIONS) if text]
    return "\n".join(out)


def _runner(name: str) -> Callable[..., object]:
    """The function behind a section (looked up when it runs)."""
    return {
        "tests": run_gpu_tests,
        "units": unit_rows,
        "models": preset_rows,
        "convs": conv_rows,
        "train": train_step_rows,
        "torchrun": torchrun_row,
        "memory": memory_rows,
    }[name]


def _write(out: Path, result: dict) -> None:
    atomic_write_text(out, json.dumps(result, indent=2, default=str))


def gpu_check(
    out: Path,
    device: str = "cuda",
    dry_run: bool = False,
    skip: Iterable[str] = (),
    echo: Optional[Callable[[str], None]] = None,
) -> dict:
    """Run every section not in `skip`, each within its own time budget; returns the result dict.

    After every section the result so far is written to `out` (atomically) and the section's
    table is passed to `echo`, so a run cut short still leaves what it measured. A section that
    raises is recorded under "failures" and the next one runs. `dry_run`: tiny shapes (DRY_RUN).
    """
    started = time.perf_counter()
    plan = DRY_RUN if dry_run else PLAN
    dev = torch.device(device)
    result: dict = {
        "environment": environment(device),
        "cupy_unavailable": cupy_backend.unavailable_reason(dev),
        "dry_run": dry_run,
        "failures": {},
    }
    if dev.type == "cuda":
        use_exact_float32()  # docs/inverse.md, "Precision on the GPU"
    if echo is not None:
        echo(render(result))
    for name in (s for s in SECTIONS if s not in set(skip)):
        begin = time.perf_counter()
        kwargs = dict(plan[name], device=device, deadline=begin + BUDGETS_S[name])
        try:
            result[name] = _runner(name)(**kwargs, **({"echo": echo} if name == "tests" else {}))
        except Exception as exc:  # noqa: BLE001 - recorded; the next section still runs
            result["failures"][name] = {"error": _why(exc), "traceback": traceback.format_exc()[-4000:]}
        result["seconds"] = round(time.perf_counter() - started, 1)
        _write(out, result)
        if echo is not None:
            echo("\n" + render_section(name, result))
    return result


def failures(result: dict) -> list[str]:
    """Every failure in a result, one line each: failed sections, failed rows, failed or timed-out tests."""
    lines = [f"{name}: {failure['error']}" for name, failure in result.get("failures", {}).items()]
    tests = result.get("tests") or {}
    if tests.get("returncode", 0) != 0:
        lines.append(f"tests: pytest exited {tests['returncode']}: {tests['summary']}")
    for name in TABLES:
        for row in result.get(name) or []:
            note = str(row.get("note") or "")
            if note.startswith("failed") or row.get("ok") is False:
                lines.append(f"{name}: {row.get('preset') or row.get('shape')}: {note or 'inverse error above 1e-3'}")
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finc_cli.bench.gpu_check", description=__doc__.splitlines()[0])
    default_out = Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else Path("gpu_check.json")
    parser.add_argument("--out", type=Path, default=default_out, help="JSON path (default: $OUT/gpu_check.json)")
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu (with --dry-run: a rehearsal)")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes: every section in seconds")
    parser.add_argument("--no-tests", action="store_true", help="skip `pytest -m gpu`")
    parser.add_argument("--no-models", action="store_true", help="skip the model timings")
    parser.add_argument("--no-train", action="store_true", help="skip the training-step timings")
    args = parser.parse_args(argv)
    skip = [name for name, off in (("tests", args.no_tests), ("train", args.no_train)) if off]
    skip += ["models", "convs"] if args.no_models else []
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device: torch.cuda.is_available() is False (use --device cpu --dry-run)", file=sys.stderr)
        return 2
    result = gpu_check(args.out, args.device, args.dry_run, skip, echo=lambda text: print(text, flush=True))
    if result["cupy_unavailable"]:
        print(f"\nCuPy unavailable: {result['cupy_unavailable']}", flush=True)
    problems = failures(result)
    for line in problems:
        print(f"failed: {line}", file=sys.stderr)
    print(f"\nresults: {args.out}", flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
