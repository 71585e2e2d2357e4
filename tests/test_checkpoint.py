"""Checkpoints and atomic writes: what is inside, what is refused, and that nothing is half-written."""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import pytest
import torch
from tiny import TINY_MODEL

from finc_cli import __version__
from finc_cli.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from finc_cli.config import load_preset
from finc_cli.files.atomic import atomic_path, atomic_write_text, remove_stale_temporaries
from finc_cli.model import build_model
from finc_cli.train.state import TrainState, checkpoint_payload, restore


@pytest.fixture(scope="module")
def tiny():
    cfg = load_preset("digits", TINY_MODEL)
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def _payload(cfg, model) -> dict:
    return {"config": cfg.to_dict(), "model": model.state_dict()}


@pytest.fixture
def good(tiny, tmp_path) -> Path:
    path = tmp_path / "good.pt"
    save_checkpoint(path, _payload(*tiny))
    return path


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------------------------------------
# contents and round trip


def test_checkpoint_holds_format_versions_and_resolved_config(tiny, good):
    cfg, model = tiny
    data = read_checkpoint(good)
    assert (data["format"], data["format_version"], data["finc_version"]) == (FORMAT, FORMAT_VERSION, __version__)
    assert data["config"] == cfg.to_dict()
    loaded, loaded_cfg = load_checkpoint(good)
    assert loaded_cfg == cfg and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


# ---------------------------------------------------------------------------------------------
# refused files: one line, naming the file


def _write_bad(kind: str, good: Path, folder: Path) -> Path:
    path = folder / f"{kind}.pt"
    raw = good.read_bytes()
    if kind == "truncated":
        path.write_bytes(raw[: len(raw) * 2 // 3])
    elif kind == "corrupted":
        path.write_bytes(raw[:1000] + bytes(b ^ 0x5A for b in raw[1000:4000]) + raw[4000:])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("model: not a checkpoint\n")
    elif kind == "plain pickle":
        path.write_bytes(pickle.dumps({"format": FORMAT}))
    elif kind == "foreign dict":
        torch.save({"a": 1}, path)
    elif kind == "foreign tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "newer format":
        data = read_checkpoint(good)
        data["format_version"] = FORMAT_VERSION + 1
        torch.save(data, path)
    elif kind == "no weights":
        data = read_checkpoint(good)
        del data["model"]
        torch.save(data, path)
    return path


@pytest.mark.parametrize(
    "kind,words",
    [
        ("truncated", "truncated, corrupted"),
        ("corrupted", "truncated, corrupted"),
        ("empty", "truncated, corrupted"),
        ("text", "truncated, corrupted"),
        ("plain pickle", "truncated, corrupted"),
        ("foreign dict", "not a finc checkpoint"),
        ("foreign tensor", "not a finc checkpoint"),
        ("newer format", "upgrade finc"),
        ("no weights", "no 'model' entry"),
    ],
)
def test_unusable_files_raise_one_line(good, tmp_path, kind, words):
    path = _write_bad(kind, good, tmp_path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert words in message and str(path) in message and "\n" not in message


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="is a directory"):
        read_checkpoint(tmp_path)


@pytest.mark.parametrize("legacy", [False, True])
def test_code_in_a_pickle_is_never_run(tmp_path, legacy):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "model": RunsCode(marker)}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match=r"safe load refuses.*nothing run"):
        load_checkpoint(path)
    assert not marker.exists()


def test_architecture_mismatch_is_summarised(tiny, tmp_path):
    cfg, model = tiny
    weights = dict(model.state_dict())
    dropped = next(iter(weights))
    del weights[dropped]
    path = tmp_path / "missing.pt"
    save_checkpoint(path, {"config": cfg.to_dict(), "model": weights})
    with pytest.raises(CheckpointError, match=rf"1 missing \(e.g. {dropped}\)"):
        load_checkpoint(path)
    wide = cfg.to_dict()
    wide["model"]["hidden"] = 16
    path = tmp_path / "wide.pt"
    save_checkpoint(path, {"config": wide, "model": model.state_dict()})
    with pytest.raises(
        CheckpointError,
        match=r"wrong shape \(e.g. levels\.0\.steps\.0\.coupling\.net\.0\.weight \(8, 2, 3, 3\) vs \(16, 2, 3, 3\)",
    ):
        load_checkpoint(path)


