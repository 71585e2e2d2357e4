"""What every inference command sets up first: the device, the checkpoint's model, config and weights, its data."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from finc_cli import checkpoint as checkpoints
from finc_cli.config import Config
from finc_cli.data.labels import LabelledDataset
from finc_cli.data.load import get_dataset, get_labelled_dataset
from finc_cli.errors import ImageInputError
from finc_cli.model import FlowModel
from finc_cli.runtime.device import resolve_device

__all__ = ["Inference", "load_inference", "read_tensor_file"]


@dataclass
class Inference:
    """A loaded checkpoint on its device, and where its dataset's splits are read from."""

    device: torch.device
    model: FlowModel
    cfg: Config
    weights: str  # the weights loaded: "ema" or "raw"
    data_dir: Optional[str] = None  # else the checkpoint config's
    cache_dir: Optional[str] = None  # else the checkpoint config's
    notify: Optional[Callable[[str], None]] = None  # one-line notes about the data (e.g. an unusable cache)

    def dataset(self, split: str):
        """A split of the checkpoint's dataset: the prepared cache if current, else the sources; with its labels
        for a class-conditional model (only then are labels read)."""
        data_dir, cache_dir = self.data_dir or self.cfg.data.data_dir, self.cache_dir or self.cfg.data.cache_dir
        load = get_labelled_dataset if self.model.conditional else get_dataset
        return load(self.cfg.data.name, split, data_dir, cache_dir=cache_dir, notify=self.notify)

    def labelled_dataset(self, split: str) -> LabelledDataset:
        """`dataset(split)` with its labels (a missing or broken label file: one line naming it)."""
        data_dir, cache_dir = self.data_dir or self.cfg.data.data_dir, self.cache_dir or self.cfg.data.cache_dir
        return get_labelled_dataset(self.cfg.data.name, split, data_dir, cache_dir=cache_dir, notify=self.notify)


def load_inference(
    checkpoint: str,
    *,
    device: str = "auto",
    weights: Optional[str] = None,
    data_dir: Optional[str] = None,
    cache_dir: Optional[str] = None,
    notify: Optional[Callable[[str], None]] = None,
) -> Inference:
    """Resolve `device` ("auto": CUDA when available) and load the checkpoint's `weights` (None: its default)."""
    dev = resolve_device(device)
    # Through the module, not a name bound at import: a stand-in for load_model reaches every command.
    model, cfg, used = checkpoints.load_model(checkpoint, device=str(dev), weights=weights)
    return Inference(dev, model, cfg, used, data_dir, cache_dir, notify)


def read_tensor_file(path: str, kind: str, missing: str = "") -> object:
    """A file of tensors that finc wrote (latents, directions), loaded with weights_only=True so no code runs.

    A missing, truncated, corrupted, foreign or unsafe file is one ImageInputError line naming `kind`;
    `missing` is the fix appended when the file does not exist.
    """
    if not Path(path).is_file():
        raise ImageInputError(f"{kind} file {path} does not exist{missing}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)  # tensors only, no code run
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - truncated, corrupted, foreign or unsafe: all the same to the user
        raise ImageInputError(f"{path} is not a readable finc {kind} file (truncated, corrupted or foreign)") from None
