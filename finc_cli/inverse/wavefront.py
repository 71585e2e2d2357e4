"""Vectorised PyTorch anti-diagonal (wavefront) inverse of the FInC unit, CPU and GPU.

docs/inverse.md §2, §6: in each group's own top-left frame, pixels on anti-diagonal d = i + j depend only
on earlier anti-diagonals, so one anti-diagonal of every image and every group is solved per
step: H + W - 1 sequential steps. With ỹ = L⁻¹·y and M = L⁻¹·W_off (both computed once), a
step is x_d = ỹ_d - M·patches(x): one row gather and one in-place matrix product.

Layout (chosen because the per-step op overhead, not the flops, dominates): x is a 2-D
((N+1)·B, C) matrix, rows ordered (pixel in anti-diagonal order, image), columns (group,
channel), the last B rows zero for taps outside the image. An anti-diagonal's rows are then
one contiguous block, written by `addmm_` in place, and its patches one `index_select` of
whole rows. M is block diagonal over the 4 groups, (T·C, C): 4× the useful flops, but one
matrix product per step instead of a loop over groups.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from finc_cli.inverse.reference import ORIENTATIONS

__all__ = [
    "wavefront_inverse",
]


@lru_cache(maxsize=64)
def _pixel_plan(H: int, W: int, k: int):
    """Index plan for an H×W image and k×k kernel, shared by the 4 groups.

    Returns (perm, counts, nbr): perm (4, N) maps sorted position -> natural flat pixel per
    group; counts[d] is the number of pixels on anti-diagonal d; nbr (N - 1, T) holds, for
    every pixel after the first in sorted order, the sorted position of each off-centre tap
    input (N for padding, which addresses the zero rows). Taps are ordered as in the kernel.
    """
    N = H * W
    order = sorted(((i, j) for i in range(H) for j in range(W)), key=lambda p: (p[0] + p[1], p[0]))
    pos = {p: n for n, p in enumerate(order)}
    taps = [(a - k + 1, e - k + 1) for a in range(k) for e in range(k) if (a, e) != (k - 1, k - 1)]
    perm = torch.empty(4, N, dtype=torch.long)
    for g, (sh, sw) in enumerate(ORIENTATIONS):
        for n, (i, j) in enumerate(order):
            perm[g, n] = (i if sh > 0 else H - 1 - i) * W + (j if sw > 0 else W - 1 - j)
    counts = [min(d, H - 1) - max(0, d - W + 1) + 1 for d in range(H + W - 1)]
    nbr = torch.tensor([[pos.get((i + a, j + e), N) for (a, e) in taps] for (i, j) in order[1:]], dtype=torch.long)
    return perm, counts, nbr.view(N - 1, len(taps))


@lru_cache(maxsize=8)
def _plan(H: int, W: int, k: int, B: int, device: torch.device):
    """(perm, row block sizes of x, per-step row indices of the patches) on `device`.

    The patches of step d are rows (pixel p, image b, tap t) -> x row nbr[p, t]·B + b, so
    that `index_select(...).view(P·B, T·C)` is the im2col matrix of that anti-diagonal.
    """
    perm, counts, nbr = _pixel_plan(H, W, k)
    T = nbr.shape[1]
    rows = (nbr.unsqueeze(1) * B + torch.arange(B).view(1, B, 1)).reshape(-1)  # (N-1)·B·T, (pixel, b, t)
    small = (nbr.shape[0] + 2) * B < 2**31  # int32 indices: half the memory, same speed
    steps = rows.to(device, torch.int32 if small else torch.long).split([c * B * T for c in counts[1:]])
    sizes = [c * B for c in counts] + [B]  # one block per anti-diagonal, then the zero rows
    return perm.to(device), sizes, steps


def wavefront_inverse(y: torch.Tensor, weight: torch.Tensor, linv: torch.Tensor) -> torch.Tensor:
    B, C, H, W = y.shape
    G, Cg, _, k, _ = weight.shape
    N, T = H * W, k * k - 1
    perm, sizes, steps = _plan(H, W, k, B, y.device)
    perm_all = perm.view(1, G, 1, N).expand(B, G, Cg, N)
    # Every group into its own TL frame, pixels in anti-diagonal order.
    y_sorted = y.view(B, G, Cg, N).gather(3, perm_all)  # (B, G, C', N)
    x = y.new_empty((N + 1) * B, C)  # rows (pixel, b), columns (g, c)
    x[N * B :].zero_()
    y_rows = y_sorted.permute(3, 0, 1, 2).reshape(N * B, C)  # (N·B, C)
    torch.mm(y_rows, torch.block_diag(*linv).t(), out=x[: N * B])  # ỹ = L⁻¹·y
    if T > 0 and N > 1:
        w_off = weight.reshape(G, Cg, Cg, k * k)[..., :T]  # (G, C'out, C'in, T): centre is the last tap
        m = torch.matmul(linv, w_off.reshape(G, Cg, Cg * T)).view(G, Cg, Cg, T)  # (G, o, c, t)
        m_rows = y.new_zeros(T, G, Cg, G, Cg)  # -M block diagonal, rows (t, g, c), columns (g, o)
        m_rows.diagonal(0, 1, 3).copy_(m.permute(3, 2, 1, 0)).neg_()  # diagonal view: (t, c, o, g)
        m_rows = m_rows.view(T * C, C)
        blocks = x.split(sizes)  # views: one contiguous row block per anti-diagonal
        for block, rows in zip(blocks[1:-1], steps):  # the first anti-diagonal has no predecessors
            block.addmm_(x.index_select(0, rows).view(-1, T * C), m_rows)
    x_sorted = x[: N * B].view(N, B, G, Cg).permute(1, 2, 3, 0)  # (B, G, C', N)
    out = torch.empty_like(y).view(B, G, Cg, N)
    out.scatter_(3, perm_all, x_sorted)
    return out.view(B, C, H, W)
