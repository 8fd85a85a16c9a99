"""A scripted stand-in for the Deployment controller, the scheduler and the kubelet, for tests (test tooling).

The API emulator runs no controllers; a test calls this to turn Deployments into ReplicaSets and Pods and to decide what happens to those
pods: they become Ready, crash (CrashLoopBackOff, OOMKilled), cannot pull their image (ImagePullBackOff), are evicted
for ephemeral storage, or stay Pending as Unschedulable. It then rolls the Deployment's status up (replicas,
readyReplicas, updatedReplicas, availableReplicas, observedGeneration, Available/Progressing conditions) the way the
controller-manager would, with `kubellm_emulator.deployments.deployment_status` (which the sandbox's local runner
uses too). It talks to the API over HTTP, so it works with an in-process `Emulator` and with `kubellm emulator` alike:

    async with Kubelet(emulator.api_url) as kubelet:
        await kubelet.reconcile("default", "tiny")                                  # pods Ready
        await kubelet.reconcile("default", "tiny", PodOutcome.crash_loop())         # CrashLoopBackOff
        await kubelet.reconcile("default", "tiny", PodOutcome.evicted())            # Failed, reason Evicted
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import hashlib
import json
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

import aiohttp

from kubellm.timefmt import now_rfc3339
from kubellm_emulator.deployments import (
    POD_TEMPLATE_HASH,
    deployment_status,
    desired_replicas,
    is_active,
    plan_rollout,
    template_hash,
)
from kubellm_emulator.nodes import internal_ip

JsonObject = dict[str, Any]
EVICTED_MESSAGE = "The node was low on resource: ephemeral-storage."


@dataclasses.dataclass(frozen=True)
class PodOutcome:
    """What becomes of a Deployment's pods. Build one with the class methods."""

    phase: str = "Running"
    ready: bool = True
    started: bool = True
    waiting_reason: str | None = None
    waiting_message: str = ""
    last_terminated_reason: str | None = None
    exit_code: int = 0
    restarts: int = 0
    pod_reason: str | None = None
    pod_message: str | None = None
    unschedulable_message: str | None = None
    events: tuple[tuple[str, str, str], ...] = ()  # (type, reason, message) recorded on each pod

    @classmethod
    def ready_pods(cls) -> PodOutcome:
        return cls(
            events=(("Normal", "Scheduled", "Successfully assigned"), ("Normal", "Started", "Started container"))
        )

    @classmethod
    def starting(cls) -> PodOutcome:
        """Running, but the startup or readiness probe has not passed yet."""
        return cls(ready=False, started=False)

    @classmethod
    def crash_loop(cls, restarts: int = 3, exit_code: int = 1) -> PodOutcome:
        return cls(
            ready=False,
            started=False,
            waiting_reason="CrashLoopBackOff",
            waiting_message="back-off 40s restarting failed container",
            last_terminated_reason="Error",
            exit_code=exit_code,
            restarts=restarts,
            events=(("Warning", "BackOff", "Back-off restarting failed container"),),
        )

    @classmethod
    def oom_killed(cls, restarts: int = 2) -> PodOutcome:
        return cls(
            ready=False,
            started=False,
            waiting_reason="CrashLoopBackOff",
            waiting_message="back-off 20s restarting failed container",
            last_terminated_reason="OOMKilled",
            exit_code=137,
            restarts=restarts,
            events=(("Warning", "BackOff", "Back-off restarting failed container"),),
        )

    @classmethod
    def image_pull_backoff(cls, image_message: str = "Back-off pulling image") -> PodOutcome:
        return cls(
            phase="Pending",
            ready=False,
            started=False,
            waiting_reason="ImagePullBackOff",
            waiting_message=image_message,
            events=(("Warning", "Failed", "Error: ImagePullBackOff"),),
        )

    @classmethod
    def evicted(cls, message: str = EVICTED_MESSAGE) -> PodOutcome:
        return cls(
            phase="Failed",
            ready=False,
            started=False,
            pod_reason="Evicted",
            pod_message=message,
            events=(("Warning", "Evicted", message),),
        )

    @classmethod
    def unschedulable(cls, message: str = "0/1 nodes are available: 1 Insufficient ephemeral-storage.") -> PodOutcome:
        return cls(
            phase="Pending",
            ready=False,
            started=False,
            unschedulable_message=message,
            events=(("Warning", "FailedScheduling", message),),
        )


