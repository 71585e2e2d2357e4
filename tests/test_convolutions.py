"""model.conv: every invertible convolution inside a full model (log-det, exact inverse, init), and old configs."""

from __future__ import annotations

import dataclasses

import cli_run
import pytest
import torch
import yaml
from jacobians import dense_jacobian
from tiny import TINY_ARGS

from finc_cli.checkpoint import load_checkpoint, save_checkpoint
from finc_cli.config import Config, ModelConfig, load_preset
from finc_cli.errors import CheckpointError, ConfigError
from finc_cli.flows.actnorm import ActNorm
from finc_cli.flows.conv_init import conv_init_scale
from finc_cli.flows.convolutions import CONVOLUTIONS, conv_kind, make_conv
from finc_cli.flows.coupling import AffineCoupling
from finc_cli.model import FlowModel, build_model

CONVS = ["finc", "emerging", "cinc", "none"]


def _cfg(**kw) -> ModelConfig:
    return dataclasses.replace(ModelConfig(hidden=8), **kw)


def _randomize(model: FlowModel, scale: float = 0.3, seed: int = 0) -> FlowModel:
    """Move every layer away from its identity-like init; the convs' raw weights in full (masks hold anyway)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ActNorm):
                m.bias.normal_(0, 0.1)
                m.log_scale.normal_(0, 0.1)
                m.initialized.fill_(True)
            elif isinstance(m, AffineCoupling):
                m.net[-1].weight.normal_(0, 0.1)
                m.net[-1].bias.normal_(0, 0.1)
        for _, conv in model.invertible_convs():
            for p in conv.parameters():
                p.normal_(0, scale)
    return model


def _recorded_inputs(model: FlowModel, v: torch.Tensor) -> dict:
    """Each conv's input during one forward of v (hooks removed after)."""
    seen: dict = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, n=n: seen.__setitem__(n, inp[0].detach()))
        for n, m in model.invertible_convs()
    ]
    try:
        model.v_to_latents(v)
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("conv", CONVS)
def test_each_conv_in_a_model_has_its_kind_and_kernel(conv):
    model = FlowModel((1, 8, 8), 17, _cfg(conv=conv, levels=2, steps=2, kernel_size=2))
    convs = model.invertible_convs()
    assert len(convs) == (0 if conv == "none" else 4)
    assert all(conv_kind(m) == conv and m.kernel_size == 2 for _, m in convs)
    assert all(name.endswith(f".{conv}") for name, _ in convs)
    assert model.finc_units() == (convs if conv == "finc" else [])


