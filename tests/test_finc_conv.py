"""FInCConv2d and the inverse seam against dense references (float64, tiny shapes)."""

import sys
from types import SimpleNamespace

import pytest
import torch
from jacobians import dense_jacobian

from finc_cli import inverse
from finc_cli.errors import InverseBackendError
from finc_cli.flows.finc_conv import FInCConv2d, finc_conv2d
from finc_cli.inverse import cupy_backend
from finc_cli.inverse.reference import ORIENTATIONS

SHAPES = [  # (B, C, H, W, k)
    (2, 4, 5, 7, 3),
    (1, 8, 6, 4, 2),
    (3, 4, 4, 4, 1),
    (2, 12, 5, 3, 5),
    (1, 4, 7, 6, 7),
]


def _layer(C, k, std=0.3, seed=0):
    """A layer with weights far from their initial values (off-centre std 0.3, centre tap too)."""
    torch.manual_seed(seed)
    layer = FInCConv2d(C, k).double()
    with torch.no_grad():
        layer.weight.normal_(0.0, std)
    return layer


def _dense_jacobian(layer, shape):
    """Dense Jacobian of y = f(x) for one image, (D, D) with D = C·H·W."""
    return dense_jacobian(lambda t: layer(t)[0], torch.zeros(1, *shape, dtype=torch.float64))


@pytest.mark.parametrize("B,C,H,W,k", SHAPES)
def test_round_trip_and_backends_agree_with_dense_solve(B, C, H, W, k):
    layer = _layer(C, k)
    x = torch.randn(B, C, H, W, dtype=torch.float64)
    y, logdet = layer(x)
    assert logdet.shape == (B,) and torch.all(logdet == 0)
    jac = _dense_jacobian(layer, (C, H, W))
    dense = torch.linalg.solve(jac, y.reshape(B, -1).T).T.reshape(B, C, H, W)
    scale = x.abs().max()
    for backend in ("reference", "wavefront"):
        with inverse.use_backend(backend):
            xr, inv_logdet = layer.inverse(y)
        assert inv_logdet.shape == (B,)
        assert (xr - x).abs().max() / scale < 1e-10, backend
        assert (xr - dense).abs().max() / scale < 1e-10, backend


@pytest.mark.parametrize("B,C,H,W,k", SHAPES)
def test_logdet_is_slogdet_of_autograd_jacobian(B, C, H, W, k):
    layer = _layer(C, k)
    jac = _dense_jacobian(layer, (C, H, W))
    sign, logabsdet = torch.linalg.slogdet(jac)
    x = torch.randn(1, C, H, W, dtype=torch.float64)
    assert sign.item() == 1.0
    assert abs(logabsdet.item() - layer(x)[1].item()) < 1e-10


def test_jacobian_has_finc_structure():
    C, H, W, k = 8, 5, 4, 3
    cg = C // 4
    layer = _layer(C, k)
    jac = _dense_jacobian(layer, (C, H, W)).view(C, H, W, C, H, W)  # [out c,i,j ; in c,i,j]
    assert torch.all(jac.reshape(C * H * W, -1).diagonal() == 1)
    for go in range(4):
        for gi in range(4):
            block = jac[go * cg : (go + 1) * cg, :, :, gi * cg : (gi + 1) * cg]
            if go != gi:
                assert torch.all(block == 0), "groups must not mix"
    for g, (sh, sw) in enumerate(ORIENTATIONS):
        block = jac[g * cg : (g + 1) * cg, :, :, g * cg : (g + 1) * cg]  # (C', H, W, C', H, W)
        nz = block.abs().sum(dim=(0, 3)) != 0  # (H, W, H, W): does out pixel depend on in pixel
        for i in range(H):
            for j in range(W):
                for ii in range(H):
                    for jj in range(W):
                        di, dj = sh * (i - ii), sw * (j - jj)  # >= 0 inside the one-sided window
                        inside = 0 <= di < k and 0 <= dj < k
                        assert bool(nz[i, j, ii, jj]) == inside, (g, i, j, ii, jj)
        # Centre channel matrix: unit lower triangular.
        centre = block[:, 2, 2, :, 2, 2]
        assert torch.equal(centre.diagonal(), torch.ones(cg, dtype=torch.float64))
        assert torch.all(centre.triu(1) == 0)


