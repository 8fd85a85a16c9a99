"""`kubellm serve` loading a hub model from `kubellm hub`, as a process: download progress on /loadz, in the
startup probe's answer and in /metrics, then a real answer; a stalled or unreachable hub ends the process with
the reason in its termination message."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from kubellm.contract import env_name
from kubellm.modelfiles import HubFailure, failure_reason
from kubellm_hub.server import HubServer
from kubellm_sandbox.processes import free_port

PROCESS_TIMEOUT_S = 240  # importing torch and transformers takes a while on a busy 2-core machine


def _env(tmp_path: Path, endpoint: str, port: int, **settings: str) -> dict[str, str]:
    return {
        **os.environ,
        env_name("model"): "acme/tiny",
        env_name("hub_endpoint"): endpoint,
        env_name("cache_dir"): str(tmp_path / "cache"),
        env_name("host"): "127.0.0.1",
        env_name("port"): str(port),
        env_name("termination_message_path"): str(tmp_path / "termination-log"),
        **{env_name(k): v for k, v in settings.items()},
    }


def _serve(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kubellm.cli", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return process.stdout.read() if process.stdout else ""


def test_serve_shows_download_progress_then_answers(hub: HubServer, tiny_repo_source: Path, tmp_path: Path) -> None:
    weights = (tiny_repo_source / "model.safetensors").stat().st_size
    hub.set_knobs(bandwidth=weights // 5)  # about five seconds of weights
    port = free_port()
    process = _serve(_env(tmp_path, hub.endpoint, port))
    base = f"http://127.0.0.1:{port}"
    seen: list[dict[str, object]] = []
    probe_lines: list[str] = []
    metrics_seen: list[str] = []
    try:
        deadline = time.monotonic() + PROCESS_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status = httpx.get(f"{base}/loadz", timeout=5).json()
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            seen.append(status)
            if status["phase"] == "downloading" and 0 < status["bytesDone"] < status["bytesTotal"]:
                probe_lines.append(httpx.get(f"{base}/readyz", timeout=5).json()["error"]["message"])
                metrics_seen.append(httpx.get(f"{base}/metrics", timeout=5).text)
            if status["phase"] == "ready":
                break
            time.sleep(0.1)
        assert seen and seen[-1]["phase"] == "ready", (seen[-3:], _stop(process)[-3000:])
        phases = [s["phase"] for s in seen]
        assert "downloading" in phases and "ready" in phases
        assert probe_lines, (phases, seen[-3:])
        assert any(line.startswith("model not ready: downloading ") and "%)" in line for line in probe_lines)
        # Each scrape races the download's end; one taken mid-download shows the phase and the totals.
        assert any('kubellm_load_phase{phase="downloading"} 1.0' in text for text in metrics_seen)
        assert all("kubellm_download_total_bytes" in text for text in metrics_seen)
        commit = seen[-1]["commit"]
        assert isinstance(commit, str) and len(commit) == 40
        answer = httpx.post(f"{base}/ask", json={"text": "hello", "max_new_tokens": 3}, timeout=120)
        assert answer.status_code == 200 and isinstance(answer.json()["response"], str)
    finally:
        _stop(process)


def test_serve_exits_with_download_stalled_after_its_restarts(hub: HubServer, tmp_path: Path) -> None:
    hub.set_knobs(stall_after_bytes=50_000, stall_count=-1)
    env = _env(tmp_path, hub.endpoint, free_port(), download_stall_timeout_s="0.5", download_max_restarts="1")
    process = _serve(env)
    try:
        assert process.wait(timeout=PROCESS_TIMEOUT_S) == 1
    finally:
        output = _stop(process)
    message = (tmp_path / "termination-log").read_text()
    assert "download stalled: no data for 0.5s on model.safetensors" in message, output[-2000:]
    assert failure_reason(message) is HubFailure.DownloadStalled


def test_serve_exits_with_hub_unreachable(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    process = _serve(_env(tmp_path, endpoint, free_port()))
    try:
        assert process.wait(timeout=PROCESS_TIMEOUT_S) == 1
    finally:
        output = _stop(process)
    message = (tmp_path / "termination-log").read_text()
    assert f"hub unreachable: cannot reach {endpoint} for acme/tiny" in message, output[-2000:]
    assert failure_reason(message) is HubFailure.HubUnreachable
