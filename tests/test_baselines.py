"""Baselines (Emerging, CInC, the paper's FInC schedule): triangular Jacobians, masks by construction, schedules."""

from __future__ import annotations

import pytest
import torch
from jacobians import dense_jacobian

from finc_cli import inverse
from finc_cli.flows.baselines import AutoregressiveConv2d, CInCConv2d, EmergingConv2d
from finc_cli.flows.finc_conv import FInCConv2d
from finc_cli.inverse import paper_schedule
from finc_cli.inverse.paper_schedule import paper_schedule_inverse
from finc_cli.inverse.reference import reference_inverse
from finc_cli.inverse.wavefront import wavefront_inverse

DT = torch.float64

# name -> builder(k); their inverses and log-dets are in tests/test_flows.py's layer contract
BASELINES = {"emerging": lambda k: EmergingConv2d(3, k), "cinc": lambda k: CInCConv2d(3, k)}


def _randomized(name: str, k: int, scale: float = 0.3) -> torch.nn.Module:
    torch.manual_seed(k)
    layer = BASELINES[name](k).to(DT)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, scale)  # every raw entry, masked ones included: the mask must hide them
    return layer


def _autoregressive(layer) -> list[AutoregressiveConv2d]:
    return [m for m in layer.modules() if isinstance(m, AutoregressiveConv2d)]


@pytest.mark.parametrize("name", BASELINES)
def test_jacobian_is_triangular_in_solve_order(name):
    """CInC and each half of Emerging: output pixel p depends on no later pixel (raster or reversed)."""
    layer = _randomized(name, 3)
    for conv in _autoregressive(layer):
        shape = (3, 3, 4)
        x = torch.randn(1, *shape, dtype=DT)
        jac = dense_jacobian(lambda t, conv=conv: conv(t)[0], x)
        # order (pixel, channel) in the solve order
        idx = torch.arange(3 * 12).view(3, 12).t().flatten()  # pixel-major
        if conv.reverse:
            idx = idx.view(12, 3).flip(0, 1).flatten()
        ordered = jac[idx][:, idx]
        torch.testing.assert_close(ordered, torch.tril(ordered), rtol=0, atol=0)
        torch.testing.assert_close(ordered.diagonal(), torch.ones(36, dtype=DT))


@pytest.mark.parametrize("name", BASELINES)
def test_masks_hold_after_an_optimizer_step_with_weight_decay(name):
    layer = _randomized(name, 3)
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.5)
    x = torch.randn(4, 3, 5, 5, dtype=DT)
    before = [m.effective_weight().detach().clone() for m in _autoregressive(layer)]
    for _ in range(3):
        opt.zero_grad()
        y, _ = layer(x)
        (y**2).sum().backward()
        opt.step()
    for conv, old in zip(_autoregressive(layer), before):
        w = conv.effective_weight().detach()
        assert not torch.equal(w, old)  # it trained
        assert torch.equal(w * (1 - conv.mask), conv.fixed)  # masked entries are exactly their fixed values
    x = torch.randn(2, 3, 5, 6, dtype=DT)
    torch.testing.assert_close(layer.inverse(layer(x)[0])[0], x, rtol=0, atol=1e-10)


def test_emerging_halves_mirror_each_other():
    layer = EmergingConv2d(3, 3)
    first, second = layer.first, layer.second
    assert not first.reverse and second.reverse
    torch.testing.assert_close(second.mask, first.mask.flip(0, 1, 2, 3))


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="channels"):
        CInCConv2d(0, 3)
    with pytest.raises(ValueError, match="expects"):
        CInCConv2d(3, 3)(torch.randn(1, 4, 5, 5))


@pytest.mark.parametrize("k", (1, 2, 3, 5))
@pytest.mark.parametrize("shape", [(2, 8, 5, 7), (1, 12, 6, 6), (3, 4, 1, 4)])
def test_paper_schedule_equals_reference_and_wavefront(shape, k):
    torch.manual_seed(k)
    layer = FInCConv2d(shape[1], k).to(DT)
    with torch.no_grad():
        layer.weight.normal_(0, 0.3)
    x = torch.randn(*shape, dtype=DT)
    with torch.no_grad():
        y, _ = layer(x)
    w = layer.effective_weight().detach()
    linv = inverse.centre_inverse(w)
    paper = paper_schedule_inverse(y, w, linv)
    torch.testing.assert_close(paper, reference_inverse(y, w, linv), rtol=0, atol=1e-10)
    torch.testing.assert_close(paper, wavefront_inverse(y, w, linv), rtol=0, atol=1e-10)
    torch.testing.assert_close(paper, x, rtol=0, atol=1e-10)


def test_paper_schedule_registers_as_a_backend():
    paper_schedule.register()
    layer = FInCConv2d(8, 3).to(DT)
    x = torch.randn(2, 8, 4, 5, dtype=DT)
    y, _ = layer(x)
    with inverse.use_backend("paper"):
        torch.testing.assert_close(layer.inverse(y)[0], x, rtol=0, atol=1e-10)
