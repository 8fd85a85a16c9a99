"""`kubellm bench operator`: the operator at scale against the API emulator, in one bounded run on 127.0.0.1.

The bench plays the cluster around the operator and counts every request the operator makes:

- the API emulator runs in this process (its request log is the operator's alone: everything the bench does to
  the cluster goes to the emulator's store in-process, never over HTTP);
- M Nodes whose status the bench heartbeats every 10 s (staggered, as kubelets are not synchronised) and whose
  kubelet summaries drift by up to ±1 % around their base free space every 10 s;
- F foreign pods (in ``tenant-*`` namespaces, not kubellm's), present before the operator starts;
- the Deployment controller and the kubelet: each Deployment kubellm applies gets Ready pods of its current
  template (old-template pods are deleted) and its status rolled up with ``kubellm_emulator.deployments``;
- the real operator, ``python -m kubellm.cli operator`` as a child process pointed at the emulator (as the
  sandbox runs it), restarted once near the end.

Phases, in order (each bounded): converge N new LLMServices; idle (nothing changes but heartbeats and drift);
50 spec changes, one at a time, while the idle traffic goes on; a node change that flips the storage verdict of
some services (the only node large enough for the biggest class is cordoned); a restart of the operator over the
converged services. An LLMService counts as **converged** when its ``status.observedGeneration`` is its
``metadata.generation``, its Deployment and Service exist and are owned by it, and its status says ``Ready``
(the bench's controller makes every pod Ready, so Ready means the operator has seen the workload it applied).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import contextlib
import copy
import dataclasses
import functools
import json
import math
import os
import pathlib
import platform
import random
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from kubellm.contract import env_name
from kubellm.timefmt import now_rfc3339
from kubellm_emulator import ApiError, Emulator, WriteOptions
from kubellm_emulator.deployments import POD_TEMPLATE_HASH, deployment_status, template_hash
from kubellm_emulator.kubelet import Kubelet, PodOutcome
from kubellm_emulator.resources import storage_key
from kubellm_emulator.server import parse_api_path
from kubellm_operator.api import GIB, GROUP, PLURAL, VERSION
from kubellm_operator.crd import crd
from kubellm_operator.render import SELECTOR_LABEL
from kubellm_sandbox.processes import die_with_parent, free_port

JsonObject = dict[str, Any]
WATCHES_OPEN_S = 300

HEARTBEAT_S = 10.0
DRIFT = 0.01
NODE_FREE_GI = 60  # every node but the big one: free space of the node fs and the image fs, before drift
BIG_NODE_FREE_GI = 180  # the one node the biggest class of services fits on
# Model cache sizes of the services, by class; with the operator's default 2Gi headroom they need 4, 13, 33 and
# 123Gi free: the last class fits the big node only, so cordoning it flips exactly that class's storage verdict.
CACHE_CLASSES_GI = (1, 10, 30, 120)
BIG_CLASS_EVERY = 10  # every 10th service is of the big class; the rest cycle through the others
SPEC_CHANGES = 50
NAMESPACE = "bench"
FOREIGN_NAMESPACES = 10
FIELD_MANAGER = "kubellm-bench"
OPERATOR_STOP_GRACE_S = 15.0

# The issue-13 targets at N=200, M=50, F=2000 (2-core machine); the JSON carries the ratio of each figure to it.
TARGETS = {
    "converge_s": 60.0,
    "requests_per_service_to_converge": 6.0,
    "idle_status_writes_per_min": 0.0,
    "spec_change_to_deployment_p50_s": 1.0,
    "spec_change_to_deployment_p99_s": 3.0,
    "operator_rss_mb": 150.0,
    "restart_writes": 0.0,
}


class BenchError(RuntimeError):
    """The bench cannot go on (the operator did not start, a phase has nothing to measure)."""


# ---------------------------------------------------------------------------------------------------------
# What the operator asked of the API
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Call:
    """One request the operator made: its serial in the emulator's log, verb, resource (plural[/sub]) and name."""

    serial: int
    verb: str
    resource: str
    namespace: str | None
    name: str | None

    @property
    def is_write(self) -> bool:
        return self.verb in ("create", "update", "patch", "delete")

    @property
    def key(self) -> str:
        return f"{self.verb} {self.resource}"


_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


class RequestLog:
    """The emulator's request log, drained into compact :class:`Call` records as the run goes.

    The emulator keeps only its latest ``max_recorded_requests``; draining every half second keeps every request
    (a gap in the serials is counted in ``lost``, and reported).
    """

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.calls: list[Call] = []
        self.watch_selectors: dict[str, str] = {}  # resource -> the labelSelector of its latest watch
        self.lost = 0
        self._next = 0

    def drain(self) -> None:
        for request in self.emulator.requests(since=self._next):
            self.lost += request.serial - self._next
            self._next = request.serial + 1
            call = self._classify(request.method, request.path, request.query, request.serial)
            self.calls.append(call)
            if call.verb == "watch":
                self.watch_selectors[call.resource] = request.query.get("labelSelector", "")

    def marker(self) -> int:
        self.drain()
        return self.emulator.request_marker()

    def between(self, start: int, end: int | None = None) -> list[Call]:
        self.drain()
        first = bisect.bisect_left(self.calls, start, key=lambda call: call.serial)
        last = len(self.calls) if end is None else bisect.bisect_left(self.calls, end, key=lambda call: call.serial)
        return self.calls[first:last]

    def _classify(self, method: str, path: str, query: Mapping[str, str], serial: int) -> Call:
        route = parse_api_path(path, self.emulator.store.find_type)
        if route is None or route.plural is None:
            return Call(serial, "discovery", path, None, None)
        resource = route.plural + (f"/{route.subresource}" if route.subresource else "")
        if method == "GET":
            verb = "get" if route.name else "watch" if query.get("watch") in ("true", "1") else "list"
        else:
            verb = _VERBS.get(method, method.lower())
        return Call(serial, verb, resource, route.namespace, route.name)


