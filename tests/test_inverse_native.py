"""The compiled CPU inverse (finc_cli.inverse.native) against reference and dense solves, and its fallback."""

import pytest
import torch
from finc_problems import random_finc_problem

from finc_cli import inverse
from finc_cli.flows.finc_conv import FInCConv2d, finc_conv2d
from finc_cli.inverse import native
from finc_cli.inverse.reference import reference_inverse
from finc_cli.inverse.wavefront import wavefront_inverse

needs_compiler = pytest.mark.skipif(not native.is_available("cpu"), reason="no working C compiler")

SHAPES = [  # (B, C', H, W, k): odd sizes, H != W, every k in {1, 2, 3, 5}
    (3, 2, 4, 3, 1),
    (1, 1, 5, 3, 2),
    (3, 3, 3, 5, 2),
    (1, 2, 4, 6, 3),
    (3, 1, 5, 4, 3),
    (1, 3, 6, 5, 5),
    (3, 2, 3, 7, 5),
]


def _problem(B, Cg, H, W, k, std=0.3, seed=0):
    """(x, y, weight, linv) in float64 with weights far from init: off-centre and below-diagonal std `std`."""
    x, y, weight = random_finc_problem(B, Cg, H, W, k, std=std, seed=seed)
    return x, y, weight, inverse.centre_inverse(weight)


def _dense_solve(y, weight):
    """x = J⁻¹·y with J the dense (D, D) matrix of the linear forward map for one image."""
    B, C, H, W = y.shape
    basis = torch.eye(C * H * W, dtype=y.dtype).view(-1, C, H, W)  # one image per input pixel-channel
    jac = finc_conv2d(basis, weight).reshape(C * H * W, -1).T  # column n = image of basis vector n
    return torch.linalg.solve(jac, y.reshape(B, -1).T).T.reshape(B, C, H, W)


@needs_compiler
@pytest.mark.parametrize("B,Cg,H,W,k", SHAPES)
def test_native_equals_reference_and_dense_solve_float64(B, Cg, H, W, k):
    x, y, weight, linv = _problem(B, Cg, H, W, k)
    xn = native.native_inverse(y, weight, linv)
    scale = x.abs().max()
    assert xn.dtype == torch.float64 and xn.shape == x.shape
    assert (xn - x).abs().max() / scale < 1e-10
    assert (xn - reference_inverse(y, weight, linv)).abs().max() / scale < 1e-10
    assert (xn - _dense_solve(y, weight)).abs().max() / scale < 1e-10
    assert (xn - wavefront_inverse(y, weight, linv)).abs().max() / scale < 1e-10


@needs_compiler
@pytest.mark.parametrize("B,Cg,H,W,k", SHAPES)
def test_native_float32_close_to_float64(B, Cg, H, W, k):
    x, y, weight, linv = _problem(B, Cg, H, W, k)
    x64 = native.native_inverse(y, weight, linv)
    x32 = native.native_inverse(y.float(), weight.float(), linv.float())
    assert x32.dtype == torch.float32
    assert (x32.double() - x64).abs().max() / x64.abs().max() < 1e-4


@needs_compiler
def test_layer_inverse_through_the_seam_and_thread_counts(monkeypatch):
    monkeypatch.delenv(inverse.ENV_VAR, raising=False)
    torch.manual_seed(0)
    layer = FInCConv2d(8, 3).double()
    with torch.no_grad():
        layer.weight.normal_(0.0, 0.3)
    x = torch.randn(5, 8, 6, 7, dtype=torch.float64)
    y, _ = layer(x)
    assert inverse.select_backend(y) == "native"  # auto picks it on the CPU
    with inverse.use_backend("native"):
        xs = [layer.inverse(y)[0]]
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with inverse.use_backend("native"):
            xs.append(layer.inverse(y)[0])
    finally:
        torch.set_num_threads(previous)
    for xr in xs:
        assert (xr - x).abs().max() < 1e-10
    assert torch.equal(xs[0], xs[1])  # each (image, group) is solved the same way on any thread


@needs_compiler
def test_empty_batch_and_half_precision():
    x, y, weight, linv = _problem(2, 1, 3, 4, 2, std=0.1)
    assert native.native_inverse(y[:0], weight, linv).shape == (0, 4, 3, 4)
    xh = native.native_inverse(y.half(), weight.half(), linv.half())
    assert xh.dtype == torch.float16 and (xh.double() - x).abs().max() < 1e-2


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """A fresh cache dir and no in-process state; the state is cleared again afterwards."""
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(inverse.ENV_VAR, raising=False)
    native.clear_cache()
    yield tmp_path / "cache"
    native.clear_cache()


def test_missing_compiler_falls_back_to_wavefront(fresh_native, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/finc-test-cc")
    assert native.is_available("cpu") is False
    assert native.is_available(torch.device("cpu")) is False  # cached, still no raise
    x, y, weight, linv = _problem(1, 1, 3, 4, 2, std=0.1)
    assert inverse.select_backend(y) == "wavefront"
    assert (inverse.solve(y, weight) - x).abs().max() < 1e-10
    with pytest.raises(inverse.InverseBackendError, match="compiler"):
        native.native_inverse(y, weight, linv)


@needs_compiler
def test_fresh_cache_builds_atomically(fresh_native):
    assert native.is_available("cpu")
    built = sorted(p.name for p in fresh_native.iterdir())
    assert len(built) == 1 and built[0].endswith(".so")  # no temporary files left behind
    native.clear_cache()
    assert native.is_available("cpu")  # loaded from the cache, not rebuilt
    assert sorted(p.name for p in fresh_native.iterdir()) == built
    assert native.is_available("cuda") is False


@needs_compiler
def test_damaged_cache_entry_is_rebuilt(fresh_native, monkeypatch, tmp_path):
    assert native.is_available("cpu")
    (built,) = fresh_native.iterdir()
    other = tmp_path / "other-cache"  # a file never mapped by this process (overwriting a loaded one would crash it)
    other.mkdir()
    (other / built.name).write_bytes(b"not a shared library")
    monkeypatch.setenv(native.CACHE_ENV, str(other))
    native.clear_cache()
    assert native.is_available("cpu")
    assert (other / built.name).stat().st_size > 100
    x, y, weight, linv = _problem(2, 2, 3, 4, 3)
    assert (native.native_inverse(y, weight, linv) - x).abs().max() < 1e-10


def test_unit_ratio_rows_smoke():
    """The unit-ratio measurement (`finc benchmark layer`, BENCHMARKS.md "unit") runs native beside the wavefront."""
    import math

    from finc_cli.bench import tables
    from finc_cli.bench.layer import layer_rows

    backends = ("wavefront", "native") if native.is_available("cpu") else ("wavefront",)
    rows = layer_rows([(2, 8, 5, 6, 3)], layers=("finc",), backends=backends, repeats=2, warmup=1, threads=1)
    assert [r["backend"] for r in rows] == list(backends)
    for r in rows:
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("forward_ms", "inverse_ms", "ratio"))
        assert r["max_err"] < 1e-4  # proven before timed
    (row,) = tables.unit_pivot(rows)
    assert row["wavefront_ratio"] > 0 and "cupy_ms" not in row
    assert ("native_ms" in row) == native.is_available("cpu")
    assert "| 2,8,5,6,3 |" in tables.markdown_table(tables.unit_columns(), [row])
