"""Attribute and class directions in latent space: the plain function behind `finc attributes` (docs/model.md §15)."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Optional, Sequence

import torch

from finc_cli.commands.inference import load_inference, read_tensor_file
from finc_cli.data.labels import Labels
from finc_cli.errors import ImageInputError, InputError
from finc_cli.files.atomic import atomic_path, check_output_file
from finc_cli.text import comma_list

__all__ = [
    "attributes",
    "DIRECTIONS_FORMAT",
    "label_names",
    "latent_sums",
    "load_directions",
    "pick_names",
    "save_directions",
]

DIRECTIONS_FORMAT = "finc-directions"
SHOWN_NAMES = 6  # valid names an unknown-name error lists


def label_names(labels: Labels) -> list[str]:
    """The name of each label column: CelebA's attribute names, a dataset's class names, else "0".."K-1"."""
    return list(labels.names) if labels.names else [str(k) for k in range(labels.num_classes)]


def _unknown_name(name: str, valid: Sequence[str], where: str, fix: str = "") -> InputError:
    near = difflib.get_close_matches(name, list(valid), n=1)
    hint = f"did you mean '{near[0]}'? " if near else ""
    shown = ", ".join(valid[:SHOWN_NAMES]) + (f", … ({len(valid)} in all)" if len(valid) > SHOWN_NAMES else "")
    return InputError(f"{where} has no attribute '{name}'; {hint}valid: {shown}{fix}")


def pick_names(
    asked: Optional[Sequence[str]], names: Sequence[str], where: str, fix: str = "", by_index: bool = True
) -> list[int]:
    """Indices into `names` of the asked names (comma lists or repeated; with `by_index` a class may also be given
    by its index), in the order asked, each once; every name when none is asked. An unknown name is one line
    listing valid ones."""
    wanted = comma_list(asked or [])
    if not wanted:
        return list(range(len(names)))
    out: list[int] = []
    for name in wanted:
        if name in names:
            index = list(names).index(name)
        elif by_index and name.isdigit() and int(name) < len(names):
            index = int(name)
        else:
            raise _unknown_name(name, list(names), where, fix)
        out += [] if index in out else [index]
    return out


@torch.no_grad()
def latent_sums(model, batches, num_labels: int) -> tuple[list[torch.Tensor], torch.Tensor, int]:
    """(sums, counts, n): per latent k, sums[k] (A + 1, C, H, W) in float64, row a the Σ of z_k over the images
    with label a and the last row the Σ over every image; counts (A,) how many images have each label; n the
    number of images.

    `batches` yields (uint8 images (B, C, H, W), labels (B,) classes or (B, A) {0, 1}); every image is
    encoded with `model.encode` (centre dequantization). The direction of label a is then
    sums[a]/counts[a] − (sums[A] − sums[a])/(n − counts[a]).
    """
    sums: Optional[list[torch.Tensor]] = None
    totals: Optional[list[torch.Tensor]] = None
    counts = torch.zeros(num_labels, dtype=torch.float64)
    n = 0
    for x, y in batches:
        y = torch.as_tensor(y)
        hot = (torch.nn.functional.one_hot(y, num_labels) if y.dim() == 1 else y).to(torch.float64)  # (B, A)
        latents = [z.detach().to("cpu", torch.float64) for z in model.encode(x)]  # each (B, C, H, W)
        parts = [torch.einsum("ba,bchw->achw", hot, z) for z in latents]  # each (A, C, H, W)
        sums = parts if sums is None else [s + p for s, p in zip(sums, parts)]
        batch_totals = [z.sum(0) for z in latents]  # each (C, H, W)
        totals = batch_totals if totals is None else [t + b for t, b in zip(totals, batch_totals)]
        counts += hot.sum(0)
        n += x.shape[0]
    if sums is None:
        raise InputError("no images to encode; give a split with images (or a larger --limit)")
    return [torch.cat([s, t[None]]) for s, t in zip(sums, totals)], counts, n


def save_directions(path: str, payload: dict) -> None:
    """torch.save a plain dict (tensors, strings, numbers, lists) atomically: it loads with weights_only=True."""
    with atomic_path(Path(path)) as tmp:
        torch.save({"format": DIRECTIONS_FORMAT, **payload}, tmp)


def load_directions(path: str, model) -> dict:
    """The directions file at `path`, checked against the model's latent shapes (ImageInputError, one line)."""
    data = read_tensor_file(path, "directions", f"; write one with `finc attributes CKPT --out {path}`")
    if not isinstance(data, dict) or data.get("format") != DIRECTIONS_FORMAT:
        raise ImageInputError(f"{path} is not a finc directions file (written by finc attributes)")
    directions, names = data.get("directions"), data.get("names")
    if (
        not isinstance(names, list)
        or not isinstance(directions, list)
        or not all(isinstance(d, torch.Tensor) and d.dim() == 4 and d.shape[0] == len(names) for d in directions)
    ):
        raise ImageInputError(f"{path} is a damaged finc directions file: 'directions' is not a list of (A, C, H, W)")
    got = [tuple(d.shape[1:]) for d in directions]
    expected = [tuple(s) for s in model.latent_shapes()]
    if got != expected:
        raise ImageInputError(
            f"{path} holds directions for latents of shapes {got}, but this model's are {expected}; "
            "compute them for this checkpoint with `finc attributes`"
        )
    return data


