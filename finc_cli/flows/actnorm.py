"""ActNorm: per-channel affine map with data-dependent initialisation (Kingma & Dhariwal 2018, Glow §3.1)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from finc_cli.flows.base import Flow

__all__ = [
    "ActNorm",
]


class ActNorm(Flow):
    """y = (x + bias) · exp(log_scale), per channel; log-det = H·W·Σ log|scale|.

    The first forward in training mode sets bias and scale so that the output has zero mean and
    unit variance per channel over batch×H×W. The "initialized" flag is a buffer, so it travels
    with the state dict: a reloaded checkpoint never re-initialises. Under torch.distributed the
    statistics are all-reduced (sums and counts), so every rank gets identical parameters.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.channels, self.eps = channels, eps
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))  # (1, C, 1, 1)
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))  # (1, C, 1, 1), log|scale|
        self.register_buffer("initialized", torch.tensor(False))

    def extra_repr(self) -> str:
        return f"channels={self.channels}"

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set bias = -mean and scale = 1/std per channel from x (all ranks pooled)."""
        xd = x.detach().to(torch.float64).transpose(0, 1).reshape(self.channels, -1)  # (C, B·H·W)
        count = torch.full((1,), float(xd.shape[1]), dtype=torch.float64, device=x.device)
        stats = torch.cat([xd.sum(1), (xd * xd).sum(1), count])  # (2C + 1,)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)  # sums and counts over ranks
        s, s2, n = stats[: self.channels], stats[self.channels : -1], stats[-1]
        mean = s / n
        std = (s2 / n - mean * mean).clamp_min(0.0).sqrt()
        self.bias.copy_((-mean).view(1, -1, 1, 1))
        self.log_scale.copy_((-torch.log(std + self.eps)).view(1, -1, 1, 1))
        self.initialized.fill_(True)

    def _logdet(self, x: torch.Tensor) -> torch.Tensor:
        hw = x.shape[2] * x.shape[3]
        return (hw * self.log_scale.sum()).to(x.dtype).expand(x.shape[0])  # (B,)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not bool(self.initialized):
            self.initialize(x)
        y = (x + self.bias) * torch.exp(self.log_scale)
        return y, self._logdet(x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = y * torch.exp(-self.log_scale) - self.bias
        return x, -self._logdet(y)
