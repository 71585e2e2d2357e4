"""ActNorm: per-channel affine map with data-dependent initialisation (Kingma & Dhariwal 2018, Glow §3.1)."""

from __future__ import annotations

from typing import Optional

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

    The forward reads a host copy of the flag (`_ready`), set on initialisation and on loading a
    state dict (`.to()` leaves the buffer's value as it is), so a training step on a GPU does not
    wait for the device to send a flag back. Until one of those has happened the copy is unknown
    and the first training forward reads the buffer once (a caller may have written it directly).
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.channels, self.eps = channels, eps
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))  # (1, C, 1, 1)
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))  # (1, C, 1, 1), log|scale|
        self.register_buffer("initialized", torch.tensor(False))
        self._ready: Optional[bool] = None  # the buffer's value on the host; None: not known yet

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
        self._ready = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        flag = state_dict.get(prefix + "initialized")
        if flag is not None:
            self._ready = bool(flag)  # one host read per load, not per forward

    def _logdet(self, x: torch.Tensor) -> torch.Tensor:
        hw = x.shape[2] * x.shape[3]
        return (hw * self.log_scale.sum()).to(x.dtype).expand(x.shape[0])  # (B,)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not self._ready:
            if self._ready is None:
                self._ready = bool(self.initialized)  # once per layer, not once per step
            if not self._ready:
                self.initialize(x)
        y = (x + self.bias) * torch.exp(self.log_scale)
        return y, self._logdet(x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = y * torch.exp(-self.log_scale) - self.bias
        return x, -self._logdet(y)
