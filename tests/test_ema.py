"""EMA weights: the average itself, the swap, the checkpoint, exact resume, and the commands' --weights."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from tiny import TINY_OVERRIDES
from typer.testing import CliRunner

from finc_cli.checkpoint import check_ema_weights, load_checkpoint, read_checkpoint, save_checkpoint
from finc_cli.cli.main import app
from finc_cli.config import load_preset
from finc_cli.errors import CheckpointError
from finc_cli.flows import FInCConv2d
from finc_cli.inverse import centre_inverse
from finc_cli.train import Reporter, TrainingInterrupted, train
from finc_cli.train.ema import EMA

TINY = {**TINY_OVERRIDES, "train.eval_every": 2, "train.log_every": 1}


def _cfg(**train_keys):
    return load_preset("digits", {**TINY, **{f"train.{k}": v for k, v in train_keys.items()}})


def test_the_average_warms_up_as_tensorflow_does():
    layer = torch.nn.Linear(3, 2)
    ema = EMA(layer, decay=0.2)
    start = layer.weight.detach().clone()
    history = []
    for k in range(5):
        with torch.no_grad():
            layer.weight.add_(k + 1.0)
        history.append(layer.weight.detach().clone())
        ema.update(layer)
    # min(0.2, (1 + t)/(10 + t)) for t = 0..4: 1/10, 2/11, then the fixed decay 0.2 from t = 2 (3/12 > 0.2)
    expected = start
    for d, w in zip([0.1, 2 / 11, 0.2, 0.2, 0.2], history):
        expected = d * expected + (1 - d) * w
    torch.testing.assert_close(ema.shadow["weight"], expected)
    assert ema.updates == 5 and ema.state_dict()["updates"] == 5
    late = EMA(layer, decay=0.999)
    late.updates = 8990  # (1 + t)/(10 + t) = 0.999 exactly here
    assert late.current_decay() == pytest.approx(0.999) and EMA(layer, 0.999).current_decay() == pytest.approx(0.1)


def test_a_state_without_its_count_takes_the_step():
    layer = torch.nn.Linear(3, 2)
    ema = EMA(layer, decay=0.9)
    state = ema.state_dict()
    ema.load_state_dict({"decay": 0.9, "params": state["params"]}, step=37)
    assert ema.updates == 37
    ema.load_state_dict({**state, "updates": 12}, step=37)
    assert ema.updates == 12
    with pytest.raises(CheckpointError, match="update count"):
        check_ema_weights(layer, {**state, "updates": -1})


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


def _bpd(*args) -> dict:
    result = CliRunner().invoke(app, ["bpd", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _text(result) -> str:
    """stdout with Rich's line wrapping undone."""
    assert result.exit_code == 0, result.output
    return " ".join(result.stdout.split())


def _evals(run) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val_bpd" in r]


def _resave(data: dict, path) -> None:
    save_checkpoint(path, {k: v for k, v in data.items() if k not in ("format", "format_version", "finc_version")})


def test_checkpoints_hold_both_weights_and_load_either(runs):
    data = read_checkpoint(runs / "ema" / "last.pt")
    assert data["ema"]["decay"] == 0.9 and set(data["ema"]["params"]) <= set(data["model"])
    assert data["ema"]["updates"] == 4 == data["train_state"]["step"]
    averaged, _ = load_checkpoint(runs / "ema" / "last.pt", weights="ema")
    raw, _ = load_checkpoint(runs / "ema" / "last.pt", weights="raw")
    name = "levels.0.steps.0.coupling.net.0.weight"
    assert torch.equal(dict(averaged.named_parameters())[name], data["ema"]["params"][name])
    assert torch.equal(dict(raw.named_parameters())[name], data["model"][name])
    assert not torch.equal(data["ema"]["params"][name], data["model"][name])


def test_validation_scores_both_weights_and_keeps_the_lower(runs):
    evals = _evals(runs / "ema")
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        assert r["val_bpd_ema"] != r["val_bpd_raw"]
        assert r["val_bpd"] == min(r["val_bpd_ema"], r["val_bpd_raw"]) == r[f"val_bpd_{r['val_weights']}"]
    last = evals[-1]  # last.pt is the step-4 checkpoint: its two scores, measured again by `bpd`
    for weights in ("ema", "raw"):
        again = _bpd(runs / "ema" / "last.pt", "--split", "val", "--weights", weights)["bpd"]
        assert again == pytest.approx(last[f"val_bpd_{weights}"], rel=1e-9, abs=0)
    assert read_checkpoint(runs / "ema" / "last.pt")["default_weights"] == last["val_weights"]
    best = min(evals, key=lambda r: r["val_bpd"])
    assert read_checkpoint(runs / "ema" / "best.pt")["default_weights"] == best["val_weights"]
    plain = _evals(runs / "plain")
    assert plain and all(r["val_bpd"] == r["val_bpd_raw"] and r["val_weights"] == "raw" for r in plain)
    assert not any("val_bpd_ema" in r for r in plain)
    assert read_checkpoint(runs / "plain" / "last.pt")["default_weights"] == "raw"


