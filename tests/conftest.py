"""Test-wide settings: no test reads or writes the user's prepared-data cache."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("FINC_CACHE_DIR", str(tmp_path_factory.mktemp("finc-cache")))
    yield
    mp.undo()