def test_invalid_config_inside_a_checkpoint(tiny, tmp_path):
    cfg, model = tiny
    bad = cfg.to_dict()
    bad["model"]["levels"] = "two"
    path = tmp_path / "bad_config.pt"
    save_checkpoint(path, {"config": bad, "model": model.state_dict()})
    with pytest.raises(CheckpointError, match="invalid config.*model.levels"):
        load_checkpoint(path)


# ---------------------------------------------------------------------------------------------
# atomic writes


def test_failed_write_keeps_the_previous_file_and_no_temporary(tiny, good, monkeypatch):
    before = good.read_bytes()

    def disk_full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError) as info:
        save_checkpoint(good, _payload(*tiny))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(good)  # names the target
    assert good.read_bytes() == before
    assert list(good.parent.iterdir()) == [good]


def test_crash_before_the_rename_keeps_the_previous_file(good, monkeypatch):
    before = good.read_bytes()

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(good, "new")
    assert good.read_bytes() == before and list(good.parent.iterdir()) == [good]


def test_missing_directory_names_the_target(tmp_path):
    target = tmp_path / "missing" / "x.pt"
    with pytest.raises(FileNotFoundError) as info:
        with atomic_path(target):
            pass
    assert info.value.filename == str(target)


def test_new_files_follow_the_umask_and_replacements_keep_their_mode(tmp_path):
    fresh = tmp_path / "fresh.txt"
    atomic_write_text(fresh, "x")
    umask = os.umask(0)
    os.umask(umask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    os.chmod(fresh, 0o640)
    atomic_write_text(fresh, "y")
    assert fresh.stat().st_mode & 0o777 == 0o640


def test_stale_temporaries_of_a_killed_writer_are_removed(tmp_path):
    stale = tmp_path / ".last.pt.abc123.tmp"
    other = tmp_path / ".best.pt.abc123.tmp"
    stale.write_bytes(b"half")
    other.write_bytes(b"half")
    (tmp_path / "last.pt").write_bytes(b"whole")
    assert remove_stale_temporaries(tmp_path, "last.pt") == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".best.pt.abc123.tmp", "last.pt"]


# ---------------------------------------------------------------------------------------------
# latents files go through the same safe loader


def test_latents_files_are_loaded_safely(tiny, tmp_path):
    from finc_cli.commands.invert import load_latents
    from finc_cli.errors import ImageInputError

    _, model = tiny
    marker = tmp_path / "PWNED"
    evil = tmp_path / "z.pt"
    torch.save({"format": "finc-latents", "latents": RunsCode(marker)}, evil)
    with pytest.raises(ImageInputError, match="not a readable finc latents file"):
        load_latents(str(evil), model)
    assert not marker.exists()
    wrong = tmp_path / "wrong.pt"
    torch.save({"format": "finc-latents", "latents": [torch.zeros(1, 3, 2, 2)]}, wrong)
    with pytest.raises(ImageInputError, match="latents of shapes"):
        load_latents(str(wrong), model)


def test_the_run_wall_time_is_saved_and_restored_and_older_checkpoints_start_at_zero():
    cfg = load_preset("digits", TINY_MODEL)
    model = build_model(cfg)
    optimizer = torch.optim.Adam(model.parameters())
    before = TrainState(step=5, wall_before_s=100.0)
    before.session_t0 -= 7.0  # this session has run 7 s
    payload = checkpoint_payload(model, optimizer, before, cfg)
    assert 107.0 <= payload["train_state"]["wall_s"] < 108.0
    after = TrainState()
    restore(payload, model, optimizer, after)
    assert after.step == 5 and after.wall_before_s == payload["train_state"]["wall_s"]
    assert after.wall() >= after.wall_before_s and after.wall(after.session_t0 + 2.0) == after.wall_before_s + 2.0
    del payload["train_state"]["wall_s"]  # written before wall_s existed
    older = TrainState()
    restore(payload, model, optimizer, older)
    assert older.wall_before_s == 0.0
