"""`finc compare`: one run per convolution, same seed and budget, a table, and resuming where it stopped."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
from tiny import TINY_OVERRIDES
from typer.testing import CliRunner

from finc_cli.cli.main import app
from finc_cli.commands.compare import COMPARE_COLUMNS, compare, compare_markdown
from finc_cli.config import changed_keys, load_preset, parse_conv_list
from finc_cli.errors import ConfigError, InputError

TINY = {**TINY_OVERRIDES, "train.eval_batch_size": 512}
TIMING = {"batch": 2, "repeats": 1, "warmup": 0, "threads": 1, "recon_images": 8}


def _compare(out, steps=2, convs=("finc", "cinc"), overrides=None, notes=None, seeds=None):
    return compare(
        "digits",
        convs=convs,
        steps=steps,
        out_dir=out,
        overrides={**TINY, **(overrides or {})},
        device="cpu",
        timing=TIMING,
        notify=None if notes is None else notes.append,
        seeds=seeds,
    )


@pytest.mark.slow
def test_compare_trains_each_conv_alike_writes_the_table_and_resumes(tmp_path):
    out = tmp_path / "cmp"
    notes: list = []
    result = _compare(out, notes=notes)
    assert [r["conv"] for r in result["rows"]] == ["finc", "cinc"]
    for r in result["rows"]:
        assert math.isfinite(r["bpd"]) and r["bpd_stderr"] > 0 and r["n_test_images"] > 0
        assert r["exact"] and r["max_recon_err"] < 1e-3 and r["train_images_per_s"] > 0
        assert r["ft_s"] > 0 and r["st_s"] > 0 and r["steps"] == 2
    finc, cinc = result["rows"]
    assert finc["params"] < cinc["params"] and finc["backend"] != "raster" and cinc["backend"] == "raster"
    assert finc["st_vs_finc"] == 1.0 and result["best_baseline"] == "cinc"
    assert result["finc_within_stderr"] == (finc["bpd"] <= cinc["bpd"] + cinc["bpd_stderr"])
    # the same run but for model.conv: same seed, data order, budget
    configs = [load_preset(out / c / "config.yaml") for c in ("finc", "cinc")]
    assert changed_keys(*configs) == [("model.conv", "finc", "cinc")]
    assert json.loads((out / "compare.json").read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    assert "| FInC |" in (out / "compare.md").read_text() and "| CInC |" in compare_markdown(result)
    assert notes[-1] == "timing FT and ST of finc, cinc at batch 2"  # both at once, interleaved

    # rerun: both finished, nothing trained again
    best = (out / "cinc" / "best.pt").stat().st_mtime_ns
    notes.clear()
    again = _compare(out, notes=notes)
    assert [n.split(":")[1].strip() for n in notes] == ["finished before (2 steps), skipped"] * 2
    assert again["rows"] == result["rows"] and (out / "cinc" / "best.pt").stat().st_mtime_ns == best

    # interrupted after training, before scoring: the variant is resumed (already at its steps) and scored
    (out / "cinc" / "compare.json").unlink()
    notes.clear()
    _compare(out, notes=notes)
    assert "skipped" in notes[0] and "resuming" in notes[1]

    # a longer budget resumes both from last.pt
    longer = _compare(out, steps=3)
    assert [r["steps"] for r in longer["rows"]] == [3, 3]
    steps_logged = [json.loads(line).get("step") for line in (out / "finc" / "metrics.jsonl").read_text().splitlines()]
    assert max(s for s in steps_logged if s is not None) == 3

    # a different architecture in the same folder is refused, nothing touched
    with pytest.raises(ConfigError, match="trained differently.*model.hidden cannot change"):
        _compare(out, steps=3, overrides={"model.hidden": 16})


def test_compare_refuses_bad_input_before_training(tmp_path):
    with pytest.raises(Exception, match="unknown convolution 'macow'"):
        _compare(tmp_path / "a", convs=("finc", "macow"))
    with pytest.raises(ConfigError, match="unknown config key"):
        _compare(tmp_path / "b", overrides={"model.nope": 1})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_compare_cli_json(tmp_path):
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    args = ["compare", "--preset", "digits", "--conv", "emerging,none", "--steps", "1", "--out", str(tmp_path / "c")]
    timing = ["--timing-batch", "2", "--repeats", "1", "--threads", "1", "--device", "cpu", "--quiet"]
    result = CliRunner().invoke(app, [*args, *sets, *timing, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["conv"] for r in data["rows"]] == ["emerging", "none"] and data["finc_within_stderr"] is None
    assert all(r["exact"] for r in data["rows"])
    bad = CliRunner().invoke(app, [*args, "--conv", "macow"])
    assert bad.exit_code == 2 and "unknown convolution" in bad.output


def _run(conv, seed, bpd, exact=True, err=1e-5, speed=100.0):
    return {
        "conv": conv,
        "label": conv,
        "seed": seed,
        "bpd": bpd,
        "bpd_stderr": 0.01,
        "steps": 2,
        "params": 10,
        "train_images_per_s": speed,
        "max_recon_err": err,
        "max_pixel_err_levels": err,
        "exact": exact,
        "run_dir": f"out/{conv}/seed-{seed}",
    }


def test_aggregate_seeds_mean_and_stderr_over_seeds_and_the_paired_difference():
    from finc_cli.commands.compare import _summary, aggregate_seeds

    runs = [
        _run("finc", 0, 2.0),
        _run("cinc", 0, 1.9, err=3e-5),
        _run("finc", 1, 2.2, speed=50.0),
        _run("cinc", 1, 2.0, exact=False),
        _run("finc", 2, 2.1, speed=300.0),
        _run("cinc", 2, 2.0),
    ]
    finc, cinc = aggregate_seeds(runs)
    assert finc["conv"] == "finc" and finc["seeds"] == [0, 1, 2] and finc["bpd_seeds"] == [2.0, 2.2, 2.1]
    assert finc["bpd"] == pytest.approx(2.1) and finc["bpd_stderr"] == pytest.approx(0.1 / math.sqrt(3))
    assert finc["bpd_stderr_over"] == "seeds" and finc["train_images_per_s"] == 100.0 and finc["exact"]
    assert not cinc["exact"] and cinc["max_recon_err"] == 3e-5 and "seed" not in cinc
    result = _summary(Path("out"), "digits", 2, [0, 1, 2], runs)
    assert result["best_baseline"] == "cinc" and result["seeds"] == [0, 1, 2]
    # 2.1 > 1.9667 + 0.0333: not within one stderr; paired differences 0.1, 0.2, 0.1
    assert result["finc_within_stderr"] is False
    paired = result["finc_minus_best"]
    assert paired["n"] == 3 and paired["mean"] == pytest.approx(0.4 / 3)
    assert paired["stderr"] == pytest.approx(statistics.stdev([0.1, 0.2, 0.1]) / math.sqrt(3))
    text = compare_markdown({**result, "rows": [{**r, "timing_batch": 2} for r in result["rows"]]})
    assert "| 2.1000 ± 0.0577 | 2.000, 2.200, 2.100 |" in text and "standard error over seeds" in text
    assert "FInC minus cinc, seed by seed: +0.1333" in text
    # one seed: that run's row and its stderr over test images; no per-seed column
    single = _summary(Path("out"), "digits", 2, [0], runs[:2])
    assert single["rows"][0]["bpd_stderr"] == 0.01 and single["rows"][0]["bpd_stderr_over"] == "test images"
    assert single["finc_minus_best"] is None and "per seed" not in compare_markdown(single)


def test_seeds_are_parsed_and_checked():
    from finc_cli.commands.compare import parse_seeds

    assert parse_seeds(["0,1", "2", "1"]) == [0, 1, 2]
    for bad, message in ((["x"], "takes integers"), (["-1"], "non-negative"), ([","], "at least one seed")):
        with pytest.raises(ConfigError, match=message):
            parse_seeds(bad)
    with pytest.raises(ConfigError, match="--seeds or --set train.seed, not both"):
        compare(
            "digits",
            convs=["finc"],
            steps=1,
            out_dir="unused",
            overrides={"train.seed": 3},
            device="cpu",
            timing=TIMING,
            seeds=[0, 1],
        )
    assert not Path("unused").exists()


def test_conv_lists_are_parsed_and_checked():
    assert parse_conv_list(["finc,glow", "cinc", " finc "]) == ["finc", "none", "cinc"]  # glow is conv none
    for bad, message in ((["finc,macow"], "unknown convolution 'macow'"), ([], "give at least one convolution")):
        with pytest.raises(InputError, match=message):
            parse_conv_list(bad)


def test_one_seed_table_rows_and_missing_values():
    row = {"label": "FInC", "bpd": None, "bpd_stderr": None, "params": 1234, "exact": True}
    result = {"preset": "digits", "steps": 1, "seed": 0, "rows": [row], "finc_within_stderr": None}
    head, rule, line = compare_markdown(result).splitlines()[:3]
    columns = len(COMPARE_COLUMNS) - 1  # one seed: no per-seed column
    assert head.startswith("| conv | test bits/dim | params |") and head.count(" | ") == columns - 1
    assert rule == "|" + "---|" * columns
    assert line.startswith("| FInC | – | 1,234 | – |") and line.endswith("| True |")


@pytest.mark.slow
def test_compare_over_seeds_trains_each_conv_per_seed_and_resumes(tmp_path):
    out = tmp_path / "cmp"
    notes: list = []
    result = _compare(out, steps=1, notes=notes, seeds="0,1".split(","))
    assert result["seeds"] == [0, 1] and [r["conv"] for r in result["rows"]] == ["finc", "cinc"]
    assert [(r["conv"], r["seed"]) for r in result["runs"]] == [("finc", 0), ("finc", 1), ("cinc", 0), ("cinc", 1)]
    for row in result["rows"]:
        assert row["seeds"] == [0, 1] and row["bpd"] == pytest.approx(statistics.fmean(row["bpd_seeds"]))
        assert row["bpd_stderr"] == pytest.approx(statistics.stdev(row["bpd_seeds"]) / math.sqrt(2))
        assert row["exact"] and row["ft_s"] > 0 and row["st_s"] > 0
    assert result["finc_minus_best"]["n"] == 2
    # the runs differ only in what they should: the seed within a conv, the conv within a seed
    cfg = {(c, s): load_preset(out / c / f"seed-{s}" / "config.yaml") for c in ("finc", "cinc") for s in (0, 1)}
    assert changed_keys(cfg["finc", 0], cfg["finc", 1]) == [("train.seed", 0, 1)]
    assert changed_keys(cfg["finc", 1], cfg["cinc", 1]) == [("model.conv", "finc", "cinc")]
    assert notes[:2] == [
        f"[1/4] finc seed 0: training in {out / 'finc' / 'seed-0'}",
        f"[2/4] finc seed 1: training in {out / 'finc' / 'seed-1'}",
    ]
    notes.clear()
    again = _compare(out, steps=1, notes=notes, seeds=[0, 1])
    assert sum("finished before" in n for n in notes) == 4 and again["rows"] == result["rows"]
    assert json.loads((out / "compare.json").read_text())["finc_minus_best"] == result["finc_minus_best"]
