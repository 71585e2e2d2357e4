"""The one contract every invertible layer obeys (sign convention of the log-det written once)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "Flow",
    "zeros_logdet",
]


class Flow(nn.Module):
    """An invertible map y = f(x).

    forward(x)  -> (y, logdet) with logdet = log|det ∂y/∂x|, one value per sample, shape (B,).
    inverse(y)  -> (x, logdet) with logdet = log|det ∂x/∂y| = -(forward logdet at that x).

    Composites sum log-dets in forward order and invert in reverse order.
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


def zeros_logdet(x: torch.Tensor) -> torch.Tensor:
    """A (B,) zero log-det in x's dtype and device."""
    return x.new_zeros(x.shape[0])
