"""FlowModel on tiny images: exact encode/decode, change of variables, training, sampling, health."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from jacobians import dense_jacobian

from finc_cli.config import Config, ModelConfig
from finc_cli.flows.actnorm import ActNorm
from finc_cli.flows.coupling import AffineCoupling
from finc_cli.flows.finc_conv import FInCConv2d
from finc_cli.flows.multiscale import SplitPrior
from finc_cli.model import FlowModel, build_model

TINY = [  # (image shape, bins, levels, steps)
    ((1, 8, 8), 17, 2, 2),
    ((3, 8, 8), 256, 2, 1),
]


def _cfg(**kw) -> ModelConfig:
    return dataclasses.replace(ModelConfig(hidden=8), **kw)


def _images(shape, bins, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, bins, (n, *shape), generator=g).to(torch.uint8)


def _randomize(model: FlowModel, scale: float = 0.1, seed: int = 0) -> FlowModel:
    """Move every layer away from its (identity-like) init."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FInCConv2d):
                m.weight.normal_(0, 2 * scale)
            elif isinstance(m, ActNorm):
                m.bias.normal_(0, scale)
                m.log_scale.normal_(0, scale)
                m.initialized.fill_(True)
            elif isinstance(m, AffineCoupling):
                m.net[-1].weight.normal_(0, scale)
                m.net[-1].bias.normal_(0, scale)
            elif isinstance(m, SplitPrior):
                m.conv.weight.normal_(0, scale)
                m.conv.bias.normal_(0, scale)
    return model


@pytest.mark.parametrize("shape,bins,levels,steps", TINY)
def test_decode_encode_is_exact(shape, bins, levels, steps):
    torch.manual_seed(0)
    model = _randomize(FlowModel(shape, bins, _cfg(levels=levels, steps=steps)))
    x = _images(shape, bins)
    latents = model.encode(x)
    assert [tuple(z.shape[1:]) for z in latents] == model.latent_shapes()
    assert len(latents) == levels
    out = model.decode(latents)
    assert out.dtype == torch.uint8 and torch.equal(out, x)
    assert all(torch.equal(a, b) for a, b in zip(latents, model.encode(x)))  # deterministic


