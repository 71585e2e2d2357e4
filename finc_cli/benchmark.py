"""Timing of invertible layers and models: plain functions that return rows of data, print nothing.

Three modes (issue 5): `layer_rows` (forward and inverse of one layer), `model_rows` (forward
time FT and sampling time ST of a preset's architecture, FInC beside the same-depth Glow) and
`scaling_rows` + `fit_exponents` (inverse time against image size n and kernel size k).

All three time with `finc_cli.bench_timing` (warm-up, variants interleaved within each repeat,
CUDA events on a GPU, median and quartiles); its names stay importable from here.
Every inverse is checked against its input before it is timed (STYLE 9).
"""

from __future__ import annotations

import math
import statistics
from typing import Callable, Iterable, Optional, Sequence

import torch

from finc_cli import inverse as inverse_seam
from finc_cli.bench_timing import environment, num_threads, summarize, time_interleaved  # noqa: F401 (environment: re-exported)
from finc_cli.flows.baselines import CInCConv2d, EmergingConv2d
from finc_cli.flows.conv1x1 import InvConv1x1
from finc_cli.flows.finc_conv import FInCConv2d
from finc_cli.inverse import paper_schedule

LAYERS = ("finc", "emerging", "cinc", "glow")
FINC_BACKENDS = ("wavefront", "native", "paper", "cupy")
SEQUENTIAL = ("emerging", "cinc")  # layers with a raster-order inverse
SCALING_BACKENDS = ("wavefront", "native", "paper", "cupy", "emerging", "cinc")
DTYPES = {"float32": torch.float32, "float64": torch.float64}

# DESIGN §4: the paper's table (seconds for 100 images; GPU not stated). None: not reported.
PAPER_TABLE = (
    {"dataset": "MNIST", "L": 2, "K": 16, "bpd": 1.05, "ft_s": 0.14, "st_s": 0.09, "emerging_st_s": 0.62, "cinc_st_s": None, "macow_st_s": None},
    {"dataset": "CIFAR-10", "L": 3, "K": 32, "bpd": 3.39, "ft_s": 0.37, "st_s": 0.41, "emerging_st_s": 17.19, "cinc_st_s": 7.91, "macow_st_s": 3.23},
    {"dataset": "ImageNet 32×32", "L": 3, "K": 48, "bpd": 4.13, "ft_s": 0.48, "st_s": 0.52, "emerging_st_s": 25.79, "cinc_st_s": 11.97, "macow_st_s": None},
    {"dataset": "ImageNet 64×64", "L": 3, "K": 32, "bpd": 3.88, "ft_s": 1.43, "st_s": 2.11, "emerging_st_s": 137.04, "cinc_st_s": 55.71, "macow_st_s": 8.05},
)


def paper_rows() -> list[dict]:
    """The paper's FT/ST table with its ST/FT ratio."""
    return [{**r, "st_over_ft": r["st_s"] / r["ft_s"]} for r in PAPER_TABLE]


# ---------------------------------------------------------------------------------------------
# device, dtype and backends


