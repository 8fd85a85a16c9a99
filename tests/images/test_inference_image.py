"""The inference image, run as the pod `kubellm render` prints for the tiny example: Ready, answers, drains.

The container gets the rendered pod's user and fsGroup, read-only root, no capabilities, no new privileges, env,
memory limit and emptyDir volumes (as tmpfs), and its command (podspec.py); the test waits on the startup
probe's path, asks a question, reads /metrics, runs the liveness probe inside the container and sends SIGTERM,
after which the server must exit 0 within the pod's termination grace period.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from engine import Engine, eventually
from podspec import container_run

from kubellm_sandbox.processes import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "tiny-smollm2.yaml"
# The startup probe allows 300 s; on a busy 2-core runner the tiny model is Ready in well under a minute.
READY_BOUND_S = 180


def rendered_deployment() -> dict:
    """The Deployment the operator would create for the tiny example (the image it names: ghcr.io/...:VERSION)."""
    done = subprocess.run(
        [sys.executable, "-m", "kubellm.cli", "render", "-f", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=os.environ,
    )
    (deployment,) = [doc for doc in yaml.safe_load_all(done.stdout) if doc and doc["kind"] == "Deployment"]
    return deployment


def http(method: str, url: str, body: bytes | None = None, timeout_s: float = 120) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_inference_image_runs_as_the_rendered_pod(engine: Engine) -> None:
    run = container_run(rendered_deployment())
    engine.require_image(run.image)
    assert run.startup is not None and run.startup.path is not None and run.liveness is not None
    port = free_port()
    name = f"kubellm-smoke-inference-{uuid.uuid4().hex[:8]}"
    publish = ["--publish", f"127.0.0.1:{port}:{run.ports['http']}"]
    started = time.monotonic()
    engine.run("run", "--detach", "--name", name, *engine.read_only_flags(), *run.run_args(publish))
    try:

        def ready() -> float | None:
            code = engine.exited(name)
            assert code is None, f"the container exited {code} before Ready:\n{engine.logs(name)}"
            try:
                status, _ = http("GET", f"http://127.0.0.1:{port}{run.startup.path}", timeout_s=5)
            except OSError:
                return None
            return time.monotonic() - started if status == 200 else None

        to_ready = eventually(ready, timeout_s=min(READY_BOUND_S, run.startup.budget_s), what="the startup probe")
        print(f"\ninference image {run.image}: Ready {to_ready:.1f} s after `{engine.name} run`")

        status, body = http(
            "POST", f"http://127.0.0.1:{port}/ask", b'{"text": "What is the capital of France?", "temperature": 0}'
        )
        assert status == 200, body
        assert "Paris" in yaml.safe_load(body)["response"]
        status, body = http("GET", f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and b'kubellm_requests_total{route="/ask",status="200"} 1.0' in body, body[-2000:]

        live = engine.run("exec", name, *run.liveness.exec_command(), check=False)
        assert live.returncode == 0, f"the liveness probe failed inside the container: {live.stderr}"
        whoami = engine.run("exec", name, "id", "-u").stdout.strip()
        assert whoami == "10001"
        refused = engine.run("exec", name, "touch", "/opt/kubellm/written", check=False)
        assert refused.returncode != 0 and "Read-only file system" in refused.stderr

        engine.run("kill", "--signal", "TERM", name)
        code = eventually(lambda: engine.exited(name), timeout_s=run.grace_s, what="exit after SIGTERM")
        assert code == 0, f"exit code {code} after SIGTERM:\n{engine.logs(name)}"
    except AssertionError as failure:
        raise AssertionError(f"{failure}\n--- {name}: {engine.state(name)}\n{engine.logs(name)}") from failure
    finally:
        engine.run("rm", "--force", name, check=False)


def test_an_unreadable_model_file_is_reported_as_permission_denied(engine: Engine, tmp_path: Path) -> None:
    """A model folder root wrote with 0600 files, served as UID 10001: transformers calls the file missing, the
    server names it and says "permission denied" (the image's build-time conversion once did exactly this)."""
    image = container_run(rendered_deployment()).image
    engine.require_image(image)
    model = tmp_path / "model"
    model.mkdir(mode=0o755)
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "config.json").chmod(0o644)
    (model / "model.safetensors").write_bytes(b"\0" * 64)
    (model / "model.safetensors").chmod(0o600)
    done = engine.run(
        "run", "--rm", "--user", "10001:10001", "--volume", f"{model}:/models/m:ro",
        "--env", "KUBELLM_MODEL=/models/m", image, "--prepare",
        check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "/models/m/model.safetensors: permission denied" in done.stderr, done.stderr[-3000:]
