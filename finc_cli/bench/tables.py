"""Benchmark tables: columns, cells, Markdown, CSV and pivots, shared by the CLI, the report and the GPU check.

Imports no torch, so the CLI can render without loading it.
"""

from __future__ import annotations

import csv
import math
from typing import Any, Iterable, Sequence

__all__ = [
    "COLUMNS",
    "UNIT_BACKENDS",
    "cells",
    "format_cell",
    "markdown_table",
    "scaling_columns",
    "scaling_pivot",
    "unit_columns",
    "unit_pivot",
    "with_speedups",
    "write_csv",
]

UNIT_BACKENDS = ("wavefront", "native", "paper")

# (header, key, format) per column; a tuple key renders "a–b" (with a format "±spec": "a ± b"), a list "a, b, c"
# (any format but "s").

COLUMNS: dict[str, list[tuple[str, Any, str]]] = {
    "layer": [
        ("layer", "layer", "s"),
        ("backend", "backend", "s"),
        ("B,C,H,W,k", "shape", "s"),
        ("forward ms", "forward_ms", ".3g"),
        ("fwd IQR", ("forward_q1_ms", "forward_q3_ms"), ".3g"),
        ("inverse ms", "inverse_ms", ".3g"),
        ("inv IQR", ("inverse_q1_ms", "inverse_q3_ms"), ".3g"),
        ("inv/fwd", "ratio", ".2f"),
        ("max err", "max_err", ".1e"),
        ("n", "repeats", "d"),
    ],
    "baselines": [
        ("layer", "layer", "s"),
        ("inverse", "backend", "s"),
        ("B,C,H,W,k", "shape", "s"),
        ("forward ms", "forward_ms", ".3g"),
        ("inverse ms", "inverse_ms", ".3g"),
        ("inv IQR", ("inverse_q1_ms", "inverse_q3_ms"), ".3g"),
        ("inv/fwd", "ratio", ".2f"),
        ("÷ FInC wavefront inverse", "vs_wavefront", ".1f"),
        ("÷ FInC native inverse", "vs_native", ".1f"),
    ],
    "model": [
        ("model", "model", "s"),
        ("inverse", "backend", "s"),
        ("batch", "batch", "d"),
        ("L, K, width", "arch", "s"),
        ("params M", "params_m", ".3g"),
        ("FT s", "ft_s", ".3g"),
        ("FT IQR", ("ft_q1_s", "ft_q3_s"), ".2g"),
        ("ST s", "st_s", ".3g"),
        ("ST IQR", ("st_q1_s", "st_q3_s"), ".2g"),
        ("ST/FT", "st_over_ft", ".2f"),
        ("k×k inverse s", "conv_inverse_s", ".3g"),
        ("k×k share of ST", "conv_inverse_share", ".0%"),
        ("ST ÷ Glow ST", "st_vs_glow", ".2f"),
        ("ST ÷ FInC ST", "st_vs_finc", ".2f"),
    ],
    "paper": [
        ("dataset", "dataset", "s"),
        ("L", "L", "d"),
        ("K", "K", "d"),
        ("FInC bpd", "bpd", ".2f"),
        ("FT s", "ft_s", ".2f"),
        ("ST s", "st_s", ".2f"),
        ("ST/FT", "st_over_ft", ".2f"),
        ("Emerging ST", "emerging_st_s", ".2f"),
        ("CInC ST", "cinc_st_s", ".2f"),
        ("MaCow ST", "macow_st_s", ".2f"),
    ],
    "data": [
        ("format", "format", "s"),
        ("reads", "reads", "s"),
        ("workers", "workers", "d"),
        ("train images", "images", ",d"),
        ("batch", "batch", "d"),
        ("augment", "augment", "s"),
        ("noise drawn", "noise", "s"),
        ("first batch s", "first_batch_s", ".3g"),
        ("images/s", "images_s", ",.0f"),
        ("images/s range", ("images_s_min", "images_s_max"), ",.0f"),
        ("ms/batch", "batch_ms", ".3g"),
        ("peak RSS MB", "peak_rss_mb", ",.0f"),
        ("worker RSS MB", "workers_peak_rss_mb", ",.0f"),
    ],
    "data_pss": [
        ("reads", "source", "s"),
        ("process", "process", "s"),
        ("images", "images", ",d"),
        ("Pss MB", "pss_mb", ",.0f"),
        ("Pss before MB", "idle_pss_mb", ",.0f"),
        ("array Pss MB", "array_pss_mb", ",.0f"),
        ("Rss MB", "rss_mb", ",.0f"),
        ("one copy MB", "array_mb", ",.0f"),
        ("Pss ÷ one copy", "ratio", ".2f"),
        ("added ÷ one copy", "added_ratio", ".2f"),
    ],
    "data_check": [
        ("format", "format", "s"),
        ("source files", "files", ",d"),
        ("check s (median)", "check_s", ".3f"),
        ("min s", "check_s_min", ".3f"),
        ("max s", "check_s_max", ".3f"),
        ("CPU s (median)", "check_cpu_s", ".3f"),
        ("repeats", "repeats", "d"),
        ("load avg", "load_avg", ".1f"),
    ],
    "data_train": [
        ("reads", "reads", "s"),
        ("workers", "workers", "d"),
        ("batch", "batch", "d"),
        ("model", "model", "s"),
        ("steps", "steps", "d"),
        ("data s/step", "data_s", ".3g"),
        ("compute s/step", "compute_s", ".3g"),
        ("step s", "step_s", ".3g"),
        ("data share", "data_share", ".1%"),
    ],
    "threads": [
        ("runs at once", "jobs", "d"),
        ("threads each (asked)", "threads", "s"),
        ("threads used", "threads_used", "d"),
        ("steps/s each", "steps_per_s_text", "s"),
        ("combined steps/s", "combined", ".3g"),
        ("combined ÷ one run on all cores", "vs_all_cores", ".2f"),
    ],
}


