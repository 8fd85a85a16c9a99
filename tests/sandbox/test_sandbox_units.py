"""Unit tests of the sandbox runner: probes (pure, and over real loopback), the Deployment controller, scheduling,
and how a pod becomes a local process (command, environment, volumes)."""

from __future__ import annotations

import asyncio
import base64
import collections.abc
import pathlib
import sys
from typing import Any

import aiohttp.web
import pytest

from kubellm_emulator.deployments import (
    POD_TEMPLATE_HASH,
    Plan,
    deployment_status,
    plan_rollout,
    template_hash,
)
from kubellm_emulator.store import ObjectStore
from kubellm_operator.api import LLMService
from kubellm_operator.render import render_deployment
from kubellm_sandbox.pods import (
    ContainerConfigError,
    ContainerRunner,
    PodRunner,
    RunnerSettings,
    expand,
    kubellm_executable,
)
from kubellm_sandbox.probes import (
    ProbeCounter,
    ProbeError,
    ProbeKind,
    ProbeResult,
    Verdict,
    parse_probe,
    run_probe,
)
from kubellm_sandbox.runner import LocalRunner, unschedulable_reason

NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:20:00Z"


def rendered_container(**spec: Any) -> dict[str, Any]:
    llms = LLMService.model_validate(
        {
            "apiVersion": "kubellm.dev/v1alpha1",
            "kind": "LLMService",
            "metadata": {"name": "tiny", "namespace": "default"},
            "spec": {"model": {"name": "embedded:smollm2-135m-instruct"}, **spec},
        }
    )
    deployment = render_deployment(llms, image_default="kubellm/inference:dev")
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


# -- probes ---------------------------------------------------------------------------------------------------


def test_rendered_probes_parse_exactly_as_specified() -> None:
    container = rendered_container(
        probes={
            "startup": {"periodSeconds": 2, "timeoutSeconds": 3, "budgetSeconds": 60},
            "readiness": {"periodSeconds": 4, "failureThreshold": 5},
            "liveness": {"mode": "inference", "periodSeconds": 7, "timeoutSeconds": 9, "failureThreshold": 2},
        }
    )
    startup = parse_probe(ProbeKind.startup, container["startupProbe"])
    readiness = parse_probe(ProbeKind.readiness, container["readinessProbe"])
    liveness = parse_probe(ProbeKind.liveness, container["livenessProbe"])
    assert startup is not None and readiness is not None and liveness is not None
    assert (startup.http_path, startup.http_port, startup.period_seconds, startup.timeout_seconds) == (
        "/readyz",
        "http",
        2,
        3,
    )
    assert startup.failure_threshold == 30  # budget 60s / period 2s
    assert (readiness.period_seconds, readiness.failure_threshold, readiness.success_threshold) == (4, 5, 1)
    assert liveness.exec_command == ("kubellm", "probe", "live")
    assert (liveness.period_seconds, liveness.timeout_seconds, liveness.failure_threshold) == (7, 9, 2)


def test_probe_defaults_and_bad_fields() -> None:
    spec = parse_probe(ProbeKind.readiness, {"tcpSocket": {"port": 80}})
    assert spec is not None
    assert (spec.period_seconds, spec.timeout_seconds, spec.failure_threshold, spec.success_threshold) == (10, 1, 3, 1)
    assert parse_probe(ProbeKind.liveness, None) is None
    with pytest.raises(ProbeError, match=r"livenessProbe.successThreshold must be 1"):
        parse_probe(ProbeKind.liveness, {"httpGet": {"path": "/", "port": 1}, "successThreshold": 2})
    with pytest.raises(ProbeError, match=r"readinessProbe.periodSeconds must be a number >= 1"):
        parse_probe(ProbeKind.readiness, {"httpGet": {"path": "/", "port": 1}, "periodSeconds": 0})
    with pytest.raises(ProbeError, match="no httpGet, exec or tcpSocket"):
        parse_probe(ProbeKind.startup, {"grpc": {"port": 1}})


def counter(kind: ProbeKind, failure: int = 3, success: int = 1) -> ProbeCounter:
    spec = parse_probe(
        kind, {"httpGet": {"path": "/", "port": 1}, "failureThreshold": failure, "successThreshold": success}
    )
    assert spec is not None
    return ProbeCounter(spec)


OK, BAD = ProbeResult(True, "ok"), ProbeResult(False, "503")


