"""Labels from every dataset in its own on-disk format, aligned with the images of each split (docs/data.md §4)."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from test_datasets import _pattern

from finc_cli.config import load_preset
from finc_cli.data import cache, load
from finc_cli.data.cache import MappedImages, check, prepare
from finc_cli.data.datasets import dataset_info, label_files, read_labels, read_split
from finc_cli.data.formats.batch_files import write_pickle
from finc_cli.data.formats.celeba import ATTRIBUTE_NAMES, write_celeba
from finc_cli.data.formats.cifar10 import write_cifar10
from finc_cli.data.formats.imagenet import write_imagenet
from finc_cli.data.formats.mnist import write_idx, write_mnist
from finc_cli.data.labels import LabelledDataset, Labels
from finc_cli.data.load import get_dataset, get_labelled_dataset, get_labels
from finc_cli.errors import DatasetError
from finc_cli.train import train

SPLITS = ("train", "val", "test")
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _classes(n: int, high: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, n)


def _by_image(images: np.ndarray, labels: np.ndarray) -> dict[bytes, object]:
    """Each (distinct) image's label, to check a split's pairs wherever its images went."""
    assert len({im.tobytes() for im in images}) == len(images)
    return {im.tobytes(): lab for im, lab in zip(images, labels)}


def _assert_pairs(name: str, split: str, root, truth: dict[bytes, object]) -> Labels:
    """read_labels gives, for every image read_split gives, the label written with that image."""
    images, labels = read_split(name, split, root).images.numpy(), read_labels(name, split, root)
    assert len(images) == len(labels) > 0
    for image, label in zip(images, labels.values):
        assert np.array_equal(truth[image.tobytes()], label)
    return labels


def _one_line_error(call, *needles) -> str:
    with pytest.raises(DatasetError) as err:
        call()
    msg = str(err.value)
    assert "\n" not in msg and all(str(n) in msg for n in needles), msg
    return msg


# ---------------------------------------------------------------------------------------------
# what each dataset's labels are


def test_dataset_info_knows_each_datasets_labels():
    expected = {
        "digits": (10, "class"),
        "mnist": (10, "class"),
        "cifar10": (10, "class"),
        "imagenet32": (1000, "class"),
        "imagenet64": (1000, "class"),
        "celeba64": (40, "attributes"),
    }
    assert {n: (dataset_info(n).num_classes, dataset_info(n).label_kind) for n in expected} == expected
    assert len(ATTRIBUTE_NAMES) == 40 == len(set(ATTRIBUTE_NAMES))


def test_digits_labels_are_sklearns_targets_of_the_same_images():
    from sklearn.datasets import load_digits

    digits = load_digits()
    seen: dict[bytes, set[int]] = {}
    for image, target in zip(digits.images.astype(np.uint8), digits.target):
        seen.setdefault(image.tobytes(), set()).add(int(target))
    counts = np.zeros(10, np.int64)
    for split in SPLITS:
        images, labels = read_split("digits", split).images.numpy(), read_labels("digits", split)
        assert labels.kind == "class" and labels.num_classes == 10 and labels.values.dtype == np.int64
        assert len(labels) == len(images)
        assert all(int(lab) in seen[im[0].tobytes()] for im, lab in zip(images, labels.values))
        counts += np.bincount(labels.values, minlength=10)
    assert np.array_equal(counts, np.bincount(digits.target, minlength=10))  # the splits partition the targets


# ---------------------------------------------------------------------------------------------
# MNIST: idx1 files


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_labels_round_trip_and_follow_the_holdout(tmp_path, gz):
    train, test = _pattern(30, 1, 28), _pattern(4, 1, 28, offset=3)
    train_labels, test_labels = _classes(30, 10, 0), _classes(4, 10, 1)
    write_mnist(tmp_path, train, test, gz=gz, train_labels=train_labels, test_labels=test_labels)
    suffix = ".gz" if gz else ""
    assert (tmp_path / "MNIST" / "raw" / f"t10k-labels-idx1-ubyte{suffix}").is_file()
    truth = _by_image(np.concatenate([train, test]), np.concatenate([train_labels, test_labels]))
    got = {split: _assert_pairs("mnist", split, tmp_path, truth) for split in SPLITS}
    assert np.array_equal(got["test"].values, test_labels)
    assert (len(got["train"]), len(got["val"])) == (27, 3)
    assert sorted(np.concatenate([got["train"].values, got["val"].values])) == sorted(train_labels)


def test_mnist_label_file_is_idx1_as_distributed(tmp_path):
    """The reader takes a file written byte by byte (not by finc's writer), and the writer writes the same bytes."""
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "t10k-images-idx3-ubyte", _pattern(3, 1, 28))
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(struct.pack(">ii", 2049, 3) + bytes([7, 0, 9])))
    assert read_labels("mnist", "test", tmp_path).values.tolist() == [7, 0, 9]
    written = write_idx(tmp_path / "w" / "labels", np.array([7, 0, 9], np.uint8)).read_bytes()
    assert written == struct.pack(">ii", 2049, 3) + bytes([7, 0, 9])


