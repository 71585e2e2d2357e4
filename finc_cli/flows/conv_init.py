"""The one initialisation rule shared by every invertible k×k convolution (FInC, Emerging, CInC)."""

from __future__ import annotations

import math

import torch

__all__ = ["conv_init_scale", "draw_conv_weight"]


def conv_init_scale(fan_in: int, kernel_size: int) -> float:
    """Std of the raw weight: 0.1 / sqrt(fan_in · k²), with fan_in the input channels one output reads.

    Small off-centre taps keep each triangular solve well conditioned at init (docs/finc_unit.md §6),
    and one rule for every convolution keeps `finc compare` fair (docs/model.md §10). The centre
    diagonal is fixed to 1 on top of this, so every convolution starts near the identity.
    """
    return 0.1 / math.sqrt(fan_in * kernel_size * kernel_size)


def draw_conv_weight(weight: torch.Tensor, scale: float) -> None:
    """Fill a raw convolution weight in place with N(0, scale²) draws from the global RNG."""
    with torch.no_grad():
        weight.normal_(0.0, scale)
