"""One error base class: FincError subclasses exit with their code and one line; anything else is an internal error."""

from __future__ import annotations

import inspect

import pytest
from typer.testing import CliRunner

import finc_cli.errors as errors
from finc_cli.cli.main import app
from finc_cli.config import load_preset
from finc_cli.model import build_model


def _invoke(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def _break_load_checkpoint(monkeypatch, exc: Exception) -> None:
    """Make every command that loads a checkpoint raise `exc` there, as a bug or a user error would."""

    def broken(*args, **kwargs):
        raise exc

    monkeypatch.setattr("finc_cli.checkpoint.load_model", broken)


def test_every_user_error_is_a_finc_error():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert {c.__name__ for c in classes} == set(errors.__all__)
    assert all(issubclass(c, errors.FincError) for c in classes)
    # Python callers that catch ValueError (configuration, data, checkpoints) keep working.
    for name in ("ConfigError", "DatasetError", "CheckpointError", "ImageInputError", "OutputError", "InputError"):
        assert issubclass(getattr(errors, name), ValueError), name
    assert errors.FincError.exit_code == 2 and errors.TrainingDiverged.exit_code == 1


def test_an_architecture_that_does_not_fit_the_data_is_a_config_error():
    with pytest.raises(errors.ConfigError, match="at most 3 levels"):
        build_model(load_preset("digits", {"model.levels": 4}))


@pytest.mark.parametrize(
    "exc, code",
    [(errors.CheckpointError("ckpt.pt is truncated; retrain"), 2), (errors.TrainingDiverged("diverged; lower lr"), 1)],
)
def test_a_finc_error_is_one_line_with_its_exit_code(monkeypatch, tmp_path, exc, code):
    _break_load_checkpoint(monkeypatch, exc)
    result = _invoke("sample", tmp_path / "x.pt", "--out", tmp_path / "g.png")
    assert result.exit_code == code
    assert result.output.strip() == f"error: {exc}"


def test_a_bug_is_an_internal_error_with_exit_1_and_no_traceback(monkeypatch, tmp_path):
    _break_load_checkpoint(monkeypatch, ValueError("boom"))
    result = _invoke("sample", tmp_path / "x.pt", "--out", tmp_path / "g.png")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "internal error (ValueError: boom)" in lines[0] and "--debug" in lines[0]
    assert "Traceback" not in result.output and not isinstance(result.exception, ValueError)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback_of_a_bug(monkeypatch, tmp_path, how):
    _break_load_checkpoint(monkeypatch, KeyError("boom"))
    args = ["sample", tmp_path / "x.pt", "--out", tmp_path / "g.png"]
    result = _invoke("--debug", *args) if how == "flag" else _invoke(*args, env={"FINC_DEBUG": "1"})
    assert isinstance(result.exception, KeyError)  # raised through, so Python prints the traceback
    assert "internal error" not in result.output


def test_bad_option_values_are_user_errors(tmp_path):
    result = _invoke("sample", tmp_path / "missing.pt", "-n", 0, "--out", tmp_path / "g.png")
    assert result.exit_code == 2 and "-n must be at least 1" in result.output
    result = _invoke("bpd", tmp_path / "missing.pt")
    assert result.exit_code == 2 and "does not exist" in result.output
