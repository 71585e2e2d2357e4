"""model.coupling: affine | additive (Glow's two couplings); the layer contract itself is in tests/test_flows.py."""

from __future__ import annotations

import json

import torch
from cli_run import invoke, ok
from tiny import TINY_ARGS, TINY_MODEL

from finc_cli.checkpoint import load_model, read_checkpoint, save_checkpoint
from finc_cli.config import load_preset
from finc_cli.flows.coupling import AffineCoupling
from finc_cli.flows.memory import rebuild
from finc_cli.model import build_model

DT = torch.float64


def _layer(additive: bool, c: int = 5) -> AffineCoupling:
    torch.manual_seed(3)
    layer = AffineCoupling(c, hidden=8, max_log_scale=2.0, additive=additive).to(DT)
    with torch.no_grad():
        layer.net[-1].weight.normal_(0, 0.5)
        layer.net[-1].bias.normal_(0, 0.5)
    return layer


def test_additive_shifts_only_with_a_zero_logdet_and_a_shift_only_net():
    layer = _layer(additive=True)
    assert layer.net[-1].out_channels == 3 and _layer(additive=False).net[-1].out_channels == 6
    x = torch.randn(4, 5, 3, 3, dtype=DT)
    y, ld = layer(x)
    shift, log_s = layer.conditioner(x[:, :2])
    assert log_s is None and shift.abs().max() > 0.1
    assert torch.equal(y[:, :2], x[:, :2]) and torch.equal(y[:, 2:], x[:, 2:] + shift)
    assert torch.equal(ld, torch.zeros(4, dtype=DT))
    x_rec, ld_inv = layer.inverse(y)
    torch.testing.assert_close(x_rec, x, rtol=0, atol=1e-12)
    assert torch.equal(ld_inv, torch.zeros(4, dtype=DT))


def test_additive_starts_as_the_identity_and_stays_finite_on_large_inputs():
    layer = AffineCoupling(4, hidden=8, additive=True)
    x = torch.randn(2, 4, 3, 3)
    y, ld = layer(x)
    assert torch.equal(y, x) and torch.equal(ld, torch.zeros(2))
    with torch.no_grad():
        layer.net[-1].weight.normal_(0, 1.0)
    y, ld = layer(x * 1e3)
    assert torch.isfinite(y).all() and torch.isfinite(ld).all()


def test_additive_rebuild_returns_the_input_and_the_forward_with_grad():
    layer = _layer(additive=True)
    x = torch.randn(3, 5, 3, 3, dtype=DT)
    y, ld = layer(x)
    parts, y_new, ld_new = rebuild(layer, y)
    assert len(parts) == 2 and all(p.requires_grad and p.is_leaf for p in parts)
    torch.testing.assert_close(torch.cat(parts, dim=1), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(y_new, y, rtol=0, atol=1e-12)
    assert torch.equal(ld_new, ld) and y_new.requires_grad
    calls = []
    layer.net.register_forward_hook(lambda *_: calls.append(1))
    rebuild(layer, y)
    assert len(calls) == 1  # one conditioner pass serves the inverse and the recomputed forward


def _tiny(coupling: str):
    cfg = load_preset("digits")
    for key, value in {**TINY_MODEL, "model.steps": 3, "model.coupling": coupling}.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    torch.manual_seed(0)
    net = build_model(cfg).to(DT)
    x = torch.randint(0, 17, (8, 1, 8, 8))
    net.initialize(x)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net, x


def _grads(net, x, mode):
    net.set_memory(mode)
    net.zero_grad(set_to_none=True)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(1), dtype=DT)
    net(x, noise=noise).mean().backward()
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def test_invert_memory_gives_stores_gradients_with_additive_couplings():
    net, x = _tiny("additive")
    couplings = [m for m in net.modules() if isinstance(m, AffineCoupling)]
    assert couplings and all(m.additive for m in couplings)
    ref, got = _grads(net, x, "store"), _grads(net, x, "invert")
    assert got.keys() == ref.keys() and len(ref) == len(list(net.parameters()))
    worst = max(((got[n] - ref[n]).norm() / ref[n].norm().clamp_min(1e-30)).item() for n in ref)
    assert worst <= 1e-10, worst


def test_additive_model_decodes_its_encoding_exactly():
    net, x = _tiny("additive")
    assert torch.equal(net.decode(net.encode(x)), x)


def test_train_with_additive_coupling_from_the_cli(tmp_path):
    run = tmp_path / "run"
    ok(invoke("train", *TINY_ARGS, "--out", run, "--steps", 2, "--set", "model.coupling=additive"))
    model, cfg, _ = load_model(run / "last.pt")
    assert cfg.model.coupling == "additive"
    assert all(m.additive for m in model.modules() if isinstance(m, AffineCoupling))
    result = json.loads(ok(invoke("bpd", run / "last.pt", "--split", "val", "--json")).output)
    assert result["bpd"] > 0 and result["bpd"] < 20


def test_a_checkpoint_without_the_coupling_key_loads_as_affine(trained_run, tmp_path):
    saved = read_checkpoint(trained_run / "last.pt")
    assert saved["config"]["model"].pop("coupling") == "affine"
    old = tmp_path / "old.pt"
    save_checkpoint(old, saved)
    model, cfg, _ = load_model(old)
    assert cfg.model.coupling == "affine"
    couplings = [m for m in model.modules() if isinstance(m, AffineCoupling)]
    assert couplings and not any(m.additive for m in couplings)
    reference, _, _ = load_model(trained_run / "last.pt")
    x = torch.randint(0, 17, (2, 1, 8, 8))
    assert torch.equal(model.encode(x)[-1], reference.encode(x)[-1])


def test_an_unknown_coupling_is_one_line_and_exit_2(tmp_path):
    result = invoke("train", *TINY_ARGS, "--out", tmp_path / "run", "--steps", 1, "--set", "model.coupling=affin")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "model.coupling must be one of affine, additive" in lines[0], result.output
    assert not (tmp_path / "run").exists()