def _recording(runs, path, recorded):
    """A copy of the EMA run's last.pt whose recorded choice is `recorded` (None: no record, an older file)."""
    data = read_checkpoint(runs / "ema" / "last.pt")
    data.pop("default_weights")
    if recorded is not None:
        data["default_weights"] = recorded
    _resave(data, path)
    return path


@pytest.mark.parametrize("recorded", ["raw", "ema", None])
def test_bpd_uses_the_recorded_choice_by_default_and_says_so(runs, tmp_path, recorded):
    ckpt = _recording(runs, tmp_path / "c.pt", recorded)
    expected = recorded or "ema"  # a checkpoint from before the choice was recorded: the average, as before
    other = {"ema": "raw", "raw": "ema"}[expected]
    default = _bpd(ckpt)
    assert default["weights"] == expected == _bpd(ckpt, "--weights", "auto")["weights"]
    assert default["bpd"] == _bpd(ckpt, "--weights", expected)["bpd"] != _bpd(ckpt, "--weights", other)["bpd"]
    assert f"{expected} weights" in _text(CliRunner().invoke(app, ["bpd", str(ckpt)]))


def test_sample_invert_interpolate_say_which_weights(runs, tmp_path):
    ckpt = _recording(runs, tmp_path / "c.pt", "raw")
    runner = CliRunner()
    commands = {
        "sample": ["sample", str(ckpt), "-n", "2", "--out", str(tmp_path / "s.png")],
        "invert": ["invert", str(ckpt), "--limit", "2"],
        "interpolate": ["interpolate", str(ckpt), "--split", "test", "--pairs", "1", "--out", str(tmp_path / "i.png")],
    }
    for name, args in commands.items():
        for weights in ("auto", "ema"):
            result = runner.invoke(app, [*args, "--weights", weights, "--json"])
            assert result.exit_code == 0, (name, result.output)
            assert json.loads(result.stdout)["weights"] == {"auto": "raw", "ema": "ema"}[weights], name
        assert "raw weights" in _text(runner.invoke(app, args)), name


def test_a_run_without_ema_uses_the_raw_weights_and_refuses_ema(runs):
    assert _bpd(runs / "plain" / "last.pt")["weights"] == "raw"
    missing = CliRunner().invoke(app, ["sample", str(runs / "plain" / "last.pt"), "--weights", "ema", "--out", "x.png"])
    assert missing.exit_code == 2 and "no EMA weights" in missing.output and "--weights raw" in missing.output


class _StopAt(Reporter):
    def __init__(self, step: int):
        self.step = step

    def advance(self, step: int, metrics: dict) -> None:
        if step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.slow
def test_resume_restores_the_average_and_its_count_bit_exactly(tmp_path):
    cfg = _cfg(steps=6, ema_decay=0.95, checkpoint_every=4, device="cpu")
    train(cfg, tmp_path / "whole")
    for run in ("split", "old"):
        with pytest.raises(TrainingInterrupted):
            train(cfg, tmp_path / run, reporter=_StopAt(3))
    old = read_checkpoint(tmp_path / "old" / "last.pt")  # as written before the count was kept
    assert old["ema"].pop("updates") == 3 and old.pop("default_weights") in ("ema", "raw")
    _resave(old, tmp_path / "old" / "last.pt")
    for run in ("split", "old"):
        train(cfg, tmp_path / run, resume="auto")
    whole, split, older = (read_checkpoint(tmp_path / d / "last.pt") for d in ("whole", "split", "old"))
    assert whole["ema"]["updates"] == split["ema"]["updates"] == older["ema"]["updates"] == 6
    for other in (split, older):  # the old checkpoint's count came from its step: the same average
        assert all(torch.equal(whole["ema"]["params"][n], other["ema"]["params"][n]) for n in whole["ema"]["params"])
        assert other["default_weights"] == whole["default_weights"]
    assert _evals(tmp_path / "split") == _evals(tmp_path / "whole")
