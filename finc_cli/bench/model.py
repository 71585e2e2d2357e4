"""Model benchmark: forward time FT (bits/dim) and sampling time ST of a preset's architecture.

One model per `model.conv` (FInC, Emerging, CInC, and the same-depth Glow with none), all else
equal; the paper's published FT/ST table for comparison.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Iterable, Optional

import torch

from finc_cli import inverse
from finc_cli.bench.layer import finc_backends
from finc_cli.bench.timing import num_threads, resolve, summarize, sync, time_interleaved
from finc_cli.config import load_preset, parse_conv_list
from finc_cli.errors import InputError
from finc_cli.flows.convolutions import INVERSE_SCHEDULES
from finc_cli.model import build_model

__all__ = ["MODEL_NAMES", "PAPER_TABLE", "ft_st_rows", "paper_rows"]

# model.conv -> the row's model name ("glow" for no k×k conv, as the paper calls it).
MODEL_NAMES = {"finc": "finc", "emerging": "emerging", "cinc": "cinc", "none": "glow"}

# The paper's table (seconds for 100 images; GPU not stated). None: not reported.
PAPER_TABLE = (
    {
        "dataset": "MNIST",
        "L": 2,
        "K": 16,
        "bpd": 1.05,
        "ft_s": 0.14,
        "st_s": 0.09,
        "emerging_st_s": 0.62,
        "cinc_st_s": None,
        "macow_st_s": None,
    },
    {
        "dataset": "CIFAR-10",
        "L": 3,
        "K": 32,
        "bpd": 3.39,
        "ft_s": 0.37,
        "st_s": 0.41,
        "emerging_st_s": 17.19,
        "cinc_st_s": 7.91,
        "macow_st_s": 3.23,
    },
    {
        "dataset": "ImageNet 32×32",
        "L": 3,
        "K": 48,
        "bpd": 4.13,
        "ft_s": 0.48,
        "st_s": 0.52,
        "emerging_st_s": 25.79,
        "cinc_st_s": 11.97,
        "macow_st_s": None,
    },
    {
        "dataset": "ImageNet 64×64",
        "L": 3,
        "K": 32,
        "bpd": 3.88,
        "ft_s": 1.43,
        "st_s": 2.11,
        "emerging_st_s": 137.04,
        "cinc_st_s": 55.71,
        "macow_st_s": 8.05,
    },
)


def paper_rows() -> list[dict]:
    """The paper's FT/ST table with its ST/FT ratio."""
    return [{**r, "st_over_ft": r["st_s"] / r["ft_s"]} for r in PAPER_TABLE]


def ft_st_rows(
    preset: str = "cifar10",
    overrides: Optional[dict] = None,
    batch_sizes: Iterable[int] = (100,),
    backends: Iterable[str] = ("auto",),
    device: str = "cpu",
    dtype: str = "float32",
    repeats: int = 3,
    warmup: int = 1,
    threads: int = 2,
    temperature: float = 1.0,
    convs: Iterable[str] = ("finc", "none"),
    seed: int = 0,
    progress: Optional[Callable] = None,
) -> list[dict]:
    """FT (the bits/dim forward, model(x), of a uint8 batch) and ST (model.sample) per batch size and conv.

    Rows: per batch, one per FInC inverse backend, then one per other conv in `convs` order. Keys:
    model (finc, emerging, cinc, glow), conv, backend (the FInC backend, "raster" for Emerging and
    CInC, whose inverses follow their published raster schedules, "-" for Glow), inverse (how the
    inverse ran, in words), preset, levels, steps, hidden, kernel_size, params, batch, dtype,
    device, ft_s, ft_q1_s, ft_q3_s, st_s, st_q1_s, st_q3_s, st_over_ft, st_vs_glow (None without
    the Glow model), st_vs_finc (None without FInC; against FInC's first backend), conv_inverse_share
    (the share of one instrumented ST call spent in the k×k convolutions' inverses, 0 for Glow) and
    conv_inverse_s (that share of the median ST).
    Random weights (timing only), ActNorm initialised on one random batch. `progress(total)`
    may return a callback advanced once per batch size.
    """

    dev, dt = resolve(device, dtype)
    overrides = dict(overrides or {})
    cfgs = {MODEL_NAMES[c]: load_preset(preset, {**overrides, "model.conv": c}) for c in parse_conv_list(convs)}
    names = finc_backends(backends, dev)
    rows = []
    batch_sizes = list(batch_sizes)
    advance = progress(len(batch_sizes)) if progress else (lambda n: None)
    with num_threads(threads):
        torch.manual_seed(seed)
        models = {kind: build_model(cfg).to(device=dev, dtype=dt) for kind, cfg in cfgs.items()}
        for model in models.values():
            _init_actnorm(model, dev, seed)
        for batch in batch_sizes:
            if int(batch) < 1:
                raise InputError(f"batch sizes must be >= 1, got {batch}")
            rows += _batch_rows(models, cfgs, preset, int(batch), names, dev, repeats, warmup, temperature, seed)
            advance(1)
    return rows


