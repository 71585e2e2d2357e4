"""Checkpoints: atomic save, safe load (weights_only), config and versions inside."""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch

from finc_cli import __version__
from finc_cli.config import config_from_dict
from finc_cli.errors import CheckpointError, ConfigError
from finc_cli.files.atomic import atomic_path
from finc_cli.model import build_model

__all__ = [
    "check_ema_weights",
    "copy_into_parameters",
    "load_ema_weights",
    "checkpoint_weights",
    "config_from_checkpoint",
    "FORMAT",
    "FORMAT_VERSION",
    "load_checkpoint",
    "load_model",
    "load_weights",
    "model_from_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]

FORMAT = "finc-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: Union[str, os.PathLike], payload: dict[str, Any]) -> None:
    """Write `payload` (plus format markers) atomically: temp file, fsync, rename."""

    saved = {"format": FORMAT, "format_version": FORMAT_VERSION, "finc_version": __version__, **payload}
    with atomic_path(path) as tmp:
        torch.save(saved, tmp)


def _torch_load(path: Path, map_location: Any) -> Any:
    """torch.load with weights_only=True: plain tensors and containers only, no code run."""

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the error below says it all
            return torch.load(path, map_location=map_location, weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a foreign file can fail in any part of the reader
        unsafe = re.search(r"GLOBAL (\S+)|Unsupported (?:global|class) (\S+)", str(exc))
        if isinstance(exc, pickle.UnpicklingError) and unsafe:
            name = (unsafe.group(1) or unsafe.group(2)).rstrip(".,:")
            raise CheckpointError(
                f"{path} holds a Python object ({name}) that a safe load refuses; not loaded, nothing run "
                "- it was not written by finc"
            ) from None
        raise CheckpointError(f"{path} is truncated, corrupted or not a PyTorch file (cannot be read)") from None


def read_checkpoint(path: Union[str, os.PathLike], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with `weights_only=True`; any problem is a CheckpointError."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; give a checkpoint file such as {path}/best.pt")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    saved = _torch_load(path, map_location)
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a finc checkpoint (no '{FORMAT}' marker)")
    version = saved.get("format_version", 0)
    if not isinstance(version, int):
        raise CheckpointError(f"{path} has an unreadable format version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version}, newer than this finc reads ({FORMAT_VERSION}); upgrade finc"
        )
    for key in ("config", "model"):
        if not isinstance(saved.get(key), dict):
            raise CheckpointError(f"{path} is incomplete: no '{key}' entry")
    return saved


def config_from_checkpoint(saved: dict, path: Union[str, os.PathLike] = "checkpoint"):
    """The checkpoint's config. One saved before `model.class_prior` existed had the per-channel class
    prior, so a config without that key reads as `channel` (docs/model.md §14), not as today's default."""
    raw = saved["config"]
    model = raw.get("model") if isinstance(raw, dict) else None
    if isinstance(model, dict) and "class_prior" not in model:
        raw = {**raw, "model": {**model, "class_prior": "channel"}}
    try:
        return config_from_dict(raw)
    except ConfigError as exc:
        raise CheckpointError(f"{path} holds an invalid config: {exc}") from None


def _mismatch(expected: dict, found: dict) -> str:
    """A one-line summary of how a state dict differs from the model's: missing, unexpected, shapes."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k} {tuple(found[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and hasattr(found[k], "shape") and tuple(found[k].shape) != tuple(v.shape)
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if items:
            more = f" and {len(items) - 1} more" if len(items) > 1 else ""
            parts.append(f"{len(items)} {label} (e.g. {items[0]}{more})")
    return "; ".join(parts)


def _conditional_parts(keys) -> tuple[bool, bool]:
    """(class-conditional priors, class head) of a state dict, from its keys (docs/model.md §14)."""
    keys = list(keys)
    return any(k.startswith("top_prior.") for k in keys), any(k.startswith("class_head.") for k in keys)


def _check_conditional(expected: dict, found: dict, path) -> None:
    """One line when class-conditional weights meet an unconditional model or the reverse, or a class head is
    missing or extra (set by model.conditional and train.class_weight)."""
    (want_cond, want_head), (has_cond, has_head) = _conditional_parts(expected), _conditional_parts(found)
    if want_cond != has_cond:
        kind = "a class-conditional" if has_cond else "an unconditional"
        raise CheckpointError(
            f"{path}: holds the weights of {kind} model but the config has model.conditional "
            f"{str(want_cond).lower()}; use the config the checkpoint was trained with"
        )
    if want_head != has_head:
        raise CheckpointError(
            f"{path}: {'holds' if has_head else 'has no'} class-head weights but the config has train.class_weight "
            f"{'0' if has_head else '> 0'}; use the config the checkpoint was trained with"
        )


def load_weights(model, weights: Any, path: Union[str, os.PathLike] = "checkpoint") -> None:
    """Strictly load `weights` into `model`, or raise a CheckpointError summarising the mismatch."""
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: its 'model' entry is not a state dict")
    _check_conditional(model.state_dict(), weights, path)
    detail = _mismatch(model.state_dict(), weights)
    if detail:
        raise CheckpointError(f"{path}: weights do not match the architecture in its config: {detail}")
    try:
        model.load_state_dict(weights, strict=True)
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1].strip()[:160]
        raise CheckpointError(f"{path}: weights cannot be loaded ({first})") from None


def checkpoint_weights(saved: dict, weights: Optional[str] = None, path: Union[str, os.PathLike] = "checkpoint") -> str:
    """Which weights of a checkpoint to use: "ema" or "raw".

    `weights` None or "auto" takes the checkpoint's `default_weights` (the lower scorer at its run's
    latest validation); a checkpoint without that record gives the EMA weights when it holds them,
    else the raw ones. "ema" on a checkpoint without EMA weights is a CheckpointError.
    """
    if weights not in (None, "auto", "ema", "raw"):
        raise CheckpointError(f"unknown weights {weights!r}; choose auto, ema or raw")
    has_ema = "ema" in saved
    if weights == "ema" and not has_ema:
        raise CheckpointError(f"{path} holds no EMA weights (trained with train.ema_decay 0); use --weights raw")
    if weights in ("ema", "raw"):
        return weights
    recorded = saved.get("default_weights")
    if recorded == "raw" or (recorded == "ema" and has_ema):
        return recorded
    return "ema" if has_ema else "raw"


def model_from_checkpoint(
    saved: dict,
    path: Union[str, os.PathLike] = "checkpoint",
    device: Optional[str] = None,
    weights: Optional[str] = None,
):
    """Build the model the checkpoint's config describes and load its weights (strict).

    `weights`: None or "auto", "ema" or "raw", as `checkpoint_weights` resolves them.
    """

    cfg = config_from_checkpoint(saved, path)
    try:
        model = build_model(cfg)
    except ValueError as exc:
        raise CheckpointError(f"{path}: cannot build its model: {exc}") from None
    load_weights(model, saved["model"], path)
    if checkpoint_weights(saved, weights, path) == "ema":
        load_ema_weights(model, saved["ema"], path)
    if device is not None:
        model.to(device)
    model.eval()
    return model, cfg


def load_model(path: Union[str, os.PathLike], device: Optional[str] = None, weights: Optional[str] = None):
    """(model in eval mode, Config, "ema" or "raw": the weights loaded) from a checkpoint file."""
    saved = read_checkpoint(path)
    used = checkpoint_weights(saved, weights, path)
    return (*model_from_checkpoint(saved, path, device, used), used)


def load_checkpoint(path: Union[str, os.PathLike], device: Optional[str] = None, weights: Optional[str] = None):
    """Public API: (model in eval mode, Config) from a checkpoint file; its default weights unless `weights` says."""
    return load_model(path, device, weights)[:2]


# How EMA weights are stored: {'decay', 'updates', 'params': {name: tensor}} beside the raw weights.


@torch.no_grad()
def copy_into_parameters(model, values: dict) -> None:
    """Copy `values` (name -> tensor) into the model's parameters in place (their versions bump)."""
    for name, p in model.named_parameters():
        p.copy_(values[name])


def load_ema_weights(model, state, path="checkpoint") -> None:
    """Put a checkpoint's EMA weights into the model's parameters; a mismatch is a CheckpointError."""
    check_ema_weights(model, state, path)
    copy_into_parameters(model, state["params"])


def check_ema_weights(model, state, path="checkpoint") -> None:
    """A CheckpointError unless `state` holds EMA weights of every parameter of the model, in its shapes."""
    params = state.get("params") if isinstance(state, dict) else None
    expected = dict(model.named_parameters())
    if not isinstance(params, dict) or set(params) != set(expected):
        raise CheckpointError(f"{path}: its EMA weights do not match the model's parameters")
    for name, value in params.items():
        if not isinstance(value, torch.Tensor) or value.shape != expected[name].shape:
            raise CheckpointError(f"{path}: its EMA weight {name} has the wrong shape")
    updates = state.get("updates", 0)
    if not isinstance(updates, int) or isinstance(updates, bool) or updates < 0:
        raise CheckpointError(f"{path}: its EMA update count {updates!r} is not a count")
