"""Exact float32 on CUDA: cuDNN convolutions without TF32 (docs/inverse.md, "Precision on the GPU")."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["exact_float32_convs", "use_exact_float32"]


@contextlib.contextmanager
def exact_float32_convs() -> Iterator[None]:
    """cuDNN convolutions in full float32 inside the block (TF32 off), the previous setting after.

    On Ampere and later GPUs PyTorch lets cuDNN run float32 convolutions in TF32 (10 mantissa
    bits) by default; the FInC unit's forward must be exact for its inverse to undo it. No effect
    on the CPU.
    """
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous


def use_exact_float32() -> None:
    """TF32 off for every cuDNN convolution and matmul of this process (the couplings too, until TF32 is
    measured to help them)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
