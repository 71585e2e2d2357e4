"""Encode and decode images exactly: the plain function behind `finc invert`."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from finc_cli.commands.inference import Inference, load_inference, read_tensor_file
from finc_cli.data.batches import fetch
from finc_cli.decode_precision import PROBE_IMAGES, check_decode_precision, composed_section, decoding_model
from finc_cli.errors import ImageInputError, InputError
from finc_cli.files.atomic import atomic_path, check_output_file
from finc_cli.files.images import load_images, save_grid, save_pairs_grid
from finc_cli.flows.logit import quantize
from finc_cli.health import composed_check
from finc_cli.inverse import use_backend

__all__ = ["invert", "load_latents", "round_trip", "save_latents"]

LATENTS_FORMAT = "finc-latents"


def save_latents(path: str, latents, meta: dict) -> None:

    with atomic_path(Path(path)) as tmp:
        torch.save({"format": LATENTS_FORMAT, "latents": [z.cpu() for z in latents], **meta}, tmp)


def load_latents(path: str, model) -> list:
    data = read_tensor_file(path, "latents")
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

    for out in (save_latents_to, decoded_out):
        if out:
            check_output_file(Path(out))
    if threshold is not None and not (threshold >= 0 and math.isfinite(threshold)):
        raise InputError(f"--threshold must be a finite number >= 0, got {threshold}")


def invert(
    checkpoint: str,
    *,
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
    cache_dir: Optional[str] = None,
    notify=None,
    weights: Optional[str] = None,
    progress=None,
    scale: Optional[int] = None,
    decode_precision: str = "auto",
) -> dict:
    """Encode then decode; report pixel-space reconstruction error, per-FInC-unit error and timings.

    With `latents_from`, only decode that file's latents. `backend` picks the FInC inverse;
    `notify` gets one-line notes about the data (a missing or unusable prepared cache);
    `progress(total)` may return a callback advanced by the number of images done. The
    `decoded_out` grid shows each original above its reconstruction, upscaled by `scale`.
    """

    _check_outputs(save_latents_to, decoded_out, threshold)
    check_decode_precision(decode_precision)
    run = load_inference(
        checkpoint, device=device, weights=weights, data_dir=data_dir, cache_dir=cache_dir, notify=notify
    )
    model, used, batch = run.model, run.weights, run.cfg.train.eval_batch_size
    threshold = run.cfg.train.health_threshold if threshold is None else threshold
    with use_backend(backend):
        if latents_from:
            decoded_file = _decode_file(model, latents_from, run.device, decoded_out, scale, decode_precision)
            return {**decoded_file, "weights": used}
        x, source = _inputs(run, images, split, limit)
        composed = composed_section(model, x[:PROBE_IMAGES])
        runner, precision = decoding_model(model, decode_precision, composed)
        callback = progress(x.shape[0]) if progress else None
        result, latents, decoded = round_trip(runner, x.to(run.device), batch, callback)
        if runner is not model:  # the unit rows describe the model in its own precision
            result["layers"] = model.reconstruction_report(x[:batch].to(run.device))
    gains = composed.pop("unit_gains")
    for row in result["layers"]:
        row["flagged"] = row["max_abs_err"] > threshold
        row["gain"] = gains.get(row["layer"])
    if save_latents_to:
        save_latents(save_latents_to, latents, {"checkpoint": str(checkpoint), "source": source})
    if decoded_out:
        save_pairs_grid(x, decoded, decoded_out, model.bins, scale=scale)
    worst = max(result["layers"], key=lambda r: r["max_abs_err"], default=None)
    return {
        "n_images": int(x.shape[0]),
        "source": source,
        **result,
        "threshold": threshold,
        "worst_layer": worst["layer"] if worst else None,
        "flagged_layers": [r["layer"] for r in result["layers"] if r["flagged"]],
        "latents_saved_to": save_latents_to,
        "decoded_out": decoded_out,
        "weights": used,
        "composed": composed,
        "decode_precision": precision,
    }


def _decode_file(
    model, path: str, device, decoded_out: Optional[str], scale: Optional[int] = None, precision: str = "auto"
) -> dict:
    """Decode the latents saved in `path`; write them as a grid when asked.

    auto: decode in the model's precision, then round-trip the first decoded images; float64 when that is not trusted.
    """
    latents = [z.to(device) for z in load_latents(path, model)]
    t0 = time.perf_counter()
    runner, used = decoding_model(model, precision)
    with torch.no_grad():
        decoded = runner.decode([z.to(next(runner.parameters()).dtype) for z in latents])
        check = composed_check(model, decoded[:PROBE_IMAGES]) if precision == "auto" else None
        if check is not None and not check["trusted"]:
            runner, used = decoding_model(model, precision, check)
            decoded = runner.decode([z.double() for z in latents])
    result = {
        "n_images": decoded.shape[0],
        "decode_seconds": time.perf_counter() - t0,
        "source": path,
        "decode_precision": used,
        "composed": check,
    }
    if decoded_out:
        save_grid(decoded, decoded_out, model.bins, scale=scale)
        result["decoded_out"] = decoded_out
    return result


def _inputs(run: Inference, images, split: str, limit: int) -> tuple:
    """(uint8 images (N, C, H, W), a description): the image files given, else a split's first images."""

    if images:
        return load_images(images, *run.model.image_shape, run.model.bins), f"{len(images)} image file(s)"
    ds = run.dataset(split)
    x = fetch(ds, torch.arange(min(limit, len(ds))))
    return x, f"{run.cfg.data.name}/{split} (first {x.shape[0]})"


