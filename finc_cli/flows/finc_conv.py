"""FInCConv2d: the FInC unit, four one-side-padded k×k convolutions with log|det J| = 0."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from finc_cli import inverse
from finc_cli.flows.base import Flow, zeros_logdet
from finc_cli.flows.conv_init import conv_init_scale, draw_conv_weight
from finc_cli.runtime.precision import exact_float32_convs

__all__ = [
    "finc_conv2d",
    "FInCConv2d",
]


# One-sided padding (left, right, top, bottom) per group: TL, TR, BL, BR.
def _pads(k: int) -> tuple:
    p = k - 1
    return ((p, 0, p, 0), (0, p, p, 0), (p, 0, 0, p), (0, p, 0, p))


def finc_conv2d(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The forward FInC convolution (semantics in `finc_cli.inverse`'s docstring).

    Four one-side-padded convolutions, one per group. A TR/BL/BR group is the TL convolution
    with the input flipped, which equals padding the other side and flipping the kernel.
    (Measured faster than one grouped call with the kernels embedded in (2k-1)² windows,
    whose zero taps cost 2.8× the flops: BENCHMARKS.md.)
    """
    G, Cg, _, k, _ = weight.shape
    kernels = (weight[0], weight[1].flip(-1), weight[2].flip(-2), weight[3].flip(-2, -1))
    with exact_float32_convs():  # TF32 would keep ~10 mantissa bits: no inverse could undo that exactly
        outs = [
            F.conv2d(F.pad(x[:, g * Cg : (g + 1) * Cg], pad), kernels[g])  # (B, C', H, W)
            for g, pad in enumerate(_pads(k))
        ]
    return torch.cat(outs, dim=1)  # (B, C, H, W)


class FInCConv2d(Flow):
    """The FInC unit (Kallappa et al. 2023, §3; docs/finc_unit.md): C = 4·C' channels, a padded C'→C' conv per group.

    The centre tap of every group is unit lower triangular by construction: the effective
    kernel is rebuilt from the raw parameter on each call, so no optimizer (weight decay
    included) can move the masked entries.
    """

    def __init__(self, channels: int, kernel_size: int = 3, init_scale: Optional[float] = None):
        super().__init__()
        if not isinstance(channels, int) or channels < 4 or channels % 4:
            raise ValueError(f"FInCConv2d needs channels divisible by 4 (4 groups), got {channels}")
        if not isinstance(kernel_size, int) or kernel_size < 1:
            raise ValueError(f"FInCConv2d needs kernel_size >= 1, got {kernel_size}")
        self.channels, self.kernel_size = channels, kernel_size
        cg, k = channels // 4, kernel_size
        # Small off-centre weights keep the triangular solve well conditioned at init (docs/finc_unit.md §6).
        self.init_scale = init_scale if init_scale is not None else conv_init_scale(cg, k)
        self.weight = nn.Parameter(torch.empty(4, cg, cg, k, k))  # (4, C'out, C'in, k, k)
        self.reset_parameters()
        mask = torch.ones(cg, cg, k, k)
        mask[:, :, k - 1, k - 1] = torch.tril(torch.ones(cg, cg), diagonal=-1)  # learn below the diagonal only
        fixed = torch.zeros(cg, cg, k, k)
        fixed[:, :, k - 1, k - 1] = torch.eye(cg)
        self.register_buffer("mask", mask, persistent=False)
        self.register_buffer("fixed", fixed, persistent=False)
        self._inverse_cache: Optional[tuple] = None
        self.gain_cap: Optional[float] = None  # model.finc_gain_cap: bound on ‖A⁻¹‖₂ (docs/inverse.md §12)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}"

    def reset_parameters(self) -> None:
        """Draw the raw weight ~ N(0, init_scale²) from the global RNG (the shared rule, flows/conv_init.py)."""
        draw_conv_weight(self.weight, self.init_scale)

    def effective_weight(self) -> torch.Tensor:
        """(4, C', C', k, k): the raw weight with the centre tap forced unit lower triangular.

        With `gain_cap` c, each group's learnable entries are scaled down, where needed, so that the
        sum of the spectral norms of its taps (the centre's strictly lower part included) is at most
        1 − 1/c: a Neumann-series bound that keeps ‖A⁻¹‖₂ ≤ c (docs/inverse.md §12).
        """
        free = self.weight * self.mask  # (4, C', C', k, k), zero where the centre is fixed
        if self.gain_cap is not None:
            norms = torch.linalg.matrix_norm(free.permute(0, 3, 4, 1, 2), ord=2).sum((1, 2))  # (4,): Σ_t ‖W_t‖₂
            limit = 1.0 - 1.0 / self.gain_cap
            free = free * (limit / norms.clamp_min(limit)).view(4, 1, 1, 1, 1)  # 1 where already within the bound
        return free + self.fixed

    def num_free_parameters(self) -> int:
        cg, k = self.channels // 4, self.kernel_size
        return 4 * (cg * cg * k * k - cg * (cg + 1) // 2)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"FInCConv2d expects a 4-D (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        if x.shape[1] != self.channels:
            raise ValueError(f"FInCConv2d expects {self.channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x)
        return finc_conv2d(x, self.effective_weight()), zeros_logdet(x)

    def inverse_operator(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(effective weight, L⁻¹), cached until the raw weight changes (in-place updates bump _version)."""
        w = self.weight
        key = (w._version, w.data_ptr(), w.dtype, w.device)
        if self._inverse_cache is None or self._inverse_cache[0] != key:
            with torch.no_grad():
                eff = self.effective_weight().detach().contiguous()
                self._inverse_cache = (key, eff, inverse.centre_inverse(eff))
        return self._inverse_cache[1], self._inverse_cache[2]

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x with forward(x) == y, on the backend `finc_cli.inverse` selects (docs/inverse.md)."""
        self._check(y)
        eff, linv = self.inverse_operator()
        x = inverse.solve(y, eff.to(y.dtype), linv.to(y.dtype))
        return x, zeros_logdet(y)
