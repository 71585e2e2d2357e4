"""Benchmark tooling on tiny shapes: rows, CLI output, BENCHMARKS.md markers, exponent fit (never timings)."""

from __future__ import annotations

import json
import math

import pytest
import typer
from tiny import TINY_MODEL, TINY_SETS
from typer.testing import CliRunner

from finc_cli.bench import layer, model, report, scaling, tables, timing
from finc_cli.cli.benchmark import register
from finc_cli.errors import InputError

TINY = dict(repeats=2, warmup=1, threads=1)


def _positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_layer_rows_every_layer_and_backend():
    rows = layer.layer_rows([(2, 4, 5, 6, 3)], backends=("wavefront", "paper"), **TINY)
    keys = {
        "layer",
        "backend",
        "B",
        "C",
        "H",
        "W",
        "k",
        "dtype",
        "device",
        "forward_ms",
        "inverse_ms",
        "ratio",
        "max_err",
        "forward_q1_ms",
        "forward_q3_ms",
        "inverse_q1_ms",
        "inverse_q3_ms",
        "repeats",
    }
    seen = {(r["layer"], r["backend"]) for r in rows}
    assert seen == {
        ("finc", "wavefront"),
        ("finc", "paper"),
        ("emerging", "raster"),
        ("cinc", "raster"),
        ("glow", "lu"),
    }
    for r in rows:
        assert keys <= set(r)
        assert all(_positive(r[k]) for k in ("forward_ms", "inverse_ms", "ratio"))
        assert r["forward_q1_ms"] <= r["forward_ms"] <= r["forward_q3_ms"]
        assert r["max_err"] < 1e-4  # proven before timed


def test_layer_rows_default_backends_are_the_available_ones():
    rows = layer.layer_rows([(1, 4, 3, 3, 2)], layers=("finc",), dtypes=("float64",), **TINY)
    names = {r["backend"] for r in rows}
    assert {"wavefront", "paper"} <= names and "cupy" not in names
    assert all(r["dtype"] == "float64" for r in rows)


def test_layer_rows_bad_input_is_a_value_error():
    with pytest.raises(ValueError, match="divisible by 4"):
        layer.layer_rows([(1, 5, 3, 3, 2)], layers=("finc",), **TINY)
    with pytest.raises(ValueError, match="unknown layer"):
        layer.layer_rows([(1, 4, 3, 3, 2)], layers=("nope",), **TINY)
    with pytest.raises(ValueError, match="dtype"):
        layer.layer_rows([(1, 4, 3, 3, 2)], dtypes=("float8",), **TINY)


def test_ft_st_rows_finc_beside_glow():
    rows = model.ft_st_rows("digits", TINY_MODEL, [3, 1], ["wavefront"], **TINY)
    assert [(r["model"], r["batch"]) for r in rows] == [("finc", 3), ("glow", 3), ("finc", 1), ("glow", 1)]
    for r in rows:
        assert all(_positive(r[k]) for k in ("ft_s", "st_s", "st_over_ft", "st_vs_glow"))
        assert r["st_over_ft"] == pytest.approx(r["st_s"] / r["ft_s"])
        assert r["steps"] == 1 and r["hidden"] == 8 and r["params"] > 0
    assert rows[1]["st_vs_glow"] == 1.0


@pytest.mark.parametrize("conv", ["finc", "emerging", "none"])
def test_conv_inverse_split_times_only_the_convolutions_and_changes_nothing(conv):
    import torch

    from finc_cli.config import load_preset
    from finc_cli.model import build_model

    torch.manual_seed(0)
    flow = build_model(load_preset("digits", {**TINY_MODEL, "model.steps": 2, "model.conv": conv})).eval()
    sample = lambda: flow.sample(3, 1.0, torch.Generator().manual_seed(1))  # noqa: E731
    with torch.no_grad():
        before = sample()
    calls = []
    layers = [layer for _, layer in flow.invertible_convs()]
    cls = type(layers[0]) if layers else None
    if cls is not None:  # count the calls that reach the layers' own method
        original = cls.inverse
        cls.inverse = lambda self, y: (calls.append(1), original(self, y))[1]
    try:
        total, in_convs = model.conv_inverse_split(flow, sample, torch.device("cpu"))
    finally:
        if cls is not None:
            cls.inverse = original
    assert len(calls) == len(layers) == (0 if conv == "none" else 4)
    assert total > 0 and (in_convs == 0 if conv == "none" else 0 < in_convs < total)
    assert all("inverse" not in vars(layer) for layer in layers)  # unwrapped again
    with torch.no_grad():
        assert torch.equal(sample(), before)


