"""`finc` end to end with Typer's CliRunner on a tiny digits config, and the Python API round trip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_run import invoke, ok
from PIL import Image
from tiny import TINY_ARGS as TINY
from tiny import TINY_MODEL

from finc_cli.checkpoint import read_checkpoint


def metrics(run: Path) -> list[dict]:
    def strict(token):  # NaN / Infinity are not JSON
        raise ValueError(f"non-strict JSON constant {token}")

    return [json.loads(line, parse_constant=strict) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run(trained_run) -> Path:  # three steps, lr 0.002, seed 7, log_every 1, eval_every 2 (tests/tiny.py)
    return trained_run


@pytest.fixture(scope="module")
def ckpt(run) -> Path:
    return run / "best.pt"


# ---------------------------------------------------------------------------------------------
# train / resume


def test_train_writes_config_metrics_checkpoints_and_samples(run):
    assert {"config.yaml", "metrics.jsonl", "last.pt", "best.pt", "samples"} <= {p.name for p in run.iterdir()}
    assert not list(run.glob(".*.tmp")), "a temporary file was left behind"
    records = metrics(run)
    assert [r["step"] for r in records if "loss_bpd" in r] == [1, 2, 3]  # log_every=1
    assert [r["step"] for r in records if "val_bpd" in r] == [2, 3]  # eval_every=2, and at the end
    assert read_checkpoint(run / "last.pt")["train_state"]["step"] == 3
    assert read_checkpoint(run / "best.pt")["train_state"]["step"] in (2, 3)
    grids = list((run / "samples").glob("*.png"))
    assert grids and Image.open(grids[0]).format == "PNG"


def test_set_overrides_and_flags_reach_the_saved_config(run):
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["steps"] == 1 and cfg["model"]["hidden"] == 8
    t = cfg["train"]
    assert (t["steps"], t["batch_size"], t["lr"], t["seed"], t["log_every"], t["eval_every"]) == (3, 16, 0.002, 7, 1, 2)
    assert read_checkpoint(run / "last.pt")["config"] == cfg  # the checkpoint carries the same resolved config


def test_train_refuses_a_non_empty_run_dir(run):
    before = (run / "last.pt").read_bytes()
    result = invoke("train", "--out", run, "--steps", 3, *TINY)
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "not empty" in result.stderr
    assert "Traceback" not in result.output
    assert (run / "last.pt").read_bytes() == before


def test_resume_dir_and_auto_continue_training(trained_run_copy):
    copy = trained_run_copy
    ok(invoke("train", "--resume", copy, "--steps", 5, "--quiet"))  # --resume DIR continues in DIR
    assert read_checkpoint(copy / "last.pt")["train_state"]["step"] == 5
    ok(invoke("train", "--out", copy, "--resume", "auto", "--steps", 6, "--quiet"))
    assert read_checkpoint(copy / "last.pt")["train_state"]["step"] == 6
    records = metrics(copy)
    train_steps = [r["step"] for r in records if "loss_bpd" in r and "event" not in r]
    assert train_steps == [1, 2, 3, 4, 5, 6]  # no step logged twice, none lost
    val_steps = [r["step"] for r in records if "val_bpd" in r]
    assert len(val_steps) == len(set(val_steps))


def test_force_starts_over(trained_run_copy):
    copy = trained_run_copy
    ok(invoke("train", "--out", copy, "--force", "--steps", 1, *TINY))
    assert read_checkpoint(copy / "last.pt")["train_state"]["step"] == 1
    assert max(r["step"] for r in metrics(copy)) == 1


# ---------------------------------------------------------------------------------------------
# evaluate / bpd


@pytest.mark.parametrize("command", ["evaluate", "bpd"])
def test_evaluate_json(ckpt, command):
    result = ok(invoke(command, ckpt, "--split", "test", "--json", "--device", "cpu"))
    data = json.loads(result.stdout)
    assert {"bpd", "bpd_stderr", "n_images", "split"} <= set(data)
    assert data["split"] == "test" and data["n_images"] > 0
    assert 0 < data["bpd"] < 10 and data["bpd_stderr"] > 0


def test_evaluate_table(ckpt):
    result = ok(invoke("evaluate", ckpt, "--split", "val", "--device", "cpu"))
    assert "val bits/dim" in result.stdout


# ---------------------------------------------------------------------------------------------
# sample


def test_sample_grid_has_the_right_size(ckpt, tmp_path):
    out = tmp_path / "x.png"
    result = ok(invoke("sample", ckpt, "-n", 9, "--out", out, "--seed", 0))
    assert "9 samples" in result.stdout
    side = (3 * (8 + 2) + 2) * 16  # 3×3 grid of 8×8 digits, 2 px padding: 32 px, upscaled 16× to >= 512 px
    with Image.open(out) as img:
        assert img.size == (side, side) and img.mode == "L"


def test_sample_is_reproducible_with_a_seed(ckpt, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    ok(invoke("sample", ckpt, "-n", 4, "--out", a, "--seed", 3))
    ok(invoke("sample", ckpt, "-n", 4, "--out", b, "--seed", 3))
    assert a.read_bytes() == b.read_bytes()


def test_sample_individual_writes_one_png_each(ckpt, tmp_path):
    out = tmp_path / "each"
    ok(invoke("sample", ckpt, "-n", 9, "--individual", "--out", out, "--seed", 0))
    files = sorted(out.glob("*.png"))
    assert len(files) == 9
    with Image.open(files[0]) as img:
        assert img.size == (8, 8)


# ---------------------------------------------------------------------------------------------
# invert


def test_invert_json_reports_exact_reconstruction_per_unit(ckpt):
    result = ok(invoke("invert", ckpt, "--split", "test", "--limit", 16, "--json"))
    data = json.loads(result.stdout)
    assert data["exact"] is True and data["pixel_mismatches"] == 0 and data["n_images"] == 16
    assert data["max_abs_err"] < 1e-3
    assert len(data["layers"]) == 2  # levels × steps FInC units
    for row in data["layers"]:
        assert {"layer", "max_abs_err", "mean_abs_err", "flagged"} <= set(row)
        assert row["flagged"] is False
    assert data["worst_layer"] in [row["layer"] for row in data["layers"]]
    assert 0 < data["encode_seconds"] < 60 and 0 < data["decode_seconds"] < 60  # timed, not left at 0


def test_saved_latents_decode_to_the_same_images(ckpt, tmp_path):
    from finc_cli.data.load import get_dataset
    from finc_cli.files.images import save_grid

    z = tmp_path / "z.pt"
    ok(invoke("invert", ckpt, "--split", "test", "--limit", 5, "--save-latents", z, "--json"))
    result = ok(invoke("invert", ckpt, "--latents", z, "--out", tmp_path / "decoded.png", "--json"))
    assert json.loads(result.stdout)["n_images"] == 5
    save_grid(get_dataset("digits", "test").images[:5], tmp_path / "original.png", bins=17)
    with Image.open(tmp_path / "decoded.png") as a, Image.open(tmp_path / "original.png") as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_invert_image_files(ckpt, tmp_path):
    ok(invoke("sample", ckpt, "-n", 2, "--individual", "--out", tmp_path, "--seed", 1))
    files = sorted(tmp_path.glob("sample_*.png"))
    data = json.loads(ok(invoke("invert", ckpt, *files, "--json")).stdout)
    assert data["n_images"] == 2 and data["exact"] is True


# ---------------------------------------------------------------------------------------------
# help, import cost, the Python API


def test_help_lists_the_commands_and_exit_codes():
    result = ok(invoke("--help"))
    for command in ("train", "evaluate", "bpd", "sample", "invert"):
        assert command in result.stdout
    assert "Exit codes" in result.stdout


def test_cli_import_does_not_import_torch():
    code = "import sys, finc_cli.cli.main; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_finc_help_does_not_import_torch():
    """The real entry point (with every registered command): `finc --help` stays well under a second."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "finc_cli", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "invert" in proc.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "typer" in imported and not [name for name in imported if name.split(".")[0] == "torch"]


def test_python_api_round_trip(ckpt):
    import finc_cli

    cfg = finc_cli.load_preset("digits", TINY_MODEL)
    fresh = finc_cli.build_model(cfg)
    model, loaded_cfg = finc_cli.load_checkpoint(ckpt)
    assert loaded_cfg.model == cfg.model and type(fresh) is type(model)
    x = torch.randint(0, 17, (4, 1, 8, 8), dtype=torch.uint8)  # (B, C, H, W), 17 levels
    bpd = model(x)
    assert bpd.shape == (4,) and torch.isfinite(bpd).all()
    latents = model.encode(x)
    assert [tuple(z.shape[1:]) for z in latents] == model.latent_shapes()
    assert torch.equal(model.decode(latents), x)
    samples = model.sample(3, temperature=0.7, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 1, 8, 8) and samples.dtype == torch.uint8 and int(samples.max()) <= 16
