"""`finc compare`: one run per convolution, same seed and budget, a table, and resuming where it stopped."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from finc_cli.cli.main import app
from finc_cli.compare import compare, compare_markdown
from finc_cli.config import changed_keys, load_preset
from finc_cli.errors import ConfigError

TINY = {"model.steps": 1, "model.hidden": 8, "train.batch_size": 16, "train.eval_batch_size": 512}
TIMING = {"batch": 2, "repeats": 1, "warmup": 0, "threads": 1, "recon_images": 8}


def _compare(out, steps=2, convs=("finc", "cinc"), overrides=None, notes=None):
    return compare(
        "digits",
        convs,
        steps,
        out,
        {**TINY, **(overrides or {})},
        "cpu",
        TIMING,
        notify=None if notes is None else notes.append,
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
