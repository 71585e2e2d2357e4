"""Baseline invertible k×k convolutions with sequential inverses: Emerging (2019) and CInC (2021).

Both are single padded convolutions whose Jacobian is triangular in raster order. They are here
to be timed against the FInC unit (`finc benchmark`), so their inverses follow the published
schedules: raster order, one pixel after another (vectorised over batch and channels within a
pixel, as Hoogeboom et al.'s code does). Each solve uses a precomputed inverse of the centre
tap, which only makes the baselines faster than a channel-by-channel solve: the comparison
is conservative.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from finc_cli.flows.base import Flow, zeros_logdet
from finc_cli.flows.conv_init import conv_init_scale, draw_conv_weight

__all__ = [
    "AutoregressiveConv2d",
    "CInCConv2d",
    "EmergingConv2d",
    "raster_inverse",
]


class AutoregressiveConv2d(Flow):
    """One masked k×k convolution y = conv(pad(x), W), triangular in (reverse) raster order.

    `pads` = (left, right, top, bottom) with left + right = top + bottom = k - 1, so the tap at
    (top, left) lines up with the output pixel. Taps that read pixels later in the solve order
    are masked to 0; the centre tap is unit lower triangular (`reverse=False`, raster order) or
    unit upper triangular (`reverse=True`, reverse raster order). log|det J| = 0.
    The masked entries hold by construction: the effective kernel is rebuilt on every call.
    """

    def __init__(
        self, channels: int, kernel_size: int, pads: tuple, reverse: bool = False, init_scale: Optional[float] = None
    ):
        super().__init__()
        k, (left, right, top, bottom) = kernel_size, pads
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"{type(self).__name__} needs channels >= 1, got {channels}")
        if not isinstance(kernel_size, int) or k < 1 or left + right != k - 1 or top + bottom != k - 1:
            raise ValueError(f"{type(self).__name__}: pads {pads} do not fit kernel_size {kernel_size}")
        self.channels, self.kernel_size, self.pads, self.reverse = channels, k, tuple(pads), reverse
        self.init_scale = init_scale if init_scale is not None else conv_init_scale(channels, k)  # FInCConv2d's rule
        self.weight = nn.Parameter(torch.empty(channels, channels, k, k))  # (C_out, C_in, k, k)
        self.reset_parameters()
        mask, fixed = _raster_mask(channels, k, top, left, reverse)
        self.register_buffer("mask", mask, persistent=False)
        self.register_buffer("fixed", fixed, persistent=False)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, pads={self.pads}, reverse={self.reverse}"

    def reset_parameters(self) -> None:
        """Draw the raw weight ~ N(0, init_scale²) from the global RNG (the shared rule, flows/conv_init.py)."""
        draw_conv_weight(self.weight, self.init_scale)

    def effective_weight(self) -> torch.Tensor:
        """(C, C, k, k): raw weight with the future taps zeroed and the centre unit triangular."""
        return self.weight * self.mask + self.fixed

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"{type(self).__name__} expects (B, {self.channels}, H, W), got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x)
        y = F.conv2d(F.pad(x, self.pads), self.effective_weight().to(x.dtype))  # (B, C, H, W)
        return y, zeros_logdet(x)

    @torch.no_grad()
    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(y)
        x = raster_inverse(y, self.effective_weight().to(y.dtype), self.pads, self.reverse)
        return x, zeros_logdet(y)


def _raster_mask(channels: int, k: int, top: int, left: int, reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, fixed), each (C, C, k, k): which taps are learnable and the fixed unit diagonal."""
    mask = torch.zeros(channels, channels, k, k)
    for a in range(k):
        for e in range(k):
            earlier = (a, e) < (top, left)  # tap reads a pixel earlier in raster order
            if earlier != reverse and (a, e) != (top, left):
                mask[:, :, a, e] = 1.0
    strict = torch.ones(channels, channels)
    mask[:, :, top, left] = torch.triu(strict, 1) if reverse else torch.tril(strict, -1)
    fixed = torch.zeros(channels, channels, k, k)
    fixed[:, :, top, left] = torch.eye(channels)
    return mask, fixed


