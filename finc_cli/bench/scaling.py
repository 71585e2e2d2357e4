"""Scaling benchmark: inverse time of one layer against image size n and kernel size k, and its exponent."""

from __future__ import annotations

import math
import statistics
from typing import Callable, Iterable, Optional, Sequence

import torch

from finc_cli import inverse
from finc_cli.bench.layer import SEQUENTIAL, build_layer, finc_backends, max_error
from finc_cli.bench.timing import num_threads, resolve, summarize, time_interleaved
from finc_cli.errors import InputError

__all__ = ["SCALING_BACKENDS", "fit_exponent", "fit_exponents", "scaling_rows"]

SCALING_BACKENDS = ("wavefront", "native", "paper", "cupy", "emerging", "cinc")


def scaling_rows(
    sizes: Iterable[int] = (8, 16, 32, 64, 128),
    kernel_sizes: Iterable[int] = (2, 3, 5, 7),
    backends: Optional[Iterable[str]] = None,
    batch_size: int = 1,
    channels: int = 12,
    device: str = "cpu",
    dtype: str = "float32",
    repeats: int = 5,
    warmup: int = 1,
    threads: int = 2,
    budget_s: float = 2.0,
    max_call_s: float = 1.0,
    seed: int = 0,
    progress: Optional[Callable] = None,
) -> list[dict]:
    """Inverse time of one layer of C channels against image size n (n×n) per backend and k.

    `backends` mixes FInC inverse backends (wavefront, native, paper, cupy) and the sequential
    baselines (emerging, cinc); None means all that run here. A backend whose next size is
    predicted (×(n'/n)², the pixel count) to exceed `max_call_s` per call is not measured at
    larger n. Keys: backend, k, n, B, C, dtype, device, median_ms, q1_ms, q3_ms, min_ms, max_ms,
    repeats, max_err. `progress(total)` may return a callback advanced once per k.
    """
    dev, dt = resolve(device, dtype)
    sizes = sorted(int(n) for n in sizes)
    if channels % 4 or channels < 4:
        raise InputError(f"--channels must be a positive multiple of 4 (the FInC unit), got {channels}")
    if not sizes or sizes[0] < 1:
        raise InputError(f"image sizes must be >= 1, got {sizes}")
    if backends is None:
        names = finc_backends(None, dev) + list(SEQUENTIAL)
    else:
        unknown = [b for b in backends if b not in SCALING_BACKENDS]
        if unknown:
            raise InputError(f"unknown backend '{unknown[0]}'; choose from: {', '.join(SCALING_BACKENDS)}")
        names = finc_backends([b for b in backends if b not in SEQUENTIAL], dev) + [
            b for b in SEQUENTIAL if b in backends
        ]
    rows = []
    kernel_sizes = list(kernel_sizes)
    advance = progress(len(kernel_sizes)) if progress else (lambda n: None)
    with num_threads(threads):
        for k in kernel_sizes:
            rows += _scaling_k(
                int(k), sizes, names, batch_size, channels, dev, dt, repeats, warmup, budget_s, max_call_s, seed
            )
            advance(1)
    return rows


def _finc_inverse(layer, y: torch.Tensor, backend: str):
    with inverse.use_backend(backend):
        return layer.inverse(y)


def _scaling_k(k, sizes, names, B, C, device, dtype, repeats, warmup, budget_s, max_call_s, seed) -> list[dict]:
    torch.manual_seed(seed)
    layers = {kind: build_layer(kind, C, k).to(device=device, dtype=dtype).eval() for kind in ("finc", *SEQUENTIAL)}
    live, rows = list(names), []
    for pos, n in enumerate(sizes):
        x = torch.randn(B, C, n, n, device=device, dtype=dtype)
        variants, errors = {}, {}
        with torch.no_grad():
            for name in live:
                layer = layers[name] if name in SEQUENTIAL else layers["finc"]
                y, _ = layer(x)
                fn = (
                    (lambda l=layer, y=y: l.inverse(y))
                    if name in SEQUENTIAL
                    else (lambda y=y, b=name: _finc_inverse(layers["finc"], y, b))
                )
                errors[name] = max_error(fn, x)
                variants[name] = fn
        times = time_interleaved(variants, repeats, warmup, device, budget_s)
        for name, samples in times.items():
            s = summarize(samples)
            rows.append(
                {
                    "backend": name,
                    "k": k,
                    "n": n,
                    "B": B,
                    "C": C,
                    "dtype": str(dtype).removeprefix("torch."),
                    "device": str(device),
                    "median_ms": s["median"],
                    "q1_ms": s["q1"],
                    "q3_ms": s["q3"],
                    "min_ms": s["min"],
                    "max_ms": s["max"],
                    "repeats": s["n"],
                    "max_err": errors[name],
                }
            )
            if pos + 1 < len(sizes) and s["median"] / 1e3 * (sizes[pos + 1] / n) ** 2 > max_call_s:
                live.remove(name)
    return rows


def fit_exponent(ns: Sequence[float], times: Sequence[float]) -> float:
    """Least-squares slope of log(time) against log(n): time ∝ n^slope."""
    if len(ns) < 2:
        return math.nan
    lx, ly = [math.log(n) for n in ns], [math.log(t) for t in times]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    return math.nan if sxx == 0 else sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sxx


def fit_exponents(rows: Iterable[dict], large_n: int = 32) -> list[dict]:
    """Per (backend, k): the growth exponent over all sizes and over sizes >= large_n.

    The O(n·k²) claim (docs/inverse.md) is exponent 1 when every pixel of an anti-diagonal runs in
    parallel; with few cores the per-step work (∝ n) is serial too and the exponent tends to 2,
    which is also what a raster-order inverse (n² steps) shows from the start.
    """
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["backend"], r["k"]), []).append((r["n"], r["median_ms"]))
    fits = []
    for (backend, k), points in groups.items():
        points.sort()
        big = [p for p in points if p[0] >= large_n]
        fits.append(
            {
                "backend": backend,
                "k": k,
                "exponent": fit_exponent(*zip(*points)),
                "exponent_large": fit_exponent(*zip(*big)) if len(big) > 1 else math.nan,
                "points": len(points),
                "n_min": points[0][0],
                "n_max": points[-1][0],
            }
        )
    return fits
