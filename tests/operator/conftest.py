"""Fixtures of the operator's emulator tests (helpers live in operator_support.py)."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import pytest
from operator_support import Kube, operator_view

from kubellm_emulator import Emulator
from kubellm_emulator.pytest_plugin import emulator

__all__ = ["emulator", "kube"]


@pytest.fixture
async def kube(emulator: Emulator, tmp_path: pathlib.Path) -> AsyncIterator[Kube]:
    """A fresh emulator with the LLMService CRD and what deploy/ installs for the operator (its namespace,
    ServiceAccount and RBAC, with the opt-in kubelet-stats component), and the test's view of it. The operator runs as that ServiceAccount, with only the
    permissions deploy/rbac.yaml grants; the test itself (and kubectl) act as the cluster admin."""
    view = operator_view(emulator, tmp_path)
    try:
        yield view
    finally:
        view.close()
