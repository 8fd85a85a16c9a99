"""Options of the whole test suite; pytest reads `pytest_addoption` only from the root conftest and plugins."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    # The e2e tier needs Docker and kind; tests/e2e/conftest.py skips it without this flag or those tools.
    parser.addoption("--e2e", action="store_true", default=False, help="run the kind end-to-end tests (tests/e2e)")
