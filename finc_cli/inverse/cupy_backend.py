"""CuPy launcher for kernels/finc_inverse.cu: the FInC inverse in one launch on PyTorch's stream.

CuPy is imported on first use, so this module imports without it; `is_available` says whether
it can run. Kernels are compiled by NVRTC at run time, one template instance per (device,
dtype, k, C', entry), and cached. Tensors go to the kernels through DLPack (no copies), the
launches run on PyTorch's current stream, and nothing synchronizes the host.

Paths (`plan_launch`): "tile" (whole image in shared memory) when it fits the portable 48 KiB,
else "ring" (last anti-diagonals in shared memory, opting in to the device's larger shared
memory when needed), else "diagonal" (one launch per anti-diagonal, any size).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np
import torch

from finc_cli.errors import InverseBackendError
from finc_cli.inverse import kernel_source as ks
from finc_cli.text import first_line

__all__ = [
    "LaunchPlan",
    "cupy_inverse",
    "cupy_inverse_paper_schedule",
    "is_available",
    "INSTALL",
    "plan_launch",
    "require_cupy",
    "shared_memory_limit",
    "unavailable_reason",
]

PORTABLE_SHARED = 48 * 1024  # dynamic shared memory every CUDA device grants without opt-in
FUSED_MAX_THREADS = 1024  # FINC_MAX_BLOCK in the .cu
GRID_THREADS = 256  # FINC_GRID_BLOCK in the .cu
ITEMS_PER_BLOCK = 256  # small images are packed into one block up to about this many threads
MAX_GRID = 65535  # blocks in grid.x of the fused kernels / grid.y of the per-diagonal ones
PATHS = ("auto", "tile", "ring", "diagonal")
INSTALL = "pip install cupy-cuda13x"  # the CuPy wheel for CUDA 13, the one pyproject.toml names

_lock = threading.Lock()
_reasons: dict[int, Optional[str]] = {}  # device index -> why CuPy cannot run there (None: it can)
_kernels: dict[tuple, object] = {}
_shared_optin: dict[int, int] = {}
_optin_set: dict[tuple, int] = {}


def _import_cupy():
    import cupy

    return cupy


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _why(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    return f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__


def _probe(index: int) -> Optional[str]:
    """None when CuPy with NVRTC can use GPU `index`, else why not, in one line."""
    try:
        cupy = _import_cupy()
        from cupy.cuda import nvrtc

        nvrtc.getVersion()
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - CuPy or its CUDA libraries can fail to load in many ways: unavailable
        return _why(exc)
    return None if index < count else f"CuPy sees {count} GPU(s), none with index {index}"


def unavailable_reason(device=None) -> Optional[str]:
    """Why the cupy backend cannot run on `device` (one line), or None when it can; cached per device; never raises."""
    try:
        device = torch.device("cuda" if device is None else device)
        if device.type != "cuda":
            return f"{device} is not a CUDA device"
        if not torch.cuda.is_available():
            return "PyTorch sees no CUDA device"
        index = _device_index(device)
        if index not in _reasons:
            _reasons[index] = _probe(index)
        return _reasons[index]
    except Exception as exc:  # noqa: BLE001 - an availability check never raises
        return _why(exc)


def is_available(device=None) -> bool:
    """True for a CUDA device that CuPy (with NVRTC) can use; cached per device; never raises."""
    return unavailable_reason(device) is None


def require_cupy():
    """The cupy module, or an InverseBackendError naming the install (and why the import failed, if not missing)."""
    try:
        return _import_cupy()
    except ModuleNotFoundError as exc:
        if exc.name != "cupy":  # CuPy is there but one of its own imports is not
            raise InverseBackendError(f"the cupy inverse backend cannot import CuPy ({_why(exc)}); {INSTALL}") from None
        raise InverseBackendError(f"the cupy inverse backend needs CuPy: {INSTALL} (or use backend 'auto')") from None
    except Exception as exc:  # noqa: BLE001 - a broken install (CUDA libraries, ABI): one line saying so
        raise InverseBackendError(f"the cupy inverse backend cannot import CuPy ({_why(exc)}); {INSTALL}") from None


def _require(y: torch.Tensor):
    """CuPy, or an InverseBackendError saying in one line why it cannot run here."""
    cupy = require_cupy()
    if not y.is_cuda:
        raise InverseBackendError("the cupy inverse backend needs CUDA tensors; use backend 'wavefront' on the CPU")
    reason = unavailable_reason(y.device)
    if reason is not None:
        raise InverseBackendError(f"the cupy inverse backend cannot use {y.device} ({reason}); use backend 'wavefront'")
    if y.dtype not in (torch.float32, torch.float64):
        raise InverseBackendError(
            f"the cupy inverse backend supports float32 and float64, got {y.dtype}; use backend 'wavefront'"
        )
    return cupy


@dataclass(frozen=True)
class LaunchPlan:
    path: str  # "tile", "ring" or "diagonal"
    images_per_block: int  # fused paths: images of one group per block
    threads: int  # threads per block
    blocks: int  # fused: grid.x (grid.y = 4 groups); diagonal: grid.x (grid.y = images)
    shared_bytes: int  # dynamic shared memory per block


@lru_cache(maxsize=256)
def plan_launch(
    B: int,
    H: int,
    W: int,
    k: int,
    cg: int,
    itemsize: int,
    shared_limit: int,
    path: str = "auto",
    max_blocks: int = MAX_GRID,
) -> LaunchPlan:
    """Pick the kernel and its launch geometry for one inverse (pure; see the .cu headers)."""
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; choose one of {PATHS}")
    operator = itemsize * (cg * cg + cg * (k * k - 1) * cg)  # L⁻¹ and M in shared memory
    per_image = {"tile": itemsize * cg * H * W, "ring": itemsize * ks.ring_slots(k) * cg * H}
    if path == "auto":
        if operator + per_image["tile"] <= PORTABLE_SHARED:
            path = "tile"
        elif operator + per_image["ring"] <= shared_limit:
            path = "ring"
        else:
            path = "diagonal"
    items_per_image = min(H, W) * cg  # (pixel, channel) items on the longest anti-diagonal
    if path == "diagonal":
        blocks = -(-4 * items_per_image // GRID_THREADS)
        return LaunchPlan("diagonal", 0, GRID_THREADS, blocks, 0)
    if operator + per_image[path] > shared_limit:
        raise ValueError(
            f"the {path} kernel needs {operator + per_image[path]} B of shared memory, above {shared_limit}"
        )
    budget = PORTABLE_SHARED if operator + per_image[path] <= PORTABLE_SHARED else shared_limit
    ipb = max(1, min(B, ITEMS_PER_BLOCK // items_per_image, (budget - operator) // per_image[path]))
    threads = min(FUSED_MAX_THREADS, max(32, -(-ipb * items_per_image // 32) * 32))
    blocks = min(-(-B // ipb), max_blocks)
    return LaunchPlan(path, ipb, threads, blocks, operator + ipb * per_image[path])


def shared_memory_limit(device=None) -> int:
    """Bytes of dynamic shared memory a block may opt in to on `device` (default: the current GPU)."""
    return _shared_limit(_import_cupy(), _device_index(torch.device("cuda" if device is None else device)))


def _shared_limit(cupy, index: int) -> int:
    if index not in _shared_optin:
        _shared_optin[index] = int(cupy.cuda.Device(index).attributes["MaxSharedMemoryPerBlockOptin"])
    return _shared_optin[index]


def _kernel(cupy, index: int, dtype: torch.dtype, k: int, cg: int, kind: str):
    """The compiled entry, built on first use (NVRTC, for this device's architecture)."""
    key = (index, dtype, k, cg, kind)
    kernel = _kernels.get(key)
    if kernel is None:
        with _lock:
            kernel = _kernels.get(key)
            if kernel is None:
                name = ks.entry_name(kind, ks.ctype(dtype), k, cg)
                module = cupy.RawModule(code=ks.load_source(), options=("-std=c++17",), name_expressions=(name,))
                kernel = _kernels[key] = module.get_function(name)
    return kernel


def _allow_shared(kernel, key: tuple, nbytes: int) -> None:
    """Opt in to more than the portable dynamic shared memory (per kernel and device)."""
    if nbytes > PORTABLE_SHARED and _optin_set.get(key, 0) < nbytes:
        kernel.max_dynamic_shared_size_bytes = nbytes
        _optin_set[key] = nbytes


def _check(y: torch.Tensor, weight: torch.Tensor, out: Optional[torch.Tensor], linv: Optional[torch.Tensor]):
    if y.dim() != 4 or weight.dim() != 5 or weight.shape[0] != 4 or y.shape[1] != 4 * weight.shape[1]:
        raise ValueError(f"shapes do not match: y {tuple(y.shape)}, weight {tuple(weight.shape)}")
    for name, t in (("weight", weight), ("linv", linv), ("out", out)):
        if t is not None and (t.device != y.device or t.dtype != y.dtype):
            raise ValueError(f"{name} is {t.dtype} on {t.device}; y is {y.dtype} on {y.device}")
    if out is not None and (out.shape != y.shape or not out.is_contiguous() or out.data_ptr() == y.data_ptr()):
        raise ValueError("out must be a contiguous tensor of y's shape that does not alias y")
    if weight.shape[1] * y.shape[2] * y.shape[3] >= 2**31:
        raise InverseBackendError("the cupy inverse backend needs C/4·H·W < 2^31 per image; use backend 'wavefront'")


def _checked_output(y: torch.Tensor, weight: torch.Tensor, out: Optional[torch.Tensor], linv: Optional[torch.Tensor]):
    """The tensor x is written to (`out`, else a new one like y), once every operand has passed `_check`."""
    _check(y, weight, out, linv)
    return torch.empty_like(y) if out is None else out


class _Launch:
    """Device, stream and DLPack views for one call (the kernels run on PyTorch's current stream)."""

    def __init__(self, cupy, y: torch.Tensor):
        self.cupy, self.index = cupy, _device_index(y.device)
        self.device = cupy.cuda.Device(self.index)
        self.stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(y.device).cuda_stream, self.index)

    def __enter__(self):
        self.device.__enter__()
        self.stream.__enter__()
        return self

    def __exit__(self, *exc):
        self.stream.__exit__(*exc)
        self.device.__exit__(*exc)

    def view(self, t: torch.Tensor):
        return self.cupy.from_dlpack(t)  # on the current (PyTorch's) stream: no copy, no sync


