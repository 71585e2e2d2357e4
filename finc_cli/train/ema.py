"""EMA weights: an exponential moving average of the parameters (Polyak averaging), kept beside the raw ones."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from finc_cli.checkpoint import copy_into_parameters

__all__ = ["EMA"]


class EMA:
    """shadow ← d_t·shadow + (1 − d_t)·param after every applied update, d_t = min(decay, (1 + t)/(10 + t)).

    t counts the updates applied before this one. The warm-up is TensorFlow's
    `ExponentialMovingAverage(num_updates=t)`: close to a plain average of the weights so far early
    on, the fixed decay later, so a short run's average does not keep decay^t of the initial weights
    (0.999^400 = 0.67). Only parameters are averaged; buffers (ActNorm's init flag, the 1×1 conv's
    permutation) are the model's own. Every rank updates from identical parameters, so the averages
    are identical across ranks without communication.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.updates = 0
        self.shadow = {name: p.detach().clone() for name, p in model.named_parameters()}

    def current_decay(self) -> float:
        """The decay the next update applies."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        weight = 1.0 - self.current_decay()
        for name, p in model.named_parameters():
            self.shadow[name].lerp_(p.detach(), weight)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "params": dict(self.shadow)}

    def load_state_dict(self, state: dict, step: int = 0) -> None:
        """Restore the average; a state saved without its update count takes `step` (the checkpoint's train step)."""
        params = state["params"]
        if set(params) != set(self.shadow):
            raise KeyError(f"EMA weights for {len(params)} parameters, the model has {len(self.shadow)}")
        for name, value in params.items():
            self.shadow[name].copy_(value)
        self.decay = float(state["decay"])
        self.updates = int(state.get("updates", step))

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its raw weights again after it.

        The copies bump each parameter's version, so caches keyed on it (the FInC unit's L⁻¹)
        are rebuilt for the weights in use.
        """
        raw = {name: p.detach().clone() for name, p in model.named_parameters()}
        copy_into_parameters(model, self.shadow)
        try:
            yield
        finally:
            copy_into_parameters(model, raw)
