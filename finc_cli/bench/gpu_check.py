"""`python -m finc_cli.bench.gpu_check`: the GPU tests, then GPU timings of the FInC inverse, models and a train step.

Meant for a lent GPU machine, run from the source tree with its own torch / CuPy / pytest and no
install step (`make gpu-check`). Runs `pytest -m gpu`, then times with the shared benchmark
timing (CUDA events, warm-up, interleaved repeats, medians): one FInC unit's forward and its
inverse on every backend at the presets' level shapes; the cifar10 and imagenet64 models' FT and
ST beside a same-depth Glow; one training step of the celeba64 model in float32 and bf16. Every
fast path is checked against the wavefront inverse before it is timed. Writes JSON to --out and
prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from finc_cli.bench.model import ft_st_rows
from finc_cli.bench.tables import markdown_table
from finc_cli.bench.timing import environment, summarize, time_interleaved
from finc_cli.config import load_preset
from finc_cli.flows.finc_conv import FInCConv2d
from finc_cli.inverse import cupy_backend, use_backend
from finc_cli.inverse.cupy_backend import cupy_inverse, cupy_inverse_paper_schedule, plan_launch, shared_memory_limit
from finc_cli.inverse.wavefront import wavefront_inverse
from finc_cli.model import build_model
from finc_cli.text import first_line

__all__ = ["conv_rows", "gpu_check", "main", "preset_rows", "render", "run_gpu_tests", "train_step_rows", "unit_rows"]

REPO_ROOT = Path(__file__).resolve().parents[2]
# (C, H, W) after each squeeze, 3 levels: 32×32 images (CIFAR-10, ImageNet32), then 64×64 (ImageNet64).
LEVEL_SHAPES = [(12, 16, 16), (24, 8, 8), (48, 4, 4), (12, 32, 32), (24, 16, 16), (48, 8, 8)]
BATCHES = (100, 1)
MODEL_PRESETS = ("cifar10", "imagenet64")
MODEL_BATCHES = (1, 100)
CONV_PRESET, CONV_BATCH, CONVS = "cifar10", 100, ("finc", "emerging", "cinc", "none")  # the paper's ST table
TRAIN_PRESET, TRAIN_BATCHES, TRAIN_PRECISIONS = "celeba64", (32, 64), ("32", "bf16")
DEADLINE_S = 7 * 60  # later sections are skipped past this (the whole check should end within ~8 min)
CUDA = torch.device("cuda")

UNIT_COLUMNS = [
    ("C×H×W", "shape", "s"),
    ("batch", "batch", "d"),
    ("path", "path", "s"),
    ("forward ms", "forward_ms", ".3g"),
    ("cupy ms", "cupy_ms", ".3g"),
    ("cupy kernel ms", "cupy_kernel_ms", ".3g"),
    ("wavefront ms", "wavefront_ms", ".3g"),
    ("paper ms", "paper_ms", ".3g"),
    ("cupy ÷ fwd", "cupy_over_forward", ".2f"),
    ("paper ÷ cupy", "paper_over_cupy", ".1f"),
    ("err vs wavefront", "max_err_cupy_vs_wavefront", ".1e"),
    ("round-trip err", "max_err_reconstruction", ".1e"),
    ("ok", "ok", "s"),
]
MODEL_COLUMNS = [
    ("preset", "preset", "s"),
    ("model", "model", "s"),
    ("inverse", "backend", "s"),
    ("batch", "batch", "d"),
    ("params M", "params_m", ".3g"),
    ("FT ms", "ft_ms", ".3g"),
    ("ST ms", "st_ms", ".3g"),
    ("ST/FT", "st_over_ft", ".2f"),
    ("ST ÷ Glow ST", "st_vs_glow", ".2f"),
    ("unit err", "max_unit_err", ".1e"),
    ("note", "note", "s"),
]
CONV_COLUMNS = [
    ("preset", "preset", "s"),
    ("model", "model", "s"),
    ("inverse", "backend", "s"),
    ("batch", "batch", "d"),
    ("FT ms", "ft_ms", ".3g"),
    ("ST ms", "st_ms", ".3g"),
    ("ST/FT", "st_over_ft", ".2f"),
    ("k×k inverse ms", "conv_inverse_ms", ".3g"),
    ("k×k share of ST", "conv_inverse_share", ".0%"),
    ("ST ÷ FInC ST", "st_vs_finc", ".2f"),
    ("note", "note", "s"),
]
TRAIN_COLUMNS = [
    ("preset", "preset", "s"),
    ("precision", "precision", "s"),
    ("batch", "batch", "d"),
    ("step ms", "step_ms", ".3g"),
    ("images/s", "images_per_s", ".0f"),
    ("peak GiB", "peak_gib", ".2f"),
    ("note", "note", "s"),
]


def run_gpu_tests(timeout_s: int = 300) -> dict:
    """`pytest -m gpu` in a subprocess from the repository root; its return code and summary."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", "tests"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        output, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        output, rc = f"{exc.stdout or ''}\n{exc.stderr or ''}\npytest timed out after {timeout_s} s", -1
    lines = [line for line in output.splitlines() if line.strip()]
    return {
        "returncode": rc,
        "seconds": round(time.perf_counter() - start, 1),
        "summary": lines[-1] if lines else "",
        "tail": "\n".join(lines[-40:]),
    }


