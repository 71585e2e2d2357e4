"""Test-wide settings and fixtures: a private prepared-data cache, the tiny config, and one trained tiny run."""

import shutil
from pathlib import Path

import pytest
from tiny import TINY_ARGS, TINY_OVERRIDES, TRAINED_RUN_OVERRIDES

from finc_cli.config import Config, load_preset
from finc_cli.train import train


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """No test reads or writes the user's prepared-data cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FINC_CACHE_DIR", str(tmp_path_factory.mktemp("finc-cache")))
    yield
    mp.undo()


@pytest.fixture
def tiny_overrides() -> list[str]:
    """The tiny config as `finc train` arguments (tests/tiny.py)."""
    return list(TINY_ARGS)


@pytest.fixture
def tiny_config() -> Config:
    """The tiny digits config (tests/tiny.py) as a Config."""
    return load_preset("digits", TINY_OVERRIDES)


@pytest.fixture(scope="session")
def trained_run(_private_cache_dir, tmp_path_factory) -> Path:
    """A tiny digits run directory (config.yaml, metrics.jsonl, last.pt, best.pt, samples/), trained once.

    Shared by every test of the session: read it, never write into it (take `trained_run_copy` for that).
    """
    out = tmp_path_factory.mktemp("trained") / "run"
    train(load_preset("digits", TRAINED_RUN_OVERRIDES), out)
    return out


@pytest.fixture
def trained_run_copy(trained_run, tmp_path) -> Path:
    """A private copy of `trained_run`, free to resume, overwrite or break."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))
