"""Latent interpolation between image pairs: the plain function behind `finc interpolate`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from PIL import Image, UnidentifiedImageError

from finc_cli.commands.inference import Inference, load_inference
from finc_cli.data.batches import fetch
from finc_cli.decode_precision import PROBE_IMAGES, check_decode_precision, decoding_model
from finc_cli.errors import ImageInputError, InputError
from finc_cli.files.atomic import check_output_file
from finc_cli.files.images import load_images, save_grid
from finc_cli.health import composed_check
from finc_cli.inverse import use_backend

__all__ = ["MODES", "interpolate", "interpolate_latents", "mix"]

MODES = ("linear", "spherical")


def mix(a, b, t: float, mode: str = "linear"):
    """The latent a fraction t of the way from a to b (tensors (B, ...)), per sample.

    linear: (1 - t) a + t b. spherical (slerp, as in Glow's interpolations): along the great
    circle between a and b, scaled between their norms, so a middle latent keeps the typical norm
    of a Gaussian sample instead of shrinking towards the mean; falls back to linear where a and b
    are (anti)parallel. t = 0 and t = 1 return a and b themselves.
    """

    if t == 0:
        return a.clone()
    if t == 1:
        return b.clone()
    if mode == "linear":
        return (1 - t) * a + t * b
    flat_a, flat_b = a.flatten(1).double(), b.flatten(1).double()  # (B, D)
    na, nb = flat_a.norm(dim=1, keepdim=True), flat_b.norm(dim=1, keepdim=True)  # (B, 1)
    cos = ((flat_a / na.clamp_min(1e-12)) * (flat_b / nb.clamp_min(1e-12))).sum(1, keepdim=True).clamp(-1, 1)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    direct = (1 - t) * flat_a + t * flat_b
    unit = (
        torch.sin((1 - t) * omega) * flat_a / na.clamp_min(1e-12) + torch.sin(t * omega) * flat_b / nb.clamp_min(1e-12)
    ) / sin.clamp_min(1e-12)
    arc = unit * ((1 - t) * na + t * nb)
    out = torch.where(sin > 1e-6, arc, direct)
    return out.to(a.dtype).view_as(a)


def interpolate_latents(model, xa, xb, steps: int, mode: str = "linear"):
    """uint8 frames (P, steps, C, H, W) decoded from latents interpolated from xa to xb (P, C, H, W).

    Every latent is interpolated, each split z and the final z, and the frames are decoded
    exactly, so frame 0 is xa and frame steps-1 is xb, bit for bit (decode(encode(x)) == x).
    """

    za, zb = model.encode(xa), model.encode(xb)  # lists: every split z, then the final z
    frames = []
    for j in range(steps):
        t = j / (steps - 1)
        frames.append(model.decode([mix(a, b, t, mode) for a, b in zip(za, zb)]).cpu())  # (P, C, H, W)
    return torch.stack(frames, dim=1)  # (P, steps, C, H, W)


def _check(steps: int, mode: str, images: Optional[Sequence[str]], pairs: int, scale: Optional[int]) -> None:
    if steps < 2:
        raise InputError(f"--steps must be at least 2 (the two ends), got {steps}")
    if mode not in MODES:
        raise InputError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if pairs < 1:
        raise InputError(f"--pairs must be at least 1, got {pairs}")
    if scale is not None and scale < 1:
        raise InputError(f"--scale must be a whole number >= 1, got {scale}")
    if images is not None and len(images) not in (0, 2):
        raise InputError(f"give two images A and B (or none with --split), got {len(images)}")


def _image_pair(paths: Sequence[str], model):
    """(A, B), each (1, C, H, W): the two files, which must have one size, the model's."""

    sizes = []
    for p in paths:
        try:
            with Image.open(p) as img:
                sizes.append((img.size, img.mode))
        except FileNotFoundError:
            raise ImageInputError(f"image {p} does not exist") from None
        except (UnidentifiedImageError, OSError):
            raise ImageInputError(f"{p} is not a readable image file") from None
    if sizes[0] != sizes[1]:
        (wa, ha), ma = sizes[0]
        (wb, hb), mb = sizes[1]
        raise ImageInputError(
            f"{paths[0]} is {wa}×{ha} {ma} but {paths[1]} is {wb}×{hb} {mb}; interpolate between images of one shape"
        )
    x = load_images(paths, *model.image_shape, model.bins)  # (2, C, H, W), checked against the model
    return x[:1], x[1:]


def _split_pairs(run: Inference, split: str, pairs: int):
    """(A, B), each (P, C, H, W): images 0, 2, 4, ... and 1, 3, 5, ... of the split."""

    ds = run.dataset(split)
    if len(ds) < 2 * pairs:
        raise InputError(f"--pairs {pairs} needs {2 * pairs} images but {run.cfg.data.name}/{split} has {len(ds)}")
    x = fetch(ds, torch.arange(2 * pairs))
    return x[0::2], x[1::2]


def interpolate(
    checkpoint: str,
    *,
    images: Optional[Sequence[str]] = None,
    out: str = "interpolation.png",
    steps: int = 8,
    mode: str = "linear",
    split: Optional[str] = None,
    pairs: int = 1,
    scale: Optional[int] = None,
    data_dir: Optional[str] = None,
    cache_dir: Optional[str] = None,
    device: str = "auto",
    backend: Optional[str] = None,
    weights: Optional[str] = None,
    notify=None,
    decode_precision: str = "auto",
) -> dict:
    """Write a strip of `steps` frames from A to B (one row per pair) and return what was done.

    The pairs are the image files `images` = [A, B], or with `split` the first 2·pairs images of
    that split, paired in order. `ends_exact` says whether the end frames equal A and B exactly.
    `decode_precision` auto runs the round trip in float64 when the model's own precision cannot
    be trusted on the end images (docs/inverse.md §11).
    """

    _check(steps, mode, images, pairs, scale)
    check_decode_precision(decode_precision)
    if not images and split is None:
        raise InputError("give two images A and B, or --split SPLIT (with --pairs N) to take pairs from a dataset")
    if images and split is not None:
        raise InputError("give either two images or --split, not both")
    check_output_file(Path(out))
    run = load_inference(
        checkpoint, device=device, weights=weights, data_dir=data_dir, cache_dir=cache_dir, notify=notify
    )
    model, dev = run.model, run.device
    if images:
        xa, xb = _image_pair(images, model)
        source = f"{images[0]} -> {images[1]}"
    else:
        xa, xb = _split_pairs(run, split, pairs)
        source = f"{run.cfg.data.name}/{split} (first {2 * xa.shape[0]} images, paired in order)"
    with use_backend(backend):
        ends = torch.cat([xa, xb])[:PROBE_IMAGES]
        check = composed_check(model, ends) if decode_precision == "auto" else None
        runner, precision = decoding_model(model, decode_precision, check)
        frames = interpolate_latents(runner, xa.to(dev), xb.to(dev), steps, mode)  # (P, S, C, H, W)
    exact = bool(torch.equal(frames[:, 0], xa.cpu()) and torch.equal(frames[:, -1], xb.cpu()))
    used = save_grid(frames.flatten(0, 1), out, model.bins, nrow=steps, scale=scale)
    return {
        "out": str(out),
        "pairs": int(xa.shape[0]),
        "steps": steps,
        "mode": mode,
        "ends_exact": exact,
        "scale": used,
        "source": source,
        "dataset": run.cfg.data.name,
        "device": str(dev),
        "weights": run.weights,
        "decode_precision": precision,
        "composed": check,
    }