def attributes(
    checkpoint: str,
    *,
    out: str = "directions.pt",
    split: str = "train",
    names: Optional[Sequence[str]] = None,
    limit: Optional[int] = None,
    batch_size: Optional[int] = None,
    data_dir: Optional[str] = None,
    cache_dir: Optional[str] = None,
    device: str = "auto",
    weights: Optional[str] = None,
    notify=None,
    progress=None,
) -> dict:
    """Write one latent direction per attribute (CelebA) or class (other datasets) to `out`; return a summary.

    The direction of a is the mean latent of the images of `split` with a minus the mean of those
    without it, for every latent (each split z and the final z). `names` picks attributes or classes
    (by name, or a class by index); `limit` takes the first images of the split; `progress(total)`
    may return a callback advanced by the number of images encoded.
    """
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
    if batch_size is not None and batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    check_output_file(Path(out))
    run = load_inference(
        checkpoint, device=device, weights=weights, data_dir=data_dir, cache_dir=cache_dir, notify=notify
    )
    ds = run.labelled_dataset(split)
    all_names = label_names(ds.labels)
    where = f"{run.cfg.data.name} ({'attributes' if ds.labels.kind == 'attributes' else 'classes'})"
    picked = pick_names(names, all_names, where)
    n = len(ds) if limit is None else min(limit, len(ds))
    batch = batch_size or run.cfg.train.eval_batch_size
    callback = progress(n) if progress else None

    def batches():
        for start in range(0, n, batch):
            x, y = ds.batch(torch.arange(start, min(n, start + batch)))
            yield x.to(run.device), y
            if callback is not None:
                callback(x.shape[0])

    sums, counts, total = latent_sums(run.model, batches(), ds.labels.num_classes)
    idx = torch.tensor(picked)
    with_a = counts[idx]
    without = total - with_a
    empty = [all_names[i] for i, a, b in zip(picked, with_a.tolist(), without.tolist()) if a == 0 or b == 0]
    if empty:
        raise InputError(
            f"{', '.join(empty[:SHOWN_NAMES])}: no images with it or none without it in {run.cfg.data.name}/{split} "
            f"(first {total} images); use more images (--limit) or pick others with --attribute"
        )
    directions = []
    for s in sums:
        inside, everything = s[idx], s[-1]  # (A, C, H, W), (C, H, W)
        shape = (-1, 1, 1, 1)
        d = inside / with_a.view(shape) - (everything - inside) / without.view(shape)
        directions.append(d.to(torch.float32))
    norms = torch.sqrt(sum(d.double().flatten(1).pow(2).sum(1) for d in directions))  # (A,)
    picked_names = [all_names[i] for i in picked]
    save_directions(
        out,
        {
            "names": picked_names,
            "directions": directions,
            "counts": with_a.to(torch.int64),
            "n_images": total,
            "kind": ds.labels.kind,
            "dataset": run.cfg.data.name,
            "split": split,
            "checkpoint": str(checkpoint),
            "weights": run.weights,
            "latent_shapes": [list(s) for s in run.model.latent_shapes()],
        },
    )
    return {
        "out": str(out),
        "dataset": run.cfg.data.name,
        "split": split,
        "kind": ds.labels.kind,
        "n_images": total,
        "directions": [
            {"name": name, "with": int(a), "without": int(total - a), "norm": float(r)}
            for name, a, r in zip(picked_names, with_a.tolist(), norms.tolist())
        ],
        "latent_shapes": [list(s) for s in run.model.latent_shapes()],
        "device": str(run.device),
        "weights": run.weights,
    }
