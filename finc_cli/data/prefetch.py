"""Batches assembled ahead of the step that needs them: a background thread, or DataLoader worker processes."""

from __future__ import annotations

import queue
import threading
from typing import Callable, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from finc_cli.data.batches import StepBatch

__all__ = ["Prefetcher", "to_device"]


class _Steps(Dataset):
    """Item i is the batch of step start + i (what DataLoader workers compute, in order)."""

    def __init__(self, make: Callable[[int], StepBatch], start: int, stop: int):
        self.make, self.start, self.stop = make, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, i: int) -> StepBatch:
        return self.make(self.start + i)


class Prefetcher:
    """Yields `make(step)` for step = start, start + 1, ... < stop, computed `depth` steps ahead.

    `make` must be a pure function of the step (see `data.batches.step_batch`), so where and when
    a batch is assembled changes nothing it contains. With `workers` > 0, batches come from that
    many DataLoader worker processes (decoding JPEGs in parallel); with 0, from one background
    thread, which is enough for memory-mapped or in-memory arrays. With `pin`, batches arrive in
    pinned memory so that the copy to the GPU can be non-blocking. `get(step)` must be called in
    order; `close()` stops the workers (also on garbage collection).
    """

    def __init__(
        self,
        make: Callable[[int], StepBatch],
        start: int,
        stop: int,
        workers: int = 0,
        depth: int = 2,
        pin: bool = False,
    ):
        self.next_step, self.stop = start, stop
        if workers > 0:
            loader = DataLoader(
                _Steps(make, start, stop),
                batch_size=None,
                shuffle=False,
                num_workers=workers,
                prefetch_factor=depth,
                pin_memory=pin,
            )
            self._iter = iter(loader)
            self._thread = None
        else:
            self._queue: queue.Queue = queue.Queue(maxsize=depth)
            self._stopping = threading.Event()
            self._thread = threading.Thread(
                target=self._produce, args=(make, start, stop, pin), daemon=True, name="finc-prefetch"
            )
            self._thread.start()

    def _produce(self, make, start: int, stop: int, pin: bool) -> None:
        for step in range(start, stop):
            try:
                item: object = make(step)
                if pin:
                    noise = item.noise.pin_memory() if item.noise is not None else None
                    labels = item.labels.pin_memory() if item.labels is not None else None
                    item = StepBatch(item.step, item.images.pin_memory(), noise, labels)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
                item = exc
            while not self._stopping.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self._stopping.is_set() or isinstance(item, BaseException):
                return

    def get(self, step: int) -> StepBatch:
        """The batch of `step` (the next one in order); re-raises an error from its assembly."""
        if step != self.next_step or step >= self.stop:
            raise RuntimeError(f"prefetcher asked for step {step}, next is {self.next_step} (stop {self.stop})")
        item = next(self._iter) if self._thread is None else self._queue.get()
        if isinstance(item, BaseException):
            raise item
        self.next_step += 1
        return item

    def close(self) -> None:
        if self._thread is not None:
            self._stopping.set()
            self._thread.join(timeout=5)
        else:
            self._iter = None  # the DataLoader iterator shuts its workers down when released

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass


def to_device(batch: StepBatch, device: torch.device) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(images, noise) on `device` (noise None when the batch carries none); non-blocking from pinned memory."""
    non_blocking = device.type == "cuda"
    noise = batch.noise.to(device, non_blocking=non_blocking) if batch.noise is not None else None
    return batch.images.to(device, non_blocking=non_blocking), noise
