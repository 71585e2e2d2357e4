"""`finc benchmark data`: the rows of each data measurement, one module each.

- `data_throughput`: images/s, time to the first batch and peak memory per format, source and workers;
- `data_memory`: Pss of several processes reading one split;
- `data_training`: the share of a training step spent waiting for data;
- `data_sources`: the prepared cache's check of its source files;
- `data_synthetic`: the synthetic sets they read, in the real on-disk formats.
"""

from __future__ import annotations

from finc_cli.bench.data_memory import pss_rows
from finc_cli.bench.data_sources import source_check_rows
from finc_cli.bench.data_synthetic import DEFAULT_ROOT
from finc_cli.bench.data_throughput import FORMATS, NOISE, data_rows
from finc_cli.bench.data_training import data_wait_rows

__all__ = ["DEFAULT_ROOT", "FORMATS", "NOISE", "data_rows", "data_wait_rows", "pss_rows", "source_check_rows"]
