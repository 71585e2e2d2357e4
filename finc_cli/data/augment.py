"""Augment: random horizontal flip and reflected integer translation of uint8 images for training."""

from __future__ import annotations

from typing import Optional

import torch

from finc_cli.errors import DatasetError

__all__ = [
    "Augment",
]


class Augment:
    """Random horizontal flip and random translation by up to `translate` pixels, per image.

    finc keeps its own rather than torchvision.transforms.v2: v2 draws one set of parameters per
    call, so a batch would share one flip and one shift, while flows are trained with independent
    augmentation per image, drawn from an explicit generator so that a step's batch is a function
    of (seed, step) whichever process or worker assembles it.

    Translation pads by reflection and crops (an exact integer shift): reflection rather than zeros
    so the model is never taught black borders that test images do not have. Works on (C, H, W) or
    a batch (B, C, H, W) of uint8, with `generator` or else torch's global RNG.
    """

    def __init__(self, hflip: bool = False, translate: int = 0):
        if translate < 0:
            raise DatasetError(f"translate must be >= 0, got {translate}")
        self.hflip, self.translate = hflip, int(translate)

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if x.ndim == 3:
            return self(x.unsqueeze(0), generator).squeeze(0)
        b, _, h, w = x.shape
        return self.apply(x, self.draw(b, h, w, generator))

    def draw(self, b: int, h: int, w: int, generator: Optional[torch.Generator] = None) -> tuple:
        """The random parameters of b images: source rows (B, H) and columns (B, W).

        Drawn in a fixed order (row shifts, column shifts, flips) from `generator` (torch's global
        RNG when None), so a batch's augmentation is a function of the generator's seed alone; a
        slice of the result augments a slice of the batch exactly as the whole batch would be.
        """
        t = self.translate
        if t >= min(h, w):
            raise DatasetError(f"translate={t} must be smaller than the image size {h}x{w}")
        rows = self._indices(b, h, t, False, generator)  # (B, H)
        cols = self._indices(b, w, t, self.hflip, generator)  # (B, W)
        return rows, cols

    @staticmethod
    def apply(x: torch.Tensor, params: tuple) -> torch.Tensor:
        """Augment a batch x (B, C, H, W) with parameters from `draw` (B rows of them)."""
        rows, cols = params
        b, c, h, w = x.shape
        # One gather over the flattened plane: output (i, j) reads source (rows[i], cols[j]);
        # half the time of a column gather followed by a row gather.
        idx = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)  # (B, C, H·W)
        return x.reshape(b, c, h * w).gather(2, idx).view(b, c, h, w)

    @staticmethod
    def _indices(b: int, n: int, t: int, flip: bool, generator: Optional[torch.Generator]) -> torch.Tensor:
        """Source index per output position (B, n): a shift by U{-t..t} with reflection, maybe flipped."""
        idx = torch.arange(n).expand(b, n)
        if t > 0:
            shift = torch.randint(-t, t + 1, (b, 1), generator=generator)
            idx = (idx - shift).abs()  # reflect at 0 ...
            idx = torch.where(idx > n - 1, 2 * (n - 1) - idx, idx)  # ... and at n - 1
        if flip:
            flipped = torch.rand(b, 1, generator=generator) < 0.5
            idx = torch.where(flipped, idx.flip(1), idx)
        return idx
