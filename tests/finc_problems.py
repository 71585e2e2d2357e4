"""Shared test data: random FInC inverse problems with a known solution (float64, CPU)."""

import torch

from finc_cli.flows.finc_conv import finc_conv2d


def random_finc_problem(B: int, cg: int, H: int, W: int, k: int, std: float = 0.3, seed: int = 0):
    """(x, y, weight) with y = finc_conv2d(x, weight) and weight a valid effective FInC kernel.

    Off-centre taps and the centre's below-diagonal entries have std `std`; the centre's
    diagonal is 1 and its upper triangle 0 (docs/finc_unit.md §3).
    """
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(4, cg, cg, k, k, generator=g, dtype=torch.float64) * std
    centre = weight[:, :, :, k - 1, k - 1]
    weight[:, :, :, k - 1, k - 1] = torch.tril(centre, diagonal=-1) + torch.eye(cg, dtype=torch.float64)
    x = torch.randn(B, 4 * cg, H, W, generator=g, dtype=torch.float64)
    return x, finc_conv2d(x, weight), weight
