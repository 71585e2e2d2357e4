"""The invertible k×k convolutions a flow step may hold: the registry behind `model.conv` (docs/model.md §10)."""

from __future__ import annotations

from typing import Optional

from torch import nn

from finc_cli.flows.baselines import CInCConv2d, EmergingConv2d
from finc_cli.flows.finc_conv import FInCConv2d

__all__ = ["CONV_LABELS", "CONVOLUTIONS", "INVERSE_SCHEDULES", "conv_kind", "make_conv"]

# model.conv -> the layer class; "none" (a Glow step) has no k×k convolution.
CONVOLUTIONS: dict[str, type] = {"finc": FInCConv2d, "emerging": EmergingConv2d, "cinc": CInCConv2d}

# Names for people: tables, warnings, docs (the paper calls the conv-free model Glow).
CONV_LABELS = {"finc": "FInC", "emerging": "Emerging", "cinc": "CInC", "none": "Glow"}

# How each convolution's inverse runs: FInC through the backend seam (docs/inverse.md), the
# baselines in their published raster schedules (flows/baselines.py).
INVERSE_SCHEDULES = {
    "finc": "FInC inverse backend (finc_cli.inverse)",
    "emerging": "raster: 2·H·W sequential pixel steps",
    "cinc": "raster: H·W sequential pixel steps",
    "none": "no k×k convolution",
}


def make_conv(kind: str, channels: int, kernel_size: int) -> Optional[nn.Module]:
    """The `kind` convolution over `channels` with k = kernel_size and the shared init rule; None for "none"."""
    if kind == "none":
        return None
    if kind not in CONVOLUTIONS:
        raise ValueError(f"unknown convolution {kind!r}; choose one of: {', '.join([*CONVOLUTIONS, 'none'])}")
    return CONVOLUTIONS[kind](channels, kernel_size)


def conv_kind(module: nn.Module) -> Optional[str]:
    """ "finc", "emerging" or "cinc" for a model-level invertible convolution, else None."""
    for kind, cls in CONVOLUTIONS.items():
        if type(module) is cls:
            return kind
    return None
