"""Device resolution shared by every command."""

from __future__ import annotations

import torch

from finc_cli.errors import InputError
from finc_cli.runtime.precision import use_exact_float32

__all__ = ["resolve_device"]


def resolve_device(name: str = "auto"):
    """'auto' -> cuda when available else cpu; asking for cuda without one is a clear error."""

    device = _parse(name)
    if device.type == "cuda":
        use_exact_float32()  # docs/inverse.md, "Precision on the GPU"
    return device


def _parse(name: str):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