@pytest.mark.parametrize("conv", CONVS)
def test_log_prob_is_change_of_variables_for_every_conv(conv):
    """The whole model's log p(v) = prior + slogdet of its autograd Jacobian, in float64, with each conv random."""
    model = _randomize(FlowModel((1, 4, 4), 17, _cfg(conv=conv, levels=1, steps=2))).double().eval()
    v = torch.rand(1, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.9 + 0.05
    jac = dense_jacobian(lambda t: model.v_to_latents(t)[0], v)  # (16, 16)
    (z,) = [t.detach() for t in model.v_to_latents(v)[0]]
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum() + torch.linalg.slogdet(jac)[1]
    torch.testing.assert_close(model.log_prob(v)[0], expected, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("conv", ["finc", "emerging", "cinc"])
def test_each_conv_logdet_matches_its_jacobian_inside_the_model(conv):
    """Each conv's own log-det at the input it sees in the model equals the slogdet of its Jacobian, and it
    is far from the identity (the check is not vacuous)."""
    model = _randomize(FlowModel((1, 8, 8), 17, _cfg(conv=conv, levels=2, steps=1))).double().eval()
    v = torch.rand(1, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 0.9 + 0.05
    inputs = _recorded_inputs(model, v)
    for name, layer in model.invertible_convs():
        x = inputs[name]
        jac = dense_jacobian(lambda t, layer=layer: layer(t)[0], x)
        assert (jac - torch.eye(jac.shape[0], dtype=jac.dtype)).abs().max() > 0.1
        torch.testing.assert_close(layer(x)[1][0], torch.linalg.slogdet(jac)[1], rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("conv", CONVS)
def test_inverse_is_exact_inside_the_model(conv):
    torch.manual_seed(0)
    model = _randomize(FlowModel((3, 8, 8), 256, _cfg(conv=conv, levels=2, steps=1)), scale=0.1).eval()
    v = torch.rand(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 0.9 + 0.05
    model64 = model.double()
    torch.testing.assert_close(model64.latents_to_v(model64.v_to_latents(v)[0]), v, rtol=0, atol=1e-10)
    model.float()
    x = torch.randint(0, 256, (4, 3, 8, 8), generator=torch.Generator().manual_seed(4)).to(torch.uint8)
    assert torch.equal(model.decode(model.encode(x)), x)
    report = model.reconstruction_report(x)
    assert [r["layer"] for r in report] == [n for n, _ in model.invertible_convs()]
    assert all(r["max_abs_err"] < 1e-4 for r in report)


@pytest.mark.parametrize("kind", sorted(CONVOLUTIONS))
@pytest.mark.parametrize("k", [2, 3])
def test_one_init_rule_for_every_conv(kind, k):
    """Raw weights ~ N(0, conv_init_scale(fan_in, k)²), fan_in the channels one output reads (C/4 for FInC)."""
    torch.manual_seed(0)
    channels = 32
    layer = make_conv(kind, channels, k)
    fan_in = channels // 4 if kind == "finc" else channels
    std = torch.cat([p.detach().flatten() for p in layer.parameters()]).std().item()
    assert abs(std / conv_init_scale(fan_in, k) - 1) < 0.05
    assert layer.kernel_size == k


@pytest.mark.parametrize("conv", ["finc", "emerging", "cinc"])
def test_a_seed_gives_every_conv_the_same_shared_layers(conv):
    """Every parameter and buffer the model shares with the Glow model (conv none) starts identical for a seed,
    and the conv's own weights follow the init rule: drawn after the shared layers, from the same stream."""
    models = {}
    for kind in ("none", conv):
        torch.manual_seed(7)
        models[kind] = FlowModel((1, 8, 8), 17, _cfg(conv=kind, steps=2, dequantization="variational"))
    glow, other = (m.state_dict() for m in models.values())
    assert set(glow) < set(other)
    assert all(torch.equal(glow[k], other[k]) for k in glow), [k for k in glow if not torch.equal(glow[k], other[k])]
    convs = models[conv].invertible_convs()
    assert len(convs) == 4
    raw = torch.cat([p.detach().flatten() for _, layer in convs for p in layer.parameters()])
    assert raw.abs().max() > 0 and raw.std() < 0.1  # drawn, and at the small init scale
    torch.manual_seed(8)  # another seed: the conv weights change with it
    again = FlowModel((1, 8, 8), 17, _cfg(conv=conv, steps=2, dequantization="variational"))
    assert not torch.equal(
        raw, torch.cat([p.detach().flatten() for _, m in again.invertible_convs() for p in m.parameters()])
    )


def test_unknown_conv_is_a_config_error():
    with pytest.raises(ConfigError, match="model.conv must be one of finc, emerging, cinc, none"):
        load_preset("digits", {"model.conv": "macow"})


# ---------------------------------------------------------------------------------------------
# model.finc (the key before model.conv) is unknown everywhere: presets, overrides, the CLI, checkpoints


def test_model_finc_is_an_unknown_key_in_presets_and_overrides(tmp_path):
    preset = tmp_path / "old.yaml"
    preset.write_text(yaml.safe_dump({"data": {"name": "digits"}, "model": {"finc": False, "steps": 1}}))
    for load in (lambda: load_preset(str(preset)), lambda: load_preset("digits", {"model.finc": False})):
        with pytest.raises(ConfigError, match=r"unknown config key 'model.finc' \(did you mean"):
            load()
    with pytest.raises(ConfigError, match="unknown config key 'finc'"):
        load_preset("digits", {"finc": False})


def test_model_finc_on_the_command_line_is_one_clean_line():
    result = cli_run.invoke("config", "--set", "model.finc=true")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "error: unknown config key 'model.finc' (did you mean" in " ".join(result.output.split())


def test_model_finc_in_a_checkpoint_config_is_refused(tmp_path):
    cfg = Config()
    cfg.model = _cfg(levels=1, steps=1)
    old = cfg.to_dict()
    del old["model"]["conv"]
    old["model"]["finc"] = True
    path = tmp_path / "old.pt"
    save_checkpoint(path, {"config": old, "model": build_model(cfg).state_dict()})
    with pytest.raises(CheckpointError, match="unknown config key 'model.finc'"):
        load_checkpoint(path)


# ---------------------------------------------------------------------------------------------
# every command with every conv, through the CLI


@pytest.mark.slow
@pytest.mark.parametrize("conv", ["emerging", "cinc", "none"])
def test_train_bpd_sample_invert_through_the_cli(conv, tmp_path):
    import json

    from typer.testing import CliRunner

    from finc_cli.cli.main import app

    def invoke(*args):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, f"{args[0]}: exit {result.exit_code}\n{result.output}"
        return result

    run = tmp_path / "run"
    invoke("train", "--preset", "digits", "--out", run, "--steps", 2, "--set", f"model.conv={conv}", *TINY_ARGS)
    assert load_preset(run / "config.yaml").model.conv == conv
    assert load_checkpoint(run / "best.pt")[1].model.conv == conv  # the checkpoint records the choice
    bpd = json.loads(invoke("bpd", run / "best.pt", "--split", "test", "--json", "--device", "cpu").stdout)
    assert 0 < bpd["bpd"] < 10
    invoke("sample", run / "best.pt", "-n", 4, "--out", tmp_path / "grid.png", "--seed", 0)
    assert (tmp_path / "grid.png").stat().st_size > 0
    inv = json.loads(invoke("invert", run / "best.pt", "--split", "test", "--limit", 8, "--json").stdout)
    assert inv["exact"] and inv["pixel_mismatches"] == 0
    assert [r["layer"] for r in inv["layers"]] == (
        [] if conv == "none" else [f"levels.{i}.steps.0.{conv}" for i in (0, 1)]
    )
