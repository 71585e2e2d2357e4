"""Dequantization and the logit preprocessing flow layer (RealNVP, Dinh et al. 2017, §4.1; docs/model.md §2–3)."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from finc_cli.flows.base import Flow

__all__ = [
    "dequantize",
    "LogitPreprocess",
    "quantize",
]


def dequantize(
    x: torch.Tensor,
    bins: int,
    generator: Optional[torch.Generator] = None,
    noise: str = "uniform",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Integer images in [0, bins-1] (uint8 or integer-valued floats) -> v = (x + u) / bins ∈ [0, 1).

    noise='uniform': u ~ U[0, 1) (the training objective); noise='center': u = 1/2 (deterministic,
    for encoding: quantize(v) recovers x with a margin of 1/(2·bins) on each side).
    """
    xf = x.to(dtype)
    if noise == "uniform":
        device = generator.device if generator is not None else x.device
        u = torch.rand(x.shape, generator=generator, device=device, dtype=dtype).to(x.device)
    elif noise == "center":
        u = torch.full_like(xf, 0.5)
    else:
        raise ValueError(f"noise must be 'uniform' or 'center', got {noise!r}")
    return (xf + u) / bins


def quantize(v: torch.Tensor, bins: int) -> torch.Tensor:
    """v ∈ [0, 1) -> uint8 images floor(v·bins), clamped to [0, bins-1]."""
    return torch.floor(v * bins).clamp(0, bins - 1).to(torch.uint8)


class LogitPreprocess(Flow):
    """y = logit(α + (1 − 2α)·v) on the bin-scaled image v ∈ [0, 1); the exact per-sample log-det.

    log|dy/dv| = log(1 − 2α) − log p − log(1 − p) with p = α + (1 − 2α)·v, written with softplus
    of y for stability: −log p − log(1 − p) = softplus(y) + softplus(−y).
    """

    def __init__(self, alpha: float = 0.05):
        super().__init__()
        if not 0.0 <= alpha < 0.5:
            raise ValueError(f"alpha must be in [0, 0.5), got {alpha}")
        self.alpha = float(alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"

    def _logdet(self, y: torch.Tensor) -> torch.Tensor:
        per_dim = math.log1p(-2 * self.alpha) + F.softplus(y) + F.softplus(-y)
        return per_dim.flatten(1).sum(1)  # (B,)

    def forward(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * v
        y = torch.log(p) - torch.log1p(-p)
        return y, self._logdet(y)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = (torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)
        return v, -self._logdet(y)
