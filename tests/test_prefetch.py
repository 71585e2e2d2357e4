"""Batches assembled ahead: what a step sees is a function of (seed, step), in a thread, in workers, on N ranks."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from tiny import TINY_OVERRIDES

from finc_cli.config import load_preset
from finc_cli.data.augment import Augment
from finc_cli.data.batches import batch_indices, epoch_permutation, fetch, step_batch, step_generator, step_noise
from finc_cli.data.datasets import ImageTensorDataset
from finc_cli.data.prefetch import Prefetcher
from finc_cli.train import train


def _dataset(n: int = 40, augment: bool = True) -> ImageTensorDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 6, 6), generator=g, dtype=torch.uint8)
    return ImageTensorDataset(images, Augment(hflip=True, translate=2) if augment else None)


@pytest.mark.parametrize("augment", [True, False])
def test_step_batch_is_the_recipe_of_seed_and_step(augment):
    """A step's images are the recipe before prefetching (torch.manual_seed(seed·1000003 + step + 1), then the
    augmented global batch); its noise is rand(B, C, H, W) from step_noise's own generator."""
    ds, seed, batch = _dataset(augment=augment), 3, 8
    for step in (0, 1, 7):
        torch.manual_seed(seed * 1_000_003 + step + 1)
        x = fetch(ds, batch_indices(len(ds), batch, seed, step))
        got = step_batch(ds, step, seed, batch)
        assert got.step == step and torch.equal(got.images, x)
        assert torch.equal(got.noise, step_noise(seed, step, x.shape))
        assert got.noise.dtype == torch.float32 and 0 <= got.noise.min() and got.noise.max() < 1
    assert step_batch(ds, 1, seed, batch, noise=False).noise is None


def test_step_noise_is_a_function_of_seed_and_step_and_slices_by_rank():
    a, b = step_noise(0, 4, (6, 1, 3, 3)), step_noise(0, 4, (6, 1, 3, 3))
    assert torch.equal(a, b)
    assert not torch.equal(a, step_noise(0, 5, (6, 1, 3, 3))) and not torch.equal(a, step_noise(1, 4, (6, 1, 3, 3)))
    assert torch.equal(step_noise(0, 4, (6, 1, 3, 3), rank=1, world=3), a[1::3])
    # independent of the augmentation stream of the same step
    assert not torch.equal(a.flatten()[:8], torch.rand(8, generator=step_generator(0, 4)))


def test_epoch_permutation_is_cached_and_batches_do_not_alias_it():
    perm = epoch_permutation(50, 2, 0)
    assert perm is epoch_permutation(50, 2, 0) and sorted(perm.tolist()) == list(range(50))
    idx = batch_indices(50, 10, 2, 1)
    assert torch.equal(idx, perm[10:20])
    idx.zero_()
    assert torch.equal(batch_indices(50, 10, 2, 1), perm[10:20]) and sorted(perm.tolist()) == list(range(50))


def test_ranks_take_interleaved_slices_of_the_same_global_batch():
    ds = _dataset()
    whole = step_batch(ds, 5, 1, 8)
    parts = [step_batch(ds, 5, 1, 8, rank=r, world=2) for r in range(2)]
    for r, part in enumerate(parts):
        assert torch.equal(part.images, whole.images[r::2]) and torch.equal(part.noise, whole.noise[r::2])


@pytest.mark.parametrize("workers", [0, 2])
def test_prefetcher_yields_each_step_in_order_and_unchanged(workers):
    ds = _dataset()
    make = partial(step_batch, ds, seed=0, batch_size=8)
    prefetch = Prefetcher(make, start=3, stop=9, workers=workers, depth=2)
    try:
        for step in range(3, 9):
            got, want = prefetch.get(step), make(step)
            assert got.step == step and torch.equal(got.images, want.images) and torch.equal(got.noise, want.noise)
        with pytest.raises(RuntimeError, match="next is 9"):
            prefetch.get(9)
    finally:
        prefetch.close()


def _broken(step: int):
    if step == 2:
        raise ValueError("cannot decode image 7")
    return step_batch(_dataset(), step, 0, 4)


def test_an_error_while_assembling_reaches_the_step_that_needed_it():
    prefetch = Prefetcher(_broken, 0, 5)
    try:
        prefetch.get(0), prefetch.get(1)
        with pytest.raises(ValueError, match="cannot decode image 7"):
            prefetch.get(2)
    finally:
        prefetch.close()


def _digest_and_metrics(out, workers: int, **sets) -> tuple[str, list]:
    cfg = load_preset(
        "digits",
        {
            **TINY_OVERRIDES,
            "train.steps": 6,
            "train.log_every": 2,
            "train.eval_every": 1000,
            "data.num_workers": workers,
            "data.hflip": True,
            "data.translate": 1,
            **sets,
        },
    )
    summary = train(cfg, out)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return summary["params_sha256"], lines


def test_training_with_workers_equals_training_with_the_thread(tmp_path):
    thread, lines = _digest_and_metrics(tmp_path / "thread", 0)
    workers, _ = _digest_and_metrics(tmp_path / "workers", 2)
    assert thread == workers  # bit-identical weights: where a batch is made changes nothing in it
    logged = [r for r in lines if "loss_bpd" in r]
    assert logged and all(r["data_s"] >= 0 and r["compute_s"] > 0 for r in logged)


def test_noise_drawn_by_the_step_equals_noise_drawn_ahead(tmp_path, monkeypatch):
    """The GPU path (the step draws the noise on its device) gives the CPU path's weights, bit for bit."""
    ahead, _ = _digest_and_metrics(tmp_path / "ahead", 0, **{"train.accumulate": 2})
    monkeypatch.setattr("finc_cli.train.loop._step_draws_noise", lambda device: True)
    in_step, _ = _digest_and_metrics(tmp_path / "in_step", 0, **{"train.accumulate": 2})
    assert ahead == in_step
