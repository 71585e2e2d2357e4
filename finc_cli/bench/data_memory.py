"""Memory of several processes reading one training split: Pss, where a page shared by k processes counts 1/k.

A prepared split is one memory-mapped array that every process on a node shares through the page
cache; a split read from its sources is a private copy per process. Each process runs
`python -m finc_cli.bench.data_memory ...` with RANK and WORLD_SIZE set as torchrun sets them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

import finc_cli.data.cache  # noqa: F401 - what training imports is in the Pss before the data
from finc_cli.bench.data_synthetic import CHUNK, DEFAULT_ROOT, child_parser, dir_args, ensure, read_by, warm
from finc_cli.data.cache import MappedImages
from finc_cli.data.load import get_dataset

__all__ = ["main", "pss_rows"]

_MODULE = "finc_cli.bench.data_memory"  # each reading process runs this module


def _rollup_kb(pid: int) -> dict:
    """/proc/PID/smaps_rollup as {field: kB}."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            out[key] = int(value.split()[0])
    return out


def _mapping_pss_kb(pid: int, path: str) -> int:
    """Pss of the mappings of file `path` in process `pid` (/proc/PID/smaps)."""
    total, inside = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if fields and not fields[0].endswith(":"):  # a mapping's header: range perms offset dev inode [path]
                inside = " ".join(fields[5:]) == path
            elif inside and fields[0] == "Pss:":
                total += int(fields[1])
    return total


def _read_all(fmt: str, source: str, data_dir, cache_dir) -> tuple[dict, object]:
    """Open the training split as training does and read every image (every page of a mapped array).

    Returns the result and the dataset, which the caller keeps open while its memory is measured.
    """

    t0 = time.perf_counter()
    ds = get_dataset(fmt, "train", data_dir, cache_dir=cache_dir, use_cache=source == "cache")
    array = ds.array if isinstance(ds, MappedImages) else ds.images.numpy()  # (N, C, H, W) uint8
    total = sum(int(array[s : s + CHUNK].sum(dtype=np.uint64)) for s in range(0, len(array), CHUNK))
    return {"pid": os.getpid(), "images": len(array), "checksum": total, "read_s": time.perf_counter() - t0}, ds


def _pss_child(fmt: str, source: str, data_dir, cache_dir) -> int:
    """Import, say "ready", wait for "go", read the split, print the result, hold the data until stdin closes."""

    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":  # stdin closed: the parent gave up
        return 1
    result, ds = _read_all(fmt, source, data_dir, cache_dir)
    print(json.dumps(result), flush=True)
    sys.stdin.read()
    del ds
    return 0


def _start(fmt: str, source: str, setup: dict, rank: int, world: int, log) -> subprocess.Popen:
    args = ["--format", fmt, "--source", source, *dir_args(setup["data_dir"], setup["cache_dir"])]
    env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)}
    cmd = [sys.executable, "-m", _MODULE, *args]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env)


def _expect(proc: subprocess.Popen, log) -> str:
    line = proc.stdout.readline()
    if not line:
        log.seek(0)
        tail = (log.read().decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"a memory-measuring process exited early: {tail}")
    return line.strip()


def _pss_processes(fmt: str, source: str, setup: dict, processes: int, array_path: str) -> list[dict]:
    """Each process's Pss (MB) once it has read everything, while all are alive, and before it opened the data."""
    with tempfile.TemporaryFile() as log:
        procs = [_start(fmt, source, setup, r, processes, log) for r in range(processes)]
        try:
            [_expect(p, log) for p in procs]
            idle = [_rollup_kb(p.pid)["Pss"] for p in procs]
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            results = [json.loads(_expect(p, log)) for p in procs]
            after = [(_rollup_kb(p.pid), _mapping_pss_kb(p.pid, array_path)) for p in procs]
        except BaseException:
            for p in procs:
                p.kill()
            raise
        finally:
            for p in procs:
                p.stdin.close()
                p.wait(timeout=60)
    return [
        {
            "source": source,
            "process": str(r),
            "images": res["images"],
            "read_s": res["read_s"],
            "pss_mb": roll["Pss"] / 1024,
            "rss_mb": roll["Rss"] / 1024,
            "idle_pss_mb": idle[r] / 1024,
            "array_pss_mb": mapped / 1024,
        }
        for r, (res, (roll, mapped)) in enumerate(zip(results, after))
    ]


def pss_rows(
    root=DEFAULT_ROOT, images: int = 100_000, processes: int = 2, sources=("cache", "sources"), fmt: str = "imagenet64"
) -> list[dict]:
    """Memory of `processes` processes (RANK/WORLD_SIZE set as torchrun does) that each read ALL of one training split.

    Per process: Pss (/proc/PID/smaps_rollup: a page shared by k processes counts 1/k in each) once
    everything is read, while all are alive; its Pss before it opened the data (torch imported);
    the Pss of its mapping of the prepared array. The "all" row adds them up: `ratio` is the total
    Pss ÷ one copy of the array, `added_ratio` the same for the memory added by opening and reading
    the data (the total less the interpreter's and torch's).
    """
    setup = ensure(fmt, root, images, cache=True)
    array_path = str((Path(setup["cache_dir"]) / f"{fmt}-train.npy").resolve())
    one_copy = np.load(array_path, mmap_mode="r").nbytes / 2**20
    rows = []
    for source in sources:
        warm(read_by(fmt, source, setup["data_dir"], setup["cache_dir"]))
        each = _pss_processes(fmt, source, setup, processes, array_path)
        total = {k: sum(r[k] for r in each) for k in ("pss_mb", "rss_mb", "idle_pss_mb", "array_pss_mb")}
        added = total["pss_mb"] - total["idle_pss_mb"]
        summary = {"source": source, "process": "all", "images": each[0]["images"], "array_mb": one_copy, **total}
        rows += each + [{**summary, "ratio": total["pss_mb"] / one_copy, "added_ratio": added / one_copy}]
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = child_parser(_MODULE, "Read a whole training split when told to (pss_rows).").parse_args(argv)
    return _pss_child(a.format, a.source, a.data_dir, a.cache_dir)


if __name__ == "__main__":
    sys.exit(main())
