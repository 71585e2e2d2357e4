"""Compiled CPU inverse of the FInC unit: csrc/finc_inverse_cpu.c, built on first use, loaded by ctypes.

The C file is compiled with the system C compiler ($CC, else cc, gcc or clang) into a per-user
cache ($FINC_CACHE_DIR, else ~/.cache/finc), named by a hash of the source, the flags, the
compiler's version and, because of -march=native, the host CPU. Without a working compiler
`is_available` is False and the seam falls back to the wavefront backend.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional

import torch

from finc_cli.errors import InverseBackendError

__all__ = [
    "cache_dir",
    "CACHE_ENV",
    "clear_cache",
    "is_available",
    "library",
    "native_inverse",
    "SOURCE",
]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "finc_inverse_cpu.c"
CACHE_ENV = "FINC_CACHE_DIR"
_BASE_FLAGS = ("-O3", "-shared", "-fPIC")
# Tried in order until one builds and loads; the last one needs only a C99 compiler.
_FLAG_VARIANTS = (("-march=native", "-fopenmp"), ("-fopenmp",), ())

_lock = threading.Lock()
_state: dict = {}  # "lib": ctypes.CDLL, or "error": str once a build has failed


def clear_cache() -> None:
    """Forget the loaded library (or the failure), so the next use builds or loads again."""
    with _lock:
        _state.clear()


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "finc")


def _compiler() -> Optional[list[str]]:
    """The compiler command line: $CC as given (even when it does not exist), else the first found."""
    cc = os.environ.get("CC")
    if cc:
        return shlex.split(cc)
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    return None


def _compiler_version(cc: list[str]) -> Optional[str]:
    try:
        done = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _host_cpu() -> str:
    """What -march=native depends on: the CPU model and feature flags (Linux), else the platform."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    keys = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line.strip() for line in text.splitlines() if line.split(":")[0].strip() in keys}))


def _library_path(cc: list[str], version: str, flags: tuple) -> Path:
    digest = hashlib.sha256()
    for part in (
        SOURCE.read_bytes(),
        " ".join(cc).encode(),
        version.encode(),
        " ".join(flags).encode(),
        platform.machine().encode(),
        _host_cpu().encode() if "-march=native" in flags else b"",
    ):
        digest.update(part + b"\0")
    return cache_dir() / f"finc_inverse_cpu-{digest.hexdigest()[:20]}.so"


def _compile(cc: list[str], flags: tuple, target: Path) -> None:
    """Compile to a temporary name next to the target, then rename: concurrent builders are safe."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp.so", dir=target.parent)
    os.close(fd)
    try:
        cmd = [*cc, *_BASE_FLAGS, *flags, str(SOURCE), "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise OSError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    sizes = [ctypes.c_int64] * 6
    for name in ("finc_inverse_f32", "finc_inverse_f64"):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_void_p] * 4 + sizes
        fn.restype = ctypes.c_int
    lib.finc_inverse_openmp.restype = ctypes.c_int
    return lib


def _build() -> ctypes.CDLL:
    if not SOURCE.is_file():
        raise OSError(f"missing C source {SOURCE}")
    cc = _compiler()
    if cc is None:
        raise OSError("no C compiler found (set $CC, or install cc/gcc/clang)")
    version = _compiler_version(cc)
    if version is None:
        raise OSError(f"C compiler {' '.join(cc)!r} does not run")
    errors = []
    for flags in _FLAG_VARIANTS:
        path = _library_path(cc, version, flags)
        try:
            if path.is_file():
                try:
                    return _load(path)
                except OSError:  # a damaged cache entry: build it again
                    pass
            _compile(cc, flags, path)
            return _load(path)
        except (OSError, subprocess.SubprocessError) as exc:
            errors.append(str(exc))
    raise OSError("; ".join(errors))


def library() -> Optional[ctypes.CDLL]:
    """The loaded library, building it on first use; None (and one debug message) when impossible."""
    lib = _state.get("lib")
    if lib is not None or "error" in _state:
        return lib
    with _lock:
        if "lib" not in _state and "error" not in _state:
            try:
                _state["lib"] = _build()
            except Exception as exc:  # noqa: BLE001 - never raise from an availability probe
                _state["error"] = str(exc)
                log.debug("native FInC inverse unavailable, falling back: %s", exc)
        return _state.get("lib")


def is_available(device=None) -> bool:
    """True for CPU devices once the C library has built and loaded."""
    if device is not None and torch.device(device).type != "cpu":
        return False
    return library() is not None


def native_inverse(y: torch.Tensor, weight: torch.Tensor, linv: torch.Tensor) -> torch.Tensor:
    """The seam's `fn(y, weight, linv) -> x` (problem in `finc_cli.inverse`), float32/float64 in C."""
    lib = library()
    if lib is None:
        raise InverseBackendError(
            f"the native inverse backend is unavailable ({_state.get('error')}); use backend 'wavefront'"
        )
    if y.dtype not in (torch.float32, torch.float64):  # e.g. half: solve in float32
        return native_inverse(y.float(), weight.float(), linv.float()).to(y.dtype)
    B, C, H, W = y.shape
    G, Cg, _, k, _ = weight.shape
    assert G == 4 and C == 4 * Cg and weight.shape == (4, Cg, Cg, k, k) and linv.shape == (4, Cg, Cg)
    assert y.device.type == "cpu", "the native inverse runs on CPU tensors"
    y, weight, linv = y.contiguous(), weight.to(y.dtype).contiguous(), linv.to(y.dtype).contiguous()
    x = torch.empty_like(y)
    if y.numel() == 0:
        return x
    fn = lib.finc_inverse_f32 if y.dtype == torch.float32 else lib.finc_inverse_f64
    status = fn(y.data_ptr(), weight.data_ptr(), linv.data_ptr(), x.data_ptr(), B, Cg, H, W, k, torch.get_num_threads())
    if status != 0:
        raise MemoryError("native FInC inverse could not allocate its scratch memory")
    return x
