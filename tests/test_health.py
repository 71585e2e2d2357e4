"""The composed health check: unit inverse gains against dense algebra, a deep model with enlarged taps flagged, auto
decoding it exactly, and `finc invert` reporting both."""

import json

import pytest
import torch
from cli_run import invoke, ok

from finc_cli.checkpoint import save_checkpoint
from finc_cli.commands.invert import invert
from finc_cli.config import load_preset
from finc_cli.data.batches import fetch
from finc_cli.data.load import get_dataset
from finc_cli.decode_precision import composed_section, decoding_model
from finc_cli.flows.finc_conv import FInCConv2d, finc_conv2d
from finc_cli.health import amplification_threshold, composed_check, inverse_gain, transpose_inverse, unit_gains
from finc_cli.model import build_model


def _dense_inverse(unit: FInCConv2d, h: int, w: int) -> torch.Tensor:
    """A⁻¹ of the unit at h×w as a dense float64 matrix (column j = A⁻¹ e_j)."""
    d = unit.channels * h * w
    basis = torch.eye(d, dtype=torch.float64).reshape(d, unit.channels, h, w)  # (D, C, H, W)
    a = finc_conv2d(basis, unit.effective_weight().detach().double()).reshape(d, d).T  # column j = A e_j
    return torch.linalg.inv(a)


@pytest.mark.parametrize("h,w", [(4, 5), (3, 3)])
def test_inverse_gain_and_transpose_inverse_match_dense_algebra(h, w):
    torch.manual_seed(1)
    unit = FInCConv2d(8, 3)
    with torch.no_grad():
        unit.weight.add_(0.3 * torch.randn_like(unit.weight))
    a_inv = _dense_inverse(unit, h, w)
    u = torch.randn(1, 8, h, w, dtype=torch.float64)
    got = transpose_inverse(unit.effective_weight().detach().double(), u).flatten()
    torch.testing.assert_close(got, a_inv.T @ u.flatten())
    exact = torch.linalg.matrix_norm(a_inv, 2).item()
    assert exact > 2  # enlarged taps: a gain the estimate could miss
    assert inverse_gain(unit, h, w, iterations=60) == pytest.approx(exact, rel=1e-3)


def _digits_model(tap_std: float):
    """A one-level, 16-step digits model; tap_std > 0 adds that much noise to every FInC tap."""
    cfg = load_preset("digits", {"model.levels": 1, "model.steps": 16, "model.hidden": 8})
    torch.manual_seed(0)
    model = build_model(cfg)
    x = fetch(get_dataset("digits", "test", None), torch.arange(8))
    model.initialize(x)
    with torch.no_grad():
        for _, unit in model.finc_units():
            unit.weight.add_(tap_std * torch.randn_like(unit.weight))
    return model.eval(), cfg, x


def test_composed_check_trusts_a_fresh_model_and_flags_enlarged_taps():
    fresh, _, x = _digits_model(0.0)
    good = composed_check(fresh, x)
    assert good["trusted"] and good["exact"] and good["worst_levels"] == 0
    assert good["amplification"] < good["threshold"] == amplification_threshold(17)
    bad_model, _, _ = _digits_model(0.6)
    bad = composed_section(bad_model, x)
    assert not bad["exact"] and not bad["trusted"]
    assert 0 < bad["wrong_share"] <= 1 and bad["worst_levels"] >= 1
    assert bad["amplification"] > bad["threshold"]
    assert "--decode-precision float64" in bad["warning"]
    assert max(unit_gains(bad_model).values()) > max(unit_gains(fresh).values())


def test_auto_decodes_the_flagged_model_exactly_in_float64():
    model, _, x = _digits_model(0.6)
    check = composed_check(model, x)
    runner, used = decoding_model(model, "auto", check)
    assert used == "float64" and runner is not model
    assert next(model.parameters()).dtype == torch.float32  # the loaded model is left as it was
    assert torch.equal(runner.decode(runner.encode(x)), x)
    assert composed_check(runner, x)["exact"]
    kept, used = decoding_model(model, "float32", check)
    assert kept is model and used == "float32"


@pytest.fixture(scope="module")
def bad_checkpoint(tmp_path_factory):
    model, cfg, _ = _digits_model(0.6)
    path = tmp_path_factory.mktemp("health") / "bad.pt"
    save_checkpoint(path, {"config": cfg.to_dict(), "model": model.state_dict()})
    return path


def test_invert_reports_the_composed_failure_and_auto_round_trips_exactly(bad_checkpoint, tmp_path):
    plain = invert(str(bad_checkpoint), limit=8, device="cpu", decode_precision="float32")
    assert plain["decode_precision"] == "float32" and not plain["exact"] and plain["pixel_mismatches"] > 0
    assert not plain["composed"]["trusted"] and plain["composed"]["warning"]
    assert all(row["gain"] >= 1 for row in plain["layers"])
    auto = invert(str(bad_checkpoint), limit=8, device="cpu", save_latents_to=str(tmp_path / "z.pt"))
    assert auto["decode_precision"] == "float64" and auto["exact"] and auto["pixel_mismatches"] == 0
    assert not auto["composed"]["trusted"]  # the section reports the model's own precision
    decoded = invert(str(bad_checkpoint), latents_from=str(tmp_path / "z.pt"), device="cpu")
    assert decoded["decode_precision"] == "float64"