@pytest.mark.parametrize("levels", [1, 2])
def test_log_prob_is_change_of_variables(levels):
    """log p(v) = Σ priors + slogdet of the autograd Jacobian of the whole map v -> latents (D = 16)."""
    torch.manual_seed(1)
    model = _randomize(FlowModel((1, 4, 4), 17, _cfg(levels=levels, steps=1)), scale=0.3).double().eval()
    v = torch.rand(1, 1, 4, 4, dtype=torch.float64) * 0.9 + 0.05
    jac = dense_jacobian(lambda t: model.v_to_latents(t)[0], v)  # (16, 16)
    latents = [z.detach() for z in model.v_to_latents(v)[0]]
    normal = torch.distributions.Normal(0.0, 1.0)
    log_prior = normal.log_prob(latents[-1]).sum()
    if levels == 2:  # z1 ~ N(mean, std²) given the kept half, rebuilt through level 2's inverse
        top = model.levels[1]
        h = top.squeeze.inverse(top.steps.inverse(latents[1])[0])[0]
        mean, log_std = model.levels[0].split.prior(h)
        log_prior = log_prior + torch.distributions.Normal(mean, log_std.exp()).log_prob(latents[0]).sum()
    expected = log_prior + torch.linalg.slogdet(jac)[1]
    torch.testing.assert_close(model.log_prob(v)[0], expected, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("shape,bins,levels,steps", TINY)
def test_bits_per_dim_of_random_data_is_finite_positive(shape, bins, levels, steps):
    torch.manual_seed(0)
    model = FlowModel(shape, bins, _cfg(levels=levels, steps=steps))
    x = _images(shape, bins, n=8)
    model.initialize(x)
    assert all(bool(m.initialized) for m in model.modules() if isinstance(m, ActNorm))
    bpd = model(x)
    assert bpd.shape == (8,) and torch.isfinite(bpd).all() and (bpd > 0).all()
    assert bpd.mean().item() < 2 * math.log2(bins)  # sane scale at init


def test_adam_steps_lower_bits_per_dim():
    torch.manual_seed(0)
    model = FlowModel((1, 8, 8), 17, _cfg(levels=2, steps=2))
    x = _images((1, 8, 8), 17, n=16)
    x[:, :, :, :2] = 0  # structure to learn
    model.initialize(x)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(8):
        loss = model(x, generator=torch.Generator().manual_seed(0)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.1, losses


def test_sample_shape_range_and_reproducible():
    torch.manual_seed(0)
    model = _randomize(FlowModel((3, 8, 8), 256, _cfg(levels=2, steps=1)))
    a = model.sample(5, temperature=0.7, generator=torch.Generator().manual_seed(4))
    b = model.sample(5, temperature=0.7, generator=torch.Generator().manual_seed(4))
    c = model.sample(5, temperature=0.7, generator=torch.Generator().manual_seed(5))
    assert a.shape == (5, 3, 8, 8) and a.dtype == torch.uint8
    assert int(a.max()) <= 255 and torch.equal(a, b) and not torch.equal(a, c)
    digits = FlowModel((1, 8, 8), 17, _cfg(levels=2, steps=1)).sample(3, generator=torch.Generator().manual_seed(0))
    assert digits.shape == (3, 1, 8, 8) and int(digits.max()) <= 16


def test_reconstruction_report_one_entry_per_unit():
    torch.manual_seed(0)
    model = _randomize(FlowModel((1, 8, 8), 17, _cfg(levels=2, steps=2)))
    report = model.reconstruction_report(_images((1, 8, 8), 17))
    names = [name for name, _ in model.finc_units()]
    assert [r["layer"] for r in report] == names and len(names) == 4
    assert names[0] == "levels.0.steps.0.finc"
    for r in report:
        assert set(r) == {"layer", "max_abs_err", "mean_abs_err"}
        assert 0 <= r["mean_abs_err"] <= r["max_abs_err"] < 1e-4


def test_reconstruction_report_does_not_initialize_actnorm():
    model = FlowModel((1, 8, 8), 17, _cfg(levels=1, steps=1)).train()
    model.reconstruction_report(_images((1, 8, 8), 17))
    model.encode(_images((1, 8, 8), 17))
    assert model.training and not any(bool(m.initialized) for m in model.modules() if isinstance(m, ActNorm))


def test_state_dict_reload_reproduces_model():
    torch.manual_seed(0)
    model = FlowModel((1, 8, 8), 17, _cfg(levels=2, steps=1))
    x = _images((1, 8, 8), 17)
    model.initialize(x)
    fresh = FlowModel((1, 8, 8), 17, _cfg(levels=2, steps=1))
    fresh.load_state_dict(model.state_dict())
    fresh.initialize(x + 3)  # no re-init: the flags came with the state dict
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    torch.testing.assert_close(fresh(x, generator=g()), model(x, generator=g()))


def test_invalid_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="allows at most 3 levels"):
        FlowModel((1, 8, 8), 17, _cfg(levels=4))
    with pytest.raises(ValueError, match="cannot be squeezed"):
        FlowModel((1, 7, 7), 17, _cfg(levels=1))
    cfg = Config()
    cfg.data.name, cfg.model.levels = "digits", 4
    with pytest.raises(ValueError, match=r"^digits 8×8 allows at most 3 levels"):
        build_model(cfg)
    cfg.data.name, cfg.model.levels = "mnist", 3
    with pytest.raises(ValueError, match="mnist 28×28 allows at most 2 levels"):
        build_model(cfg)


def test_build_model_uses_dataset_info():
    cfg = Config()
    cfg.model = _cfg(levels=3, steps=1)
    model = build_model(cfg)
    assert model.image_shape == (1, 8, 8) and model.bins == 17
    assert model.latent_shapes() == [(2, 4, 4), (4, 2, 2), (16, 1, 1)]


def test_glow_baseline_without_finc_units():
    torch.manual_seed(0)
    glow = _randomize(FlowModel((1, 8, 8), 17, _cfg(levels=2, steps=2, conv="none")))
    finc = FlowModel((1, 8, 8), 17, _cfg(levels=2, steps=2))
    assert glow.finc_units() == [] and not any(isinstance(m, FInCConv2d) for m in glow.modules())
    assert glow.num_parameters() < finc.num_parameters()
    assert glow.reconstruction_report(_images((1, 8, 8), 17)) == []
    x = _images((1, 8, 8), 17)
    assert torch.equal(glow.decode(glow.encode(x)), x)


def test_set_autocast_bf16():
    torch.manual_seed(0)
    model = _randomize(FlowModel((1, 8, 8), 17, _cfg(levels=2, steps=1)))
    x = _images((1, 8, 8), 17)
    ref = model(x, generator=torch.Generator().manual_seed(0))
    model.set_autocast(torch.bfloat16)
    couplings = [m for m in model.modules() if isinstance(m, AffineCoupling)]
    assert couplings and all(m.autocast_dtype == torch.bfloat16 for m in couplings)
    bpd = model(x, generator=torch.Generator().manual_seed(0))
    assert bpd.dtype == torch.float32 and torch.isfinite(bpd).all()
    torch.testing.assert_close(bpd, ref, rtol=0.02, atol=0.02)
    assert torch.equal(model.decode(model.encode(x)), x)
    model.set_autocast(None)
    assert all(m.autocast_dtype is None for m in couplings)
