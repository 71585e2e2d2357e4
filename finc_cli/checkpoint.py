"""Checkpoints: atomic save, safe load (weights_only), config and versions inside."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

FORMAT = "finc-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message is one line naming the file and the problem."""


def save_checkpoint(path: Union[str, os.PathLike], payload: dict[str, Any]) -> None:
    """Write `payload` (plus format markers) atomically: temp file, fsync, rename."""
    import torch

    from finc_cli import __version__
    from finc_cli.atomic import atomic_path

    data = {"format": FORMAT, "format_version": FORMAT_VERSION, "finc_version": __version__, **payload}
    with atomic_path(path) as tmp:
        torch.save(data, tmp)


def read_checkpoint(path: Union[str, os.PathLike], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with `weights_only=True`; any problem is a CheckpointError."""
    import pickle

    import torch

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; give a checkpoint file such as {path}/best.pt")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise CheckpointError(f"{path} holds objects a safe load refuses ({first[:120]}); it is not a finc checkpoint") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, AttributeError, TypeError):
        raise CheckpointError(f"{path} is truncated or corrupted (cannot be read as a PyTorch file)") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a finc checkpoint (no '{FORMAT}' marker)")
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {data['format_version']}, newer than this finc reads ({FORMAT_VERSION}); upgrade finc"
        )
    for key in ("config", "model"):
        if key not in data:
            raise CheckpointError(f"{path} is incomplete: no '{key}' entry")
    return data


def config_from_checkpoint(data: dict, path: Union[str, os.PathLike] = "checkpoint"):
    from finc_cli.config import ConfigError, config_from_dict

    try:
        return config_from_dict(data["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{path} holds an invalid config: {exc}") from None


def model_from_checkpoint(data: dict, path: Union[str, os.PathLike] = "checkpoint", device: Optional[str] = None):
    """Build the model the checkpoint's config describes and load its weights (strict)."""
    from finc_cli.model import build_model

    cfg = config_from_checkpoint(data, path)
    try:
        model = build_model(cfg)
    except ValueError as exc:
        raise CheckpointError(f"{path}: cannot build its model: {exc}") from None
    try:
        model.load_state_dict(data["model"], strict=True)
    except (RuntimeError, KeyError, TypeError) as exc:
        detail = str(exc).strip().splitlines()[0][:160]
        raise CheckpointError(f"{path}: weights do not match the architecture in its config ({detail})") from None
    if device is not None:
        model.to(device)
    model.eval()
    return model, cfg


def load_checkpoint(path: Union[str, os.PathLike], device: Optional[str] = None):
    """Public API: (model in eval mode, Config) from a checkpoint file."""
    data = read_checkpoint(path)
    return model_from_checkpoint(data, path, device)
