"""What a level's K flow steps keep for the backward pass: store, checkpoint or invert (docs/training.md §18).

- store:      autograd keeps every step's activations (memory ∝ K).
- checkpoint: each step keeps its input and recomputes its forward during backward
              (`torch.utils.checkpoint`, non-reentrant).
- invert:     the level keeps only its output. The backward walks the layers in reverse: it rebuilds
              each layer's input from its output with the layer's exact inverse, recomputes that
              layer's forward with grad, backpropagates through it and frees it, so the activation
              memory of a level is about one layer's, whatever K is.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.checkpoint import checkpoint

from finc_cli.config import MEMORY_CHOICES
from finc_cli.flows.base import Flow, zeros_logdet
from finc_cli.flows.sequential import FlowSequential

__all__ = ["leaf_flows", "rebuild", "rebuild_error", "run_steps"]


def run_steps(steps: FlowSequential, h: torch.Tensor, mode: str = "store") -> tuple[torch.Tensor, torch.Tensor]:
    """(steps(h), log-det) with the activations kept as `mode` says; without grad every mode is a plain forward."""
    if mode == "store" or not torch.is_grad_enabled():
        return steps(h)
    if mode == "checkpoint":
        total = zeros_logdet(h)
        for step in steps:
            h, logdet = checkpoint(step, h, use_reentrant=False)
            total = total + logdet
        return h, total
    if mode != "invert":
        raise ValueError(f"unknown memory mode {mode!r}; choose from {', '.join(MEMORY_CHOICES)}")
    params = [p for p in steps.parameters() if p.requires_grad]
    if not params and not h.requires_grad:
        return steps(h)
    return _InvertSteps.apply(steps, h, *params)


def leaf_flows(flow: Flow) -> Iterator[Flow]:
    """The layers of `flow` in forward order, with every FlowSequential opened up."""
    if isinstance(flow, FlowSequential):
        for child in flow:
            yield from leaf_flows(child)
    else:
        yield flow


def rebuild(layer: Flow, y: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """(parts, y', log-det') for the output y of `layer`.

    parts are leaf tensors that require grad and whose concatenation on channels is the layer's
    input, rebuilt by its inverse; (y', log-det') is the layer's forward of them with grad. A layer
    may define its own `rebuild(y)` to share work between the two (the coupling's conditioner).
    """
    own = getattr(layer, "rebuild", None)
    if own is not None:
        return own(y)
    with torch.no_grad():
        x, _ = layer.inverse(y)
    x = x.detach().requires_grad_()
    y_new, logdet = layer(x)
    return [x], y_new, logdet


class _InvertSteps(torch.autograd.Function):
    """y, log-det = steps(x) without a graph; the backward rebuilds each layer's input by inversion."""

    @staticmethod
    def forward(ctx, steps: FlowSequential, x: torch.Tensor, *params: torch.Tensor):
        y, logdet = steps(x)  # autograd.Function.forward runs without grad: nothing is kept
        ctx.steps, ctx.params = steps, params
        ctx.save_for_backward(y)
        return y, logdet

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor, grad_logdet: torch.Tensor):
        (y,) = ctx.saved_tensors
        index = {id(p): i for i, p in enumerate(ctx.params)}
        grads: list = [None] * len(ctx.params)
        y = y.detach()
        grad_y = torch.zeros_like(y) if grad_y is None else grad_y
        layers = list(leaf_flows(ctx.steps))
        for layer in reversed(layers):
            y, grad_y = _layer_backward(layer, y, grad_y, grad_logdet, index, grads)
        return (None, grad_y, *grads)


def _layer_backward(layer: Flow, y, grad_y, grad_logdet, index: dict, grads: list) -> tuple:
    """(the layer's rebuilt input, the gradient there); adds the layer's parameter gradients to `grads`."""
    with torch.enable_grad():
        parts, y_new, logdet = rebuild(layer, y)
        params = [p for p in layer.parameters() if id(p) in index]
        outputs, cotangents = [y_new], [grad_y]
        if grad_logdet is not None and logdet.requires_grad:
            outputs.append(logdet)
            cotangents.append(grad_logdet)
        found = torch.autograd.grad(outputs, [*parts, *params], cotangents, allow_unused=True)
    for p, g in zip(params, found[len(parts) :]):
        if g is not None:
            i = index[id(p)]
            grads[i] = g if grads[i] is None else grads[i] + g
    x = torch.cat([p.detach() for p in parts], dim=1) if len(parts) > 1 else parts[0].detach()
    part_grads = [torch.zeros_like(p) if g is None else g for p, g in zip(parts, found[: len(parts)])]
    grad_x = torch.cat(part_grads, dim=1) if len(parts) > 1 else part_grads[0]
    return x, grad_x


@torch.no_grad()
def rebuild_error(steps: FlowSequential, h: torch.Tensor) -> float:
    """Largest |rebuilt − stored| over the inputs of every layer of `steps`, rebuilt as invert mode's backward does.

    The forward records each layer's input; the walk back from the output inverts one layer at a
    time from the previous rebuilt value, so the error compounds exactly as it does in training.
    """
    inputs: list[torch.Tensor] = []
    for layer in leaf_flows(steps):
        inputs.append(h)
        h, _ = layer(h)
    errors = []
    for layer, stored in zip(reversed(list(leaf_flows(steps))), reversed(inputs)):
        h, _ = layer.inverse(h)
        errors.append((h - stored).abs().max())
    return torch.stack(errors).max().item() if errors else 0.0  # NaN if any is NaN