def test_readiness_thresholds_count_consecutive_results() -> None:
    ready = counter(ProbeKind.readiness, failure=2, success=2)
    assert [ready.record(r) for r in (OK, BAD, OK)] == [Verdict.unchanged] * 3  # a failure resets the successes
    assert ready.passing is None
    assert ready.record(OK) is Verdict.succeeded and ready.passing is True
    assert ready.record(BAD) is Verdict.unchanged and ready.passing is True  # one failure is below the threshold
    assert ready.record(BAD) is Verdict.failed and ready.passing is False
    assert ready.record(BAD) is Verdict.unchanged  # readiness reports a flip once
    assert ready.last_message == "503"


def test_liveness_fails_at_the_threshold_and_every_time_after() -> None:
    live = counter(ProbeKind.liveness, failure=3)
    assert [live.record(BAD) for _ in range(3)] == [Verdict.unchanged, Verdict.unchanged, Verdict.failed]
    assert live.record(BAD) is Verdict.failed
    live.reset()
    assert (live.failures, live.passing) == (0, None)
    assert live.record(BAD) is Verdict.unchanged


@pytest.fixture
async def health_server() -> collections.abc.AsyncIterator[int]:
    async def readyz(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"ok": True})

    async def down(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"error": "model load failed"}, status=503)

    app = aiohttp.web.Application()
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/down", down)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port: int = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield port
    finally:
        await runner.cleanup()


async def test_http_probe_resolves_the_named_port(health_server: int) -> None:
    spec = parse_probe(ProbeKind.readiness, {"httpGet": {"path": "/readyz", "port": "http"}})
    assert spec is not None
    ports = {"http": ("127.0.0.1", health_server)}
    result = await run_probe(spec, resolve_port=ports.get, env={})
    assert result.ok, result.message
    failing = parse_probe(ProbeKind.readiness, {"httpGet": {"path": "/down", "port": "http"}})
    assert failing is not None
    result = await run_probe(failing, resolve_port=ports.get, env={})
    assert not result.ok and "statuscode: 503" in result.message and "model load failed" in result.message
    unknown = await run_probe(spec, resolve_port=lambda port: None, env={})
    assert not unknown.ok and "names no port" in unknown.message


async def test_http_probe_of_a_closed_port_fails() -> None:
    spec = parse_probe(ProbeKind.liveness, {"httpGet": {"path": "/livez", "port": 1}})
    assert spec is not None
    result = await run_probe(spec, resolve_port=lambda port: ("127.0.0.1", 1), env={})
    assert not result.ok and "connect" in result.message


async def test_exec_probe_runs_with_the_pod_environment() -> None:
    check = ["sh", "-c", 'test "$KUBELLM_PORT" = 4242']
    spec = parse_probe(ProbeKind.liveness, {"exec": {"command": check}})
    assert spec is not None
    assert (await run_probe(spec, resolve_port=lambda port: None, env={"KUBELLM_PORT": "4242"})).ok
    result = await run_probe(spec, resolve_port=lambda port: None, env={"KUBELLM_PORT": "1"})
    assert not result.ok and "exited with 1" in result.message


async def test_exec_probe_is_bounded_by_its_timeout() -> None:
    spec = parse_probe(
        ProbeKind.liveness,
        {"exec": {"command": [sys.executable, "-c", "import time; time.sleep(30)"]}, "timeoutSeconds": 1},
    )
    assert spec is not None
    result = await asyncio.wait_for(run_probe(spec, resolve_port=lambda port: None, env={}), timeout=10)
    assert not result.ok and "timed out after 1s" in result.message


# -- environment and scheduling -------------------------------------------------------------------------------


def test_variable_expansion_follows_the_kubelet() -> None:
    env = {"A": "x", "B": "y"}
    assert expand("$(A)-$(B)", env) == "x-y"
    assert expand("$$(A)", env) == "$(A)"  # escaped
    assert expand("$(MISSING)", env) == "$(MISSING)"


def node(
    cpu: str = "2", memory: str = "4Gi", storage: str = "10Gi", labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {"name": "n", "labels": labels or {}},
        "status": {"allocatable": {"cpu": cpu, "memory": memory, "ephemeral-storage": storage}},
    }


def pod_requesting(**requests: str) -> dict[str, Any]:
    return {"spec": {"containers": [{"name": "c", "resources": {"requests": requests}}]}}


