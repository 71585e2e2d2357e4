"""The FInC inverse on the paper's schedule: anti-diagonals, then one channel at a time (a baseline).

Kallappa et al.'s code solves an anti-diagonal with one step per channel c: x_c is y_c minus the
whole window sum over the already solved pixels and the channels c' < c of the current pixel
(the unit lower triangular centre, no L⁻¹). That is (H+W-1)·C' sequential steps per unit against
the wavefront backend's H+W-1 (docs/inverse.md §2, §4). Each step is vectorised over the pixels of the
anti-diagonal, the batch and the 4 groups, as the paper's kernel is over threads. Benchmarks
register it with `register()`; it is not in the default registry.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from finc_cli.inverse import register_backend
from finc_cli.inverse.reference import ORIENTATIONS

__all__ = [
    "NAME",
    "paper_schedule_inverse",
    "register",
]

NAME = "paper"


def register() -> None:
    """Make `inverse.solve(..., backend="paper")` run this schedule."""

    register_backend(NAME, __name__, "paper_schedule_inverse")


@lru_cache(maxsize=32)
def _plan(H: int, W: int, k: int) -> tuple:
    """(perm, steps) for an H×W image: perm (4, N) maps anti-diagonal order -> natural flat pixel
    per group; steps[d] = (start, count, window) with window (k·k·P,) the sorted position of every
    tap input of the P pixels of anti-diagonal d, tap-major, the centre tap last, N for padding.
    """
    N = H * W
    order = sorted(((i, j) for i in range(H) for j in range(W)), key=lambda p: (p[0] + p[1], p[0]))
    pos = {p: n for n, p in enumerate(order)}
    perm = torch.tensor(
        [[(i if sh > 0 else H - 1 - i) * W + (j if sw > 0 else W - 1 - j) for i, j in order] for sh, sw in ORIENTATIONS]
    )
    steps, start = [], 0
    for d in range(H + W - 1):
        pixels = [(i, d - i) for i in range(max(0, d - W + 1), min(d, H - 1) + 1)]
        window = [pos.get((i + a - k + 1, j + e - k + 1), N) for a in range(k) for e in range(k) for i, j in pixels]
        steps.append((start, len(pixels), torch.tensor(window)))
        start += len(pixels)
    return perm, steps


@lru_cache(maxsize=32)
def _device_plan(H: int, W: int, k: int, device: torch.device) -> tuple:
    """_plan with its index tensors on `device` (copied once, not on every step)."""
    perm, steps = _plan(H, W, k)
    return perm.to(device), [(s, c, w.to(device)) for s, c, w in steps]


def paper_schedule_inverse(y: torch.Tensor, weight: torch.Tensor, linv: torch.Tensor) -> torch.Tensor:
    """The seam's `fn(y, weight, linv) -> x` (problem in `finc_cli.inverse`); linv is not used."""
    del linv  # the paper's schedule resolves the centre triangle channel by channel instead
    B, C, H, W = y.shape
    G, Cg, _, k, _ = weight.shape
    N, T = H * W, k * k  # every tap, the centre (index k·k - 1) included
    perm, steps = _device_plan(H, W, k, y.device)
    # Every group into its own TL frame, pixels in anti-diagonal order (as in the wavefront backend).
    y_sorted = y.view(B, G, Cg, N).gather(3, perm.view(1, G, 1, N).expand(B, G, Cg, N))  # (B, G, C', N)
    y_sorted = y_sorted.permute(1, 2, 3, 0).contiguous()  # (G, C', N, B)
    w = weight.clone()
    w[:, :, :, k - 1, k - 1].diagonal(dim1=-2, dim2=-1).zero_()  # the unit diagonal is x_c itself
    w = w.reshape(G, Cg, Cg * T)  # (G, C'out, C'in·T), column = c_in·T + tap
    x = y.new_zeros(G, Cg, N + 1, B)  # solved pixels in sorted order + a zero row for padding
    for start, count, window in steps:
        for c in range(Cg):  # one channel per step: the channels c' < c of this pixel are solved
            patches = x.index_select(2, window).view(G, Cg * T, count * B)  # (G, C'·T, P·B)
            r = torch.bmm(w[:, c : c + 1], patches).view(G, count, B)  # (G, P, B)
            x[:, c, start : start + count].copy_(y_sorted[:, c, start : start + count] - r)
    x_sorted = x[:, :, :N, :].permute(3, 0, 1, 2)  # (B, G, C', N)
    out = torch.empty_like(y).view(B, G, Cg, N)
    out.scatter_(3, perm.view(1, G, 1, N).expand(B, G, Cg, N), x_sorted)
    return out.view(B, C, H, W)
