"""Fixtures of the operator's emulator tests (helpers live in operator_support.py)."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import pytest
from operator_support import CRD, Kube

from kubellm_emulator import Emulator
from kubellm_emulator.pytest_plugin import emulator

__all__ = ["emulator", "kube"]


@pytest.fixture
async def kube(emulator: Emulator, tmp_path: pathlib.Path) -> AsyncIterator[Kube]:
    """A fresh emulator with the LLMService CRD, and the test's view of it."""
    emulator.apply_manifests(CRD)
    view = Kube(emulator, emulator.write_kubeconfig(tmp_path / "kubeconfig"))
    try:
        yield view
    finally:
        view.close()
