"""Augment: random horizontal flip and reflected integer translation of uint8 images for training."""

from __future__ import annotations

import torch

from finc_cli.errors import DatasetError

__all__ = [
    "Augment",
]


class Augment:
    """Random horizontal flip and random translation by up to `translate` pixels, per image.

    Translation pads by reflection and crops (an exact integer shift): reflection rather than zeros
    so the model is never taught black borders that test images do not have. Works on (C, H, W) or
    a batch (B, C, H, W) of uint8 with torch's global RNG.
    """

    def __init__(self, hflip: bool = False, translate: int = 0):
        if translate < 0:
            raise DatasetError(f"translate must be >= 0, got {translate}")
        self.hflip, self.translate = hflip, int(translate)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            return self(x.unsqueeze(0)).squeeze(0)
        b, c, h, w = x.shape
        t = self.translate
        if t >= min(h, w):
            raise DatasetError(f"translate={t} must be smaller than the image size {h}x{w}")
        rows = self._indices(b, h, t, flip=False)  # (B, H)
        cols = self._indices(b, w, t, flip=self.hflip)  # (B, W)
        x = x.gather(3, cols[:, None, None, :].expand(b, c, h, w))  # pick columns: (B, C, H, W)
        return x.gather(2, rows[:, None, :, None].expand(b, c, h, w))  # pick rows: (B, C, H, W)

    @staticmethod
    def _indices(b: int, n: int, t: int, flip: bool) -> torch.Tensor:
        """Source index per output position (B, n): a shift by U{-t..t} with reflection, maybe flipped."""
        idx = torch.arange(n).expand(b, n)
        if t > 0:
            shift = torch.randint(-t, t + 1, (b, 1))
            idx = (idx - shift).abs()  # reflect at 0 ...
            idx = torch.where(idx > n - 1, 2 * (n - 1) - idx, idx)  # ... and at n - 1
        if flip:
            flipped = torch.rand(b, 1) < 0.5
            idx = torch.where(flipped, idx.flip(1), idx)
        return idx
