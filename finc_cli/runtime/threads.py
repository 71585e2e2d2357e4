"""How many CPU threads torch uses: --threads, else FINC_THREADS, else OMP_NUM_THREADS, else a size rule."""

from __future__ import annotations

import math
import os
from typing import Mapping, NamedTuple, Optional

import torch

from finc_cli.errors import InputError

__all__ = [
    "ONE_THREAD_BELOW",
    "THREADS_ENV",
    "ThreadChoice",
    "apply_threads",
    "cpu_count",
    "resolve_threads",
    "step_work",
]

THREADS_ENV = "FINC_THREADS"
# Per-step work (trainable parameters × images per micro-batch × pixels per image) below which one
# thread trains faster than all cores. The digits preset (5.2e8) trains 1.7× faster on one thread
# than on both cores of a quiet 2-core machine; if each step pays a fixed threading cost on top of
# work split over the cores, the two break even near 1.3e9 (BENCHMARKS.md "Threads and parallel
# runs"). The threshold sits below that, so the default is not slower than all cores.
ONE_THREAD_BELOW = 1e9


class ThreadChoice(NamedTuple):
    """The thread count and where it came from: flag, env (FINC_THREADS), omp (OMP_NUM_THREADS) or default."""

    n: int
    source: str
    rule: str

    def record(self) -> dict:
        return {"threads": self.n, "threads_source": self.source, "threads_rule": self.rule}


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask, as under taskset or a SLURM allocation)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _env_threads(environ: Mapping[str, str]) -> Optional[int]:
    """FINC_THREADS as a positive integer, None when unset; anything else is bad input."""
    text = environ.get(THREADS_ENV, "").strip()
    if not text:
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise InputError(f"{THREADS_ENV}={text!r} must be a positive integer (threads per process)")
    return n


def _omp_threads(environ: Mapping[str, str]) -> Optional[int]:
    """OMP_NUM_THREADS's first level ("4" or "4,2"), None when unset or not a positive integer (OpenMP's own)."""
    first = environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else None


def resolve_threads(
    flag: Optional[int] = None, work: Optional[float] = None, environ: Optional[Mapping[str, str]] = None
) -> ThreadChoice:
    """--threads > FINC_THREADS > a set OMP_NUM_THREADS > finc's default.

    The default is one thread when `work` (see `step_work`) is below ONE_THREAD_BELOW, else all
    cores; without a work estimate (commands other than training) it is all cores, torch's own.
    """
    environ = os.environ if environ is None else environ
    if flag is not None:
        if flag < 1:
            raise InputError(f"--threads {flag} must be a positive integer")
        return ThreadChoice(flag, "flag", "--threads")
    env = _env_threads(environ)
    if env is not None:
        return ThreadChoice(env, "env", THREADS_ENV)
    omp = _omp_threads(environ)
    if omp is not None:
        return ThreadChoice(omp, "omp", "OMP_NUM_THREADS")
    cores = cpu_count()
    if work is None:
        return ThreadChoice(cores, "default", "all cores")
    if work < ONE_THREAD_BELOW:
        return ThreadChoice(1, "default", f"work {work:.2g} < {ONE_THREAD_BELOW:.2g}: one thread")
    return ThreadChoice(cores, "default", f"work {work:.2g} >= {ONE_THREAD_BELOW:.2g}: all cores")


def step_work(num_parameters: int, batch: int, image_shape) -> float:
    """Per-step work of training: trainable parameters × images per micro-batch × pixels per image."""
    return float(num_parameters) * batch * math.prod(image_shape[1:])


def apply_threads(n: int) -> None:
    """torch.set_num_threads(n), and the inter-op pool too while it has not started (it can be set once)."""
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # already set, or inter-op work already ran: the intra-op count is what matters here
        pass
