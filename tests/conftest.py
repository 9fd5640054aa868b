"""Shared fixtures: committed test models, an isolated CLIPSEARCH_HOME (for the whole session
and per test), the CLI on a colour-model database. Helpers to import are in helpers.py."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from helpers import DATA


def _files_under(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.is_dir() else {}


def pytest_configure(config):
    """Before any fixture (module-scoped ones included): clipsearch's data dir is a temporary
    folder for the whole session, and the user's real one is watched."""
    import tempfile

    import platformdirs

    # Registered here too: CI's user-install stage runs tests from a copy, without pyproject.toml.
    config.addinivalue_line("markers", "journey: a user's first hour on the installed wheel")
    for key in [k for k in os.environ if k.startswith("CLIPSEARCH_") and k != "CLIPSEARCH_TEST_INSTALLED"]:
        del os.environ[key]
    config.real_data_dir = Path(platformdirs.user_data_dir("clipsearch", appauthor=False))
    config.real_data_before = _files_under(config.real_data_dir)
    os.environ["CLIPSEARCH_HOME"] = tempfile.mkdtemp(prefix="clipsearch-test-home-")


def pytest_sessionfinish(session, exitstatus):
    """Fails the run if anything was written into the user's real data dir."""
    config = session.config
    if not hasattr(config, "real_data_dir"):
        return
    shutil.rmtree(os.environ.get("CLIPSEARCH_HOME", ""), ignore_errors=True)
    changed = sorted(set(_files_under(config.real_data_dir).items()) - set(config.real_data_before.items()))
    if changed:
        print(f"\nFAILED: the tests wrote into the real data dir {config.real_data_dir}: {[p for p, _ in changed][:5]}")
        session.exitstatus = 1


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test gets its own data dir; no CLIPSEARCH_* from the developer's shell leaks in."""
    for key in list(os.environ):
        if key.startswith("CLIPSEARCH_") and key != "CLIPSEARCH_TEST_INSTALLED":
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    monkeypatch.setenv("CLIPSEARCH_HOME", str(home))
    return home


@pytest.fixture
def colour_model(tmp_path) -> Path:
    folder = tmp_path / "colour-model"
    shutil.copytree(DATA / "colour-model", folder)
    return folder


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    folder = tmp_path / "tiny-model"
    shutil.copytree(DATA / "tiny-model", folder)
    return folder


@pytest.fixture
def cli(colour_model, tmp_path):
    """The real CLI in-process (CliRunner) on one database with the colour model; asserts
    the exit code (`expect`)."""
    from click.testing import CliRunner

    from clipsearch.cli.main import main

    runner = CliRunner()
    db = tmp_path / "index.db"

    def invoke(*args, expect=0):
        result = runner.invoke(main, [*args[:1], "--db", str(db), "--model", str(colour_model), *args[1:]])
        assert result.exit_code == expect, (result.output, result.stderr)
        return result

    invoke.db, invoke.model = db, colour_model
    return invoke


