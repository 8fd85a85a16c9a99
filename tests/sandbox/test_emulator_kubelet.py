"""The Deployment-controller and kubelet stand-in: pods, their fates, and the Deployment status roll-up."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import requests

from kubellm_emulator import Emulator
from kubellm_emulator.auth import ADMIN_TOKEN
from kubellm_emulator.kubelet import EVICTED_MESSAGE, Kubelet, PodOutcome, reconcile_sync

DEPLOY = "/apis/apps/v1/namespaces/default/deployments"
PODS = "/api/v1/namespaces/default/pods"


def deployment(replicas: int = 2, image: str = "kubellm/inference:dev") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "tiny"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "tiny"}},
            "template": {
                "metadata": {"labels": {"app": "tiny"}},
                "spec": {"containers": [{"name": "inference", "image": image}]},
            },
        },
    }


def conditions(obj: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c.get("reason", "")) for c in obj["status"]["conditions"]}


async def pods(api: Any) -> list[dict[str, Any]]:
    _, listing = await api.get(PODS, params={"labelSelector": "app=tiny"})
    return list(listing["items"])


async def test_ready_pods_roll_up_into_an_available_deployment(emulator: Emulator, api: Any) -> None:
    emulator.seed_node("node-1")
    await api.post(DEPLOY, deployment())
    async with Kubelet(emulator.api_url) as kubelet:
        rolled = await kubelet.reconcile("default", "tiny")
    assert rolled["status"]["replicas"] == 2 and rolled["status"]["readyReplicas"] == 2
    assert rolled["status"]["updatedReplicas"] == 2 and rolled["status"]["availableReplicas"] == 2
    assert rolled["status"]["observedGeneration"] == 1
    assert conditions(rolled) == {
        "Available": ("True", "MinimumReplicasAvailable"),
        "Progressing": ("True", "NewReplicaSetAvailable"),
    }
    found = await pods(api)
    assert len(found) == 2
    for pod in found:
        assert pod["metadata"]["labels"]["pod-template-hash"]
        assert pod["metadata"]["name"].startswith(f"tiny-{pod['metadata']['labels']['pod-template-hash']}-")
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
        assert pod["spec"]["nodeName"] == "node-1"
        assert pod["status"]["phase"] == "Running" and pod["status"]["containerStatuses"][0]["ready"] is True

    # Deleting the Deployment collects its ReplicaSet and, through it, the pods.
    await api.delete(f"{DEPLOY}/tiny")
    assert await pods(api) == []


async def test_failing_pods_show_their_reasons(emulator: Emulator, api: Any) -> None:
    await api.post(DEPLOY, deployment(replicas=1))
    async with Kubelet(emulator.api_url) as kubelet:
        rolled = await kubelet.reconcile("default", "tiny", PodOutcome.crash_loop())
        (pod,) = await pods(api)
        container = pod["status"]["containerStatuses"][0]
        assert container["state"]["waiting"]["reason"] == "CrashLoopBackOff" and container["restartCount"] == 3
        assert conditions(rolled)["Available"] == ("False", "MinimumReplicasUnavailable")
        assert "readyReplicas" not in rolled["status"]

        await kubelet.reconcile("default", "tiny", PodOutcome.oom_killed())
        (pod,) = await pods(api)
        assert pod["status"]["containerStatuses"][0]["lastState"]["terminated"]["reason"] == "OOMKilled"

        await kubelet.reconcile("default", "tiny", PodOutcome.image_pull_backoff())
        (pod,) = await pods(api)
        assert pod["status"]["phase"] == "Pending"
        assert pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ImagePullBackOff"

        rolled = await kubelet.reconcile("default", "tiny", PodOutcome.starting(), deadline_exceeded=True)
        assert conditions(rolled)["Progressing"] == ("False", "ProgressDeadlineExceeded")

    _, events = await api.get(
        "/api/v1/namespaces/default/events", params={"fieldSelector": f"involvedObject.name={pod['metadata']['name']}"}
    )
    assert {"BackOff", "Failed"} <= {event["reason"] for event in events["items"]}


async def test_eviction_for_ephemeral_storage_and_replacement(emulator: Emulator, api: Any) -> None:
    await api.post(DEPLOY, deployment(replicas=1))
    async with Kubelet(emulator.api_url) as kubelet:
        await kubelet.reconcile("default", "tiny")
        (pod,) = await pods(api)
        evicted = await kubelet.evict("default", pod["metadata"]["name"])
        assert evicted["status"]["phase"] == "Failed" and evicted["status"]["reason"] == "Evicted"
        assert evicted["status"]["message"] == EVICTED_MESSAGE
        rolled = await kubelet.reconcile("default", "tiny")
    phases = sorted(p["status"]["phase"] for p in await pods(api))
    assert phases == ["Failed", "Running"]
    assert rolled["status"]["readyReplicas"] == 1


async def test_unschedulable_pods_stay_pending(emulator: Emulator, api: Any) -> None:
    await api.post(DEPLOY, deployment(replicas=1))
    message = "0/2 nodes are available: 2 Insufficient ephemeral-storage."
    async with Kubelet(emulator.api_url) as kubelet:
        await kubelet.reconcile("default", "tiny", PodOutcome.unschedulable(message))
    (pod,) = await pods(api)
    assert pod["status"]["phase"] == "Pending" and "nodeName" not in pod["spec"]
    scheduled = pod["status"]["conditions"][0]
    assert (scheduled["type"], scheduled["status"], scheduled["reason"]) == ("PodScheduled", "False", "Unschedulable")
    assert "Insufficient ephemeral-storage" in scheduled["message"]


async def test_scaling_and_template_changes_replace_pods(emulator: Emulator, api: Any) -> None:
    await api.post(DEPLOY, deployment(replicas=2))
    async with Kubelet(emulator.api_url) as kubelet:
        await kubelet.reconcile("default", "tiny")
        first_hash = (await pods(api))[0]["metadata"]["labels"]["pod-template-hash"]
        await api.patch(f"{DEPLOY}/tiny/scale", {"spec": {"replicas": 1}})
        rolled = await kubelet.reconcile("default", "tiny")
        assert len(await pods(api)) == 1 and rolled["status"]["replicas"] == 1
        await api.patch(
            f"{DEPLOY}/tiny",
            {"spec": {"template": {"spec": {"containers": [{"name": "inference", "image": "kubellm/inference:v2"}]}}}},
            kind="strategic",
        )
        rolled = await kubelet.reconcile("default", "tiny")
    (pod,) = await pods(api)
    assert pod["metadata"]["labels"]["pod-template-hash"] != first_hash
    assert pod["spec"]["containers"][0]["image"] == "kubellm/inference:v2"
    assert rolled["status"]["observedGeneration"] == 3


V2 = {"spec": {"template": {"spec": {"containers": [{"name": "inference", "image": "kubellm/inference:v2"}]}}}}


async def test_rolling_update_keeps_old_pods_until_new_ones_are_ready(emulator: Emulator, api: Any) -> None:
    """maxSurge 1, maxUnavailable 0 (pkg/controller/deployment/rolling.go): a new pod that never gets ready stalls
    the rollout with both old pods serving; once new pods are ready, the old ReplicaSet goes to 0."""
    body = deployment(replicas=2)
    body["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    await api.post(DEPLOY, body)
    async with Kubelet(emulator.api_url) as kubelet:
        await kubelet.reconcile("default", "tiny")
        await api.patch(f"{DEPLOY}/tiny", V2, kind="strategic")
        stalled = await kubelet.reconcile("default", "tiny", PodOutcome.starting())
        images = sorted(p["spec"]["containers"][0]["image"] for p in await pods(api))
        assert images == ["kubellm/inference:dev", "kubellm/inference:dev", "kubellm/inference:v2"]
        assert stalled["status"]["replicas"] == 3 and stalled["status"]["updatedReplicas"] == 1
        assert conditions(stalled)["Available"] == ("True", "MinimumReplicasAvailable")
        assert conditions(stalled)["Progressing"] == ("True", "ReplicaSetUpdated")
        done = await kubelet.reconcile("default", "tiny")
    images = sorted(p["spec"]["containers"][0]["image"] for p in await pods(api))
    assert images == ["kubellm/inference:v2", "kubellm/inference:v2"]
    assert conditions(done)["Progressing"] == ("True", "NewReplicaSetAvailable")
    _, sets = await api.get("/apis/apps/v1/namespaces/default/replicasets")
    assert sorted(rs["spec"]["replicas"] for rs in sets["items"]) == [0, 2]


async def test_recreate_removes_every_old_pod_first(emulator: Emulator, api: Any) -> None:
    """Recreate (pkg/controller/deployment/recreate.go): old pods go before new ones start, so a new template
    whose pods never get ready leaves the Deployment unavailable."""
    body = deployment(replicas=2)
    body["spec"]["strategy"] = {"type": "Recreate"}
    await api.post(DEPLOY, body)
    async with Kubelet(emulator.api_url) as kubelet:
        await kubelet.reconcile("default", "tiny")
        await api.patch(f"{DEPLOY}/tiny", V2, kind="strategic")
        rolled = await kubelet.reconcile("default", "tiny", PodOutcome.starting())
    images = sorted(p["spec"]["containers"][0]["image"] for p in await pods(api))
    assert images == ["kubellm/inference:v2", "kubellm/inference:v2"]
    assert conditions(rolled)["Available"] == ("False", "MinimumReplicasUnavailable")


def test_sync_reconcile_against_a_standalone_emulator() -> None:
    """The synchronous facade, against an emulator served by another thread's loop (as by `kubellm emulator`)."""
    started, stop = threading.Event(), threading.Event()
    holder: dict[str, Any] = {}

    async def serve() -> None:
        async with Emulator() as emulator:
            holder["url"] = emulator.api_url
            started.set()
            await asyncio.to_thread(stop.wait)

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    try:
        assert started.wait(10)
        url = holder["url"]
        created = requests.post(
            f"{url}{DEPLOY}",
            json=deployment(replicas=1),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=10,
        )
        assert created.status_code == 201
        rolled = reconcile_sync(url, "default", "tiny")
        assert rolled["status"]["readyReplicas"] == 1
    finally:
        stop.set()
        thread.join(10)
