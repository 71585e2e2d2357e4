"""What a training checkpoint holds beyond the weights: step counters, optimizer and RNG state."""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from finc_cli.checkpoint import load_weights, read_checkpoint
from finc_cli.config import Config
from finc_cli.errors import CheckpointError, TrainingDiverged
from finc_cli.text import first_line

__all__ = [
    "MAX_ROLLBACKS",
    "TrainState",
    "checkpoint_payload",
    "estimated_checkpoint_bytes",
    "params_digest",
    "params_finite",
    "restore",
    "roll_back",
    "rng_state",
    "set_rng_state",
]

MAX_ROLLBACKS = 10  # each halves the learning rate: 2^-10 of it is no longer training


@dataclass
class TrainState:
    step: int = 0
    best_val_bpd: float = math.inf
    bad_steps: int = 0  # consecutive non-finite steps
    rollbacks: int = 0
    lr_scale: float = 1.0  # lowered after each rollback
    wall_before_s: float = 0.0  # wall time of the sessions before this one (0 for checkpoints without wall_s)
    default_weights: Optional[str] = None  # "ema" or "raw": the lower scorer at the latest validation
    session_t0: float = field(default_factory=time.perf_counter, repr=False)  # this session's start, not saved

    def wall(self, now: float | None = None) -> float:
        """The run's cumulative wall time at perf_counter `now` (default: this moment), across every resume."""
        return self.wall_before_s + ((time.perf_counter() if now is None else now) - self.session_t0)


def params_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer's bytes: equal digests mean bit-identical weights."""

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def params_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_payload(model, optimizer, state: TrainState, cfg: Config, ema=None) -> dict:
    payload = {
        "config": cfg.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "train_state": {
            "step": state.step,
            "best_val_bpd": state.best_val_bpd,
            "bad_steps": state.bad_steps,
            "rollbacks": state.rollbacks,
            "lr_scale": state.lr_scale,
            "wall_s": state.wall(),
        },
        "rng": rng_state(),
    }
    if ema is not None:
        payload["ema"] = ema.state_dict()
    if state.default_weights is not None:  # the weights commands use by default (`--weights auto`)
        payload["default_weights"] = state.default_weights
    return payload


def restore(saved: dict, model, optimizer, state: TrainState, path: Path = Path("checkpoint")) -> None:
    """Load weights, optimizer, step counters and RNG from a checkpoint; a mismatch is a CheckpointError."""

    load_weights(model, saved["model"], path)
    try:
        if "optimizer" in saved:
            optimizer.load_state_dict(saved["optimizer"])
        ts = saved.get("train_state", {})
        state.step = int(ts.get("step", 0))
        state.best_val_bpd = float(ts.get("best_val_bpd", math.inf))
        state.bad_steps = int(ts.get("bad_steps", 0))
        state.rollbacks = int(ts.get("rollbacks", 0))
        state.lr_scale = float(ts.get("lr_scale", 1.0))
        state.wall_before_s = float(ts.get("wall_s", 0.0))
        state.default_weights = saved.get("default_weights") if saved.get("default_weights") in ("ema", "raw") else None
        if "rng" in saved:
            set_rng_state(saved["rng"])
    except (ValueError, KeyError, TypeError, RuntimeError, AttributeError) as exc:
        detail = first_line(exc)[:160]
        raise CheckpointError(f"{path}: its optimizer or training state does not fit this run ({detail})") from None


def roll_back(state: TrainState, path: Path, model, optimizer, ema=None) -> Optional[int]:
    """Too many bad steps in a row: reload the weights of `path` (when it exists) and halve the learning rate.

    Returns the reloaded checkpoint's step. The step counter moves on (the batches that failed are not
    retried); after MAX_ROLLBACKS this raises TrainingDiverged rather than loop forever.
    """
    if state.rollbacks >= MAX_ROLLBACKS:
        raise TrainingDiverged(
            f"training diverged: still non-finite at step {state.step} after {state.rollbacks} rollbacks; "
            f"lower train.lr or set train.grad_clip, then --resume"
        )
    state.rollbacks += 1
    state.lr_scale *= 0.5
    state.bad_steps = 0
    if not path.is_file():
        return None
    saved = read_checkpoint(path)
    model.load_state_dict(saved["model"])
    if "optimizer" in saved:
        optimizer.load_state_dict(saved["optimizer"])
    step = saved.get("train_state", {}).get("step")
    if ema is not None and "ema" in saved:
        ema.load_state_dict(saved["ema"], step=step or 0)
    return step


def estimated_checkpoint_bytes(model, optimizer) -> int:
    """Before the first save: the weights, plus two moment tensors per weight for Adam-like optimizers."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return weights * (3 if isinstance(optimizer, (torch.optim.Adam, torch.optim.Adamax, torch.optim.AdamW)) else 1)