def _owner_reference(owner: JsonObject) -> JsonObject:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


class KubeletError(RuntimeError):
    """The API answered something the helper cannot continue from (its Status message included)."""


class Kubelet:
    """Plays controller-manager, scheduler and kubelet for Deployments, over HTTP against the API at `api_url`."""

    def __init__(self, api_url: str, *, token: str = "kubellm-emulator", node_name: str | None = None) -> None:
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.node_name = node_name
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {self.token}"})
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- HTTP -----------------------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
        allow: tuple[int, ...] = (),
    ) -> Any:
        if self._session is None:
            raise RuntimeError("use the Kubelet as `async with Kubelet(url) as kubelet:`")
        data = None if body is None else json.dumps(body)
        async with self._session.request(
            method, self.api_url + path, data=data, params=params, headers={"Content-Type": content_type}
        ) as response:
            payload = await response.json(content_type=None)
            if response.status >= 400 and response.status not in allow:
                message = payload.get("message") if isinstance(payload, dict) else payload
                raise KubeletError(f"{method} {path}: HTTP {response.status}: {message}")
            return payload if response.status < 400 else None

    async def _merge_patch(self, path: str, patch: JsonObject) -> Any:
        return await self._call("PATCH", path, patch, content_type="application/merge-patch+json")

    # -- the controller -------------------------------------------------------------------------------------

    async def reconcile(
        self,
        namespace: str,
        name: str,
        outcome: PodOutcome | None = None,
        *,
        deadline_exceeded: bool = False,
    ) -> JsonObject:
        """Brings the Deployment's pods to `spec.replicas` of its current template, applies `outcome` (default:
        Ready) to them, and writes the Deployment's status. Returns the Deployment as stored afterwards."""
        outcome = outcome or PodOutcome.ready_pods()
        deployments = f"/apis/apps/v1/namespaces/{namespace}/deployments"
        deployment = await self._call("GET", f"{deployments}/{name}")
        replica_set, old_sets = await self._ensure_replica_set(deployment)
        schedule = outcome.unschedulable_message is None
        failure: str | None = None
        # The Deployment controller's rollout (deployments.plan_rollout: maxSurge, maxUnavailable, Recreate), step
        # by step until it has nothing left to do now: with Ready pods the rollout completes in this call; with
        # pods that never get ready it stops where a cluster's would stall, old pods kept as maxUnavailable says.
        for _ in range(2 * desired_replicas(deployment) + 4):
            pods = [pod for rs in (replica_set, *old_sets) for pod in await self._pods_of(namespace, rs)]
            plan = plan_rollout(deployment, pods)
            for victim in plan.delete:
                await self._call("DELETE", f"/api/v1/namespaces/{namespace}/pods/{victim}", allow=(404,))
            created, failure = await self._create_pods(replica_set, plan.create, schedule=schedule)
            changed = [await self._apply_outcome(pod, outcome) for pod in await self._pods_of(namespace, replica_set)]
            if not plan.delete and not created and not any(changed):
                break
        for old in old_sets:  # an old ReplicaSet keeps the pods the rollout has not replaced yet
            remaining = len([p for p in await self._pods_of(namespace, old) if is_active(p)])
            if (old.get("spec") or {}).get("replicas") != remaining:
                await self._merge_patch(
                    f"/apis/apps/v1/namespaces/{namespace}/replicasets/{old['metadata']['name']}",
                    {"spec": {"replicas": remaining}},
                )
        pods = [pod for rs in (replica_set, *old_sets) for pod in await self._pods_of(namespace, rs)]
        return await self._roll_up(
            deployment, replica_set, pods, deadline_exceeded=deadline_exceeded, create_failure=failure
        )

    async def reconcile_all(self, outcome_for: Callable[[JsonObject], PodOutcome | None] | None = None) -> None:
        """Reconciles every Deployment; `outcome_for(deployment)` picks each one's outcome (default: Ready)."""
        listing = await self._call("GET", "/apis/apps/v1/deployments")
        for deployment in listing["items"]:
            meta = deployment["metadata"]
            if meta.get("deletionTimestamp"):
                continue
            outcome = outcome_for(deployment) if outcome_for else None
            with contextlib.suppress(KubeletError):  # deleted in the meantime
                await self.reconcile(meta["namespace"], meta["name"], outcome)

    async def run(
        self,
        stop: asyncio.Event,
        outcome_for: Callable[[JsonObject], PodOutcome | None] | None = None,
        *,
        interval: float = 0.5,
        on_error: Callable[[Exception], Awaitable[None] | None] | None = None,
    ) -> None:
        """Reconciles all Deployments every `interval` seconds until `stop` is set."""
        while not stop.is_set():
            try:
                await self.reconcile_all(outcome_for)
            except (KubeletError, aiohttp.ClientError) as error:
                if on_error is not None:
                    result = on_error(error)
                    if result is not None:
                        await result
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    async def _ensure_replica_set(self, deployment: JsonObject) -> tuple[JsonObject, list[JsonObject]]:
        """The ReplicaSet of the current template (created when missing, scaled to the Deployment's replicas), and
        the Deployment's older ReplicaSets."""
        meta, spec = deployment["metadata"], deployment.get("spec") or {}
        namespace = meta["namespace"]
        template = copy.deepcopy(spec.get("template") or {})
        pod_hash = template_hash(template)
        rs_name = f"{meta['name']}-{pod_hash}"
        replica_sets = f"/apis/apps/v1/namespaces/{namespace}/replicasets"
        desired = int(spec.get("replicas", 1))
        existing = await self._call("GET", f"{replica_sets}/{rs_name}", allow=(404,))
        owned = await self._call("GET", replica_sets)
        old_sets = [
            other
            for other in owned["items"]
            if other["metadata"]["name"] != rs_name
            and any(r.get("uid") == meta["uid"] for r in other["metadata"].get("ownerReferences") or [])
        ]
        if existing is not None:
            if (existing.get("spec") or {}).get("replicas") != desired:
                existing = await self._merge_patch(f"{replica_sets}/{rs_name}", {"spec": {"replicas": desired}})
            return dict(existing), old_sets
        labels = {**((template.get("metadata") or {}).get("labels") or {}), POD_TEMPLATE_HASH: pod_hash}
        template.setdefault("metadata", {})["labels"] = labels
        selector = copy.deepcopy(spec.get("selector") or {})
        selector.setdefault("matchLabels", {})[POD_TEMPLATE_HASH] = pod_hash
        body = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": rs_name,
                "namespace": namespace,
                "labels": labels,
                "annotations": {"deployment.kubernetes.io/revision": str(meta.get("generation", 1))},
                "ownerReferences": [_owner_reference(deployment)],
            },
            "spec": {"replicas": desired, "selector": selector, "template": template},
        }
        created = await self._call("POST", replica_sets, body)
        await self._event(
            deployment, "Normal", "ScalingReplicaSet", f"Scaled up replica set {rs_name} from 0 to {desired}"
        )
        return dict(created), old_sets

    async def _pods_of(self, namespace: str, replica_set: JsonObject) -> list[JsonObject]:
        pod_hash = replica_set["metadata"]["labels"][POD_TEMPLATE_HASH]
        listing = await self._call(
            "GET", f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": f"{POD_TEMPLATE_HASH}={pod_hash}"}
        )
        uid = replica_set["metadata"]["uid"]
        return [
            pod
            for pod in listing["items"]
            if any(ref.get("uid") == uid for ref in pod["metadata"].get("ownerReferences") or [])
        ]

    async def _create_pods(self, replica_set: JsonObject, count: int, *, schedule: bool) -> tuple[int, str | None]:
        """Creates `count` pods of the ReplicaSet; returns how many were created and why the apiserver refused one
        (a 403 such as an exceeded ResourceQuota), which the ReplicaSet controller reports and retries later."""
        namespace = replica_set["metadata"]["namespace"]
        template = (replica_set.get("spec") or {}).get("template") or {}
        node = await self._pick_node() if schedule and count else None
        for created in range(count):
            body = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    **copy.deepcopy(template.get("metadata") or {}),
                    "generateName": f"{replica_set['metadata']['name']}-",
                    "namespace": namespace,
                    "ownerReferences": [_owner_reference(replica_set)],
                },
                "spec": {**copy.deepcopy(template.get("spec") or {}), **({"nodeName": node} if node else {})},
            }
            pod, refusal = await self._create_pod(namespace, body)
            if pod is None:
                await self._event(replica_set, "Warning", "FailedCreate", f"Error creating: {refusal}")
                return created, refusal
        return count, None

    async def _create_pod(self, namespace: str, body: JsonObject) -> tuple[JsonObject | None, str | None]:
        if self._session is None:
            raise RuntimeError("use the Kubelet as `async with Kubelet(url) as kubelet:`")
        path = f"/api/v1/namespaces/{namespace}/pods"
        async with self._session.post(self.api_url + path, json=body) as response:
            payload = await response.json(content_type=None)
            if response.status == 403:  # refused by admission (quota): a FailedCreate, not a kubelet bug
                return None, str(payload.get("message") if isinstance(payload, dict) else payload)
            if response.status >= 400:
                message = payload.get("message") if isinstance(payload, dict) else payload
                raise KubeletError(f"POST {path}: HTTP {response.status}: {message}")
            return dict(payload), None

    async def _pick_node(self) -> str | None:
        if self.node_name:
            return self.node_name
        nodes = await self._call("GET", "/api/v1/nodes")
        for node in nodes["items"]:
            conditions = {c.get("type"): c.get("status") for c in (node.get("status") or {}).get("conditions") or []}
            if conditions.get("Ready") == "True":
                return str(node["metadata"]["name"])
        return None

    async def _apply_outcome(self, pod: JsonObject, outcome: PodOutcome) -> bool:
        """Writes the pod's status for `outcome`; False when it already had it."""
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        if (pod.get("status") or {}).get("phase") == "Failed":
            return False  # a failed (evicted) pod is final
        status = self.pod_status(pod, outcome)
        previous = pod.get("status") or {}
        if _status_essence(previous) == _status_essence(status):
            return False
        await self._merge_patch(f"/api/v1/namespaces/{namespace}/pods/{name}/status", {"status": status})
        for event_type, reason, message in outcome.events:
            if reason == "Scheduled":
                node = (pod.get("spec") or {}).get("nodeName") or "the emulated node"
                message = f"Successfully assigned {namespace}/{name} to {node}"
            await self._event(pod, event_type, reason, message)
        return True

    @staticmethod
    def pod_status(pod: JsonObject, outcome: PodOutcome) -> JsonObject:
        """The pod status a kubelet would report for `outcome`."""
        now = now_rfc3339()
        containers = (pod.get("spec") or {}).get("containers") or []
        if outcome.unschedulable_message is not None:
            return {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": outcome.unschedulable_message,
                        "lastTransitionTime": now,
                    }
                ],
                "containerStatuses": None,
                "reason": None,
                "message": None,
            }
        container_statuses = []
        for container in containers:
            state: JsonObject
            if outcome.phase == "Failed":
                state = {"terminated": {"reason": "ContainerStatusUnknown", "exitCode": 137, "finishedAt": now}}
            elif outcome.waiting_reason:
                state = {"waiting": {"reason": outcome.waiting_reason, "message": outcome.waiting_message}}
            else:
                state = {"running": {"startedAt": now}}
            entry: JsonObject = {
                "name": container.get("name"),
                "image": container.get("image"),
                "imageID": f"docker.io/{container.get('image')}@sha256:" + "0" * 64,
                "ready": outcome.ready,
                "started": outcome.started,
                "restartCount": outcome.restarts,
                "state": state,
            }
            if outcome.last_terminated_reason:
                entry["lastState"] = {
                    "terminated": {
                        "reason": outcome.last_terminated_reason,
                        "exitCode": outcome.exit_code,
                        "finishedAt": now,
                    }
                }
            container_statuses.append(entry)
        ready = "True" if outcome.ready else "False"
        node_name = (pod.get("spec") or {}).get("nodeName")
        conditions = [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
            {"type": "Ready", "status": ready, "lastTransitionTime": now},
        ]
        if outcome.phase == "Failed":
            conditions = [
                {
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "TerminationByKubelet",
                    "lastTransitionTime": now,
                }
            ]
        return {
            "phase": outcome.phase,
            "conditions": conditions,
            "containerStatuses": container_statuses,
            "podIP": "10.244.0." + str(1 + int(hashlib.sha256(pod["metadata"]["name"].encode()).hexdigest(), 16) % 250),
            **({"hostIP": internal_ip(node_name)} if node_name else {}),
            "startTime": (pod.get("status") or {}).get("startTime") or now,
            "qosClass": "Burstable",
            "reason": outcome.pod_reason,
            "message": outcome.pod_message,
        }

    async def _roll_up(
        self,
        deployment: JsonObject,
        replica_set: JsonObject,
        pods: list[JsonObject],
        *,
        deadline_exceeded: bool,
        create_failure: str | None = None,
    ) -> JsonObject:
        meta = deployment["metadata"]
        status = deployment_status(
            deployment, pods, now_rfc3339(), deadline_exceeded=deadline_exceeded, create_failure=create_failure
        )
        rs_name = replica_set["metadata"]["name"]
        own = [
            pod
            for pod in pods
            if any(r.get("uid") == replica_set["metadata"]["uid"] for r in pod["metadata"].get("ownerReferences") or [])
        ]
        own_status = deployment_status(deployment, own, now_rfc3339())
        counts = ("replicas", "readyReplicas", "availableReplicas")  # the new ReplicaSet's own pods
        failure = [c for c in status["conditions"] if c["type"] == "ReplicaFailure"]
        await self._merge_patch(
            f"/apis/apps/v1/namespaces/{meta['namespace']}/replicasets/{rs_name}/status",
            {
                "status": {
                    **{count: own_status.get(count, 0) for count in counts},
                    "observedGeneration": replica_set["metadata"].get("generation", 1),
                    "conditions": [{k: v for k, v in c.items() if k != "lastUpdateTime"} for c in failure] or None,
                }
            },
        )
        path = f"/apis/apps/v1/namespaces/{meta['namespace']}/deployments/{meta['name']}/status"
        current = deployment.get("status") or {}
        if _status_essence(current) == _status_essence(status):
            return deployment
        return dict(
            await self._call(
                "PATCH",
                path,
                {"status": {**{k: None for k in current}, **status}},
                content_type="application/merge-patch+json",
            )
        )

    async def evict(self, namespace: str, pod_name: str, message: str = EVICTED_MESSAGE) -> JsonObject:
        """Evicts one pod for ephemeral storage (phase Failed, reason Evicted)."""
        pod = await self._call("GET", f"/api/v1/namespaces/{namespace}/pods/{pod_name}")
        await self._apply_outcome(pod, PodOutcome.evicted(message))
        return dict(await self._call("GET", f"/api/v1/namespaces/{namespace}/pods/{pod_name}"))

    async def _event(self, involved: JsonObject, event_type: str, reason: str, message: str) -> None:
        meta = involved["metadata"]
        now = now_rfc3339()
        await self._call(
            "POST",
            f"/api/v1/namespaces/{meta['namespace']}/events",
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"generateName": f"{meta['name']}."},
                "involvedObject": {
                    "apiVersion": involved.get("apiVersion"),
                    "kind": involved.get("kind"),
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta.get("uid"),
                },
                "reason": reason,
                "message": message,
                "type": event_type,
                "source": {"component": "kubelet" if involved.get("kind") == "Pod" else "deployment-controller"},
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            },
        )


def _status_essence(status: JsonObject) -> Any:
    """A status without timestamps, to skip writes that would change nothing but times."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: strip(v)
                for k, v in value.items()
                if v is not None
                and k not in ("lastTransitionTime", "lastUpdateTime", "startedAt", "finishedAt", "startTime")
            }
        if isinstance(value, list):
            return [strip(item) for item in value]
        return value

    return strip(status)


def reconcile_sync(
    api_url: str, namespace: str, name: str, outcome: PodOutcome | None = None, *, deadline_exceeded: bool = False
) -> JsonObject:
    """`Kubelet.reconcile` for synchronous callers (a sync test against `kubellm emulator`, a script).

    It runs its own event loop, so it cannot be called from a coroutine, nor against an in-process `Emulator`
    served by the calling thread's loop: use `await Kubelet(...).reconcile(...)` there.
    """

    async def once() -> JsonObject:
        async with Kubelet(api_url) as kubelet:
            return await kubelet.reconcile(namespace, name, outcome, deadline_exceeded=deadline_exceeded)

    return asyncio.run(once())