def resolve(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """(torch.device, torch.dtype) from names; ValueError (one line) for bad ones."""
    from finc_cli.device import resolve_device

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype '{dtype}'; choose one of: {', '.join(DTYPES)}")
    return resolve_device(device), DTYPES[dtype]


def finc_backends(names: Optional[Iterable[str]], device: torch.device) -> list[str]:
    """FInC inverse backends to time on `device`: None -> every one that runs here; else the names
    given, "auto" resolved, each checked (InverseBackendError, one line, for one that cannot run).
    The paper's schedule is registered as "paper" first.
    """
    paper_schedule.register()
    probe = torch.zeros(1, 4, 1, 1, device=device)
    if names is None:
        return [n for n in FINC_BACKENDS if _runs_on(n, probe) and inverse_seam._available(n, device)]
    out = []
    for name in names:
        resolved = inverse_seam.select_backend(probe, None if name == "auto" else name)  # unknown name: clear error
        if not inverse_seam._available(resolved, device):
            raise inverse_seam.InverseBackendError(f"inverse backend '{resolved}' is not available on {device} here")
        out += [resolved] if resolved not in out else []
    return out


def _runs_on(name: str, probe: torch.Tensor) -> bool:
    try:
        return inverse_seam.select_backend(probe, name) == name
    except inverse_seam.InverseBackendError:
        return False


# ---------------------------------------------------------------------------------------------
# layer mode


def build_layer(kind: str, channels: int, k: int) -> torch.nn.Module:
    """A freshly initialised layer of one kind (random weights: timing only)."""
    if kind == "finc":
        return FInCConv2d(channels, k)
    if kind == "emerging":
        return EmergingConv2d(channels, k)
    if kind == "cinc":
        return CInCConv2d(channels, k)
    if kind == "glow":
        return InvConv1x1(channels, lu=True)
    raise ValueError(f"unknown layer '{kind}'; choose from: {', '.join(LAYERS)}")


def _layer_variants(kind: str, layer, x: torch.Tensor, y: torch.Tensor, backends: Sequence[str]) -> dict:
    """{(kind, backend, direction): fn}; FInC gets one inverse per backend."""
    out = {(kind, None, "forward"): lambda: layer(x)}
    if kind == "finc":
        for b in backends:
            out[(kind, b, "inverse")] = lambda b=b: layer.inverse(y, backend=b)
    else:
        out[(kind, None, "inverse")] = lambda: layer.inverse(y)
    return out


def _label(kind: str, backend: Optional[str]) -> str:
    return backend or {"emerging": "raster", "cinc": "raster", "glow": "lu"}[kind]


def _max_err(fn: Callable, x: torch.Tensor) -> float:
    return (fn()[0] - x).abs().max().item()


def layer_rows(
    shapes: Iterable[Sequence[int]] = ((16, 12, 32, 32, 3),),
    layers: Iterable[str] = LAYERS,
    backends: Optional[Iterable[str]] = None,
    dtypes: Iterable[str] = ("float32",),
    devices: Iterable[str] = ("cpu",),
    repeats: int = 20,
    warmup: int = 2,
    threads: int = 2,
    budget_s: Optional[float] = 5.0,
    seed: int = 0,
) -> list[dict]:
    """One row per (device, dtype, shape (B, C, H, W, k), layer, inverse backend).

    Keys: layer, backend, B, C, H, W, k, dtype, device, forward_ms, forward_q1_ms, forward_q3_ms,
    inverse_ms, inverse_q1_ms, inverse_q3_ms, ratio (inverse / forward), max_err, repeats.
    FInC rows share the forward time; `backends` None means every FInC backend available.
    """
    layers = list(layers)
    for kind in layers:
        if kind not in LAYERS:
            raise ValueError(f"unknown layer '{kind}'; choose from: {', '.join(LAYERS)}")
    rows = []
    with num_threads(threads):
        for device_name in devices:
            for dtype_name in dtypes:
                device, dtype = resolve(device_name, dtype_name)
                names = finc_backends(backends, device)
                for shape in shapes:
                    rows += _shape_rows(tuple(shape), layers, names, device, dtype, repeats, warmup, budget_s, seed)
    return rows


def _check_shape(shape: tuple, layers: Sequence[str]) -> None:
    if len(shape) != 5 or any(int(s) < 1 for s in shape):
        raise ValueError(f"a shape is five positive integers B,C,H,W,k, got {shape}")
    if "finc" in layers and shape[1] % 4:
        raise ValueError(f"the FInC unit needs C divisible by 4, got C={shape[1]} in shape {shape}")


def _shape_rows(shape, layers, backends, device, dtype, repeats, warmup, budget_s, seed) -> list[dict]:
    _check_shape(shape, layers)
    B, C, H, W, k = shape
    torch.manual_seed(seed)
    x = torch.randn(B, C, H, W, device=device, dtype=dtype)
    variants, errors = {}, {}
    with torch.no_grad():
        for kind in layers:
            layer = build_layer(kind, C, k).to(device=device, dtype=dtype).eval()
            y, _ = layer(x)
            found = _layer_variants(kind, layer, x, y, backends)
            for key, fn in found.items():
                if key[2] == "inverse":
                    errors[key[:2]] = _max_err(fn, x)  # proven before timed
            variants.update(found)
    times = time_interleaved(variants, repeats, warmup, device, budget_s)
    rows = []
    for (kind, backend, direction), samples in times.items():
        if direction != "inverse":
            continue
        fwd, inv = summarize(times[(kind, None, "forward")]), summarize(samples)
        rows.append({
            "layer": kind, "backend": _label(kind, backend), "B": B, "C": C, "H": H, "W": W, "k": k,
            "dtype": str(dtype).removeprefix("torch."), "device": str(device),
            "forward_ms": fwd["median"], "forward_q1_ms": fwd["q1"], "forward_q3_ms": fwd["q3"],
            "inverse_ms": inv["median"], "inverse_q1_ms": inv["q1"], "inverse_q3_ms": inv["q3"],
            "ratio": inv["median"] / fwd["median"], "max_err": errors[(kind, backend)], "repeats": inv["n"],
        })
    return rows


# ---------------------------------------------------------------------------------------------
# model mode


def model_rows(
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
    glow: bool = True,
    seed: int = 0,
) -> list[dict]:
    """FT (bits_per_dim of a uint8 batch) and ST (model.sample) per batch size, FInC and Glow.

    Rows: one per (batch, FInC inverse backend) plus one Glow row per batch. Keys: model, backend,
    preset, levels, steps, hidden, kernel_size, params, batch, dtype, device, ft_s, ft_q1_s,
    ft_q3_s, st_s, st_q1_s, st_q3_s, st_over_ft, st_vs_glow (None without the Glow model).
    Random weights (timing only), ActNorm initialised on one random batch.
    """
    from finc_cli.config import load_preset
    from finc_cli.model import build_model

    dev, dt = resolve(device, dtype)
    overrides = dict(overrides or {})
    cfgs = {"finc": load_preset(preset, {**overrides, "model.finc": True})}
    if glow:
        cfgs["glow"] = load_preset(preset, {**overrides, "model.finc": False})
    names = finc_backends(backends, dev)
    rows = []
    with num_threads(threads):
        torch.manual_seed(seed)
        models = {kind: build_model(cfg).to(device=dev, dtype=dt) for kind, cfg in cfgs.items()}
        for model in models.values():
            _init_actnorm(model, dev, seed)
        for batch in batch_sizes:
            if int(batch) < 1:
                raise ValueError(f"batch sizes must be >= 1, got {batch}")
            rows += _batch_rows(models, cfgs, preset, int(batch), names, dev, repeats, warmup, temperature, seed)
    return rows


def _images(model, batch: int, device: torch.device, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.bins, (batch, *model.image_shape), generator=g, dtype=torch.uint8).to(device)


def _init_actnorm(model, device: torch.device, seed: int) -> None:
    model.initialize(_images(model, 8, device, seed))
    model.eval()


def _batch_rows(models, cfgs, preset, batch, backends, device, repeats, warmup, temperature, seed) -> list[dict]:
    gen = torch.Generator(device=device)
    variants: dict = {}
    for kind, model in models.items():
        x = _images(model, batch, device, seed)
        variants[(kind, None, "ft")] = lambda m=model, x=x: m.bits_per_dim(x)
        for b in backends if kind == "finc" else [None]:
            variants[(kind, b, "st")] = lambda m=model, b=b: m.sample(batch, temperature, gen.manual_seed(seed), backend=b)
    times = time_interleaved(variants, repeats, warmup, device)
    glow_st = statistics.median(times[("glow", None, "st")]) if "glow" in models else None
    rows = []
    for (kind, backend, what), samples in times.items():
        if what != "st":
            continue
        m, ft, st = cfgs[kind].model, summarize(times[(kind, None, "ft")], 1.0), summarize(samples, 1.0)
        rows.append({
            "model": kind, "backend": backend or "-", "preset": preset, "levels": m.levels, "steps": m.steps,
            "hidden": m.hidden, "kernel_size": m.kernel_size, "params": models[kind].num_parameters(),
            "batch": batch, "dtype": str(next(models[kind].parameters()).dtype).removeprefix("torch."),
            "device": str(device), "ft_s": ft["median"], "ft_q1_s": ft["q1"], "ft_q3_s": ft["q3"],
            "st_s": st["median"], "st_q1_s": st["q1"], "st_q3_s": st["q3"], "st_over_ft": st["median"] / ft["median"],
            "st_vs_glow": None if glow_st is None else st["median"] / glow_st, "repeats": st["n"],
        })
    return rows


# ---------------------------------------------------------------------------------------------
# scaling mode


def scaling_rows(
    sizes: Iterable[int] = (8, 16, 32, 64, 128),
    kernel_sizes: Iterable[int] = (2, 3, 5, 7),
    backends: Optional[Iterable[str]] = None,
    batch_size: int = 1,
    channels: int = 12,
    device: str = "cpu",
    dtype: str = "float32",
    repeats: int = 5,
    warmup: int = 1,
    threads: int = 2,
    budget_s: float = 2.0,
    max_call_s: float = 1.0,
    seed: int = 0,
) -> list[dict]:
    """Inverse time of one layer of C channels against image size n (n×n) per backend and k.

    `backends` mixes FInC inverse backends (wavefront, native, paper, cupy) and the sequential
    baselines (emerging, cinc); None means all that run here. A backend whose next size is
    predicted (×(n'/n)², the pixel count) to exceed `max_call_s` per call is not measured at
    larger n. Keys: backend, k, n, B, C, dtype, device, median_ms, q1_ms, q3_ms, min_ms, max_ms,
    repeats, max_err.
    """
    dev, dt = resolve(device, dtype)
    sizes = sorted(int(n) for n in sizes)
    if channels % 4 or channels < 4:
        raise ValueError(f"--channels must be a positive multiple of 4 (the FInC unit), got {channels}")
    if not sizes or sizes[0] < 1:
        raise ValueError(f"image sizes must be >= 1, got {sizes}")
    if backends is None:
        names = finc_backends(None, dev) + list(SEQUENTIAL)
    else:
        unknown = [b for b in backends if b not in SCALING_BACKENDS]
        if unknown:
            raise ValueError(f"unknown backend '{unknown[0]}'; choose from: {', '.join(SCALING_BACKENDS)}")
        names = finc_backends([b for b in backends if b not in SEQUENTIAL], dev) + [b for b in SEQUENTIAL if b in backends]
    rows = []
    with num_threads(threads):
        for k in kernel_sizes:
            rows += _scaling_k(int(k), sizes, names, batch_size, channels, dev, dt, repeats, warmup, budget_s, max_call_s, seed)
    return rows


def _scaling_k(k, sizes, names, B, C, device, dtype, repeats, warmup, budget_s, max_call_s, seed) -> list[dict]:
    torch.manual_seed(seed)
    layers = {kind: build_layer(kind, C, k).to(device=device, dtype=dtype).eval() for kind in ("finc", *SEQUENTIAL)}
    live, rows = list(names), []
    for pos, n in enumerate(sizes):
        x = torch.randn(B, C, n, n, device=device, dtype=dtype)
        variants, errors = {}, {}
        with torch.no_grad():
            for name in live:
                layer = layers[name] if name in SEQUENTIAL else layers["finc"]
                y, _ = layer(x)
                fn = (lambda l=layer, y=y: l.inverse(y)) if name in SEQUENTIAL else (lambda y=y, b=name: layers["finc"].inverse(y, backend=b))
                errors[name] = _max_err(fn, x)
                variants[name] = fn
        times = time_interleaved(variants, repeats, warmup, device, budget_s)
        for name, samples in times.items():
            s = summarize(samples)
            rows.append({
                "backend": name, "k": k, "n": n, "B": B, "C": C, "dtype": str(dtype).removeprefix("torch."),
                "device": str(device), "median_ms": s["median"], "q1_ms": s["q1"], "q3_ms": s["q3"],
                "min_ms": s["min"], "max_ms": s["max"], "repeats": s["n"], "max_err": errors[name],
            })
            if pos + 1 < len(sizes) and s["median"] / 1e3 * (sizes[pos + 1] / n) ** 2 > max_call_s:
                live.remove(name)
    return rows


def fit_exponent(ns: Sequence[float], times: Sequence[float]) -> float:
    """Least-squares slope of log(time) against log(n): time ∝ n^slope."""
    if len(ns) < 2:
        return math.nan
    lx, ly = [math.log(n) for n in ns], [math.log(t) for t in times]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    return math.nan if sxx == 0 else sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sxx


def fit_exponents(rows: Iterable[dict], large_n: int = 32) -> list[dict]:
    """Per (backend, k): the growth exponent over all sizes and over sizes >= large_n.

    The O(n·k²) claim (DESIGN §2) is exponent 1 when every pixel of an anti-diagonal runs in
    parallel; with few cores the per-step work (∝ n) is serial too and the exponent tends to 2,
    which is also what a raster-order inverse (n² steps) shows from the start.
    """
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["backend"], r["k"]), []).append((r["n"], r["median_ms"]))
    fits = []
    for (backend, k), points in groups.items():
        points.sort()
        big = [p for p in points if p[0] >= large_n]
        fits.append({
            "backend": backend, "k": k, "exponent": fit_exponent(*zip(*points)),
            "exponent_large": fit_exponent(*zip(*big)) if len(big) > 1 else math.nan,
            "points": len(points), "n_min": points[0][0], "n_max": points[-1][0],
        })
    return fits
