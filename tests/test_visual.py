"""Readable grids: the default and explicit --scale, temperature rows, exact interpolation, invert's pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_run import invoke, ok
from PIL import Image

CELL = 8 + 2  # an 8×8 digit and the 2 px grid padding


def bad(result, message: str):
    assert result.exit_code == 2, f"exit {result.exit_code}\n{result.output}"
    assert message in result.output and "Traceback" not in result.output
    return result


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img).copy()


def cell(grid: np.ndarray, row: int, col: int, scale: int = 1, left: int = 0) -> np.ndarray:
    """The 8×8 image at (row, col) of a grid of 8×8 digits written at `scale`, one pixel per image pixel."""
    y, x = (2 + row * CELL) * scale, left + (2 + col * CELL) * scale
    return grid[y : y + 8 * scale : scale, x : x + 8 * scale : scale]


def as_255(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) with 17 levels -> (H, W) uint8 in [0, 255], as the PNGs hold them."""
    from finc_cli.files.images import to_uint8_255

    return to_uint8_255(x[None], 17)[0, 0].numpy()


@pytest.fixture(scope="module")
def ckpt(trained_run) -> Path:
    return trained_run / "best.pt"


@pytest.fixture(scope="module")
def digits_test() -> torch.Tensor:
    from finc_cli.data.load import get_dataset

    return get_dataset("digits", "test").images[:6]  # (6, 1, 8, 8), 17 levels


# ---------------------------------------------------------------------------------------------
# --scale


def test_default_scale_makes_grids_at_least_512_pixels_wide(ckpt, tmp_path):
    data = json.loads(ok(invoke("sample", ckpt, "-n", 9, "--out", tmp_path / "a.png", "--seed", 0, "--json")).stdout)
    assert data["scale"] == 16  # a 3×3 grid is 32 px wide: 16× makes 512
    assert Image.open(tmp_path / "a.png").size == (512, 512)
    data = json.loads(ok(invoke("sample", ckpt, "--out", tmp_path / "b.png", "--seed", 0, "--json")).stdout)
    assert data["scale"] == 7 and Image.open(tmp_path / "b.png").size == (7 * 82, 7 * 82)  # 8×8 grid: 82 px


def test_training_grids_are_upscaled_too(ckpt):
    grids = sorted((ckpt.parent / "samples").glob("*.png"))
    assert grids and all(Image.open(p).size == (7 * 82, 7 * 82) for p in grids)


def test_explicit_scale_is_nearest_neighbour(ckpt, tmp_path):
    ok(invoke("sample", ckpt, "-n", 9, "--out", tmp_path / "one.png", "--seed", 2, "--scale", 1))
    ok(invoke("sample", ckpt, "-n", 9, "--out", tmp_path / "three.png", "--seed", 2, "--scale", 3))
    one, three = pixels(tmp_path / "one.png"), pixels(tmp_path / "three.png")
    assert one.shape == (32, 32) and three.shape == (96, 96)
    assert np.array_equal(three, one.repeat(3, axis=0).repeat(3, axis=1))
    bad(invoke("sample", ckpt, "--out", tmp_path / "z.png", "--scale", 0), "--scale")


# ---------------------------------------------------------------------------------------------
# temperature rows


def test_temperature_rows_are_in_order_and_labelled(ckpt, tmp_path):
    temps = [0, 0.5, 0.7, 0.85, 1]
    out = tmp_path / "t.png"
    args = ("-n", 4, "--seed", 5, "--scale", 2, "--json")
    data = json.loads(ok(invoke("sample", ckpt, "-t", ",".join(map(str, temps)), "--out", out, *args)).stdout)
    assert data["temperatures"] == temps and data["n"] == 20
    grid, left = pixels(out), data["label_width"]
    assert grid.shape == (2 * (5 * CELL + 2), left + 2 * (4 * CELL + 2))
    labels = []
    for i, t in enumerate(temps):  # row i is exactly the one-temperature grid at temps[i]
        single = tmp_path / f"t{i}.png"
        ok(invoke("sample", ckpt, "-t", t, "--nrow", 4, "--out", single, *args))
        row = grid[i * 2 * CELL : (i * CELL + CELL + 2) * 2, left:]
        assert np.array_equal(row, pixels(single)), f"row {i} is not T={t}"
        labels.append(grid[i * 2 * CELL + 4 : (i + 1) * 2 * CELL, :left])
        assert labels[-1].max() > 200, f"row {i} has no label"  # white text, antialiased
    assert all(not np.array_equal(a, b) for a, b in zip(labels, labels[1:]))  # each row its own label