def format_cell(value: Any, spec: str) -> str:
    """One table cell: '–' for a missing or non-finite value, a–b for a pair (a ± b for spec '±...'), a, b, c for a
    list."""
    if isinstance(value, tuple):
        sep, spec = (" ± ", spec[1:]) if spec.startswith("±") else ("–", spec)
        return "–" if None in value else sep.join(format_cell(v, spec) for v in value)
    if isinstance(value, list) and spec != "s":
        return ", ".join(format_cell(v, spec) for v in value)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if spec == "s":
        return str(value)
    return format(value, spec)


def cells(row: dict, columns: Sequence[tuple[str, Any, str]]) -> list[str]:
    return [
        format_cell(tuple(row.get(k) for k in key) if isinstance(key, tuple) else _value(row, key), spec)
        for _, key, spec in columns
    ]


def _value(row: dict, key: str) -> Any:
    """Row value, with a few derived display keys."""
    if key == "shape" and "B" in row:
        return f"{row['B']},{row['C']},{row['H']},{row['W']},{row['k']}"
    if key == "arch" and "levels" in row:
        return f"{row['levels']}, {row['steps']}, {row['hidden']}"
    if key == "steps_per_s_text" and "steps_per_s" in row:
        return " and ".join(f"{v:.3g}" for v in row["steps_per_s"])
    if key == "params_m" and "params" in row:
        return row["params"] / 1e6
    return row.get(key)


def markdown_table(columns: Sequence[tuple[str, Any, str]], rows: Iterable[dict]) -> str:
    head = [c[0] for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(cells(r, columns)) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(rows: list[dict], path: str) -> None:
    """All keys of all rows as columns, in first-seen order."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def unit_pivot(rows: list[dict], backends: Sequence[str] = UNIT_BACKENDS) -> list[dict]:
    """One row per shape: forward_ms, {backend}_ms, {backend}_ratio, best_ratio, target, met."""
    out: dict = {}
    for r in rows:
        key = (r["B"], r["C"], r["H"], r["W"], r["k"])
        p = out.setdefault(
            key, {**{k: r[k] for k in ("B", "C", "H", "W", "k")}, "forward_ms": r["forward_ms"], "max_err": 0.0}
        )
        p[f"{r['backend']}_ms"], p[f"{r['backend']}_ratio"] = r["inverse_ms"], r["ratio"]
        p["max_err"] = max(p["max_err"], r["max_err"])
    for p in out.values():
        fast = [p[f"{b}_ratio"] for b in ("wavefront", "native", "cupy") if p.get(f"{b}_ratio") is not None]
        p["best_ratio"] = min(fast) if fast else None
        p["target"] = 10.0 if p["B"] == 1 else 3.0
        p["met"] = None if p["best_ratio"] is None else ("yes" if p["best_ratio"] <= p["target"] else "no")
    return list(out.values())


def unit_columns(backends: Sequence[str] = UNIT_BACKENDS) -> list:
    cols = [("B,C,H,W,k", "shape", "s"), ("forward ms", "forward_ms", ".3g")]
    cols += [(f"{b} ms", f"{b}_ms", ".3g") for b in backends]
    cols += [(f"{b} ÷ fwd", f"{b}_ratio", ".2f") for b in backends]
    return cols + [
        ("best ÷ fwd", "best_ratio", ".2f"),
        ("target", "target", ".0f"),
        ("met", "met", "s"),
        ("max err", "max_err", ".1e"),
    ]


def with_speedups(rows: list[dict]) -> list[dict]:
    """Layer rows plus vs_wavefront / vs_native: this inverse time ÷ the FInC one at the same shape."""
    ref: dict = {}
    for r in rows:
        if r["layer"] == "finc":
            ref[(r["B"], r["C"], r["H"], r["W"], r["k"], r["backend"])] = r["inverse_ms"]
    out = []
    for r in rows:
        shape = (r["B"], r["C"], r["H"], r["W"], r["k"])
        out.append(
            {
                **r,
                **{
                    f"vs_{b}": (r["inverse_ms"] / ref[(*shape, b)] if (*shape, b) in ref else None)
                    for b in ("wavefront", "native")
                },
            }
        )
    return out


def scaling_pivot(rows: list[dict], fits: list[dict]) -> tuple[list[dict], list[int]]:
    """(one row per (backend, k) with n{size} = median ms and the exponents, the sizes measured)."""
    ns = sorted({r["n"] for r in rows})
    table: dict = {}
    for r in rows:
        table.setdefault((r["backend"], r["k"]), {"backend": r["backend"], "k": r["k"]})[f"n{r['n']}"] = r["median_ms"]
    for f in fits:
        table[(f["backend"], f["k"])].update(exponent=f["exponent"], exponent_large=f["exponent_large"])
    order = {b: i for i, b in enumerate(("cupy", "native", "wavefront", "paper", "cinc", "emerging"))}
    return sorted(table.values(), key=lambda r: (order.get(r["backend"], 99), r["k"])), ns


def scaling_columns(ns: Sequence[int]) -> list:
    return (
        [("backend", "backend", "s"), ("k", "k", "d")]
        + [(f"n={n} ms", f"n{n}", ".3g") for n in ns]
        + [("exponent", "exponent", ".2f"), ("exponent n≥32", "exponent_large", ".2f")]
    )
