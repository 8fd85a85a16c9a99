"""The operator image, run as deploy/operator.yaml runs it, against `kubellm emulator` on the host network.

Read-only root, UID 10001, no capabilities, no new privileges, the manifest's env (its health port moved to a
free one: the host network is shared), a kubeconfig mounted read-only: it must reconcile the tiny example into its
Deployment, answer its liveness probe inside the container, and exit 0 on SIGTERM within the grace period.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from engine import Engine, eventually
from podspec import container_run

from kubellm_emulator.auth import ADMIN_TOKEN
from kubellm_sandbox.processes import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "kubellm.dev_llmservices.yaml"
EXAMPLE = ROOT / "examples" / "tiny-smollm2.yaml"
RECONCILE_BOUND_S = 90
CONTAINER_KUBECONFIG = "/etc/kubellm/kubeconfig"


@pytest.fixture
def emulator_api(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`kubellm emulator` on a free 127.0.0.1 port with the CRD and a node; its URL and a kubeconfig any user reads."""
    port = free_port()
    kubeconfig = tmp_path / "kubeconfig"
    command = [sys.executable, "-m", "kubellm.cli", "emulator", "--port", str(port), "--kubeconfig", str(kubeconfig)]
    process = subprocess.Popen(
        [*command, "--crd", str(CRD), "--node", "node-1:100Gi"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=os.environ,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline().decode()
        while banner.startswith("applied "):
            banner = process.stdout.readline().decode()
        assert "serving" in banner, f"the emulator did not start: {banner}"
        kubeconfig.chmod(0o644)  # the operator reads it as UID 10001 through a bind mount
        yield f"http://127.0.0.1:{port}", kubeconfig
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def api(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    """One call as the emulator's admin (it authenticates every request, as an apiserver does)."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json", "authorization": f"Bearer {ADMIN_TOKEN}"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_operator_image_reconciles_the_tiny_example(engine: Engine, emulator_api: tuple[str, Path]) -> None:
    url, kubeconfig = emulator_api
    (deployment,) = [doc for doc in yaml.safe_load_all((ROOT / "deploy" / "operator.yaml").read_text()) if doc]
    health_port = free_port()
    run = container_run(deployment, env_overrides={"KUBELLM_OPERATOR_HEALTH_PORT": str(health_port)})
    engine.require_image(run.image)
    assert run.liveness is not None
    name = f"kubellm-smoke-operator-{uuid.uuid4().hex[:8]}"
    extra = [
        "--network=host",
        "--volume",
        f"{kubeconfig}:{CONTAINER_KUBECONFIG}:ro",
        "--env",
        f"KUBECONFIG={CONTAINER_KUBECONFIG}",
        *engine.read_only_flags(),
    ]
    # deploy/ creates the operator's namespace, where its leader-election Lease lives (a Lease in a missing
    # namespace is a 404, and the operator stays a standby).
    namespace = yaml.safe_load((ROOT / "deploy" / "namespace.yaml").read_text())
    status, created = api("POST", f"{url}/api/v1/namespaces", namespace)
    assert status == 201, created
    engine.run("run", "--detach", "--name", name, *run.run_args(extra))
    try:
        tiny = yaml.safe_load(EXAMPLE.read_text())
        status, created = api("POST", f"{url}/apis/kubellm.dev/v1alpha1/namespaces/default/llmservices", tiny)
        assert status == 201, created

        def reconciled() -> dict[str, Any] | None:
            code = engine.exited(name)
            assert code is None, f"the operator exited {code}:\n{engine.logs(name)}"
            status, child = api("GET", f"{url}/apis/apps/v1/namespaces/default/deployments/tiny")
            return child if status == 200 else None

        child = eventually(reconciled, timeout_s=RECONCILE_BOUND_S, what="the operator to create Deployment tiny")
        assert [owner["name"] for owner in child["metadata"]["ownerReferences"]] == ["tiny"]
        assert (
            child["spec"]["template"]["spec"]["containers"][0]["image"] == run.env["KUBELLM_OPERATOR_INFERENCE_IMAGE"]
        )

        # The probe's port, moved with the env: on the host network the manifest's 8080 may be taken.
        liveness = dataclasses.replace(run.liveness, port=health_port)
        live = engine.run("exec", name, *liveness.exec_command(), check=False)
        assert live.returncode == 0, f"the liveness probe failed inside the container: {live.stderr}"
        assert engine.run("exec", name, "id", "-u").stdout.strip() == "10001"

        engine.run("kill", "--signal", "TERM", name)
        code = eventually(lambda: engine.exited(name), timeout_s=run.grace_s, what="exit after SIGTERM")
        assert code == 0, f"exit code {code} after SIGTERM:\n{engine.logs(name)}"
    except AssertionError as failure:
        raise AssertionError(f"{failure}\n--- {name}: {engine.state(name)}\n{engine.logs(name)}") from failure
    finally:
        engine.run("rm", "--force", name, check=False)
