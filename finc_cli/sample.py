"""Sampling from a checkpoint: the plain function behind `finc sample`."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional

from finc_cli.atomic import check_output_file
from finc_cli.errors import InputError, OutputError

__all__ = ["sample"]


def sample(
    checkpoint: str,
    n: int = 64,
    out: str = "samples.png",
    temperature: float = 1.0,
    seed: Optional[int] = None,
    nrow: Optional[int] = None,
    individual: bool = False,
    device: str = "auto",
    backend: Optional[str] = None,
    weights: Optional[str] = None,
) -> dict:
    """Draw n samples at temperature T and write a PNG grid (or one PNG per sample)."""
    import torch

    from finc_cli.checkpoint import load_checkpoint
    from finc_cli.device import resolve_device
    from finc_cli.images import save_grid, save_png, to_uint8_255
    from finc_cli.inverse import use_backend

    if n < 1:
        raise InputError(f"-n must be at least 1, got {n}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise InputError(f"--temperature must be a finite number > 0, got {temperature}")
    out_path = Path(out)
    if individual:
        if out_path.exists() and not out_path.is_dir():
            raise OutputError(f"--individual writes one PNG per sample into a directory, but {out_path} is a file")
        check_output_file(out_path / "x.png") if out_path.is_dir() else check_output_file(out_path)
    else:
        check_output_file(out_path)
    dev = resolve_device(device)
    model, cfg = load_checkpoint(checkpoint, device=str(dev), weights=weights)
    g = torch.Generator(device=dev)
    g.manual_seed(seed if seed is not None else torch.seed())
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad(), use_backend(backend):
        images = model.sample(n, temperature=temperature, generator=g)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if individual:
        _save_individual(to_uint8_255(images, model.bins), out_path, save_png)
        written = str(out_path)
    else:
        save_grid(images, out_path, model.bins, nrow=nrow)
        written = str(out_path)
    return {
        "n": n,
        "out": written,
        "temperature": temperature,
        "seed": seed,
        "sampling_seconds": seconds,
        "seconds_per_image": seconds / n,
        "dataset": cfg.data.name,
        "device": str(dev),
    }


def _save_individual(pixels, folder: Path, save_png) -> None:
    """One PNG per sample; if any write fails, the files this call wrote (and a folder it made) go."""
    created = not folder.exists()
    folder.mkdir(exist_ok=True)
    written: list[Path] = []
    try:
        for i in range(pixels.shape[0]):
            written.append(folder / f"sample_{i:05d}.png")
            save_png(pixels[i], written[-1])
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        if created and not any(folder.iterdir()):
            folder.rmdir()
        raise
