"""Fixtures for the API tests."""

from __future__ import annotations

from typing import Any

import pytest
from llmservice_cases import EXAMPLES, load_example


@pytest.fixture(params=[path.name for path in EXAMPLES])
def example(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Every document under examples/, one test each."""
    return load_example(request.param)
