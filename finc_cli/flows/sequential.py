"""FlowSequential: a composite flow that sums log-dets in order and inverts in reverse."""

from __future__ import annotations

from collections import OrderedDict

import torch

from finc_cli.flows.base import Flow, zeros_logdet

__all__ = ["FlowSequential"]


class FlowSequential(Flow):
    """flows applied in order: FlowSequential(a, b, c) or FlowSequential(OrderedDict(name=flow, ...))."""

    def __init__(self, *flows):
        super().__init__()
        if len(flows) == 1 and isinstance(flows[0], OrderedDict):
            for name, flow in flows[0].items():
                self.add_module(name, flow)
        else:
            for i, flow in enumerate(flows):
                self.add_module(str(i), flow)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, index):
        return list(self._modules.values())[index]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = zeros_logdet(x)
        for flow in self:
            x, logdet = flow(x)
            total = total + logdet
        return x, total

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = zeros_logdet(y)
        for flow in reversed(list(self)):
            y, logdet = flow.inverse(y)
            total = total + logdet
        return y, total
