"""Builds tests/emu/driver.cpp around the prepared kernels/finc_inverse.cu and runs its entries on the CPU."""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
SUPPORT = ("cuda_host.h", "race_check.h", "driver.cpp")
FLAGS = ("-std=c++20", "-O1", "-pthread", "-Wno-unknown-pragmas")
ENTRIES = ("tile", "ring", "prepare", "diagonal", "paper_step")  # entry codes 0.. in driver.cpp
NUMPY_TYPES = {"float": np.float32, "double": np.float64}


class EmulationError(AssertionError):
    """The driver refused a launch or its checks found errors (out of bounds, race, ...)."""


@dataclass(frozen=True)
class Launch:
    """One kernel launch; `buffers` names the job's buffers in the entry's pointer order."""

    entry: str
    grid: tuple[int, int]
    block: int
    buffers: tuple[str, ...]
    args: tuple[int, ...] = ()
    shared: int = 0  # dynamic shared memory, bytes


@dataclass(frozen=True)
class Driver:
    path: Path
    ctype: str


def compiler() -> Optional[str]:
    return shutil.which("g++")


class Emulator:
    """Drivers compiled into `folder`, one per (prepared source, T, K, CG, RING), each built once."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}
        self._support = b"".join((HERE / name).read_bytes() for name in SUPPORT)

    def build(self, source: str, ctype: str, k: int, cg: int, ring: int) -> Driver:
        """The driver for the entries `<ctype, k, cg>` (the ring with `ring` slots) of `source`."""
        digest = hashlib.sha256(self._support + source.encode() + repr((ctype, k, cg, ring, FLAGS)).encode())
        key = digest.hexdigest()[:16]
        exe = self.folder / f"driver_{ctype}_k{k}_cg{cg}_{key}"
        with self._lock:
            lock = self._building.setdefault(key, threading.Lock())
        with lock:
            if not exe.exists():
                prepared = self.folder / f"{key}.cu"
                prepared.write_text(source)
                cmd = [
                    compiler() or "g++",
                    *FLAGS,
                    f"-I{HERE}",
                    f'-DEMU_SOURCE="{prepared}"',
                    f"-DEMU_T={ctype}",
                    f"-DEMU_K={k}",
                    f"-DEMU_CG={cg}",
                    f"-DEMU_RING={ring}",
                    str(HERE / "driver.cpp"),
                    "-o",
                    f"{exe}.part",
                ]
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                if done.returncode:
                    raise RuntimeError(f"g++ failed for {exe.name}:\n{done.stderr[-6000:]}")
                Path(f"{exe}.part").replace(exe)
        return Driver(exe, ctype)

    def run(self, driver: Driver, buffers: dict[str, np.ndarray], launches: Sequence[Launch]) -> dict[str, np.ndarray]:
        """Every buffer after the launches (run in order, as on one stream); inputs are not modified."""
        dtype = NUMPY_TYPES[driver.ctype]
        names = list(buffers)
        with tempfile.TemporaryDirectory(dir=self.folder) as tmp:
            job, out = Path(tmp) / "job", Path(tmp) / "out"
            with job.open("wb") as f:
                f.write(b"FINCEMU1" + struct.pack("<III", np.dtype(dtype).itemsize, len(names), len(launches)))
                for name in names:
                    data = np.ascontiguousarray(buffers[name], dtype=dtype)
                    f.write(struct.pack("<I", len(name)) + name.encode() + struct.pack("<Q", data.size))
                    f.write(data.tobytes())
                for launch in launches:
                    f.write(_pack(launch, names))
            done = subprocess.run([str(driver.path), str(job), str(out)], capture_output=True, text=True, timeout=300)
            if done.returncode:
                raise EmulationError(f"{driver.path.name} (exit {done.returncode}):\n{done.stderr[-6000:]}")
            flat = np.fromfile(out, dtype=dtype)
        result, at = {}, 0
        for name in names:
            shape = np.shape(buffers[name])
            size = int(np.prod(shape))
            result[name] = flat[at : at + size].reshape(shape)
            at += size
        return result


def _pack(launch: Launch, names: list[str]) -> bytes:
    gx, gy = launch.grid
    slots = [names.index(b) for b in launch.buffers] + [-1] * (4 - len(launch.buffers))
    args = list(launch.args) + [0] * (5 - len(launch.args))
    return struct.pack("<iIIIQ4i5i", ENTRIES.index(launch.entry), gx, gy, launch.block, launch.shared, *slots, *args)
