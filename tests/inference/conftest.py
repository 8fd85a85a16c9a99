"""Fixtures of the inference server tests: one tiny random model per session, and a shared server on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from inference_support import RunningServer, serve

from kubellm.contract import CompileMode, DType, ServerSettings
from kubellm_tools.tinymodel import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_settings(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> ServerSettings:
    """Settings of a server on the tiny model; tests derive variants with ``model_copy(update=...)``."""
    return ServerSettings(
        model=str(tiny_model),
        served_model_name="tiny",
        # Pinned: the behaviour tests compare batched with single greedy outputs, which float32 keeps exact;
        # `auto` (bfloat16 on CPUs with native bf16) has its own tests in test_precision.py.
        dtype=DType.float32,
        # The compiled step has its own tests (test_compiled.py); every other server serves eager only.
        compile=CompileMode.off,
        cache_dir=tmp_path_factory.mktemp("cache"),
        max_new_tokens=64,
        default_max_new_tokens=16,
        max_input_tokens=256,
        request_timeout_s=30,
    )


@pytest.fixture(scope="session")
def server(tiny_settings: ServerSettings) -> Iterator[RunningServer]:
    """A ready server shared by the tests that do not change its settings."""
    with serve(tiny_settings) as running:
        yield running
