"""Fixtures of the hub tests: a tiny random model built once per session, served as hub repos."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubellm_hub.server import HubServer


@pytest.fixture(scope="session")
def tiny_repo_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kubellm_tools.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-source") / "tiny")


@pytest.fixture
def hub_root(tmp_path: Path, tiny_repo_source: Path) -> Path:
    """ROOT with acme/tiny (the tiny model) and acme/locked (a copy, for auth knobs)."""
    root = tmp_path / "hub"
    for name in ("tiny", "locked"):
        shutil.copytree(tiny_repo_source, root / "acme" / name)
    return root


@pytest.fixture
def hub(hub_root: Path) -> Iterator[HubServer]:
    with HubServer(hub_root) as server:
        yield server