def test_ft_st_rows_every_conv_with_its_inverse_backend():
    convs = ["finc", "emerging", "cinc", "none"]
    rows = model.ft_st_rows("digits", TINY_MODEL, [2], ["wavefront"], convs=convs, **TINY)
    assert [(r["model"], r["conv"], r["backend"]) for r in rows] == [
        ("finc", "finc", "wavefront"),
        ("emerging", "emerging", "raster"),
        ("cinc", "cinc", "raster"),
        ("glow", "none", "-"),
    ]
    assert rows[0]["st_vs_finc"] == 1.0 and rows[-1]["st_vs_glow"] == 1.0
    for r in rows:
        assert all(_positive(r[k]) for k in ("ft_s", "st_s", "st_over_ft", "st_vs_glow", "st_vs_finc"))
        assert r["inverse"] and r["kernel_size"] == 3
    params = {r["conv"]: r["params"] for r in rows}
    assert params["none"] < params["finc"] < params["cinc"] < params["emerging"]  # k×k taps: C²k²/4, C²k², 2C²k²
    for r in rows[:3]:
        assert 0 < r["conv_inverse_share"] < 1 and 0 < r["conv_inverse_s"] < r["st_s"]
    assert rows[-1]["conv_inverse_share"] == 0 and rows[-1]["conv_inverse_s"] == 0
    with pytest.raises(InputError, match="unknown convolution 'macow'"):
        model.ft_st_rows("digits", {"model.steps": 1}, [2], convs=["finc,macow"], **TINY)


def test_scaling_rows_and_fits():
    rows = scaling.scaling_rows([4, 8], [2, 3], ["wavefront", "paper", "cinc", "emerging"], channels=4, **TINY)
    assert {(r["backend"], r["k"], r["n"]) for r in rows} == {
        (b, k, n) for b in ("wavefront", "paper", "cinc", "emerging") for k in (2, 3) for n in (4, 8)
    }
    assert all(_positive(r["median_ms"]) and r["max_err"] < 1e-4 for r in rows)
    fits = scaling.fit_exponents(rows)
    assert len(fits) == 8 and all(math.isfinite(f["exponent"]) and f["points"] == 2 for f in fits)


def test_scaling_skips_sizes_predicted_too_slow():
    rows = scaling.scaling_rows([4, 8, 16], [2], ["cinc"], channels=4, max_call_s=0.0, **TINY)
    assert [r["n"] for r in rows] == [4]


def test_fit_exponent_recovers_a_known_power():
    ns = [8, 16, 32, 64, 128]
    assert scaling.fit_exponent(ns, [3e-4 * n**1.5 for n in ns]) == pytest.approx(1.5)
    fits = scaling.fit_exponents(
        [{"backend": "b", "k": 3, "n": n, "median_ms": 0.1 * n**2 * (1.01 if n == 16 else 1)} for n in ns]
    )
    assert fits[0]["exponent"] == pytest.approx(2.0, abs=0.01) and fits[0]["exponent_large"] == pytest.approx(2.0)
    assert math.isnan(scaling.fit_exponent([8], [1.0]))


