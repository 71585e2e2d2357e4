"""Conditioning of the composed inverse: tap rms → FInC unit inverse gain → whole-model amplification, and float64 cost.

A preset's architecture at a chosen image size, ActNorm initialised on random images, every FInC
tap given extra noise so that the learnable taps reach a target rms; then the composed check
(docs/inverse.md §11) in float32 and the round trip in float64. Probe images are uniform random
integers: nothing is downloaded.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Optional, Sequence

import torch

from finc_cli.config import load_preset
from finc_cli.dataset_shapes import dataset_info
from finc_cli.health import composed_check, unit_gains
from finc_cli.model import FlowModel, build_model

__all__ = ["conditioning_rows", "decode_cost_rows", "perturbed_model", "tap_rms"]


def tap_rms(model: FlowModel) -> float:
    """rms of the learnable entries of every FInC unit's effective kernel (the fixed centre diagonal excluded)."""
    squares, count = 0.0, 0
    for _, unit in model.finc_units():
        free = unit.weight.detach() * unit.mask  # (4, C', C', k, k), zero where the centre is fixed
        squares += float((free.double() ** 2).sum())
        count += 4 * int(unit.mask.sum())
    return (squares / max(count, 1)) ** 0.5


def perturbed_model(preset: str, size: int, target_rms: Optional[float], seed: int = 0, init_images: int = 4):
    """(model, probe generator): preset's architecture at size×size, taps raised to `target_rms` (None: as drawn)."""
    cfg = load_preset(preset)
    info = dataset_info(cfg.data.name)
    torch.manual_seed(seed)
    model = FlowModel((info.channels, size, size), info.bins, cfg.model, name=info.name)
    g = torch.Generator().manual_seed(seed)
    model.initialize(torch.randint(0, info.bins, (init_images, info.channels, size, size), generator=g))
    if target_rms is not None:
        extra = max(target_rms**2 - tap_rms(model) ** 2, 0.0) ** 0.5
        with torch.no_grad():
            for _, unit in model.finc_units():
                unit.weight.add_(extra * torch.randn(unit.weight.shape, generator=g))
    return model.eval(), g


def conditioning_rows(
    preset: str = "celeba64",
    sizes: Sequence[int] = (32, 64),
    rms_values: Sequence[Optional[float]] = (None, 0.03, 0.05),
    batch: int = 2,
    seed: int = 0,
) -> list[dict]:
    """One row per (size, tap rms): unit gains, float32 composed check, float64 round trip."""
    rows = []
    for size in sizes:
        for target in rms_values:
            model, g = perturbed_model(preset, size, target, seed)
            x = torch.randint(0, model.bins, (batch, *model.image_shape), generator=g).to(torch.uint8)
            gains = list(unit_gains(model).values())
            t0 = time.perf_counter()
            check = composed_check(model, x)
            t32 = time.perf_counter() - t0
            exact64 = composed_check(copy.deepcopy(model).double(), x)
            rows.append(
                {
                    "preset": preset,
                    "size": size,
                    "tap_rms": tap_rms(model),
                    "unit_gain_median": statistics.median(gains),
                    "unit_gain_max": max(gains),
                    "units": len(gains),
                    "amplification_f32": check["amplification"],
                    "threshold": check["threshold"],
                    "wrong_share_f32": check["wrong_share"],
                    "worst_levels_f32": check["worst_levels"],
                    "exact_f64": exact64["exact"],
                    "amplification_f64": exact64["amplification"],
                    "check_seconds_f32": t32,
                    "batch": batch,
                }
            )
    return rows


def decode_cost_rows(presets: Sequence[str] = ("digits", "cifar10"), batch: int = 16, seed: int = 0) -> list[dict]:
    """Decode time in float32 and in float64 (a float64 copy) for each preset's architecture, one timed run each."""
    rows = []
    for preset in presets:
        torch.manual_seed(seed)
        model = build_model(load_preset(preset)).eval()
        x = torch.randint(0, model.bins, (batch, *model.image_shape)).to(torch.uint8)
        model.initialize(x)
        model.eval()
        seconds = {}
        for name, runner in (("float32", model), ("float64", copy.deepcopy(model).double())):
            latents = runner.encode(x)
            runner.decode(latents)  # warm-up: L⁻¹ caches, native library
            t0 = time.perf_counter()
            runner.decode(latents)
            seconds[name] = time.perf_counter() - t0
        rows.append(
            {
                "preset": preset,
                "batch": batch,
                "decode_s_f32": seconds["float32"],
                "decode_s_f64": seconds["float64"],
                "ratio": seconds["float64"] / seconds["float32"],
                "threads": torch.get_num_threads(),
            }
        )
    return rows
