"""Shared pytest configuration: the kit's fixtures (fttestkit.plugin), for every tier."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

pytest_plugins = ["fttestkit.plugin"]


@pytest.fixture(scope="session", autouse=True)
def node_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The trainer's node cache (XDG_CACHE_HOME/finetune: prepared data, fetched models)
    per test session, so no test reads what an earlier session or the user's own runs left
    (the trainer processes the tests start inherit it)."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before
