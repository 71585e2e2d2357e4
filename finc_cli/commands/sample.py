"""Sampling from a checkpoint: the plain function behind `finc sample`."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from finc_cli.commands.inference import load_inference
from finc_cli.decode_precision import PROBE_IMAGES, check_decode_precision, decoding_model
from finc_cli.errors import InputError, OutputError
from finc_cli.files import images  # through the module: a stand-in for one of its writers reaches this command
from finc_cli.files.atomic import check_output_file
from finc_cli.health import composed_check
from finc_cli.inverse import use_backend
from finc_cli.text import comma_list

__all__ = ["parse_class", "parse_temperatures", "sample"]

ROW_SAMPLES = 8  # images per row of a temperature grid unless -n says otherwise


def parse_temperatures(value: Union[float, str, Sequence[float]]) -> list[float]:
    """'0,0.5,1' (or a number, or a list) -> [0.0, 0.5, 1.0]; each a finite number >= 0."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        items: list = [value]
    elif isinstance(value, str):
        items = comma_list(value, keep_empty=True)
    else:
        items = list(value)
    temps = []
    for item in items:
        try:
            t = float(item)
        except (TypeError, ValueError):
            t = math.nan
        if not (math.isfinite(t) and t >= 0):
            raise InputError(
                f"--temperature must be finite numbers >= 0 separated by commas (e.g. 1 or 0,0.5,0.7,1), got {value!r}"
            )
        temps.append(t)
    if not temps:
        raise InputError("--temperature must be at least one value, e.g. 1 or 0,0.5,0.7,1")
    return temps


def parse_class(value: Union[int, str, None]) -> Union[int, str, None]:
    """--class: None, a class number >= 0, or "all" (one row per class); the range is checked against the model."""
    if value is None or isinstance(value, int) and not isinstance(value, bool):
        if value is not None and value < 0:
            raise InputError(f"--class must be a class number >= 0 or 'all', got {value}")
        return value
    text = str(value).strip().lower()
    if text == "all":
        return "all"
    if not text.isdigit():
        raise InputError(f"--class must be a class number (e.g. 3) or 'all', got {value!r}")
    return int(text)


def _row_classes(model, chosen: Union[int, str, None], checkpoint: str) -> Optional[list[int]]:
    """The class of each row (every row the same class when one is given), or None without --class."""
    if chosen is None:
        return None
    if not model.conditional:
        raise InputError(f"--class needs a class-conditional model; {checkpoint} has model.conditional false")
    if chosen == "all":
        return list(range(model.num_classes))
    if chosen >= model.num_classes:
        raise InputError(
            f"--class {chosen} is out of range: this model has {model.num_classes} classes (0..{model.num_classes - 1})"
        )
    return [chosen]