def test_scheduler_checks_requests_selector_and_gpus() -> None:
    assert unschedulable_reason(pod_requesting(cpu="1", memory="1Gi"), node(), []) is None
    full = unschedulable_reason(pod_requesting(cpu="1"), node(cpu="2"), [pod_requesting(cpu="1500m")])
    assert full == "0/1 nodes are available: 1 Insufficient cpu."
    storage = unschedulable_reason(pod_requesting(**{"ephemeral-storage": "20Gi"}), node(), [])
    assert storage is not None and "Insufficient ephemeral-storage" in storage
    gpu = {"spec": {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": 1}}}]}}
    assert "Insufficient nvidia.com/gpu" in str(unschedulable_reason(gpu, node(), []))
    picky = {"spec": {"nodeSelector": {"disk": "ssd"}, "containers": []}}
    assert "node affinity/selector" in str(unschedulable_reason(picky, node(), []))
    assert unschedulable_reason(picky, node(labels={"disk": "ssd"}), []) is None


# -- Deployment controller -----------------------------------------------------------------------------------


def deployment(replicas: int = 1, *, image: str = "v1", generation: int = 1, strategy: Any = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "replicas": replicas,
        "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": image}]}},
    }
    if strategy is not None:
        spec["strategy"] = strategy
    return {"metadata": {"name": "web", "generation": generation, "uid": "d1"}, "spec": spec}


def pod(
    name: str, owner: dict[str, Any], *, ready: bool, created: str = NOW, terminating: bool = False
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "creationTimestamp": created,
        "labels": {POD_TEMPLATE_HASH: template_hash(owner["spec"]["template"])},
    }
    if terminating:
        metadata["deletionTimestamp"] = LATER
    return {
        "metadata": metadata,
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_scale_up_and_down_removes_unready_and_newest_first() -> None:
    web = deployment(3)
    assert plan_rollout(web, []).create == 3
    pods = [
        pod("a", web, ready=True, created="2026-01-01T00:00:01Z"),
        pod("b", web, ready=True, created="2026-01-01T00:00:03Z"),
        pod("c", web, ready=False, created="2026-01-01T00:00:02Z"),
    ]
    assert plan_rollout(web, pods).create == 0 and plan_rollout(web, pods).delete == ()
    down = plan_rollout(deployment(1), pods)
    assert down.create == 0 and down.delete == ("c", "b")


def test_rolling_update_surges_before_removing_a_ready_pod() -> None:
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    old = deployment(1, image="v1", strategy=strategy)
    new = deployment(1, image="v2", generation=2, strategy=strategy)
    old_pod = pod("old", old, ready=True)
    first = plan_rollout(new, [old_pod])
    assert (first.create, first.delete) == (1, ())  # the old pod keeps serving
    starting = pod("new", new, ready=False)
    waiting = plan_rollout(new, [old_pod, starting])
    assert (waiting.create, waiting.delete) == (0, ())
    done = plan_rollout(new, [old_pod, pod("new", new, ready=True)])
    assert (done.create, done.delete) == (0, ("old",))


def test_recreate_removes_old_pods_before_creating_new_ones() -> None:
    strategy = {"type": "Recreate"}
    new = deployment(2, image="v2", strategy=strategy)
    olds = [pod("o1", deployment(2, image="v1"), ready=True), pod("o2", deployment(2, image="v1"), ready=True)]
    assert plan_rollout(new, olds).delete == ("o1", "o2") and plan_rollout(new, olds).create == 0
    leaving = [pod("o1", deployment(2, image="v1"), ready=True, terminating=True)]
    assert plan_rollout(new, leaving).create == 0
    assert plan_rollout(new, []).create == 2


def test_bad_rolling_update_values_are_named() -> None:
    web = deployment(1, strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "lots"}})
    with pytest.raises(ValueError, match=r"rollingUpdate\.maxSurge"):
        plan_rollout(web, [])


