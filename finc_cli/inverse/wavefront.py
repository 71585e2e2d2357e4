"""Vectorised PyTorch anti-diagonal (wavefront) inverse of the FInC unit, CPU and GPU.

DESIGN §2: in each group's own top-left frame, pixels on anti-diagonal d = i + j depend only
on earlier anti-diagonals, so one anti-diagonal of every image and every group is solved per
step: H + W - 1 sequential steps. With ỹ = L⁻¹·y and M = L⁻¹·W_off (both computed once), a
step is x_d = ỹ_d - M·patches(x), two tensor ops: a gather and a batched matmul.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from finc_cli.inverse.reference import ORIENTATIONS


@lru_cache(maxsize=64)
def _plan_cpu(H: int, W: int, k: int):
    """Index plan for an H×W image and k×k kernel, shared by the 4 groups.

    Returns (perm, steps): perm (4, N) maps sorted position -> natural flat pixel per group;
    steps is a list of (start, count, neighbours) where neighbours (T·P,) holds, tap-major,
    the sorted position of each off-centre tap input of the P pixels of one anti-diagonal
    (N for padding, which addresses a zero row).
    """
    N = H * W
    order = sorted(((i, j) for i in range(H) for j in range(W)), key=lambda p: (p[0] + p[1], p[0]))
    pos = {p: n for n, p in enumerate(order)}
    taps = [(a, e) for a in range(k) for e in range(k) if (a, e) != (k - 1, k - 1)]
    perm = torch.empty(4, N, dtype=torch.long)
    for g, (sh, sw) in enumerate(ORIENTATIONS):
        for n, (i, j) in enumerate(order):
            ni = i if sh > 0 else H - 1 - i
            nj = j if sw > 0 else W - 1 - j
            perm[g, n] = ni * W + nj
    steps = []
    start = 0
    for d in range(H + W - 1):
        pixels = [(i, d - i) for i in range(max(0, d - W + 1), min(d, H - 1) + 1)]
        count = len(pixels)
        nbr = [
            pos.get((i + a - k + 1, j + e - k + 1), N) if i + a - k + 1 >= 0 and j + e - k + 1 >= 0 else N
            for (a, e) in taps
            for (i, j) in pixels
        ]
        steps.append((start, count, torch.tensor(nbr, dtype=torch.long)))
        start += count
    return perm, steps


_DEVICE_PLANS: dict = {}


def _plan(H: int, W: int, k: int, device: torch.device):
    perm, steps = _plan_cpu(H, W, k)
    if device.type == "cpu":
        return perm, steps
    key = (H, W, k, str(device))
    if key not in _DEVICE_PLANS:
        _DEVICE_PLANS[key] = (perm.to(device), [(s, c, n.to(device)) for s, c, n in steps])
    return _DEVICE_PLANS[key]


def wavefront_inverse(y: torch.Tensor, weight: torch.Tensor, linv: torch.Tensor) -> torch.Tensor:
    B, C, H, W = y.shape
    G, Cg, _, k, _ = weight.shape
    N, T = H * W, k * k - 1
    perm, steps = _plan(H, W, k, y.device)
    # Every group into its own TL frame, pixels in anti-diagonal order.
    y_sorted = y.view(B, G, Cg, N).gather(3, perm.view(1, G, 1, N).expand(B, G, Cg, N))  # (B, G, C', N)
    y_cols = y_sorted.permute(1, 2, 3, 0).reshape(G, Cg, N * B)  # (G, C', N·B)
    # x holds solved pixels in sorted order plus one zero row (index N) for out-of-image taps.
    x = y.new_zeros(G, Cg, N + 1, B)  # (G, C', N+1, B)
    x[:, :, :N, :].copy_(torch.bmm(linv, y_cols).view(G, Cg, N, B))  # ỹ = L⁻¹·y
    if T > 0:
        w_off = weight.reshape(G, Cg, Cg, k * k)[..., :T]  # (G, C'out, C'in, T): centre is the last tap
        m = torch.matmul(linv, w_off.reshape(G, Cg, Cg * T))  # (G, C', C'·T), column = c_in·T + tap
        for start, count, nbr in steps[1:]:  # the first anti-diagonal has no predecessors
            patches = x.index_select(2, nbr).view(G, Cg * T, count * B)  # (G, C'·T, P·B)
            x[:, :, start : start + count, :].view(G, Cg, count * B).baddbmm_(m, patches, alpha=-1)
    x_sorted = x[:, :, :N, :].permute(3, 0, 1, 2)  # (B, G, C', N)
    out = torch.empty_like(y).view(B, G, Cg, N)
    out.scatter_(3, perm.view(1, G, 1, N).expand(B, G, Cg, N), x_sorted)
    return out.view(B, C, H, W)
