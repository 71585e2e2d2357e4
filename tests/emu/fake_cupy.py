"""A stand-in for the part of CuPy that finc_cli.inverse.cupy_backend uses, running the kernels in the emulator.

`RawModule` builds the emulator's driver around the very source text the backend passes (what
NVRTC would compile); kernel calls are checked as the CUDA driver would check them (argument
types, launch bounds, grid limits, dynamic shared memory against the kernel's opt-in) and queued
on the current stream; leaving the stream's `with` block runs the queue in one driver process
and copies the buffers back into the tensors. Works on CPU tensors (the backend's CUDA checks
are bypassed by the test).
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import torch

from finc_cli.inverse import kernel_source as ks

from .emulator import Driver, Emulator, Launch

PORTABLE_SHARED = 48 * 1024  # a kernel's dynamic shared memory before it opts in
_NAME = re.compile(
    r"(finc_inverse_tile|finc_inverse_ring|finc_inverse_prepare|finc_inverse_diagonal|finc_paper_step)"
    r"<(float|double), (\d+), (\d+)(?:, (\d+))?>"
)
# Pointer operands (in order) and int operands of each entry, as in kernels/finc_inverse.cu.
SIGNATURES = {
    "tile": (("y", "weight", "linv", "x"), 4),
    "ring": (("y", "weight", "linv", "x"), 4),
    "prepare": (("weight", "linv", "m"), 0),
    "diagonal": (("y", "m", "linv", "x"), 4),
    "paper_step": (("y", "weight", "x"), 5),
}
BOUNDS = {"tile": 1024, "ring": 1024, "prepare": 256, "diagonal": 256, "paper_step": 256}  # __launch_bounds__
DTYPES = {"float": torch.float32, "double": torch.float64}


class FakeCupy:
    """Module-like: `RawModule`, `from_dlpack`, `cuda.Device`, `cuda.ExternalStream`."""

    def __init__(self, emulator: Emulator, optin_shared: int = 227 * 1024):
        self.emulator = emulator
        self.optin_shared = optin_shared  # the device's MaxSharedMemoryPerBlockOptin
        self.launches: list[Launch] = []  # every launch run, in order
        self.sources: list[str] = []  # the code of every RawModule
        self._streams: list[_Stream] = []
        fake = self

        class Device:
            def __init__(self, index: int = 0):
                self.attributes = {"MaxSharedMemoryPerBlockOptin": fake.optin_shared}

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        def external_stream(ptr, device_id=-1):
            return _Stream(fake)

        self.cuda = SimpleNamespace(Device=Device, ExternalStream=external_stream)

    def RawModule(self, code: str, options=(), name_expressions=()):  # noqa: N802 (CuPy's name)
        self.sources.append(code)
        return _Module(self, code, tuple(name_expressions))

    def from_dlpack(self, tensor: torch.Tensor) -> _Array:
        assert self._streams, "from_dlpack outside the stream's with block"
        return _Array(tensor)


class _Array:
    """A device array: the tensor it views (no copy, as DLPack)."""

    def __init__(self, tensor: torch.Tensor):
        assert tensor.is_contiguous()
        self.tensor = tensor


class _Module:
    def __init__(self, fake: FakeCupy, code: str, names: tuple[str, ...]):
        self.fake, self.code, self.names = fake, code, names

    def get_function(self, name: str) -> _Kernel:
        assert name in self.names, f"{name} is not one of the module's name expressions {self.names}"
        match = _NAME.fullmatch(name)
        assert match, f"unexpected entry {name}"
        function, ctype, k, cg, ring = match.groups()
        entry = function.replace("finc_inverse_", "").replace("finc_", "")
        ring = int(ring) if ring else ks.ring_slots(int(k))  # one driver holds every entry of <T, k, C'>
        driver = self.fake.emulator.build(self.code, ctype, int(k), int(cg), ring)
        return _Kernel(self.fake, entry, driver)


class _Kernel:
    def __init__(self, fake: FakeCupy, entry: str, driver: Driver):
        self.fake, self.entry, self.driver = fake, entry, driver
        self._max_shared = PORTABLE_SHARED

    @property
    def max_dynamic_shared_size_bytes(self) -> int:
        return self._max_shared

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, nbytes: int) -> None:
        assert nbytes <= self.fake.optin_shared, f"{nbytes} B is above the device's opt-in limit"
        self._max_shared = nbytes

    def __call__(self, grid, block, args, shared_mem: int = 0) -> None:
        assert self.fake._streams, "a launch outside the stream's with block"
        pointers, ints = SIGNATURES[self.entry]
        assert len(args) == len(pointers) + ints, f"{self.entry}: {len(args)} arguments"
        dtype = DTYPES[self.driver.ctype]
        for a in args[: len(pointers)]:
            assert isinstance(a, _Array) and a.tensor.dtype == dtype, f"{self.entry}: pointer operand {a!r}"
        assert all(type(a) is np.int32 for a in args[len(pointers) :]), f"{self.entry}: ints must be np.int32"
        grid = tuple(grid) + (1,) * (2 - len(grid))
        assert len(grid) == 2 and len(block) == 1, (grid, block)
        assert 1 <= block[0] <= BOUNDS[self.entry], f"{self.entry}: {block[0]} threads"
        assert shared_mem <= self._max_shared, f"{self.entry}: {shared_mem} B of shared memory without opting in"
        self.fake._streams[-1].queue(self, grid, block[0], args[: len(pointers)], args[len(pointers) :], shared_mem)


class _Stream:
    """PyTorch's stream: launches queue up and run, in order, when the with block ends."""

    def __init__(self, fake: FakeCupy):
        self.fake = fake
        self.pending: list[tuple] = []

    def __enter__(self):
        self.fake._streams.append(self)
        return self

    def __exit__(self, *exc):
        self.fake._streams.pop()
        if exc[0] is None and self.pending:
            self.flush()
        return False

    def queue(self, kernel: _Kernel, grid, block, arrays, ints, shared) -> None:
        self.pending.append((kernel, grid, block, arrays, tuple(int(i) for i in ints), shared))

    def flush(self) -> None:
        drivers = {kernel.driver for kernel, *_ in self.pending}
        assert len(drivers) == 1, "one unit's launches use the entries of one instantiation"
        tensors: dict[int, tuple[str, torch.Tensor]] = {}  # data_ptr -> (buffer name, tensor)
        launches = []
        for kernel, grid, block, arrays, ints, shared in self.pending:
            roles = SIGNATURES[kernel.entry][0]
            names = []
            for role, array in zip(roles, arrays):
                name, _ = tensors.setdefault(array.tensor.data_ptr(), (f"{role}{len(tensors)}", array.tensor))
                names.append(name)
            launches.append(Launch(kernel.entry, grid, block, tuple(names), ints, shared))
        buffers = {name: t.numpy() for name, t in tensors.values()}
        out = self.fake.emulator.run(drivers.pop(), buffers, launches)
        for name, t in tensors.values():
            t.copy_(torch.from_numpy(out[name]).view_as(t))
        self.fake.launches += launches
        self.pending.clear()
