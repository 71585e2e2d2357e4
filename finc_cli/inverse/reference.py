"""Plain pixel-by-pixel forward substitution: slow and obviously correct, for tests only."""

from __future__ import annotations

import torch

__all__ = [
    "ORIENTATIONS",
    "reference_inverse",
]

# (sh, sw) per group: +1 where the padding is on the top / left (docs/finc_unit.md §2), -1 where bottom / right.
ORIENTATIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1))


def reference_inverse(y: torch.Tensor, weight: torch.Tensor, linv: torch.Tensor) -> torch.Tensor:
    """Solve each group in its own raster order; the centre solve uses solve_triangular, not linv."""
    del linv  # independent of the cached inverse on purpose
    B, C, H, W = y.shape
    G, Cg, _, k, _ = weight.shape
    x = torch.zeros_like(y)
    for g, (sh, sw) in enumerate(ORIENTATIONS):
        lo = g * Cg
        centre = weight[g, :, :, k - 1, k - 1]  # (C', C') unit lower triangular
        rows = range(H) if sh > 0 else range(H - 1, -1, -1)
        cols = range(W) if sw > 0 else range(W - 1, -1, -1)
        for i in rows:
            for j in cols:
                r = y[:, lo : lo + Cg, i, j].clone()  # (B, C')
                for a in range(k):
                    for e in range(k):
                        if a == k - 1 and e == k - 1:
                            continue
                        ii, jj = i + sh * (a - k + 1), j + sw * (e - k + 1)
                        if 0 <= ii < H and 0 <= jj < W:
                            r -= x[:, lo : lo + Cg, ii, jj] @ weight[g, :, :, a, e].T
                sol = torch.linalg.solve_triangular(centre, r.T, upper=False, unitriangular=True)
                x[:, lo : lo + Cg, i, j] = sol.T
    return x
