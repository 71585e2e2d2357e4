"""Variational dequantization: a conditional flow q(u | x) for the noise inside each bin (Ho et al. 2019, Flow++ §3.1).

The model is trained on x + u with u ∈ (0, 1)^D drawn from q(u | x) instead of U[0, 1)^D. Since
P(x) = ∫ p(x + u) du = E_q[p(x + u) / q(u | x)], Jensen's inequality gives the bound
-log P(x) ≤ E_q[-log p(x + u) + log q(u | x)], which is tight when q(u | x) = p(x + u) / P(x): the
better q matches the model's density inside the bins, the closer the single-sample bound is to the
exact discrete likelihood (docs/model.md §2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VariationalDequantizer", "checkerboard"]

_EPS = 1e-6  # keeps logit(noise) finite: uniform draws are clamped into [_EPS, 1 - _EPS]


def checkerboard(h: int, w: int, parity: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(1, 1, H, W) mask with 1 where (i + j) % 2 == parity: the half of the pixels a coupling keeps."""
    i = torch.arange(h, device=device).view(h, 1)
    j = torch.arange(w, device=device).view(1, w)
    return ((i + j) % 2 == parity).to(dtype).view(1, 1, h, w)


class _CheckerboardCoupling(nn.Module):
    """y = m·ε + (1 − m)·(ε·exp(log_s) + t), with (t, log_s) = NN(m·ε, context); log-det Σ (1 − m)·log_s.

    The network's last convolution starts at zero, so the coupling starts as the identity.
    """

    def __init__(self, channels: int, context: int, hidden: int, parity: int, max_log_scale: float):
        super().__init__()
        self.parity, self.max_log_scale = parity, float(max_log_scale)
        self.net = nn.Sequential(
            nn.Conv2d(channels + context, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, 2 * channels, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, eps: torch.Tensor, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, h, w = eps.shape
        m = checkerboard(h, w, self.parity, eps.device, eps.dtype)  # (1, 1, H, W)
        shift, raw = self.net(torch.cat([eps * m, ctx], 1)).chunk(2, 1)  # (B, C, H, W) each
        log_s = self.max_log_scale * torch.tanh(raw / self.max_log_scale) * (1 - m)
        y = eps * m + (1 - m) * (eps * torch.exp(log_s) + shift)
        return y, log_s.flatten(1).sum(1)


class VariationalDequantizer(nn.Module):
    """q(u | x): u = sigmoid(f(ε; x)) with ε ~ Logistic(0, 1) and f a conditional flow.

    f is a per-pixel affine map predicted from x, then `steps` checkerboard affine couplings, all
    conditioned on features of x from a shallow convolutional network. ε = logit(noise) turns the
    uniform noise of a training step into the logistic base, so the step's noise recipe is unchanged
    and, at initialisation (every last layer zero), u = noise (up to rounding) and log q(u | x) = 0: the
    model starts as the uniform-dequantization model. `forward(x, noise)` returns (u, log q(u | x)).
    """

    def __init__(self, channels: int, bins: int, hidden: int = 32, steps: int = 4, max_log_scale: float = 3.0):
        super().__init__()
        if steps < 0 or hidden < 1:
            raise ValueError(f"VariationalDequantizer needs steps >= 0 and hidden >= 1, got {steps}, {hidden}")
        self.channels, self.bins, self.hidden, self.steps = channels, int(bins), hidden, steps
        self.context = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
        )
        self.affine = nn.Conv2d(hidden, 2 * channels, 3, padding=1)  # per-pixel (shift, log-scale) from x
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)
        self.max_log_scale = float(max_log_scale)
        self.couplings = nn.ModuleList(
            _CheckerboardCoupling(channels, hidden, hidden, k % 2, max_log_scale) for k in range(steps)
        )

    def extra_repr(self) -> str:
        return f"channels={self.channels}, bins={self.bins}, hidden={self.hidden}, steps={self.steps}"

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer images x (B, C, H, W) and uniform noise in [0, 1) of the same shape -> (u, log q(u | x)) (B,)."""
        dtype = noise.dtype
        xs = x.to(dtype) * (2.0 / max(self.bins - 1, 1)) - 1.0  # [-1, 1]
        ctx = self.context(xs)  # (B, hidden, H, W)
        n = noise.clamp(_EPS, 1 - _EPS)
        eps = torch.log(n) - torch.log1p(-n)  # logit: standard logistic base
        # log density of the logistic base: log σ(ε) + log σ(−ε)
        log_q = (-F.softplus(-eps) - F.softplus(eps)).flatten(1).sum(1)
        shift, raw = self.affine(ctx).chunk(2, 1)
        log_s = self.max_log_scale * torch.tanh(raw / self.max_log_scale)
        y = eps * torch.exp(log_s) + shift
        log_q = log_q - log_s.flatten(1).sum(1)
        for coupling in self.couplings:
            y, logdet = coupling(y, ctx)
            log_q = log_q - logdet
        u = torch.sigmoid(y)
        log_q = log_q - (-F.softplus(-y) - F.softplus(y)).flatten(1).sum(1)  # − log σ'(y)
        return u, log_q
