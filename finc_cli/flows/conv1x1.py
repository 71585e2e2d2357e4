"""InvConv1x1: Glow's invertible 1×1 convolution, LU-parameterised or plain (Kingma & Dhariwal 2018, §3.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from finc_cli.flows.base import Flow

__all__ = [
    "InvConv1x1",
    "random_rotation",
]


def random_rotation(channels: int) -> torch.Tensor:
    """A random orthogonal (C, C) matrix (QR of a Gaussian, signs fixed so it is Haar)."""
    q, r = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r)).unsqueeze(0)).to(torch.get_default_dtype())


class InvConv1x1(Flow):
    """y[:, :, i, j] = W · x[:, :, i, j]; log-det = H·W·log|det W|.

    LU variant (lu=True): W = P · (L + I) · (U + diag(sign_s · exp(log_s))), with P and sign_s fixed
    buffers, L strictly lower and U strictly upper by construction (masked on every call, so weight
    decay cannot fill the masked entries), log-det = H·W·Σ log_s and the inverse through two
    triangular solves. Plain variant: a free (C, C) weight, log-det via slogdet, inverse via inv.
    Both start at a random rotation.
    """

    def __init__(self, channels: int, lu: bool = True):
        super().__init__()
        self.channels, self.lu = channels, lu
        w0 = random_rotation(channels)
        if not lu:
            self.weight = nn.Parameter(w0)  # (C, C)
            return
        p, l, u = torch.linalg.lu(w0)  # w0 = p @ l @ u
        s = torch.diagonal(u)
        self.register_buffer("perm", p)  # (C, C) permutation
        self.register_buffer("sign_s", torch.sign(s))  # (C,)
        self.lower = nn.Parameter(torch.tril(l, diagonal=-1))  # (C, C), strictly lower used
        self.upper = nn.Parameter(torch.triu(u, diagonal=1))  # (C, C), strictly upper used
        self.log_s = nn.Parameter(torch.log(s.abs()))  # (C,)
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), diagonal=-1), persistent=False)
        self.register_buffer("upper_mask", torch.triu(torch.ones(channels, channels), diagonal=1), persistent=False)
        self.register_buffer("eye", torch.eye(channels), persistent=False)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, lu={self.lu}"

    def lu_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, U): unit lower and upper triangular factors, masks applied."""
        l = self.lower * self.lower_mask + self.eye
        u = self.upper * self.upper_mask + torch.diag(self.sign_s * torch.exp(self.log_s))
        return l, u

    def weight_matrix(self) -> torch.Tensor:
        """(C, C) effective weight."""
        if not self.lu:
            return self.weight
        l, u = self.lu_factors()
        return self.perm @ l @ u

    def inverse_matrix(self) -> torch.Tensor:
        """(C, C) W⁻¹; for LU, U⁻¹ · L⁻¹ · Pᵀ via triangular solves."""
        if not self.lu:
            return torch.linalg.inv(self.weight)
        l, u = self.lu_factors()
        linv_pt = torch.linalg.solve_triangular(l, self.perm.t(), upper=False, unitriangular=True)  # L⁻¹ Pᵀ
        return torch.linalg.solve_triangular(u, linv_pt, upper=True)  # U⁻¹ L⁻¹ Pᵀ

    def log_abs_det(self) -> torch.Tensor:
        """log|det W| (scalar)."""
        return self.log_s.sum() if self.lu else torch.linalg.slogdet(self.weight)[1]

    def _logdet(self, x: torch.Tensor) -> torch.Tensor:
        hw = x.shape[2] * x.shape[3]
        return (hw * self.log_abs_det()).to(x.dtype).expand(x.shape[0])  # (B,)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weight_matrix().to(x.dtype)
        y = F.conv2d(x, w.view(self.channels, self.channels, 1, 1))  # (B, C, H, W)
        return y, self._logdet(x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w_inv = self.inverse_matrix().to(y.dtype)
        x = F.conv2d(y, w_inv.view(self.channels, self.channels, 1, 1))  # (B, C, H, W)
        return x, -self._logdet(y)
