"""Variational dequantization: the bound against an exact likelihood, exactness of encode/decode, and the CLI end to
end (log q(u | x) against the autograd Jacobian is in tests/test_flows.py's layer contract)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny import TINY_MODEL
from typer.testing import CliRunner

from finc_cli.cli.main import app
from finc_cli.config import ModelConfig, load_preset
from finc_cli.data.datasets import ImageTensorDataset
from finc_cli.errors import ConfigError
from finc_cli.flows.dequantizer import VariationalDequantizer, checkerboard
from finc_cli.losses import bits_per_dim
from finc_cli.model import FlowModel
from finc_cli.train.validate import evaluate_bpd


def _randomize(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return module


def test_checkerboard_halves_the_pixels():
    a, b = checkerboard(3, 4, 0), checkerboard(3, 4, 1)
    assert a.shape == (1, 1, 3, 4) and torch.equal(a + b, torch.ones_like(a)) and a.sum() == 6
    assert a[0, 0, 0, 0] == 1 and a[0, 0, 0, 1] == 0 and a[0, 0, 1, 0] == 0


def test_an_untrained_dequantizer_is_uniform_dequantization():
    deq = VariationalDequantizer(3, 256, hidden=8, steps=2)
    x = torch.randint(0, 256, (4, 3, 4, 4), dtype=torch.uint8)
    noise = torch.rand(4, 3, 4, 4)
    u, log_q = deq(x, noise)
    assert torch.allclose(u, noise, atol=1e-6) and torch.equal(log_q, torch.zeros(4))


def test_u_stays_inside_the_bins():
    """u = sigmoid(...) lies in (0, 1); log q(u | x) against the Jacobian is in tests/test_flows.py's layer contract."""
    deq = _randomize(VariationalDequantizer(2, 5, hidden=4, steps=3), 0.15).double()
    x = torch.randint(0, 5, (3, 2, 3, 2), generator=torch.Generator().manual_seed(1))
    u, log_q = deq(x, torch.rand(3, 2, 3, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    assert ((u > 0) & (u < 1)).all() and torch.isfinite(log_q).all()


class TruncatedExponential(torch.nn.Module):
    """Independent pixels whose density inside each bin is exponential, with an optional learned dequantizer:
    the exact discrete bits/dim is known in closed form."""

    def __init__(self, bins: int = 4, shape=(1, 2, 2), a: float = 3.0, dequantizer=None):
        super().__init__()
        self.bins, self.image_shape, self.a, self.dequantizer = bins, shape, a, dequantizer
        self.num_dims = math.prod(shape)

    def forward(self, x, noise=None, generator=None):
        if noise is None:
            noise = torch.rand(x.shape, generator=generator, dtype=torch.float64)
        u, log_q = (noise, 0.0) if self.dequantizer is None else self.dequantizer(x, noise)
        v = (x.double() + u) / self.bins
        log_p = (math.log(self.a) + self.a * v - math.log(math.expm1(self.a))).flatten(1).sum(1)
        return bits_per_dim(log_q - log_p, self.num_dims, self.bins)

    def exact_bpd(self, x: torch.Tensor) -> torch.Tensor:
        def cdf(v):
            return torch.expm1(self.a * v) / math.expm1(self.a)

        x = x.double()
        p = cdf((x + 1) / self.bins) - cdf(x / self.bins)
        return -torch.log(p).flatten(1).sum(1) / (self.num_dims * math.log(2))


def _images(n: int = 400, bins: int = 4) -> ImageTensorDataset:
    g = torch.Generator().manual_seed(0)
    return ImageTensorDataset(torch.randint(0, bins, (n, 1, 2, 2), generator=g, dtype=torch.uint8))


def test_the_variational_bound_stays_above_the_exact_likelihood_and_learning_q_tightens_it():
    ds = _images(200)
    deq = VariationalDequantizer(1, 4, hidden=8, steps=1).double()
    model = TruncatedExponential(dequantizer=deq)
    exact = model.exact_bpd(ds.images).mean().item()
    uniform = evaluate_bpd(TruncatedExponential(), ds, 100, "cpu")["bpd"]
    before = evaluate_bpd(model, ds, 100, "cpu")["bpd"]
    assert before == pytest.approx(uniform, abs=1e-9)  # an untrained q is U[0, 1)

    optimizer = torch.optim.Adam(deq.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(5)
    for _ in range(100):
        optimizer.zero_grad()
        model(ds.images, generator=g).mean().backward()
        optimizer.step()
    # Over several independent noise seeds: the learned bound is well below the uniform one, never below the exact.
    bounds = torch.tensor([evaluate_bpd(model, ds, 200, "cpu", seed=s)["bpd"] for s in range(5)])
    assert bounds.mean() - exact > -3 * bounds.std() / math.sqrt(len(bounds))
    assert uniform - exact > 0.03 and bounds.mean() - exact < 0.25 * (uniform - exact)
    # Importance weighting with the learned q reaches the exact value.
    iw = evaluate_bpd(model, ds, 200, "cpu", samples=64)["bpd_iw"]
    assert abs(iw - exact) < 0.05 * (uniform - exact)


def _flow(dequantization: str = "variational", **kw) -> FlowModel:
    cfg = ModelConfig(levels=2, steps=1, hidden=8, dequantization=dequantization, dequant_hidden=8, **kw)
    return FlowModel((1, 8, 8), 17, cfg)


def test_flow_model_with_variational_dequantization_is_exact_on_images_and_starts_as_uniform():
    torch.manual_seed(0)
    x = torch.randint(0, 17, (6, 1, 8, 8), dtype=torch.uint8)
    model, uniform = _flow(), _flow("uniform")
    model.initialize(x)
    uniform.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("dequantizer.")})
    noise = torch.rand(x.shape)
    assert torch.allclose(model(x, noise=noise), uniform(x, noise=noise), atol=1e-5)
    _randomize(model.dequantizer, 0.2)
    model.eval()
    assert torch.equal(model.decode(model.encode(x)), x)
    bound = model(x, noise=noise)
    assert torch.isfinite(bound).all() and not torch.allclose(bound, uniform(x, noise=noise), atol=1e-3)
    samples = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (4, 1, 8, 8) and samples.dtype == torch.uint8 and samples.max() < 17


def test_the_dequantizer_is_trained_and_in_the_gradient():
    model = _flow()
    x = torch.randint(0, 17, (4, 1, 8, 8), dtype=torch.uint8)
    model.initialize(x)
    _randomize(model.dequantizer, 0.1)
    model(x).mean().backward()
    grads = [p.grad for p in model.dequantizer.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_config_checks_the_dequantization():
    with pytest.raises(ConfigError, match="model.dequantization must be 'uniform' or 'variational'"):
        load_preset("digits", {"model.dequantization": "logistic"})
    assert load_preset("digits", {"model.dequantization": "variational"}).model.dequantization == "variational"


@pytest.mark.slow
def test_train_bpd_sample_invert_with_variational_dequantization(tmp_path):
    out = tmp_path / "run"
    sets = [*(f"{k}={v}" for k, v in TINY_MODEL.items()), "model.dequantization=variational", "model.dequant_hidden=8"]
    sets += ["train.steps=30", "train.batch_size=32", "train.eval_every=15", "train.ema_decay=0.9"]
    args = ["train", "--preset", "digits", "--out", str(out)] + [a for s in sets for a in ("--set", s)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    sd = torch.load(out / "last.pt", weights_only=True)
    assert any(k.startswith("dequantizer.") for k in sd["model"])
    bpd = CliRunner().invoke(app, ["bpd", str(out / "last.pt"), "--split", "val", "--samples", "8", "--json"])
    assert bpd.exit_code == 0, bpd.output
    data = json.loads(bpd.stdout)
    assert math.isfinite(data["bpd"]) and data["bpd_iw"] < data["bpd"]
    inv = CliRunner().invoke(app, ["invert", str(out / "last.pt"), "--split", "val", "--json"])
    assert inv.exit_code == 0, inv.output
    assert json.loads(inv.stdout)["exact"] is True
    smp = CliRunner().invoke(app, ["sample", str(out / "last.pt"), "-n", "4", "--out", str(tmp_path / "s.png")])
    assert smp.exit_code == 0 and (tmp_path / "s.png").exists()
