"""The sandbox end to end: `kubellm sandbox up` in the background, real operator, real inference server processes.

One sandbox for the module (a free API port, a temporary data dir), the tiny random model built into tmp, and
LLMServices on free service ports (never the user's 5000). The main test walks the issue's loop: apply → Ready →
/ask through the Service → scale to 2 → both pods serve → a pod's process killed and restarted → delete →
processes gone. A second LLMService whose model cannot load runs alongside it and must end Degraded with the
reason. Every wait is bounded; a failed wait dumps the LLMServices, pods, events and logs.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kubellm_sandbox import cli
from kubellm_sandbox.pods import CONTAINER_ID_SCHEME
from kubellm_sandbox.processes import free_port, recorded_pid
from kubellm_sandbox.runner import FORWARDING_ANNOTATION
from kubellm_sandbox.supervisor import Layout
from kubellm_sandbox.view import SandboxTimeout, SandboxView
from kubellm_tools.tinymodel import build_tiny_model

# What the sandbox once published on pods (container port -> a local port); no pod carries it now (issue 19).
PORTS_ANNOTATION = "sandbox.kubellm.dev/local-ports"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

GROUP, VERSION, PLURAL = "kubellm.dev", "v1alpha1", "llmservices"


class Sandbox(SandboxView):
    """A running sandbox, the clients to reach it, and every pod process seen (to prove none is left)."""

    def __init__(self, layout: Layout, state: dict[str, Any]) -> None:
        super().__init__(layout, state)
        self.pids: set[int] = set()

    def pods(self, name: str | None = None) -> list[dict[str, Any]]:
        pods = super().pods(name)
        for pod in pods:
            self.pids.update(running_pids(pod))
        return pods

    def wait(self, predicate: Callable[[], Any], *, timeout: float, what: str) -> Any:
        try:
            return super().wait(predicate, timeout=timeout, what=what)
        except SandboxTimeout as timeout_error:
            pytest.fail(str(timeout_error))


def running_pids(pod: dict[str, Any]) -> list[int]:
    return [
        int(status["containerID"].removeprefix(CONTAINER_ID_SCHEME))
        for status in (pod.get("status") or {}).get("containerStatuses") or []
        if "running" in (status.get("state") or {}) and status.get("containerID")
    ]


def alive(pid: int) -> bool:
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def pod_address(pod: dict[str, Any]) -> str:
    """podIP:containerPort, as a client in a cluster reaches the pod."""
    port = pod["spec"]["containers"][0]["ports"][0]["containerPort"]
    return f"{pod['status']['podIP']}:{port}"


def ask(where: int | str, text: str = "Hello?") -> dict[str, Any]:
    """POST /ask on a Service port of 127.0.0.1 (int) or at a pod's host:port (str)."""
    address = f"127.0.0.1:{where}" if isinstance(where, int) else where
    request = urllib.request.Request(
        f"http://{address}/ask",
        data=json.dumps({"text": text, "max_new_tokens": 4}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, Any] = json.load(response)
        return answer


def llmservice(name: str, model: str, port: int, *, budget: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LLMService",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            # The compiled step would compile in a child process of every pod: tests/inference covers it.
            "model": {"name": model, "maxNewTokens": 4, "compile": "off"},
            "replicas": 1,
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
            "service": {"type": "ClusterIP", "port": port},
            "probes": {
                "startup": {"periodSeconds": 1, "timeoutSeconds": 2, "budgetSeconds": budget},
                "readiness": {"periodSeconds": 1, "timeoutSeconds": 2, "failureThreshold": 2},
                "liveness": {"periodSeconds": 1, "timeoutSeconds": 2, "failureThreshold": 2},
            },
            "storage": {"cacheSize": "1Gi"},
        },
    }


