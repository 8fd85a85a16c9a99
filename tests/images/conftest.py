"""Wiring of the image smoke tests: the opt-in skip and the engine (see engine.py)."""

from __future__ import annotations

import os

import pytest
from engine import Engine, choose_engine

IMAGE_TESTS = {"test_inference_image.py", "test_operator_image.py", "test_image_contents.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    smoke = [item for item in items if item.path.name in IMAGE_TESTS]
    if not smoke:
        return
    engine, reason = choose_engine(os.environ)
    if engine is None:
        for item in smoke:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def engine() -> Engine:
    name, reason = choose_engine(os.environ)
    assert name is not None, reason
    return Engine(name)
