"""train.memory: checkpoint and invert give store's gradients, and the drift check of rebuilt inputs."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from cli_run import invoke, ok
from tiny import TINY_ARGS, TINY_MODEL, TINY_SETS

from finc_cli.config import CONV_CHOICES, MEMORY_CHOICES, load_preset
from finc_cli.errors import ConfigError
from finc_cli.flows.memory import leaf_flows, rebuild_error, run_steps
from finc_cli.model import build_model


def _config(**model):
    cfg = load_preset("digits")
    for key, value in {**TINY_MODEL, "model.steps": 3, **model}.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    return cfg


def _model(dtype=torch.float64, seed=0, taps=0.05, **model):
    """A tiny digits model with enlarged k×k taps and non-zero couplings, so every parameter gets a gradient."""
    torch.manual_seed(seed)
    net = build_model(_config(**model)).to(dtype)
    x = torch.randint(0, 17, (8, 1, 8, 8))
    net.initialize(x)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(taps * torch.randn_like(p))
    return net, x


def _gradients(net, x, mode: str) -> tuple[torch.Tensor, dict]:
    net.set_memory(mode)
    net.zero_grad(set_to_none=True)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(1), dtype=next(net.parameters()).dtype)
    loss = net(x, noise=noise).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("conv", CONV_CHOICES)
@pytest.mark.parametrize("mode", ["checkpoint", "invert"])
def test_every_parameter_gradient_matches_store_in_float64(conv, mode):
    net, x = _model(**{"model.conv": conv, "model.dequantization": "variational", "model.dequant_steps": 1})
    loss_ref, ref = _gradients(net, x, "store")
    loss, got = _gradients(net, x, mode)
    assert torch.equal(loss, loss_ref) or abs((loss - loss_ref).item()) < 1e-12
    assert got.keys() == ref.keys() and len(ref) == len(list(net.parameters()))
    worst = max(_relative(got[n], ref[n]) for n in ref)
    assert worst <= 1e-10, worst


def test_invert_matches_store_in_float32_with_a_split_and_logit():
    net, x = _model(dtype=torch.float32, taps=0.02, **{"model.steps": 4})
    _, ref = _gradients(net, x, "store")
    _, got = _gradients(net, x, "invert")
    flat_ref = torch.cat([g.flatten() for g in ref.values()])
    flat_got = torch.cat([got[n].flatten() for n in ref])
    assert _relative(flat_got, flat_ref) <= 1e-4


@pytest.mark.parametrize("mode", ["checkpoint", "invert"])
def test_bf16_couplings_rebuild_under_the_same_autocast(mode):
    """The recompute reapplies the conditioner's autocast, so bf16 gradients match store's to float32 round-off."""
    net, x = _model(dtype=torch.float32, taps=0.02)
    net.set_autocast(torch.bfloat16)
    _, ref = _gradients(net, x, "store")
    _, got = _gradients(net, x, mode)
    flat_ref = torch.cat([g.flatten() for g in ref.values()])
    assert _relative(torch.cat([got[n].flatten() for n in ref]), flat_ref) <= 1e-3


def test_modes_agree_without_grad_and_unknown_mode_is_refused():
    net, x = _model()
    outs = []
    for mode in MEMORY_CHOICES:
        net.set_memory(mode)
        with torch.no_grad():
            outs.append(net(x, noise=torch.full(x.shape, 0.5, dtype=torch.float64)))
    assert all(torch.equal(o, outs[0]) for o in outs)
    with pytest.raises(ConfigError, match="train.memory"):
        net.set_memory("recompute")


def test_invert_keeps_only_the_level_output():
    """The graph of an invert level holds one saved tensor (its output) whatever K is; store holds many per step."""
    net, x = _model(**{"model.steps": 6})
    steps = net.levels[0].steps
    h = torch.randn(4, 4, 4, 4, dtype=torch.float64, requires_grad=True)

    def saved(mode: str) -> int:
        count = 0

        def pack(t):
            nonlocal count
            count += 1
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run_steps(steps, h, mode)
        return count

    assert saved("invert") == 1
    assert saved("store") > 6 * 4


def test_rebuild_error_is_round_off_and_sees_a_bad_inverse():
    net, x = _model(dtype=torch.float32, taps=0.02)
    errors = net.rebuild_errors(x)
    assert len(errors) == len(net.levels) and max(errors) < 1e-4
    unit = next(f for f in leaf_flows(net.levels[0].steps) if type(f).__name__ == "ActNorm")
    true_inverse = unit.inverse
    unit.inverse = lambda y: (true_inverse(y)[0] + 1e-2, true_inverse(y)[1])  # a drifting inverse
    h = torch.randn(2, 4, 4, 4)
    assert rebuild_error(net.levels[0].steps, h) >= 1e-2 * 0.99


# -- training with train.memory ------------------------------------------------------------------


def _events(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_invert_then_resume_in_checkpoint_logs_the_change(tmp_path):
    run = tmp_path / "run"
    ok(invoke("train", *TINY_ARGS, "--out", run, "--steps", 2, "--memory", "invert", "--set", "train.eval_every=2"))
    records = _events(run)
    (val,) = [r for r in records if "val_bpd" in r]
    assert 0.0 <= val["rebuild_max_err"] < 1e-4  # the drift check ran on the rebuilt inputs
    ok(invoke("train", "--resume", run, "--steps", 3, "--memory", "checkpoint", "--quiet"))
    changes = {e["key"]: (e["from"], e["to"]) for e in _events(run) if e.get("event") == "config_changed"}
    assert changes["train.memory"] == ("invert", "checkpoint")
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["memory"] == "checkpoint"
    assert ok(invoke("bpd", run / "last.pt", "--split", "val", "--json")).exit_code == 0


def test_drift_past_the_threshold_stops_invert_naming_checkpoint(tmp_path):
    run = tmp_path / "run"
    args = ["--out", run, "--steps", 2, "--memory", "invert", "--set", "train.eval_every=2"]
    result = invoke("train", *TINY_ARGS, *args, "--set", "train.health_threshold=1e-30")
    assert result.exit_code == 1, result.output
    line = result.output.strip().splitlines()[-1]
    assert "rebuilt activations" in line and "--memory checkpoint" in line and "Traceback" not in result.output
    assert (run / "last.pt").is_file()  # checkpoints intact: the run resumes in checkpoint mode
    ok(invoke("train", "--resume", run, "--memory", "checkpoint", "--quiet"))


def test_invert_with_a_raster_order_conv_warns_once(tmp_path):
    run = tmp_path / "run"
    result = ok(
        invoke(
            "train",
            *TINY_SETS,
            "--out",
            run,
            "--steps",
            1,
            "--memory",
            "invert",
            "--set",
            "model.conv=emerging",
            "--batch-size",
            8,
        )
    )
    assert result.output.count("raster order") == 1 and "--memory checkpoint" in result.output


def test_unknown_memory_is_one_line_exit_2(tmp_path):
    result = invoke("train", *TINY_ARGS, "--out", tmp_path / "run", "--set", "train.memory=recompute")
    assert result.exit_code == 2 and "train.memory must be one of store, checkpoint, invert" in result.output
    assert not (tmp_path / "run").exists()


# -- the digits architecture in float32 (slow: real training) ------------------------------------


def _digits_gradient_error(net, x: torch.Tensor, mode: str) -> float:
    net.train()
    _, ref = _gradients(net, x, "store")
    _, got = _gradients(net, x, mode)
    flat_ref = torch.cat([g.flatten() for g in ref.values()])
    return _relative(torch.cat([got[n].flatten() for n in ref]), flat_ref)


@pytest.mark.slow
def test_digits_float32_gradients_and_300_steps_match_store(tmp_path):
    """≤ 1e-4 relative gradient error at initialisation and after 200 steps; 300 steps end within 0.01 bits/dim."""
    from finc_cli.checkpoint import load_model
    from finc_cli.data.load import get_dataset
    from finc_cli.train import train

    torch.manual_seed(0)
    cfg = load_preset("digits")
    x = get_dataset("digits", "train")
    batch = torch.stack([x[i] for i in range(64)])
    fresh = build_model(cfg)
    fresh.initialize(batch)
    for mode in ("checkpoint", "invert"):
        assert _digits_gradient_error(fresh, batch, mode) <= 1e-4

    common = {"train.steps": 300, "train.checkpoint_every": 100, "train.keep_checkpoints": 3, "train.eval_every": 300}
    summaries = {}
    for mode in ("store", "invert"):
        overrides = {**common, "train.memory": mode}
        summaries[mode] = train(load_preset("digits", overrides), tmp_path / mode, overrides=overrides)
    trained, _, _ = load_model(tmp_path / "store" / "step-0000200.pt", weights="raw")
    for mode in ("checkpoint", "invert"):
        assert _digits_gradient_error(trained, batch, mode) <= 1e-4
    assert abs(summaries["invert"]["val_bpd"] - summaries["store"]["val_bpd"]) <= 0.01


@pytest.mark.parametrize("mode", ["checkpoint", "invert"])
def test_class_conditional_priors_and_head_get_store_gradients(mode):
    net, x = _model(**{"model.conditional": True})
    y = torch.arange(x.shape[0]) % 10
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def grads(memory: str) -> dict:
        net.set_memory(memory)
        net.zero_grad(set_to_none=True)
        net(x, noise=noise, y=y, objective=True).mean().backward()
        return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    ref, got = grads("store"), grads(mode)
    assert got.keys() == ref.keys() and any("class" in n for n in ref)
    assert max(_relative(got[n], ref[n]) for n in ref) <= 1e-10
