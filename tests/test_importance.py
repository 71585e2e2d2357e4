"""Importance-weighted bits/dim against a model whose discrete likelihood is known exactly."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from finc_cli.cli.main import app
from finc_cli.data.datasets import ImageTensorDataset
from finc_cli.losses import bits_per_dim
from finc_cli.train.validate import evaluate_bpd


class TruncatedExponential(torch.nn.Module):
    """Independent pixels, v = (x + u) / bins ~ a·exp(a·v) / (e^a − 1) on [0, 1): not uniform inside a bin,
    so the single-sample bound is strictly above the exact bits/dim, which the CDF gives per bin."""

    def __init__(self, bins: int = 4, shape=(1, 2, 2), a: float = 3.0):
        super().__init__()
        self.bins, self.image_shape, self.a = bins, shape, a
        self.num_dims = math.prod(shape)

    def _cdf(self, v: torch.Tensor) -> torch.Tensor:
        return torch.expm1(self.a * v) / math.expm1(self.a)

    def forward(self, x, noise=None, generator=None):
        u = noise if noise is not None else torch.rand(x.shape, generator=generator, dtype=torch.float64)
        v = (x.double() + u) / self.bins
        log_p = (math.log(self.a) + self.a * v - math.log(math.expm1(self.a))).flatten(1).sum(1)
        return bits_per_dim(-log_p, self.num_dims, self.bins)

    def exact_bpd(self, x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        p = self._cdf((x + 1) / self.bins) - self._cdf(x / self.bins)  # each pixel's bin probability
        return -torch.log(p).flatten(1).sum(1) / (self.num_dims * math.log(2))


def _images(n: int = 400, bins: int = 4) -> ImageTensorDataset:
    g = torch.Generator().manual_seed(0)
    return ImageTensorDataset(torch.randint(0, bins, (n, 1, 2, 2), generator=g, dtype=torch.uint8))


def test_the_estimate_approaches_the_exact_likelihood_and_never_undershoots_it():
    model, ds = TruncatedExponential(), _images()
    exact = model.exact_bpd(ds.images).mean().item()
    estimates = {k: evaluate_bpd(model, ds, 100, "cpu", samples=k) for k in (1, 4, 64)}
    loose = estimates[1]["bpd"] - exact
    assert loose > 0.02  # the single-sample bound stays clearly above the exact bits/dim (here 0.044)
    assert 0 < estimates[4]["bpd_iw"] - exact < 0.5 * loose  # K = 4 closes much of the gap, from above
    assert abs(estimates[64]["bpd_iw"] - exact) < 0.05 * loose  # K = 64 closes 95 % of it
    assert all(estimates[k]["bpd"] == estimates[1]["bpd"] for k in estimates)  # the bound beside is the same draw
    # Never below the exact value beyond noise: over independent seeds, the mean gap at K = 64 is not negative.
    gaps = torch.tensor([evaluate_bpd(model, ds, 100, "cpu", seed=s, samples=64)["bpd_iw"] - exact for s in range(6)])
    assert gaps.mean() > -3 * gaps.std() / math.sqrt(len(gaps))


def test_k_equal_one_is_the_bound_and_adds_nothing():
    model, ds = TruncatedExponential(), _images(50)
    result = evaluate_bpd(model, ds, 16, "cpu")
    assert result["samples"] == 1 and "bpd_iw" not in result


@pytest.fixture(scope="module")
def ckpt(trained_run):
    return trained_run / "last.pt"


def test_cli_reports_both_figures(ckpt):
    result = CliRunner().invoke(app, ["bpd", str(ckpt), "--split", "val", "--samples", "8", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["samples"] == 8 and data["bpd_iw"] < data["bpd"] and data["bpd_iw_stderr"] > 0
    single = json.loads(CliRunner().invoke(app, ["bpd", str(ckpt), "--split", "val", "--json"]).stdout)
    assert single["bpd"] == data["bpd"]  # the first draw is the usual single-sample figure
    table = CliRunner().invoke(app, ["bpd", str(ckpt), "--split", "val", "-k", "4"])
    assert "importance-weighted over 4 draws" in table.output
    bad = CliRunner().invoke(app, ["bpd", str(ckpt), "--samples", "0"])
    assert bad.exit_code == 2 and "--samples must be at least 1" in bad.output
