"""`finc benchmark data` on tiny synthetic sets: real formats, rows, same images from the cache, the CLI (no timing)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import typer
from typer.testing import CliRunner

from finc_cli.bench import data_throughput as throughput
from finc_cli.bench.data_memory import pss_rows
from finc_cli.bench.data_sources import source_check_rows
from finc_cli.bench.data_synthetic import ensure, write_synthetic
from finc_cli.bench.data_training import data_wait_rows
from finc_cli.cli.benchmark import register
from finc_cli.data.batches import step_batch
from finc_cli.data.cache import MappedImages
from finc_cli.data.datasets import dataset_info, read_split
from finc_cli.data.load import get_dataset

N = 64  # training images per tiny synthetic set
WRITTEN = ("mnist", "cifar10", "imagenet64", "celeba64")
# Preparing CelebA starts decoding processes that import torch (seconds): its cache is tested in the slow tier.
QUICK = ("digits", "mnist", "cifar10", "imagenet64")
EVERY = [*QUICK, pytest.param("celeba64", marks=pytest.mark.slow)]
ROW_KEYS = {
    "format",
    "source",
    "reads",
    "workers",
    "images",
    "batch",
    "augment",
    "steps",
    "open_s",
    "first_batch_s",
    "images_s",
    "batch_ms",
    "peak_rss_mb",
    "workers_peak_rss_mb",
    "threads",
    "load_avg",
}


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench-data")
    for fmt in QUICK:
        ensure(fmt, folder, N)
    write_synthetic("celeba64", folder / "celeba64", N)  # prepared by the tests that need it
    return folder


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("noop")(lambda: None)  # a second command keeps `benchmark` a sub-command
    register(app)
    return app


@pytest.mark.parametrize("fmt", WRITTEN)
def test_synthetic_sets_are_read_by_the_real_readers(root, fmt):
    info, held = dataset_info(fmt), max(2, N // 8)
    splits = {s: read_split(fmt, s, root / fmt) for s in ("train", "val", "test")}
    if fmt == "celeba64":  # the partition file says which JPEG belongs where
        assert [len(splits[s]) for s in ("train", "val", "test")] == [N, held, held]
    else:  # validation is held out of the official training files
        assert len(splits["train"]) + len(splits["val"]) == N and len(splits["test"]) == held
    for ds in splits.values():
        x = ds[0]
        assert x.dtype == torch.uint8 and tuple(x.shape) == (info.channels, info.height, info.width)


def test_celeba_jpegs_are_the_real_size(root):
    from PIL import Image

    path = next((root / "celeba64" / "celeba" / "img_align_celeba").glob("*.jpg"))
    with Image.open(path) as img:
        assert (img.format, img.size) == ("JPEG", (178, 218))


def test_a_complete_set_is_kept_and_a_changed_one_rewritten(tmp_path):
    first = write_synthetic("cifar10", tmp_path, 20)
    assert first["written"] and first["bytes"] > 0
    assert not write_synthetic("cifar10", tmp_path, 20)["written"]
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])  # cut short
    assert write_synthetic("cifar10", tmp_path, 20)["written"]
    assert write_synthetic("cifar10", tmp_path, 30)["written"]  # another size
    assert len(read_split("cifar10", "test", tmp_path)) == max(2, 30 // 8)


def test_digits_needs_no_writing_and_unknown_formats_are_refused(tmp_path):
    from finc_cli.errors import InputError

    assert not write_synthetic("digits", tmp_path, 10)["written"]
    assert not any(tmp_path.iterdir())
    with pytest.raises(InputError, match="no synthetic writer"):
        write_synthetic("svhn", tmp_path, 10)


@pytest.mark.parametrize("source", ["sources", "cache"])
@pytest.mark.parametrize("fmt", EVERY)
def test_measure_returns_a_row(root, fmt, source):
    setup = ensure(fmt, root, N)
    row = throughput.measure(fmt, source, setup["data_dir"], setup["cache_dir"], 3, 1, 8, 0, hflip=True, translate=2)
    assert ROW_KEYS <= set(row)
    assert (row["format"], row["source"], row["batch"], row["augment"]) == (fmt, source, 8, "flip, ±2 px")
    assert (row["reads"] == "memory-mapped .npy") == (source == "cache")
    assert all(_positive(row[k]) for k in ("images_s", "first_batch_s", "peak_rss_mb"))
    assert row["first_batch_s"] >= row["open_s"] and row["workers_peak_rss_mb"] is None


@pytest.mark.parametrize("fmt", EVERY)
def test_the_cache_gives_the_same_batches_as_the_sources(root, fmt):
    setup = ensure(fmt, root, N)
    kw = dict(train_transform=True, hflip=True, translate=2, cache_dir=setup["cache_dir"])
    ds = {c: get_dataset(fmt, "train", setup["data_dir"], use_cache=c, **kw) for c in (False, True)}
    assert isinstance(ds[True], MappedImages) and not isinstance(ds[False], MappedImages)
    for step in (0, 1):
        a, b = (step_batch(ds[c], step, seed=3, batch_size=8) for c in (False, True))
        assert torch.equal(a.images, b.images) and torch.equal(a.noise, b.noise)


def test_cli_json_is_one_object(root, monkeypatch):
    monkeypatch.setattr(throughput, "measure_fresh", throughput.measure)  # the fresh processes are the slow test's
    args = ["benchmark", "data", "--root", str(root), "--formats", "digits,imagenet64", "--imagenet-images", str(N)]
    args += ["--steps", "2", "--warmup", "1", "--batch-size", "8", "--workers", "0", "--repeats", "1"]
    args += ["--no-pss", "--no-train"]
    result = CliRunner().invoke(_app(), [*args, "--json"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert set(out) == {"env", "rows", "pss", "train", "source_check"}
    assert out["pss"] == out["train"] == out["source_check"] == []
    assert [(r["format"], r["source"], r["noise"]) for r in out["rows"]] == [
        (fmt, source, noise)
        for fmt in ("digits", "imagenet64")
        for source in ("sources", "cache")
        for noise in ("cpu", "device")
    ]
    table = CliRunner().invoke(_app(), args)
    assert table.exit_code == 0 and "finc benchmark data" in table.stdout


def test_cli_refuses_an_unknown_format(root):
    result = CliRunner().invoke(_app(), ["benchmark", "data", "--root", str(root), "--formats", "svhn"])
    assert result.exit_code == 2 and "svhn" in result.output
    result = CliRunner().invoke(_app(), ["benchmark", "data", "--root", str(root), "--noise", "gpu"])
    assert result.exit_code == 2 and "gpu" in result.output


def test_noise_on_the_device_leaves_it_out_of_the_batches(root, monkeypatch):
    """What `measure` times with noise='device' is what GPU training's prefetcher makes: batches without noise."""
    made = []
    real = step_batch

    def spy(*args, **kw):
        made.append(real(*args, **kw))
        return made[-1]

    monkeypatch.setattr(throughput, "step_batch", spy)  # the name `measure` calls
    setup = ensure("imagenet64", root, N)
    row = throughput.measure("imagenet64", "cache", setup["data_dir"], setup["cache_dir"], 2, 1, 8, 0, noise="device")
    assert row["noise"] == "device" and made and all(b.noise is None for b in made)
    with pytest.raises(ValueError, match="noise"):
        throughput.measure("imagenet64", "cache", setup["data_dir"], setup["cache_dir"], 2, 1, 8, 0, noise="gpu")


