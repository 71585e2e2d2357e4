"""The prepared cache's check of its sources, timed: stat and digest every file of a CelebA-size folder."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from finc_cli.bench.data_synthetic import CELEBA_FILES, DEFAULT_ROOT, write_synthetic
from finc_cli.data.cache import source_state

__all__ = ["source_check_rows"]


def source_check_rows(root=DEFAULT_ROOT, repeats: int = 5, files: int = CELEBA_FILES) -> list[dict]:
    """Seconds to stat and digest the sources of a prepared CelebA split, as every use of the cache does.

    The folder holds `files` CelebA-layout images (CelebA's count by default) as tiny valid JPEGs:
    the check reads only each file's size and modification time. Timed `repeats` times after the
    writing (warm dentry and inode caches, as for any command after the first).
    """
    folder = Path(root) / "celeba64-files"
    written = write_synthetic("celeba64-files", folder, files)
    times, cpu, state = [], [], []
    for _ in range(max(1, repeats)):
        t0, c0 = time.perf_counter(), time.process_time()
        state = source_state("celeba64", "train", folder)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return [
        {
            "format": "celeba64",
            "files": sum(s.get("files", 1) for s in state),
            "write_s": written["seconds"],
            "check_s": statistics.median(times),
            "check_s_min": min(times),
            "check_s_max": max(times),
            "check_cpu_s": statistics.median(cpu),  # this process's CPU time: less sensitive to other load
            "repeats": len(times),
            "load_avg": os.getloadavg()[0],
        }
    ]
