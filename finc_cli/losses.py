"""The one bits/dim formula (docs/model.md §7)."""

from __future__ import annotations

import math
from typing import Union

import torch

__all__ = [
    "bits_per_dim",
]

Number = Union[float, torch.Tensor]


def bits_per_dim(nll_nats: Number, num_dims: int, bins: int) -> Number:
    """(NLL + D·ln(bins)) / (D·ln 2).

    nll_nats is the negative log-density of the dequantized, bin-scaled image v = (x + u) / bins
    (per sample or a mean); + D·ln(bins) turns it into the NLL of x + u on the integer scale.
    """
    return (nll_nats + num_dims * math.log(bins)) / (num_dims * math.log(2))
