"""The CUDA sources in kernels/: where they are, how they are read, and the entries they export."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import torch

__all__ = [
    "ctype",
    "entry_name",
    "entry_names",
    "INVERSE_KINDS",
    "INVERSE_SOURCE",
    "kernel_dir",
    "KERNEL_DIRS",
    "kernel_files",
    "load_source",
    "ring_slots",
]

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # finc_cli/

# Installed wheel: finc_cli/kernels/; source checkout: kernels/ beside finc_cli/.
KERNEL_DIRS = (_PACKAGE_ROOT / "kernels", _PACKAGE_ROOT.parent / "kernels")

INVERSE_SOURCE = "finc_inverse.cu"

# Entry templates of finc_inverse.cu, each instantiated as <T, K, CG> (the ring adds RING).
INVERSE_KINDS = ("tile", "ring", "prepare", "diagonal", "paper_step")

_CTYPES = {torch.float32: "float", torch.float64: "double"}


def kernel_dir() -> Path:
    """The first of KERNEL_DIRS that holds .cu files."""
    for folder in KERNEL_DIRS:
        if folder.is_dir() and any(folder.glob("*.cu")):
            return folder
    raise FileNotFoundError("no CUDA kernel sources found; looked in " + " and ".join(str(d) for d in KERNEL_DIRS))


def kernel_files() -> list[Path]:
    return sorted(kernel_dir().glob("*.cu"))


def load_source(name: str = INVERSE_SOURCE, defines: Optional[Mapping[str, object]] = None) -> str:
    """The file's text with `#define`s first, then `#line 1 "name"` so compiler messages point into it."""
    text = (kernel_dir() / name).read_text()
    head = [f"#define {key} {value}" for key, value in (defines or {}).items()]
    return "\n".join(head + [f'#line 1 "{name}"', text])


def ctype(dtype: torch.dtype) -> str:
    """The C type of a supported torch dtype (KeyError otherwise)."""
    return _CTYPES[dtype]


def ring_slots(k: int) -> int:
    """Anti-diagonals kept by finc_inverse_ring: a power of two >= 2k - 1 (a tap reaches back 2k - 2)."""
    slots = 1
    while slots < 2 * k - 1:
        slots *= 2
    return slots


def entry_name(kind: str, c_type: str, k: int, cg: int) -> str:
    """The NVRTC name expression of one entry, e.g. 'finc_inverse_tile<float, 3, 3>'."""
    if kind == "ring":
        return f"finc_inverse_ring<{c_type}, {k}, {cg}, {ring_slots(k)}>"
    function = "finc_paper_step" if kind == "paper_step" else f"finc_inverse_{kind}"
    return f"{function}<{c_type}, {k}, {cg}>"


def entry_names(c_type: str, k: int, cg: int, kinds=INVERSE_KINDS) -> list[str]:
    """Every entry of `kinds` for one shape; `prepare` has nothing to do (and is skipped) when k = 1."""
    return [entry_name(kind, c_type, k, cg) for kind in kinds if not (kind == "prepare" and k == 1)]
