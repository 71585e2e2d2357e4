"""Class-conditional FInC flows (docs/model.md §14): the density, the marginal, class sampling, the Bayes
classifier, the class head, the CLI and the checkpoint checks."""

from __future__ import annotations

import json
import math

import pytest
import torch
from cli_run import invoke, ok
from jacobians import dense_jacobian
from tiny import TINY_ARGS, TINY_OVERRIDES, as_sets
from torch.utils.data import Dataset

from finc_cli.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from finc_cli.config import ModelConfig, load_preset
from finc_cli.data import load as data_load
from finc_cli.data.labels import LabelledDataset, Labels
from finc_cli.errors import CheckpointError, ConfigError, InputError
from finc_cli.files import images as image_files
from finc_cli.flows.multiscale import gaussian_log_prob
from finc_cli.model import FlowModel, build_model
from finc_cli.train import train
from finc_cli.train.validate import evaluate_bpd, evaluate_classes

COND = ["--set", "model.conditional=true"]


class _Images(Dataset):
    """Integer images (N, C, H, W) as a dataset of (C, H, W) tensors."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def _tiny_model(
    num_classes: int = 3, class_weight: float = 0.01, seed: int = 0, class_prior: str = "channel"
) -> FlowModel:
    """A 1×4×4, 17-level conditional model, its class priors and split convs set to random values (not zero)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(levels=2, steps=1, hidden=4, conditional=True, class_prior=class_prior)
    model = FlowModel((1, 4, 4), 17, cfg, num_classes=num_classes, class_weight=class_weight)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "class_prior" in name or "top_prior" in name or "split.conv" in name:
                p.copy_(0.3 * torch.randn_like(p))
    model.initialize(torch.randint(0, 17, (16, 1, 4, 4)))
    return model.eval()