def test_mnist_without_label_files_still_loads_and_says_which_file_is_missing(tmp_path):
    train, test = _pattern(12, 1, 28), _pattern(4, 1, 28, offset=3)
    write_mnist(tmp_path, train, test, gz=True)  # images only
    assert [len(get_dataset("mnist", s, tmp_path, use_cache=False)) for s in SPLITS] == [11, 1, 4]
    expected = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    _one_line_error(lambda: read_labels("mnist", "val", tmp_path), expected, "finc data download mnist")
    _one_line_error(lambda: label_files("mnist", "train", tmp_path), expected)


@pytest.mark.parametrize(
    "damage, needles",
    [
        ("missing", ["mnist labels not found"]),
        ("truncated", ["truncated", "expected 12"]),
        ("header", ["truncated", "header needs 8"]),
        ("magic", ["magic number 2051, expected 2049"]),
        ("count", ["holds 3 labels for the 4 images"]),
        ("value", ["holds label 10, expected 0..9"]),
        ("gzip", ["cannot read idx file"]),
    ],
)
def test_a_bad_mnist_label_file_is_one_line_naming_it(tmp_path, damage, needles):
    test = _pattern(4, 1, 28)
    write_mnist(tmp_path, _pattern(12, 1, 28), test, train_labels=np.zeros(12), test_labels=np.arange(4))
    path = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    good = path.read_bytes()
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(good[:-1])
    elif damage == "header":
        path.write_bytes(good[:5])
    elif damage == "magic":  # an image file where the labels should be
        write_idx(path, test)
    elif damage == "count":
        write_idx(path, np.arange(3, dtype=np.uint8))
    elif damage == "value":
        write_idx(path, np.array([0, 1, 10, 2], np.uint8))
    elif damage == "gzip":
        path.unlink()
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(good)[:-10])
    _one_line_error(lambda: read_labels("mnist", "test", tmp_path), path, *needles)
    assert torch.equal(get_dataset("mnist", "test", tmp_path).images, torch.from_numpy(test))  # images unaffected


# ---------------------------------------------------------------------------------------------
# CIFAR-10: `labels` in the batch pickles, names in batches.meta


def test_cifar_labels_round_trip_with_names_and_follow_the_holdout(tmp_path):
    train, test = _pattern(50, 3, 32), _pattern(6, 3, 32, offset=9)
    train_labels, test_labels = _classes(50, 10, 2), _classes(6, 10, 3)
    write_cifar10(tmp_path, train, test, train_labels, test_labels, label_names=CIFAR_NAMES)
    batch = pickle.loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes(), encoding="bytes")
    assert batch[b"labels"] == test_labels.tolist()  # a list of ints, as in the python version
    truth = _by_image(np.concatenate([train, test]), np.concatenate([train_labels, test_labels]))
    got = {split: _assert_pairs("cifar10", split, tmp_path, truth) for split in SPLITS}
    assert np.array_equal(got["test"].values, test_labels) and len(got["val"]) == 5
    assert got["train"].names == tuple(CIFAR_NAMES) and got["train"].num_classes == 10
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"
    assert meta in label_files("cifar10", "test", tmp_path)


