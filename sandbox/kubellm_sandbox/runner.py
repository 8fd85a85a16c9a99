"""The sandbox's local runner: Deployment controller, scheduler, kubelet and kube-proxy for kubellm's Deployments.

It works on the emulator's object store in-process, level-based: every change in the API (and a one-second tick)
runs one pass that

- plans each kubellm Deployment's pods (:mod:`kubellm_emulator.deployments`: scale, rolling update) and creates or
  deletes Pod objects (owned by the Deployment, labelled with ``pod-template-hash``);
- schedules its pods onto the sandbox's one Node (nodeSelector and resource requests against allocatable);
- runs each scheduled pod's containers as local processes (:mod:`kubellm_sandbox.pods`: the container's command
  and environment, probes, restarts with back-off) and writes the pod's status back;
- rolls the pods up into the Deployment's status, so the operator's status logic runs unchanged;
- forwards each Service port on 127.0.0.1 to the ready pods (:mod:`kubellm_sandbox.forwarding`).

Pods carry a finalizer of the runner's, so deleting one (by hand, by scale-down, or by garbage collection after
its LLMService is deleted) leaves it Terminating until its processes have stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import shutil
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from kubellm.quantity import parse_quantity
from kubellm.timefmt import now_rfc3339
from kubellm_emulator.deployments import (
    POD_TEMPLATE_HASH,
    deployment_status,
    is_ready,
    is_terminating,
    plan_rollout,
    template_hash,
)
from kubellm_emulator.errors import ApiError
from kubellm_emulator.server import call_in_loop
from kubellm_emulator.store import PATCH_MERGE, ObjectStore, WriteOptions
from kubellm_operator.render import SELECTOR_LABEL
from kubellm_sandbox.forwarding import PortForwarder
from kubellm_sandbox.pods import PodAddressError, PodAddresses, PodRunner, RunnerSettings, pod_ports

logger = logging.getLogger("kubellm.sandbox.runner")
JsonObject = dict[str, Any]

FIELD_MANAGER = "kubellm-sandbox"
FINALIZER = "sandbox.kubellm.dev/local-process"
FORWARDING_ANNOTATION = "sandbox.kubellm.dev/forwarding"  # on Services: what the runner listens on, or why not
MANAGED_BY = ("app.kubernetes.io/managed-by", "kubellm")


def _requests(pod: Mapping[str, Any]) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        wanted = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for name, value in wanted.items():
            if name in ("cpu", "memory", "ephemeral-storage") or "/" in name:
                with contextlib.suppress(ValueError):
                    totals[name] = totals.get(name, Decimal(0)) + parse_quantity(value)
    return totals


def unschedulable_reason(
    pod: Mapping[str, Any], node: Mapping[str, Any], others: Sequence[Mapping[str, Any]]
) -> str | None:
    """Why `pod` does not fit on `node` next to the pods already there (the scheduler's message), or None."""
    selector = (pod.get("spec") or {}).get("nodeSelector") or {}
    labels = (node.get("metadata") or {}).get("labels") or {}
    if any(labels.get(key) != value for key, value in selector.items()):
        return "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    used: dict[str, Decimal] = {}
    for other in others:
        for name, value in _requests(other).items():
            used[name] = used.get(name, Decimal(0)) + value
    short = []
    for name, value in sorted(_requests(pod).items()):
        if name == "memory" and name not in (
            ((pod.get("spec") or {}).get("containers") or [{}])[0].get("resources") or {}
        ).get("requests", {}):
            pass
        available = parse_quantity(allocatable[name]) if name in allocatable else Decimal(0)
        if value > 0 and used.get(name, Decimal(0)) + value > available:
            short.append(f"Insufficient {name}")
    if short:
        return "0/1 nodes are available: " + ", ".join(f"1 {reason}" for reason in short) + "."
    return None


def _owner_uid(obj: Mapping[str, Any], kind: str) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == kind and ref.get("controller", True):
            return str(ref.get("uid"))
    return None


def is_kubellm_deployment(deployment: Mapping[str, Any]) -> bool:
    """Deployments the runner runs: those kubellm renders (managed-by kubellm, with the LLMService selector label)."""
    labels = (deployment.get("metadata") or {}).get("labels") or {}
    return labels.get(MANAGED_BY[0]) == MANAGED_BY[1] and SELECTOR_LABEL in labels


def _pod_name(deployment_name: str, hash_value: str) -> str:
    return f"{deployment_name}-{hash_value}-{''.join(secrets.choice('bcdfghjklmnpqrstvwxz2456789') for _ in range(5))}"


class LocalRunner:
    """The level-based loop over the store; `await runner.run(stop)` until `stop` is set, then every process stops."""

    def __init__(self, store: ObjectStore, settings: RunnerSettings) -> None:
        self.store = store
        self.settings = settings
        self.pods: dict[str, PodRunner] = {}  # pod uid -> its runner
        self.addresses = PodAddresses()
        self.forwarders: dict[int, PortForwarder] = {}  # local port -> forwarder
        self._forward_owner: dict[int, str] = {}  # local port -> "namespace/service/port"
        self._forward_failed: dict[str, tuple[float, str]] = {}  # service port key -> (next retry, message)
        self._written_status: dict[str, str] = {}  # object key -> last status written (JSON)
        self._create_failures: dict[str, str] = {}  # deployment uid -> why its last pod creation was refused
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping_pods: dict[str, asyncio.Task[None]] = {}
        self.write = WriteOptions(field_manager=FIELD_MANAGER)

    # -- wiring ---------------------------------------------------------------------------------------------

    def wake(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            call_in_loop(loop, wake.set)

    def rtype(self, group: str, version: str, plural: str) -> Any:
        return self.store.type_for(group, version, plural)

    def get_object(self, group: str, version: str, plural: str, namespace: str | None, name: str) -> JsonObject | None:
        try:
            return self.store.get(self.rtype(group, version, plural), namespace, name)
        except ApiError:
            return None

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.store.add_listener(self.wake)
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    self.reconcile()
                    await self.reconcile_forwarding()
                except Exception:
                    logger.exception("sandbox runner pass failed; retrying")
                waiter = asyncio.create_task(self._wake.wait())
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait(
                    {waiter, stopper}, timeout=self.settings.resync_s, return_when=asyncio.FIRST_COMPLETED
                )
                waiter.cancel()
                stopper.cancel()
                await asyncio.sleep(0.05)  # coalesce bursts of changes into one pass
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stops every pod's processes and every forwarder (the sandbox is going away)."""
        for pod in list(self.pods.values()):
            self._stop_pod(pod)
        if self._stopping_pods:
            await asyncio.gather(*self._stopping_pods.values(), return_exceptions=True)
        for forwarder in self.forwarders.values():
            await forwarder.stop()
        self.forwarders.clear()

    # -- one pass -------------------------------------------------------------------------------------------

    def reconcile(self) -> None:
        deployments_type = self.rtype("apps", "v1", "deployments")
        pods_type = self.rtype("", "v1", "pods")
        deployments, _ = self.store.list_objects(deployments_type, None, is_kubellm_deployment)
        pods, _ = self.store.list_objects(pods_type, None)
        by_owner: dict[str, list[JsonObject]] = {}
        for pod in pods:
            owner = _owner_uid(pod, "Deployment")
            if owner is not None:
                by_owner.setdefault(owner, []).append(pod)
        managed_uids = {d["metadata"]["uid"] for d in deployments}
        for deployment in deployments:
            self._control(deployment, by_owner.get(deployment["metadata"]["uid"], []))
        ours = [
            pod
            for pod in pods
            if _owner_uid(pod, "Deployment") in managed_uids or FINALIZER in (pod["metadata"].get("finalizers") or [])
        ]
        self._schedule(ours)
        self._kubelet(ours)
        pods, _ = self.store.list_objects(pods_type, None)
        by_owner = {}
        for pod in pods:
            owner = _owner_uid(pod, "Deployment")
            if owner is not None:
                by_owner.setdefault(owner, []).append(pod)
        for deployment in deployments:
            self._roll_up(deployment, by_owner.get(deployment["metadata"]["uid"], []))
        live = {f"pod/{pod['metadata']['uid']}" for pod in pods} | {f"deployment/{uid}" for uid in managed_uids}
        for key in set(self._written_status) - live:
            del self._written_status[key]

    def _control(self, deployment: JsonObject, pods: list[JsonObject]) -> None:
        metadata = deployment["metadata"]
        if metadata.get("deletionTimestamp"):
            return
        try:
            plan = plan_rollout(deployment, pods)
        except ValueError as error:
            self.post_event(deployment, "Warning", "InvalidStrategy", str(error), component="deployment-controller")
            return
        pods_type = self.rtype("", "v1", "pods")
        namespace = metadata.get("namespace") or "default"
        for name in plan.delete:
            with contextlib.suppress(ApiError):
                self.store.delete(pods_type, namespace, name, options=self.write)
                self.post_event(
                    deployment, "Normal", "ScalingReplicaSet", f"Deleted pod {name}", component="deployment-controller"
                )
        template = (deployment.get("spec") or {}).get("template") or {}
        hash_value = template_hash(template)
        for _ in range(plan.create):
            pod_metadata = template.get("metadata") or {}
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": _pod_name(metadata["name"], hash_value),
                    "namespace": namespace,
                    "labels": {**(pod_metadata.get("labels") or {}), POD_TEMPLATE_HASH: hash_value},
                    "annotations": dict(pod_metadata.get("annotations") or {}),
                    "finalizers": [FINALIZER],
                    "ownerReferences": [
                        {
                            "apiVersion": "apps/v1",
                            "kind": "Deployment",
                            "name": metadata["name"],
                            "uid": metadata["uid"],
                            "controller": True,
                            "blockOwnerDeletion": True,
                        }
                    ],
                },
                "spec": json.loads(json.dumps(template.get("spec") or {})),
            }
            try:
                created = self.store.create(pods_type, namespace, pod, self.write)
            except ApiError as error:
                # Refused by admission (a ResourceQuota): the ReplicaSet controller's FailedCreate, retried on the
                # next pass; the Event only when the refusal changes (each Event write would wake this loop).
                if self._create_failures.get(metadata["uid"]) != error.message:
                    self.post_event(
                        deployment,
                        "Warning",
                        "FailedCreate",
                        f"Error creating: {error.message}",
                        component="replicaset-controller",
                    )
                self._create_failures[metadata["uid"]] = error.message
                return
            self._create_failures.pop(metadata["uid"], None)
            self.post_event(
                deployment,
                "Normal",
                "SuccessfulCreate",
                f"Created pod: {created['metadata']['name']}",
                component="deployment-controller",
            )

    def _schedule(self, pods: list[JsonObject]) -> None:
        node = self.get_object("", "v1", "nodes", None, self.settings.node_name)
        if node is None:
            return
        pods_type = self.rtype("", "v1", "pods")
        bound = [
            pod
            for pod in pods
            if (pod.get("spec") or {}).get("nodeName")
            and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        ]
        for pod in pods:
            spec = pod.get("spec") or {}
            if spec.get("nodeName") or is_terminating(pod):
                continue
            reason = unschedulable_reason(pod, node, bound)
            namespace, name = pod["metadata"].get("namespace"), pod["metadata"]["name"]
            if reason is None:
                self._merge_patch(pods_type, namespace, name, {"spec": {"nodeName": self.settings.node_name}})
                self.post_event(
                    pod,
                    "Normal",
                    "Scheduled",
                    f"Successfully assigned {namespace}/{name} to {self.settings.node_name}",
                    component="default-scheduler",
                )
                bound.append(pod)
                continue
            status = {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": reason,
                        "lastProbeTime": None,
                        "lastTransitionTime": now_rfc3339(),
                    }
                ],
            }
            if self._changed_status(f"pod/{pod['metadata']['uid']}", status, ignore_times=True):
                self._merge_patch(pods_type, namespace, name, {"status": status}, status=True)
                self.post_event(pod, "Warning", "FailedScheduling", reason, component="default-scheduler")

    def _kubelet(self, pods: list[JsonObject]) -> None:
        pods_type = self.rtype("", "v1", "pods")
        present = {pod["metadata"]["uid"]: pod for pod in pods}
        for uid, existing in list(self.pods.items()):
            gone = present.get(uid)
            if gone is None or is_terminating(gone):
                self._stop_pod(existing)
        for uid, pod in present.items():
            metadata = pod["metadata"]
            if is_terminating(pod):
                if uid not in self.pods and uid not in self._stopping_pods:
                    self._release(pod)
                continue
            if (pod.get("spec") or {}).get("nodeName") != self.settings.node_name:
                continue
            runner = self.pods.get(uid)
            if runner is None:
                try:
                    ip = self.addresses.allocate(pod_ports(pod.get("spec") or {}))
                except PodAddressError as error:
                    logger.warning("cannot start pod %s/%s: %s", metadata.get("namespace"), metadata["name"], error)
                    continue
                runner = self.pods[uid] = PodRunner(self, pod, ip)
                runner.start()
            runner.pod = pod
            status = runner.status()
            if self._changed_status(f"pod/{uid}", status, ignore_times=True):
                with contextlib.suppress(ApiError):
                    self._merge_patch(
                        pods_type, metadata.get("namespace"), metadata["name"], {"status": status}, status=True
                    )

    def _stop_pod(self, runner: PodRunner) -> None:
        self.pods.pop(runner.uid, None)
        if runner.uid in self._stopping_pods:
            return

        async def stop_then_release() -> None:
            try:
                await runner.stop()
            finally:
                self._stopping_pods.pop(runner.uid, None)
                pod = self.get_object("", "v1", "pods", runner.namespace, runner.name)
                if pod is not None and pod["metadata"]["uid"] == runner.uid:
                    with contextlib.suppress(ApiError):
                        status = runner.status()
                        self._merge_patch(
                            self.rtype("", "v1", "pods"), runner.namespace, runner.name, {"status": status}, status=True
                        )
                    self._release(pod)
                shutil.rmtree(runner.directory, ignore_errors=True)
                self.addresses.release(runner.ip)
                self.wake()

        self._stopping_pods[runner.uid] = asyncio.create_task(stop_then_release(), name=f"stop {runner.key}")

    def _release(self, pod: JsonObject) -> None:
        """Removes the runner's finalizer: the pod's processes are gone, so the API may let the pod go."""
        metadata = pod["metadata"]
        finalizers = metadata.get("finalizers") or []
        if FINALIZER not in finalizers:
            return
        with contextlib.suppress(ApiError):
            self._merge_patch(
                self.rtype("", "v1", "pods"),
                metadata.get("namespace"),
                metadata["name"],
                {
                    "metadata": {
                        "finalizers": [f for f in finalizers if f != FINALIZER] or None,
                        "resourceVersion": metadata["resourceVersion"],
                    }
                },
            )

    def _roll_up(self, deployment: JsonObject, pods: list[JsonObject]) -> None:
        metadata = deployment["metadata"]
        status = deployment_status(
            deployment, pods, now_rfc3339(), create_failure=self._create_failures.get(metadata["uid"])
        )
        if not self._changed_status(
            f"deployment/{metadata['uid']}", status, ignore_times=True, current=deployment.get("status")
        ):
            return
        with contextlib.suppress(ApiError):
            self._merge_patch(
                self.rtype("apps", "v1", "deployments"),
                metadata.get("namespace"),
                metadata["name"],
                {"status": {**{k: None for k in (deployment.get("status") or {}) if k not in status}, **status}},
                status=True,
            )

    def _merge_patch(
        self, rtype: Any, namespace: str | None, name: str, body: JsonObject, *, status: bool = False
    ) -> None:
        """A JSON merge patch written as the runner's field manager (to the `status` subresource when `status`)."""
        self.store.patch(
            rtype, namespace, name, PATCH_MERGE, body, subresource="status" if status else None, options=self.write
        )

    def _changed_status(self, key: str, status: Mapping[str, Any], *, ignore_times: bool, current: Any = None) -> bool:
        """Whether `status` differs from what was last written for `key` (times aside); records it if so."""
        comparable = _without_times(status) if ignore_times else status
        text = json.dumps(comparable, sort_keys=True)
        if current is not None and json.dumps(_without_times(current), sort_keys=True) == text:
            self._written_status[key] = text
            return False
        if self._written_status.get(key) == text:
            return False
        self._written_status[key] = text
        return True

    # -- services -------------------------------------------------------------------------------------------

    async def reconcile_forwarding(self) -> None:
        services, _ = self.store.list_objects(self.rtype("", "v1", "services"), None)
        pods = [runner for runner in self.pods.values() if not runner.stopping]
        wanted: dict[int, tuple[str, JsonObject, list[tuple[str, int]]]] = {}
        for service in services:
            spec = service.get("spec") or {}
            selector = spec.get("selector") or {}
            if not selector:
                continue
            namespace = service["metadata"].get("namespace") or "default"
            for port in spec.get("ports") or []:
                if (port.get("protocol") or "TCP") != "TCP" or not port.get("port"):
                    continue
                key = f"{namespace}/{service['metadata']['name']}:{port['port']}"
                backends = []
                for runner in pods:
                    labels = (runner.pod.get("metadata") or {}).get("labels") or {}
                    if runner.namespace != namespace or any(labels.get(k) != v for k, v in selector.items()):
                        continue
                    if not is_ready(runner.pod):
                        continue
                    target = port.get("targetPort", port["port"])
                    for container in runner.spec.get("containers") or []:
                        address = runner.address(container, target)
                        if address is not None:
                            backends.append(address)
                            break
                local_port = int(port["port"])
                if local_port in wanted and wanted[local_port][0] != key:
                    self._forward_problem(
                        service, key, f"127.0.0.1:{local_port} is already forwarded for {wanted[local_port][0]}"
                    )
                    continue
                wanted[local_port] = (key, service, backends)
        for local_port in list(self.forwarders):
            if local_port not in wanted or self._forward_owner.get(local_port) != wanted[local_port][0]:
                logger.info("no longer forwarding 127.0.0.1:%d (%s)", local_port, self._forward_owner.get(local_port))
                await self.forwarders.pop(local_port).stop()
                self._forward_owner.pop(local_port, None)
        loop_time = asyncio.get_running_loop().time()
        for local_port, (key, service, backends) in wanted.items():
            forwarder = self.forwarders.get(local_port)
            if forwarder is None:
                retry_at, _ = self._forward_failed.get(key, (0.0, ""))
                if loop_time < retry_at:
                    continue
                forwarder = PortForwarder(local_port, name=key)
                try:
                    await forwarder.start()
                except OSError as error:
                    message = f"cannot listen on 127.0.0.1:{local_port} ({error.strerror or error}); another program holds the port"
                    self._forward_failed[key] = (loop_time + self.settings.forward_retry_s, message)
                    self._forward_problem(service, key, message)
                    continue
                self._forward_failed.pop(key, None)
                self.forwarders[local_port] = forwarder
                self._forward_owner[local_port] = key
                logger.info("forwarding 127.0.0.1:%d to the ready pods of %s", local_port, key)
                self._annotate(service, f"127.0.0.1:{local_port}")
            forwarder.set_backends(backends)

    def _forward_problem(self, service: JsonObject, key: str, message: str) -> None:
        if self._annotate(service, f"unavailable: {message}"):
            logger.warning("service %s: %s", key, message)
            self.post_event(service, "Warning", "PortUnavailable", message, component="kubellm-sandbox")

    def _annotate(self, service: JsonObject, value: str) -> bool:
        annotations = (service.get("metadata") or {}).get("annotations") or {}
        if annotations.get(FORWARDING_ANNOTATION) == value:
            return False
        with contextlib.suppress(ApiError):
            self._merge_patch(
                self.rtype("", "v1", "services"),
                service["metadata"].get("namespace"),
                service["metadata"]["name"],
                {"metadata": {"annotations": {FORWARDING_ANNOTATION: value}}},
            )
        return True

    # -- events ---------------------------------------------------------------------------------------------

    def post_event(self, obj: Mapping[str, Any], kind: str, reason: str, message: str, *, component: str) -> None:
        """A core/v1 Event about `obj`; repeats of the same one bump its count, as the kubelet's recorder does."""
        metadata = obj.get("metadata") or {}
        namespace = metadata.get("namespace") or "default"
        digest = hashlib.sha1(f"{metadata.get('uid')}|{reason}|{message}".encode()).hexdigest()[:12]
        name = f"{metadata.get('name')}.{digest}"
        now = now_rfc3339()
        events = self.rtype("", "v1", "events")
        try:
            existing = self.store.get(events, namespace, name)
        except ApiError:
            existing = None
        try:
            if existing is not None:
                self._merge_patch(
                    events, namespace, name, {"count": int(existing.get("count") or 1) + 1, "lastTimestamp": now}
                )
                return
            self.store.create(
                events,
                namespace,
                {
                    "metadata": {"name": name, "namespace": namespace},
                    "involvedObject": {
                        "apiVersion": obj.get("apiVersion"),
                        "kind": obj.get("kind"),
                        "name": metadata.get("name"),
                        "namespace": namespace,
                        "uid": metadata.get("uid"),
                    },
                    "reason": reason,
                    "message": message,
                    "type": kind,
                    "count": 1,
                    "firstTimestamp": now,
                    "lastTimestamp": now,
                    "source": {"component": component, "host": self.settings.node_name},
                    "reportingComponent": component,
                },
                self.write,
            )
        except ApiError as error:
            logger.debug("could not record the %s Event: %s", reason, error)


def _without_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _without_times(v)
            for k, v in value.items()
            if k not in ("lastTransitionTime", "lastUpdateTime", "lastProbeTime", "lastHeartbeatTime")
        }
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value
