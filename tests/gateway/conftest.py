"""Fixtures of the gateway tests: real inference servers on the tiny model, the API emulator with deploy/'s gateway
identity, and the gateway itself over real HTTP (helpers in gateway_support.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

# The inference tests' server runner (uvicorn in a thread, bounded start and stop) and the operator tests' RBAC
# derivation from recorded requests, shared rather than copied.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from inference_support import RunningServer, serve

from kubellm.contract import DType, ServerSettings
from kubellm_emulator.pytest_plugin import emulator
from kubellm_tools.tinymodel import build_tiny_model

__all__ = ["emulator"]


@pytest.fixture(scope="module")
def tiny_server_settings(tmp_path_factory: pytest.TempPathFactory) -> ServerSettings:
    return ServerSettings(
        model=str(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")),
        served_model_name="tiny-model",
        dtype=DType.float32,
        cache_dir=tmp_path_factory.mktemp("cache"),
        max_new_tokens=64,
        default_max_new_tokens=8,
        max_input_tokens=256,
        request_timeout_s=30,
    )


@pytest.fixture(scope="module")
def fast_server(tiny_server_settings: ServerSettings) -> Iterator[RunningServer]:
    with serve(tiny_server_settings) as running:
        yield running


@pytest.fixture(scope="module")
def slow_server(tiny_server_settings: ServerSettings) -> Iterator[RunningServer]:
    """Each generation step waits 50 ms: a stream that lasts long enough to leave in the middle."""
    with serve(tiny_server_settings.model_copy(update={"debug_step_delay_s": 0.05})) as running:
        yield running


@pytest.fixture(scope="module")
def secured_server(tiny_server_settings: ServerSettings) -> Iterator[RunningServer]:
    with serve(tiny_server_settings.model_copy(update={"api_key": SecretStr("s3cret")})) as running:
        yield running
