"""Move images along an attribute direction in latent space: the plain function behind `finc manipulate`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from finc_cli.commands.attributes import load_directions, pick_names
from finc_cli.commands.inference import load_inference
from finc_cli.decode_precision import PROBE_IMAGES, check_decode_precision, decoding_model
from finc_cli.errors import InputError
from finc_cli.files.atomic import check_output_file
from finc_cli.files.images import load_images, save_labelled_columns
from finc_cli.health import composed_check
from finc_cli.inverse import use_backend
from finc_cli.text import comma_list

__all__ = ["manipulate", "move_latents", "parse_alphas"]


def parse_alphas(value: Union[float, str, Sequence]) -> list[float]:
    """The α list of "-1,0,1,2" (or numbers), in order; finite numbers, at least one (InputError otherwise)."""
    items = [value] if isinstance(value, (int, float)) else comma_list(value, keep_empty=True)
    try:
        alphas = [float(v) for v in items]
    except ValueError:
        alphas = []
    if not items or len(alphas) != len(items) or not all(math.isfinite(a) for a in alphas):
        raise InputError(f"--alpha must be finite numbers separated by commas (e.g. -1,0,1,2), got {value!r}")
    return alphas


def move_latents(model, x: torch.Tensor, direction: Sequence[torch.Tensor], alphas: Sequence[float]) -> torch.Tensor:
    """uint8 frames (N, len(alphas), C, H, W): x (N, C, H, W) encoded, every latent moved z + α·d, decoded.

    d is one tensor per latent, shaped like model.latent_shapes(). At α = 0 the latents are the
    encoding itself and the decode is exact, so that frame is x, bit for bit.
    """
    latents = model.encode(x)  # every split z, then the final z
    d = [t.to(z.device, z.dtype) for t, z in zip(direction, latents)]
    frames = []
    for a in alphas:
        moved = [z.clone() if a == 0 else z + a * t for z, t in zip(latents, d)]
        frames.append(model.decode(moved).cpu())  # (N, C, H, W)
    return torch.stack(frames, dim=1)


def manipulate(
    checkpoint: str,
    images: Sequence[str],
    *,
    directions: str,
    attribute: str,
    alphas: Union[str, Sequence[float]] = "-1,0,1,2",
    out: str = "manipulated.png",
    scale: Optional[int] = None,
    device: str = "auto",
    backend: Optional[str] = None,
    weights: Optional[str] = None,
    decode_precision: str = "auto",
) -> dict:
    """Write a strip per image, one column per α, of the image moved along `attribute`'s direction.

    `directions` is a file `finc attributes` wrote for this model. `decode_precision` auto runs the
    round trip in float64 when the model's own precision cannot be trusted on the images
    (docs/inverse.md §11). `identity_exact` says whether the α = 0 column equals the input (None
    without α = 0).
    """
    values = parse_alphas(alphas)
    check_decode_precision(decode_precision)
    if not images:
        raise InputError(
            "give at least one image to manipulate, e.g. finc manipulate CKPT face.png --attribute Smiling"
        )
    check_output_file(Path(out))
    run = load_inference(checkpoint, device=device, weights=weights)
    model = run.model
    data = load_directions(directions, model)
    names = data["names"]
    if len(comma_list(attribute)) != 1:
        raise InputError(f"--attribute takes one name here, got {attribute!r}; write one strip per attribute")
    fix = f" (or compute it with finc attributes --attribute {attribute})"
    (index,) = pick_names([attribute], names, directions, fix, by_index=False)
    x = load_images(images, *model.image_shape, model.bins)  # (N, C, H, W), checked against the model
    direction = [d[index] for d in data["directions"]]
    with use_backend(backend):
        check = composed_check(model, x[:PROBE_IMAGES]) if decode_precision == "auto" else None
        runner, precision = decoding_model(model, decode_precision, check)
        frames = move_latents(runner, x.to(run.device), direction, values)  # (N, A, C, H, W)
    exact = bool(torch.equal(frames[:, values.index(0.0)], x)) if 0.0 in values else None
    changed = [int((frames[:, j] != x).sum()) for j in range(len(values))]
    labels = [f"alpha={a:g}" for a in values]  # the default font has no α
    picture = save_labelled_columns(frames.flatten(0, 1), labels, out, model.bins, scale=scale)
    return {
        "out": str(out),
        "images": list(images),
        "attribute": names[index],
        "alphas": values,
        "identity_exact": exact,
        "pixels_changed": changed,
        "scale": picture["scale"],
        "directions": str(directions),
        "dataset": run.cfg.data.name,
        "device": str(run.device),
        "weights": run.weights,
        "decode_precision": precision,
        "composed": check,
    }
