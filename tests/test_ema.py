"""EMA weights: the average itself, the swap, the checkpoint, exact resume, and the commands' --weights."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from typer.testing import CliRunner

from finc_cli.checkpoint import load_checkpoint, read_checkpoint
from finc_cli.cli.main import app
from finc_cli.config import load_preset
from finc_cli.flows import FInCConv2d
from finc_cli.inverse import centre_inverse
from finc_cli.train import Reporter, TrainingInterrupted, train
from finc_cli.train.ema import EMA

TINY = {"model.steps": 1, "model.hidden": 8, "train.batch_size": 16, "train.eval_every": 2, "train.log_every": 1}


def _cfg(**train_keys):
    return load_preset("digits", {**TINY, **{f"train.{k}": v for k, v in train_keys.items()}})


def test_the_average_is_the_exponential_moving_average():
    layer = torch.nn.Linear(3, 2)
    ema = EMA(layer, decay=0.9)
    start = layer.weight.detach().clone()
    history = []
    for k in range(5):
        with torch.no_grad():
            layer.weight.add_(k + 1.0)
        history.append(layer.weight.detach().clone())
        ema.update(layer)
    expected = start
    for w in history:
        expected = 0.9 * expected + 0.1 * w
    torch.testing.assert_close(ema.shadow["weight"], expected)


def test_applied_swaps_the_weights_and_the_inverse_cache_follows():
    torch.manual_seed(0)
    unit = FInCConv2d(8, 3)
    ema = EMA(unit, decay=0.5)
    with torch.no_grad():
        unit.weight.mul_(3.0)
    raw = unit.weight.detach().clone()
    unit.inverse_operator()  # cached for the raw weights
    with ema.applied(unit):
        torch.testing.assert_close(unit.weight, ema.shadow["weight"])
        eff, linv = unit.inverse_operator()
        torch.testing.assert_close(linv, centre_inverse(unit.effective_weight()))  # rebuilt for the EMA weights
        x = torch.randn(2, 8, 5, 6)
        torch.testing.assert_close(unit.inverse(unit(x)[0])[0], x, rtol=1e-4, atol=1e-4)
    assert torch.equal(unit.weight, raw)
    torch.testing.assert_close(unit.inverse_operator()[1], centre_inverse(unit.effective_weight()))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ema")
    train(_cfg(steps=4, ema_decay=0.9), root / "ema")
    train(_cfg(steps=4, ema_decay=0.0), root / "plain")
    return root


def test_checkpoints_hold_both_and_commands_use_the_average_by_default(runs):
    data = read_checkpoint(runs / "ema" / "last.pt")
    assert data["ema"]["decay"] == 0.9 and set(data["ema"]["params"]) <= set(data["model"])
    averaged, _ = load_checkpoint(runs / "ema" / "last.pt")
    raw, _ = load_checkpoint(runs / "ema" / "last.pt", weights="raw")
    name = "levels.0.steps.0.coupling.net.0.weight"
    assert torch.equal(dict(averaged.named_parameters())[name], data["ema"]["params"][name])
    assert torch.equal(dict(raw.named_parameters())[name], data["model"][name])
    assert not torch.equal(data["ema"]["params"][name], data["model"][name])
    runner = CliRunner()
    default = json.loads(runner.invoke(app, ["bpd", str(runs / "ema" / "last.pt"), "--json"]).stdout)
    ema = json.loads(runner.invoke(app, ["bpd", str(runs / "ema" / "last.pt"), "--weights", "ema", "--json"]).stdout)
    plain = json.loads(runner.invoke(app, ["bpd", str(runs / "ema" / "last.pt"), "--weights", "raw", "--json"]).stdout)
    assert default["bpd"] == ema["bpd"] != plain["bpd"]
    missing = runner.invoke(app, ["sample", str(runs / "plain" / "last.pt"), "--weights", "ema", "--out", "x.png"])
    assert missing.exit_code == 2 and "no EMA weights" in missing.output and "--weights raw" in missing.output
    assert (
        runner.invoke(app, ["invert", str(runs / "ema" / "best.pt"), "--limit", "4", "--weights", "raw"]).exit_code == 0
    )


class _StopAt(Reporter):
    def __init__(self, step: int):
        self.step = step

    def advance(self, step: int, metrics: dict) -> None:
        if step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_resume_restores_the_average_bit_exactly(tmp_path):
    cfg = _cfg(steps=6, ema_decay=0.95, checkpoint_every=4, device="cpu")
    train(cfg, tmp_path / "whole")
    with pytest.raises(TrainingInterrupted):
        train(cfg, tmp_path / "split", reporter=_StopAt(3))
    train(cfg, tmp_path / "split", resume="auto")
    whole, split = (read_checkpoint(tmp_path / d / "last.pt")["ema"]["params"] for d in ("whole", "split"))
    assert all(torch.equal(whole[n], split[n]) for n in whole)