@pytest.mark.slow
def test_data_rows_measure_in_fresh_processes(root):
    rows = throughput.data_rows(
        ["celeba64"], root, steps=2, warmup=1, batch_size=8, workers_list=(0, 2), images={"celeba64": N}
    )
    assert [(r["source"], r["workers"]) for r in rows] == [("sources", 0), ("sources", 2), ("cache", 0), ("cache", 2)]
    for r in rows:
        assert ROW_KEYS | {"prepare_s"} <= set(r) and _positive(r["images_s"]) and r["images"] == N
        assert _positive(r["workers_peak_rss_mb"]) if r["workers"] else r["workers_peak_rss_mb"] is None


@pytest.mark.slow
def test_pss_rows_on_a_tiny_set(root):
    rows = pss_rows(root, N, processes=2)
    assert [(r["source"], r["process"]) for r in rows] == [
        ("cache", "0"),
        ("cache", "1"),
        ("cache", "all"),
        ("sources", "0"),
        ("sources", "1"),
        ("sources", "all"),
    ]
    for r in rows:
        assert _positive(r["pss_mb"]) and _positive(r["idle_pss_mb"])
        assert (r["array_pss_mb"] > 0) == (r["source"] == "cache")
    totals = [r for r in rows if r["process"] == "all"]
    assert all(_positive(r["ratio"]) and r["array_mb"] > 0 for r in totals)


@pytest.mark.slow
def test_data_wait_rows_report_the_data_share(root):
    rows = data_wait_rows(root, N, steps=4, batch_size=8, log_every=2, runs=(("cache", 0), ("sources", 2)))
    assert [(r["source"], r["workers"]) for r in rows] == [("cache", 0), ("sources", 2)]
    for r in rows:
        assert _positive(r["compute_s"]) and r["data_s"] >= 0 and 0 <= r["data_share"] < 1 and r["intervals"] == 1


def test_source_check_rows_time_every_file_of_a_celeba_folder(tmp_path):
    (row,) = source_check_rows(tmp_path, repeats=2, files=40)
    assert row["files"] == 40 + 1 and row["repeats"] == 2  # every image and the partition file
    assert 0 < row["check_s_min"] <= row["check_s"] <= row["check_s_max"]
    counts = [len(read_split("celeba64", split, tmp_path / "celeba64-files")) for split in ("train", "val", "test")]
    assert counts == [32, 4, 4]
    assert get_dataset("celeba64", "val", tmp_path / "celeba64-files", use_cache=False)[0].shape == (3, 64, 64)
    again = source_check_rows(tmp_path, repeats=1, files=40)[0]
    assert again["write_s"] == 0.0, "a complete folder is kept"


def test_cli_times_the_source_check_alone(tmp_path):
    args = ["benchmark", "data", "--root", str(tmp_path), "--formats", "celeba64", "--no-sources", "--no-cache"]
    result = CliRunner().invoke(_app(), [*args, "--no-pss", "--no-train", "--check-files", "30", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["rows"] == [] and [r["files"] for r in out["source_check"]] == [31]
    assert not (tmp_path / "celeba64").exists(), "nothing else is written when nothing else is timed"