def sample(
    checkpoint: str,
    *,
    n: Optional[int] = None,
    out: str = "samples.png",
    temperature: Union[float, str, Sequence[float]] = 1.0,
    seed: Optional[int] = None,
    nrow: Optional[int] = None,
    individual: bool = False,
    device: str = "auto",
    backend: Optional[str] = None,
    weights: Optional[str] = None,
    scale: Optional[int] = None,
    decode_precision: str = "auto",
    class_: Union[int, str, None] = None,
) -> dict:
    """Draw n samples at temperature T and write a PNG grid (or one PNG per sample).

    With several temperatures (e.g. "0,0.5,0.7,0.85,1") the grid has one labelled row of n
    samples (default 8) per temperature, in the order given; every row uses the same noise, so
    a column shows one sample at each temperature. `scale` upscales the grid (nearest neighbour;
    default: at least `images.GRID_MIN_WIDTH` pixels wide), and individual PNGs when given.
    `decode_precision` auto round-trips the first samples in the model's precision and, when that
    is not trusted, draws them again from the same seed in float64 (docs/inverse.md §11).

    `class_` (a class-conditional model): a class number samples that class at every level's prior;
    "all" gives one labelled row of n samples (default 8) per class, classes in order, every row
    from the same noise. Without it, sample i of a conditional model is of class i mod num_classes
    (`sample_classes` reports each sample's class either way).
    """

    temps = parse_temperatures(temperature)
    chosen = parse_class(class_)
    if chosen == "all" and len(temps) > 1:
        raise InputError("--class all takes one temperature: each class is one row; give a list only with one class")
    labelled = len(temps) > 1 or chosen == "all"
    n = n if n is not None else (ROW_SAMPLES if labelled else 64)
    _check_inputs(n, nrow, individual, labelled, scale)
    check_decode_precision(decode_precision)
    out_path = Path(out)
    if individual:
        if out_path.exists() and not out_path.is_dir():
            raise OutputError(f"--individual writes one PNG per sample into a directory, but {out_path} is a file")
        check_output_file(out_path / "x.png") if out_path.is_dir() else check_output_file(out_path)
    else:
        check_output_file(out_path)
    run = load_inference(checkpoint, device=device, weights=weights)
    model, dev = run.model, run.device
    row_classes = _row_classes(model, chosen, checkpoint)
    # Each row: (label, temperature, class or None); a class list and a temperature list never come together.
    if chosen == "all":
        plan = [(f"y={c}", temps[0], c) for c in row_classes]
    else:
        c = row_classes[0] if row_classes else None
        plan = [(f"T={t:g}", t, c) for t in temps]
    seed = seed if seed is not None else torch.seed() % 2**63
    with torch.no_grad(), use_backend(backend):
        runner, used = decoding_model(model, "float32" if decode_precision == "auto" else decode_precision)
        rows, seconds = _draw(runner, n, plan, seed, dev)
        check = composed_check(model, rows[0][:PROBE_IMAGES]) if decode_precision == "auto" else None
        if check is not None and not check["trusted"]:
            runner, used = decoding_model(model, decode_precision, check)
            rows, seconds = _draw(runner, n, plan, seed, dev)
    layout: dict = {}
    if individual:
        pixels = images.to_uint8_255(rows[0], model.bins)
        _save_individual(pixels, out_path, lambda x, p: images.save_png(x, p, scale or 1))
        layout["scale"] = scale or 1
    elif labelled:
        layout = images.save_labelled_rows(
            [(label, x) for (label, _, _), x in zip(plan, rows)], out_path, model.bins, scale
        )
    else:
        layout["scale"] = images.save_grid(rows[0], out_path, model.bins, nrow=nrow, scale=scale)
    total = n * len(plan)
    if model.conditional:
        per_row = [[c] * n if c is not None else [i % model.num_classes for i in range(n)] for _, _, c in plan]
        layout["sample_classes"] = [c for row in per_row for c in row]  # in grid order, row by row
        layout["classes"] = row_classes  # the class of each row (one class: every row), None without --class
    return {
        "n": total,
        "out": str(out_path),
        "temperature": temps[0] if not labelled else None,
        "temperatures": temps,
        "seed": seed,
        "sampling_seconds": seconds,
        "seconds_per_image": seconds / total,
        "dataset": run.cfg.data.name,
        "device": str(dev),
        "weights": run.weights,
        "decode_precision": used,
        "composed": check,
        **layout,
    }


def _draw(model, n: int, plan: list, seed: int, dev) -> tuple[list, float]:
    """(one batch of n samples per row of `plan` (label, temperature, class or None), seconds): every row from the
    same generator state, so rows differ only by temperature or class; the time covers the sampling alone (not
    the `auto` check)."""
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    rows = [
        model.sample(n, temperature=t, generator=torch.Generator(device=dev).manual_seed(seed), **_class_arg(c))
        for _, t, c in plan
    ]
    sync()
    return rows, time.perf_counter() - t0


def _class_arg(c: Optional[int]) -> dict:
    """The class keyword of model.sample: none at all without a class, so an unconditional model's call is as before."""
    return {} if c is None else {"y": c}


def _check_inputs(n: int, nrow: Optional[int], individual: bool, labelled: bool, scale: Optional[int]) -> None:
    if n < 1:
        raise InputError(f"-n must be at least 1, got {n}")
    if scale is not None and scale < 1:
        raise InputError(f"--scale must be a whole number >= 1, got {scale}")
    if labelled and individual:
        raise InputError("--individual takes one temperature and one class; give a list or --class all only for a grid")
    if labelled and nrow is not None:
        raise InputError(
            "--nrow does not apply to a temperature list or --class all: each temperature or class is one row of -n "
            "samples"
        )


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
