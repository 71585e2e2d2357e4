"""`finc data download` against a local HTTP server that serves tiny archives in each dataset's real format."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import tarfile
import threading
import types
import zipfile
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tv
import torchvision.datasets.celeba as tv_celeba
import typer
from torchvision.datasets.utils import download_url
from typer.testing import CliRunner

from finc_cli.cli.data import register
from finc_cli.data.formats.batch_files import write_py2_pickle
from finc_cli.data.formats.celeba import write_celeba
from finc_cli.data.formats.cifar10 import write_cifar10
from finc_cli.data.formats.mnist import write_idx
from finc_cli.data.load import get_dataset

app = typer.Typer()
register(app)

FOLDERS = {"mnist": "MNIST", "cifar10": "cifar-10-batches-py", "celeba64": "celeba"}
CELEBA_SPLITS = [0, 0, 0, 1, 2, 2]  # list_eval_partition codes of the served JPEGs: 3 train, 1 val, 2 test


def _pattern(n: int, c: int, h: int, w: int, offset: int = 0) -> np.ndarray:
    """Distinct, known uint8 images (N, C, H, W)."""
    i, ch, pix = np.meshgrid(np.arange(n), np.arange(c), np.arange(h * w), indexing="ij")
    return ((7 * pix + 50 * ch + 31 * i + offset) % 256).astype(np.uint8).reshape(n, c, h, w)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# the served files, each in its dataset's real format


def _write_mnist(folder: Path) -> dict:
    """Gzipped idx files, flat as on the mirrors: images (N, 28, 28) uint8, labels (N,) uint8."""
    train, test = _pattern(12, 1, 28, 28), _pattern(4, 1, 28, 28, offset=3)
    for stem, images in (("train", train), ("t10k", test)):
        write_idx(folder / f"{stem}-images-idx3-ubyte", images, gz=True)
        write_idx(folder / f"{stem}-labels-idx1-ubyte", (np.arange(len(images)) % 10).astype(np.uint8), gz=True)
    resources = [(p.name, _md5(p)) for p in sorted(folder.iterdir())]
    return {"train": train, "test": test, "resources": resources}


def _write_cifar(folder: Path) -> dict:
    """cifar-10-python.tar.gz holding cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}."""
    train, test = _pattern(10, 3, 32, 32), _pattern(3, 3, 32, 32, offset=9)
    batches = folder.parent / f"{folder.name}-files"  # the files the tarball holds, written by finc's writer
    paths = write_cifar10(batches, train, test)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    meta = {b"num_cases_per_batch": 2, b"label_names": names, b"num_vis": 3072}
    paths.append(write_py2_pickle(paths[0].parent / "batches.meta", meta))
    folder.mkdir()
    tgz = folder / "cifar-10-python.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        for path in paths:
            tar.add(path, arcname=f"cifar-10-batches-py/{path.name}")
    md5s = {path.name: _md5(path) for path in paths}
    return {"train": train, "test": test, "tgz_md5": _md5(tgz), "md5s": md5s}


_ATTRS = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair Blond_Hair "
    "Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones "
    "Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline "
    "Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick "
    "Wearing_Necklace Wearing_Necktie Young"
).split()
_LANDMARKS = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"


def _write_celeba(folder: Path) -> dict:
    """img_align_celeba.zip (178x218 JPEGs under img_align_celeba/) and the five list files torchvision fetches."""
    images = (_pattern(1, 3, 218, 178, offset=40 * k)[0] for k in range(len(CELEBA_SPLITS)))
    partition, jpeg_folder = write_celeba(folder.parent / f"{folder.name}-files", CELEBA_SPLITS, images)
    jpegs = {p.name: p.read_bytes() for p in sorted(jpeg_folder.iterdir())}
    names = list(jpegs)
    folder.mkdir()
    with zipfile.ZipFile(folder / "img_align_celeba.zip", "w") as zf:
        for name, blob in jpegs.items():
            zf.writestr(f"img_align_celeba/{name}", blob)
    n = len(names)
    attr_rows = [
        f"{name} " + " ".join(f"{(-1) ** (j + k):2d}" for j in range(len(_ATTRS))) for k, name in enumerate(names)
    ]
    texts = {
        "list_attr_celeba.txt": [str(n), " ".join(_ATTRS) + " ", *attr_rows],
        "identity_CelebA.txt": [f"{name} {2880 + k}" for k, name in enumerate(names)],
        "list_bbox_celeba.txt": [str(n), "image_id x_1 y_1 width height"]
        + [f"{name}    95  71 226 313" for name in names],
        "list_landmarks_align_celeba.txt": [str(n), _LANDMARKS]
        + [f"{name} 69  109  106  113   77  142   73  152  108  154" for name in names],
    }
    for filename, lines in texts.items():
        (folder / filename).write_text("\n".join(lines) + "\n")
    shutil.copy(partition, folder / partition.name)
    file_list = [(p.name, _md5(p), p.name) for p in sorted(folder.iterdir())]  # (drive id, md5, filename)
    return {"jpegs": jpegs, "file_list": file_list}


# ---------------------------------------------------------------------------------------------
# the local server and the patched downloaders


@dataclass
class Served:
    url: str
    mnist: dict
    cifar10: dict
    celeba64: dict
    requests: list = field(default_factory=list)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    data = {"mnist": _write_mnist(root / "mnist"), "cifar10": _write_cifar(root / "cifar"), "celeba64": {}}
    data["celeba64"] = _write_celeba(root / "celeba")
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):  # keep the test output clean
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield Served(f"http://127.0.0.1:{httpd.server_address[1]}", **data, requests=requests)
    httpd.shutdown()
    httpd.server_close()


def _point_at(monkeypatch, served: Served, url: str) -> None:
    """Every torchvision URL and md5 now names the served files, fetched from `url`."""
    monkeypatch.setattr(tv.MNIST, "mirrors", [f"{url}/mnist/"])
    monkeypatch.setattr(tv.MNIST, "resources", served.mnist["resources"])
    md5s = served.cifar10["md5s"]
    monkeypatch.setattr(tv.CIFAR10, "url", f"{url}/cifar/cifar-10-python.tar.gz")
    monkeypatch.setattr(tv.CIFAR10, "tgz_md5", served.cifar10["tgz_md5"])
    monkeypatch.setattr(tv.CIFAR10, "train_list", [[f"data_batch_{k}", md5s[f"data_batch_{k}"]] for k in range(1, 6)])
    monkeypatch.setattr(tv.CIFAR10, "test_list", [["test_batch", md5s["test_batch"]]])
    monkeypatch.setattr(tv.CIFAR10, "meta", {**tv.CIFAR10.meta, "md5": md5s["batches.meta"]})
    monkeypatch.setattr(tv.CelebA, "file_list", served.celeba64["file_list"])

    def from_drive(file_id, root, filename=None, md5=None):
        download_url(f"{url}/celeba/{file_id}", root, filename, md5)

    monkeypatch.setattr(tv_celeba, "download_file_from_google_drive", from_drive)


@pytest.fixture
def patched(served, monkeypatch):
    _point_at(monkeypatch, served, served.url)
    monkeypatch.setitem(sys.modules, "gdown", types.ModuleType("gdown"))  # the Drive fetch is replaced above
    monkeypatch.delenv("FINC_DATA_DIR", raising=False)
    for var in ("no_proxy", "NO_PROXY"):  # talk to 127.0.0.1 directly even where a proxy is configured
        monkeypatch.setenv(var, "*")
    return served


def invoke(*args):
    return CliRunner().invoke(app, ["data", "download", *map(str, args)])


def download_json(name: str, data_dir: Path) -> dict:
    result = invoke(name, "--data-dir", data_dir, "--json")
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert result.stdout.count("\n") == 1, result.stdout  # one JSON object, nothing else on stdout
    return json.loads(result.stdout)


def one_line_error(result, code: int) -> str:
    assert result.exit_code == code, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert result.stdout == "" and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr
    return errors[0]


def _same_images(got: torch.Tensor, want: np.ndarray) -> bool:
    """Equal as sets of images (the train/val holdout reorders nothing but takes a subset)."""
    return sorted(x.tobytes() for x in got.numpy()) == sorted(x.tobytes() for x in want)


# ---------------------------------------------------------------------------------------------
# downloads that work


def test_mnist_download_reads_back_as_the_served_images(patched, tmp_path):
    report = download_json("mnist", tmp_path)
    assert report["path"] == str(tmp_path / "MNIST") and report["already_present"] is False
    assert report["files"] == 8 and report["bytes"] > 0  # the four .gz files and their extracted copies
    assert sorted(os.listdir(tmp_path)) == ["MNIST"]  # no temporary folder left
    assert torch.equal(get_dataset("mnist", "test", tmp_path).images, torch.from_numpy(patched.mnist["test"]))
    train, val = (get_dataset("mnist", s, tmp_path).images for s in ("train", "val"))
    assert _same_images(torch.cat([train, val]), patched.mnist["train"]) and len(val) == 1


def test_cifar10_download_reads_back_and_leaves_no_tarball(patched, tmp_path):
    report = download_json("cifar10", tmp_path)
    assert report["files"] == 7 and report["path"] == str(tmp_path / "cifar-10-batches-py")
    assert sorted(os.listdir(tmp_path)) == ["cifar-10-batches-py"]  # the tarball went with the temporary folder
    assert torch.equal(get_dataset("cifar10", "test", tmp_path).images, torch.from_numpy(patched.cifar10["test"]))
    train, val = (get_dataset("cifar10", s, tmp_path).images for s in ("train", "val"))
    assert _same_images(torch.cat([train, val]), patched.cifar10["train"])


def test_celeba64_download_reads_back_each_split(patched, tmp_path):
    report = download_json("celeba64", tmp_path)
    folder = tmp_path / "celeba"
    assert report["path"] == str(folder) and sorted(os.listdir(tmp_path)) == ["celeba"]
    assert not (folder / "img_align_celeba.zip").exists()  # extracted, then dropped: finc reads the JPEGs
    for name, blob in patched.celeba64["jpegs"].items():
        assert (folder / "img_align_celeba" / name).read_bytes() == blob
    for split, code in (("train", 0), ("val", 1), ("test", 2)):
        ds = get_dataset("celeba64", split, tmp_path)
        assert len(ds) == CELEBA_SPLITS.count(code)
        x = ds[0]
        assert x.dtype == torch.uint8 and x.shape == (3, 64, 64)


def test_second_download_is_already_present_and_fetches_nothing(patched, tmp_path):
    first = download_json("mnist", tmp_path)
    before = len(patched.requests)
    second = download_json("mnist", tmp_path)
    assert second["already_present"] is True and len(patched.requests) == before
    assert (second["files"], second["bytes"], second["path"]) == (first["files"], first["bytes"], first["path"])


def test_json_is_one_object_on_stdout_and_the_table_is_the_default(patched, tmp_path):
    result = invoke("mnist", "--data-dir", tmp_path / "new" / "dir", "--json")  # missing folders are created
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"dataset", "data_dir", "path", "files", "bytes", "seconds", "already_present"}
    assert report["data_dir"] == str(tmp_path / "new" / "dir")
    table = invoke("mnist", "--data-dir", tmp_path / "new" / "dir")
    assert table.exit_code == 0 and "already_present" in table.stdout and "True" in table.stdout


# ---------------------------------------------------------------------------------------------
# failures: exit 1, one line, nothing left behind


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_checksum_mismatch_exits_1_and_leaves_the_data_dir_as_it_was(patched, monkeypatch, tmp_path, name):
    monkeypatch.setattr(tv.MNIST, "resources", [(f, "0" * 32) for f, _ in patched.mnist["resources"]])
    monkeypatch.setattr(tv.CIFAR10, "tgz_md5", "0" * 32)
    (tmp_path / "keep.txt").write_text("mine")
    line = one_line_error(invoke(name, "--data-dir", tmp_path), 1)
    assert "download failed" in line and "checksum" in line
    assert sorted(os.listdir(tmp_path)) == ["keep.txt"]


@pytest.mark.parametrize("name", ["mnist", "cifar10", "celeba64"])
def test_unreachable_server_exits_1_and_removes_the_data_dir_it_created(patched, monkeypatch, tmp_path, name):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _point_at(monkeypatch, patched, f"http://127.0.0.1:{port}")
    line = one_line_error(invoke(name, "--data-dir", tmp_path / "data" / "root"), 1)
    assert "download failed" in line and "refused" in line.lower()
    assert os.listdir(tmp_path) == []


def test_celeba64_google_drive_refusal_exits_1_and_leaves_nothing(patched, monkeypatch, tmp_path):
    quota = type("FileURLRetrievalError", (Exception,), {"__module__": "gdown.exceptions"})  # gdown's own class

    def refused(file_id, root, filename=None, md5=None):
        raise quota("Failed to retrieve file url:\n\n\tToo many users have viewed or downloaded this file recently.")

    monkeypatch.setattr(tv_celeba, "download_file_from_google_drive", refused)
    line = one_line_error(invoke("celeba64", "--data-dir", tmp_path), 1)
    assert "Google Drive refused" in line and "Too many users" in line and os.listdir(tmp_path) == []


def test_celeba64_without_gdown_names_the_install_command(patched, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gdown", None)  # import gdown -> ImportError
    line = one_line_error(invoke("celeba64", "--data-dir", tmp_path / "d"), 1)
    assert "pip install gdown" in line and not (tmp_path / "d").exists()


# ---------------------------------------------------------------------------------------------
# bad input: exit 2, one line, no network


@pytest.mark.parametrize("size", [32, 64])
def test_imagenet_says_where_to_get_it_and_the_layout(patched, tmp_path, size):
    before = len(patched.requests)
    line = one_line_error(invoke(f"imagenet{size}", "--data-dir", tmp_path), 2)
    assert "image-net.org" in line and f"Downsampled ImageNet {size}x{size}" in line
    assert f"Imagenet{size}_train/train_data_batch_1..10" in line and f"Imagenet{size}_val/val_data" in line
    assert len(patched.requests) == before and os.listdir(tmp_path) == []


def test_digits_needs_no_download(patched, tmp_path):
    assert "scikit-learn" in one_line_error(invoke("digits", "--data-dir", tmp_path), 2)


def test_unknown_dataset_names_the_choices(patched, tmp_path):
    line = one_line_error(invoke("svhn", "--data-dir", tmp_path), 2)
    assert "'svhn'" in line and "mnist, cifar10, celeba64" in line


def test_no_data_dir_says_to_pass_one(patched):
    assert "--data-dir" in one_line_error(invoke("mnist"), 2)


def test_incomplete_existing_folder_is_refused_untouched(patched, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte").write_bytes(b"partial")
    before = len(patched.requests)
    line = one_line_error(invoke("mnist", "--data-dir", tmp_path), 2)
    assert "t10k-images-idx3-ubyte" in line and len(patched.requests) == before
    assert os.listdir(raw) == ["train-images-idx3-ubyte"] and sorted(os.listdir(tmp_path)) == ["MNIST"]