def tally(calls: list[Call], per_min: float | None = None) -> dict[str, float]:
    """Calls by "verb resource", most first; divided by ``per_min`` minutes when given."""
    counts = collections.Counter(call.key for call in calls)
    scale = 1.0 / per_min if per_min else 1.0
    return {key: round(count * scale, 2) for key, count in counts.most_common()}


# ---------------------------------------------------------------------------------------------------------
# The cluster around the operator: nodes, foreign pods, the Deployment controller
# ---------------------------------------------------------------------------------------------------------


def node_names(count: int) -> list[str]:
    """``node-000`` ... ; the last one is the big node."""
    return [f"node-{i:03d}" for i in range(count)]


def cache_gi(index: int) -> int:
    """The model cache size of service ``index``: every 10th is of the big class."""
    if index % BIG_CLASS_EVERY == BIG_CLASS_EVERY - 1:
        return CACHE_CLASSES_GI[-1]
    return CACHE_CLASSES_GI[index % (len(CACHE_CLASSES_GI) - 1)]


def service_name(index: int) -> str:
    return f"llm-{index:04d}"


def llmservice(index: int) -> JsonObject:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LLMService",
        "metadata": {"name": service_name(index), "namespace": NAMESPACE},
        "spec": {
            "model": {"name": "embedded:smollm2-135m-instruct", "maxNewTokens": 64},
            "replicas": 1,
            "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
            "storage": {"cacheSize": f"{cache_gi(index)}Gi"},
        },
    }


def foreign_pod(index: int, node: str) -> JsonObject:
    """A pod of somebody else's workload: typical size, no kubellm label."""
    app = f"app-{index % 97:02d}"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{app}-{index:05d}",
            "namespace": f"tenant-{index % FOREIGN_NAMESPACES:02d}",
            "labels": {"app": app, "tier": "web", "pod-template-hash": f"{index % 7919:05d}"},
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
        },
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "main",
                    "image": f"registry.example/{app}:1.{index % 13}.0",
                    "args": ["--port=8080", "--log-level=info"],
                    "ports": [{"containerPort": 8080, "name": "http"}, {"containerPort": 9090, "name": "metrics"}],
                    "env": [{"name": "APP", "value": app}, {"name": "REGION", "value": "eu-west-1"}],
                    "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 10},
                }
            ],
        },
    }


class Mirror:
    """The bench's read-only view of kubellm's objects in the store, kept current from the store's change log.

    The bench looks at 200 LLMServices and their children many times a second; listing them from the store
    deep-copies every object each time, and that CPU would be taken from the emulator serving the operator.
    Following the change log costs only the changes. The objects are the store's own: never modify them.
    """

    def __init__(self, store: Any, kinds: dict[str, tuple[str, str]]) -> None:
        self.store = store
        self.kinds = kinds  # name -> (group, plural)
        self.objects: dict[str, dict[str, JsonObject]] = {name: {} for name in kinds}
        self.resource_version = 0
        self.resync()

    def resync(self) -> None:
        with self.store.lock:
            for name, (group, plural) in self.kinds.items():
                version = VERSION if group == GROUP else "v1"
                items, _ = self.store.list_objects(self.store.type_for(group, version, plural), NAMESPACE)
                self.objects[name] = {item["metadata"]["name"]: item for item in items}
            self.resource_version = self.store.resource_version

    def sync(self) -> None:
        with self.store.lock:
            try:
                batches = {
                    name: self.store.events_after(self.resource_version, storage_key(*key))
                    for name, key in self.kinds.items()
                }
            except ApiError:  # the log moved past us (410 Gone): read everything again
                self.resync()
                return
            self.resource_version = self.store.resource_version
        for name, events in batches.items():
            objects = self.objects[name]
            for event in events:
                meta = event.object["metadata"]
                if meta.get("namespace") != NAMESPACE:
                    continue
                if event.type == "DELETED":
                    objects.pop(meta["name"], None)
                else:
                    objects[meta["name"]] = event.object


