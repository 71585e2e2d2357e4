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
import time
from typing import Callable, Iterator, Optional, Sequence

import torch

from finc_cli import inverse as inverse_seam


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


def _sync(device: torch.device) -> None:
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
) -> dict[str, list[float]]:
    """{name: [seconds per call]}: variants run round-robin inside each repeat.

    With `budget_s`, a variant whose last warm-up call took t gets min(repeats, budget_s / t)
    repeats (at least one), and no further repeat once its timed calls add up to budget_s, so a
    slow sequential baseline cannot stall the run.
    """
    last: dict[str, float] = {}
    with torch.no_grad():
        _sync(device)
        for _ in range(warmup):
            for name, fn in variants.items():
                last[name] = _time_once(fn, device)
        counts = {
            name: max(1, min(repeats, int(budget_s / max(last[name], 1e-9))))
            if budget_s is not None and name in last else max(1, repeats)
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
    q1, q3 = (statistics.quantiles(s, n=4, method="inclusive")[::2] if len(s) > 1 else (s[0], s[0]))
    return {"median": unit * statistics.median(s), "q1": unit * q1, "q3": unit * q3,
            "min": unit * s[0], "max": unit * s[-1], "n": len(s)}


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
        "native_backend": inverse_seam._available("native", torch.device("cpu")),
    }
    return env


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
