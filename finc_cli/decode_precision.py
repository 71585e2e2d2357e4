"""--decode-precision: float64 inverse where the model's own round trip is not trusted (docs/inverse.md §11)."""

from __future__ import annotations

import copy
from typing import Optional

import torch

from finc_cli.errors import InputError
from finc_cli.health import composed_check, composed_warning, unit_gains
from finc_cli.model import FlowModel

__all__ = [
    "check_decode_precision",
    "composed_section",
    "DECODE_PRECISIONS",
    "decoding_model",
    "PROBE_IMAGES",
]

DECODE_PRECISIONS = ("auto", "float32", "float64")
PROBE_IMAGES = 4  # images the `auto` check round-trips in the model's own precision


def check_decode_precision(value: str) -> str:
    """The value itself, or an InputError (one line) naming the choices."""
    if value not in DECODE_PRECISIONS:
        raise InputError(f"--decode-precision must be one of {', '.join(DECODE_PRECISIONS)}, got {value!r}")
    return value


def _precision_of(model: FlowModel) -> str:
    return str(next(model.parameters()).dtype).replace("torch.", "")


def decoding_model(model: FlowModel, precision: str, check: Optional[dict] = None) -> tuple[FlowModel, str]:
    """(the model to run the inverse with, the precision used).

    float32 is the model as loaded; float64 a float64 copy (the CPU and CUDA inverse backends take
    float64); auto is the model unless `check` (its composed check) is not trusted, then float64.
    """
    check_decode_precision(precision)
    if precision == "float64" or (precision == "auto" and check is not None and not check["trusted"]):
        if next(model.parameters()).dtype == torch.float64:
            return model, "float64"
        return copy.deepcopy(model).double(), "float64"
    return model, _precision_of(model)


def composed_section(model: FlowModel, probe: torch.Tensor) -> dict:
    """The composed check of `probe` (integer images) with the FInC units' inverse gains and the warning line."""
    check = composed_check(model, probe)
    gains = unit_gains(model)
    return {
        **check,
        "max_unit_gain": max(gains.values(), default=None),
        "unit_gains": gains,
        "warning": composed_warning(check),
    }
