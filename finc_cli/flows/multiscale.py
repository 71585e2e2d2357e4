"""Multi-scale plumbing: 2×2 squeeze and the split with a learned conditional Gaussian prior (RealNVP; Glow)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from finc_cli.flows.base import Flow, zeros_logdet

__all__ = [
    "ClassPrior",
    "gaussian_log_prob",
    "SplitPrior",
    "Squeeze",
    "standard_normal",
]

_LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(
    z: torch.Tensor, mean: Optional[torch.Tensor] = None, log_std: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """(B,) Σ log N(z; mean, exp(log_std)²) over all but the batch dimension (standard normal by default)."""
    if mean is None:
        return (-0.5 * (_LOG_2PI + z * z)).flatten(1).sum(1)
    eps = (z - mean) * torch.exp(-log_std)
    return (-0.5 * (_LOG_2PI + eps * eps) - log_std).flatten(1).sum(1)


class Squeeze(Flow):
    """2×2 space-to-depth: (B, C, H, W) -> (B, 4C, H/2, W/2); out channel c·4 + 2·dy + dx; log-det 0."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze needs even H and W, got shape {tuple(x.shape)}")
        y = x.reshape(b, c, h // 2, 2, w // 2, 2)  # (B, C, H/2, dy, W/2, dx)
        y = y.permute(0, 1, 3, 5, 2, 4)  # (B, C, dy, dx, H/2, W/2)
        return y.reshape(b, 4 * c, h // 2, w // 2), zeros_logdet(x)  # (B, 4C, H/2, W/2)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c4, h, w = y.shape
        c = c4 // 4
        x = y.reshape(b, c, 2, 2, h, w)  # (B, C, dy, dx, H/2, W/2)
        x = x.permute(0, 1, 4, 2, 5, 3)  # (B, C, H/2, dy, W/2, dx)
        return x.reshape(b, c, 2 * h, 2 * w), zeros_logdet(y)  # (B, C, H, W)


class ClassPrior(nn.Module):
    """A per-class shift of a Gaussian prior's (mean, log_std): one value per channel (Glow's `ycond`), or
    with `size` (H, W) one per channel and position (`model.class_prior: spatial`, docs/model.md §14).

    The linear map of a one-hot y to 2·C (or 2·C·H·W) numbers, stored as its (num_classes, 2·C·H·W)
    weight matrix and applied as a row lookup; zero-initialised (no random draw), so a conditional
    prior starts as the unconditional one. forward(y (B,) int64) -> (mean, log_std), each (B, C, 1, 1)
    per channel, (B, C, H, W) per position.
    """

    def __init__(self, num_classes: int, channels: int, size: Optional[tuple[int, int]] = None):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"ClassPrior needs at least one class, got {num_classes}")
        self.num_classes, self.channels = num_classes, channels
        self.size = (1, 1) if size is None else (int(size[0]), int(size[1]))
        self.weight = nn.Parameter(torch.zeros(num_classes, 2 * channels * self.size[0] * self.size[1]))

    def extra_repr(self) -> str:
        where = "" if self.size == (1, 1) else f", size={self.size}"
        return f"num_classes={self.num_classes}, channels={self.channels}{where}"

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift = self.weight[y.to(self.weight.device, torch.long)]  # (B, 2C·H·W): one-hot(y) @ weight
        return shift.reshape(-1, 2 * self.channels, *self.size).chunk(2, dim=1)


class SplitPrior(nn.Module):
    """Factor out half the channels: z = h[:, keep:] ~ N(mean, exp(log_std)²), (mean, log_std) = conv3×3(h_keep).

    Not a bijection in the contract's sense: forward(h, y) -> (h_keep, z, log_pz (B,)) and
    inverse(h_keep, z=None, temperature, generator, y) -> h, sampling z = mean + T·std·ε when z is None.
    The conv is zero-initialised, so the prior starts as N(0, I). With `num_classes` > 0 the prior is
    class-conditional: a `ClassPrior` term of the class y is added to (mean, log_std), per channel, or
    per channel and position of a z of spatial size `class_size` (H, W) (docs/model.md §14).
    """

    def __init__(self, channels: int, num_classes: int = 0, class_size: Optional[tuple[int, int]] = None):
        super().__init__()
        if channels < 2:
            raise ValueError(f"SplitPrior needs at least 2 channels, got {channels}")
        self.channels = channels
        self.keep = channels - channels // 2
        self.z_channels = channels // 2
        self.conv = nn.Conv2d(self.keep, 2 * self.z_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.class_prior = ClassPrior(num_classes, self.z_channels, class_size) if num_classes else None

    def extra_repr(self) -> str:
        return f"channels={self.channels}, keep={self.keep}"

    def prior(self, h_keep: torch.Tensor, y: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_std), each (B, C_z, H, W); plus the class term of y (B,) on a class-conditional prior."""
        return self.add_class(*self.base(h_keep), y)

    def base(self, h_keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_std) from h_keep alone, before any class term."""
        mean, log_std = self.conv(h_keep).chunk(2, dim=1)
        return mean, log_std

    def add_class(
        self, mean: torch.Tensor, log_std: torch.Tensor, y: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_std) with the class term of y (B,) added; unchanged on a prior that is not class-conditional."""
        if self.class_prior is None:
            return mean, log_std
        if y is None:
            raise ValueError("a class-conditional split prior needs the class y")
        class_mean, class_log_std = self.class_prior(y)
        return mean + class_mean, log_std + class_log_std

    def forward(
        self, h: torch.Tensor, y: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h_keep, z = h[:, : self.keep], h[:, self.keep :]  # (B, C_keep, H, W), (B, C_z, H, W)
        mean, log_std = self.prior(h_keep, y)
        return h_keep, z, gaussian_log_prob(z, mean, log_std)

    def inverse(
        self,
        h_keep: torch.Tensor,
        z: Optional[torch.Tensor] = None,
        temperature: float = 1.0,
        generator: Optional[torch.Generator] = None,
        y: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if z is None:
            mean, log_std = self.prior(h_keep, y)
            eps = standard_normal(mean.shape, h_keep, generator)
            z = mean + temperature * torch.exp(log_std) * eps
        return torch.cat([h_keep, z.to(h_keep.dtype)], dim=1)  # (B, C, H, W)


def standard_normal(shape, like: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """N(0, I) noise of `shape` in like's dtype and device, drawn from generator (on its own device)."""
    device = generator.device if generator is not None else like.device
    eps = torch.randn(tuple(shape), generator=generator, device=device, dtype=like.dtype)
    return eps.to(like.device)
