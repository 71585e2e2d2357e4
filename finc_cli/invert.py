"""Encode and decode images exactly: the plain function behind `finc invert`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

LATENTS_FORMAT = "finc-latents"


class ImageInputError(ValueError):
    """An input image cannot be used with this model; one line naming the file and the fix."""


def load_images(paths: Sequence[str], channels: int, height: int, width: int, bins: int):
    """PNG/JPEG files -> uint8 (N, C, H, W) with values in [0, bins-1] (inverse of the grid scaling)."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    mode = {1: "L", 3: "RGB"}[channels]
    images = []
    for p in paths:
        try:
            with Image.open(p) as img:
                img.load()
                if img.mode != mode:
                    raise ImageInputError(f"{p} is a {img.mode} image but the model expects {mode} ({channels} channel{'s' if channels > 1 else ''})")
                if img.size != (width, height):
                    raise ImageInputError(f"{p} is {img.size[0]}×{img.size[1]} but the model expects {width}×{height}; resize it first")
                arr = np.asarray(img, dtype=np.float64)
        except FileNotFoundError:
            raise ImageInputError(f"image {p} does not exist") from None
        except (UnidentifiedImageError, OSError):
            raise ImageInputError(f"{p} is not a readable image file") from None
        arr = arr[:, :, None] if arr.ndim == 2 else arr  # (H, W, C)
        if bins != 256:
            arr = np.round(arr * (bins - 1) / 255.0)
        images.append(torch.from_numpy(arr.astype(np.uint8)).permute(2, 0, 1))  # (C, H, W)
    return torch.stack(images)


def save_latents(path: str, latents, meta: dict) -> None:
    import torch

    from finc_cli.atomic import atomic_path

    with atomic_path(Path(path)) as tmp:
        torch.save({"format": LATENTS_FORMAT, "latents": [z.cpu() for z in latents], **meta}, tmp)


def load_latents(path: str, model) -> list:
    import warnings

    import torch

    if not Path(path).is_file():
        raise ImageInputError(f"latents file {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)  # tensors only, no code run
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - truncated, corrupted, foreign or unsafe: all the same to the user
        raise ImageInputError(f"{path} is not a readable finc latents file (truncated, corrupted or foreign)") from None
    if not isinstance(data, dict) or data.get("format") != LATENTS_FORMAT:
        raise ImageInputError(f"{path} is not a finc latents file (written by finc invert --save-latents)")
    latents = data.get("latents")
    if not isinstance(latents, list) or not all(isinstance(z, torch.Tensor) and z.dim() == 4 for z in latents):
        raise ImageInputError(f"{path} is a damaged finc latents file: 'latents' is not a list of (N, C, H, W) tensors")
    expected = model.latent_shapes()
    got = [tuple(z.shape[1:]) for z in latents]
    if got != [tuple(s) for s in expected]:
        raise ImageInputError(f"{path} holds latents of shapes {got}, but this model's are {expected}")
    return latents


def _check_outputs(save_latents_to: Optional[str], decoded_out: Optional[str], threshold: Optional[float]) -> None:
    """Bad output paths and thresholds fail before the model is loaded, and before anything is written."""
    import math

    from finc_cli.sample import check_output_file

    for out in (save_latents_to, decoded_out):
        if out:
            check_output_file(Path(out))
    if threshold is not None and not (threshold >= 0 and math.isfinite(threshold)):
        raise ValueError(f"--threshold must be a finite number >= 0, got {threshold}")


def invert(
    checkpoint: str,
    images: Optional[Sequence[str]] = None,
    split: str = "test",
    limit: int = 256,
    data_dir: Optional[str] = None,
    device: str = "auto",
    backend: Optional[str] = None,
    save_latents_to: Optional[str] = None,
    latents_from: Optional[str] = None,
    decoded_out: Optional[str] = None,
    threshold: Optional[float] = None,
) -> dict:
    """Encode then decode; report pixel-space reconstruction error, per-FInC-unit error and timings."""
    import torch

    from finc_cli.checkpoint import load_checkpoint
    from finc_cli.data.preprocess import quantize
    from finc_cli.device import resolve_device

    _check_outputs(save_latents_to, decoded_out, threshold)
    dev = resolve_device(device)
    model, cfg = load_checkpoint(checkpoint, device=str(dev))
    C, H, W = model.image_shape
    threshold = cfg.train.health_threshold if threshold is None else threshold
    if latents_from:
        latents = [z.to(dev) for z in load_latents(latents_from, model)]
        t0 = time.perf_counter()
        with torch.no_grad():
            decoded = model.decode(latents, backend=backend)
        result = {"n_images": decoded.shape[0], "decode_seconds": time.perf_counter() - t0, "source": latents_from}
        if decoded_out:
            from finc_cli.images import save_grid

            save_grid(decoded, decoded_out, model.bins)
            result["decoded_out"] = decoded_out
        return result
    if images:
        x = load_images(images, C, H, W, model.bins)
        source = f"{len(images)} image file(s)"
    else:
        from finc_cli.data.datasets import get_dataset
        from finc_cli.train_step import fetch

        ds = get_dataset(cfg.data.name, split, data_dir or cfg.data.data_dir)
        x = fetch(ds, torch.arange(min(limit, len(ds))))
        source = f"{cfg.data.name}/{split} (first {x.shape[0]})"
    x = x.to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    with torch.no_grad():
        sync()
        t0 = time.perf_counter()
        latents = model.encode(x)
        sync()
        t1 = time.perf_counter()
        v_rec = model.latents_to_v(latents, backend=backend)
        decoded = quantize(v_rec, model.bins)
        sync()
        t2 = time.perf_counter()
        v = model._dequantize(x, "center")
        cont_err = ((v_rec - v).abs() * model.bins).double()  # in intensity levels
        layers = model.reconstruction_report(x, backend=backend)
    for row in layers:
        row["flagged"] = row["max_abs_err"] > threshold
    if save_latents_to:
        save_latents(save_latents_to, latents, {"checkpoint": str(checkpoint), "source": source})
    if decoded_out:
        from finc_cli.images import save_grid

        save_grid(decoded, decoded_out, model.bins)
    worst = max(layers, key=lambda r: r["max_abs_err"], default=None)
    return {
        "n_images": int(x.shape[0]),
        "source": source,
        "exact": bool(torch.equal(decoded.cpu(), x.cpu())),
        "max_abs_err": cont_err.max().item(),
        "mean_abs_err": cont_err.mean().item(),
        "pixel_mismatches": int((decoded.cpu() != x.cpu()).sum()),
        "encode_seconds": t1 - t0,
        "decode_seconds": t2 - t1,
        "threshold": threshold,
        "layers": layers,
        "worst_layer": worst["layer"] if worst else None,
        "flagged_layers": [r["layer"] for r in layers if r["flagged"]],
        "latents_saved_to": save_latents_to,
        "decoded_out": decoded_out,
    }