def test_temperature_zero_is_the_same_for_any_seed_and_spread_grows_with_t(ckpt, tmp_path):
    temps = [0, 0.5, 0.7, 0.85, 1]
    rows = {}
    for seed in (1, 2):
        out = tmp_path / f"s{seed}.png"
        args = ("-t", "0,0.5,0.7,0.85,1", "-n", 8, "--seed", seed, "--scale", 1, "--json")
        left = json.loads(ok(invoke("sample", ckpt, "--out", out, *args)).stdout)["label_width"]
        grid = pixels(out).astype(np.float64)
        rows[seed] = [np.stack([cell(grid, i, j, left=left) for j in range(8)]) for i in range(len(temps))]
    assert np.array_equal(rows[1][0], rows[2][0])  # T=0: every latent at its mean
    assert not np.array_equal(rows[1][-1], rows[2][-1])
    for seed in (1, 2):
        deviation = [np.abs(r - rows[seed][0]).mean() for r in rows[seed]]
        assert deviation[0] == 0 and all(a < b for a, b in zip(deviation, deviation[1:])), deviation


@pytest.mark.parametrize(
    "args, message",
    [
        (["-t", "0,x"], "--temperature"),
        (["-t", "0,,1"], "--temperature"),
        (["-t", "-1"], "--temperature"),
        (["-t", "nan"], "--temperature"),
        (["-t", "0,1", "--nrow", "2"], "--nrow"),
        (["-t", "0,1", "--individual"], "--individual"),
    ],
)
def test_bad_temperatures_are_one_line_exit_2(ckpt, tmp_path, args, message):
    bad(invoke("sample", ckpt, "--out", tmp_path / "x.png", *args), message)
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------------------------------------
# interpolate


def write_png(x: torch.Tensor, path: Path) -> Path:
    Image.fromarray(as_255(x), mode="L").save(path)
    return path


@pytest.mark.parametrize("mode", ["linear", "spherical"])
def test_interpolation_ends_are_exact_for_image_files(ckpt, tmp_path, digits_test, mode):
    a, b = write_png(digits_test[0], tmp_path / "a.png"), write_png(digits_test[1], tmp_path / "b.png")
    out = tmp_path / "strip.png"
    data = json.loads(
        ok(invoke("interpolate", ckpt, a, b, "--steps", 6, "--mode", mode, "--out", out, "--scale", 1, "--json")).stdout
    )
    assert data["ends_exact"] is True and data["pairs"] == 1 and data["mode"] == mode
    strip = pixels(out)
    assert strip.shape == (CELL + 2, 6 * CELL + 2)
    assert np.array_equal(cell(strip, 0, 0), pixels(a)) and np.array_equal(cell(strip, 0, 5), pixels(b))
    middle = [cell(strip, 0, j) for j in range(1, 5)]
    assert not any(np.array_equal(m, pixels(a)) or np.array_equal(m, pixels(b)) for m in middle[1:-1])


@pytest.mark.parametrize("mode", ["linear", "spherical"])
def test_interpolation_of_split_pairs_has_exact_ends(ckpt, tmp_path, digits_test, mode):
    out = tmp_path / "pairs.png"
    args = ("--split", "test", "--pairs", 3, "--steps", 4, "--mode", mode, "--out", out, "--json")
    data = json.loads(ok(invoke("interpolate", ckpt, *args)).stdout)
    assert data["ends_exact"] is True and data["pairs"] == 3 and data["steps"] == 4
    strip, s = pixels(out), data["scale"]
    assert strip.shape[1] == s * (4 * CELL + 2) >= 512
    for p in range(3):
        assert np.array_equal(cell(strip, p, 0, s), as_255(digits_test[2 * p]))
        assert np.array_equal(cell(strip, p, 3, s), as_255(digits_test[2 * p + 1]))


@pytest.mark.parametrize("mode", ["linear", "spherical"])
def test_interpolate_latents_decodes_every_latent_exactly_at_the_ends(ckpt, digits_test, mode):
    from finc_cli.checkpoint import load_checkpoint
    from finc_cli.commands.interpolate import interpolate_latents

    model, _ = load_checkpoint(ckpt)
    xa, xb = digits_test[:3], digits_test[3:]
    frames = interpolate_latents(model, xa, xb, 5, mode)  # (3, 5, 1, 8, 8)
    assert frames.shape == (3, 5, 1, 8, 8) and frames.dtype == torch.uint8
    assert torch.equal(frames[:, 0], xa) and torch.equal(frames[:, -1], xb)
    assert not torch.equal(frames[:, 2], xa)


