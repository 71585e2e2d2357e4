"""`finc presets`, `finc config`, shell completion and the benchmarks' progress bar."""

from __future__ import annotations

import json

import pytest
import yaml
from cli_run import invoke, ok
from tiny import TINY_MODEL, TINY_SETS

from finc_cli.config import list_presets, load_preset


@pytest.fixture(scope="module")
def presets() -> dict:
    return {row["name"]: row for row in json.loads(ok(invoke("presets", "--json")).stdout)["presets"]}


def test_presets_json_lists_every_preset_with_its_architecture(presets):
    assert sorted(presets) == list_presets()
    for name, row in presets.items():
        cfg = load_preset(name)
        assert row["dataset"] == cfg.data.name
        assert (row["levels"], row["steps"], row["kernel_size"], row["width"]) == (
            cfg.model.levels,
            cfg.model.steps,
            cfg.model.kernel_size,
            cfg.model.hidden,
        )
        assert row["parameters"] > 0


@pytest.mark.parametrize("name", ["digits", "mnist"])
def test_presets_parameter_counts_match_the_built_models(presets, name):
    from finc_cli.model import build_model

    assert presets[name]["parameters"] == build_model(load_preset(name)).num_parameters()
    assert presets[name]["shape"] == {"digits": [1, 8, 8], "mnist": [1, 28, 28]}[name]


def test_presets_table_names_each_preset():
    out = ok(invoke("presets")).stdout
    for name in list_presets():
        assert name in out
    from finc_cli.model import build_model

    count = build_model(load_preset("digits")).num_parameters()
    assert f"{count:,}" in out  # digits' parameter count, as the model built from the preset has


SETS = [*TINY_SETS, "--set", "train.lr=3e-4", "--set", "train.steps=0"]


def test_config_prints_the_resolved_config_as_yaml_and_json():
    printed = ok(invoke("config", "--preset", "digits", *SETS)).stdout
    data = yaml.safe_load(printed)
    expected = load_preset("digits", {**TINY_MODEL, "train.lr": 3e-4, "train.steps": 0})
    assert data == expected.to_dict() and data["train"]["lr"] == 3e-4 and data["model"]["hidden"] == 8
    assert data["train"]["batch_size"] == load_preset("digits").train.batch_size  # the preset's, untouched
    as_json = json.loads(ok(invoke("config", "--preset", "digits", *SETS, "--json")).stdout)
    assert as_json == data


@pytest.mark.slow
def test_config_output_is_what_train_saves(tmp_path):
    printed = ok(invoke("config", "--preset", "digits", *SETS)).stdout
    run = tmp_path / "run"
    ok(invoke("train", "--preset", "digits", "--out", run, *SETS, "--quiet", "--json"))
    assert (run / "config.yaml").read_text() == printed


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "model.nope=1"], "unknown config key"),
        (["--set", "model.levels=x"], "must be an integer"),
        (["--preset", "nope"], "unknown preset"),
    ],
)
def test_config_bad_input_is_one_line_exit_2(args, message):
    result = invoke("config", *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_shell_completion_is_offered():
    out = ok(invoke("--help")).stdout
    assert "--install-completion" in out and "--show-completion" in out


def test_benchmark_shows_a_progress_bar_except_with_json():
    args = ["benchmark", "scaling", "-n", "4", "-k", "2", "-k", "3", "--backend", "wavefront", "--channels", "4"]
    args += ["--repeats", "1", "--threads", "1"]
    table = ok(invoke(*args))
    assert "benchmark scaling" in table.stderr and "2/2" in table.stderr
    quiet = ok(invoke(*args, "--json"))
    assert quiet.stderr == "" and len(json.loads(quiet.stdout)["rows"]) == 2
