"""What each preset builds: dataset, architecture and parameter count (behind `finc presets`)."""

from __future__ import annotations

import dataclasses

from finc_cli.config import Config, list_presets, load_preset
from finc_cli.data.datasets import dataset_info
from finc_cli.model import build_model

__all__ = ["preset_rows"]


def preset_rows() -> list[dict]:
    """One row per preset: name, dataset, image shape, L, K, k, width (coupling hidden channels),
    FInC or Glow, and the parameter count of the model `train` would build (trainable weights).
    """

    rows = []
    for name in list_presets():
        cfg = load_preset(name)
        info = dataset_info(cfg.data.name)
        m = cfg.model
        rows.append(
            {
                "name": name,
                "dataset": cfg.data.name,
                "shape": [info.channels, info.height, info.width],
                "levels": m.levels,
                "steps": m.steps,
                "kernel_size": m.kernel_size,
                "width": m.hidden,
                "conv": m.conv,
                "dequantization": m.dequantization,
                "parameters": _parameter_count(cfg),
            }
        )
    return rows


def _parameter_count(cfg) -> int:
    """Trainable parameters of the model `train` builds for cfg, without building all K steps.

    Each level holds K identical flow steps, so the count is linear in K: it is read off the
    models with K = 1 and K = 2, which build in a fraction of the time (tests check it against
    fully built models).
    """

    def count(steps: int) -> int:
        small = Config(name=cfg.name, data=cfg.data, model=dataclasses.replace(cfg.model, steps=steps), train=cfg.train)
        return build_model(small).num_parameters()

    one, two = count(1), count(2)
    return one + (cfg.model.steps - 1) * (two - one)
