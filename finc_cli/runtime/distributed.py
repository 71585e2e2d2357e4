"""torch.distributed glue: rank/world from torchrun's environment, DDP wrapping, reductions."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch

from finc_cli.runtime.device import resolve_device

__all__ = [
    "active",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "cleanup",
    "DistContext",
    "gather_values",
    "max_over_ranks",
    "setup",
]


@dataclass
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this call created the process group, so it destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device_name: str = "auto") -> DistContext:
    """Read RANK / LOCAL_RANK / WORLD_SIZE (torchrun) and join the process group when > 1."""

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = False
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
        owns = True
    return DistContext(rank, local, world, device, owns)


def cleanup() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def barrier() -> None:
    if active():
        torch.distributed.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if active():
        torch.distributed.all_reduce(t)
    return t


def gather_values(values: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate a 1-D float64 CPU tensor over all ranks; returns (values, total count)."""
    if not active():
        return values, values.numel()
    gathered: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, values.tolist())
    merged = torch.tensor([v for part in gathered for v in part], dtype=torch.float64)
    return merged, merged.numel()


def max_over_ranks(value: Optional[int], device: torch.device) -> Optional[int]:
    """The largest non-None value over ranks (None when every rank has None).

    One small tensor all-reduce: cheap enough to run every training step, unlike pickling an
    object for broadcast_object.
    """
    if not active():
        return value
    t = torch.tensor([0 if value is None else int(value)], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item()) or None


def broadcast_object(obj, src: int = 0):
    if not active():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]