def test_cifar_without_meta_has_no_names_and_default_labels_are_zero(tmp_path):
    write_cifar10(tmp_path, _pattern(10, 3, 32), _pattern(3, 3, 32, offset=1))
    labels = read_labels("cifar10", "test", tmp_path)
    assert labels.names is None and labels.values.tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    "labels, needles",
    [
        (None, ["no 'labels'"]),
        ([0, 1], ["holds (2,) labels for 3 images"]),
        ([0, 1, 10], ["holds label 10, expected 0..9"]),
        ([0, 1, -1], ["holds label -1, expected 0..9"]),
    ],
)
def test_a_bad_cifar_batch_is_one_line_only_when_labels_are_read(tmp_path, labels, needles):
    test = _pattern(3, 3, 32, offset=1)
    write_cifar10(tmp_path, _pattern(10, 3, 32), test)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch = {b"data": test.reshape(3, -1)}
    if labels is not None:
        batch[b"labels"] = labels
    write_pickle(path, batch, protocol=2)
    _one_line_error(lambda: read_labels("cifar10", "test", tmp_path), path, "CIFAR-10 python version", *needles)
    assert torch.equal(get_dataset("cifar10", "test", tmp_path).images, torch.from_numpy(test))


# ---------------------------------------------------------------------------------------------
# downsampled ImageNet: `labels` 1..1000 in pickles and .npz files


@pytest.mark.parametrize("npz", [False, True])
def test_imagenet_labels_one_to_a_thousand_become_classes_from_zero(tmp_path, npz):
    batches = [_pattern(8, 3, 32), _pattern(7, 3, 32, offset=100)]
    val = _pattern(5, 3, 32, offset=200)
    classes = [np.array([0, 999, 5, 1, 2, 3, 4, 998]), _classes(7, 1000, 4)]
    val_classes = np.array([999, 0, 500, 1, 998])
    write_imagenet(tmp_path, 32, batches, val, npz=npz, train_labels=classes, val_labels=val_classes)
    if npz:
        with np.load(tmp_path / "Imagenet32_val_npz" / "val_data.npz") as f:
            on_disk = f["labels"]
    else:
        on_disk = pickle.loads((tmp_path / "Imagenet32_val" / "val_data").read_bytes())["labels"]
    assert list(on_disk) == [1000, 1, 501, 2, 999]  # the files' own 1..1000
    truth = _by_image(np.concatenate([*batches, val]), np.concatenate([*classes, val_classes]))
    got = {split: _assert_pairs("imagenet32", split, tmp_path, truth) for split in SPLITS}
    assert got["test"].values.tolist() == [999, 0, 500, 1, 998] and got["test"].num_classes == 1000
    assert len(got["train"]) + len(got["val"]) == 15


@pytest.mark.parametrize("npz", [False, True])
def test_imagenet_written_by_hand_and_its_errors(tmp_path, npz):
    folder = tmp_path / "imagenet64"
    folder.mkdir()
    data = _pattern(3, 3, 64).reshape(3, -1)

    def write(labels):
        if npz:
            np.savez(folder / "val_data.npz", data=data, **({} if labels is None else {"labels": np.array(labels)}))
            return folder / "val_data.npz"
        return write_pickle(folder / "val_data", {"data": data, **({} if labels is None else {"labels": labels})}, 4)

    write([1, 1000, 17])
    assert read_labels("imagenet64", "test", tmp_path).values.tolist() == [0, 999, 16]
    for labels, needle in [([0, 1, 2], "holds label 0, expected 1..1000"), ([1001, 1, 2], "label 1001"),
                           ([1, 2], "labels for 3 images"), (None, "no 'labels'")]:  # fmt: skip
        path = write(labels)
        _one_line_error(lambda: read_labels("imagenet64", "test", tmp_path), path, needle, "Downsampled ImageNet")
        assert len(get_dataset("imagenet64", "test", tmp_path)) == 3  # the images alone still load


# ---------------------------------------------------------------------------------------------
# CelebA: list_attr_celeba.txt, aligned with list_eval_partition.txt


def _celeba(root, codes, attributes=None):
    images = (np.full((3, 60, 60), 10 * i, np.uint8) for i in range(len(codes)))
    partition, _ = write_celeba(root, codes, images, attributes=attributes)
    return partition.parent


CODES = [2, 0, 1, 0, 0, 2, 1, 0, 0, 2]  # interleaved: each split's rows are scattered through the files