def raster_inverse(y: torch.Tensor, weight: torch.Tensor, pads: tuple, reverse: bool = False) -> torch.Tensor:
    """Solve y = conv(pad(x), weight) pixel by pixel in (reverse) raster order; returns x.

    With ỹ = L⁻¹·y and M = L⁻¹·W (centre tap removed), each pixel is x_p = ỹ_p - M·patch_p,
    where patch_p is read from a zero-padded buffer of already solved pixels.
    """
    B, C, H, W = y.shape
    k = weight.shape[-1]
    left, right, top, bottom = pads
    centre = weight[:, :, top, left].to(torch.float64)  # (C, C) unit triangular
    eye = torch.eye(C, dtype=torch.float64, device=y.device)
    linv = torch.linalg.solve_triangular(centre, eye, upper=reverse, unitriangular=True).to(y.dtype)
    off = weight.clone()
    off[:, :, top, left] = 0
    m = (linv @ off.reshape(C, C * k * k)).t().contiguous()  # (C·k·k, C)
    y_t = torch.einsum("oc,bchw->hwbo", linv, y).contiguous()  # (H, W, B, C): ỹ, pixel-major
    xp = y.new_zeros(B, C, H + k - 1, W + k - 1)  # padded solution; unsolved pixels stay 0
    rows = range(H - 1, -1, -1) if reverse else range(H)
    cols = range(W - 1, -1, -1) if reverse else range(W)
    for i in rows:
        for j in cols:
            patch = xp[:, :, i : i + k, j : j + k].reshape(B, C * k * k)  # (B, C·k·k)
            xp[:, :, i + top, j + left] = torch.addmm(y_t[i, j], patch, m, alpha=-1)  # (B, C)
    return xp[:, :, top : top + H, left : left + W].contiguous()  # (B, C, H, W)


class CInCConv2d(AutoregressiveConv2d):
    """CInC (Nagar et al. 2021): one k×k conv padded k-1 on the top and left, all channels in one group.

    The bottom-right tap lines up with the output pixel and is unit lower triangular; the inverse
    solves pixel by pixel in raster order (the predecessor schedule that FInC parallelises).
    """

    def __init__(self, channels: int, kernel_size: int = 3, init_scale: Optional[float] = None):
        p = kernel_size - 1
        super().__init__(channels, kernel_size, (p, 0, p, 0), init_scale=init_scale)


class EmergingConv2d(Flow):
    """Emerging convolution (Hoogeboom et al. 2019, §3.1): two masked autoregressive k×k convs.

    The first is centred (padding k//2 before, (k-1)//2 after) and reads only pixels earlier in
    raster order plus the lower triangle of its centre; the second has the mask flipped in H, W
    and channels (reads later pixels, upper-triangular centre). The centre diagonals are fixed
    to 1, so log|det J| = 0 (the scale lives in the neighbouring ActNorm and 1×1 conv of a flow
    step). The inverse runs the second conv's solve in reverse raster order, then the first's in
    raster order: two sequential passes of H·W pixel steps.
    """

    def __init__(self, channels: int, kernel_size: int = 3, init_scale: Optional[float] = None):
        super().__init__()
        k, c = kernel_size, kernel_size // 2
        self.channels, self.kernel_size = channels, kernel_size
        self.first = AutoregressiveConv2d(channels, k, (c, k - 1 - c, c, k - 1 - c), False, init_scale)
        self.second = AutoregressiveConv2d(channels, k, (k - 1 - c, c, k - 1 - c, c), True, init_scale)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}"

    def reset_parameters(self) -> None:
        """Redraw both masked convolutions' raw weights, first then second."""
        self.first.reset_parameters()
        self.second.reset_parameters()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, ld1 = self.first(x)
        y, ld2 = self.second(h)
        return y, ld1 + ld2

    @torch.no_grad()
    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, ld2 = self.second.inverse(y)
        x, ld1 = self.first.inverse(h)
        return x, ld1 + ld2
