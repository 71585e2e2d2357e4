"""Layer benchmark: forward and inverse time of one invertible layer, FInC beside Emerging, CInC and Glow.

Every inverse is checked against its input before it is timed (the fast path is proven first).
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

import torch

from finc_cli import inverse
from finc_cli.bench.timing import num_threads, resolve, summarize, time_interleaved
from finc_cli.errors import InputError
from finc_cli.flows.baselines import CInCConv2d, EmergingConv2d
from finc_cli.flows.conv1x1 import InvConv1x1
from finc_cli.flows.finc_conv import FInCConv2d
from finc_cli.inverse import paper_schedule

__all__ = ["FINC_BACKENDS", "LAYERS", "SEQUENTIAL", "build_layer", "finc_backends", "layer_rows", "max_error"]

LAYERS = ("finc", "emerging", "cinc", "glow")
FINC_BACKENDS = ("wavefront", "native", "paper", "cupy")
SEQUENTIAL = ("emerging", "cinc")  # layers with a raster-order inverse


def finc_backends(names: Optional[Iterable[str]], device: torch.device) -> list[str]:
    """FInC inverse backends to time on `device`: None -> every one that runs here; else the names
    given, "auto" resolved, each checked (InverseBackendError, one line, for one that cannot run).
    The paper's schedule is registered as "paper" first.
    """
    paper_schedule.register()
    probe = torch.zeros(1, 4, 1, 1, device=device)
    if names is None:
        return [n for n in FINC_BACKENDS if _runs_on(n, probe) and inverse.is_available(n, device)]
    out = []
    for name in names:
        resolved = inverse.select_backend(probe, None if name == "auto" else name)  # unknown name: clear error
        if not inverse.is_available(resolved, device):
            raise inverse.InverseBackendError(f"inverse backend '{resolved}' is not available on {device} here")
        out += [resolved] if resolved not in out else []
    return out


def _runs_on(name: str, probe: torch.Tensor) -> bool:
    try:
        return inverse.select_backend(probe, name) == name
    except inverse.InverseBackendError:
        return False


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
    raise InputError(f"unknown layer '{kind}'; choose from: {', '.join(LAYERS)}")


def _layer_variants(kind: str, layer, x: torch.Tensor, y: torch.Tensor, backends: Sequence[str]) -> dict:
    """{(kind, backend, direction): fn}; FInC gets one inverse per backend."""
    out = {(kind, None, "forward"): lambda: layer(x)}
    if kind == "finc":
        for b in backends:
            out[(kind, b, "inverse")] = lambda b=b: _inverse_on(layer, y, b)
    else:
        out[(kind, None, "inverse")] = lambda: layer.inverse(y)
    return out


def _inverse_on(layer, y: torch.Tensor, backend: str):
    with inverse.use_backend(backend):
        return layer.inverse(y)


def _label(kind: str, backend: Optional[str]) -> str:
    return backend or {"emerging": "raster", "cinc": "raster", "glow": "lu"}[kind]


def max_error(fn: Callable, x: torch.Tensor) -> float:
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
    progress: Optional[Callable] = None,
) -> list[dict]:
    """One row per (device, dtype, shape (B, C, H, W, k), layer, inverse backend).

    Keys: layer, backend, B, C, H, W, k, dtype, device, forward_ms, forward_q1_ms, forward_q3_ms,
    inverse_ms, inverse_q1_ms, inverse_q3_ms, ratio (inverse / forward), max_err, repeats.
    FInC rows share the forward time; `backends` None means every FInC backend available.
    `progress(total)` may return a callback advanced once per (device, dtype, shape).
    """
    layers = list(layers)
    for kind in layers:
        if kind not in LAYERS:
            raise InputError(f"unknown layer '{kind}'; choose from: {', '.join(LAYERS)}")
    rows = []
    devices, dtypes, shapes = list(devices), list(dtypes), list(shapes)
    advance = progress(len(devices) * len(dtypes) * len(shapes)) if progress else (lambda n: None)
    with num_threads(threads):
        for device_name in devices:
            for dtype_name in dtypes:
                device, dtype = resolve(device_name, dtype_name)
                names = finc_backends(backends, device)
                for shape in shapes:
                    rows += _shape_rows(tuple(shape), layers, names, device, dtype, repeats, warmup, budget_s, seed)
                    advance(1)
    return rows


def _check_shape(shape: tuple, layers: Sequence[str]) -> None:
    if len(shape) != 5 or any(int(s) < 1 for s in shape):
        raise InputError(f"a shape is five positive integers B,C,H,W,k, got {shape}")
    if "finc" in layers and shape[1] % 4:
        raise InputError(f"the FInC unit needs C divisible by 4, got C={shape[1]} in shape {shape}")


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
                    errors[key[:2]] = max_error(fn, x)  # proven before timed
            variants.update(found)
    times = time_interleaved(variants, repeats, warmup, device, budget_s)
    rows = []
    for (kind, backend, direction), samples in times.items():
        if direction != "inverse":
            continue
        fwd, inv = summarize(times[(kind, None, "forward")]), summarize(samples)
        rows.append(
            {
                "layer": kind,
                "backend": _label(kind, backend),
                "B": B,
                "C": C,
                "H": H,
                "W": W,
                "k": k,
                "dtype": str(dtype).removeprefix("torch."),
                "device": str(device),
                "forward_ms": fwd["median"],
                "forward_q1_ms": fwd["q1"],
                "forward_q3_ms": fwd["q3"],
                "inverse_ms": inv["median"],
                "inverse_q1_ms": inv["q1"],
                "inverse_q3_ms": inv["q3"],
                "ratio": inv["median"] / fwd["median"],
                "max_err": errors[(kind, backend)],
                "repeats": inv["n"],
            }
        )
    return rows
