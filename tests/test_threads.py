"""CPU threads: --threads > FINC_THREADS > OMP_NUM_THREADS > the size rule; applied, recorded, bad values refused."""

from __future__ import annotations

import json

import pytest
import torch
from cli_run import invoke, ok
from tiny import TINY_ARGS, TINY_OVERRIDES, as_sets

from finc_cli.bench.threads import DEFAULT, parse_counts
from finc_cli.errors import InputError
from finc_cli.runtime.threads import (
    ONE_THREAD_BELOW,
    THREADS_ENV,
    apply_threads,
    cpu_count,
    resolve_threads,
    step_work,
)

TINY = [*TINY_ARGS, "--steps", "2"]
SMALL, LARGE = ONE_THREAD_BELOW / 10, ONE_THREAD_BELOW * 10


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("flag", "environ", "want"),
    [
        (3, {THREADS_ENV: "5", "OMP_NUM_THREADS": "7"}, (3, "flag")),
        (None, {THREADS_ENV: "5", "OMP_NUM_THREADS": "7"}, (5, "env")),
        (None, {THREADS_ENV: " ", "OMP_NUM_THREADS": "7"}, (7, "omp")),  # blank counts as unset
        (None, {"OMP_NUM_THREADS": "4,2"}, (4, "omp")),  # OpenMP's nested form: the outer level
        (None, {"OMP_NUM_THREADS": "many"}, (1, "default")),  # not ours to refuse: ignored
        (None, {}, (1, "default")),
    ],
)
def test_precedence_flag_env_omp_default(flag, environ, want):
    choice = resolve_threads(flag, SMALL, environ)
    assert (choice.n, choice.source) == want


def test_the_default_is_one_thread_for_small_work_and_all_cores_above():
    small, large = resolve_threads(None, SMALL, {}), resolve_threads(None, LARGE, {})
    assert (small.n, large.n) == (1, cpu_count())
    assert "one thread" in small.rule and "all cores" in large.rule
    assert resolve_threads(None, None, {}).n == cpu_count()  # no estimate (not training): torch's own, all cores


def test_the_digits_preset_trains_on_one_thread_by_default():
    from finc_cli.config import load_preset
    from finc_cli.model import build_model

    cfg = load_preset("digits")
    model = build_model(cfg)
    work = step_work(model.num_parameters(), cfg.train.batch_size, model.image_shape)
    assert work < ONE_THREAD_BELOW  # measured 1.7x faster on one thread than on two
    assert step_work(1000, 10, (3, 4, 5)) == 1000 * 10 * 20


@pytest.mark.parametrize("text", ["0", "-2", "two", "1.5"])
def test_bad_finc_threads_is_input_error(text):
    with pytest.raises(InputError, match=THREADS_ENV):
        resolve_threads(None, SMALL, {THREADS_ENV: text})


def test_apply_threads_sets_torch(keep_threads):
    apply_threads(1)
    assert torch.get_num_threads() == 1
    apply_threads(2)  # the inter-op pool is set once at most; a second call must not raise
    assert torch.get_num_threads() == 2


def test_train_records_the_choice_and_restores_the_callers_count(tmp_path, keep_threads, monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(2)
    out = tmp_path / "run"
    summary = json.loads(ok(invoke("train", "--out", out, *TINY, "--json")).stdout)
    assert (summary["threads"], summary["threads_source"]) == (1, "omp")
    assert torch.get_num_threads() == 2  # the caller's count, back after train()
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first == {
        "step": 0,
        "event": "threads",
        "threads": 1,
        "threads_source": "omp",
        "threads_rule": "OMP_NUM_THREADS",
    }

    monkeypatch.setenv(THREADS_ENV, "2")
    summary = json.loads(ok(invoke("train", "--out", out, *TINY, "--json", "--force", "--threads", "1")).stdout)
    assert (summary["threads"], summary["threads_source"]) == (1, "flag")


def test_train_without_settings_uses_the_size_rule(tmp_path, monkeypatch):
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    summary = json.loads(ok(invoke("train", "--out", tmp_path / "run", *TINY, "--json")).stdout)
    assert (summary["threads"], summary["threads_source"]) == (1, "default")
    assert summary["threads_rule"].startswith("work ")


@pytest.mark.parametrize("value", ["0", "-1"])
def test_bad_threads_flag_exits_2(tmp_path, value):
    result = invoke("train", "--out", tmp_path / "run", *TINY, "--threads", value)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_bad_finc_threads_exits_2_in_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "zero")
    result = invoke("train", "--out", tmp_path / "run", *TINY)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().count("\n") == 0 and THREADS_ENV in result.stderr
    assert not (tmp_path / "run").exists()
    result = invoke("sample", tmp_path / "missing.pt")
    assert result.exit_code == 2 and THREADS_ENV in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["train"],
        ["bpd"],
        ["evaluate"],
        ["sample"],
        ["invert"],
        ["interpolate"],
        ["compare"],
        ["benchmark", "layer"],
        ["benchmark", "model"],
        ["benchmark", "scaling"],
        ["benchmark", "data"],
        ["benchmark", "threads"],
    ],
)
def test_every_computing_command_takes_threads(command):
    assert "--threads" in ok(invoke(*command, "--help")).stdout


def test_parse_counts():
    assert parse_counts("1, 2,default", "--threads", allow_default=True) == [1, 2, DEFAULT]
    assert parse_counts("2", "--jobs") == [2]
    for bad in ("0", "default", "x", ","):
        with pytest.raises(InputError):
            parse_counts(bad, "--jobs")


@pytest.mark.slow
def test_benchmark_threads_runs_side_by_side(tmp_path):
    args = ["--steps", 4, "--jobs", "1,2", "--threads", "1,default", "--json"]
    args += as_sets(TINY_OVERRIDES)
    data = json.loads(ok(invoke("benchmark", "threads", *args)).stdout)
    rows = {(r["jobs"], r["threads"]): r for r in data["rows"]}
    assert set(rows) == {(1, 1), (1, "default"), (2, 1), (2, "default")}
    assert len(rows[(2, 1)]["steps_per_s"]) == 2 and rows[(2, 1)]["threads_used"] == 1
    assert rows[(1, "default")]["threads_used"] == 1  # the tiny model is under the size rule
    for row in rows.values():
        assert row["combined"] == pytest.approx(sum(row["steps_per_s"])) and row["vs_all_cores"] > 0
