"""AffineCoupling: Glow's coupling, affine with a tanh-bounded log-scale or additive (Kingma & Dhariwal 2018, §3.3)."""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import nn

from finc_cli.flows.base import Flow, zeros_logdet

__all__ = [
    "AffineCoupling",
]


class AffineCoupling(Flow):
    """x = (x_a, x_b) split on channels; y_a = x_a, y_b = x_b · exp(log_s) + shift (affine) or x_b + shift (additive).

    (shift, raw) = NN(x_a) with NN = conv3×3 → ReLU → conv1×1 → ReLU → zero-initialised conv3×3,
    so the layer starts as the identity; log_s = m · tanh(raw / m) keeps |log_s| < m = max_log_scale.
    With `additive` the network outputs the shift alone (C_b channels, not 2·C_b) and the log-det is 0,
    Glow's additive coupling; `max_log_scale` is then unused.
    Setting `autocast_dtype` (e.g. torch.bfloat16) runs only the conditioner under autocast; its
    output is cast back to float32 (or x's dtype if wider) before log-scales and log-dets.
    """

    def __init__(self, channels: int, hidden: int, max_log_scale: float = 2.0, additive: bool = False):
        super().__init__()
        if channels < 2:
            raise ValueError(f"AffineCoupling needs at least 2 channels, got {channels}")
        self.channels, self.hidden, self.max_log_scale = channels, hidden, float(max_log_scale)
        self.additive = bool(additive)
        self.split_at = channels // 2  # x_a = x[:, :split_at] conditions x_b = x[:, split_at:]
        c_a, c_b = self.split_at, channels - self.split_at
        self.net = nn.Sequential(
            nn.Conv2d(c_a, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, c_b if self.additive else 2 * c_b, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.autocast_dtype: Optional[torch.dtype] = None

    def extra_repr(self) -> str:
        if self.additive:
            return f"channels={self.channels}, hidden={self.hidden}, additive=True"
        return f"channels={self.channels}, hidden={self.hidden}, max_log_scale={self.max_log_scale}"

    def _net(self, x_a: torch.Tensor) -> torch.Tensor:
        """NN(x_a): (B, C_b or 2·C_b, H, W) in float32 or x_a's dtype if wider."""
        out_dtype = torch.promote_types(torch.float32, x_a.dtype)
        ctx = (
            torch.autocast(device_type=x_a.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with ctx:
            h = self.net(x_a)
        return h.to(out_dtype)

    def conditioner(self, x_a: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(shift, log_s), each (B, C_b, H, W), in float32 or x_a's dtype if wider; log_s is None when additive."""
        h = self._net(x_a)
        if self.additive:
            return h, None
        shift, raw = h.chunk(2, dim=1)  # (B, C_b, H, W) each
        m = self.max_log_scale
        return shift, m * torch.tanh(raw / m)

    def _logdet(self, log_s: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        return zeros_logdet(like) if log_s is None else log_s.flatten(1).sum(1).to(like.dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_a, x_b = x[:, : self.split_at], x[:, self.split_at :]  # (B, C_a, H, W), (B, C_b, H, W)
        shift, log_s = self.conditioner(x_a)
        y_b = x_b + shift if log_s is None else x_b * torch.exp(log_s) + shift
        return torch.cat([x_a, y_b.to(x.dtype)], dim=1), self._logdet(log_s, x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y_a, y_b = y[:, : self.split_at], y[:, self.split_at :]  # (B, C_a, H, W), (B, C_b, H, W)
        shift, log_s = self.conditioner(y_a)
        x_b = y_b - shift if log_s is None else (y_b - shift) * torch.exp(-log_s)
        return torch.cat([y_a, x_b.to(y.dtype)], dim=1), -self._logdet(log_s, y)

    def rebuild(self, y: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """([x_a, x_b], y', log-det') for `train.memory: invert` (flows/memory.py `rebuild`).

        x_a = y_a needs no inverse, so one conditioner pass with grad serves both the inverse (its
        values, detached) and the recomputed forward: a layer rebuilt costs one conditioner pass, not two.
        """
        x_a = y[:, : self.split_at].detach().requires_grad_()  # (B, C_a, H, W)
        shift, log_s = self.conditioner(x_a)
        y_b = y[:, self.split_at :]
        with torch.no_grad():
            x_b = (y_b - shift if log_s is None else (y_b - shift) * torch.exp(-log_s)).to(y.dtype)  # (B, C_b, H, W)
        x_b.requires_grad_()
        y_b = x_b + shift if log_s is None else x_b * torch.exp(log_s) + shift
        return [x_a, x_b], torch.cat([x_a, y_b.to(y.dtype)], dim=1), self._logdet(log_s, y)
