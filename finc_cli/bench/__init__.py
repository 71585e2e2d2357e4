"""Benchmarks: timing, the layer / model / scaling / threads benchmarks, tables, `make bench` and the GPU check.

The row functions are re-exported lazily so that importing `finc_cli.bench.tables` (for the CLI's
rendering) does not import torch.
"""

from __future__ import annotations

import importlib

__all__ = ["environment", "fit_exponents", "ft_st_rows", "layer_rows", "paper_rows", "scaling_rows", "thread_rows"]

_HOME = {
    "environment": "finc_cli.bench.timing",
    "layer_rows": "finc_cli.bench.layer",
    "ft_st_rows": "finc_cli.bench.model",
    "paper_rows": "finc_cli.bench.model",
    "scaling_rows": "finc_cli.bench.scaling",
    "fit_exponents": "finc_cli.bench.scaling",
    "thread_rows": "finc_cli.bench.threads",
}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'finc_cli.bench' has no attribute {name!r}")