def _labelled(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> LabelledDataset:
    return LabelledDataset(_Images(x), Labels(y.numpy(), "class", num_classes))


@pytest.mark.parametrize("class_prior", ["channel", "spatial"])
def test_the_conditional_log_likelihood_matches_a_brute_force_jacobian_and_the_class_priors(class_prior):
    model = _tiny_model(class_prior=class_prior).double()
    v = torch.rand(1, 1, 4, 4, dtype=torch.float64) * 0.9 + 0.05
    inputs = {}
    hook = model.levels[0].split.conv.register_forward_hook(lambda m, args, out: inputs.__setitem__("h_keep", args[0]))
    try:
        for y in range(3):
            jac = dense_jacobian(lambda t: model.v_to_latents(t, torch.zeros(t.shape[0], dtype=torch.long))[0], v)
            log_det = torch.linalg.slogdet(jac)[1]
            latents, log_p = model.v_to_latents(v, torch.tensor([y]))  # the hook now holds this forward's kept half
            split = model.levels[0].split
            h_keep = inputs["h_keep"]
            mean, log_std = split.conv(h_keep).chunk(2, dim=1)
            c_z, c_top = split.z_channels, latents[-1].shape[1]
            if class_prior == "channel":  # the class's (mean, log_std): 2 C numbers, one per channel
                shift = split.class_prior.weight[y][:, None, None]  # (2 C_z, 1, 1)
                top_shift = model.top_prior.weight[y][:, None, None]
            else:  # 2 C H W numbers, one per channel and position (channel-major, then row, then column)
                shift = split.class_prior.weight[y].reshape(2 * c_z, *latents[0].shape[2:])
                top_shift = model.top_prior.weight[y].reshape(2 * c_top, *latents[-1].shape[2:])
            mean, log_std = mean + shift[:c_z], log_std + shift[c_z:]
            top_mean, top_log_std = top_shift[:c_top], top_shift[c_top:]
            expected = (
                log_det
                + gaussian_log_prob(latents[0], mean, log_std)
                + gaussian_log_prob(latents[-1], top_mean[None], top_log_std[None])
            )
            assert log_p.item() == pytest.approx(expected.item(), abs=1e-8)
    finally:
        hook.remove()
    # The classes change the priors alone: the latents are the same, the densities differ.
    lp = [model.log_prob(v, torch.tensor([c])).item() for c in range(3)]
    assert len({round(x, 6) for x in lp}) == 3
    for c in range(3):
        for a, b in zip(model.v_to_latents(v, torch.tensor([c]))[0], model.v_to_latents(v, torch.tensor([0]))[0]):
            assert torch.equal(a, b)


@pytest.mark.parametrize("class_prior", ["channel", "spatial"])
def test_a_fresh_conditional_model_has_the_unconditional_density_for_every_class(class_prior):
    torch.manual_seed(3)
    cfg = ModelConfig(levels=2, steps=1, hidden=4)
    plain = FlowModel((1, 4, 4), 17, cfg)
    torch.manual_seed(3)
    cond_cfg = ModelConfig(levels=2, steps=1, hidden=4, conditional=True, class_prior=class_prior)
    cond = FlowModel((1, 4, 4), 17, cond_cfg, num_classes=3)
    x = torch.randint(0, 17, (5, 1, 4, 4))
    noise = torch.rand(5, 1, 4, 4)
    want = plain(x, noise=noise)
    for c in range(3):
        assert torch.equal(cond(x, noise=noise, y=torch.full((5,), c)), want)


def test_y_is_required_exactly_when_the_model_is_conditional():
    model = _tiny_model()
    x = torch.randint(0, 17, (2, 1, 4, 4))
    with pytest.raises(InputError, match="class-conditional"):
        model(x)
    with pytest.raises(InputError, match=r"0\.\.2"):
        model(x, y=torch.tensor([0, 3]))
    plain = FlowModel((1, 4, 4), 17, ModelConfig(levels=2, steps=1, hidden=4))
    with pytest.raises(InputError, match="not class-conditional"):
        plain(x, y=torch.tensor([0, 1]))


@pytest.mark.parametrize("class_prior", ["channel", "spatial"])
def test_the_marginal_is_the_logsumexp_of_the_conditionals_plus_log_p_y(class_prior):
    model = _tiny_model(num_classes=3, class_prior=class_prior)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 17, (12, 1, 4, 4), generator=g)
    y = torch.arange(12) % 3
    ds = _labelled(x, y, 3)
    got = evaluate_classes(model, ds, 64, torch.device("cpu"), seed=5, classify=True)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(5 * 1_000_003))  # evaluate_*'s first draw
    with torch.no_grad():
        bpd = torch.stack([model(x, noise=noise, y=torch.full((12,), c)) for c in range(3)], 1).double()
    nats = model.num_dims * math.log(2)
    marginal = -(torch.logsumexp(-bpd * nats + math.log(1 / 3), 1)) / nats
    assert got["bpd_marginal"] == pytest.approx(marginal.mean().item(), abs=1e-6)
    true = bpd.gather(1, y[:, None])[:, 0]
    assert got["bpd"] == pytest.approx(true.mean().item(), abs=1e-6)
    assert (marginal <= true + math.log2(3) / model.num_dims + 1e-9).all()
    # The true-class figure is evaluate_bpd's (the same first noise draw).
    assert got["bpd"] == pytest.approx(evaluate_bpd(model, ds, 64, torch.device("cpu"), seed=5)["bpd"], abs=1e-9)
    assert got["accuracy_bayes"] == pytest.approx((bpd.argmin(1) == y).double().mean().item())
    assert got["accuracy_head"] is not None and got["num_classes"] == 3


