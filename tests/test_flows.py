"""Property tests over every flow layer: exact inverse, log-det = slogdet of the autograd Jacobian."""

from __future__ import annotations

import importlib
import math
import pkgutil
from dataclasses import dataclass
from typing import Callable, Optional

import pytest
import torch
import torch.distributed
from jacobians import dense_jacobian
from torch import nn

import finc_cli
from finc_cli import inverse
from finc_cli.errors import InverseBackendError
from finc_cli.flows.actnorm import ActNorm
from finc_cli.flows.base import Flow
from finc_cli.flows.baselines import AutoregressiveConv2d, CInCConv2d, EmergingConv2d
from finc_cli.flows.conv1x1 import InvConv1x1
from finc_cli.flows.coupling import AffineCoupling
from finc_cli.flows.dequantizer import VariationalDequantizer
from finc_cli.flows.finc_conv import FInCConv2d
from finc_cli.flows.logit import LogitPreprocess, dequantize, quantize
from finc_cli.flows.multiscale import SplitPrior, Squeeze
from finc_cli.flows.sequential import FlowSequential
from finc_cli.losses import bits_per_dim

DT = torch.float64
B = 3  # samples in each test batch


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


def _coupling(c=4, additive=False):
    layer = AffineCoupling(c, hidden=8, max_log_scale=2.0, additive=additive)
    with torch.no_grad():
        layer.net[-1].weight.normal_(0, 0.3)  # not the identity
        layer.net[-1].bias.normal_(0, 0.3)
    return layer


def _randomized(layer: nn.Module, scale: float = 0.3) -> nn.Module:
    """Every raw parameter drawn anew, masked entries included (the masks must hide them)."""
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, scale)
    return layer.to(DT)


# ---------------------------------------------------------------------------------------------
# The registry: every layer, seen through the Flow contract (flows/base.py).


@dataclass
class Case:
    """A tiny float64 layer, a batch of B inputs, and its maps in the contract's form."""

    layer: nn.Module  # the instance under test: its class is what the registry covers
    x: torch.Tensor  # (B, ...) inputs
    forward: Callable  # x -> (y, logdet (B,)); y may be a list of tensors
    inverse: Optional[Callable]  # y -> (x, logdet (B,)); None for a map that is never inverted


def _flow(layer: nn.Module, *shape: int, sampler: Callable = torch.randn) -> Case:
    layer = layer.to(DT)
    return Case(layer, sampler(B, *shape, dtype=DT), layer, layer.inverse)


def _in_unit_interval(*shape, dtype):
    return torch.rand(*shape, dtype=dtype) * 0.98 + 0.01


def _split() -> Case:
    """SplitPrior outside the contract's signature: h -> (h_keep, z) is a partition, so its log-det is 0 here;
    its log_pz is a density term, not a log-det (checked in test_split_prior_roundtrip_and_log_pz)."""
    split = _randomized(SplitPrior(6), 0.2)
    zero = lambda t: t.new_zeros(t.shape[0])  # noqa: E731
    return Case(
        split,
        torch.randn(B, 6, 3, 3, dtype=DT),
        lambda h: (list(split(h)[:2]), zero(h)),
        lambda parts: (split.inverse(*parts), -zero(parts[0])),
    )


# The dequantizer's maps have no inverse (u is drawn, never inverted): only the forward contract applies.
def _dequantizer(steps: int) -> Case:
    """noise -> u given one image; its log-det log|det ∂u/∂noise| is -log q(u | x) (noise is uniform)."""
    deq = _randomized(VariationalDequantizer(2, 5, hidden=4, steps=steps), 0.15)
    image = torch.randint(0, 5, (1, 2, 3, 2))

    def forward(noise):
        u, log_q = deq(image.expand(noise.shape[0], -1, -1, -1), noise)
        return u, -log_q

    return Case(deq, _in_unit_interval(B, 2, 3, 2, dtype=DT), forward, None)


def _dequantizer_coupling() -> Case:
    """One checkerboard coupling of the dequantizer, conditioned on fixed context features."""
    coupling = _randomized(VariationalDequantizer(2, 5, hidden=4, steps=1), 0.15).couplings[0]
    context = torch.randn(1, 4, 3, 2, dtype=DT)
    return Case(
        coupling,
        torch.randn(B, 2, 3, 2, dtype=DT),
        lambda eps: coupling(eps, context.expand(eps.shape[0], -1, -1, -1)),
        None,
    )


def _sequential() -> Case:
    return _flow(FlowSequential(_finc(2), _actnorm(), _conv1x1(True), _coupling(), Squeeze()), 4, 4, 4)


