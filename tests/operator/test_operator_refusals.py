"""Where a real cluster says no, the operator says so in status: refused children, malformed affinity, list drift
the apiserver would reject, slow starts, rollout strategy, timeouts and a stuck operator's health.

Each test fails on the operator before issue 11 (the refusal was invisible, the list drift stayed, /healthz was
always 200, a hung apiserver hung the pass).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import httpx
import kubernetes.client
import pytest
from kubernetes.client.exceptions import ApiException
from operator_support import Kube, llmservice, operator_running
from test_operator_emulator import converged

from kubellm_emulator.kubelet import Kubelet, PodOutcome
from kubellm_emulator.testing import kubernetes_configuration
from kubellm_operator.cluster import Cluster
from kubellm_sandbox.processes import free_port

TAKEN_NODE_PORT = 30500


def foreign_service(node_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "someone-else", "namespace": "default"},
        "spec": {"type": "NodePort", "selector": {"app": "x"}, "ports": [{"port": 80, "nodePort": node_port}]},
    }


def status_of(kube: Kube, name: str = "tiny") -> dict[str, Any]:
    return dict((kube.get("LLMService", name) or {}).get("status") or {})


def service_patches(kube: Kube, since: int) -> int:
    return len(kube.emulator.requests("PATCH", "/api/v1/namespaces/default/services/tiny", since=since))


async def test_a_refused_child_is_degraded_with_the_apiservers_message_and_not_retried(kube: Kube) -> None:
    kube.emulator.seed_node("worker-1", ephemeral_storage="100Gi")
    kube.emulator.apply_manifest(foreign_service(TAKEN_NODE_PORT))
    async with operator_running(kube) as metrics:
        await kube.create(llmservice(service={"type": "NodePort", "nodePort": TAKEN_NODE_PORT}))
        await kube.wait(
            lambda: kube.condition("tiny", "Degraded").get("reason") == "ChildRejected", "Degraded=ChildRejected"
        )
        degraded = kube.condition("tiny", "Degraded")
        assert degraded["status"] == "True"
        # The apiserver's own message, naming the field.
        assert (
            "spec.ports[0].nodePort: Invalid value: 30500: provided port is already allocated" in (degraded["message"])
        )
        assert degraded["message"].startswith("Service default/tiny was refused (422 Invalid): ")
        ready = kube.condition("tiny", "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "ChildRejected")
        assert status_of(kube)["phase"] == "Degraded"
        # The Deployment, which the apiserver accepts, is rolled out all the same.
        assert kube.get("Deployment", "tiny") is not None
        await kube.wait(lambda: kube.events("tiny", "ChildRejected"), "the ChildRejected Event")

        # Permanent: not retried while the spec stays the same, even when pods and nodes change.
        marker = kube.emulator.request_marker()
        kube.emulator.seed_node("worker-2", ephemeral_storage="100Gi")
        await kube.quiet(1.5)
        assert service_patches(kube, marker) == 0
        assert len(kube.events("tiny", "ChildRejected")) == 1, "one Event per distinct message"
        assert metrics.reconciles.labels(outcome="refused")._value.get() >= 1
        # The accepted child is still kept as rendered meanwhile.
        old_uid = (kube.get("Deployment", "tiny") or {})["metadata"]["uid"]
        await kube.delete("Deployment", "tiny")
        await kube.wait(
            lambda: (kube.get("Deployment", "tiny") or {}).get("metadata", {}).get("uid") not in (None, old_uid),
            "the deleted Deployment to be recreated while the Service stays refused",
        )
        assert service_patches(kube, marker) == 0

        # A spec change is tried at once, and converges.
        await kube.patch_llmservice("tiny", {"spec": {"service": {"nodePort": TAKEN_NODE_PORT + 1}}})
        await kube.wait(lambda: converged(kube), "the fixed LLMService to converge")
        await kube.wait(
            lambda: kube.condition("tiny", "Degraded").get("reason") == "Healthy", "Degraded=False once accepted"
        )


async def test_a_forbidden_write_is_retried_with_backoff_and_reported(kube: Kube) -> None:
    kube.emulator.seed_node("worker-1", ephemeral_storage="100Gi")
    path = "/apis/apps/v1/namespaces/default/deployments"  # the create
    fault = kube.emulator.faults.fail(path, method="POST", times=3, status=403, message="exceeded quota: q")
    async with operator_running(kube, retry_max_s=1):
        await kube.create(llmservice())
        await kube.wait(
            lambda: kube.condition("tiny", "Degraded").get("reason") == "QuotaExceeded", "Degraded=QuotaExceeded"
        )
        assert "exceeded quota: q" in kube.condition("tiny", "Degraded")["message"]
        await kube.wait(lambda: converged(kube), "convergence once the quota allows it", timeout=20)
    assert fault.remaining == 0
    assert len(kube.events("tiny", "QuotaExceeded")) == 1
    # Backoff, not a tight loop: three refusals took at least the first two (jittered) steps, 0.5 s + 0.5 s.
    served = [t for m, p, s in kube.emulator.faults.served if p == path for t in [s]]
    assert served == [403, 403, 403]


async def test_the_crd_refuses_malformed_affinity_and_toleration_naming_the_field(kube: Kube) -> None:
    for spec, field in [
        ({"affinity": {"nodeAffinity": "x"}}, "spec.affinity.nodeAffinity"),
        (
            {
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In"}]}]
                        }
                    }
                }
            },
            "values",
        ),
        ({"tolerations": [{"key": "gpu", "effect": "NoSchedule", "tolerationSeconds": 30}]}, "tolerationSeconds"),
    ]:
        with pytest.raises(ApiException) as caught:
            await kube.create(llmservice(**spec))
        assert caught.value.status == 422
        assert field in str(caught.value.body), caught.value.body


async def test_ports_replaced_by_hand_end_up_exactly_as_rendered(kube: Kube) -> None:
    kube.emulator.seed_node("worker-1", ephemeral_storage="100Gi")
    async with operator_running(kube):
        await kube.create(llmservice())
        await kube.wait(lambda: converged(kube), "the first convergence")
        # `kubectl patch service tiny -p '{"spec":{"ports":[...]}}'`: a merge patch replaces the list.
        ports = [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
        await asyncio.to_thread(
            kube.core.patch_namespaced_service,
            "tiny",
            "default",
            {"spec": {"ports": ports}},
            field_manager="kubectl-patch",
            _content_type="application/merge-patch+json",
        )

        def restored() -> bool:
            service = kube.get("Service", "tiny") or {}
            return [(p.get("name"), p.get("port")) for p in service.get("spec", {}).get("ports", [])] == [
                ("http", 5000)
            ]

        await kube.wait(restored, "the Service's ports exactly as rendered")
        # And an env var added by hand to the Deployment goes too.
        await asyncio.to_thread(
            kube.apps.patch_namespaced_deployment,
            "tiny",
            "default",
            {
                "spec": {
                    "template": {"spec": {"containers": [{"name": "inference", "env": [{"name": "X", "value": "1"}]}]}}
                }
            },
            field_manager="kubectl-edit",
        )

        def env_restored() -> bool:
            deployment = kube.get("Deployment", "tiny") or {}
            containers = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
            return bool(containers) and "X" not in [v["name"] for v in containers[0].get("env", [])]

        await kube.wait(env_restored, "the hand-added env var removed")
        await kube.wait(lambda: converged(kube), "convergence after the repairs")
        assert kube.condition("tiny", "Degraded").get("status") != "True"
        assert status_of(kube)["rollout"]["strategy"] == "Surge"


async def test_status_says_which_rollout_strategy_is_in_effect(kube: Kube) -> None:
    kube.emulator.seed_node("worker-1", ephemeral_storage="100Gi")
    async with operator_running(kube):
        await kube.create(llmservice(storage={"claimName": "models"}))
        await kube.wait(lambda: status_of(kube).get("rollout"), "status.rollout")
        rollout = status_of(kube)["rollout"]
        assert rollout["strategy"] == "Recreate" and "claimName models" in rollout["reason"]
        assert (kube.get("Deployment", "tiny") or {})["spec"]["strategy"] == {"type": "Recreate"}


async def test_healthz_fails_when_no_watch_event_arrives_and_recovers(kube: Kube) -> None:
    kube.emulator.seed_node("worker-1", ephemeral_storage="100Gi")
    port = free_port()
    running = operator_running(kube, health_port=port, health_host="127.0.0.1", watch_stall_after_s=1.0)
    async with running, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        assert (await client.get("/healthz")).status_code == 200
        await asyncio.sleep(1.5)  # nothing changes in the emulator: no watch event arrives
        stuck = await client.get("/healthz")
        assert stuck.status_code == 503, stuck.text
        assert "no watch event for" in stuck.json()["reason"]
        kube.emulator.seed_node("worker-1", ephemeral_storage="100Gi", labels={"moved": "yes"})
        deadline = time.monotonic() + 5
        while (await client.get("/healthz")).status_code != 200:
            assert time.monotonic() < deadline, "the health endpoint did not recover after a watch event"
            await asyncio.sleep(0.05)


def test_every_api_call_times_out_against_a_server_that_never_answers(kube: Kube) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    config: kubernetes.client.Configuration = kubernetes_configuration(kube.emulator, set_default=False)
    config.host = f"http://127.0.0.1:{listener.getsockname()[1]}"
    config.retries = 0
    cluster = Cluster(config, timeout=0.3)
    try:
        calls = [
            lambda: cluster.get_llmservice("default", "tiny"),
            lambda: cluster.node_names(),
            lambda: cluster.node_summary("n"),
            lambda: cluster.patch_llmservice_status("default", "tiny", {"phase": "Ready"}),
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(Exception) as caught:
                call()
            assert time.monotonic() - started < 5, f"no timeout: {caught.value!r}"
    finally:
        stop.set()
        thread.join(5)
        cluster.close()
        for connection in accepted:
            connection.close()
        listener.close()


async def test_without_kubelet_stats_free_space_is_allocatable_minus_pod_requests(kube: Kube) -> None:
    # Without the opt-in component (nodes/proxy), as `kubectl apply -k deploy/` installs it.
    rbac = kubernetes.client.RbacAuthorizationV1Api(kube.client)
    await asyncio.to_thread(rbac.delete_cluster_role_binding, "kubellm-operator-kubelet-stats")
    kube.emulator.seed_node("worker-1", ephemeral_storage="10Gi")
    kube.emulator.seed_node_stats("worker-1", capacity="10Gi", available="9Gi")
    other = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "other", "namespace": "default"},
        "spec": {
            "nodeName": "worker-1",
            "containers": [{"name": "c", "image": "x", "resources": {"requests": {"ephemeral-storage": "8Gi"}}}],
        },
    }
    await asyncio.to_thread(kube.core.create_namespaced_pod, "default", other)
    async with operator_running(kube):
        await kube.create(llmservice())  # 1Gi cache + 1Gi, plus 2Gi headroom: needs 4Gi
        await kube.wait(lambda: kube.condition("tiny", "StorageReady").get("status") == "False", "StorageReady=False")
        storage = status_of(kube)["storage"]
        assert storage["bestNodeFree"] == "2Gi", storage  # 10Gi allocatable - 8Gi requested by the other pod
        assert storage["basis"] == "allocatable minus the ephemeral-storage requests of the pods on each node"


async def test_a_write_rbac_forbids_is_forbidden_in_status(kube: Kube) -> None:
    rbac = kubernetes.client.RbacAuthorizationV1Api(kube.client)
    role = await asyncio.to_thread(rbac.read_cluster_role, "kubellm-operator")
    # Watching Services stays allowed (the operator reads its children from the watch); writing them does not.
    for rule in role.rules:
        if "services" in rule.resources:
            rule.verbs = [verb for verb in rule.verbs if verb in ("list", "watch")]
    await asyncio.to_thread(rbac.replace_cluster_role, "kubellm-operator", role)
    kube.emulator.seed_node("worker-1", ephemeral_storage="100Gi")
    async with operator_running(kube):
        await kube.create(llmservice())
        await kube.wait(lambda: kube.condition("tiny", "Degraded").get("reason") == "Forbidden", "Degraded=Forbidden")
        message = kube.condition("tiny", "Degraded")["message"]
        assert message.startswith("Service default/tiny was refused (403 Forbidden): ")
        assert "system:serviceaccount:kubellm-system:kubellm-operator" in message and "services" in message
        assert kube.get("Deployment", "tiny") is not None


async def test_pods_a_resource_quota_refuses_are_quota_exceeded(kube: Kube) -> None:
    kube.emulator.seed_node("worker-1", ephemeral_storage="100Gi")
    kube.emulator.apply_manifest(
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "storage", "namespace": "default"},
            "spec": {"hard": {"requests.ephemeral-storage": "1Gi"}},
        }
    )
    async with operator_running(kube), Kubelet(kube.emulator.api_url) as kubelet:
        await kube.create(llmservice())  # its pod requests 2Gi of ephemeral storage
        await kube.wait(lambda: kube.get("Deployment", "tiny"), "the Deployment")
        await kubelet.reconcile("default", "tiny", PodOutcome.ready_pods())  # the ReplicaSet's create is refused
        await kube.wait(
            lambda: kube.condition("tiny", "Degraded").get("reason") == "QuotaExceeded", "Degraded=QuotaExceeded"
        )
        message = kube.condition("tiny", "Degraded")["message"]
        assert "exceeded quota: storage" in message and "requests.ephemeral-storage" in message
        assert kube.condition("tiny", "Ready")["reason"] == "QuotaExceeded"
        await kube.wait(lambda: kube.events("tiny", "QuotaExceeded"), "the QuotaExceeded Event")