def test_masks_hold_after_adamw_with_weight_decay():
    layer = FInCConv2d(12, 3).double()
    opt = torch.optim.AdamW(layer.parameters(), lr=0.05, weight_decay=0.5)
    for _ in range(5):
        opt.zero_grad()
        x = torch.randn(2, 12, 6, 6, dtype=torch.float64)
        layer(x)[0].pow(2).sum().backward()
        opt.step()
    w = layer.effective_weight()
    centre = w[:, :, :, 2, 2]
    assert torch.equal(centre.diagonal(dim1=-2, dim2=-1), torch.ones(4, 3, dtype=torch.float64))
    assert torch.all(centre.triu(1) == 0)
    # The raw parameter did move under weight decay, so the mask is doing the work.
    assert layer.weight[:, :, :, 2, 2].diagonal(dim1=-2, dim2=-1).abs().max() > 0


@pytest.mark.parametrize("C,k", [(4, 1), (8, 3), (12, 2), (4, 5)])
def test_number_of_parameter_entries_with_gradient(C, k):
    layer = FInCConv2d(C, k).double()
    x = torch.randn(2, C, 6, 5, dtype=torch.float64)
    layer(x)[0].pow(2).sum().backward()
    cg = C // 4
    assert int((layer.weight.grad != 0).sum()) == 4 * (cg * cg * k * k - cg * (cg + 1) // 2)
    assert layer.num_free_parameters() == 4 * (cg * cg * k * k - cg * (cg + 1) // 2)


def test_float32_round_trip_at_64x64_with_initial_weights():
    torch.manual_seed(1)
    layer = FInCConv2d(12, 3)
    x = torch.randn(2, 12, 64, 64)
    y, _ = layer(x)
    for backend in ("wavefront", None):
        with inverse.use_backend(backend):
            xr, _ = layer.inverse(y)
        assert (xr - x).abs().max() < 1e-4


def test_forward_matches_flip_definition():
    """TR/BL/BR are TL with the input (and output) flipped in W, H or both (docs/finc_unit.md §2)."""
    import torch.nn.functional as F

    layer = _layer(8, 3)
    w = layer.effective_weight()
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    y = finc_conv2d(x, w)
    dims = [(), (-1,), (-2,), (-2, -1)]
    for g in range(4):
        xs = x[:, 2 * g : 2 * g + 2]
        xs = xs.flip(dims[g]) if dims[g] else xs
        yt = F.conv2d(F.pad(xs, (2, 0, 2, 0)), w[g])
        yt = yt.flip(dims[g]) if dims[g] else yt
        assert torch.allclose(y[:, 2 * g : 2 * g + 2], yt, atol=1e-12)


def test_inverse_cache_invalidated_when_weights_change():
    layer = _layer(4, 3)
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    _, linv1 = layer.inverse_operator()
    assert layer.inverse_operator()[1] is linv1  # cached
    with torch.no_grad():
        layer.weight.add_(0.1)  # in-place update, as an optimizer does
    eff, linv2 = layer.inverse_operator()
    assert linv2 is not linv1
    assert torch.allclose(eff, layer.effective_weight())
    y, _ = layer(x)
    with inverse.use_backend("wavefront"):
        assert (layer.inverse(y)[0] - x).abs().max() < 1e-10
    layer.load_state_dict({"weight": torch.zeros_like(layer.weight)})
    assert torch.equal(layer.inverse_operator()[0], layer.effective_weight())


@pytest.mark.parametrize(
    "args, message",
    [((6, 3), "divisible by 4"), ((0, 3), "divisible by 4"), ((8, 0), "kernel_size"), ((8, -1), "kernel_size")],
)
def test_bad_constructor_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        FInCConv2d(*args)


@pytest.mark.parametrize("shape", [(8, 4, 4), (1, 8, 4), (2, 12, 4, 4), (2, 8, 4, 4, 1)])
def test_bad_input_shapes(shape):
    layer = FInCConv2d(8, 3)
    with pytest.raises(ValueError, match="FInCConv2d expects"):
        layer(torch.randn(*shape))
    with pytest.raises(ValueError, match="FInCConv2d expects"):
        layer.inverse(torch.randn(*shape))


def test_backend_selection_order(monkeypatch):
    y = torch.zeros(1, 4, 3, 3)
    monkeypatch.setenv(inverse.ENV_VAR, "reference")
    assert inverse.select_backend(y) == "reference"
    with inverse.use_backend("wavefront"):
        assert inverse.select_backend(y) == "wavefront"
        assert inverse.select_backend(y, "reference") == "reference"
    monkeypatch.setenv(inverse.ENV_VAR, "nonsense")
    with pytest.raises(inverse.InverseBackendError, match="unknown inverse backend 'nonsense'"):
        inverse.select_backend(y)
    monkeypatch.delenv(inverse.ENV_VAR)
    assert inverse.select_backend(y) in ("native", "wavefront")
    # On a CPU tensor, naming cupy is refused: for want of CuPy where it is missing, else of CUDA.
    with pytest.raises(inverse.InverseBackendError, match="CUDA tensors|pip install cupy-cuda13x"):
        inverse.select_backend(y, "cupy")


@pytest.fixture
def no_cupy(monkeypatch):
    """CuPy unimportable, as on macOS and Windows, with the backend's per-device cache emptied."""
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(cupy_backend, "_reasons", {})
    monkeypatch.delenv(inverse.ENV_VAR, raising=False)


def _one_line_error(call) -> str:
    with pytest.raises(InverseBackendError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 2
    return message


def test_naming_cupy_without_cupy_says_what_to_install(no_cupy, monkeypatch):
    y, w = torch.zeros(1, 4, 3, 3), torch.zeros(4, 1, 1, 3, 3)

    def in_context():
        with inverse.use_backend("cupy"):
            inverse.solve(y, w)

    asks = [lambda: inverse.select_backend(y, "cupy"), lambda: cupy_backend.cupy_inverse(y, w, torch.ones(4, 1, 1))]
    for ask in [*asks, in_context]:
        assert "needs CuPy: pip install cupy-cuda13x" in _one_line_error(ask)
    monkeypatch.setenv(inverse.ENV_VAR, "cupy")
    assert "pip install cupy-cuda13x" in _one_line_error(lambda: inverse.solve(y, w))


def test_a_broken_cupy_install_gives_its_own_first_line(monkeypatch):
    def broken():
        raise ImportError("libnvrtc.so.13: cannot open shared object file\nsecond line")

    monkeypatch.setattr(cupy_backend, "_import_cupy", broken)
    message = _one_line_error(lambda: inverse.select_backend(torch.zeros(1, 4, 3, 3), "cupy"))
    assert "ImportError: libnvrtc.so.13: cannot open shared object file" in message
    assert "pip install cupy-cuda13x" in message and "second line" not in message


def test_auto_falls_back_without_cupy_and_keeps_the_reason(no_cupy, monkeypatch):
    layer = FInCConv2d(4, 3).double()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    assert inverse.select_backend(x) in ("native", "wavefront")
    assert (layer.inverse(layer(x)[0])[0] - x).abs().max() < 1e-9  # not assert_close: it may import cupyx
    # As if on a GPU: auto passes over CuPy silently, and the reason says why.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    on_gpu = SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0))
    assert inverse.select_backend(on_gpu) == "wavefront"
    assert not cupy_backend.is_available("cuda:0")
    assert cupy_backend.unavailable_reason("cuda:0").startswith("ModuleNotFoundError")