def _synthetic_classes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """4×4 images of 3 classes whose mean intensity depends on the class (dark, middle, bright)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    base = torch.tensor([3.0, 8.0, 13.0])[y][:, None, None, None]
    x = (base + 1.5 * torch.randn(n, 1, 4, 4, generator=g)).round().clamp(0, 16).to(torch.uint8)
    return x, y


def test_the_bayes_classifier_and_the_head_beat_chance_after_a_little_training():
    torch.manual_seed(0)
    model = FlowModel(
        (1, 4, 4), 17, ModelConfig(levels=2, steps=1, hidden=8, conditional=True), num_classes=3, class_weight=0.5
    )
    x, y = _synthetic_classes(96, 0)
    model.initialize(x)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(60):
        loss = model(x, noise=torch.rand(x.shape, generator=g), y=y, objective=True).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    test_x, test_y = _synthetic_classes(60, 1)
    got = evaluate_classes(model, _labelled(test_x, test_y, 3), 64, torch.device("cpu"), classify=True)
    assert got["accuracy_bayes"] >= 0.8  # chance: 1/3
    assert got["accuracy_head"] >= 0.6


def test_the_spatial_class_prior_has_one_shift_per_channel_and_position():
    channel, spatial = _tiny_model(class_prior="channel"), _tiny_model(class_prior="spatial")
    shapes = spatial.latent_shapes()  # a 1×4×4 image: the split z is 2×2×2, the top 8×1×1
    priors = [spatial.levels[0].split.class_prior, spatial.top_prior]
    for prior, (c, h, w), flat in zip(priors, shapes, [channel.levels[0].split.class_prior, channel.top_prior]):
        assert prior.weight.shape == (3, 2 * c * h * w) and flat.weight.shape == (3, 2 * c)
        mean, log_std = prior(torch.tensor([0, 2, 1, 1]))
        assert mean.shape == log_std.shape == (4, c, h, w)
        assert flat(torch.tensor([0, 2]))[0].shape == (2, c, 1, 1)
    # Sampling a class draws from its per-position prior: the shapes and the round trip hold.
    images = spatial.sample(6, 0.7, torch.Generator().manual_seed(0), y=2)
    assert images.shape == (6, 1, 4, 4)
    with pytest.raises(ConfigError, match="model.class_prior must be one of channel, spatial"):
        load_preset("digits", {"model.conditional": True, "model.class_prior": "pixel"})


def test_the_objective_adds_the_weighted_head_cross_entropy_in_bits_per_image():
    model = _tiny_model(class_weight=0.25)
    with torch.no_grad():
        model.class_head.weight.normal_()
    x, y = torch.randint(0, 17, (4, 1, 4, 4)), torch.tensor([0, 1, 2, 0])
    noise = torch.rand(x.shape)
    bpd = model(x, noise=noise, y=y)
    objective = model(x, noise=noise, y=y, objective=True)
    ce = torch.nn.functional.cross_entropy(model.classify_logits(x, noise), y, reduction="none")
    assert torch.allclose(objective - bpd, 0.25 * ce / math.log(2), atol=1e-5)
    assert (ce > 0).all()


def test_class_weight_zero_builds_no_head():
    cfg = load_preset("digits", {**TINY_OVERRIDES, "model.conditional": True, "train.class_weight": 0})
    model = build_model(cfg)
    assert model.conditional and not model.has_class_head
    assert not any("class_head" in n for n, _ in model.named_parameters())
    with_head = build_model(load_preset("digits", {**TINY_OVERRIDES, "model.conditional": True}))
    assert with_head.has_class_head and with_head.num_classes == 10


def test_conditional_on_celeba_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="model.conditional needs one class per image.*celeba64.*false"):
        load_preset("celeba64", {"model.conditional": True})
    result = invoke("train", "--preset", "celeba64", *COND, "--out", "/nonexistent/never-written")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "model.conditional" in result.output


# -- a short conditional digits run through the CLI, and what is done with it ----------------------------------


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cond") / "run"
    sets = as_sets({"train.steps": 4, "train.eval_every": 2, "train.ema_decay": 0})
    ok(invoke("train", "--preset", "digits", *TINY_ARGS, *COND, *sets, "--threads", "1", "--out", out))
    return out


def test_a_short_conditional_digits_training_runs_and_bpd_reports_the_marginal_and_accuracies(conditional_run):
    records = [json.loads(line) for line in (conditional_run / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_bpd"] for r in records if "val_bpd" in r]
    assert vals and all(math.isfinite(v) for v in vals)
    model, cfg = load_checkpoint(conditional_run / "last.pt")
    assert cfg.model.conditional and model.num_classes == 10 and model.has_class_head
    trained = model.top_prior.weight.abs().sum().item()
    assert trained > 0  # the class priors learned from the labels
    result = json.loads(ok(invoke("bpd", conditional_run / "last.pt", "--classify", "--json", "--threads", "1")).stdout)
    assert {"bpd", "bpd_marginal", "accuracy_bayes", "accuracy_head", "num_classes"} <= set(result)
    assert result["num_classes"] == 10 and 0 <= result["accuracy_bayes"] <= 1
    assert result["bpd_marginal"] <= result["bpd"] + math.log2(10) / 64 + 1e-9
    text = ok(invoke("bpd", conditional_run / "last.pt", "--classify", "--threads", "1")).output
    assert "marginal over 10 classes" in text and "Bayes classifier" in text


def test_unconditional_training_reads_no_labels(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an unconditional run read labels")

    monkeypatch.setattr(data_load, "get_labels", refuse)
    monkeypatch.setattr(data_load, "get_labelled_dataset", refuse)
    train(load_preset("digits", {**TINY_OVERRIDES, "train.steps": 1}), tmp_path / "run")


def _with_strong_class_priors(conditional_run, tmp_path):
    """A copy of the run's checkpoint whose top prior puts each class far from the others."""
    saved = read_checkpoint(conditional_run / "last.pt")
    weight = saved["model"]["top_prior.weight"]
    c_top = weight.shape[1] // 2
    g = torch.Generator().manual_seed(0)
    weight[:, :c_top] = 0.8 * torch.randn(weight.shape[0], c_top, generator=g)  # class means
    weight[:, c_top:] = -1.5  # σ = e^-1.5 around them
    path = tmp_path / "strong.pt"
    save_checkpoint(path, {k: v for k, v in saved.items() if not k.startswith("format") and k != "finc_version"})
    return path


