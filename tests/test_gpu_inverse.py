"""The CuPy kernels against the reference and the wavefront inverse, on a GPU (skipped without one)."""

from __future__ import annotations

import pytest
import torch
from finc_problems import random_finc_problem

from finc_cli import inverse as seam
from finc_cli.flows.finc_conv import FInCConv2d, finc_conv2d
from finc_cli.inverse import cupy_backend
from finc_cli.inverse.reference import reference_inverse
from finc_cli.inverse.wavefront import wavefront_inverse

WHY_NOT = cupy_backend.unavailable_reason("cuda")  # None on a GPU that CuPy can use

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(WHY_NOT is not None, reason=f"needs a CUDA GPU with CuPy: {WHY_NOT}"),
]

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 2e-4, torch.float64: 1e-10}
# (B, C', H, W, k): H ≠ W, C' = 1, k = 1, 2, 5, 7, one-row and one-column images.
ODD_SHAPES = [
    (2, 1, 5, 7, 1),
    (3, 1, 6, 4, 2),
    (2, 3, 7, 5, 5),
    (2, 2, 9, 8, 7),
    (2, 3, 1, 6, 3),
    (3, 2, 6, 1, 3),
    (5, 4, 5, 5, 3),
    (1, 3, 16, 12, 3),
]
PATHS = ["auto", "tile", "ring", "diagonal"]


def _problem(B, cg, H, W, k, dtype, seed=0, scale=0.1):
    """(y, weight, linv, x_true) on the GPU, y = finc_conv2d(x_true) computed in float64."""
    x, y, w = random_finc_problem(B, cg, H, W, k, std=scale, seed=seed)
    w, y = w.to(dtype).cuda(), y.to(dtype).cuda()
    return y, w, seam.centre_inverse(w), x.to(dtype).cuda()


def _poisoned(y: torch.Tensor) -> torch.Tensor:
    return torch.full_like(y, float("nan"))


def _cupy(y, w, linv, **kw):
    from finc_cli.inverse.cupy_backend import cupy_inverse

    out = _poisoned(y)
    x = cupy_inverse(y, w, linv, out=out, **kw)
    assert x.data_ptr() == out.data_ptr()
    assert torch.isfinite(x).all(), "an output element was not written (NaN poison survived)"
    return x


def _close(a, b, dtype, scale=1.0):
    """max |a - b| within the dtype's tolerance; compared on the CPU, as references are built there."""
    err = (a.detach().cpu().double() - b.detach().cpu().double()).abs().max().item()
    assert err <= TOL[dtype] * scale, f"max |difference| {err:.3e}"


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda s: "B{}_C{}_{}x{}_k{}".format(*s))
def test_cupy_matches_reference_and_wavefront_on_every_path(shape, dtype):
    y, w, linv, _ = _problem(*shape, dtype)
    ref = reference_inverse(y.cpu().double(), w.cpu().double(), linv.cpu().double())
    wave = wavefront_inverse(y, w, linv)
    for path in PATHS:
        x = _cupy(y, w, linv, path=path)
        _close(x, ref, dtype)
        _close(x, wave, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", ODD_SHAPES[:4] + ODD_SHAPES[6:], ids=lambda s: "B{}_C{}_{}x{}_k{}".format(*s))
def test_paper_schedule_matches_reference(shape, dtype):
    from finc_cli.inverse.cupy_backend import cupy_inverse_paper_schedule

    y, w, linv, _ = _problem(*shape, dtype)
    ref = reference_inverse(y.cpu().double(), w.cpu().double(), linv.cpu().double())
    out = _poisoned(y)
    x = cupy_inverse_paper_schedule(y, w, linv, out=out)
    assert torch.isfinite(x).all()
    _close(x, ref, dtype)


@pytest.mark.parametrize("path", PATHS)
def test_repeated_runs_are_bit_identical(path):
    y, w, linv, _ = _problem(6, 3, 11, 13, 3, torch.float32, seed=1)
    first = _cupy(y, w, linv, path=path)
    for _ in range(3):
        assert torch.equal(_cupy(y, w, linv, path=path), first)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_large_batch_and_grid_stride(dtype):
    y, w, linv, x_true = _problem(2048, 3, 8, 8, 3, dtype, seed=2)
    wave = wavefront_inverse(y, w, linv)
    for kw in ({}, {"max_blocks": 7}, {"path": "ring", "max_blocks": 5}, {"path": "diagonal"}):
        x = _cupy(y, w, linv, **kw)
        _close(x, wave, dtype)
        _close(x, x_true, dtype, scale=10)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_64x64_images_on_every_path(dtype):
    from finc_cli.inverse.cupy_backend import plan_launch, shared_memory_limit

    B, cg, H, W, k = 3, 3, 64, 64, 3
    y, w, linv, x_true = _problem(B, cg, H, W, k, dtype, seed=3, scale=0.05)
    limit = shared_memory_limit()
    assert plan_launch(B, H, W, k, cg, y.element_size(), limit).path == "ring"  # the tile does not fit 48 KiB
    wave = wavefront_inverse(y, w, linv)
    paths = ["auto", "ring", "diagonal"]
    if y.element_size() * (cg * H * W + cg * cg * k * k) <= limit:
        paths.append("tile")  # opts in to more than 48 KiB of shared memory
    for path in paths:
        x = _cupy(y, w, linv, path=path)
        _close(x, wave, dtype, scale=10)
        _close(x, x_true, dtype, scale=100)


def test_layer_inverse_with_non_contiguous_input():
    torch.manual_seed(4)
    layer = FInCConv2d(12, kernel_size=3).cuda()
    x = torch.randn(5, 9, 7, 12, device="cuda").permute(0, 3, 1, 2)  # (B, C, H, W), channels-last memory
    assert not x.is_contiguous()
    y, _ = layer(x)
    y = y.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # non-contiguous again
    assert seam.select_backend(y) == "cupy"
    x_back, logdet = layer.inverse(y)
    _close(x_back, x, torch.float32)
    assert torch.equal(logdet, torch.zeros(5, device="cuda"))


def test_runs_on_the_current_stream():
    from finc_cli.inverse.cupy_backend import cupy_inverse

    y, w, linv, x_true = _problem(16, 3, 12, 12, 3, torch.float32, seed=5)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        x = cupy_inverse(y, w, linv)
        r = finc_conv2d(x, w)  # ordered after the kernel on the same stream
    torch.cuda.current_stream().wait_stream(side)
    _close(r, y, torch.float32, scale=10)
    _close(x, x_true, torch.float32, scale=10)


def test_unsupported_dtype_is_a_clear_error():
    from finc_cli.inverse.cupy_backend import cupy_inverse

    y, w, linv, _ = _problem(1, 1, 3, 3, 3, torch.float32)
    with pytest.raises(seam.InverseBackendError, match="float32 and float64"):
        cupy_inverse(y.half(), w.half(), linv.half())
