"""Running the inference server for tests: uvicorn on 127.0.0.1 in a thread, started and stopped by the caller,
every wait bounded."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from kubellm.contract import ServerSettings, env_name
from kubellm_inference.app import create_app
from kubellm_inference.loading import LoadedModel
from kubellm_inference.server import uvicorn_config
from kubellm_inference.state import ServerState, app_state
from kubellm_sandbox.processes import free_port

START_TIMEOUT_S = 30.0


class RunningServer:
    def __init__(self, base_url: str, state: ServerState) -> None:
        self.base_url = base_url
        self.state = state

    @property
    def model_id(self) -> str:
        return self.state.settings.model_id

    def client(self, timeout: float = 30.0, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout, **kwargs)

    def metric(self, name: str, **labels: str) -> float:
        value = self.state.metrics.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else value


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` until true; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


@contextmanager
def serve(
    settings: ServerSettings,
    *,
    loader: Callable[[], LoadedModel] | None = None,
    wait_ready: bool = True,
    load_timeout_s: float = START_TIMEOUT_S,
) -> Iterator[RunningServer]:
    """The server for ``settings`` on a free 127.0.0.1 port, in a thread; stopped on exit."""
    app = create_app(settings, loader=loader)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn_config(app, settings, log_level="warning", timeout_graceful_shutdown=2, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), START_TIMEOUT_S, "uvicorn to start")
        assert server.started, "uvicorn did not start"
        running = RunningServer(f"http://127.0.0.1:{port}", app_state(app))
        if wait_ready:
            wait_until(lambda: running.state.engine.ready, load_timeout_s, "the model to load")
        yield running
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


def long_completion(tokens: int, **params: object) -> dict[str, object]:
    """A text completion request that runs its full ``tokens``: a random-weight model samples its end token early
    often enough (about one request in 60 stops within 20 tokens) to break a test that times a running request."""
    return {"model": "tiny", "prompt": "hi", "max_tokens": tokens, "ignore_eos": True, **params}


# A process needs a few seconds to import torch and transformers on this kind of machine.
PROCESS_START_TIMEOUT_S = 90


def kubellm_command(*args: str) -> list[str]:
    script = Path(sys.executable).parent / "kubellm"
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "kubellm.cli", *args]


@contextmanager
def serve_process(
    tiny_model: Path, *, log: Path | None = None, **settings: str
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``kubellm serve`` on the tiny model as a process, ready; killed on exit. Its output goes to a pipe, or to
    ``log`` for a server that answers many requests (a full pipe would block it)."""
    port = free_port()
    env = {
        **os.environ,
        env_name("model"): str(tiny_model),
        env_name("served_model_name"): "tiny",
        env_name("host"): "127.0.0.1",
        env_name("port"): str(port),
        # Compiling in the background would only load the machine: test_compiled.py covers it.
        env_name("compile"): "off",
        **{env_name(k): v for k, v in settings.items()},
    }
    output = log.open("w") if log is not None else None
    process = subprocess.Popen(
        kubellm_command("serve"),
        env=env,
        stdout=output if output is not None else subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if process.poll() is not None:
                said = process.stdout.read() if process.stdout else log.read_text() if log else ""
                raise AssertionError(f"the server exited early: {said}")
            try:
                return httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, PROCESS_START_TIMEOUT_S, "the server process to become ready")
        yield process, base_url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        if output is not None:
            output.close()
