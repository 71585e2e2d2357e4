"""TensorBoard logging (train.tensorboard): scalars, sample grids, per-unit FInC health (docs/training.md §13)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from finc_cli.errors import ConfigError

__all__ = ["INSTALL_HINT", "TensorBoardLogger", "require_tensorboard"]

INSTALL_HINT = "pip install 'finc[tensorboard]' (or pip install tensorboard)"

# metrics.jsonl key -> TensorBoard tag; the same numbers, so the two logs never disagree.
_SCALARS = {
    "loss_bpd": "train/bpd",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "it_s": "train/steps_per_s",
    "wall_s": "train/wall_s",
    "val_bpd": "val/bpd",
    "val_bpd_stderr": "val/bpd_stderr",
    "val_bpd_raw": "val/bpd_raw",
    "val_bpd_ema": "val/bpd_ema",
    "recon_max_err": "health/recon_max_err",
    "rebuild_max_err": "health/rebuild_max_err",
    "decode_amplification": "health/decode_amplification",
    "roundtrip_wrong_share": "health/roundtrip_wrong_share",
    "finc_gain_max": "health/finc_gain_max",
}


def require_tensorboard():
    """torch.utils.tensorboard's SummaryWriter, or a one-line error naming the install command."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch.utils.tensorboard imports the tensorboard package, an optional extra
        raise ConfigError(
            f"train.tensorboard needs the tensorboard package: {INSTALL_HINT}, or --set train.tensorboard=false"
        ) from None
    return SummaryWriter


class TensorBoardLogger:
    """Writes the event files in `log_dir` (RunDir.tensorboard) on rank 0.

    A fresh run starts the folder over; a resumed one purges the events after its checkpoint's
    step, as metrics.jsonl is truncated there (docs/training.md §10).
    """

    def __init__(self, log_dir: Path, step: int, fresh: bool, batch_size: int):
        writer_class = require_tensorboard()
        log_dir = Path(log_dir)
        if fresh and log_dir.is_dir():
            shutil.rmtree(log_dir)
        self.batch_size = batch_size
        self.writer = writer_class(str(log_dir), purge_step=None if fresh else step + 1)

    def record(self, record: dict) -> None:
        """The scalars of one metrics.jsonl record (train step or evaluation); events are left out."""
        if "event" in record:
            return
        step = record["step"]
        for key, tag in _SCALARS.items():
            value = record.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(tag, value, step)
        if isinstance(record.get("it_s"), (int, float)):
            self.writer.add_scalar("train/images_per_s", record["it_s"] * self.batch_size, step)
        data_s, compute_s = record.get("data_s"), record.get("compute_s")
        if isinstance(data_s, (int, float)) and isinstance(compute_s, (int, float)) and data_s + compute_s > 0:
            self.writer.add_scalar("train/data_wait_share", data_s / (data_s + compute_s), step)

    def finc_units(self, model, health: list[dict], step: int) -> None:
        """Per FInC unit: the norm of its effective kernel and its inverse error on the health probe."""
        errors = {row["layer"]: row for row in health}
        for name, unit in model.finc_units():
            self.writer.add_scalar(f"finc_weight_norm/{name}", unit.effective_weight().detach().norm().item(), step)
            if name in errors:
                self.writer.add_scalar(f"finc_inverse_max_err/{name}", errors[name]["max_abs_err"], step)
                self.writer.add_scalar(f"finc_inverse_mean_err/{name}", errors[name]["mean_abs_err"], step)

    def sample_grid(self, path: Path, step: int) -> None:
        """The grid PNG the run just wrote, as it is on disk."""

        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB"))  # (H, W, 3) uint8
        self.writer.add_image("samples", arr, step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
