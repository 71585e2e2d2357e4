"""Inverse / forward time of the FInC unit per inverse backend: rows of data, the table only a rendering.

`python -m finc_cli.bench_inverse` prints the table. Both directions run under `torch.no_grad()`
on the CPU with 2 threads (the issue's setting); variants are interleaved within each repeat so
that load from other processes hits all of them alike, and medians are reported.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Iterable, Optional

import torch

from finc_cli import inverse as inverse_seam
from finc_cli.flows.finc_conv import FInCConv2d

# (B, C, H, W, k)
DEFAULT_SHAPES = (
    (16, 12, 16, 16, 3),
    (16, 48, 8, 8, 3),
    (64, 12, 16, 16, 3),
    (16, 12, 32, 32, 3),
    (4, 12, 32, 32, 5),
    (1, 12, 64, 64, 3),
)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _shape_row(shape: tuple, repeats: int, warmup: int, backends: Iterable[str], dtype: torch.dtype) -> dict:
    B, C, H, W, k = shape
    torch.manual_seed(0)
    layer = FInCConv2d(C, k).to(dtype)
    x = torch.randn(B, C, H, W, dtype=dtype)
    row: dict = {"B": B, "C": C, "H": H, "W": W, "k": k}
    with torch.no_grad():
        y, _ = layer(x)
        names = []
        for name in backends:  # proven before timed (STYLE 9); a backend that cannot run is skipped
            try:
                row[f"{name}_err"] = (layer.inverse(y, backend=name)[0] - x).abs().max().item()
                names.append(name)
            except inverse_seam.InverseBackendError:
                row[f"{name}_err"] = None
                continue
            if row[f"{name}_err"] > (1e-3 if dtype == torch.float32 else 1e-8) * x.abs().max().item():
                raise RuntimeError(f"inverse backend {name} is wrong on {shape}: max error {row[f'{name}_err']:.3g}")
        variants = {"forward": lambda: layer(x)}
        variants.update({name: (lambda n=name: layer.inverse(y, backend=n)) for name in names})
        for _ in range(warmup):
            for fn in variants.values():
                fn()
        times: dict = {name: [] for name in variants}
        for _ in range(repeats):
            for name, fn in variants.items():
                times[name].append(_timed(fn))
    forward = statistics.median(times["forward"])
    row["forward_ms"], row["forward_min_ms"] = 1e3 * forward, 1e3 * min(times["forward"])
    for name in backends:
        median: Optional[float] = statistics.median(times[name]) if name in times else None
        row[f"{name}_ms"] = None if median is None else 1e3 * median
        row[f"{name}_min_ms"] = None if median is None else 1e3 * min(times[name])
        row[f"{name}_ratio"] = None if median is None else median / forward
    row["load_1min"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # timings mean little when high
    return row


def inverse_ratio_rows(
    shapes: Iterable[tuple] = DEFAULT_SHAPES,
    repeats: int = 30,
    backends: Iterable[str] = ("wavefront", "native"),
    warmup: int = 3,
    threads: int = 2,
    dtype: torch.dtype = torch.float32,
) -> list[dict]:
    """Per (B, C, H, W, k): median forward ms, median inverse ms and inverse/forward per backend.

    A backend that cannot run here gets None entries. `{name}_err` is the max |x - inverse(y)|,
    `*_min_ms` the fastest repeat, `load_1min` the system load after the shape (other processes
    sharing the CPUs inflate every timing).
    """
    backends = tuple(backends)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return [_shape_row(tuple(shape), repeats, warmup, backends, dtype) for shape in shapes]
    finally:
        torch.set_num_threads(previous)


def render_table(rows: list[dict], backends: Iterable[str] = ("wavefront", "native")) -> str:
    backends = tuple(backends)
    head = ["shape (B,C,H,W,k)", "forward ms"] + [f"{b} ms" for b in backends] + [f"{b} ratio" for b in backends]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    fmt = lambda v, spec: "–" if v is None else format(v, spec)  # noqa: E731
    for r in rows:
        cells = [f"({r['B']},{r['C']},{r['H']},{r['W']},{r['k']})", fmt(r["forward_ms"], ".3f")]
        cells += [fmt(r.get(f"{b}_ms"), ".3f") for b in backends]
        cells += [fmt(r.get(f"{b}_ratio"), ".2f") for b in backends]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_table(inverse_ratio_rows()))
