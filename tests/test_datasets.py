"""Dataset loaders read tiny files written here in each exact on-disk format."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from finc_cli.data.augment import Augment
from finc_cli.data.datasets import DATASETS, dataset_info, resolve_data_dir
from finc_cli.data.formats.batch_files import to_rows, write_pickle
from finc_cli.data.formats.celeba import write_celeba
from finc_cli.data.formats.cifar10 import write_cifar10
from finc_cli.data.formats.imagenet import write_imagenet
from finc_cli.data.formats.mnist import write_idx, write_mnist
from finc_cli.data.load import get_dataset
from finc_cli.errors import DatasetError


def _pattern(n: int, c: int, s: int, offset: int = 0) -> np.ndarray:
    """Distinct, known uint8 images (N, C, S, S): every image and plane differs."""
    i, ch, pix = np.meshgrid(np.arange(n), np.arange(c), np.arange(s * s), indexing="ij")
    return ((7 * pix + 50 * ch + 31 * i + offset) % 256).astype(np.uint8).reshape(n, c, s, s)


# ---------------------------------------------------------------------------------------------
# tiny sets, written by each format's own writer


@pytest.fixture
def mnist_root(tmp_path):
    train, test = _pattern(12, 1, 28), _pattern(4, 1, 28, offset=3)
    write_mnist(tmp_path, train, test, gz=True)  # as distributed
    return tmp_path, train, test


@pytest.fixture
def cifar_root(tmp_path):
    train, test = _pattern(15, 3, 32), _pattern(4, 3, 32, offset=9)
    write_cifar10(tmp_path, train, test)
    return tmp_path, train, test


def _write_imagenet(root: Path, size: int, npz: bool, single_folder: bool = False):
    """12 training images in batches 1..10 (numeric order must put 10 last) and 3 validation images."""
    train, val = _pattern(12, 3, size), _pattern(3, 3, size, offset=50)
    write_imagenet(root, size, np.array_split(train, 10), val, npz=npz, one_folder=single_folder)
    return train, val


def _write_celeba(root: Path, n_train: int = 12, n_val: int = 2, n_test: int = 4) -> tuple[Path, list[str]]:
    """Random JPEGs of CelebA's aligned size (H 218, W 178) in the CelebA layout: (celeba folder, file names)."""
    codes = [0] * n_train + [1] * n_val + [2] * n_test
    rng = np.random.default_rng(0)
    images = (rng.integers(0, 256, (3, 218, 178), dtype=np.uint8) for _ in codes)
    partition, _ = write_celeba(root, codes, images)
    return partition.parent, [line.split()[0] for line in partition.read_text().splitlines()]


def _without(images: np.ndarray, held_out: torch.Tensor) -> np.ndarray:
    """`images` with the rows equal to `held_out` removed (patterns are distinct)."""
    keep = [i for i, im in enumerate(images) if not any(torch.equal(torch.from_numpy(im), h) for h in held_out)]
    assert len(keep) == len(images) - len(held_out)
    return images[keep]


def _rows_of(ds) -> set[bytes]:
    return {ds[i].numpy().tobytes() for i in range(len(ds))}


# ---------------------------------------------------------------------------------------------
# names, splits, data dir


def test_info_and_names():
    assert DATASETS == ("digits", "mnist", "cifar10", "imagenet32", "imagenet64", "celeba64")
    assert dataset_info("digits").bins == 17 and dataset_info("mnist").height == 28
    assert (dataset_info("imagenet64").channels, dataset_info("imagenet64").width) == (3, 64)
    with pytest.raises(DatasetError, match="known datasets: digits, mnist"):
        dataset_info("svhn")
    with pytest.raises(DatasetError, match="known datasets"):
        get_dataset("svhn", "train")


