"""Every kernel in kernels/ compiles with NVRTC (no GPU needed), within its register budget and
without spills; the CuPy launcher imports and plans launches without a GPU."""

from __future__ import annotations

from functools import cache

import pytest
import torch

from finc_cli.inverse import InverseBackendError
from finc_cli.inverse import kernel_source as ks


def _nvrtc_or_skip():
    try:
        from cupy.cuda import nvrtc

        nvrtc.getVersion()
    except Exception as exc:  # noqa: BLE001 - cupy missing, or libnvrtc cannot be loaded
        pytest.skip(f"NVRTC is not usable here ({type(exc).__name__}: {exc})")


@cache
def _report(filename: str, arch: str) -> tuple:
    from finc_cli.inverse import kernel_report

    return tuple(kernel_report.file_report(filename, arch))


def test_kernel_sources_are_found_and_read_with_line_markers():
    names = [p.name for p in ks.kernel_files()]
    assert ks.INVERSE_SOURCE in names
    text = ks.load_source(ks.INVERSE_SOURCE, {"FINC_MAX_BLOCK": 512})
    head = text.splitlines()[:2]
    assert head == ["#define FINC_MAX_BLOCK 512", f'#line 1 "{ks.INVERSE_SOURCE}"']


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("filename", [p.name for p in ks.kernel_files()])
def test_kernels_compile_without_spills_within_register_budget(filename, arch):
    _nvrtc_or_skip()
    from finc_cli.inverse import kernel_report

    rows = _report(filename, arch)
    assert rows, f"ptxas reported no kernels for {filename} on {arch}"
    if filename == ks.INVERSE_SOURCE:
        expected = {n for t in ("float", "double") for k, cg in kernel_report.SHAPES for n in ks.entry_names(t, k, cg)}
        assert expected <= {r["kernel"] for r in rows}, "an entry was not instantiated"
    table = kernel_report.render_markdown(rows)
    print(table)  # visible with -s: the register / spill table
    for r in rows:
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, f"{r['kernel']} spills on {arch}:\n{table}"
        assert r["registers"] <= r["budget"], f"{r['kernel']} uses {r['registers']} registers on {arch}:\n{table}"


def test_compile_error_carries_the_compiler_log():
    _nvrtc_or_skip()
    from finc_cli.inverse import kernel_report

    with pytest.raises(kernel_report.KernelCompileError, match="broken.cu.*(error|identifier)"):
        kernel_report.compile_program(
            '#line 1 "broken.cu"\n__global__ void f() { undefined_name(); }', "broken.cu", "sm_90"
        )


def test_ptxas_log_parser():
    from finc_cli.inverse.kernel_report import parse_ptxas_log

    log = (
        "ptxas info    : Function properties for _Z1fv\n"
        "ptxas         .     8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n"
        "ptxas info    : Used 40 registers, used 1 barriers, 2048 bytes smem, 400 bytes cmem[0]\n"
    )
    assert parse_ptxas_log(log) == {
        "_Z1fv": dict(stack=8, spill_stores=4, spill_loads=12, registers=40, barriers=1, static_smem=2048)
    }


# ----- the launcher without a GPU -------------------------------------------------------------

H200_OPTIN = 227 * 1024


@pytest.mark.parametrize(
    "shape, itemsize, path",
    [
        ((100, 16, 16, 3, 3), 4, "tile"),  # CIFAR level 1: (12, 16, 16)
        ((100, 4, 4, 3, 12), 4, "tile"),  # level 3: (48, 4, 4)
        ((100, 32, 32, 3, 3), 8, "tile"),  # ImageNet64 level 1 in float64: 24 KiB tile
        ((4, 64, 64, 3, 3), 4, "ring"),  # 48 KiB tile + operator > 48 KiB
        ((2, 64, 64, 3, 3), 8, "ring"),
        ((1, 4096, 4096, 3, 3), 8, "diagonal"),  # the ring no longer fits
    ],
)
def test_plan_launch_picks_the_path_and_a_valid_geometry(shape, itemsize, path):
    from finc_cli.inverse.cupy_backend import FUSED_MAX_THREADS, GRID_THREADS, plan_launch

    B, H, W, k, cg = shape
    plan = plan_launch(B, H, W, k, cg, itemsize, H200_OPTIN)
    assert plan.path == path
    if path == "diagonal":
        assert plan.threads == GRID_THREADS and plan.blocks * GRID_THREADS >= 4 * cg * min(H, W)
        return
    assert 32 <= plan.threads <= FUSED_MAX_THREADS and plan.threads % 32 == 0
    assert 1 <= plan.images_per_block <= B and plan.shared_bytes <= H200_OPTIN
    assert plan.blocks * plan.images_per_block >= B or plan.blocks == 65535


def test_plan_launch_respects_forced_paths_and_limits():
    from finc_cli.inverse.cupy_backend import plan_launch

    assert plan_launch(3, 64, 64, 3, 3, 4, H200_OPTIN, "tile").shared_bytes > 48 * 1024  # opt-in
    assert plan_launch(3, 8, 8, 3, 3, 4, H200_OPTIN, "ring").path == "ring"
    assert plan_launch(3000, 8, 8, 3, 3, 4, H200_OPTIN, "tile", 7).blocks == 7  # grid-stride
    with pytest.raises(ValueError, match="shared memory"):
        plan_launch(1, 128, 128, 3, 12, 8, 48 * 1024, "tile")


def test_cupy_backend_imports_and_refuses_cleanly_without_a_gpu():
    from finc_cli.inverse import cupy_backend

    assert cupy_backend.is_available("cpu") is False
    if not torch.cuda.is_available():
        assert cupy_backend.is_available("cuda") is False
    y = torch.zeros(1, 4, 3, 3)
    with pytest.raises(InverseBackendError, match="CUDA tensors|pip install cupy-cuda13x"):  # the latter without CuPy
        cupy_backend.cupy_inverse(y, torch.zeros(4, 1, 1, 3, 3), torch.ones(4, 1, 1))