def round_trip(model, x, batch_size: int = 256, progress=None) -> tuple:
    """(figures, latents, decoded images) of encode then decode on x, batch by batch; errors in intensity levels."""

    parts = [_round_trip_batch(model, x[i : i + batch_size], progress) for i in range(0, x.shape[0], batch_size)]
    latents = [torch.cat(zs) for zs in zip(*(p["latents"] for p in parts))]
    decoded = torch.cat([p["decoded"] for p in parts])
    cont_err = torch.cat([p["cont_err"].flatten() for p in parts])
    sizes = [p["decoded"].shape[0] for p in parts]  # each unit's mean is over images of one shape: weigh by batch
    layers = [
        {
            "layer": rows[0]["layer"],
            "max_abs_err": max(r["max_abs_err"] for r in rows),
            "mean_abs_err": sum(r["mean_abs_err"] * n for r, n in zip(rows, sizes)) / sum(sizes),
        }
        for rows in zip(*(p["layers"] for p in parts))
    ]
    figures = {
        "exact": bool(torch.equal(decoded.cpu(), x.cpu())),
        "max_abs_err": cont_err.max().item(),
        "mean_abs_err": cont_err.mean().item(),
        "pixel_mismatches": int((decoded.cpu() != x.cpu()).sum()),
        "encode_seconds": sum(p["encode_seconds"] for p in parts),
        "decode_seconds": sum(p["decode_seconds"] for p in parts),
        "layers": layers,
    }
    return figures, latents, decoded


def _round_trip_batch(model, x, progress=None) -> dict:

    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        sync()
        t0 = time.perf_counter()
        latents = model.encode(x)
        sync()
        t1 = time.perf_counter()
        v_rec = model.latents_to_v(latents)
        decoded = quantize(v_rec, model.bins)
        sync()
        t2 = time.perf_counter()
        cont_err = ((v_rec - model.dequantize(x, "center")).abs() * model.bins).double()
        layers = model.reconstruction_report(x)
    if progress is not None:
        progress(x.shape[0])
    return {
        "latents": latents,
        "decoded": decoded,
        "cont_err": cont_err,
        "layers": layers,
        "encode_seconds": t1 - t0,
        "decode_seconds": t2 - t1,
    }
