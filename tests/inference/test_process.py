"""`kubellm serve`, `kubellm probe live` and `kubellm tiny-model` as processes: SIGTERM drains and exits 0,
the probe generates or fails, the tiny model command writes a loadable folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
from inference_support import (
    PROCESS_START_TIMEOUT_S,
    RunningServer,
    kubellm_command,
    long_completion,
    serve_process,
    wait_until,
)

from kubellm.contract import env_name
from kubellm_inference.probe import main as probe_main
from kubellm_inference.server import main as serve_main
from kubellm_inference.server import write_termination_message
from kubellm_sandbox.processes import free_port


def test_sigterm_drains_in_flight_requests_and_exits_0(tiny_model: Path) -> None:
    with serve_process(tiny_model, debug_step_delay_s="0.05", drain_grace_s="30") as (process, base_url):
        lines: list[str] = []
        first_line = threading.Event()

        def stream() -> None:
            request = long_completion(40, stream=True)
            with httpx.stream("POST", f"{base_url}/v1/completions", json=request, timeout=30) as response:
                for line in response.iter_lines():
                    if line:  # events are separated by blank lines
                        lines.append(line)
                        first_line.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert first_line.wait(30), "the stream never started"
        process.send_signal(signal.SIGTERM)
        wait_until(lambda: httpx.get(f"{base_url}/readyz", timeout=2).status_code == 503, 10, "/readyz to say 503")
        refused = httpx.post(f"{base_url}/ask", json={"text": "hi"}, timeout=5)
        assert refused.status_code == 503 and "shutting down" in refused.json()["error"]["message"]
        assert httpx.get(f"{base_url}/livez", timeout=2).status_code == 200
        reader.join(30)
        assert not reader.is_alive()
        assert process.wait(30) == 0
    events = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: {")]
    assert lines[-1] == "data: [DONE]"
    assert events[-1]["choices"][0]["finish_reason"] == "length", "the in-flight request finished normally"


def test_sigterm_stops_requests_still_running_after_the_grace_period(tiny_model: Path) -> None:
    with serve_process(tiny_model, debug_step_delay_s="0.1", drain_grace_s="0.5") as (process, base_url):
        outcome: list[httpx.Response] = []
        request = long_completion(200)
        worker = threading.Thread(
            target=lambda: outcome.append(httpx.post(f"{base_url}/v1/completions", json=request, timeout=30))
        )
        worker.start()
        wait_until(lambda: "kubellm_batch_size 1.0" in httpx.get(f"{base_url}/metrics").text, 10, "generation")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        worker.join(10)
    (response,) = outcome
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "shutting_down"


def test_probe_live_generates_against_the_server(server: RunningServer, capsys: object) -> None:
    port = server.base_url.rsplit(":", 1)[1]
    assert probe_main(["live", "--port", port, "--timeout", "10"]) == 0


def test_probe_live_fails_without_a_server() -> None:
    assert probe_main(["live", "--port", str(free_port()), "--timeout", "2"]) == 1


def test_tiny_model_command_writes_a_model_folder(tmp_path: Path) -> None:
    target = tmp_path / "model"
    result = subprocess.run(kubellm_command("tiny-model", str(target)), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (target / name).is_file(), name


def test_serve_prepare_loads_the_model_and_exits(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its own cache: --prepare compiles the decode step into the cache folder, which is the user's by default.
    monkeypatch.setenv(env_name("cache_dir"), str(tmp_path))
    assert serve_main(["--prepare", "--model", str(tiny_model)]) == 0
    assert any((tmp_path / "compiled").glob("tiny-*/warm-*")), "the compiled step was not prepared into the cache"
    assert serve_main(["--prepare", "--model", str(tiny_model / "missing")]) != 0


def test_serve_exits_1_with_the_reason_in_its_termination_message_when_the_model_cannot_load(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    message_file = tmp_path / "termination-log"
    env = {
        **os.environ,
        env_name("model"): str(missing),
        env_name("host"): "127.0.0.1",
        env_name("port"): str(free_port()),
        env_name("termination_message_path"): str(message_file),
    }
    result = subprocess.run(
        kubellm_command("serve"), env=env, capture_output=True, text=True, timeout=PROCESS_START_TIMEOUT_S
    )
    assert result.returncode == 1, result.stderr
    message = message_file.read_text()
    assert message.startswith("model load failed: ") and str(missing) in message
    assert "ERROR" in result.stderr and "model load failed" in result.stderr


def test_termination_message_is_skipped_where_it_cannot_be_written(tmp_path: Path) -> None:
    assert not write_termination_message(tmp_path / "missing-folder" / "termination-log", "why")
    assert not write_termination_message(tmp_path, "why"), "a folder in the file's place is not written over"
    target = tmp_path / "termination-log"
    assert write_termination_message(target, "x" * 10_000) and len(target.read_bytes()) == 4096