def _median_ms(times: dict, name: str) -> float:
    return summarize(times[name])["median"]


def unit_rows(shapes=LEVEL_SHAPES, batches=BATCHES, kernel_size: int = 3) -> list[dict]:
    """Per (C, H, W) and batch: forward and inverse times (ms) of one FInC unit, float32."""

    rows, limit = [], shared_memory_limit()
    for batch in batches:
        for C, H, W in shapes:
            torch.manual_seed(0)
            layer = FInCConv2d(C, kernel_size).cuda()
            x = torch.randn(batch, C, H, W, device=CUDA)
            with torch.no_grad():
                y, _ = layer(x)
                weight, linv = layer.inverse_operator()
                wave = wavefront_inverse(y, weight, linv)
                fused = cupy_inverse(y, weight, linv)
                paper = cupy_inverse_paper_schedule(y, weight, linv)
            plan = plan_launch(batch, H, W, kernel_size, C // 4, 4, limit)
            row = {
                "shape": f"{C}x{H}x{W}",
                "batch": batch,
                "path": plan.path,
                "threads": plan.threads,
                "images_per_block": plan.images_per_block,
                "max_err_cupy_vs_wavefront": (fused - wave).abs().max().item(),
                "max_err_paper_vs_wavefront": (paper - wave).abs().max().item(),
                "max_err_reconstruction": (fused - x).abs().max().item(),
            }
            row.update(_unit_times(layer, x, y))
            row["cupy_over_forward"] = row["cupy_ms"] / row["forward_ms"]
            row["paper_over_cupy"] = row["paper_ms"] / row["cupy_ms"]
            row["ok"] = max(row["max_err_cupy_vs_wavefront"], row["max_err_paper_vs_wavefront"]) < 1e-3
            rows.append(row)
    return rows


def _unit_times(layer, x: torch.Tensor, y: torch.Tensor) -> dict:
    """{name_ms: median}: the unit's forward, its inverse through the seam on each backend, and the raw kernels."""

    def inverse_on(backend):
        with use_backend(backend):
            return layer.inverse(y)

    weight, linv = layer.inverse_operator()
    variants = {
        "forward": lambda: layer(x),
        "cupy": lambda: inverse_on("cupy"),
        "cupy_kernel": lambda: cupy_inverse(y, weight, linv),
        "wavefront": lambda: inverse_on("wavefront"),
        "paper": lambda: cupy_inverse_paper_schedule(y, weight, linv),
    }
    times = time_interleaved(variants, repeats=30, warmup=3, device=CUDA, budget_s=0.5)
    return {f"{name}_ms": _median_ms(times, name) for name in variants}


def preset_rows(presets=MODEL_PRESETS, batches=MODEL_BATCHES, deadline: Optional[float] = None) -> list[dict]:
    """Per preset and batch: FT and ST (cupy and wavefront inverse) of FInC and the same-depth Glow, in ms."""

    rows = []
    for preset in presets:
        if deadline is not None and time.perf_counter() > deadline:
            rows.append({"preset": preset, "note": "skipped: time budget"})
            continue
        try:
            found = ft_st_rows(preset, {}, batches, ("cupy", "wavefront"), "cuda", repeats=5, warmup=2, threads=0)
            err = _unit_error(preset)
        except Exception as exc:  # noqa: BLE001 - reported in the table; the check goes on
            rows.append({"preset": preset, "note": f"failed: {type(exc).__name__}: {exc}"})
            continue
        for r in found:
            r.update(ft_ms=1e3 * r["ft_s"], st_ms=1e3 * r["st_s"], max_unit_err=err if r["model"] == "finc" else None)
        rows += found
        torch.cuda.empty_cache()
    return rows


def conv_rows(preset=CONV_PRESET, batch=CONV_BATCH, deadline: Optional[float] = None) -> list[dict]:
    """The paper's sampling comparison on this GPU: FT, ST and the k×k inverses' share of ST for every
    `model.conv` (FInC on the cupy backend; Emerging and CInC in their raster schedules), in ms."""

    if deadline is not None and time.perf_counter() > deadline:
        return [{"preset": preset, "note": "skipped: time budget"}]
    try:
        rows = ft_st_rows(preset, {}, (batch,), ("cupy",), "cuda", repeats=3, warmup=1, threads=0, convs=CONVS)
    except Exception as exc:  # noqa: BLE001 - reported in the table; the check goes on
        return [{"preset": preset, "note": f"failed: {type(exc).__name__}: {exc}"}]
    for r in rows:
        r.update(ft_ms=1e3 * r["ft_s"], st_ms=1e3 * r["st_s"], conv_inverse_ms=1e3 * r["conv_inverse_s"])
    torch.cuda.empty_cache()
    return rows


def _unit_error(preset: str) -> float:
    """Worst per-unit reconstruction error of the preset's FInC model (random weights) on the cupy inverse."""

    torch.manual_seed(0)
    model = build_model(load_preset(preset)).cuda()
    x = torch.randint(0, model.bins, (16, *model.image_shape), dtype=torch.uint8, device=CUDA)
    model.initialize(x)
    model.eval()
    with use_backend("cupy"):
        return max((r["max_abs_err"] for r in model.reconstruction_report(x)), default=0.0)


def train_step_rows(
    preset=TRAIN_PRESET, batches=TRAIN_BATCHES, precisions=TRAIN_PRECISIONS, deadline: Optional[float] = None
) -> list[dict]:
    """One optimizer step (forward, backward, Adam) of the preset's model on random images.

    Rows: median ms per step, images/s and peak GPU memory, per precision and batch size.
    """

    rows = []
    for precision in precisions:
        for batch in batches:
            row = {"preset": preset, "precision": precision, "batch": batch}
            if deadline is not None and time.perf_counter() > deadline:
                rows.append({**row, "note": "skipped: time budget"})
                continue
            try:
                torch.manual_seed(0)
                model = build_model(load_preset(preset)).cuda()
                model.set_autocast(torch.bfloat16 if precision == "bf16" else None)
                x = torch.randint(0, model.bins, (batch, *model.image_shape), dtype=torch.uint8, device=CUDA)
                model.initialize(x)
                ms = _train_step_ms(model, x)
                row.update(
                    step_ms=ms, images_per_s=batch / (ms / 1e3), peak_gib=torch.cuda.max_memory_allocated() / 2**30
                )
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory: reported, the check goes on
                row["note"] = f"failed: {type(exc).__name__}: {first_line(exc)[:120]}"
            rows.append(row)
            torch.cuda.empty_cache()
    return rows


def _train_step_ms(model, x: torch.Tensor) -> float:
    """Median ms of zero_grad, forward (bits/dim), backward and an Adam step; peak memory counted from here."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(x).mean().backward()
        optimizer.step()

    torch.cuda.reset_peak_memory_stats()
    return _median_ms(time_interleaved({"step": step}, repeats=5, warmup=2, device=CUDA), "step")


def render(result: dict) -> str:
    env = result["environment"]
    out = ["## GPU check", ""]
    keys = (
        "date",
        "gpu",
        "capability",
        "driver",
        "cuda_driver_api",
        "cuda_runtime",
        "torch",
        "cuda",
        "cupy",
        "nvrtc",
        "python",
    )
    out += [f"- {key}: {env.get(key)}" for key in keys]
    tests = result.get("tests")
    if tests:
        out += ["", f"GPU tests (pytest -m gpu): rc={tests['returncode']} in {tests['seconds']} s: {tests['summary']}"]
    sections = (
        ("units", "One FInC unit, float32, k = 3 (ms, CUDA-event medians)", UNIT_COLUMNS),
        ("models", "Models (ms, CUDA-event medians; random weights and images)", MODEL_COLUMNS),
        ("convs", "Invertible convolutions, the paper's ST comparison (ms, CUDA-event medians)", CONV_COLUMNS),
        ("train", "One training step (forward, backward, Adam; random images)", TRAIN_COLUMNS),
    )
    for key, title, columns in sections:
        if result.get(key):
            out += ["", f"### {title}", "", markdown_table(columns, result[key])]
    return "\n".join(out)


def gpu_check(out: Path, tests: bool = True, models: bool = True, train: bool = True) -> dict:
    """Run everything; returns the result dict (also written to `out` as JSON)."""
    started = time.perf_counter()
    deadline = started + DEADLINE_S
    result: dict = {"environment": environment("cuda" if torch.cuda.is_available() else "cpu")}
    if tests:
        result["tests"] = run_gpu_tests()
    if not torch.cuda.is_available():
        result["error"] = "no CUDA device: torch.cuda.is_available() is False"
    else:
        reason = cupy_backend.unavailable_reason("cuda")
        if reason is not None:
            result["error"] = f"CuPy cannot use this GPU: {reason}"
        else:
            result["units"] = unit_rows()
        if models:
            result["models"] = preset_rows(deadline=deadline)
            result["convs"] = conv_rows(deadline=deadline)
        if train:
            result["train"] = train_step_rows(deadline=deadline)
    result["seconds"] = round(time.perf_counter() - started, 1)
    out.write_text(json.dumps(result, indent=2, default=str))
    return result


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finc_cli.bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="JSON results path")
    parser.add_argument("--no-tests", action="store_true", help="skip `pytest -m gpu`")
    parser.add_argument("--no-models", action="store_true", help="skip the model timings")
    parser.add_argument("--no-train", action="store_true", help="skip the training-step timings")
    args = parser.parse_args(argv)
    result = gpu_check(args.out, tests=not args.no_tests, models=not args.no_models, train=not args.no_train)
    print(render(result))
    if result.get("tests") and result["tests"]["returncode"] != 0:
        print("\nGPU tests failed:\n" + result["tests"]["tail"], file=sys.stderr)
    if result.get("error"):
        print(f"\nerror: {result['error']}", file=sys.stderr)
    failed = bool(result.get("error")) or (result.get("tests") or {}).get("returncode", 0) != 0
    failed = failed or not all(row.get("ok", True) for row in result.get("units", []))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
