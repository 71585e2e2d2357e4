"""How every benchmark times: warm-up, interleaved repeats, CUDA events, medians and quartiles, environment.

Method (`time_interleaved`): warm-up calls; one timed call per variant per repeat, the variants
taken round-robin inside the repeat loop so that load from other processes hits all of them
alike; CUDA events and a synchronize on a GPU; median and quartiles reported (`summarize`). A
variant slower than the per-measurement budget gets fewer repeats (never fewer than one).
`environment` records where the numbers come from.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import statistics
import subprocess
import time
from typing import Callable, Iterator, Optional, Sequence

import torch

from finc_cli import inverse
from finc_cli.errors import InputError
from finc_cli.runtime.device import resolve_device

__all__ = ["DTYPES", "environment", "gpu_details", "num_threads", "resolve", "summarize", "sync", "time_interleaved"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@contextlib.contextmanager
def num_threads(threads: Optional[int]) -> Iterator[None]:
    """torch.set_num_threads(threads) inside the block, the previous value after."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def resolve(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """(torch.device, torch.dtype) from names; ValueError (one line) for bad ones."""

    if dtype not in DTYPES:
        raise InputError(f"unknown dtype '{dtype}'; choose one of: {', '.join(DTYPES)}")
    return resolve_device(device), DTYPES[dtype]


def sync(device: torch.device) -> None:
    """Wait for the device (a no-op on the CPU), so wall-clock times cover the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn: Callable, device: torch.device) -> float:
    """Seconds one call of fn takes: CUDA events on a GPU, perf_counter on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def time_interleaved(
    variants: dict[str, Callable],
    repeats: int,
    warmup: int = 1,
    device: torch.device = torch.device("cpu"),
    budget_s: Optional[float] = None,
    grad: bool = False,
) -> dict[str, list[float]]:
    """{name: [seconds per call]}: variants run round-robin inside each repeat.

    With `budget_s`, a variant whose last warm-up call took t gets min(repeats, budget_s / t)
    repeats (at least one), and no further repeat once its timed calls add up to budget_s, so a
    slow sequential baseline cannot stall the run. The calls run without autograd unless `grad`
    (a training step's backward needs it).
    """
    last: dict[str, float] = {}
    with torch.set_grad_enabled(grad):
        sync(device)
        for _ in range(warmup):
            for name, fn in variants.items():
                last[name] = _time_once(fn, device)
        counts = {
            name: max(1, min(repeats, int(budget_s / max(last[name], 1e-9))))
            if budget_s is not None and name in last
            else max(1, repeats)
            for name in variants
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(max(counts.values(), default=0)):
            for name, fn in variants.items():
                over = budget_s is not None and r > 0 and sum(times[name]) >= budget_s  # slower than warm-up said
                if r < counts[name] and not over:
                    times[name].append(_time_once(fn, device))
    return times


def summarize(seconds: Sequence[float], unit: float = 1e3) -> dict:
    """median, quartiles, min and max of timings, scaled by `unit` (1e3: milliseconds)."""
    s = sorted(seconds)
    q1, q3 = statistics.quantiles(s, n=4, method="inclusive")[::2] if len(s) > 1 else (s[0], s[0])
    return {
        "median": unit * statistics.median(s),
        "q1": unit * q1,
        "q3": unit * q3,
        "min": unit * s[0],
        "max": unit * s[-1],
        "n": len(s),
    }


def environment(device: str = "cpu", threads: Optional[int] = None, dtype: str = "float32") -> dict:
    """Where the numbers come from: device, threads, library versions, CPU model, dtype, date."""
    dev = torch.device(device) if device != "auto" else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(dev),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "cpu": _cpu_model(),
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "dtype": dtype,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cupy": _package_version("cupy-cuda13x") or _package_version("cupy"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "native_backend": inverse.is_available("native", "cpu"),
    }
    if dev.type == "cuda":
        env.update(gpu_details(dev))
    return env


def gpu_details(device: torch.device) -> dict:
    """Compute capability, driver, and the CUDA runtime and NVRTC versions CuPy sees (None when unknown)."""
    info: dict = {
        "capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
        "driver": _driver_version(),
    }
    try:
        import cupy
        from cupy.cuda import nvrtc

        info.update(
            cuda_runtime=cupy.cuda.runtime.runtimeGetVersion(),
            cuda_driver_api=cupy.cuda.runtime.driverGetVersion(),
            nvrtc=".".join(map(str, nvrtc.getVersion())),
        )
    except Exception as exc:  # noqa: BLE001 - reported, not raised: the figures still come
        info["cupy_error"] = f"{type(exc).__name__}: {exc}"
    return info


def _driver_version() -> Optional[str]:

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0] if out.returncode == 0 and lines else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _package_version(name: str) -> Optional[str]:
    """Installed version of a distribution, without importing it (CuPy's import is slow)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
