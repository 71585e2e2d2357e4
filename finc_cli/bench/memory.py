"""Training memory and step time of `train.memory` store, checkpoint and invert (docs/training.md §18).

Each row is one training step (forward, backward, Adam) of a preset's model on random images:

- peak memory above the model and optimizer state. On the CPU every point runs in a fresh process
  (`python -m finc_cli.bench.memory --worker ...`): a warm-up step at batch 1 creates the gradients'
  and Adam's state, the gradients are dropped, the peak resident set is reset (/proc/self/clear_refs)
  and the step's peak RSS (VmHWM) minus the resident set before it is the figure. On CUDA it is
  `max_memory_allocated` minus `memory_allocated` before the step, in this process.
- step time as a ratio to store's, timed interleaved (store, checkpoint, invert, store, ...) on one
  model in one process, median over rounds;
- the largest batch within a budget: a least-squares line of peak memory against batch through the
  measured points, state included, confirmed by one step at that batch (stepped down if it does not fit).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from finc_cli.config import MEMORY_CHOICES, load_preset
from finc_cli.errors import OutOfMemory
from finc_cli.model import build_model
from finc_cli.runtime.device import resolve_device
from finc_cli.text import comma_list
from finc_cli.train.step import build_optimizer

__all__ = ["MEMORY_COLUMNS", "main", "measure_step", "memory_rows", "parse_modes", "step_seconds"]

_MODULE = "finc_cli.bench.memory"
MB = 2**20
_SMALLER = "give a smaller --batch-size, or a --max-batch or --budget-gb this machine can hold"

MEMORY_COLUMNS = [
    ("preset", "preset", "s"),
    ("K", "steps_per_level", "d"),
    ("memory", "memory", "s"),
    ("batch", "batch", "d"),
    ("state MB", "state_mb", ".0f"),
    ("peak MB", "peak_mb", ".0f"),
    ("grads MB", "grad_mb", ".0f"),
    ("activations MB", "act_mb", ".0f"),
    ("act ÷ store", "act_vs_store", ".1%"),
    ("peak ÷ store", "mem_vs_store", ".1%"),
    ("act ÷ K-min", "act_growth", ".2f"),
    ("peak ÷ K-min", "growth", ".2f"),
    ("step s", "step_s", ".3g"),
    ("time ÷ store", "time_vs_store", ".2f"),
    ("budget batch", "budget_batch", "s"),
    ("at budget GB", "budget_peak_gb", ".2f"),
    ("note", "note", "s"),
]


def parse_modes(text) -> list[str]:
    modes = comma_list(text)
    for mode in modes:
        if mode not in MEMORY_CHOICES:
            raise ValueError(f"unknown memory mode '{mode}'; choose from {', '.join(MEMORY_CHOICES)}")
    if not modes:
        raise ValueError("give at least one memory mode, e.g. --memory store,checkpoint,invert")
    return modes


def _build(preset: str, overrides: dict, device: torch.device, seed: int = 0):
    """(model, optimizer, images, noise maker) on random images of the preset's shape, ActNorm initialised."""
    torch.manual_seed(seed)
    cfg = load_preset(preset, overrides)
    model = build_model(cfg).to(device)
    model.initialize(_images(model, min(cfg.train.batch_size, 16), device))
    return model, build_optimizer(model, cfg)


def _images(model, batch: int, device) -> torch.Tensor:
    return torch.randint(0, model.bins, (batch, *model.image_shape), dtype=torch.uint8, device=device)


def _train_step(model, optimizer, x: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    noise = torch.rand(x.shape, device=x.device)
    model(x, noise=noise).mean().backward()
    optimizer.step()


def _status_kb() -> dict:
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) for k in ("VmRSS", "VmHWM")}