def test_status_rollup_counts_and_conditions() -> None:
    web = deployment(2, generation=3)
    pods = [pod("a", web, ready=True), pod("b", web, ready=False), pod("z", web, ready=True, terminating=True)]
    status = deployment_status(web, pods, NOW)
    assert status["observedGeneration"] == 3
    assert (status["replicas"], status["updatedReplicas"], status["readyReplicas"], status["availableReplicas"]) == (
        2,
        2,
        1,
        1,
    )
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Available"]["status"] == "False"  # maxUnavailable 25% of 2 rounds down to 0
    assert conditions["Progressing"]["reason"] == "ReplicaSetUpdated"
    complete = deployment_status(
        {**web, "status": status}, [pod("a", web, ready=True), pod("b", web, ready=True)], LATER
    )
    conditions = {c["type"]: c for c in complete["conditions"]}
    assert conditions["Progressing"]["reason"] == "NewReplicaSetAvailable"
    assert conditions["Available"]["status"] == "True" and conditions["Available"]["lastTransitionTime"] == LATER
    assert conditions["Progressing"]["lastTransitionTime"] == NOW  # still True: its transition time stays
    assert "unavailableReplicas" not in complete


def test_status_rollup_reports_unavailability_and_the_progress_deadline() -> None:
    web = deployment(1)
    web["spec"]["progressDeadlineSeconds"] = 60
    first = deployment_status(web, [pod("a", web, ready=False)], NOW)
    conditions = {c["type"]: c for c in first["conditions"]}
    assert conditions["Available"]["status"] == "False"
    assert conditions["Available"]["reason"] == "MinimumReplicasUnavailable"
    stuck = deployment_status({**web, "status": first}, [pod("a", web, ready=False)], LATER)
    progressing = {c["type"]: c for c in stuck["conditions"]}["Progressing"]
    assert (progressing["status"], progressing["reason"]) == ("False", "ProgressDeadlineExceeded")


def test_finished_pods_count_for_nothing_and_are_replaced() -> None:
    web = deployment(1)
    evicted = pod("a", web, ready=False)
    evicted["status"].update(phase="Failed", reason="Evicted")
    assert plan_rollout(web, [evicted]) == Plan(1, ())  # the Failed pod stays; a replacement is made
    status = deployment_status(web, [evicted, pod("b", web, ready=True)], NOW)
    assert (status["replicas"], status["readyReplicas"]) == (1, 1)
    progressing = {c["type"]: c for c in status["conditions"]}["Progressing"]
    assert progressing["reason"] == "NewReplicaSetAvailable"  # a lingering Failed pod does not hold the rollout


def test_status_rollup_can_be_told_the_deadline_passed() -> None:
    web = deployment(1)
    status = deployment_status(web, [pod("a", web, ready=False)], NOW, deadline_exceeded=True)
    progressing = {c["type"]: c for c in status["conditions"]}["Progressing"]
    assert (progressing["status"], progressing["reason"]) == ("False", "ProgressDeadlineExceeded")


# -- a pod's process: command, environment, volumes ------------------------------------------------------------


def pod_from_template(container: dict[str, Any], volumes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {"name": "tiny-abc-xyz", "namespace": "default", "uid": "u1"},
        "spec": {"containers": [container], "volumes": volumes, "terminationGracePeriodSeconds": 45},
    }


def local_runner(tmp_path: pathlib.Path) -> LocalRunner:
    return LocalRunner(ObjectStore(), RunnerSettings(data_dir=tmp_path, node_name="node"))