def test_mix_linear_midpoint_and_spherical_norm():
    from finc_cli.commands.interpolate import mix

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    assert torch.allclose(mix(a, b, 0.5, "linear"), (a + b) / 2)
    b = b / b.flatten(1).norm(dim=1).view(4, 1, 1, 1) * a.flatten(1).norm(dim=1).view(4, 1, 1, 1)  # equal norms
    for t in (0.25, 0.5, 0.75):
        mid = mix(a, b, t, "spherical")
        assert torch.allclose(mid.flatten(1).norm(dim=1), a.flatten(1).norm(dim=1), rtol=1e-5)
    assert torch.equal(mix(a, b, 0.0, "spherical"), a) and torch.equal(mix(a, b, 1.0, "spherical"), b)
    assert torch.allclose(mix(a, a.clone(), 0.5, "spherical"), a)  # parallel: falls back to linear


def test_interpolate_bad_inputs_are_one_line_exit_2(ckpt, tmp_path, digits_test):
    a = write_png(digits_test[0], tmp_path / "a.png")
    big = tmp_path / "big.png"
    Image.new("L", (16, 16)).save(big)
    out = tmp_path / "s.png"
    bad(invoke("interpolate", ckpt, a, big, "--out", out), "interpolate between images of one shape")
    bad(invoke("interpolate", ckpt, a, a, "--steps", 1, "--out", out), "--steps must be at least 2")
    bad(invoke("interpolate", ckpt, a, "--out", out), "give two images")
    bad(invoke("interpolate", ckpt, "--out", out), "--split")
    bad(invoke("interpolate", ckpt, a, tmp_path / "missing.png", "--out", out), "does not exist")
    bad(invoke("interpolate", ckpt, "--split", "test", "--pairs", 10_000, "--out", out), "--pairs")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# invert --out


def test_invert_out_shows_originals_above_reconstructions(ckpt, tmp_path, digits_test):
    out = tmp_path / "inv.png"
    result = ok(invoke("invert", ckpt, "--split", "test", "--limit", 6, "--out", out, "--scale", 1))
    assert "inverting" in result.stderr  # the progress bar over the split
    grid = pixels(out)
    assert grid.shape == (2 * CELL + 2, 6 * CELL + 2)  # one row of originals, one of reconstructions
    for j in range(6):
        assert np.array_equal(cell(grid, 0, j), as_255(digits_test[j]))
        assert np.array_equal(cell(grid, 1, j), as_255(digits_test[j]))  # exact reconstruction


def test_pairs_grid_puts_each_block_of_originals_above_its_partners(tmp_path):
    from finc_cli.files.images import save_pairs_grid

    top = torch.full((5, 1, 8, 8), 16, dtype=torch.uint8)
    bottom = torch.full((5, 1, 8, 8), 8, dtype=torch.uint8)
    save_pairs_grid(top, bottom, tmp_path / "p.png", 17, nrow=3, scale=1)
    grid = pixels(tmp_path / "p.png")
    assert grid.shape == (4 * CELL + 2, 3 * CELL + 2)
    levels = [[int(cell(grid, r, c)[0, 0]) for c in range(3)] for r in range(4)]
    assert levels == [[255, 255, 255], [128, 128, 128], [255, 255, 0], [128, 128, 0]]


def test_invert_in_batches_reports_what_one_batch_does(ckpt, digits_test):
    from finc_cli.checkpoint import load_checkpoint
    from finc_cli.commands.invert import round_trip

    model, _ = load_checkpoint(ckpt)
    whole, z1, d1 = round_trip(model, digits_test, batch_size=6)
    done = []
    parts, z2, d2 = round_trip(model, digits_test, batch_size=4, progress=done.append)
    assert done == [4, 2] and torch.equal(d1, d2) and parts["exact"] is True
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(z1, z2))
    assert parts["max_abs_err"] == pytest.approx(whole["max_abs_err"], rel=1e-3, abs=1e-9)
    for a, b in zip(whole["layers"], parts["layers"]):
        assert a["layer"] == b["layer"] and b["mean_abs_err"] == pytest.approx(a["mean_abs_err"], rel=1e-2, abs=1e-9)


def test_labelled_rows_of_colour_images(tmp_path):
    from finc_cli.files.images import save_labelled_rows

    g = torch.Generator().manual_seed(0)
    rows = [(f"T={t}", torch.randint(0, 256, (3, 3, 32, 32), generator=g, dtype=torch.uint8)) for t in (0, 1)]
    layout = save_labelled_rows(rows, tmp_path / "rgb.png", 256)
    with Image.open(tmp_path / "rgb.png") as img:
        assert img.mode == "RGB" and img.width >= 512 and img.width == layout["label_width"] + 5 * (3 * 34 + 2)
        arr = np.asarray(img)
    assert layout["scale"] == 5 and arr[:, : layout["label_width"]].max() > 200  # labels in the margin
    body = arr[:, layout["label_width"] :]
    first = body[2 * 5 : 34 * 5 : 5, 2 * 5 : 34 * 5 : 5]  # the first image, one pixel per image pixel
    assert np.array_equal(first, rows[0][1][0].permute(1, 2, 0).numpy())
