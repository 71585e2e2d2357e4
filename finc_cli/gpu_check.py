"""`python -m finc_cli.gpu_check`: the GPU tests, then GPU timings of the FInC inverse and the models.

Meant for a lent GPU machine with its own torch / CuPy / pytest and no install step. Runs
`pytest -m gpu`, then times, with CUDA events after a warm-up (medians), one FInC unit's
forward and its inverse on every backend at the level shapes of CIFAR-10 / ImageNet32 (32×32)
and ImageNet64 (64×64), and, when the model code is importable, a model's bits/dim forward and
sampling. Every fast path is checked against the wavefront inverse before it is timed. Writes
JSON to --out and prints Markdown. Imports only torch, cupy, numpy, pytest and the stdlib.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
# (C, H, W) after each squeeze, 3 levels: 32×32 images (CIFAR-10, ImageNet32), then 64×64 (ImageNet64).
LEVEL_SHAPES = [(12, 16, 16), (24, 8, 8), (48, 4, 4), (12, 32, 32), (24, 16, 16), (48, 8, 8)]
BATCHES = (100, 1)
MODEL_PRESETS = ("cifar10", "imagenet64")
MODEL_BATCHES = (1, 100)
DEADLINE_S = 7 * 60  # model rows are skipped past this (the whole check should end within ~8 min)


# ----- timing -------------------------------------------------------------------------------

def time_cuda(fn: Callable[[], object], warmup: int = 3, min_reps: int = 5, max_reps: int = 50,
              budget_s: float = 0.5) -> float:
    """Median milliseconds of fn() between CUDA events on the current stream, after a warm-up."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times: list[float] = []
    start_wall = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start_wall < budget_s):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


# ----- environment and tests ----------------------------------------------------------------

def environment() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "capability": ".".join(map(str, torch.cuda.get_device_capability())) if torch.cuda.is_available() else None,
    }
    try:
        import cupy

        info["cupy"] = cupy.__version__
        info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        info["cuda_driver_api"] = cupy.cuda.runtime.driverGetVersion()
        from cupy.cuda import nvrtc

        info["nvrtc"] = ".".join(map(str, nvrtc.getVersion()))
    except Exception as exc:
        info["cupy"] = f"unavailable: {type(exc).__name__}: {exc}"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )
        info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except Exception:
        info["driver"] = None
    return info


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


# ----- one FInC unit --------------------------------------------------------------------------

