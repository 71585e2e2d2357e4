"""A prepared CelebA split notices a rewritten, touched, added or removed image: stale, one line, sources read."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_run import invoke, ok
from PIL import Image
from test_datasets import _write_celeba

from finc_cli.data import cache
from finc_cli.data.cache import MappedImages, check, prepare
from finc_cli.data.celeba import celeba64_from_file
from finc_cli.data.datasets import CelebAImages
from finc_cli.data.load import get_dataset

TRAIN, VAL, TEST = 6, 2, 3


@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    """CelebA-layout data with every split prepared once; each test puts back what it changes."""
    root = tmp_path_factory.mktemp("celeba")
    folder, names = _write_celeba(root / "data", n_train=TRAIN, n_val=VAL, n_test=TEST)
    with pytest.MonkeyPatch.context() as mp:  # decoded here: the process pool (and its start-up) is tested elsewhere
        mp.setattr(
            cache, "_chunks", lambda ds, name, per_chunk, workers: [(0, ds.batch(torch.arange(len(ds))).numpy())]
        )
        prepare("celeba64", root / "data", root / "cache")
    return root / "data", root / "cache", folder / "img_align_celeba", names


def _same_size_jpeg(old: bytes) -> bytes:
    """Another picture as a JPEG of exactly len(old) bytes (zeros after its end marker, which decoders ignore)."""
    pixels = np.random.default_rng(1).integers(0, 256, (218, 178, 3), dtype=np.uint8)
    for quality in range(75, 0, -5):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
        if len(buf.getvalue()) <= len(old):
            return buf.getvalue() + bytes(len(old) - len(buf.getvalue()))
    raise AssertionError("no quality gives a JPEG small enough")


def _later(path: Path, seconds: int = 2) -> None:
    """Move the modification time on, as a write a moment after the prepare would (coarse clocks included)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 10**9))


def _change(kind: str, images: Path, name: str) -> Path:
    """Apply `kind` to image `name` and return where its original is kept (to be put back)."""
    path, kept = images / name, images.parent / f"kept-{name}"
    shutil.copy2(path, kept)  # bytes and times
    if kind == "rewritten":
        path.write_bytes(_same_size_jpeg(path.read_bytes()))
        _later(path)
    elif kind == "touched":
        _later(path)
    elif kind == "added":
        shutil.copy2(path, images / "999999.jpg")
    elif kind == "removed":
        path.unlink()
    return kept


def _put_back(images: Path, name: str, kept: Path) -> None:
    (images / "999999.jpg").unlink(missing_ok=True)
    os.replace(kept, images / name)  # the original bytes with their recorded times


@pytest.mark.parametrize("kind", ["rewritten", "touched", "added", "removed"])
def test_a_changed_image_makes_every_split_stale_and_the_sources_are_read(celeba, kind):
    data, cache_dir, images, names = celeba
    name = names[1]  # a training image
    assert check("celeba64", "train", data, cache_dir).state == "current"
    old = get_dataset("celeba64", "train", data, cache_dir=cache_dir)[1]  # mapped: the prepared pixels
    kept = _change(kind, images, name)
    try:
        for split in ("train", "val", "test"):
            status = check("celeba64", split, data, cache_dir)
            assert status.state == "stale" and "\n" not in status.reason, status.reason
            assert str(images.resolve()) in status.reason
        notes: list[str] = []
        ds = get_dataset("celeba64", "train", data, cache_dir=cache_dir, notify=notes.append)
        assert isinstance(ds, CelebAImages) and not isinstance(ds, MappedImages)  # the JPEGs, not the old array
        assert len(notes) == 1 and "\n" not in notes[0] and "stale" in notes[0] and "finc data prepare" in notes[0]
        if kind == "rewritten":
            assert torch.equal(ds[1], celeba64_from_file(images / name)) and not torch.equal(ds[1], old)
    finally:
        _put_back(images, name, kept)
    assert check("celeba64", "train", data, cache_dir).state == "current"  # as it was: usable again


def test_the_manifest_records_a_digest_of_the_image_folder(celeba):
    data, cache_dir, images, names = celeba
    info = json.loads((cache_dir / "celeba64-train.json").read_text())
    partition, folder = info["sources"]
    assert partition["path"].endswith("list_eval_partition.txt") and "size" in partition
    assert folder["files"] == len(names) == TRAIN + VAL + TEST and len(folder["digest"]) == 64
    assert info["format_version"] == cache.FORMAT_VERSION == 3


def test_a_cache_of_the_previous_format_is_stale_in_one_line(celeba, tmp_path):
    data, cache_dir, _, _ = celeba
    old_cache = tmp_path / "old"
    shutil.copytree(cache_dir, old_cache)
    manifest = old_cache / "celeba64-val.json"
    info = json.loads(manifest.read_text())
    info["format_version"] = 1
    info["sources"][1] = {"path": info["sources"][1]["path"], "mtime_ns": 1, "entries": TRAIN + VAL + TEST}
    manifest.write_text(json.dumps(info))
    status = check("celeba64", "val", data, old_cache)
    assert status.state == "stale" and "format 1" in status.reason and "\n" not in status.reason
    notes: list[str] = []
    ds = get_dataset("celeba64", "val", data, cache_dir=old_cache, notify=notes.append)
    assert isinstance(ds, CelebAImages) and len(notes) == 1


def test_info_verify_says_how_many_source_files_it_checked(celeba, tmp_path):
    data, cache_dir, _, names = celeba
    result = json.loads(
        ok(
            invoke("data", "info", "celeba64", "--data-dir", data, "--cache-dir", cache_dir, "--verify", "--json")
        ).stdout
    )
    everything = len(names) + 1  # every image and the partition file
    assert [r["checked"] for r in result["splits"]] == [everything] * 3
    assert [r["cache"] for r in result["splits"]] == ["current"] * 3
    unprepared = ok(invoke("data", "info", "celeba64", "--data-dir", data, "--cache-dir", tmp_path, "--verify"))
    assert f"train {everything}, val {everything}, test {everything}" in " ".join(unprepared.stdout.split())
    plain = json.loads(ok(invoke("data", "info", "celeba64", "--data-dir", data, "--json")).stdout)
    assert "checked" not in plain["splits"][0]
