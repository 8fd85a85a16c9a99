"""pytest fixtures for the emulator. Import them into a conftest.py:

from kubellm_emulator.pytest_plugin import emulator, emulator_kubeconfig  # noqa: F401
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import pytest

from kubellm_emulator.server import Emulator


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """A fresh emulator serving on 127.0.0.1 (free port) for one test."""
    async with Emulator() as running:
        yield running


@pytest.fixture
def emulator_kubeconfig(emulator: Emulator, tmp_path: pathlib.Path) -> pathlib.Path:
    """A kubeconfig file for `emulator` (for kubectl --kubeconfig and kubernetes.config.load_kube_config)."""
    return emulator.write_kubeconfig(tmp_path / "kubeconfig")