def test_bad_split():
    with pytest.raises(DatasetError, match="choose one of train, val, test"):
        get_dataset("digits", "valid")


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("FINC_DATA_DIR", raising=False)
    assert resolve_data_dir(None) is None
    monkeypatch.setenv("FINC_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"


@pytest.mark.parametrize("name", ["mnist", "cifar10", "imagenet32", "imagenet64", "celeba64"])
def test_no_data_dir_says_how_to_fix(monkeypatch, name):
    monkeypatch.delenv("FINC_DATA_DIR", raising=False)
    with pytest.raises(DatasetError, match="pass --data-dir DIR or set FINC_DATA_DIR"):
        get_dataset(name, "train")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
        ("cifar10", "cifar-10-batches-py/data_batch_1..5"),
        ("imagenet32", "Imagenet32_train/train_data_batch_1..10"),
        ("imagenet64", "Imagenet64_val/val_data"),
        ("celeba64", "celeba/list_eval_partition.txt"),
    ],
)
def test_missing_dataset_names_expected_path(tmp_path, name, expected):
    with pytest.raises(DatasetError) as err:
        get_dataset(name, "train", str(tmp_path / "nowhere"))
    msg = str(err.value)
    assert f"{name} not found" in msg and str(tmp_path / "nowhere") in msg and expected in msg
    assert "FINC_DATA_DIR" in msg and "\n" not in msg


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_splits():
    sizes = {s: len(get_dataset("digits", s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 1257, "val": 180, "test": 360}
    ds = get_dataset("digits", "train")
    assert ds[0].dtype == torch.uint8 and ds[0].shape == (1, 8, 8)
    assert ds.images.shape == (1257, 1, 8, 8) and int(ds.images.max()) == 16
    from sklearn.datasets import load_digits

    all_images = torch.from_numpy(load_digits().images.astype(np.uint8))
    union = torch.cat([get_dataset("digits", s).images[:, 0] for s in ("train", "val", "test")])
    # the three splits partition the 1797 images: same multiset of images
    assert sorted(map(bytes, union.reshape(1797, -1).numpy())) == sorted(
        map(bytes, all_images.reshape(1797, -1).numpy())
    )


# ---------------------------------------------------------------------------------------------
# MNIST


def test_mnist_splits_roundtrip(mnist_root):
    root, train, test = mnist_root
    ds_train, ds_val, ds_test = (get_dataset("mnist", s, str(root)) for s in ("train", "val", "test"))
    assert (len(ds_train), len(ds_val), len(ds_test)) == (11, 1, 4)
    assert ds_train[0].shape == (1, 28, 28) and ds_train[0].dtype == torch.uint8
    assert torch.equal(ds_test.images, torch.from_numpy(test))
    assert torch.equal(ds_train.images, torch.from_numpy(_without(train, ds_val.images)))
    again = get_dataset("mnist", "val", str(root))
    assert torch.equal(again.images, ds_val.images)


@pytest.mark.parametrize("layout", ["raw", "flat"])
def test_mnist_other_layouts_and_env(tmp_path, monkeypatch, layout):
    folder = tmp_path / "raw" if layout == "raw" else tmp_path
    images = _pattern(5, 1, 28)
    write_idx(folder / "t10k-images-idx3-ubyte", images)
    monkeypatch.setenv("FINC_DATA_DIR", str(tmp_path))
    assert torch.equal(get_dataset("mnist", "test").images, torch.from_numpy(images))


@pytest.mark.parametrize(
    "damage, message",
    [("labels", "magic number 2049, expected 2051"), ("cut", "truncated"), ("cut gz", "truncated")],
)
def test_mnist_malformed(tmp_path, damage, message):
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    if damage == "labels":  # a labels file (idx1) where the images should be
        write_idx(path, np.arange(10, dtype=np.uint8))
    else:  # the idx content 10 bytes short, gzipped or not
        raw = write_idx(path, _pattern(3, 1, 28)).read_bytes()[:-10]
        if damage == "cut gz":
            path.unlink()
            path = path.with_name(path.name + ".gz")
            raw = gzip.compress(raw)
        path.write_bytes(raw)
    with pytest.raises(DatasetError, match=message) as err:
        get_dataset("mnist", "test", str(tmp_path))
    assert str(path) in str(err.value)


def test_mnist_truncated_gzip_stream(tmp_path):
    path = write_idx(tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte", _pattern(3, 1, 28), gz=True)
    path.write_bytes(path.read_bytes()[:-20])  # cut the gzip stream itself
    with pytest.raises(DatasetError, match="idx file") as err:
        get_dataset("mnist", "test", str(tmp_path))
    assert str(path) in str(err.value)


# ---------------------------------------------------------------------------------------------
# CIFAR-10


def test_cifar_splits_roundtrip(cifar_root):
    root, train, test = cifar_root
    ds_train, ds_val, ds_test = (get_dataset("cifar10", s, str(root)) for s in ("train", "val", "test"))
    assert (len(ds_train), len(ds_val), len(ds_test)) == (14, 1, 4)
    # pixel values and R, G, B plane order survive exactly
    assert torch.equal(ds_test[2], torch.from_numpy(test[2]))
    assert int(ds_test[2][1, 0, 0]) == int(to_rows(test)[2, 1024])  # first green pixel
    assert torch.equal(ds_train.images, torch.from_numpy(_without(train, ds_val.images)))
    assert torch.equal(get_dataset("cifar10", "train", str(root)).images, ds_train.images)


def test_cifar_root_is_batches_folder(cifar_root):
    root, _, test = cifar_root
    ds = get_dataset("cifar10", "test", str(root / "cifar-10-batches-py"))
    assert torch.equal(ds.images, torch.from_numpy(test))


def test_cifar_missing_batch(cifar_root):
    root, _, _ = cifar_root
    (root / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DatasetError, match="data_batch_1..5"):
        get_dataset("cifar10", "train", str(root))


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_refused(cifar_root):
    root, _, _ = cifar_root
    path = root / "cifar-10-batches-py" / "test_batch"
    write_pickle(path, {b"data": _Exploit()}, protocol=2)
    with pytest.raises(DatasetError, match="refusing to load global") as err:
        get_dataset("cifar10", "test", str(root))
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "payload, message",
    [
        ({b"images": np.zeros((2, 3072), np.uint8)}, "expected 'data'"),
        ({b"data": np.zeros((2, 100), np.uint8)}, r"expected \(N, 3072\)"),
        ([1, 2, 3], "expected a dict"),
        (b"not a pickle", "cannot unpickle"),
    ],
)
def test_cifar_malformed(cifar_root, payload, message):
    root, _, _ = cifar_root
    path = root / "cifar-10-batches-py" / "test_batch"
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    else:
        write_pickle(path, payload, protocol=2)
    with pytest.raises(DatasetError, match=message) as err:
        get_dataset("cifar10", "test", str(root))
    assert str(path) in str(err.value)


# ---------------------------------------------------------------------------------------------
# downsampled ImageNet


@pytest.mark.parametrize(
    "size, npz, single", [(32, False, False), (32, True, False), (64, False, True), (64, True, True)]
)
def test_imagenet_layouts(tmp_path, size, npz, single):
    train, val = _write_imagenet(tmp_path, size, npz, single)
    name = f"imagenet{size}"
    ds_train, ds_val, ds_test = (get_dataset(name, s, str(tmp_path)) for s in ("train", "val", "test"))
    assert (len(ds_train), len(ds_val), len(ds_test)) == (11, 1, 3)
    assert ds_train[0].shape == (3, size, size) and ds_train[0].dtype == torch.uint8
    assert torch.equal(ds_test.images, torch.from_numpy(val))  # test = official val_data
    # train is the batches in numeric order (1, 2, 10) less the held-out image, order kept
    assert torch.equal(ds_train.images, torch.from_numpy(_without(train, ds_val.images)))


def test_imagenet_wrong_size(tmp_path):
    _write_imagenet(tmp_path, 32, npz=True)
    (tmp_path / "Imagenet32_val_npz").rename(tmp_path / "Imagenet64_val_npz")
    with pytest.raises(DatasetError, match=r"expected \(N, 12288\)") as err:
        get_dataset("imagenet64", "test", str(tmp_path))
    assert "val_data.npz" in str(err.value)


def test_imagenet_npz_missing_key(tmp_path):
    folder = tmp_path / "imagenet32"
    folder.mkdir()
    np.savez(folder / "val_data.npz", x=np.zeros((2, 3072), np.uint8))
    with pytest.raises(DatasetError, match="expected 'data'"):
        get_dataset("imagenet32", "test", str(tmp_path))


# ---------------------------------------------------------------------------------------------
# CelebA


def test_celeba(tmp_path):
    from PIL import Image

    folder, names = _write_celeba(tmp_path)
    ds_train, ds_val, ds_test = (get_dataset("celeba64", s, str(tmp_path)) for s in ("train", "val", "test"))
    assert (len(ds_train), len(ds_val), len(ds_test)) == (12, 2, 4)
    x = ds_test[1]
    assert x.shape == (3, 64, 64) and x.dtype == torch.uint8
    # crop rows 35..183, cols 15..163 (torchvision CenterCrop(148) on 178x218), then 64x64 bilinear
    with Image.open(folder / "img_align_celeba" / names[15]) as img:
        expected = np.asarray(img.convert("RGB").crop((15, 35, 163, 183)).resize((64, 64), Image.BILINEAR))
    assert torch.equal(x, torch.from_numpy(expected.copy()).permute(2, 0, 1))


def test_celeba_flat_layout_and_missing_image(tmp_path):
    folder, names = _write_celeba(tmp_path)
    assert len(get_dataset("celeba64", "val", str(folder))) == 2  # root may be the celeba folder
    (folder / "img_align_celeba" / names[-1]).unlink()  # last test image
    with pytest.raises(DatasetError, match="missing") as err:
        get_dataset("celeba64", "test", str(tmp_path))
    assert names[-1] in str(err.value)
    (folder / "img_align_celeba" / names[5]).unlink()  # a middle train image: found at load time
    ds = get_dataset("celeba64", "train", str(tmp_path))
    with pytest.raises(DatasetError, match=names[5]):
        ds[5]


def test_celeba_bad_partition_line(tmp_path):
    folder, _ = _write_celeba(tmp_path, n_train=2, n_val=1, n_test=1)
    (folder / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg train\n")
    with pytest.raises(DatasetError, match=r"list_eval_partition.txt:2"):
        get_dataset("celeba64", "train", str(tmp_path))


# ---------------------------------------------------------------------------------------------
# augmentation


def test_hflip_is_exact_flip():
    torch.manual_seed(0)
    ds = get_dataset("digits", "train", train_transform=True, hflip=True)
    x = ds.images[3]
    outs = [ds[3] for _ in range(40)]
    assert all(o.dtype == torch.uint8 and o.shape == x.shape for o in outs)
    assert all(torch.equal(o, x) or torch.equal(o, x.flip(-1)) for o in outs)
    assert any(torch.equal(o, x.flip(-1)) for o in outs) and any(torch.equal(o, x) for o in outs)


def test_translate_is_reflected_shift():
    torch.manual_seed(0)
    x = torch.from_numpy(_pattern(1, 3, 8))[0]  # (3, 8, 8)
    aug = Augment(translate=2)
    padded = torch.from_numpy(np.pad(x.numpy(), ((0, 0), (2, 2), (2, 2)), mode="reflect"))  # (3, 12, 12)
    crops = {(i, j): padded[:, i : i + 8, j : j + 8] for i in range(5) for j in range(5)}
    seen = set()
    for _ in range(60):
        y = aug(x)
        assert y.dtype == torch.uint8 and y.shape == x.shape
        match = [k for k, c in crops.items() if torch.equal(y, c)]
        assert match, "output is not a reflect-pad-and-crop of the input"
        seen.add(match[0])
    assert len(seen) > 5  # shifts vary


def test_augment_batch_is_per_image():
    torch.manual_seed(1)
    batch = torch.from_numpy(_pattern(16, 1, 8))
    out = Augment(hflip=True)(batch)
    flipped = [torch.equal(o, b.flip(-1)) for o, b in zip(out, batch)]
    assert all(f or torch.equal(o, b) for f, o, b in zip(flipped, out, batch))
    assert 0 < sum(flipped) < 16


def test_no_augmentation_outside_train():
    val = get_dataset("digits", "val", train_transform=True, hflip=True, translate=2)
    train = get_dataset("digits", "train", hflip=True, translate=2)
    assert val.transform is None and train.transform is None
    assert torch.equal(val[0], val.images[0])
    with pytest.raises(DatasetError, match="translate"):
        get_dataset("digits", "train", train_transform=True, translate=-1)


def test_imagenet_numpy1_pickle(tmp_path):
    # pickles written under numpy 1 name numpy.core.multiarray._reconstruct; protocol 2 spells globals as text
    val = _pattern(3, 3, 32)
    raw = pickle.dumps({"data": to_rows(val), "labels": [0, 1, 2]}, protocol=2)
    raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in raw
    (tmp_path / "Imagenet32_val").mkdir()
    (tmp_path / "Imagenet32_val" / "val_data").write_bytes(raw)
    assert torch.equal(get_dataset("imagenet32", "test", str(tmp_path)).images, torch.from_numpy(val))