def _trim() -> None:
    """Hand freed heap pages back to the system, so the resident set before the step is the live state."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the figure may then include retained pages
        pass


def measure_step(preset: str, overrides: dict, batch: int, mode: str, device: str = "cpu") -> dict:
    """{state_mb, peak_mb, grad_mb, act_mb, step_s} of one training step at `batch` in memory mode `mode`, here.

    grad_mb is the parameters' gradients (part of every mode's peak, ∝ K); act_mb = peak_mb − grad_mb is
    what the step keeps or rebuilds besides them: activations, recomputed graphs, temporaries.
    """
    dev = resolve_device(device)
    model, optimizer = _build(preset, overrides, dev)
    model.set_memory(mode)
    model.train()
    _train_step(model, optimizer, _images(model, 1, dev))  # creates Adam's state; the gradients are then dropped
    optimizer.zero_grad(set_to_none=True)
    x = _images(model, batch, dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        t0 = time.perf_counter()
        _train_step(model, optimizer, x)
        torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(dev) - before
    else:
        _trim()
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = _status_kb()["VmRSS"] * 1024
        t0 = time.perf_counter()
        _train_step(model, optimizer, x)
        seconds = time.perf_counter() - t0
        peak = _status_kb()["VmHWM"] * 1024 - before
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad) / MB
    return {
        "state_mb": before / MB,
        "peak_mb": peak / MB,
        "grad_mb": grads,
        "act_mb": peak / MB - grads,
        "step_s": seconds,
    }


def _measure(preset: str, overrides: dict, batch: int, mode: str, device: str, threads: int) -> dict:
    """measure_step in a fresh process on the CPU (peak RSS is per process), in this one on CUDA.

    A step that does not fit raises OutOfMemory: CUDA's out-of-memory error, or a measuring process killed by a
    signal (the kernel's out-of-memory killer sends SIGKILL).
    """
    where = f"batch {batch} ({mode})"
    if resolve_device(device).type == "cuda":
        try:
            result = measure_step(preset, overrides, batch, mode, device)
        except torch.cuda.OutOfMemoryError as exc:
            raise OutOfMemory(f"one training step at {where} ran out of GPU memory; {_SMALLER}") from exc
        finally:
            torch.cuda.empty_cache()
        return result
    spec = {"preset": preset, "overrides": overrides, "batch": batch, "mode": mode, "device": device}
    cmd = [sys.executable, "-m", _MODULE, "--worker", json.dumps(spec), "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        raise OutOfMemory(f"the process measuring {where} was killed by {name}, most likely out of memory; {_SMALLER}")
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise RuntimeError(f"the measuring process failed at batch {batch} ({mode}): {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def step_seconds(preset: str, overrides: dict, batch: int, modes: Sequence[str], rounds: int, device: str) -> dict:
    """{mode: median seconds of a training step}, the modes interleaved on one model in this process."""
    dev = resolve_device(device)
    model, optimizer = _build(preset, overrides, dev)
    model.train()
    x = _images(model, batch, dev)
    times: dict = {mode: [] for mode in modes}
    for r in range(rounds + 1):  # round 0 warms up
        for mode in modes:
            model.set_memory(mode)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            _train_step(model, optimizer, x)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if r:
                times[mode].append(time.perf_counter() - t0)
    return {mode: statistics.median(t) for mode, t in times.items()}


def _budget_batch(points: list[tuple[int, float]], state_mb: float, budget_mb: float) -> Optional[int]:
    """Largest batch with state + a + b·batch ≤ budget, from the least-squares line through (batch, peak MB)."""
    n = len(points)
    mean_b = sum(b for b, _ in points) / n
    mean_m = sum(m for _, m in points) / n
    var = sum((b - mean_b) ** 2 for b, _ in points)
    slope = sum((b - mean_b) * (m - mean_m) for b, m in points) / var if var else mean_m / mean_b
    intercept = mean_m - slope * mean_b
    if slope <= 0:
        return None
    batch = int((budget_mb - state_mb - intercept) // slope)
    return batch if batch >= 1 else None


def memory_rows(
    preset: str,
    batch: int,
    modes: Sequence[str] = MEMORY_CHOICES,
    steps_per_level: Optional[Sequence[int]] = None,
    budget_gb: Optional[float] = None,
    rounds: int = 2,
    max_batch: Optional[int] = None,
    device: str = "cpu",
    overrides: Optional[dict] = None,
    progress: Optional[Callable[[str], None]] = None,
    threads: Optional[int] = None,
    deadline: Optional[float] = None,
) -> list[dict]:
    """One row per (steps per level K, mode); the time ratio and the budget batch at the preset's K (the last K).

    `deadline` (time.perf_counter()): a row that would start later is left out and the rows so far are returned,
    the last one noting it (`make gpu-check`'s section budget).
    """
    overrides = dict(overrides or {})
    threads = threads or torch.get_num_threads()
    ks = list(steps_per_level or [load_preset(preset, overrides).model.steps])
    say = progress or (lambda text: None)
    rows: list[dict] = []
    for k in ks:
        over = {**overrides, "model.steps": k}
        for mode in modes:
            if deadline is not None and time.perf_counter() > deadline:
                rows.append({"preset": preset, "steps_per_level": k, "memory": mode, "note": "skipped: time budget"})
                return rows
            say(f"K={k} {mode} batch {batch}: peak memory")
            row = {"preset": preset, "steps_per_level": k, "memory": mode, "batch": batch}
            measured = _measure(preset, over, batch, mode, device, threads)
            measured.pop("step_s")  # one cold step in a fresh process: step times come from the interleaved rounds
            rows.append({**row, **measured})
    _relate(rows, ks, modes)
    over = {**overrides, "model.steps": ks[-1]}
    at_k = {r["memory"]: r for r in rows if r["steps_per_level"] == ks[-1]}
    if rounds:  # 0: memory only
        say(f"K={ks[-1]} step time, {rounds} interleaved rounds")
        seconds = step_seconds(preset, over, batch, modes, rounds, device)
        for mode, row in at_k.items():
            row["step_s"] = seconds[mode]
            if "store" in seconds:
                row["time_vs_store"] = seconds[mode] / seconds["store"]
    if budget_gb and not (deadline is not None and time.perf_counter() > deadline):
        for mode, row in at_k.items():
            _fit_budget(row, preset, over, mode, budget_gb * 1024, max_batch, device, threads, say)
    return rows


def _relate(rows: list[dict], ks: Sequence[int], modes: Sequence[str]) -> None:
    """Each row's peak and activations as a share of store's at the same K, and as a multiple of its own mode's
    at the smallest K."""
    got = {(r["steps_per_level"], r["memory"]): r for r in rows}
    for r in rows:
        k, mode = r["steps_per_level"], r["memory"]
        if (k, "store") in got:
            r["mem_vs_store"] = r["peak_mb"] / got[(k, "store")]["peak_mb"]
            r["act_vs_store"] = r["act_mb"] / got[(k, "store")]["act_mb"]
        if len(ks) > 1:
            r["growth"] = r["peak_mb"] / got[(ks[0], mode)]["peak_mb"]
            r["act_growth"] = r["act_mb"] / got[(ks[0], mode)]["act_mb"]


def _fit_budget(row, preset, overrides, mode, budget_mb, max_batch, device, threads, say) -> None:
    """Add the largest batch within budget_mb (line through the batch/2 and batch points), confirmed by one step."""
    half = max(1, row["batch"] // 2)
    say(f"{mode}: peak memory at batch {half} for the fit")
    low = _measure(preset, overrides, half, mode, device, threads)
    points = [(half, low["peak_mb"]), (row["batch"], row["peak_mb"])]
    predicted = _budget_batch(points, row["state_mb"], budget_mb)
    if predicted is None:
        slope = (row["peak_mb"] - low["peak_mb"]) / max(1, row["batch"] - half)
        row["note"] = (
            f"no batch fits the budget (state {row['state_mb']:.0f} MB)"
            if slope > 0
            else f"peak did not grow from batch {half} to {row['batch']}: measure at a larger --batch-size"
        )
        return
    batch, capped = (max_batch, True) if max_batch and predicted > max_batch else (predicted, False)
    row["budget_fit"] = predicted
    killed = 0
    for _ in range(3):  # step down while the confirming step does not fit
        say(f"{mode}: confirming batch {batch} within {budget_mb / 1024:g} GB")
        try:
            got = _measure(preset, overrides, batch, mode, device, threads)
        except OutOfMemory:  # the budget is larger than what this machine can give: the same as not fitting
            killed += 1
            batch = max(1, batch * 3 // 4)
            continue
        total = got["state_mb"] + got["peak_mb"]
        if total <= budget_mb:
            row["budget_batch"] = f"≥ {batch}" if capped else str(batch)
            row["budget_peak_gb"] = total / 1024
            row["note"] = f"fit {predicted}" + (f", confirmed at the cap {batch}" if capped else "")
            break
        batch = max(1, int(batch * budget_mb / total * 0.98))
    else:
        row["note"] = f"fit {predicted}; no confirmed batch within budget after 3 tries"
    if killed:
        row["note"] += f"; {killed} larger {'try' if killed == 1 else 'tries'} ran out of this machine's memory"


def main(argv: Optional[list[str]] = None) -> int:
    """The measuring process: one `measure_step` from a JSON spec, its result printed as one JSON line."""
    parser = argparse.ArgumentParser(prog=f"python -m {_MODULE}")
    parser.add_argument("--worker", required=True, help="JSON: preset, overrides, batch, mode, device")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = json.loads(args.worker)
    result = measure_step(spec["preset"], spec["overrides"], spec["batch"], spec["mode"], spec.get("device", "cpu"))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