# name -> builder of a Case; every concrete Flow in finc_cli is here (test_the_registry_covers_every_flow)
LAYERS: dict[str, Callable[[], Case]] = {
    **{f"finc_k{k}": (lambda k=k: _flow(_finc(k), 4, 3, 3)) for k in (1, 2, 3)},
    "actnorm": lambda: _flow(_actnorm(), 4, 3, 3),
    "conv1x1_lu": lambda: _flow(_conv1x1(True), 4, 3, 3),
    "conv1x1_plain": lambda: _flow(_conv1x1(False), 4, 3, 3),
    "coupling": lambda: _flow(_coupling(), 4, 3, 3),
    "coupling_additive": lambda: _flow(_coupling(5, additive=True), 5, 3, 3),
    **{f"emerging_k{k}": (lambda k=k: _flow(_randomized(EmergingConv2d(3, k)), 3, 3, 4)) for k in (1, 2, 3, 4)},
    **{f"cinc_k{k}": (lambda k=k: _flow(_randomized(CInCConv2d(3, k)), 3, 3, 4)) for k in (1, 2, 3, 4)},
    "autoregressive": lambda: _flow(_randomized(AutoregressiveConv2d(3, 3, (1, 1, 2, 0))), 3, 3, 4),
    "autoregressive_reverse": lambda: _flow(_randomized(AutoregressiveConv2d(3, 3, (1, 1, 0, 2), True)), 3, 3, 4),
    "squeeze": lambda: _flow(Squeeze(), 2, 4, 4),
    "preprocess": lambda: _flow(LogitPreprocess(0.05), 2, 3, 3, sampler=_in_unit_interval),
    "preprocess_alpha0": lambda: _flow(LogitPreprocess(0.0), 2, 3, 3, sampler=_in_unit_interval),
    "sequential": _sequential,
    "split_prior": _split,
    **{f"dequantizer_steps{s}": (lambda s=s: _dequantizer(s)) for s in (0, 1, 3)},
    "dequantizer_coupling": _dequantizer_coupling,
}
INVERTIBLE = [name for name in LAYERS if not name.startswith("dequantizer")]


def _build(name: str) -> Case:
    torch.manual_seed(list(LAYERS).index(name))
    case = LAYERS[name]()
    case.layer.eval()  # batch-independent (ActNorm initialised), as dense_jacobian needs
    return case


def _finite(y) -> bool:
    return all(torch.isfinite(t).all() for t in (y if isinstance(y, list) else [y]))


@pytest.mark.parametrize("name", LAYERS)
def test_forward_is_finite_with_one_logdet_per_sample(name):
    case = _build(name)
    y, ld = case.forward(case.x)
    assert ld.shape == (B,) and _finite(y) and _finite(ld)


@pytest.mark.parametrize("name", INVERTIBLE)
def test_inverse_undoes_forward_and_negates_the_logdet(name):
    case = _build(name)
    y, ld = case.forward(case.x)
    x_rec, ld_inv = case.inverse(y)
    assert ld_inv.shape == (B,) and _finite(x_rec)
    torch.testing.assert_close(x_rec, case.x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ld_inv, -ld, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", LAYERS)
def test_logdet_equals_slogdet_of_the_autograd_jacobian(name):
    case = _build(name)
    x = case.x[:1]
    sign, expected = torch.linalg.slogdet(dense_jacobian(lambda t: case.forward(t)[0], x))
    assert sign != 0
    torch.testing.assert_close(case.forward(x)[1][0], expected, rtol=1e-8, atol=1e-8)


def _flow_classes() -> set[type]:
    """Every subclass of Flow (at any depth) defined in finc_cli, after importing all its modules."""
    for module in pkgutil.walk_packages(finc_cli.__path__, "finc_cli."):
        importlib.import_module(module.name)
    found, todo = set(), [Flow]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.add(sub)
            todo.append(sub)
    return {c for c in found if c.__module__.startswith("finc_cli.")}


def test_the_registry_covers_every_flow():
    covered = {type(_build(name).layer) for name in LAYERS}
    wanted = _flow_classes() | {SplitPrior, VariationalDequantizer}
    missing = sorted(f"{c.__module__}.{c.__qualname__}" for c in wanted - covered)
    assert not missing, f"add these layers to LAYERS in tests/test_flows.py: {missing}"


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


class _NoHostRead(torch.Tensor):
    """A flag whose value must not be read on the host (on a GPU each read is a device sync)."""

    def __bool__(self):
        raise AssertionError("the forward read the initialized buffer on the host")

    def item(self):
        raise AssertionError("the forward read the initialized buffer on the host")


def test_actnorm_forward_does_not_read_its_flag_back():
    layer = ActNorm(3)
    layer(torch.randn(8, 3, 4, 4))  # initialises
    state = {name: value.clone() for name, value in layer.state_dict().items()}
    layer.initialized = torch.tensor(True).as_subclass(_NoHostRead)
    layer(torch.randn(8, 3, 4, 4))
    fresh = ActNorm(3)
    fresh.initialized = torch.tensor(False).as_subclass(_NoHostRead)
    fresh.load_state_dict(state)  # reads the loaded flag once, here
    before = [p.clone() for p in fresh.parameters()]
    fresh(torch.randn(8, 3, 4, 4) + 100)  # no host read, and no re-initialisation
    assert all(torch.equal(a, b) for a, b in zip(before, fresh.parameters()))
    fresh.load_state_dict({**state, "initialized": torch.tensor(False)})
    fresh(torch.randn(8, 3, 4, 4) + 100)  # a loaded False initialises again, still without a host read
    assert fresh.bias.mean() < -50


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