def unit_rows(shapes=LEVEL_SHAPES, batches=BATCHES, kernel_size: int = 3) -> list[dict]:
    """Per (C, H, W) and batch: forward and inverse times (ms) of one FInC unit, float32."""
    from finc_cli.flows.finc_conv import FInCConv2d
    from finc_cli.inverse import cupy_backend
    from finc_cli.inverse.cupy_backend import cupy_inverse, cupy_inverse_paper_schedule, plan_launch
    from finc_cli.inverse.wavefront import wavefront_inverse

    rows = []
    cupy = cupy_backend._import_cupy()
    limit = cupy_backend._shared_limit(cupy, torch.cuda.current_device())
    for batch in batches:
        for C, H, W in shapes:
            torch.manual_seed(0)
            layer = FInCConv2d(C, kernel_size).cuda()
            x = torch.randn(batch, C, H, W, device="cuda")
            with torch.no_grad():
                y, _ = layer(x)
                weight, linv = layer.inverse_operator()
                wave = wavefront_inverse(y, weight, linv)
                fused = cupy_inverse(y, weight, linv)
                paper = cupy_inverse_paper_schedule(y, weight, linv)
            plan = plan_launch(batch, H, W, kernel_size, C // 4, 4, limit)
            row = {
                "shape": f"{C}x{H}x{W}", "batch": batch, "path": plan.path,
                "threads": plan.threads, "images_per_block": plan.images_per_block,
                "max_err_cupy_vs_wavefront": (fused - wave).abs().max().item(),
                "max_err_paper_vs_wavefront": (paper - wave).abs().max().item(),
                "max_err_reconstruction": (fused - x).abs().max().item(),
            }
            with torch.no_grad():
                row["forward_ms"] = time_cuda(lambda: layer(x))
                row["cupy_ms"] = time_cuda(lambda: layer.inverse(y, backend="cupy"))
                row["cupy_kernel_ms"] = time_cuda(lambda: cupy_inverse(y, weight, linv))
                row["wavefront_ms"] = time_cuda(lambda: layer.inverse(y, backend="wavefront"))
                row["paper_ms"] = time_cuda(lambda: cupy_inverse_paper_schedule(y, weight, linv))
            row["cupy_over_forward"] = row["cupy_ms"] / row["forward_ms"]
            row["ok"] = max(row["max_err_cupy_vs_wavefront"], row["max_err_paper_vs_wavefront"]) < 1e-3
            rows.append(row)
    return rows


# ----- models ----------------------------------------------------------------------------------

def model_rows(presets=MODEL_PRESETS, batches=MODEL_BATCHES, deadline: Optional[float] = None) -> list[dict]:
    """Per preset and batch: bits/dim forward and sampling (cupy and wavefront) in ms; notes if skipped."""
    try:
        from finc_cli.config import load_preset
        from finc_cli.model import build_model
    except Exception as exc:  # the model code is not there (yet) or cannot import here
        return [{"note": f"model rows skipped: {type(exc).__name__}: {exc}"}]
    rows = []
    for preset in presets:
        for finc in (True, False):  # False: the same-size Glow baseline (1×1 convs only)
            if deadline is not None and time.perf_counter() > deadline:
                rows.append({"preset": preset, "finc": finc, "note": "skipped: time budget"})
                continue
            try:
                rows += _time_model(load_preset, build_model, preset, finc, batches)
            except Exception as exc:
                rows.append({"preset": preset, "finc": finc, "note": f"failed: {type(exc).__name__}: {exc}"})
            torch.cuda.empty_cache()
    return rows


def _time_model(load_preset, build_model, preset: str, finc: bool, batches) -> list[dict]:
    cfg = load_preset(preset, {"model.finc": finc})
    torch.manual_seed(0)
    model = build_model(cfg).cuda()
    shape = model.image_shape
    init = torch.randint(0, model.bins, (min(64, max(batches)), *shape), dtype=torch.uint8, device="cuda")
    model.initialize(init)  # ActNorm's data-dependent init
    model.eval()
    rows = []
    for batch in batches:
        x = torch.randint(0, model.bins, (batch, *shape), dtype=torch.uint8, device="cuda")
        row = {"preset": preset, "finc": finc, "batch": batch, "params_M": round(model.num_parameters() / 1e6, 1)}
        with torch.no_grad():
            row["bpd_random_images"] = model.bits_per_dim(x).mean().item()
            row["forward_ms"] = time_cuda(lambda: model.bits_per_dim(x), warmup=2, min_reps=3, max_reps=10, budget_s=2)
            row["sample_ms"] = time_cuda(lambda: model.sample(batch), warmup=1, min_reps=3, max_reps=10, budget_s=2)
            if finc:
                row["sample_wavefront_ms"] = time_cuda(
                    lambda: model.sample(batch, backend="wavefront"), warmup=1, min_reps=3, max_reps=5, budget_s=2
                )
                report = model.reconstruction_report(x[: min(batch, 16)])
                row["max_unit_reconstruction_err"] = max((r["max_abs_err"] for r in report), default=0.0)
        row["sample_over_forward"] = row["sample_ms"] / row["forward_ms"]
        rows.append(row)
    return rows


# ----- rendering -------------------------------------------------------------------------------

def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.3f}"
    return "" if value is None else str(value)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def render(result: dict) -> str:
    env = result["environment"]
    out = ["## GPU check", ""]
    out += [f"- {key}: {env.get(key)}" for key in ("device", "capability", "driver", "cuda_driver_api",
                                                   "cuda_runtime", "torch", "torch_cuda", "cupy", "nvrtc", "python")]
    tests = result.get("tests")
    if tests:
        out += ["", f"GPU tests (pytest -m gpu): rc={tests['returncode']} in {tests['seconds']} s: {tests['summary']}"]
    if result.get("units"):
        out += ["", "### One FInC unit, float32, k = 3 (ms, CUDA-event medians)", ""]
        out.append(markdown_table(result["units"], [
            "shape", "batch", "path", "forward_ms", "cupy_ms", "cupy_kernel_ms", "wavefront_ms", "paper_ms",
            "cupy_over_forward", "max_err_cupy_vs_wavefront", "max_err_reconstruction", "ok",
        ]))
    if result.get("models"):
        out += ["", "### Models (ms, CUDA-event medians; random weights and images)", ""]
        out.append(markdown_table(result["models"], [
            "preset", "finc", "batch", "params_M", "forward_ms", "sample_ms", "sample_wavefront_ms",
            "sample_over_forward", "max_unit_reconstruction_err", "note",
        ]))
    return "\n".join(out)


def gpu_check(out: Path, tests: bool = True, models: bool = True) -> dict:
    """Run everything; returns the result dict (also written to `out` as JSON)."""
    started = time.perf_counter()
    result: dict = {"environment": environment()}
    if tests:
        result["tests"] = run_gpu_tests()
    if not torch.cuda.is_available():
        result["error"] = "no CUDA device: torch.cuda.is_available() is False"
    else:
        from finc_cli.inverse import cupy_backend

        if not cupy_backend.is_available("cuda"):
            result["error"] = "CuPy cannot use this GPU: the cupy backend is unavailable"
        else:
            result["units"] = unit_rows()
        if models:
            result["models"] = model_rows(deadline=started + DEADLINE_S)
    result["seconds"] = round(time.perf_counter() - started, 1)
    out.write_text(json.dumps(result, indent=2, default=str))
    return result


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finc_cli.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="JSON results path")
    parser.add_argument("--no-tests", action="store_true", help="skip `pytest -m gpu`")
    parser.add_argument("--no-models", action="store_true", help="skip the model timings")
    args = parser.parse_args(argv)
    result = gpu_check(args.out, tests=not args.no_tests, models=not args.no_models)
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