def test_invert_cli_warns_on_stderr_and_refuses_an_unknown_precision(bad_checkpoint):
    result = ok(invoke("invert", bad_checkpoint, "--limit", 4, "--device", "cpu", "--json"))
    data = json.loads(result.stdout)
    assert data["decode_precision"] == "float64" and data["exact"] and not data["composed"]["trusted"]
    assert "not trustworthy" in result.stderr and "float64" in result.stderr
    bad = invoke("invert", bad_checkpoint, "--decode-precision", "float16")
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_validation_logs_the_composed_check_and_tensorboard_and_report_show_it(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from finc_cli.commands.report import summarize
    from finc_cli.train.run_dir import read_metrics

    out = tmp_path / "run"
    tiny = ["--set", "model.steps=1", "--set", "model.hidden=8", "--batch-size", "16", "--quiet", "--tensorboard"]
    ok(invoke("train", "--out", out, "--steps", 1, *tiny))
    (val,) = [r for r in read_metrics(out / "metrics.jsonl") if "val_bpd" in r]
    assert val["roundtrip_exact"] is True and val["roundtrip_wrong_share"] == 0 and val["roundtrip_worst_levels"] == 0
    assert 0 < val["decode_amplification"] < amplification_threshold(17) and val["finc_gain_max"] >= 1
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    (amp,) = acc.Scalars("health/decode_amplification")
    assert amp.value == pytest.approx(val["decode_amplification"], rel=1e-6)
    summary = summarize([*read_metrics(out / "metrics.jsonl"), {"step": 2, "val_bpd": 3.0, "roundtrip_exact": False}])
    assert summary["decode_amplification"] == val["decode_amplification"] and summary["roundtrip_failures"] == 1


def test_benchmark_conditioning_rows_grow_with_the_tap_rms():
    result = ok(
        invoke("benchmark", "conditioning", "-p", "digits", "-n", 8, "--tap-rms", 0.05, "--tap-rms", 0.5, "--json")
    )
    small, large = json.loads(result.stdout)["rows"]
    assert small["tap_rms"] == pytest.approx(0.05, rel=0.15) and large["tap_rms"] == pytest.approx(0.5, rel=0.15)
    assert large["unit_gain_max"] > small["unit_gain_max"] >= 1
    assert large["amplification_f32"] > small["amplification_f32"] and small["exact_f64"] and large["exact_f64"]


def test_the_gain_cap_holds_through_training_steps_and_old_checkpoints_load(tmp_path):
    from finc_cli.checkpoint import load_checkpoint

    cfg = load_preset("digits", {"model.steps": 2, "model.hidden": 8, "model.finc_gain_cap": 1.5})
    torch.manual_seed(0)
    model = build_model(cfg)
    x = fetch(get_dataset("digits", "train", None), torch.arange(32))
    model.initialize(x)
    with torch.no_grad():
        for _, unit in model.finc_units():
            unit.weight.add_(0.5 * torch.randn_like(unit.weight))  # far past the cap without it
    uncapped = []
    for _, unit in model.finc_units():
        unit.gain_cap = None
        uncapped.append(inverse_gain(unit, 4, 4))
        unit.gain_cap = 1.5
    assert max(uncapped) > 1.5
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        loss = model(x).mean()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
        assert max(unit_gains(model).values()) <= 1.5 + 1e-9
    old = cfg.to_dict()
    del old["model"]["finc_gain_cap"]  # a checkpoint written before the option existed
    save_checkpoint(tmp_path / "old.pt", {"config": old, "model": model.state_dict()})
    loaded, loaded_cfg = load_checkpoint(tmp_path / "old.pt", device="cpu")
    assert loaded_cfg.model.finc_gain_cap is None and all(u.gain_cap is None for _, u in loaded.finc_units())


def test_sample_and_interpolate_decode_the_flagged_model_in_float64_under_auto(bad_checkpoint, tmp_path):
    from finc_cli.commands.interpolate import interpolate
    from finc_cli.commands.sample import sample

    drawn = sample(str(bad_checkpoint), n=4, out=str(tmp_path / "s.png"), seed=3, device="cpu")
    assert drawn["decode_precision"] == "float64" and not drawn["composed"]["trusted"]
    kept = sample(str(bad_checkpoint), n=4, out=str(tmp_path / "t.png"), seed=3, decode_precision="float32")
    assert kept["decode_precision"] == "float32" and kept["composed"] is None
    args = dict(split="test", pairs=2, steps=3, device="cpu")
    plain = interpolate(str(bad_checkpoint), out=str(tmp_path / "a.png"), decode_precision="float32", **args)
    auto = interpolate(str(bad_checkpoint), out=str(tmp_path / "b.png"), **args)
    assert not plain["ends_exact"] and auto["ends_exact"] and auto["decode_precision"] == "float64"