def test_celeba_attribute_file_is_written_as_celeba_lays_it_out_and_read_aligned(tmp_path):
    attributes = np.random.default_rng(5).integers(0, 2, (len(CODES), 40))
    folder = _celeba(tmp_path, CODES, attributes)
    lines = (folder / "list_attr_celeba.txt").read_text().splitlines()
    assert lines[0] == "10" and lines[1].split() == list(ATTRIBUTE_NAMES)
    assert lines[2].split()[0] == "000001.jpg" and lines[2].split()[1:] == [str(2 * v - 1) for v in attributes[0]]
    for split, code in zip(SPLITS, (0, 1, 2)):
        labels = read_labels("celeba64", split, tmp_path)
        rows = [i for i, c in enumerate(CODES) if c == code]  # partition order
        assert (
            labels.kind == "attributes" and labels.names == ATTRIBUTE_NAMES and labels.values.shape == (len(rows), 40)
        )
        assert np.array_equal(labels.values, attributes[rows])
        assert len(labels) == len(read_split("celeba64", split, tmp_path))


def test_celeba_attributes_read_from_a_file_written_by_hand(tmp_path):
    folder = _celeba(tmp_path, [0, 0, 1, 2])
    names = [f"A{k}" for k in range(40)]
    rows = [f"{i:06d}.jpg " + "  ".join(["1" if (i + k) % 3 == 0 else "-1" for k in range(40)]) for i in (4, 2, 1, 3)]
    (folder / "list_attr_celeba.txt").write_text("4\n" + " ".join(names) + " \n" + "\n".join(rows) + "\n")
    labels = read_labels("celeba64", "train", tmp_path)
    assert labels.names == tuple(names)
    assert labels.values.tolist() == [[int((i + k) % 3 == 0) for k in range(40)] for i in (1, 2)]  # by file name


@pytest.mark.parametrize(
    "damage, needles",
    [
        ("missing", ["celeba64 attributes not found"]),
        ("truncated", ["truncated", "says 10 images, it lists 9"]),
        ("value", [":5:", "values of -1 or 1"]),
        ("short row", [":4:", "got 39 fields"]),
        ("no row", ["no attributes for 000003.jpg", "list_eval_partition.txt"]),
        ("count line", [":1:", "expected the number of images"]),
        ("39 attributes", ["names 39 attributes, expected CelebA's 40"]),
    ],
)
def test_a_bad_celeba_attribute_file_is_one_line_and_the_images_still_load(tmp_path, damage, needles):
    folder = _celeba(tmp_path, CODES, np.ones((len(CODES), 40), np.int64))
    path = folder / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        lines = lines[:-1]
    elif damage == "value":
        lines[4] = lines[4][:-2] + " 0"
    elif damage == "short row":
        lines[3] = lines[3][:-3]
    elif damage == "no row":
        lines = [lines[0].replace("10", "9"), *lines[1:4], *lines[5:]]
    elif damage == "count line":
        lines[0] = "many"
    elif damage == "39 attributes":
        lines = lines[:1] + [" ".join(lines[1].split()[:39])] + [line[:-3] for line in lines[2:]]
    if damage != "missing":
        path.write_text("\n".join(lines) + "\n")
    _one_line_error(lambda: read_labels("celeba64", "val", tmp_path), path, "finc data download celeba64", *needles)
    assert len(get_dataset("celeba64", "val", tmp_path, use_cache=False)) == 2


# ---------------------------------------------------------------------------------------------
# Labels


def test_labels_check_their_shape_and_take_rows():
    labels = Labels(np.array([3, 1, 2], np.uint8), "class", 10)
    assert labels.values.dtype == np.int64 and labels.take(np.array([2, 0])).values.tolist() == [2, 3]
    with pytest.raises(AssertionError):
        Labels(np.zeros((3, 2)), "class", 10)
    with pytest.raises(AssertionError):
        Labels(np.zeros((3, 2)), "attributes", 3)


# ---------------------------------------------------------------------------------------------
# image and label pairs, and the prepared cache


def _no_source_labels(monkeypatch):
    """Reading labels from the sources fails: what is returned came from the prepared cache."""

    def refuse(*args, **kwargs):
        raise AssertionError("labels read from the sources")

    monkeypatch.setattr(load, "read_labels", refuse)


@pytest.fixture
def cifar(tmp_path):
    train_images, test = _pattern(50, 3, 32), _pattern(6, 3, 32, offset=9)
    train_labels, test_labels = _classes(50, 10, 6), _classes(6, 10, 7)
    write_cifar10(tmp_path / "data", train_images, test, train_labels, test_labels, label_names=CIFAR_NAMES)
    truth = _by_image(np.concatenate([train_images, test]), np.concatenate([train_labels, test_labels]))
    return tmp_path / "data", tmp_path / "cache", truth


