"""Distributed training on the CPU with gloo: two processes = one process with the same global batch."""

import gc
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from tiny import TINY_MODEL
from torch.nn.parallel import DistributedDataParallel

from finc_cli.config import load_preset

TINY = {
    **TINY_MODEL,
    "train.batch_size": 32,
    "train.eval_batch_size": 256,
    "train.steps": 4,
    "train.log_every": 1,
    "train.eval_every": 1000,
    "train.sample_every": 1000,
    "train.checkpoint_every": 2,
    "train.warmup_steps": 2,
}


pytestmark = pytest.mark.slow  # each test spawns gloo process groups


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, overrides: dict, resume, result_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    from finc_cli.train import train

    summary = train(load_preset("digits", overrides), out, resume=resume, overrides=overrides)
    # No collection here: what train() left alive would be torn down at interpreter exit.
    summary["ddp_alive"] = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
    with open(os.path.join(result_dir, f"rank{rank}.json"), "w") as fh:
        json.dump(summary, fh)


def _run(world: int, out, overrides: dict, tmp_path, resume=None) -> list[dict]:
    result_dir = tmp_path / f"results-{world}-{len(list(tmp_path.iterdir()))}"
    result_dir.mkdir()
    if world == 1:
        _worker_single(str(out), overrides, resume, str(result_dir))
    else:
        mp.spawn(
            _worker, args=(world, _free_port(), str(out), overrides, resume, str(result_dir)), nprocs=world, join=True
        )
    return [json.loads((result_dir / f"rank{r}.json").read_text()) for r in range(world)]


def _worker_single(out: str, overrides: dict, resume, result_dir: str) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(key, None)
    from finc_cli.train import train

    summary = train(load_preset("digits", overrides), out, resume=resume, overrides=overrides)
    with open(os.path.join(result_dir, "rank0.json"), "w") as fh:
        json.dump(summary, fh)


def _losses(run_dir) -> dict:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss_bpd"] for r in lines if "loss_bpd" in r and "event" not in r}


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    _run(1, tmp_path / "single", TINY, tmp_path)
    double = _run(2, tmp_path / "ddp", TINY, tmp_path)
    assert double[0]["world_size"] == 2
    # DDP's wrapper (and through its reducer, gloo's process group) is freed before the group is destroyed,
    # not left to interpreter shutdown, where its teardown can abort a process whose run succeeded.
    assert double[0]["ddp_alive"] == double[1]["ddp_alive"] == 0
    # Both ranks end with bit-identical parameters.
    assert double[0]["params_sha256"] == double[1]["params_sha256"]
    a, b = _losses(tmp_path / "single"), _losses(tmp_path / "ddp")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert abs(a[step] - b[step]) < 1e-4 * abs(a[step]), (step, a[step], b[step])
    # Only rank 0 wrote the run directory, and it holds the files a run needs.
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt"):
        assert (tmp_path / "ddp" / name).is_file()


def test_resume_under_two_processes_continues_the_run(tmp_path):
    half = dict(TINY, **{"train.steps": 2})
    _run(2, tmp_path / "run", half, tmp_path)
    resumed = _run(2, tmp_path / "run", TINY, tmp_path, resume="auto")
    assert resumed[0]["resumed_from"].endswith("last.pt")
    assert resumed[0]["steps"] == 4 and resumed[0]["steps_this_run"] == 2
    _run(2, tmp_path / "straight", TINY, tmp_path)
    losses_resumed, losses_straight = _losses(tmp_path / "run"), _losses(tmp_path / "straight")
    assert sorted(losses_resumed) == [1, 2, 3, 4]  # no duplicated steps after resume
    for step in losses_straight:
        assert abs(losses_resumed[step] - losses_straight[step]) < 1e-5 * abs(losses_straight[step])


def test_resume_with_a_different_number_of_processes(tmp_path):
    half = dict(TINY, **{"train.steps": 2})
    _run(2, tmp_path / "run", half, tmp_path)
    resumed = _run(1, tmp_path / "run", TINY, tmp_path, resume="auto")
    assert resumed[0]["steps"] == 4 and resumed[0]["world_size"] == 1
    _run(1, tmp_path / "straight", TINY, tmp_path)
    a, b = _losses(tmp_path / "run"), _losses(tmp_path / "straight")
    for step in b:
        assert abs(a[step] - b[step]) < 1e-4 * abs(b[step])


@pytest.mark.parametrize("extra", [{"train.precision": "bf16"}, {"train.accumulate": 4}])
def test_bf16_and_accumulation_stay_close_to_float32(tmp_path, extra):
    base = _run(1, tmp_path / "fp32", dict(TINY, **{"train.eval_every": 4}), tmp_path)[0]
    other = _run(1, tmp_path / "other", dict(TINY, **{"train.eval_every": 4}, **extra), tmp_path)[0]
    assert torch.isfinite(torch.tensor(other["val_bpd"]))
    tolerance = 0.05 if "train.precision" in extra else 1e-3
    assert abs(other["val_bpd"] - base["val_bpd"]) < tolerance * base["val_bpd"], (other["val_bpd"], base["val_bpd"])
    losses = _losses(tmp_path / "other")
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())


@pytest.mark.parametrize("memory", ["checkpoint", "invert"])
def test_memory_modes_under_ddp_with_accumulation_match_store_on_one_process(tmp_path, memory):
    """train.memory rebuilds or recomputes activations; DDP's gradient hooks and no_sync accumulation still see
    every parameter's gradient once per micro-batch, so the run follows store's to round-off."""
    base = _run(1, tmp_path / "store", TINY, tmp_path)[0]
    other = _run(2, tmp_path / memory, dict(TINY, **{"train.memory": memory, "train.accumulate": 2}), tmp_path)
    assert other[0]["params_sha256"] == other[1]["params_sha256"]
    a, b = _losses(tmp_path / "store"), _losses(tmp_path / memory)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert abs(a[step] - b[step]) < 1e-4 * abs(a[step]), (step, a[step], b[step])
    assert base["steps"] == other[0]["steps"] == 4


def test_batch_not_divisible_by_processes_times_accumulate_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="divisible by processes × accumulate"):
        _run(1, tmp_path / "bad", dict(TINY, **{"train.batch_size": 30, "train.accumulate": 4}), tmp_path)
