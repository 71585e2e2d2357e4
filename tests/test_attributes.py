"""finc attributes (latent directions per attribute or class) and finc manipulate (z + α·d, decoded exactly)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_run import invoke, ok
from PIL import Image
from tiny import TINY_OVERRIDES

from finc_cli.checkpoint import FORMAT, FORMAT_VERSION, load_model, save_checkpoint
from finc_cli.commands.attributes import DIRECTIONS_FORMAT, attributes, load_directions, save_directions
from finc_cli.commands.manipulate import move_latents, parse_alphas
from finc_cli.config import load_preset
from finc_cli.data.formats.celeba import ATTRIBUTE_NAMES, write_celeba
from finc_cli.data.load import get_labelled_dataset
from finc_cli.errors import ImageInputError, InputError
from finc_cli.files.images import save_grid, save_labelled_columns, save_png, to_uint8_255
from finc_cli.model import build_model


def _checkpoint(path, preset: str, **overrides):
    """A checkpoint of an untrained (ActNorm-initialised, perturbed) model: enough to encode and decode."""
    cfg = load_preset(preset, {**TINY_OVERRIDES, "model.dequantization": "uniform", **overrides})
    torch.manual_seed(0)
    model = build_model(cfg)
    c, h, w = model.image_shape
    model.initialize(torch.randint(0, model.bins, (8, c, h, w)))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    save_checkpoint(
        path, {"format": FORMAT, "format_version": FORMAT_VERSION, "config": cfg.to_dict(), "model": model.state_dict()}
    )
    return path


def _one_line_exit_2(result, *needles):
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert all(n in errors[0] for n in needles), errors[0]
    return errors[0]


# -- the directions -------------------------------------------------------------------------------


def test_digit_directions_are_class_mean_differences(trained_run, tmp_path):
    ckpt = trained_run / "last.pt"
    result = attributes(str(ckpt), out=str(tmp_path / "d.pt"), limit=60, batch_size=16)
    data = torch.load(tmp_path / "d.pt", weights_only=True)
    assert data["format"] == DIRECTIONS_FORMAT and data["names"] == [str(k) for k in range(10)]
    assert result["n_images"] == data["n_images"] == 60 and data["kind"] == "class"

    model, _, _ = load_model(ckpt)
    x, y = get_labelled_dataset("digits", "train").batch(torch.arange(60))
    latents = [z.double() for z in model.encode(x)]
    assert [tuple(d.shape) for d in data["directions"]] == [(10, *s) for s in model.latent_shapes()]
    for k in (0, 3, 9):
        has = y == k
        assert int(data["counts"][k]) == int(has.sum()) > 0
        for z, d in zip(latents, data["directions"]):
            expected = z[has].mean(0) - z[~has].mean(0)
            torch.testing.assert_close(d[k].double(), expected, rtol=1e-5, atol=1e-5)
            assert expected.abs().max() > 1e-3  # not trivially zero
    rows = {r["name"]: r for r in result["directions"]}
    assert rows["3"]["with"] + rows["3"]["without"] == 60 and rows["3"]["norm"] > 0


def test_the_batch_size_does_not_change_the_directions(trained_run, tmp_path):
    ckpt = str(trained_run / "last.pt")
    attributes(ckpt, out=str(tmp_path / "a.pt"), limit=40, batch_size=40, names=["7", "1"])
    attributes(ckpt, out=str(tmp_path / "b.pt"), limit=40, batch_size=7, names=["7,1"])
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in "ab")
    assert a["names"] == b["names"] == ["7", "1"]
    for da, db in zip(a["directions"], b["directions"]):
        torch.testing.assert_close(da, db, rtol=1e-5, atol=1e-5)


def _celeba_data(root, attributes_file: bool = True):
    rng = np.random.default_rng(0)
    codes = [0] * 12 + [1] * 2 + [2] * 2
    images = (rng.integers(0, 256, (3, 64, 64), dtype=np.uint8) for _ in codes)
    attrs = rng.integers(0, 2, (len(codes), 40))
    attrs[0], attrs[1] = 0, 1  # every attribute has train images on both sides
    write_celeba(root, codes, images, attributes=attrs if attributes_file else None, attribute_names=ATTRIBUTE_NAMES)
    return attrs[:12]


@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    root = tmp_path_factory.mktemp("celeba")
    attrs = _celeba_data(root / "data")
    ckpt = _checkpoint(root / "celeba.pt", "celeba64", **{"model.levels": 2})
    return root, ckpt, attrs


def test_celeba_gives_forty_named_directions_or_the_asked_ones(celeba, tmp_path):
    root, ckpt, attrs = celeba
    data_dir = root / "data"
    out = tmp_path / "all.pt"
    result = json.loads(ok(invoke("attributes", ckpt, "--data-dir", data_dir, "--out", out, "--json")).stdout)
    assert result["kind"] == "attributes" and result["n_images"] == 12
    data = torch.load(out, weights_only=True)
    assert data["names"] == list(ATTRIBUTE_NAMES) and all(d.shape[0] == 40 for d in data["directions"])
    assert data["counts"].tolist() == attrs.sum(0).tolist()

    asked = tmp_path / "two.pt"
    ok(invoke("attributes", ckpt, "--data-dir", data_dir, "--out", asked, "-a", "Smiling", "-a", "Young,Smiling"))
    two = torch.load(asked, weights_only=True)
    assert two["names"] == ["Smiling", "Young"]
    smiling = ATTRIBUTE_NAMES.index("Smiling")
    model, _, _ = load_model(ckpt)
    x, y = get_labelled_dataset("celeba64", "train", data_dir).batch(torch.arange(12))
    has = y[:, smiling] == 1
    for z, d, d_all in zip(model.encode(x), two["directions"], data["directions"]):
        z = z.double()
        torch.testing.assert_close(d[0].double(), z[has].mean(0) - z[~has].mean(0), rtol=1e-5, atol=1e-5)
        assert torch.equal(d[0], d_all[smiling])


def test_attributes_errors_are_one_line(celeba, trained_run, tmp_path):
    root, ckpt, _ = celeba
    out = tmp_path / "d.pt"
    line = _one_line_exit_2(
        invoke("attributes", ckpt, "--data-dir", root / "data", "--out", out, "--attribute", "Smilng"),
        "no attribute 'Smilng'",
        "did you mean 'Smiling'",
        "5_o_Clock_Shadow",
        "(40 in all)",
    )
    assert len(line) < 200
    bare = tmp_path / "bare"
    _celeba_data(bare, attributes_file=False)  # images without list_attr_celeba.txt
    _one_line_exit_2(invoke("attributes", ckpt, "--data-dir", bare, "--out", out), "celeba64 attributes not found")
    _one_line_exit_2(
        invoke("attributes", trained_run / "last.pt", "--out", out, "--limit", 3, "--attribute", "0,1,2,3,4,5,6,7,8,9"),
        "no images with it or none without it",
        "--limit",
    )
    _one_line_exit_2(invoke("attributes", trained_run / "last.pt", "--out", out, "-a", "10"), "no attribute '10'")
    assert not out.exists()


# -- manipulate -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digit_directions(trained_run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("manipulate")
    out = folder / "d.pt"
    attributes(str(trained_run / "last.pt"), out=str(out), limit=100)
    x = get_labelled_dataset("digits", "test").batch(torch.arange(2))[0]
    paths = []
    for i in range(2):
        paths.append(folder / f"digit{i}.png")
        save_png(to_uint8_255(x[i : i + 1], 17)[0], paths[-1])
    return trained_run / "last.pt", out, paths, x


def test_alpha_zero_is_the_input_bit_for_bit_and_other_alphas_change_it(digit_directions):
    ckpt, directions, _, x = digit_directions
    model, _, _ = load_model(ckpt)
    data = load_directions(str(directions), model)
    d = [t[3] for t in data["directions"]]
    frames = move_latents(model, x, d, [-1.0, 0.0, 2.0])  # (2, 3, C, H, W)
    assert frames.dtype == torch.uint8 and frames.shape == (2, 3, *x.shape[1:])
    assert torch.equal(frames[:, 1], x)
    assert (frames[:, 0] != x).any() and (frames[:, 2] != x).any()
    again = move_latents(model.double(), x, d, [0.0])
    assert torch.equal(again[:, 0], x)


def test_manipulate_cli_writes_a_labelled_strip(digit_directions, tmp_path):
    ckpt, directions, paths, _ = digit_directions
    out = tmp_path / "strip.png"
    args = ["--directions", directions, "--attribute", "3", "--alpha", "-1,0,1,2", "--out", out]
    result = json.loads(ok(invoke("manipulate", ckpt, *paths, *args, "--json", "--scale", 4)).stdout)
    assert result["identity_exact"] is True and result["alphas"] == [-1.0, 0.0, 1.0, 2.0]
    assert result["pixels_changed"][1] == 0 and result["pixels_changed"][3] > 0
    with Image.open(out) as img:
        width, height = img.size
    assert width == 4 * (8 + 2) * 4 + 2 * 4 and height > 2 * (8 + 2) * 4  # 4 columns, 2 rows, a label margin
    f64 = ok(invoke("manipulate", ckpt, paths[0], *args, "--decode-precision", "float64", "--json")).stdout
    assert json.loads(f64)["identity_exact"] is True and json.loads(f64)["decode_precision"] == "float64"
    text = ok(invoke("manipulate", ckpt, paths[0], *args, "--alpha", "1")).output
    assert "wrote 1 × 1 frames" in text and "exact" not in text


def test_manipulate_errors_are_one_line(digit_directions, tmp_path):
    ckpt, directions, paths, _ = digit_directions
    out = tmp_path / "strip.png"

    def run(*args, image=paths[0], d=directions):
        return invoke("manipulate", ckpt, image, "--directions", d, "--out", out, *args)

    _one_line_exit_2(run("--attribute", "Smiling"), "no attribute 'Smiling'", "valid: 0, 1, 2")
    _one_line_exit_2(run("--attribute", "3,4"), "takes one name")
    missing = run()
    assert missing.exit_code == 2 and "Missing option '--attribute'" in missing.output
    _one_line_exit_2(run("--attribute", "3", "--alpha", "1,x"), "--alpha must be finite numbers")
    _one_line_exit_2(run("--attribute", "3", "--alpha", "nan"), "--alpha must be finite numbers")
    _one_line_exit_2(run("--attribute", "3", d=tmp_path / "none.pt"), "does not exist", "finc attributes")
    (tmp_path / "junk.pt").write_bytes(b"not torch")
    _one_line_exit_2(run("--attribute", "3", d=tmp_path / "junk.pt"), "not a readable finc directions file")
    big = tmp_path / "big.png"
    Image.new("L", (16, 16)).save(big)
    _one_line_exit_2(run("--attribute", "3", image=big), "16×16", "8×8")
    other = _checkpoint(tmp_path / "one_level.pt", "digits", **{"model.levels": 1})
    result = invoke("manipulate", other, paths[0], "--directions", directions, "--attribute", "3", "--out", out)
    _one_line_exit_2(result, "latents of shapes", "this model's are [(4, 4, 4)]", "finc attributes")
    assert not out.exists()


def test_a_directions_file_is_a_plain_dict_that_loads_safely(tmp_path, trained_run):
    model, _, _ = load_model(trained_run / "last.pt")
    shapes = model.latent_shapes()
    save_directions(str(tmp_path / "d.pt"), {"names": ["a"], "directions": [torch.zeros(1, *s) for s in shapes]})
    assert load_directions(str(tmp_path / "d.pt"), model)["names"] == ["a"]
    torch.save({"format": "finc-latents"}, tmp_path / "other.pt")
    with pytest.raises(ImageInputError, match="not a finc directions file"):
        load_directions(str(tmp_path / "other.pt"), model)


def test_parse_alphas():
    assert parse_alphas("-1, 0,1.5") == [-1.0, 0.0, 1.5] and parse_alphas(2) == [2.0]
    for bad in ("", "1,,2", "inf", "a"):
        with pytest.raises(InputError):
            parse_alphas(bad)


def test_labelled_columns_sit_on_the_grid_save_grid_writes(tmp_path):
    images = torch.randint(0, 17, (6, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    info = save_labelled_columns(images, ["alpha=-1", "alpha=0", "alpha=1"], tmp_path / "c.png", 17, scale=3)
    save_grid(images, tmp_path / "g.png", 17, nrow=3, scale=3)
    with Image.open(tmp_path / "c.png") as c, Image.open(tmp_path / "g.png") as g:
        body = np.asarray(c)[info["label_height"] :]
        top = np.asarray(c)[: info["label_height"]]
        assert np.array_equal(body, np.asarray(g)) and top.max() > 100  # labels drawn in white
    with pytest.raises(InputError):
        save_labelled_columns(images[:5], ["a", "b", "c"], tmp_path / "x.png", 17)