@pytest.fixture(scope="module")
def tiny_model_folder(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return build_tiny_model(tmp_path_factory.mktemp("sandbox-model") / "tiny")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    layout = Layout(tmp_path_factory.mktemp("sandbox") / "data")
    state = cli.up(layout, api_port=free_port(), quiet=True)
    running = Sandbox(layout, state)
    operator = recorded_pid(layout.operator_pid_file)
    try:
        yield running
    finally:
        cli.down(layout)
        left = sorted(pid for pid in [*running.pids, state["pid"], operator or 0] if pid and alive(pid))
        assert not left, f"processes left after `kubellm sandbox down`: {left}"
        assert not list(layout.root.glob("pods/*/*/*.pid")), "pod pid files left"


OPERATOR = "system:serviceaccount:kubellm-system:kubellm-operator"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl on PATH")
def test_the_operator_runs_as_deploys_service_account(sandbox: Sandbox) -> None:
    """deploy/'s RBAC is all the sandbox's operator has: it may patch LLMService status, not read Secrets."""

    def kubectl(kubeconfig: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
        cache = f"--cache-dir={sandbox.layout.root / 'kubectl-cache'}"
        command = ["kubectl", f"--kubeconfig={kubeconfig}", cache, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    denied = kubectl(sandbox.layout.kubeconfig, "auth", "can-i", "list", "secrets", "--as", OPERATOR)
    assert (denied.returncode, denied.stdout.strip()) == (1, "no"), denied.stderr
    allowed = kubectl(sandbox.layout.kubeconfig, "auth", "can-i", "patch", "llmservices/status", "--as", OPERATOR)
    assert (allowed.returncode, allowed.stdout.strip()) == (0, "yes"), allowed.stderr
    whoami = kubectl(sandbox.layout.operator_kubeconfig, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
    assert whoami.stdout == OPERATOR, whoami.stderr


def test_apply_ready_ask_scale_kill_delete(sandbox: Sandbox, tiny_model_folder: pathlib.Path) -> None:
    good_port, broken_port = free_port(), free_port()
    sandbox.custom.create_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, llmservice("tiny", str(tiny_model_folder), good_port, budget=60)
    )
    # A model that cannot load, alongside: its server exits 1 at once with the reason in its termination message,
    # its pod crash-loops and its LLMService shows why. The startup budget is far longer than any wait below: the
    # probe giving up is not what restarts it.
    sandbox.custom.create_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, llmservice("broken", "/nonexistent/kubellm-model", broken_port, budget=600)
    )

    def phase(name: str) -> str:
        return str((sandbox.llms(name).get("status") or {}).get("phase"))

    sandbox.wait(lambda: phase("tiny") == "Ready", timeout=90, what="LLMService tiny to be Ready")
    sandbox.wait(lambda: sandbox.pods("tiny"), timeout=5, what="tiny's pod")
    assert sandbox.llms("tiny")["status"]["ready"] == "1/1"
    answer = sandbox.wait(lambda: ask(good_port), timeout=20, what="an answer through the Service port")
    assert isinstance(answer["response"], str)

    sandbox.custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "tiny", {"spec": {"replicas": 2}})
    sandbox.wait(
        lambda: sandbox.llms("tiny")["status"].get("ready") == "2/2" and phase("tiny") == "Ready",
        timeout=90,
        what="tiny to be Ready with 2/2 replicas",
    )
    pods = sandbox.pods("tiny")
    assert len(pods) == 2
    addresses = {pod_address(pod) for pod in pods}
    assert len(addresses) == 2 and all(a.startswith("127.0.0.") and not a.startswith("127.0.0.1:") for a in addresses)
    assert {a.rsplit(":", 1)[1] for a in addresses} == {str(good_port)}  # the rendered port, on each pod's own IP
    assert not any(PORTS_ANNOTATION in (pod["metadata"].get("annotations") or {}) for pod in pods)
    for address in addresses:  # each pod serves on its own address
        assert isinstance(ask(address)["response"], str)
    for _ in range(4):  # and the Service forwards to them in turn
        assert isinstance(ask(good_port)["response"], str)

    victim = pods[0]
    [pid] = running_pids(victim)
    os.kill(pid, signal.SIGKILL)

    def restarted() -> bool:
        pod = next(p for p in sandbox.pods("tiny") if p["metadata"]["name"] == victim["metadata"]["name"])
        [status] = pod["status"]["containerStatuses"]
        return status["restartCount"] == 1 and status["ready"] and running_pids(pod) != [pid]

    sandbox.wait(restarted, timeout=60, what="the killed pod's container to be restarted and Ready")
    pod = next(p for p in sandbox.pods("tiny") if p["metadata"]["name"] == victim["metadata"]["name"])
    last = pod["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert (last["exitCode"], last["reason"]) == (137, "Error")
    sandbox.wait(lambda: phase("tiny") == "Ready", timeout=30, what="tiny to be Ready again")

    # A hung process (stopped, so its port accepts but never answers) is restarted by the liveness probe.
    hung = pods[1]
    [hung_pid] = running_pids(hung)
    os.kill(hung_pid, signal.SIGSTOP)

    def killed_by_liveness() -> dict[str, Any] | None:
        pod = next(p for p in sandbox.pods("tiny") if p["metadata"]["name"] == hung["metadata"]["name"])
        [status] = pod["status"]["containerStatuses"]
        return status if status["restartCount"] == 1 and status["ready"] else None

    status = sandbox.wait(killed_by_liveness, timeout=60, what="the hung pod to be restarted by its liveness probe")
    assert "failed liveness probe" in status["lastState"]["terminated"]["message"]
    assert not alive(hung_pid)
    sandbox.wait(lambda: phase("tiny") == "Ready", timeout=30, what="tiny to be Ready after the liveness restart")

    def degraded() -> dict[str, Any] | None:
        status = sandbox.llms("broken").get("status") or {}
        condition = next((c for c in status.get("conditions") or [] if c["type"] == "Degraded"), {})
        return condition if status.get("phase") == "Degraded" and condition.get("status") == "True" else None

    condition = sandbox.wait(degraded, timeout=90, what="LLMService broken to be Degraded")
    assert condition["reason"] == "CrashLoopBackOff"
    assert "model load failed" in condition["message"] and "/nonexistent/kubellm-model" in condition["message"]
    [broken_status] = sandbox.pods("broken")[0]["status"]["containerStatuses"]
    last = broken_status["lastState"]["terminated"]
    assert (last["exitCode"], last["reason"]) == (1, "Error")
    assert last["message"].startswith("model load failed: ") and "/nonexistent/kubellm-model" in last["message"]

    pids = {pid for pod in sandbox.pods("tiny") + sandbox.pods("broken") for pid in running_pids(pod)}
    assert pids
    sandbox.custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "tiny")
    sandbox.custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "broken")
    sandbox.wait(
        lambda: not sandbox.pods("tiny") and not sandbox.pods("broken"), timeout=60, what="the pods to be deleted"
    )
    assert not [pid for pid in sandbox.pids if alive(pid)], "a pod process outlived its pod"
    with pytest.raises(OSError):
        ask(good_port)  # nothing listens on the Service port any more


