"""Property tests over every flow layer: exact inverse, log-det = slogdet of the autograd Jacobian."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed
from jacobians import dense_jacobian

from finc_cli import inverse
from finc_cli.errors import InverseBackendError
from finc_cli.flows.actnorm import ActNorm
from finc_cli.flows.conv1x1 import InvConv1x1
from finc_cli.flows.coupling import AffineCoupling
from finc_cli.flows.finc_conv import FInCConv2d
from finc_cli.flows.logit import LogitPreprocess, dequantize, quantize
from finc_cli.flows.multiscale import SplitPrior, Squeeze
from finc_cli.flows.sequential import FlowSequential
from finc_cli.losses import bits_per_dim

DT = torch.float64


def _finc(k):
    layer = FInCConv2d(4, kernel_size=k)
    with torch.no_grad():
        layer.weight.normal_(0, 0.3)  # far from init, still well conditioned on 3×3
    return layer


def _actnorm(c=4):
    layer = ActNorm(c).to(DT)
    layer.train()
    layer(torch.randn(8, c, 3, 3, dtype=DT) * 3 + 1.5)  # data-dependent init: non-trivial scale/bias
    return layer


def _conv1x1(lu):
    layer = InvConv1x1(4, lu=lu)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))  # det ≠ ±1
    return layer


def _coupling(c=4):
    layer = AffineCoupling(c, hidden=8, max_log_scale=2.0)
    with torch.no_grad():
        layer.net[-1].weight.normal_(0, 0.3)  # not the identity
        layer.net[-1].bias.normal_(0, 0.3)
    return layer


def _sequential():
    return FlowSequential(_finc(2), _actnorm(), _conv1x1(True), _coupling())


# name -> (builder, input shape (C, H, W), input sampler)
LAYERS = {
    "finc_k1": (lambda: _finc(1), (4, 3, 3), torch.randn),
    "finc_k2": (lambda: _finc(2), (4, 3, 3), torch.randn),
    "finc_k3": (lambda: _finc(3), (4, 3, 3), torch.randn),
    "actnorm": (_actnorm, (4, 3, 3), torch.randn),
    "conv1x1_lu": (lambda: _conv1x1(True), (4, 3, 3), torch.randn),
    "conv1x1_plain": (lambda: _conv1x1(False), (4, 3, 3), torch.randn),
    "coupling": (_coupling, (4, 3, 3), torch.randn),
    "squeeze": (Squeeze, (2, 4, 4), torch.randn),
    "preprocess": (lambda: LogitPreprocess(0.05), (2, 3, 3), lambda *s, **kw: torch.rand(*s, **kw) * 0.98 + 0.01),
    "preprocess_alpha0": (lambda: LogitPreprocess(0.0), (2, 3, 3), lambda *s, **kw: torch.rand(*s, **kw) * 0.98 + 0.01),
    "sequential": (_sequential, (4, 3, 3), torch.randn),
}


def _build(name):
    torch.manual_seed(list(LAYERS).index(name))
    builder, shape, sampler = LAYERS[name]
    layer = builder().to(DT).eval()
    return layer, shape, sampler


@pytest.mark.parametrize("name", LAYERS)
def test_inverse_roundtrip_and_logdet_signs(name):
    layer, shape, sampler = _build(name)
    x = sampler(3, *shape, dtype=DT)
    y, ld = layer(x)
    x_rec, ld_inv = layer.inverse(y)
    assert ld.shape == (3,) and ld_inv.shape == (3,)
    assert torch.isfinite(y).all() and torch.isfinite(ld).all()
    torch.testing.assert_close(x_rec, x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ld_inv, -ld, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", LAYERS)
def test_logdet_equals_autograd_jacobian(name):
    layer, shape, sampler = _build(name)
    x = sampler(1, *shape, dtype=DT)
    jac = dense_jacobian(lambda t: layer(t)[0], x)
    expected = torch.linalg.slogdet(jac)[1]
    _, ld = layer(x)
    torch.testing.assert_close(ld[0], expected, rtol=1e-8, atol=1e-8)


def test_actnorm_init_zero_mean_unit_var():
    layer = ActNorm(3)
    x = torch.randn(16, 3, 5, 5) * torch.tensor([0.5, 2.0, 7.0]).view(1, 3, 1, 1) + 4.0
    assert not bool(layer.initialized)
    y, _ = layer(x)
    assert bool(layer.initialized)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    before = [p.clone() for p in layer.parameters()]
    layer(x * 10)  # a second training forward does not re-initialise
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters()))


def test_actnorm_no_reinit_after_load_state_dict():
    trained = ActNorm(3)
    trained(torch.randn(8, 3, 4, 4) * 3)
    assert "initialized" in trained.state_dict()
    fresh = ActNorm(3)
    fresh.load_state_dict(trained.state_dict())
    fresh.train()
    fresh(torch.randn(8, 3, 4, 4) + 100)  # would re-init if the flag were not restored
    for a, b in zip(trained.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def _actnorm_rank(rank, world, init_file, out_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(rank)
    layer = ActNorm(2)
    layer(torch.randn(4 + 4 * rank, 2, 3, 3) * (1 + 3 * rank) + 5 * rank)  # different data per rank
    torch.save({k: v.clone() for k, v in layer.state_dict().items()}, f"{out_file}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_actnorm_distributed_init_is_identical_and_pooled(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "state")
    mp.spawn(_actnorm_rank, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    s0, s1 = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k
    # pooled statistics equal those of the concatenated data
    data = []
    for rank in range(2):
        torch.manual_seed(rank)
        data.append(torch.randn(4 + 4 * rank, 2, 3, 3) * (1 + 3 * rank) + 5 * rank)
    pooled = ActNorm(2)
    pooled(torch.cat(data))
    for k, v in pooled.state_dict().items():
        torch.testing.assert_close(s0[k], v, rtol=1e-5, atol=1e-5)


def test_lu_conv_masks_hold_under_weight_decay():
    torch.manual_seed(0)
    layer = InvConv1x1(4, lu=True)
    with torch.no_grad():  # garbage in every masked entry, as from a careless update path
        layer.lower.normal_()
        layer.upper.normal_()
    opt = torch.optim.AdamW(layer.parameters(), lr=0.05, weight_decay=0.5)
    x = torch.randn(2, 4, 3, 3)
    for _ in range(5):
        y, ld = layer(x)
        loss = (y**2).mean() - ld.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    l, u = layer.lu_factors()
    assert torch.equal(torch.diagonal(l), torch.ones(4))
    assert torch.equal(torch.triu(l, diagonal=1), torch.zeros(4, 4))
    assert torch.equal(torch.tril(u, diagonal=-1), torch.zeros(4, 4))
    torch.testing.assert_close(torch.diagonal(u), layer.sign_s * torch.exp(layer.log_s))
    torch.testing.assert_close(
        layer.log_abs_det(), torch.linalg.slogdet(layer.weight_matrix())[1], rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(layer.inverse_matrix() @ layer.weight_matrix(), torch.eye(4), rtol=1e-5, atol=1e-5)


def test_coupling_log_scale_bounded_and_identity_at_init():
    layer = AffineCoupling(4, hidden=8, max_log_scale=1.5)
    x = torch.randn(2, 4, 3, 3)
    y, ld = layer(x)
    assert torch.equal(y, x) and torch.equal(ld, torch.zeros(2))  # zero-init last conv
    with torch.no_grad():
        layer.net[-1].weight.fill_(50.0)
        layer.net[-1].bias.fill_(50.0)
    _, log_s = layer.conditioner(x[:, :2] * 100)
    assert log_s.abs().max() <= 1.5
    _, ld = layer(x * 100)
    assert torch.isfinite(ld).all() and (ld.abs() <= 1.5 * 2 * 9 + 1e-4).all()


def test_coupling_autocast_runs_conditioner_in_bf16_outputs_float32():
    torch.manual_seed(0)
    layer = _coupling()
    x = torch.randn(2, 4, 3, 3)
    y_ref, ld_ref = layer(x)
    seen = []
    layer.net[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    layer.autocast_dtype = torch.bfloat16
    y, ld = layer(x)
    assert seen == [torch.bfloat16]
    assert y.dtype == torch.float32 and ld.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, rtol=0.05, atol=0.05)
    x_rec, _ = layer.inverse(y)
    torch.testing.assert_close(x_rec, x, rtol=1e-5, atol=1e-5)  # same conditioner both ways


def test_split_prior_roundtrip_and_log_pz():
    torch.manual_seed(0)
    split = SplitPrior(6).to(DT)
    with torch.no_grad():
        split.conv.weight.normal_(0, 0.2)
        split.conv.bias.normal_(0, 0.2)
    h = torch.randn(2, 6, 3, 3, dtype=DT)
    h_keep, z, log_pz = split(h)
    assert h_keep.shape == (2, 3, 3, 3) and z.shape == (2, 3, 3, 3) and log_pz.shape == (2,)
    torch.testing.assert_close(split.inverse(h_keep, z), h)
    mean, log_std = split.prior(h_keep)
    manual = torch.distributions.Normal(mean, log_std.exp()).log_prob(z).flatten(1).sum(1)
    torch.testing.assert_close(log_pz, manual)
    # sampling: reproducible with a seeded generator; temperature 0 gives the mean
    a = split.inverse(h_keep, generator=torch.Generator().manual_seed(3))
    b = split.inverse(h_keep, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(a[:, :3], h_keep)
    torch.testing.assert_close(split.inverse(h_keep, temperature=0.0)[:, 3:], mean)


def test_squeeze_shapes():
    x = torch.arange(2 * 3 * 4 * 6.0).view(2, 3, 4, 6)
    y, _ = Squeeze()(x)
    assert y.shape == (2, 12, 2, 3)
    assert torch.equal(y[0, 1, 0, 0], x[0, 0, 0, 1])  # channel c·4 + 2·dy + dx
    with pytest.raises(ValueError, match="even"):
        Squeeze()(torch.zeros(1, 1, 3, 4))


def test_sequential_inverts_on_the_backend_in_use():
    torch.manual_seed(0)
    seq = FlowSequential(_finc(3), _actnorm(), Squeeze()).to(DT).eval()
    x = torch.randn(2, 4, 4, 4, dtype=DT)
    y, _ = seq(x)
    for backend in ("reference", "wavefront"):
        with inverse.use_backend(backend):
            torch.testing.assert_close(seq.inverse(y)[0], x)
    with pytest.raises(InverseBackendError), inverse.use_backend("no-such-backend"):
        seq.inverse(y)


def test_dequantize_quantize():
    x = torch.randint(0, 17, (4, 1, 5, 5), dtype=torch.uint8)
    v = dequantize(x, 17, generator=torch.Generator().manual_seed(0))
    assert v.dtype == torch.float32 and (v >= 0).all() and (v < 1).all()
    assert torch.equal(quantize(v, 17), x)
    assert torch.equal(quantize(dequantize(x, 17, noise="center"), 17), x)
    assert torch.equal(quantize(torch.tensor([-0.3, 1.2, 0.999]), 17), torch.tensor([0, 16, 16], dtype=torch.uint8))
    with pytest.raises(ValueError):
        dequantize(x, 17, noise="gaussian")


def test_bits_per_dim_formula():
    # a uniform density on [0, 1)^D (NLL 0) is log2(bins) bits/dim
    assert math.isclose(bits_per_dim(0.0, 64, 17), math.log2(17))
    nll = torch.tensor([10.0, 20.0])
    expected = (nll + 64 * math.log(256)) / (64 * math.log(2))
    torch.testing.assert_close(bits_per_dim(nll, 64, 256), expected)
