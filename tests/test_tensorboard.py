"""train.tensorboard: the event file read back holds the run's numbers; without the package, one line, no files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from cli_run import invoke, ok
from PIL import Image
from tiny import TINY_ARGS

from finc_cli.checkpoint import read_checkpoint
from finc_cli.train.run_dir import RunDir

TINY = [*TINY_ARGS, "--seed", "5"]
EVERY = ["--set", "train.log_every=1", "--set", "train.eval_every=2", "--set", "train.sample_every=2"]


def events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(RunDir(run).tensorboard), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def scalars(acc, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in acc.Scalars(tag)}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tb") / "run"
    no_ema = ("--set", "train.ema_decay=0")  # the logged weight norms are then those of last.pt's weights
    ok(invoke("train", "--preset", "digits", "--out", out, "--steps", 4, "--tensorboard", *TINY, *EVERY, *no_ema))
    return out


@pytest.mark.slow
def test_event_file_round_trips_the_metrics(run):
    acc = events(run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss_bpd" in r]
    evals = [r for r in records if "val_bpd" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4] and [r["step"] for r in evals] == [2, 4]
    for tag, key, rows in [
        ("train/bpd", "loss_bpd", train),
        ("train/lr", "lr", train),
        ("train/grad_norm", "grad_norm", train),
        ("train/steps_per_s", "it_s", train),
        ("train/wall_s", "wall_s", train),
        ("val/bpd", "val_bpd", evals),
        ("val/bpd_raw", "val_bpd_raw", evals),
        ("health/recon_max_err", "recon_max_err", evals),
    ]:
        logged = scalars(acc, tag)
        assert list(logged) == [r["step"] for r in rows], tag
        assert list(logged.values()) == pytest.approx([r[key] for r in rows], rel=1e-6, abs=1e-12), tag
    images_s = scalars(acc, "train/images_per_s")
    assert list(images_s.values()) == pytest.approx([16 * r["it_s"] for r in train], rel=1e-6)

    grids = acc.Images("samples")
    assert [g.step for g in grids] == [2, 4]
    with Image.open(run / "samples" / "step_0000004.png") as png:
        assert (grids[-1].width, grids[-1].height) == png.size


@pytest.mark.slow
def test_per_unit_weight_norms_and_inverse_errors(run):
    acc = events(run)
    model = read_checkpoint(run / "last.pt")["model"]
    units = sorted(k.rsplit(".", 1)[0] for k in model if k.endswith(".weight") and model[k].dim() == 5)  # FInC
    assert units, "the tiny model has FInC units"
    tags = acc.Tags()["scalars"]
    for name in units:
        assert f"finc_inverse_max_err/{name}" in tags and f"finc_inverse_mean_err/{name}" in tags
        norms = scalars(acc, f"finc_weight_norm/{name}")
        assert list(norms) == [2, 4]
        weight = model[f"{name}.weight"]  # (4, C', C', k, k); the centre tap is unit lower triangular
        cg, k = weight.shape[1], weight.shape[-1]
        effective = weight.clone()
        effective[:, :, :, k - 1, k - 1] = torch.tril(weight[:, :, :, k - 1, k - 1], diagonal=-1) + torch.eye(cg)
        assert norms[4] == pytest.approx(effective.norm().item(), rel=1e-6), "the weights at the last step"
        errors = scalars(acc, f"finc_inverse_max_err/{name}")
        assert 0 <= errors[4] < 1e-3


def test_logger_writes_each_record_once_and_skips_events(tmp_path):
    from finc_cli.train.tensorboard import TensorBoardLogger

    tb = TensorBoardLogger(RunDir(tmp_path).tensorboard, step=0, fresh=True, batch_size=8)
    tb.record(
        {
            "step": 5,
            "loss_bpd": 2.5,
            "lr": 1e-3,
            "grad_norm": 1.25,
            "it_s": 3.0,
            "data_s": 0.1,
            "compute_s": 0.3,
            "wall_s": 42.5,
        }
    )
    tb.record({"step": 5, "val_bpd": 2.75, "val_bpd_stderr": 0.5, "val_bpd_raw": 2.875, "recon_max_err": 2e-7})
    tb.record({"step": 6, "event": "nonfinite", "loss_bpd": float("nan"), "grad_norm": float("inf")})
    tb.close()
    acc = events(tmp_path)
    assert scalars(acc, "train/bpd") == {5: 2.5} and scalars(acc, "train/images_per_s") == {5: 24.0}
    assert scalars(acc, "train/data_wait_share") == {5: pytest.approx(0.25)}
    assert scalars(acc, "train/wall_s") == {5: 42.5}, "the run's wall time across resumes"
    assert scalars(acc, "val/bpd") == {5: 2.75} and scalars(acc, "health/recon_max_err") == {5: pytest.approx(2e-7)}
    assert scalars(acc, "val/bpd_raw") == {5: 2.875}
    assert scalars(acc, "train/grad_norm") == {5: 1.25}, "an event record (a skipped step) is not a data point"


def test_missing_tensorboard_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    for name in ("tensorboard", "torch.utils.tensorboard"):  # None in sys.modules: the import fails
        monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / "run"
    result = invoke("train", "--preset", "digits", "--out", out, "--steps", 1, "--tensorboard", *TINY)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "pip install" in lines[0] and "tensorboard" in lines[0]
    assert not out.exists(), "nothing written"


@pytest.mark.slow
def test_resume_from_an_older_checkpoint_purges_the_later_events(tmp_path):
    """Resumed at step 2 of 4, the events of steps 3-4 are replaced, as metrics.jsonl's lines are."""
    out = tmp_path / "run"
    keep = ["--set", "train.checkpoint_every=2", "--set", "train.keep_checkpoints=2"]
    ok(invoke("train", "--preset", "digits", "--out", out, "--steps", 4, "--tensorboard", *TINY, *EVERY, *keep))
    first = scalars(events(out), "train/bpd")
    ok(invoke("train", "--resume", out, "--from", "step-0000002.pt", "--lr", "0.01", "--tensorboard", "--quiet"))
    assert len(list(RunDir(out).tensorboard.glob("events.out.tfevents.*"))) == 2, "the resumed session adds a file"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss_bpd" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4], "metrics.jsonl keeps one line per step"
    logged = scalars(events(out), "train/bpd")
    assert [e.step for e in events(out).Scalars("train/bpd")] == [1, 2, 3, 4], "no step logged twice"
    assert list(logged.values()) == pytest.approx([r["loss_bpd"] for r in train], rel=1e-6)
    assert logged[1] == first[1] and logged[4] != first[4], "steps before the checkpoint kept, after it redone"