def test_sample_class_draws_from_that_class_prior(conditional_run, tmp_path, monkeypatch):
    path = _with_strong_class_priors(conditional_run, tmp_path)
    model, _ = load_checkpoint(path)
    drawn = {}

    def save_grid(x, path, bins, **kw):
        drawn["grid"] = x
        return 1

    def save_labelled_rows(rows, path, bins, scale=None):
        drawn["rows"] = rows
        return {"scale": 1}

    monkeypatch.setattr(image_files, "save_grid", save_grid)
    monkeypatch.setattr(image_files, "save_labelled_rows", save_labelled_rows)
    for c in (2, 7):
        drawn.clear()
        args = ("sample", path, "--class", c, "-n", 24, "--seed", 1, "-o", tmp_path / "s.png", "--json", "--threads", 1)
        result = json.loads(ok(invoke(*args)).stdout)
        assert result["classes"] == [c] and result["sample_classes"] == [c] * 24
        top = model.encode(drawn["grid"])[-1]  # the samples encoded back
        scores = torch.stack([gaussian_log_prob(top, *model.top_prior(torch.full((24,), k))) for k in range(10)], 1)
        assert (scores.argmax(1) == c).double().mean() >= 0.9
    drawn.clear()
    args = ("sample", path, "--class", "all", "-n", 6, "--seed", 1, "-o", tmp_path / "a.png", "--json", "--threads", 1)
    result = json.loads(ok(invoke(*args)).stdout)
    assert result["classes"] == list(range(10)) and result["sample_classes"] == [c for c in range(10) for _ in range(6)]
    rows = drawn["rows"]
    assert [label for label, _ in rows] == [f"y={c}" for c in range(10)]
    for c, (_, x) in enumerate(rows):
        top = model.encode(x)[-1]
        scores = torch.stack([gaussian_log_prob(top, *model.top_prior(torch.full((6,), k))) for k in range(10)], 1)
        assert (scores.argmax(1) == c).double().mean() >= 0.8


def test_sample_class_errors_are_one_line(conditional_run, trained_run, tmp_path):
    for ckpt, cls, needle in (
        (trained_run / "last.pt", "3", "needs a class-conditional model"),
        (conditional_run / "last.pt", "10", "out of range"),
        (conditional_run / "last.pt", "-1", "class number"),
        (conditional_run / "last.pt", "three", "class number"),
    ):
        result = invoke("sample", ckpt, "--class", cls, "-o", tmp_path / "x.png")
        assert result.exit_code == 2, result.output
        assert needle in result.output and len(result.output.strip().splitlines()) == 1, result.output
        assert not (tmp_path / "x.png").exists()
    result = invoke("bpd", trained_run / "last.pt", "--classify")
    assert result.exit_code == 2 and "--classify needs a class-conditional model" in result.output