def _assert_labelled(ds: LabelledDataset, truth: dict) -> None:
    idx = torch.tensor([len(ds) - 1, 0, len(ds) // 2])
    images, labels = ds.batch(idx)
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64 and len(labels) == 3
    for image, label in zip(images, labels):
        assert truth[image.numpy().tobytes()] == int(label)
    image, label = ds[1]
    assert truth[image.numpy().tobytes()] == int(label)


def test_labelled_pairs_follow_the_holdout_from_sources_and_from_the_cache(cifar, monkeypatch):
    data, cache_dir, truth = cifar
    for split in SPLITS:
        _assert_labelled(get_labelled_dataset("cifar10", split, data, use_cache=False), truth)
    rows = prepare("cifar10", data, cache_dir)["splits"]
    assert all(r["labels"] and r["labels_problem"] is None for r in rows)
    _no_source_labels(monkeypatch)
    for split in SPLITS:
        ds = get_labelled_dataset("cifar10", split, data, cache_dir=cache_dir)
        assert isinstance(ds.images, MappedImages) and ds.labels.names == tuple(CIFAR_NAMES)
        _assert_labelled(ds, truth)


def test_prepared_labels_sit_beside_the_images_as_a_plain_npy(cifar):
    data, cache_dir, _ = cifar
    prepare("cifar10", data, cache_dir, splits=("val",))
    values = np.load(cache_dir / "cifar10-val.labels.npy")
    assert values.dtype == np.int64 and np.array_equal(values, read_labels("cifar10", "val", data).values)
    info = json.loads((cache_dir / "cifar10-val.json").read_text())
    assert (info["labels"]["kind"], info["labels"]["num_classes"], info["labels"]["shape"]) == ("class", 10, [5])
    assert info["labels"]["names"] == CIFAR_NAMES and len(info["labels"]["sources"]) == 6  # 5 batches + meta


def test_a_cache_of_format_2_without_labels_is_stale_and_never_used(cifar):
    data, cache_dir, truth = cifar
    prepare("cifar10", data, cache_dir, splits=("train",))
    assert cache.FORMAT_VERSION == 3
    manifest = cache_dir / "cifar10-train.json"
    info = json.loads(manifest.read_text())
    info["format_version"] = 2
    del info["labels"], info["labels_problem"]
    manifest.write_text(json.dumps(info))
    status = check("cifar10", "train", data, cache_dir)
    assert status.state == "stale" and "format 2" in status.reason and "\n" not in status.reason
    notes: list[str] = []
    ds = get_labelled_dataset("cifar10", "train", data, cache_dir=cache_dir, notify=notes.append)
    assert not isinstance(ds.images, MappedImages) and len(notes) == 1 and "stale" in notes[0]
    _assert_labelled(ds, truth)
    assert prepare("cifar10", data, cache_dir, splits=("train",))["splits"][0]["written"]  # prepared again


def test_without_label_files_the_images_are_prepared_and_labels_are_added_later(tmp_path, monkeypatch):
    data, cache_dir = tmp_path / "data", tmp_path / "cache"
    train_images, test = _pattern(20, 1, 28), _pattern(4, 1, 28, offset=3)
    write_mnist(data, train_images, test)  # images only
    rows = prepare("mnist", data, cache_dir)["splits"]
    missing = data / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    assert all(r["written"] and not r["labels"] for r in rows)
    assert str(missing) in rows[0]["labels_problem"] and not (cache_dir / "mnist-train.labels.npy").exists()
    ds = get_dataset("mnist", "train", data, cache_dir=cache_dir)
    assert isinstance(ds, MappedImages) and len(ds) == 18  # unconditional use: the prepared images
    _one_line_error(lambda: get_labels("mnist", "train", data, cache_dir=cache_dir), missing)
    _one_line_error(lambda: get_labelled_dataset("mnist", "val", data, cache_dir=cache_dir), missing)

    classes = _classes(24, 10, 8)
    raw = data / "MNIST" / "raw"
    write_idx(raw / "train-labels-idx1-ubyte", classes[:20])
    write_idx(raw / "t10k-labels-idx1-ubyte", classes[20:])
    images_mtime = (cache_dir / "mnist-train.npy").stat().st_mtime_ns
    rows = prepare("mnist", data, cache_dir)["splits"]
    assert not any(r["written"] for r in rows) and all(r["labels"] for r in rows)  # only the labels were added
    assert (cache_dir / "mnist-train.npy").stat().st_mtime_ns == images_mtime
    _no_source_labels(monkeypatch)
    truth = _by_image(np.concatenate([train_images, test]), classes)
    for split in SPLITS:
        _assert_labelled(get_labelled_dataset("mnist", split, data, cache_dir=cache_dir), truth)


@pytest.mark.parametrize("change", ["label file rewritten", "labels array corrupted", "labels array removed"])
def test_prepared_labels_that_no_longer_match_are_read_from_the_sources(tmp_path, change):
    data, cache_dir = tmp_path / "data", tmp_path / "cache"
    old, new = np.arange(12) % 10, (np.arange(12) + 3) % 10
    write_mnist(data, _pattern(12, 1, 28), _pattern(3, 1, 28, offset=1), train_labels=old, test_labels=[1, 2, 3])
    prepare("mnist", data, cache_dir)
    cached = cache_dir / "mnist-train.labels.npy"
    if change == "label file rewritten":
        path = write_idx(data / "MNIST" / "raw" / "train-labels-idx1-ubyte", new)
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
        expected, reason = new, "source files changed"
    elif change == "labels array corrupted":
        array = np.load(cached)
        array[0] = 7
        np.save(cached, array)
        expected, reason = old, "checksum"
    else:
        cached.unlink()
        expected, reason = old, "cannot be used"
    notes: list[str] = []
    labels = get_labels("mnist", "train", data, cache_dir=cache_dir, notify=notes.append)
    truth = _by_image(_pattern(12, 1, 28), expected)
    expected = [truth[im.tobytes()] for im in read_split("mnist", "train", data).images.numpy()]
    assert labels.values.tolist() == expected
    assert len(notes) == 1 and reason in notes[0] and "finc data prepare mnist" in notes[0] and "\n" not in notes[0]
    assert check("mnist", "train", data, cache_dir).state == "current"  # the images are not stale for it
    assert prepare("mnist", data, cache_dir, splits=("train",))["splits"][0]["labels"]
    assert get_labels("mnist", "train", data, cache_dir=cache_dir).values.tolist() == expected


def test_celeba_attributes_through_the_cache_follow_the_partition(tmp_path, monkeypatch):
    attributes = np.random.default_rng(9).integers(0, 2, (len(CODES), 40))
    _celeba(tmp_path / "data", CODES, attributes)
    # decoded here: the process pool (and its start-up) is tested in tests/test_cache.py
    monkeypatch.setattr(cache, "_chunks", lambda ds, name, per_chunk, workers: [(0, ds.batch(torch.arange(len(ds))))])
    prepare("celeba64", tmp_path / "data", tmp_path / "cache")
    _no_source_labels(monkeypatch)
    for split, code in zip(SPLITS, (0, 1, 2)):
        ds = get_labelled_dataset("celeba64", split, tmp_path / "data", cache_dir=tmp_path / "cache")
        assert isinstance(ds.images, MappedImages) and ds.labels.names == ATTRIBUTE_NAMES
        images, labels = ds.batch(torch.arange(len(ds)))
        assert labels.shape == (len(ds), 40) and np.array_equal(labels.numpy(), attributes[np.array(CODES) == code])
        # each image is the solid colour 10·(its row in the files): its attributes are that row's
        rows = np.rint(images[:, 0, 32, 32].numpy() / 10).astype(np.int64)
        assert np.array_equal(labels.numpy(), attributes[rows])


def test_an_mnist_folder_of_image_files_alone_still_trains(tmp_path):
    write_mnist(tmp_path / "data", _pattern(40, 1, 28), _pattern(4, 1, 28, offset=3), gz=True)
    overrides = {"model.steps": 1, "model.hidden": 8, "model.dequantization": "uniform", "train.batch_size": 8}
    overrides |= {"train.steps": 2, "train.eval_every": 2, "train.warmup_steps": 0}
    result = train(load_preset("mnist", {**overrides, "data.data_dir": str(tmp_path / "data")}), tmp_path / "run")
    assert result["steps"] == 2 and np.isfinite(result["val_bpd"])