def test_a_taken_service_port_is_reported_not_fatal(sandbox: Sandbox) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        service = {
            "metadata": {"name": "busy"},
            "spec": {"selector": {"app": "nothing"}, "ports": [{"port": port, "targetPort": 8080}]},
        }
        sandbox.core.create_namespaced_service("default", service)
        try:

            def annotation() -> str:
                read = sandbox.core.read_namespaced_service("busy", "default")
                return str((read.metadata.annotations or {}).get(FORWARDING_ANNOTATION) or "")

            message = sandbox.wait(
                lambda: annotation() if annotation().startswith("unavailable") else None,
                timeout=15,
                what="the forwarding problem",
            )
            assert f"127.0.0.1:{port}" in message and "in use" in message
            events = sandbox.core.list_namespaced_event("default", field_selector="involvedObject.name=busy").items
            assert any(event.reason == "PortUnavailable" for event in events)
        finally:
            sandbox.core.delete_namespaced_service("busy", "default")
    assert cli.read_state(sandbox.layout) is not None, "the sandbox must keep running"


def test_up_reports_a_running_sandbox_and_refuses_a_taken_port(sandbox: Sandbox, tmp_path: pathlib.Path) -> None:
    assert cli.up(sandbox.layout, quiet=True)["pid"] == sandbox.state["pid"]  # no second sandbox
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        with pytest.raises(cli.SandboxError, match=f"127.0.0.1:{port} is already in use"):
            cli.up(Layout(tmp_path / "other"), api_port=port, quiet=True)


def test_stale_pid_files_are_cleaned_up(tmp_path: pathlib.Path) -> None:
    layout = Layout(tmp_path / "stale")
    layout.root.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for path in (layout.pid_file, layout.operator_pid_file):
        path.write_text(f"{dead.pid} 1\n")
    layout.state_file.write_text(json.dumps({"pid": dead.pid, "api_url": "http://127.0.0.1:1"}))
    assert cli.read_state(layout) is None
    assert cli.status(layout) == 1
    assert not layout.pid_file.exists() and not layout.state_file.exists()
    assert cli.down(layout) is False


def test_foreground_sandbox_stops_everything_on_ctrl_c(tmp_path: pathlib.Path) -> None:
    layout = Layout(tmp_path / "fg")
    command = [sys.executable, "-m", "kubellm_sandbox.cli", "up", "--foreground", "--data-dir", str(layout.root)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and recorded_pid(layout.operator_pid_file) is None:
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            time.sleep(0.2)
        operator = recorded_pid(layout.operator_pid_file)
        assert operator is not None, "the operator did not start"
        assert cli.read_state(layout) is not None
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0, output.decode()
        assert b"export KUBECONFIG=" in output
        assert not alive(operator), "the operator outlived Ctrl-C"
        assert not layout.pid_file.exists() and not layout.operator_pid_file.exists()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