def test_conditional_weights_with_an_unconditional_config_are_refused_in_one_line(
    conditional_run, trained_run, tmp_path
):
    saved = read_checkpoint(conditional_run / "last.pt")
    saved["config"]["model"]["conditional"] = False
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, {k: v for k, v in saved.items() if not k.startswith("format") and k != "finc_version"})
    with pytest.raises(CheckpointError, match="class-conditional model but the config has model.conditional false"):
        load_checkpoint(bad)
    result = invoke("bpd", bad)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    saved = read_checkpoint(trained_run / "last.pt")
    saved["config"]["model"]["conditional"] = True
    rev = tmp_path / "rev.pt"
    save_checkpoint(rev, {k: v for k, v in saved.items() if not k.startswith("format") and k != "finc_version"})
    with pytest.raises(CheckpointError, match="unconditional model but the config has model.conditional true"):
        load_checkpoint(rev)


def test_a_checkpoint_without_the_key_loads_as_unconditional(trained_run, tmp_path):
    saved = read_checkpoint(trained_run / "last.pt")
    saved["config"]["model"].pop("conditional", None)
    saved["config"]["train"].pop("class_weight", None)
    old = tmp_path / "old.pt"
    save_checkpoint(old, {k: v for k, v in saved.items() if not k.startswith("format") and k != "finc_version"})
    model, cfg = load_checkpoint(old)
    assert not cfg.model.conditional and not model.conditional


def test_a_conditional_checkpoint_without_class_prior_loads_with_the_per_channel_prior(tmp_path):
    cfg = load_preset("digits", {**TINY_OVERRIDES, "model.conditional": True, "model.class_prior": "channel"})
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        model.top_prior.weight.normal_()
    raw = cfg.to_dict()
    raw["model"].pop("class_prior")  # as saved before the key existed: the per-channel prior was the only one
    old = tmp_path / "old.pt"
    save_checkpoint(old, {"config": raw, "model": model.state_dict()})
    loaded, loaded_cfg = load_checkpoint(old)
    assert loaded_cfg.model.class_prior == "channel"
    assert loaded.top_prior.weight.shape == (10, 2 * model.latent_shapes()[-1][0])
    assert torch.equal(loaded.top_prior.weight, model.top_prior.weight)


@pytest.mark.parametrize("key", ["model.conditional=false", "train.class_weight=0", "model.class_prior=channel"])
def test_resume_refuses_changing_the_conditioning(conditional_run, tmp_path, key):
    result = invoke("train", "--resume", conditional_run, "--set", key, "--out", tmp_path / "other", "--force")
    assert result.exit_code == 2, result.output
    assert "cannot change on resume" in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("class_prior", ["channel", "spatial"])
def test_class_bpd_is_one_forward_per_class_from_one_pass_through_the_flow(class_prior):
    """class_bpd runs the flow once and each class's priors alone; every column equals a full forward given
    that class, variational dequantizer and split priors included (float64)."""
    torch.manual_seed(4)
    cfg = ModelConfig(
        levels=3, steps=1, hidden=4, conditional=True, class_prior=class_prior, dequantization="variational"
    )
    model = FlowModel((1, 8, 8), 17, cfg, num_classes=4, class_weight=0.1).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "class_prior" in name or "top_prior" in name or "split.conv" in name:
                p.copy_(0.3 * torch.randn_like(p))
    model.initialize(torch.randint(0, 17, (8, 1, 8, 8)))
    model.eval()
    x = torch.randint(0, 17, (5, 1, 8, 8))
    noise = torch.rand(x.shape, dtype=torch.float64)
    calls = []
    hook = model.levels[0].steps.register_forward_hook(lambda *a: calls.append(1))
    got = model.class_bpd(x, noise)
    hook.remove()
    assert len(calls) == 1  # the flow ran once for the four classes
    with torch.no_grad():
        want = torch.stack([model(x, noise=noise, y=torch.full((5,), c)) for c in range(4)], 1)
    assert got.shape == (5, 4) and torch.allclose(got, want, rtol=0, atol=1e-12)
    assert (want.max(1).values - want.min(1).values > 1e-3).all()  # the classes do differ
    scores, logits = model.class_scores(x, noise)  # the head's logits come from the same pass
    assert torch.equal(scores, got) and torch.allclose(logits, model.classify_logits(x, noise), rtol=0, atol=1e-12)
