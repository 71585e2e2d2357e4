"""Prepared datasets: written once, memory-mapped when current, never used when stale, truncated or corrupted."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_datasets import _pattern, _write_celeba
from typer.testing import CliRunner

from finc_cli.cli.main import app
from finc_cli.data import cache
from finc_cli.data.cache import MappedImages, check, prepare, resolve_cache_dir
from finc_cli.data.datasets import read_split
from finc_cli.data.formats.cifar10 import write_cifar10
from finc_cli.data.load import get_dataset
from finc_cli.errors import LockError
from finc_cli.files.locking import exclusive_lock


@pytest.fixture
def cifar(tmp_path):
    write_cifar10(tmp_path / "data", _pattern(15, 3, 32), _pattern(4, 3, 32, offset=9))
    return tmp_path / "data", tmp_path / "cache"


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _notes(name, split, data, cache_dir):
    notes: list[str] = []
    ds = get_dataset(name, split, data, cache_dir=cache_dir, notify=notes.append)
    return ds, notes


def test_prepared_splits_map_to_the_same_images_as_the_sources(cifar):
    data, cache_dir = cifar
    result = prepare("cifar10", data, cache_dir)
    assert [r["split"] for r in result["splits"]] == ["train", "val", "test"] and all(
        r["written"] for r in result["splits"]
    )
    for split in ("train", "val", "test"):
        ds, notes = _notes("cifar10", split, data, cache_dir)
        assert isinstance(ds, MappedImages) and notes == []
        expected = read_split("cifar10", split, data).images
        assert torch.equal(ds.batch(torch.arange(len(ds))), expected)
        idx = torch.tensor([len(ds) - 1, 0, len(ds) // 2])  # unsorted: the batch keeps the order asked
        assert torch.equal(ds.batch(idx), expected[idx]) and torch.equal(ds[len(ds) - 1], expected[-1])
        array = np.load(cache_dir / f"cifar10-{split}.npy")  # a plain, uncompressed .npy (N, C, H, W)
        assert array.dtype == np.uint8 and array.shape == tuple(expected.shape)


def test_manifest_records_what_the_issue_asks(cifar):
    data, cache_dir = cifar
    prepare("cifar10", data, cache_dir, splits=("test",))
    info = json.loads((cache_dir / "cifar10-test.json").read_text())
    assert info["format_version"] == cache.FORMAT_VERSION and (info["dataset"], info["split"]) == ("cifar10", "test")
    assert info["shape"] == [4, 3, 32, 32]
    (source,) = info["sources"]
    st = (data / "cifar-10-batches-py" / "test_batch").stat()
    assert source["size"] == st.st_size and source["mtime_ns"] == st.st_mtime_ns
    data_bytes = np.load(cache_dir / "cifar10-test.npy").tobytes()
    assert info["sha256"] == hashlib.sha256(data_bytes).hexdigest()
    assert not list(cache_dir.glob(".*.tmp"))  # written atomically: no temporaries left


def test_second_prepare_keeps_current_splits(cifar):
    data, cache_dir = cifar
    prepare("cifar10", data, cache_dir)
    mtime = (cache_dir / "cifar10-train.npy").stat().st_mtime_ns
    again = prepare("cifar10", data, cache_dir)
    assert not any(r["written"] for r in again["splits"]) and all(r["before"] == "current" for r in again["splits"])
    assert (cache_dir / "cifar10-train.npy").stat().st_mtime_ns == mtime
    forced = prepare("cifar10", data, cache_dir, splits=("val",), force=True)
    assert forced["splits"][0]["written"]


def _damage(kind: str, data: Path, cache_dir: Path) -> None:
    array = cache_dir / "cifar10-test.npy"
    if kind == "source changed":
        source = data / "cifar-10-batches-py" / "test_batch"
        os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    elif kind == "truncated":
        with open(array, "r+b") as f:
            f.truncate(array.stat().st_size - 100)
    elif kind == "corrupted":
        with open(array, "r+b") as f:
            f.seek(-7, os.SEEK_END)
            byte = f.read(1)
            f.seek(-7, os.SEEK_END)
            f.write(bytes([byte[0] ^ 0xFF]))
    elif kind == "manifest missing":
        (cache_dir / "cifar10-test.json").unlink()
    elif kind == "manifest garbage":
        (cache_dir / "cifar10-test.json").write_text("{not json")
    elif kind == "recipe changed":
        info = json.loads((cache_dir / "cifar10-test.json").read_text())
        info["recipe"]["version"] = -1
        (cache_dir / "cifar10-test.json").write_text(json.dumps(info))


@pytest.mark.parametrize(
    "kind, state",
    [
        ("source changed", "stale"),
        ("truncated", "corrupt"),
        ("corrupted", "corrupt"),
        ("manifest missing", "corrupt"),
        ("manifest garbage", "corrupt"),
        ("recipe changed", "stale"),
    ],
)
def test_a_damaged_or_stale_cache_is_never_used_silently(cifar, kind, state):
    data, cache_dir = cifar
    prepare("cifar10", data, cache_dir, splits=("test",))
    _damage(kind, data, cache_dir)
    assert check("cifar10", "test", data, cache_dir).state == state
    ds, notes = _notes("cifar10", "test", data, cache_dir)
    assert not isinstance(ds, MappedImages)  # the sources are read instead
    assert torch.equal(ds.images, read_split("cifar10", "test", data).images)
    assert len(notes) == 1 and state in notes[0] and "finc data prepare cifar10" in notes[0]
    prepare("cifar10", data, cache_dir, splits=("test",))  # preparing again repairs it
    assert check("cifar10", "test", data, cache_dir).state == "current"


def test_verify_rehashes_even_when_the_file_looks_untouched(cifar):
    data, cache_dir = cifar
    prepare("cifar10", data, cache_dir, splits=("test",))
    array = cache_dir / "cifar10-test.npy"
    before = array.stat()
    with open(array, "r+b") as f:  # bit rot: same size, and the modification time put back
        f.seek(-3, os.SEEK_END)
        f.write(b"\x00\x01\x02")
    os.utime(array, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert check("cifar10", "test", data, cache_dir, verify=True).state == "corrupt"


def test_missing_cache_gives_a_one_line_hint_and_digits_stays_quiet(cifar):
    data, cache_dir = cifar
    ds, notes = _notes("cifar10", "val", data, cache_dir)
    assert not isinstance(ds, MappedImages) and len(notes) == 1
    assert notes[0].startswith("hint:") and "finc data prepare cifar10" in notes[0]
    assert _notes("digits", "val", None, cache_dir)[1] == []


def test_a_failed_prepare_leaves_the_previous_cache_intact(cifar, monkeypatch):
    data, cache_dir = cifar
    prepare("cifar10", data, cache_dir, splits=("test",))
    before = (cache_dir / "cifar10-test.npy").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache, "_fill", disk_full)
    with pytest.raises(OSError):
        prepare("cifar10", data, cache_dir, splits=("test",), force=True)
    assert (cache_dir / "cifar10-test.npy").read_bytes() == before and not list(cache_dir.glob(".*.tmp"))
    assert check("cifar10", "test", data, cache_dir).state == "current"


def test_cache_location_flag_then_environment_then_beside_the_data(tmp_path, monkeypatch):
    monkeypatch.setenv("FINC_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir(tmp_path / "d", tmp_path / "flag") == tmp_path / "flag"
    assert resolve_cache_dir(tmp_path / "d") == tmp_path / "env"
    monkeypatch.delenv("FINC_CACHE_DIR")
    assert resolve_cache_dir(tmp_path / "d") == tmp_path / "d" / ".finc_cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("FINC_DATA_DIR", raising=False)
    assert resolve_cache_dir(None) == tmp_path / "xdg" / "finc" / "data"


@pytest.mark.slow  # spawns decoding processes, each importing torch
def test_celeba_is_prepared_by_parallel_processes(tmp_path):
    _write_celeba(tmp_path / "data", n_train=5, n_val=2, n_test=3)
    result = prepare("celeba64", tmp_path / "data", tmp_path / "cache", workers=2)
    assert [r["shape"][0] for r in result["splits"]] == [5, 2, 3]
    for split in ("train", "test"):
        mapped = get_dataset("celeba64", split, tmp_path / "data", cache_dir=tmp_path / "cache")
        source = read_split("celeba64", split, tmp_path / "data")
        assert isinstance(mapped, MappedImages)
        assert torch.equal(mapped.batch(torch.arange(len(mapped))), source.batch(torch.arange(len(source))))


def test_mapped_images_pickle_without_their_data(cifar):
    import pickle

    data, cache_dir = cifar
    prepare("cifar10", data, cache_dir, splits=("train",))
    ds = get_dataset("cifar10", "train", data, cache_dir=cache_dir)
    ds.batch(torch.tensor([0]))  # mapped now
    blob = pickle.dumps(ds)
    assert len(blob) < 1000  # the path, not the images
    assert torch.equal(pickle.loads(blob).batch(torch.arange(3)), ds.batch(torch.arange(3)))


def test_cli_prepare_and_info(cifar):
    data, cache_dir = cifar
    info = _invoke("data", "info", "cifar10", "--data-dir", data, "--cache-dir", cache_dir, "--json")
    assert info.exit_code == 0, info.output
    before = json.loads(info.stdout)
    assert before["found"] and [r["cache"] for r in before["splits"]] == ["missing"] * 3
    assert [r["images"] for r in before["splits"]] == [14, 1, 4]  # 15 training images, 1 held out
    assert [r["labels"] for r in before["splits"]] == ["in the source files"] * 3
    out = _invoke("data", "prepare", "cifar10", "--data-dir", data, "--cache-dir", cache_dir, "--json")
    assert out.exit_code == 0, out.output
    assert {r["split"]: r["shape"][0] for r in json.loads(out.stdout)["splits"]} == {"train": 14, "val": 1, "test": 4}
    after = json.loads(
        _invoke("data", "info", "cifar10", "--data-dir", data, "--cache-dir", cache_dir, "--json").stdout
    )
    assert [r["cache"] for r in after["splits"]] == ["current"] * 3
    assert [r["labels"] for r in after["splits"]] == ["stored: 10 classes"] * 3
    table = _invoke("data", "info", "cifar10", "--data-dir", data, "--cache-dir", cache_dir, "--verify")
    assert table.exit_code == 0 and "current" in table.output and "stored: 10" in table.output
    again = _invoke("data", "prepare", "cifar10", "--data-dir", data, "--cache-dir", cache_dir)
    assert again.exit_code == 0 and again.output.count("already current, labels stored") == 3, again.output


def test_cli_info_on_missing_data_and_unknown_names(tmp_path):
    result = _invoke("data", "info", "imagenet64", "--data-dir", tmp_path, "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert not data["found"] and "imagenet64 not found" in data["problem"]
    assert all(r["labels"].startswith("none: imagenet64 not found") for r in data["splits"])
    bad = _invoke("data", "prepare", "svhn", "--data-dir", tmp_path)
    assert bad.exit_code == 2 and "unknown dataset or preset 'svhn'" in bad.output
    missing = _invoke("data", "prepare", "cifar10", "--data-dir", tmp_path)
    assert missing.exit_code == 2 and "cifar10 not found" in missing.output and len(missing.output.splitlines()) == 1


def test_one_preparer_at_a_time(tmp_path):
    lock = tmp_path / ".lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import fcntl, os, time, json; fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, json.dumps({'pid': os.getpid(), 'host': 'h'}).encode()); "
            "print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockError, match=f"PID {holder.pid}"):
            with exclusive_lock(lock, "the folder"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with exclusive_lock(lock, "the folder"):  # gone with its holder, even after kill -9
        pass


def test_train_without_a_data_dir_gives_the_error_and_no_cache_hint(tmp_path, monkeypatch):
    monkeypatch.delenv("FINC_DATA_DIR", raising=False)
    monkeypatch.setenv("FINC_CACHE_DIR", str(tmp_path / "cache"))  # no prepared split there: the hint's case
    result = _invoke("train", "--preset", "celeba64", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "celeba64 needs a data directory" in result.stderr and result.stderr.strip().count("\n") == 0
    assert "finc data prepare" not in result.output  # the hint follows sources that were read, never an error