def cupy_inverse(
    y: torch.Tensor,
    weight: torch.Tensor,
    linv: torch.Tensor,
    *,
    out: Optional[torch.Tensor] = None,
    path: str = "auto",
    max_blocks: int = MAX_GRID,
) -> torch.Tensor:
    """x with finc_conv2d(x, weight) == y (seam contract); `out` receives x when given.

    `path` forces a kernel ("tile", "ring", "diagonal") and `max_blocks` caps the fused grid
    (so tests reach the grid-stride loop); the defaults pick by size.
    """
    cupy = _require(y)
    y, weight, linv = (t.detach().contiguous() for t in (y, weight, linv))  # DLPack refuses grad tensors
    x = _checked_output(y, weight, out, linv)
    B, _, H, W = y.shape
    _, cg, _, k, _ = weight.shape
    if x.numel() == 0:
        return x
    with _Launch(cupy, y) as launch:
        plan = plan_launch(B, H, W, k, cg, y.element_size(), _shared_limit(cupy, launch.index), path, max_blocks)
        if plan.path == "diagonal":
            _solve_by_diagonals(launch, plan, y, weight, linv, x)
            return x
        args = [launch.view(t) for t in (y, weight, linv, x)]
        kernel = _kernel(cupy, launch.index, y.dtype, k, cg, plan.path)
        _allow_shared(kernel, (launch.index, y.dtype, k, cg, plan.path), plan.shared_bytes)
        scalars = [np.int32(v) for v in (B, H, W, plan.images_per_block)]
        kernel((plan.blocks, 4), (plan.threads,), (*args, *scalars), shared_mem=plan.shared_bytes)
    return x