def test_a_rendered_pod_runs_as_a_local_process_of_this_environment(tmp_path: pathlib.Path) -> None:
    runner = local_runner(tmp_path)
    secret = {"metadata": {"name": "keys"}, "data": {"api": base64.b64encode(b"s3cret").decode()}}
    runner.store.create(runner.rtype("", "v1", "secrets"), "default", secret)
    llms = LLMService.model_validate(
        {
            "metadata": {"name": "tiny", "namespace": "default"},
            "spec": {
                "model": {"name": "embedded:smollm2-135m-instruct"},
                "auth": {"apiKeySecretRef": {"name": "keys", "key": "api"}},
                "env": [{"name": "GREETING", "value": "port $(KUBELLM_PORT)"}],
            },
        }
    )
    template = render_deployment(llms, image_default="img")["spec"]["template"]["spec"]
    pod = PodRunner(runner, pod_from_template(template["containers"][0], template["volumes"]), "127.0.0.9")
    command, env = pod.command_and_env(template["containers"][0])
    assert command == [kubellm_executable(), "serve"]
    assert pathlib.Path(command[0]).parent == pathlib.Path(sys.executable).parent
    # The pod's own address and the rendered port: the server binds 127.0.0.9:5000, as a pod IP in a cluster.
    assert pod.address(template["containers"][0], "http") == ("127.0.0.9", 5000)
    assert env["KUBELLM_PORT"] == "5000" and env["KUBELLM_HOST"] == "127.0.0.9"
    assert env["KUBELLM_API_KEY"] == "s3cret"
    assert env["KUBELLM_CACHE_DIR"] == str(tmp_path / "cache")  # shared by every pod: converted once
    assert env["HF_HOME"] == str(tmp_path / "cache" / "huggingface")
    assert env["HOME"] == str(pod.directory / "volumes" / "tmp")  # the pod's own /tmp emptyDir
    assert env["GREETING"] == "port 5000"
    status = pod.status()
    assert status["podIP"] == "127.0.0.9" and status["podIPs"] == [{"ip": "127.0.0.9"}]
    assert status["hostIP"] == "127.0.0.1"
    assert status["phase"] == "Pending"
    assert status["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "False"


def test_a_missing_secret_is_a_container_config_error(tmp_path: pathlib.Path) -> None:
    runner = local_runner(tmp_path)
    container = {
        "name": "c",
        "command": ["true"],
        "env": [
            {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}},
        ],
    }
    pod = PodRunner(runner, pod_from_template(container, []), "127.0.0.9")
    with pytest.raises(ContainerConfigError, match='secret "absent" not found'):
        pod.command_and_env(container)
    optional = {
        **container,
        "env": [{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": True}}}],
    }
    assert "KEY" not in pod.command_and_env(optional)[1]
    no_command = {"name": "c", "image": "nginx"}
    with pytest.raises(ContainerConfigError, match="has no command"):
        pod.command_and_env(no_command)


# -- a container's termination message, as the kubelet reports it -----------------------------------------------

WRITES_ITS_REASON = 'echo noise; printf "model load failed: no folder" > "$KUBELLM_TERMINATION_MESSAGE_PATH"; exit 1'
LOGS_AND_FAILS = 'for n in $(seq 1 100); do echo "line $n"; done; exit 3'


@pytest.mark.parametrize(
    ("script", "policy", "exit_code", "message"),
    [
        # What the process wrote to its file, whatever the policy.
        (WRITES_ITS_REASON, "File", 1, "model load failed: no folder"),
        (WRITES_ITS_REASON, "FallbackToLogsOnError", 1, "model load failed: no folder"),
        # No file written: the log's last 80 lines with FallbackToLogsOnError, nothing with File.
        (LOGS_AND_FAILS, "FallbackToLogsOnError", 3, "".join(f"line {n}\n" for n in range(21, 101))),
        (LOGS_AND_FAILS, "File", 3, ""),
        # A success leaves no log tail.
        ("echo fine", "FallbackToLogsOnError", 0, ""),
    ],
)
async def test_a_container_exit_reports_its_termination_message(
    tmp_path: pathlib.Path, script: str, policy: str, exit_code: int, message: str
) -> None:
    runner = local_runner(tmp_path)
    container = {"name": "c", "command": ["sh", "-c", script], "terminationMessagePolicy": policy}
    pod = PodRunner(runner, pod_from_template(container, []), "127.0.0.9")
    command, env = pod.command_and_env(container)
    assert env["KUBELLM_TERMINATION_MESSAGE_PATH"] == str(pod.directory / "c.termination-log")
    process = ContainerRunner(pod, container)
    process.log_path.write_bytes(b"an earlier run's output\n")  # never part of this run's tail
    process.termination_message_path.write_text("an earlier run's message")  # each run starts with an empty file
    assert await process._run_once(command, env, "2026-01-01T00:00:00Z") == (
        exit_code,
        "Error" if exit_code else "Completed",
        message,
    )


async def test_a_long_log_tail_is_cut_to_2048_bytes(tmp_path: pathlib.Path) -> None:
    runner = local_runner(tmp_path)
    script = 'for n in $(seq 1 100); do printf "%0100d\\n" "$n"; done; exit 1'
    container = {"name": "c", "command": ["sh", "-c", script], "terminationMessagePolicy": "FallbackToLogsOnError"}
    pod = PodRunner(runner, pod_from_template(container, []), "127.0.0.9")
    command, env = pod.command_and_env(container)
    _, _, message = await ContainerRunner(pod, container)._run_once(command, env, "2026-01-01T00:00:00Z")
    assert len(message.encode()) == 2048 and message.endswith(f"{100:0100d}\n")