def _images(model, batch: int, device: torch.device, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.bins, (batch, *model.image_shape), generator=g, dtype=torch.uint8).to(device)


def _init_actnorm(model, device: torch.device, seed: int) -> None:
    model.initialize(_images(model, 8, device, seed))
    model.eval()


def _sample_on(model, backend: Optional[str], n: int, temperature: float, generator) -> torch.Tensor:
    with inverse.use_backend(backend):
        return model.sample(n, temperature, generator)


def conv_inverse_split(model, sample: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(seconds of one sample() call, seconds of it inside the k×k convolutions' inverses).

    One extra, instrumented call: each convolution's `inverse` is wrapped for the call to add up
    its own wall time, with the device synchronised around it, and unwrapped afterwards. The
    rest of sampling (couplings, 1×1s, ActNorms, priors) is what every `model.conv` shares, so
    it bounds how far any convolution can move the model's ST. (0 for a model without one.)
    """
    spent = [0.0]

    def timed(inverse):
        def wrapper(y):
            sync(device)
            start = time.perf_counter()
            out = inverse(y)
            sync(device)
            spent[0] += time.perf_counter() - start
            return out

        return wrapper

    layers = [layer for _, layer in model.invertible_convs()]
    for layer in layers:
        layer.inverse = timed(layer.inverse)  # an instance attribute shadows the method
    try:
        with torch.no_grad():
            sync(device)
            start = time.perf_counter()
            sample()
            sync(device)
            total = time.perf_counter() - start
    finally:
        for layer in layers:
            del layer.inverse
    return total, spent[0]


def _batch_rows(models, cfgs, preset, batch, backends, device, repeats, warmup, temperature, seed) -> list[dict]:
    gen = torch.Generator(device=device)
    variants: dict = {}
    for kind, model in models.items():
        x = _images(model, batch, device, seed)
        variants[(kind, None, "ft")] = lambda m=model, x=x: m(x)
        for b in backends if kind == "finc" else [None]:
            variants[(kind, b, "st")] = lambda m=model, b=b: _sample_on(m, b, batch, temperature, gen.manual_seed(seed))
    times = time_interleaved(variants, repeats, warmup, device)
    split = {key: conv_inverse_split(models[key[0]], fn, device) for key, fn in variants.items() if key[2] == "st"}
    glow_st = statistics.median(times[("glow", None, "st")]) if "glow" in models else None
    finc_st = statistics.median(times[("finc", backends[0], "st")]) if "finc" in models and backends else None
    rows = []
    for (kind, backend, what), samples in times.items():
        if what != "st":
            continue
        m, ft, st = cfgs[kind].model, summarize(times[(kind, None, "ft")], 1.0), summarize(samples, 1.0)
        total_s, conv_s = split[(kind, backend, what)]
        share = conv_s / total_s
        rows.append(
            {
                "model": kind,
                "conv": cfgs[kind].model.conv,
                "backend": backend or ("raster" if kind in ("emerging", "cinc") else "-"),
                "inverse": INVERSE_SCHEDULES[cfgs[kind].model.conv],
                "preset": preset,
                "levels": m.levels,
                "steps": m.steps,
                "hidden": m.hidden,
                "kernel_size": m.kernel_size,
                "params": models[kind].num_parameters(),
                "batch": batch,
                "dtype": str(next(models[kind].parameters()).dtype).removeprefix("torch."),
                "device": str(device),
                "ft_s": ft["median"],
                "ft_q1_s": ft["q1"],
                "ft_q3_s": ft["q3"],
                "st_s": st["median"],
                "st_q1_s": st["q1"],
                "st_q3_s": st["q3"],
                "st_over_ft": st["median"] / ft["median"],
                "conv_inverse_share": share,
                "conv_inverse_s": st["median"] * share,
                "st_vs_glow": None if glow_st is None else st["median"] / glow_st,
                "st_vs_finc": None if finc_st is None else st["median"] / finc_st,
                "repeats": st["n"],
            }
        )
    return rows