def _solve_by_diagonals(launch: _Launch, plan: LaunchPlan, y, weight, linv, x) -> None:
    """Fallback: M = L⁻¹·W_off once, then one launch per anti-diagonal."""
    B, _, H, W = y.shape
    _, cg, _, k, _ = weight.shape
    cupy, index = launch.cupy, launch.index
    # (4, C', k²−1, C'); torch's allocator is stream-ordered on this (current) stream.
    m = torch.empty(max(1, 4 * cg * (k * k - 1) * cg), dtype=y.dtype, device=y.device)
    yc, wc, lc, mc, xc = (launch.view(t) for t in (y, weight, linv, m, x))
    if k > 1:
        prepare = _kernel(cupy, index, y.dtype, k, cg, "prepare")
        prepare((-(-m.numel() // GRID_THREADS),), (GRID_THREADS,), (wc, lc, mc))
    step = _kernel(cupy, index, y.dtype, k, cg, "diagonal")
    grid = (plan.blocks, min(B, MAX_GRID))
    for d in range(H + W - 1):
        step(grid, (GRID_THREADS,), (yc, mc, lc, xc, np.int32(B), np.int32(H), np.int32(W), np.int32(d)))


def cupy_inverse_paper_schedule(
    y: torch.Tensor, weight: torch.Tensor, linv: torch.Tensor, *, out: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """The paper's GPU schedule (one launch per anti-diagonal and channel), for benchmarks only."""
    del linv  # the paper substitutes channel by channel with the centre taps themselves
    cupy = _require(y)
    y, weight = y.detach().contiguous(), weight.detach().contiguous()
    x = _checked_output(y, weight, out, None)
    B, _, H, W = y.shape
    _, cg, _, k, _ = weight.shape
    if x.numel() == 0:
        return x
    with _Launch(cupy, y) as launch:
        yc, wc, xc = (launch.view(t) for t in (y, weight, x))
        step = _kernel(cupy, launch.index, y.dtype, k, cg, "paper_step")
        grid = (-(-4 * min(H, W) // GRID_THREADS), min(B, MAX_GRID))
        for d in range(H + W - 1):
            for c in range(cg):
                step(grid, (GRID_THREADS,), (yc, wc, xc, *(np.int32(v) for v in (B, H, W, d, c))))
    return x