def test_time_interleaved_round_robin_and_budget():
    calls = []
    variants = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = timing.time_interleaved(variants, repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4 and all(len(v) == 3 for v in times.values())
    slow = {"fast": lambda: None, "slow": lambda: __import__("time").sleep(0.02)}
    times = timing.time_interleaved(slow, repeats=5, warmup=1, budget_s=0.03)
    assert len(times["fast"]) == 5 and 1 <= len(times["slow"]) < 5


def test_environment_records_versions():
    env = timing.environment("cpu", 2, "float32")
    assert {"device", "threads", "torch", "cuda", "cupy", "cpu", "dtype", "date"} <= set(env)
    assert env["threads"] == 2 and env["device"] == "cpu"


# -- the CLI ----------------------------------------------------------------------------------


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """test root"""

    register(app)
    return app


def test_cli_layer_json_is_one_object(tmp_path):
    csv_path = tmp_path / "rows.csv"
    result = CliRunner().invoke(
        _app(),
        [
            "benchmark",
            "layer",
            "--shape",
            "1,4,4,4,2",
            "--backend",
            "wavefront",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--json",
            "--csv",
            str(csv_path),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"env", "rows"} and data["env"]["threads"] == 1
    assert {r["layer"] for r in data["rows"]} == {"finc", "emerging", "cinc", "glow"}
    assert csv_path.read_text().splitlines()[0].startswith("layer,backend,B,C,H,W,k")


def test_cli_model_conv_option_json_and_errors():
    tiny = [*TINY_SETS, "--repeats", "1", "--warmup", "0", "--threads", "1"]
    args = ["benchmark", "model", "--preset", "digits", "--batch-size", "2", *tiny]
    result = CliRunner().invoke(_app(), [*args, "--conv", "cinc,finc", "--conv", "glow", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [(r["model"], r["backend"] != "-") for r in rows] == [("cinc", True), ("finc", True), ("glow", False)]
    bad = CliRunner().invoke(_app(), [*args, "--conv", "finc,macow"])
    assert bad.exit_code == 2 and "unknown convolution 'macow'" in bad.output


def test_cli_model_and_scaling_render_tables():
    runner = CliRunner()
    model = runner.invoke(
        _app(),
        [
            "benchmark",
            "model",
            "--preset",
            "digits",
            "--batch-size",
            "2",
            *TINY_SETS,
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--threads",
            "1",
        ],
    )
    assert model.exit_code == 0, model.output
    assert "137.04" in model.stdout and "17.19" in model.stdout  # the paper's table is printed beside
    scaling = runner.invoke(
        _app(),
        [
            "benchmark",
            "scaling",
            "-n",
            "4",
            "-n",
            "8",
            "-k",
            "2",
            "--backend",
            "wavefront",
            "--channels",
            "4",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--json",
        ],
    )
    assert scaling.exit_code == 0, scaling.output
    data = json.loads(scaling.stdout)
    assert len(data["rows"]) == 2 and data["fits"][0]["backend"] == "wavefront"


@pytest.mark.parametrize(
    "args, message",
    [
        (["layer", "--shape", "1,5,4,4,3"], "divisible by 4"),
        (["layer", "--shape", "1,4,4"], "five"),
        (["layer", "--backend", "cupy", "--shape", "1,4,4,4,2"], "CUDA"),
        (["model", "--preset", "digits", "--set", "model.nope=1"], "unknown config key"),
        (["scaling", "--backend", "nope"], "unknown backend"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args, message):
    result = CliRunner().invoke(_app(), ["benchmark", *args, "--threads", "1", "--repeats", "1"])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_cli_module_imports_no_torch():
    import subprocess
    import sys

    modules = "finc_cli.cli.benchmark, finc_cli.bench.tables"  # what `finc benchmark --help` loads
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- BENCHMARKS.md ----------------------------------------------------------------------------


def test_replace_section_keeps_surrounding_text():
    text = "# Title\n\nintro\n\n<!-- bench:unit:start -->\nold table\n<!-- bench:unit:end -->\n\noutro\n"
    new = report.replace_section(text, "unit", "new table")
    assert new == text.replace("old table", "new table")
    assert report.replace_section(new, "unit", "new table") == new  # idempotent
    added = report.replace_section(new, "model", "model table", "Model")
    assert added.startswith(new.rstrip("\n")) and added.endswith(
        "## Model\n\n<!-- bench:model:start -->\nmodel table\n<!-- bench:model:end -->\n"
    )
    assert report.replace_section(added, "unit", "a $1 \\1 table").count("a $1 \\1 table") == 1


def test_update_file_creates_then_updates(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    report.update_file(path, {"unit": "first"})
    text = path.read_text()
    assert text.startswith("# Benchmarks") and "first" in text
    path.write_text(text + "\nhand-written notes\n")
    report.update_file(path, {"unit": "second"})
    text = path.read_text()
    assert "second" in text and "first" not in text and "hand-written notes" in text


def test_bench_report_quick_run_writes_every_section(tmp_path):
    path = tmp_path / "B.md"
    path.write_text("# mine\n\nkeep me\n")
    assert report.main(["--update", str(path), "--quick", "--threads", "1"]) == 0
    text = path.read_text()
    assert text.startswith("# mine\n\nkeep me\n")
    for name in report.SECTIONS:
        assert f"<!-- bench:{name}:start -->" in text and f"<!-- bench:{name}:end -->" in text
    assert "Reduced depth" in text and "CIFAR-10" in text


def test_unit_pivot_marks_targets():
    rows = [
        {
            "B": 1,
            "C": 12,
            "H": 64,
            "W": 64,
            "k": 3,
            "backend": "wavefront",
            "forward_ms": 1.0,
            "inverse_ms": 8.0,
            "ratio": 8.0,
            "max_err": 1e-7,
        },
        {
            "B": 16,
            "C": 12,
            "H": 16,
            "W": 16,
            "k": 3,
            "backend": "wavefront",
            "forward_ms": 1.0,
            "inverse_ms": 4.0,
            "ratio": 4.0,
            "max_err": 1e-7,
        },
    ]
    pivot = tables.unit_pivot(rows)
    assert [(p["target"], p["met"]) for p in pivot] == [(10.0, "yes"), (3.0, "no")]
    assert "| 1,12,64,64,3 |" in tables.markdown_table(tables.unit_columns(), pivot)


def test_gpu_check_renders_the_convolution_comparison_and_honours_its_deadline():
    from finc_cli.bench import gpu_check

    assert gpu_check.conv_rows(deadline=0.0) == [{"preset": "cifar10", "note": "skipped: time budget"}]
    row = {"preset": "cifar10", "model": "emerging", "backend": "raster", "batch": 100, "ft_ms": 10.0,
           "st_ms": 400.0, "st_over_ft": 40.0, "conv_inverse_ms": 380.0, "conv_inverse_share": 0.95,
           "st_vs_finc": 21.0}  # fmt: skip
    text = gpu_check.render({"environment": {}, "convs": [row]})
    assert "### Invertible convolutions, the paper's ST comparison" in text
    assert "| cifar10 | emerging | raster | 100 | 10 | 400 | 40.00 | 380 | 95% | 21.00 | – |" in text