class Cluster:
    """The bench's side of the cluster, in-process on the emulator's store (no HTTP: not counted)."""

    def __init__(self, emulator: Emulator, nodes: int, seed: int) -> None:
        self.emulator = emulator
        self.store = emulator.store
        self.nodes = node_names(nodes)
        self.big_node = self.nodes[-1]
        self.random = random.Random(seed)
        self.drift_paused = False
        self._options = WriteOptions(field_manager=FIELD_MANAGER)
        emulator.apply_manifest(crd())
        self._rtypes = {
            plural: self.store.type_for(group, version, plural)
            for group, version, plural in (
                ("", "v1", "nodes"),
                ("", "v1", "pods"),
                ("", "v1", "namespaces"),
                ("apps", "v1", "deployments"),
                ("", "v1", "services"),
                (GROUP, VERSION, PLURAL),
            )
        }
        self.mirror = Mirror(
            self.store,
            {PLURAL: (GROUP, PLURAL), "deployments": ("apps", "deployments"), "services": ("", "services")},
        )
        self._pods: dict[str, tuple[str, list[str]]] = {}  # deployment -> (template hash, its pods' names)
        self._handled: dict[str, str] = {}  # deployment -> resourceVersion last handled
        self._foreign: list[tuple[str, str]] = []
        self._next_foreign = 0

    def rtype(self, plural: str) -> Any:
        return self._rtypes[plural]

    def base_free(self, node: str) -> int:
        return (BIG_NODE_FREE_GI if node == self.big_node else NODE_FREE_GI) * GIB

    # Setup --------------------------------------------------------------------------------------------------

    def seed(self, foreign_pods: int) -> None:
        for name in [NAMESPACE, *(f"tenant-{i:02d}" for i in range(FOREIGN_NAMESPACES))]:
            self.store.create(self.rtype("namespaces"), None, {"metadata": {"name": name}}, self._options)
        for node in self.nodes:
            self.emulator.seed_node(node, ephemeral_storage="200Gi")
        self.drift()
        outcome = PodOutcome.ready_pods()
        for index in range(foreign_pods):
            pod = foreign_pod(index, self.nodes[index % len(self.nodes)])
            self._create_pod(pod, outcome)
            self._foreign.append((pod["metadata"]["namespace"], pod["metadata"]["name"]))

    def touch_foreign(self, count: int) -> None:
        """``count`` foreign pods get a status update (their kubelet's probe results), round robin."""
        for _ in range(min(count, len(self._foreign))):
            namespace, name = self._foreign[self._next_foreign % len(self._foreign)]
            self._next_foreign += 1
            pod = self.store.get(self.rtype("pods"), namespace, name)
            now = now_rfc3339()
            conditions = [{**c, "lastProbeTime": now} for c in (pod.get("status") or {}).get("conditions") or []]
            self.store.patch(
                self.rtype("pods"),
                namespace,
                name,
                "application/merge-patch+json",
                {"status": {"conditions": conditions}},
                subresource="status",
                options=self._options,
            )

    def _create_pod(self, pod: JsonObject, outcome: PodOutcome) -> None:
        meta = pod["metadata"]
        created = self.store.create(self.rtype("pods"), meta["namespace"], pod, self._options)
        self.store.patch(
            self.rtype("pods"),
            meta["namespace"],
            created["metadata"]["name"],
            "application/merge-patch+json",
            {"status": Kubelet.pod_status(created, outcome)},
            subresource="status",
            options=self._options,
        )

    # Idle traffic --------------------------------------------------------------------------------------------

    def drift(self) -> None:
        """Every node's kubelet summary: its base free space, moved by up to ±1 %."""
        if self.drift_paused:
            return
        for node in self.nodes:
            free = int(self.base_free(node) * (1 + self.random.uniform(-DRIFT, DRIFT)))
            self.emulator.seed_node_stats(node, capacity=str(200 * GIB), available=free)

    def heartbeat(self, node: str) -> None:
        """The kubelet's node status update: the conditions' lastHeartbeatTime moves, nothing else."""
        current = self.store.get(self.rtype("nodes"), None, node)
        now = now_rfc3339()
        conditions = [{**c, "lastHeartbeatTime": now} for c in (current.get("status") or {}).get("conditions") or []]
        self.store.patch(
            self.rtype("nodes"),
            None,
            node,
            "application/merge-patch+json",
            {"status": {"conditions": conditions}},
            subresource="status",
            options=self._options,
        )

    def cordon(self, node: str) -> None:
        self.store.patch(
            self.rtype("nodes"),
            None,
            node,
            "application/merge-patch+json",
            {"spec": {"unschedulable": True}},
            options=self._options,
        )

    # The Deployment controller and the kubelet ---------------------------------------------------------------

    def control_deployments(self) -> int:
        """One pass of the controller over kubellm's Deployments; returns how many it acted on."""
        self.mirror.sync()
        acted = 0
        for name, deployment in list(self.mirror.objects["deployments"].items()):
            meta = deployment["metadata"]
            if SELECTOR_LABEL not in (meta.get("labels") or {}) or self._handled.get(name) == meta["resourceVersion"]:
                continue
            self._reconcile(deployment)
            acted += 1
        return acted

    def _reconcile(self, deployment: JsonObject) -> None:
        meta, spec = deployment["metadata"], deployment.get("spec") or {}
        name = meta["name"]
        template = spec.get("template") or {}
        wanted_hash = template_hash(template)
        replicas = int(spec.get("replicas", 1))
        current_hash, names = self._pods.get(name, ("", []))
        pods_type = self.rtype("pods")
        if current_hash != wanted_hash:
            # A finished rollout at once (the kubelet stand-in's rule): old-template pods go, new ones come Ready.
            for pod_name in names:
                with contextlib.suppress(Exception):
                    self.store.delete(pods_type, NAMESPACE, pod_name, options=self._options)
            names = []
        while len(names) > replicas:
            self.store.delete(pods_type, NAMESPACE, names.pop(), options=self._options)
        owner = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
            "uid": meta["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        ready = PodOutcome.ready_pods()
        while len(names) < replicas:
            metadata: JsonObject = copy.deepcopy(template.get("metadata") or {})
            metadata.update(name=f"{name}-{wanted_hash}-{len(names)}", namespace=NAMESPACE, ownerReferences=[owner])
            metadata.setdefault("labels", {})[POD_TEMPLATE_HASH] = wanted_hash
            pod_spec: JsonObject = copy.deepcopy(template.get("spec") or {})
            pod_spec["nodeName"] = self.nodes[len(self._pods) % (len(self.nodes) - 1)]  # never the big node
            self._create_pod({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}, ready)
            names.append(metadata["name"])
        self._pods[name] = (wanted_hash, names)
        pods = [self.store.get(pods_type, NAMESPACE, pod_name) for pod_name in names]
        status = deployment_status(deployment, pods, now_rfc3339())
        stored = self.store.patch(
            self.rtype("deployments"),
            NAMESPACE,
            name,
            "application/merge-patch+json",
            {"status": status},
            subresource="status",
            options=self._options,
        )
        self._handled[name] = stored["metadata"]["resourceVersion"]

    # Reading the outcome -------------------------------------------------------------------------------------

    def llmservices(self) -> list[JsonObject]:
        self.mirror.sync()
        return list(self.mirror.objects[PLURAL].values())

    def converged(self) -> set[str]:
        """The names of the converged services (see the module docstring)."""
        self.mirror.sync()
        owners = {
            kind: {
                name: ref.get("uid")
                for name, child in self.mirror.objects[kind].items()
                for ref in child["metadata"].get("ownerReferences") or []
                if ref.get("kind") == "LLMService"
            }
            for kind in ("deployments", "services")
        }
        done = set()
        for name, service in self.mirror.objects[PLURAL].items():
            meta, status = service["metadata"], service.get("status") or {}
            if (
                status.get("observedGeneration") == meta.get("generation")
                and status.get("phase") == "Ready"
                and owners["deployments"].get(name) == meta["uid"]
                and owners["services"].get(name) == meta["uid"]
            ):
                done.add(name)
        return done

    def deployment_has_tokens(self, name: str, tokens: int) -> bool:
        """Whether the Deployment carries ``spec.model.maxNewTokens`` = ``tokens`` (the rendered container's
        environment has it)."""
        self.mirror.sync()
        deployment = self.mirror.objects["deployments"].get(name) or {}
        variable = env_name("default_max_new_tokens")
        for container in (((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
            "containers"
        ) or []:
            for env in container.get("env") or []:
                if env.get("name") == variable:
                    return bool(env.get("value") == str(tokens))
        return False


def storage_ready(service: Mapping[str, Any]) -> str | None:
    for condition in (service.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "StorageReady":
            return str(condition.get("status"))
    return None


# ---------------------------------------------------------------------------------------------------------
# The operator process
# ---------------------------------------------------------------------------------------------------------


class OperatorProcess:
    """``python -m kubellm.cli operator`` against the emulator's kubeconfig, in its own process group."""

    def __init__(self, kubeconfig: pathlib.Path, log: pathlib.Path, summary_refresh_s: float) -> None:
        self.kubeconfig = kubeconfig
        self.log = log
        self.summary_refresh_s = summary_refresh_s
        self.health_port = 0
        self.process: asyncio.subprocess.Process | None = None
        self.pids: list[int] = []  # every operator process started, for the record

    async def start(self) -> None:
        self.health_port = free_port()
        command = [
            sys.executable,
            "-m",
            "kubellm.cli",
            "operator",
            "--kubeconfig",
            str(self.kubeconfig),
            "--health-host",
            "127.0.0.1",
            "--health-port",
            str(self.health_port),
            "--summary-refresh-s",
            str(self.summary_refresh_s),
            # One operator: its Lease renewals (a PUT every 2 s, however many LLMServices) are not a reconcile's cost.
            "--no-leader-election",
        ]
        with self.log.open("ab") as output:
            self.process = await asyncio.create_subprocess_exec(
                *command,
                stdout=output,
                stderr=output,
                env=dict(os.environ),
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        self.pids.append(self.process.pid)

    @property
    def pid(self) -> int:
        if self.process is None:
            raise BenchError("the operator is not running")
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def usage(self) -> tuple[float, float, float]:
        """(RSS MiB, peak RSS MiB, CPU seconds) of the operator process now."""
        status = pathlib.Path(f"/proc/{self.pid}/status").read_text()
        fields = {line.split(":")[0]: line.split(":")[1].split() for line in status.splitlines() if ":" in line}
        stat = pathlib.Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(stat[11]) + int(stat[12])) / ticks  # utime, stime
        return int(fields["VmRSS"][0]) / 1024, int(fields["VmHWM"][0]) / 1024, cpu

    async def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), OPERATOR_STOP_GRACE_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                await self.process.wait()
        return self.process.returncode

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# ---------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    services: int
    nodes: int
    foreign_pods: int
    foreign_updates_per_s: int
    idle_seconds: float
    summary_refresh_s: float
    spec_changes: int
    converge_timeout_s: float
    seed: int


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile (p99 of 50 values is the largest but none)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


async def _wait(
    condition: Callable[[], bool], timeout: float, *, interval: float = 0.05, alive: Callable[[], bool] | None = None
) -> bool:
    """Polls ``condition`` until true (True) or ``timeout`` (False); stops early when ``alive()`` turns False."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline or (alive is not None and not alive()):
            return False
        await asyncio.sleep(interval)


def _changed_fields(before: Mapping[str, Any], after: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The fields (dotted paths) whose value differs, with both values: [before, after]."""
    changed: dict[str, Any] = {}
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            changed.update(_changed_fields(old, new, f"{prefix}{key}."))
        elif old != new:
            changed[f"{prefix}{key}"] = [old, new]
    return changed


def _metric(port: int, name: str) -> float:
    """The sum of a metric's samples on the operator's /metrics (0 when it cannot be read)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read(4 * 2**20).decode()
    except OSError:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            try:
                total += float(line.rsplit(" ", 1)[1])
            except ValueError:
                continue
    return total


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


class Bench:
    def __init__(self, config: BenchConfig, workdir: pathlib.Path, say: Callable[[str], None]) -> None:
        self.config = config
        self.workdir = workdir
        self.say = say
        self.result: JsonObject = {}

    async def run(self) -> JsonObject:
        config = self.config
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        this = asyncio.current_task()
        assert this is not None
        for signum in (signal.SIGINT, signal.SIGTERM):  # stop what the bench started, then exit
            loop.add_signal_handler(signum, this.cancel)
        # The request log is drained every half second; the emulator's own cap only bounds its memory.
        async with Emulator(max_recorded_requests=20_000) as emulator:
            cluster = Cluster(emulator, config.nodes, config.seed)
            log = RequestLog(emulator)
            cluster.seed(config.foreign_pods)
            self.say(f"emulator {emulator.api_url}: {config.nodes} nodes, {config.foreign_pods} foreign pods")
            kubeconfig = emulator.write_kubeconfig(self.workdir / "kubeconfig")
            operator = OperatorProcess(kubeconfig, self.workdir / "operator.log", config.summary_refresh_s)
            stop = asyncio.Event()
            background = [
                asyncio.create_task(self._heartbeats(cluster, stop)),
                asyncio.create_task(self._drift(cluster, stop)),
                asyncio.create_task(self._controller(cluster, stop)),
                asyncio.create_task(self._drainer(log, stop)),
                asyncio.create_task(self._foreign_churn(cluster, stop)),
            ]
            try:
                await self._phases(cluster, log, operator)
            except BenchError as error:
                self.result["error"] = str(error)
                self.result["operator_log_tail"] = operator.tail()
            finally:
                stop.set()
                await operator.stop()
                await asyncio.gather(*background, return_exceptions=True)
                emulator.close_idle_connections()
            self.result["lost_requests"] = log.lost
            self.result["operator_pids"] = operator.pids
            self.result["watch_label_selectors"] = log.watch_selectors
        self.result["wall_s"] = round(time.monotonic() - started, 1)
        return self.result

    # Background actors ---------------------------------------------------------------------------------------

    async def _heartbeats(self, cluster: Cluster, stop: asyncio.Event) -> None:
        # Staggered: node i beats at i/M of every 10 s period.
        step = HEARTBEAT_S / len(cluster.nodes)
        while not stop.is_set():
            for node in cluster.nodes:
                cluster.heartbeat(node)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), step)
                if stop.is_set():
                    return

    async def _drift(self, cluster: Cluster, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HEARTBEAT_S)
            cluster.drift()

    async def _controller(self, cluster: Cluster, stop: asyncio.Event) -> None:
        while not stop.is_set():
            cluster.control_deployments()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)

    async def _foreign_churn(self, cluster: Cluster, stop: asyncio.Event) -> None:
        rate = self.config.foreign_updates_per_s
        while rate and not stop.is_set():
            cluster.touch_foreign(max(1, rate // 10))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)

    async def _drainer(self, log: RequestLog, stop: asyncio.Event) -> None:
        while not stop.is_set():
            log.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    # Phases ----------------------------------------------------------------------------------------------------

    async def _start_operator(self, operator: OperatorProcess, log: RequestLog, since: int) -> None:
        await operator.start()
        if not await _wait(lambda: _healthy(operator.health_port), 60, interval=0.2, alive=operator.alive):
            raise BenchError(f"the operator did not answer /healthz within 60 s:\n{operator.tail()}")

        def watching() -> bool:
            watched = {call.resource for call in log.between(since) if call.verb == "watch"}
            return {PLURAL, "nodes", "pods", "deployments", "services"} <= watched

        # Kopf opens a watch after its listing is processed: thousands of pods on a contended machine take minutes.
        if not await _wait(watching, WATCHES_OPEN_S, interval=0.2, alive=operator.alive):
            raise BenchError(f"the operator did not open its watches within {WATCHES_OPEN_S} s:\n{operator.tail()}")

    async def _phases(self, cluster: Cluster, log: RequestLog, operator: OperatorProcess) -> None:
        config, result = self.config, self.result
        start_marker = log.marker()
        await self._start_operator(operator, log, start_marker)
        result["startup_requests"] = len(log.between(start_marker))
        self.say(f"operator up (pid {operator.pid}); creating {config.services} LLMServices")

        # Converge ---------------------------------------------------------------------------------------------
        rss0, _, cpu0 = operator.usage()
        marker = log.marker()
        t0, bench_cpu0 = time.monotonic(), time.process_time()
        for index in range(config.services):
            cluster.store.create(
                cluster.rtype(PLURAL), NAMESPACE, llmservice(index), WriteOptions(field_manager=FIELD_MANAGER)
            )
        converged: set[str] = set()

        def all_converged() -> bool:
            converged.clear()
            converged.update(cluster.converged())
            return len(converged) == config.services

        done = await _wait(all_converged, config.converge_timeout_s, interval=0.25, alive=operator.alive)
        converge_s = time.monotonic() - t0
        calls = log.between(marker)
        _, _, cpu1 = operator.usage()
        result["converged"] = len(converged)
        result["converge_s"] = _round(converge_s, 2) if done else None
        result["converge_timeout_s"] = None if done else config.converge_timeout_s
        result["requests_per_service_to_converge"] = round(len(calls) / config.services, 2)
        result["writes_per_service_to_converge"] = round(sum(c.is_write for c in calls) / config.services, 2)
        result["converge_requests"] = tally(calls)
        result["operator_cpu_s_converge"] = round(cpu1 - cpu0, 2)
        # The emulator (the apiserver) runs in this process: a share near 1 means it, not the operator, set the pace.
        result["emulator_cpu_share_converge"] = round((time.process_time() - bench_cpu0) / converge_s, 2)
        self.say(f"converged {len(converged)}/{config.services} in {converge_s:.1f}s, {len(calls)} requests")
        if not operator.alive():
            raise BenchError(f"the operator exited while converging:\n{operator.tail()}")

        # Idle -------------------------------------------------------------------------------------------------
        await asyncio.sleep(5)  # the tail of the convergence (last pod events) is not idle traffic
        marker = log.marker()
        _, _, cpu_idle0 = operator.usage()
        t_idle, bench_cpu0 = time.monotonic(), time.process_time()
        self.say(f"idle for {config.idle_seconds:.0f}s (heartbeats every {HEARTBEAT_S:.0f}s, summaries drift ±1%)")
        await asyncio.sleep(config.idle_seconds)
        minutes = (time.monotonic() - t_idle) / 60
        result["emulator_cpu_share_idle"] = round((time.process_time() - bench_cpu0) / (minutes * 60), 2)
        calls = log.between(marker)
        rss, _, cpu_idle1 = operator.usage()
        status_writes = [c for c in calls if c.resource == f"{PLURAL}/status" and c.is_write]
        result["idle_window_s"] = round(minutes * 60, 1)
        result["idle_requests_per_min"] = round(len(calls) / minutes, 1)
        result["idle_status_writes_per_min"] = round(len(status_writes) / minutes, 1)
        result["idle_writes_per_min"] = round(sum(c.is_write for c in calls) / minutes, 1)
        result["idle_requests_per_min_by_verb_resource"] = tally(calls, minutes)
        result["idle_status_writes_services"] = len({c.name for c in status_writes})
        result["operator_cpu_share_idle"] = round((cpu_idle1 - cpu_idle0) / (minutes * 60), 2)
        result["idle_operator_cpu_s_per_min"] = round((cpu_idle1 - cpu_idle0) / minutes, 2)
        result["operator_rss_mb"] = round(rss, 1)
        result["operator_rss_mb_before_services"] = round(rss0, 1)
        self.say(
            f"idle: {result['idle_requests_per_min']} requests/min, "
            f"{result['idle_status_writes_per_min']} status writes/min"
        )

        # Spec changes while idle traffic runs ------------------------------------------------------------------
        latencies = await self._spec_changes(cluster, operator)
        result["spec_changes_done"] = len(latencies)
        result["spec_change_to_deployment_p50_s"] = _round(percentile(latencies, 0.5))
        result["spec_change_to_deployment_p99_s"] = _round(percentile(latencies, 0.99))
        result["spec_change_to_deployment_max_s"] = _round(max(latencies, default=None))
        self.say(
            f"spec change -> Deployment: p50 {result['spec_change_to_deployment_p50_s']}s, "
            f"p99 {result['spec_change_to_deployment_p99_s']}s over {len(latencies)} changes"
        )

        # A node change that flips storage verdicts --------------------------------------------------------------
        await self._storage_flip(cluster, log, operator)

        # Restart over the converged services ---------------------------------------------------------------------
        _, peak, cpu_total = operator.usage()
        result["operator_peak_rss_mb"] = round(peak, 1)
        result["operator_cpu_s"] = round(cpu_total, 1)
        await self._restart(cluster, log, operator)

    async def _spec_changes(self, cluster: Cluster, operator: OperatorProcess) -> list[float]:
        config = self.config
        picker = random.Random(config.seed + 1)
        latencies: list[float] = []
        budget = time.monotonic() + max(120.0, config.spec_changes * 6.0)
        for change in range(config.spec_changes):
            if time.monotonic() > budget or not operator.alive():
                break
            name = service_name(picker.randrange(config.services))
            tokens = 100 + change
            t0 = time.monotonic()
            cluster.store.patch(
                cluster.rtype(PLURAL),
                NAMESPACE,
                name,
                "application/merge-patch+json",
                {"spec": {"model": {"maxNewTokens": tokens}}},
                options=WriteOptions(field_manager=FIELD_MANAGER),
            )
            applied = await _wait(functools.partial(cluster.deployment_has_tokens, name, tokens), 30, interval=0.005)
            if applied:
                latencies.append(time.monotonic() - t0)
            await asyncio.sleep(picker.uniform(0.2, 0.6))
        return latencies

    async def _storage_flip(self, cluster: Cluster, log: RequestLog, operator: OperatorProcess) -> None:
        result = self.result
        # Summaries are held still from here on, so that every status write below is the node change's doing.
        cluster.drift_paused = True
        before = {s["metadata"]["name"]: storage_ready(s) for s in cluster.llmservices()}
        affected = {service_name(i) for i in range(self.config.services) if cache_gi(i) == CACHE_CLASSES_GI[-1]} & {
            name for name, ready in before.items() if ready == "True"
        }
        marker = log.marker()
        t0 = time.monotonic()
        cluster.cordon(cluster.big_node)

        def flipped() -> bool:
            now = {s["metadata"]["name"]: storage_ready(s) for s in cluster.llmservices()}
            return all(now.get(name) == "False" for name in affected)

        done = await _wait(flipped, 120, interval=0.1, alive=operator.alive)
        latency = time.monotonic() - t0
        await asyncio.sleep(5)  # statuses written late would still be the node change's
        writes = [c for c in log.between(marker) if c.resource == f"{PLURAL}/status" and c.is_write]
        written = {c.name for c in writes if c.name}
        result["storage_flip_latency_s"] = _round(latency, 3) if done and affected else None
        result["storage_flip"] = {
            "node_change": f"cordon {cluster.big_node}, the only node with {CACHE_CLASSES_GI[-1] + 3}Gi free",
            "affected": len(affected),
            "flipped": done,
            "statuses_written": len(written),
            "status_writes": len(writes),
            "affected_written": len(written & affected),
            "unaffected_written": len(written - affected),
            "exactly_affected": written == affected,
        }
        self.say(
            f"storage flip: {len(affected)} affected, {len(written)} statuses written "
            f"({len(written - affected)} unaffected), {latency:.2f}s"
        )

    async def _restart(self, cluster: Cluster, log: RequestLog, operator: OperatorProcess) -> None:
        result, config = self.result, self.config
        # The running operator's last summary read must postdate the pause, or the restart would see news.
        paused_at = log.marker()

        def refreshed() -> bool:
            reads = [c for c in log.between(paused_at) if c.resource.startswith("nodes/proxy") and c.verb == "get"]
            return len(reads) >= config.nodes

        await _wait(refreshed, config.summary_refresh_s + 30, interval=0.2, alive=operator.alive)
        # ... and every service must have had a pass since, so that what the old operator would still write is
        # written before it stops.
        caught_up_from = log.marker()

        quiet = {"busy": -1, "since": time.monotonic()}

        passes_before = _metric(operator.health_port, "kubellm_operator_reconciles_total")

        def caught_up() -> bool:
            calls = log.between(caught_up_from)
            # The operator reads LLMServices from its watch: its own count of passes says it went over them.
            if _metric(operator.health_port, "kubellm_operator_reconciles_total") - passes_before >= config.services:
                return True
            # An operator that re-evaluates only what a change can affect makes no pass when nothing changed for a
            # service: 3 s without any request but summary reads is caught up too.
            busy = sum(not c.resource.startswith("nodes/proxy") for c in calls)
            if busy != quiet["busy"]:
                quiet["busy"], quiet["since"] = busy, time.monotonic()
            return time.monotonic() - quiet["since"] >= 3.0

        await _wait(caught_up, 120, interval=0.2, alive=operator.alive)
        await asyncio.sleep(1)
        await operator.stop()
        statuses = {o["metadata"]["name"]: copy.deepcopy(o.get("status") or {}) for o in cluster.llmservices()}
        marker = log.marker()
        t0 = time.monotonic()
        await self._start_operator(operator, log, marker)

        def resumed() -> bool:
            # Every LLMService has a phase in the new process's gauge once it has had its first pass.
            return _metric(operator.health_port, "kubellm_llmservices") >= config.services

        done = await _wait(resumed, 120, interval=0.2, alive=operator.alive)
        await asyncio.sleep(5)
        calls = log.between(marker)
        result["restart_resumed"] = done
        result["restart_s"] = _round(time.monotonic() - t0 - 5, 2)
        result["restart_requests"] = len(calls)
        result["restart_writes"] = sum(c.is_write for c in calls)
        result["restart_writes_by_verb_resource"] = tally([c for c in calls if c.is_write])
        result["restart_written"] = sorted({f"{c.resource}/{c.name}" for c in calls if c.is_write})
        # What a restart's status writes changed, field by field (the old operator's last status against the new).
        after = {o["metadata"]["name"]: o.get("status") or {} for o in cluster.llmservices()}
        result["restart_status_changes"] = {
            name: _changed_fields(statuses.get(name) or {}, after.get(name) or {})
            for name in sorted({c.name for c in calls if c.resource == f"{PLURAL}/status" and c.name})
        }
        self.say(f"restart: {result['restart_writes']} writes in {len(calls)} requests")


# ---------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------


def _positive(kind: type[int] | type[float], minimum: float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubellm bench operator", description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=_positive(int, 1), default=200, help="LLMServices (default: 200)")
    parser.add_argument("--nodes", type=_positive(int, 2), default=50, help="Nodes, at least 2 (default: 50)")
    parser.add_argument(
        "--foreign-pods", type=_positive(int, 0), default=2000, help="pods not kubellm's (default: 2000)"
    )
    parser.add_argument(
        "--foreign-updates-per-s",
        type=_positive(int, 0),
        default=0,
        help="status updates of foreign pods per second, all run long (default: 0, the pods stay still)",
    )
    parser.add_argument(
        "--idle-seconds", type=_positive(float, 1), default=120.0, help="idle window (default: %(default)s)"
    )
    parser.add_argument(
        "--summary-refresh-s",
        type=_positive(float, 1),
        default=60.0,
        help="the operator's kubelet-summary refresh (its default: %(default)s)",
    )
    parser.add_argument(
        "--spec-changes", type=_positive(int, 1), default=SPEC_CHANGES, help="spec changes (default: %(default)s)"
    )
    parser.add_argument(
        "--converge-timeout-s",
        type=_positive(float, 1),
        default=300.0,
        help="give up converging after this long (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=13, help="random seed of drift and spec changes")
    parser.add_argument("--json", type=pathlib.Path, required=True, metavar="PATH", help="where to write the result")
    parser.add_argument("--workdir", type=pathlib.Path, help="keep the kubeconfig and operator log here")
    return parser


def machine() -> JsonObject:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_1m": round(load[0], 2),
    }


def ratios(result: Mapping[str, Any]) -> tuple[JsonObject, JsonObject]:
    """Each figure divided by its issue-13 target (None for a zero target), and whether the target is met."""
    ratio: JsonObject = {}
    met: JsonObject = {}
    limits: dict[str, float] = {**TARGETS, "idle_requests_per_min": float(result["config"]["nodes"] + 10)}
    for key, target in limits.items():
        value = result.get(key)
        ratio[key] = round(float(value) / target, 3) if value is not None and target else None
        met[key] = value is not None and float(value) <= target
    flip = result.get("storage_flip") or {}
    met["storage_flip_exactly_affected"] = flip.get("exactly_affected")
    met["all_converged"] = result.get("converged") == result["config"]["services"]
    return ratio, met


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    config = BenchConfig(
        services=args.services,
        nodes=args.nodes,
        foreign_pods=args.foreign_pods,
        foreign_updates_per_s=args.foreign_updates_per_s,
        idle_seconds=args.idle_seconds,
        summary_refresh_s=args.summary_refresh_s,
        spec_changes=args.spec_changes,
        converge_timeout_s=args.converge_timeout_s,
        seed=args.seed,
    )

    def say(message: str) -> None:
        print(f"kubellm bench operator: {message}", file=sys.stderr, flush=True)

    with _workdir(args.workdir) as workdir:
        before = machine()
        try:
            result = asyncio.run(Bench(config, workdir, say).run())
        except asyncio.CancelledError:
            say("interrupted; everything it started is stopped")
            return 130
    out: JsonObject = {
        "config": {**dataclasses.asdict(config), "heartbeat_s": HEARTBEAT_S, "summary_drift": DRIFT},
        "machine": {**before, "load_average_1m_end": machine()["load_average_1m"]},
        **result,
    }
    out["targets"] = {**TARGETS, "idle_requests_per_min": config.nodes + 10}
    out["ratio_to_target"], out["target_met"] = ratios(out)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out.get(k) for k in SUMMARY_KEYS}, indent=2))
    if "error" in out:
        say(out["error"])
        return 1
    return 0


SUMMARY_KEYS = (
    "converged",
    "converge_s",
    "requests_per_service_to_converge",
    "idle_requests_per_min",
    "idle_status_writes_per_min",
    "spec_change_to_deployment_p50_s",
    "spec_change_to_deployment_p99_s",
    "storage_flip_latency_s",
    "operator_rss_mb",
    "operator_cpu_s",
    "restart_writes",
)


@contextlib.contextmanager
def _workdir(keep: pathlib.Path | None) -> Iterator[pathlib.Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="kubellm-bench-operator-") as tmp:
        yield pathlib.Path(tmp)
