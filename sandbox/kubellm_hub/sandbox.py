"""The hub for the sandbox's second demo (``kubellm demo --hub``): a small random model served by ``kubellm hub``
as a background process beside the sandbox, throttled so that the LLMService's download progress can be watched.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

DEMO_REPO = "kubellm/tiny-random"
DEMO_PORT = 8090  # the endpoint examples/hub-tiny.yaml names
START_TIMEOUT_S = 30.0


class HubStartError(Exception):
    """The demo hub cannot start; the message says why and where its log is."""


def hub_dir(data_dir: pathlib.Path) -> pathlib.Path:
    return data_dir / "hub"


def ensure_demo_repo(root: pathlib.Path) -> pathlib.Path:
    """``root/kubellm/tiny-random``: a random Llama of ~9 MB (wide enough for a download to be watched)."""
    folder = root / DEMO_REPO
    if (folder / "model.safetensors").is_file():
        return folder
    from kubellm_tools.tinymodel import build_tiny_model

    staging = folder.with_name(folder.name + ".building")
    build_tiny_model(staging, hidden_size=256, num_layers=4)
    staging.rename(folder)
    return folder


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_hub/knobs", timeout=2) as response:
            return isinstance(json.load(response), dict)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start_hub(data_dir: pathlib.Path, *, bandwidth: str, port: int = DEMO_PORT) -> str:
    """Start (or reuse) the demo hub; returns its endpoint. Its pid and log live under ``data_dir/hub``."""
    base = hub_dir(data_dir)
    root = base / "repos"
    root.mkdir(parents=True, exist_ok=True)
    ensure_demo_repo(root)
    endpoint = f"http://127.0.0.1:{port}"
    if _answers(port):
        return endpoint
    log = (base / "hub.log").open("ab")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kubellm.cli",
            "hub",
            "--root",
            str(root),
            "--port",
            str(port),
            "--bandwidth",
            bandwidth,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
        start_new_session=True,  # outlives the demo command, like the sandbox it serves
    )
    (base / "hub.pid").write_text(str(process.pid))
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise HubStartError(f"kubellm hub did not start on port {port}; see {base / 'hub.log'}")
        time.sleep(0.2)
    return endpoint


def stop_hub(data_dir: pathlib.Path) -> bool:
    """Stop the demo hub this data dir started; True when one was running."""
    pid_file = hub_dir(data_dir) / "hub.pid"
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return False
    pid_file.unlink(missing_ok=True)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True
