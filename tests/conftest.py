"""Shared fixtures: the tiny models of tests/helpers.py and tests/families.py, and a cache directory of each test's own."""

from __future__ import annotations


import pytest

from tests.families import build_family_model
from tests.helpers import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory) -> str:
    """The same kind of model without a chat template (a base model)."""
    return str(build_tiny_model(tmp_path_factory.mktemp("tinybase") / "model", chat=False))


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory):
    """The tiny model of a family (tests/families.py) by name, built on first use, once per session."""
    root = tmp_path_factory.mktemp("families")
    built: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in built:
            built[name] = str(build_family_model(name, root / name))
        return built[name]

    return get


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BAPO_CACHE_DIR", str(tmp_path / "cache"))
