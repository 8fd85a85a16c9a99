"""A sandbox run that the dashboards and alerts are checked (and pictured) against: the real operator and real
inference servers (`kubellm sandbox up`), a Prometheus of our own scraping them as deploy/components/monitoring's
PodMonitors say, and a short workload: requests, a refused LLMService, a storage warning, a scale.

Used by tests/monitoring (the contract test) and `kubellm monitoring plots` (the README's pictures).
"""

from __future__ import annotations

import contextlib
import json
import math
import pathlib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

import kubernetes
import yaml

from kubellm_monitoring.contract import PODMONITORS, ROOT, rule_groups
from kubellm_monitoring.prometheus import LocalPrometheus, scrape_config, write_targets
from kubellm_sandbox import cli
from kubellm_sandbox.processes import free_port
from kubellm_sandbox.supervisor import Layout
from kubellm_sandbox.view import GROUP, NAMESPACE, PLURAL, VERSION, SandboxView

SERVING, REFUSED, UNPLACED, ELASTIC = "tiny", "refused", "unplaced", "elastic"
TAKEN_NODE_PORT = 30555
OPERATOR_DEPLOYMENT = ROOT / "deploy" / "operator.yaml"
GATEWAY_DEPLOYMENT = ROOT / "deploy" / "components" / "gateway" / "gateway.yaml"
REQUEST_TIMEOUT_S = 60.0
RETRY_AFTER_S = 1.0


class WorkloadError(RuntimeError):
    pass


def llmservice(name: str, model: str, port: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LLMService",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {"name": model, "maxNewTokens": 8},
            "replicas": 1,
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
            "service": {"type": "ClusterIP", "port": port},
            "probes": {
                "startup": {"periodSeconds": 1, "timeoutSeconds": 2, "budgetSeconds": 300},
                "readiness": {"periodSeconds": 1, "timeoutSeconds": 2},
                "liveness": {"periodSeconds": 5, "timeoutSeconds": 5},
            },
            "storage": {"cacheSize": "1Gi"},
            **spec,
        },
    }


def pod_address(pod: Mapping[str, Any], container: Mapping[str, Any], port: Mapping[str, Any]) -> str:
    """Where a pod's container port answers: podIP:containerPort, as in a cluster (the sandbox gives each pod its
    own 127.0.0.x)."""
    return f"{(pod.get('status') or {}).get('podIP')}:{port['containerPort']}"


class SandboxRun(SandboxView):
    """A running sandbox, its clients, and the workload's steps."""

    def __init__(self, layout: Layout, state: dict[str, Any]) -> None:
        super().__init__(layout, state)
        self.service_port = free_port()
        self.monitors = list(yaml.safe_load_all(PODMONITORS.read_text()))

    def condition(self, name: str, kind: str) -> dict[str, Any]:
        conditions = (self.llms(name).get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c.get("type") == kind), {})

    # The workload ----------------------------------------------------------------------------------------------

    def apply(self, model: str, *, queue_size: int = 2, step_delay_s: float = 0.1) -> None:
        """One LLMService that serves, one the apiserver refuses (its NodePort is taken: ChildRejected) and one no
        node has the storage for (StorageReady=False, the InsufficientStorage warning); the last two at 0 replicas.

        The serving one has a short queue and slowed decoding steps (server settings that its spec's env may set),
        so a burst of a few concurrent requests fills the queue and gets 429s, as a busy LLMService does."""
        server_env = [
            {"name": "KUBELLM_QUEUE_SIZE", "value": str(queue_size)},
            {"name": "KUBELLM_MAX_BATCH_SIZE", "value": "2"},
            {"name": "KUBELLM_DEBUG_STEP_DELAY_S", "value": str(step_delay_s)},
        ]
        foreign: Any = {
            "metadata": {"name": "someone-else", "namespace": NAMESPACE},
            "spec": {
                "type": "NodePort",
                "selector": {"app": "x"},
                "ports": [{"port": 80, "nodePort": TAKEN_NODE_PORT}],
            },
        }
        self.core.create_namespaced_service(NAMESPACE, foreign)
        for body in (
            llmservice(SERVING, model, self.service_port, env=server_env),
            llmservice(
                REFUSED, model, free_port(), replicas=0, service={"type": "NodePort", "nodePort": TAKEN_NODE_PORT}
            ),
            llmservice(UNPLACED, model, free_port(), replicas=0, storage={"cacheSize": "1Gi", "minNodeFree": "1Pi"}),
        ):
            self.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
        self.wait(
            lambda: self.condition(REFUSED, "Degraded").get("reason") == "ChildRejected",
            timeout=60,
            what="refused: Degraded=ChildRejected",
        )
        self.wait(
            lambda: self.condition(UNPLACED, "StorageReady").get("status") == "False",
            timeout=60,
            what="unplaced: StorageReady=False",
        )
        self.wait_ready(SERVING, 1)

    def apply_elastic(self, model: str) -> None:
        """An autoscaled LLMService at zero replicas (examples/autoscaled-tiny.yaml, with the tiny model): a request
        through the gateway wakes it and is held until its pod answers."""
        body = llmservice(ELASTIC, model, free_port())
        del body["spec"]["replicas"]
        body["spec"]["autoscaling"] = {
            "minReplicas": 0,
            "maxReplicas": 1,
            "targetRequestsPerReplica": 8,
            "scaleDownDelaySeconds": 600,
        }
        self.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)

    def through_gateway(self, model: str, *, timeout: float = 240.0) -> int:
        """One completion through the sandbox's gateway for ``model`` (NAMESPACE/NAME); its HTTP status."""
        url = self.state.get("gateway_url")
        if not url:
            raise WorkloadError("this sandbox runs no gateway")
        body = {"model": model, "prompt": "Hello", "max_tokens": 4}
        return self.request(url.removeprefix("http://"), "/v1/completions", body, timeout=timeout)

    def wait_ready(self, name: str, replicas: int, timeout: float = 180) -> None:
        self.wait(
            lambda: (
                (self.llms(name).get("status") or {}).get("ready") == f"{replicas}/{replicas}"
                and self.llms(name)["status"].get("phase") == "Ready"
            ),
            timeout=timeout,
            what=f"{name} to be Ready with {replicas}/{replicas} replicas",
        )

    def scale(self, name: str, replicas: int) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, name, {"spec": {"replicas": replicas}}
        )

    def serving_addresses(self) -> list[str]:
        return [
            pod_address(pod, container, port)
            for pod in self.pods(SERVING)
            if any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in pod["status"].get("conditions") or []
            )
            for container in pod["spec"]["containers"]
            for port in container.get("ports") or []
        ]

    def request(self, address: str, path: str, body: Mapping[str, Any], *, timeout: float = REQUEST_TIMEOUT_S) -> int:
        """POST one request; its HTTP status (4xx/5xx are answers too)."""
        request = urllib.request.Request(
            f"http://{address}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                answer.read(1 << 20)
                return int(answer.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

    def traffic(
        self, requests: int, *, concurrency: int = 1, max_new_tokens: int = 8, seconds: float | None = None
    ) -> list[int]:
        """``requests`` questions (or as many as fit in ``seconds``) spread over the ready pods, ``concurrency`` at
        a time; their statuses."""
        addresses = self.serving_addresses()
        if not addresses:
            raise WorkloadError(f"no ready pod of {SERVING} to send requests to\n{self.dump()}")
        with urllib.request.urlopen(f"http://{addresses[0]}/v1/models", timeout=REQUEST_TIMEOUT_S) as answer:
            served = str(json.loads(answer.read(1 << 20))["data"][0]["id"])
        statuses: list[int] = []
        lock = threading.Lock()
        counter = iter(range(requests))
        deadline = time.monotonic() + seconds if seconds is not None else math.inf

        def worker() -> None:
            for index in counter:
                if time.monotonic() > deadline:
                    return
                address = addresses[index % len(addresses)]
                path, body = (
                    ("/ask", {"text": f"Question {index}?", "max_new_tokens": max_new_tokens})
                    if index % 2
                    else (
                        "/v1/completions",
                        {"model": served, "prompt": f"Count {index}", "max_tokens": max_new_tokens},
                    )
                )
                status = self.request(address, path, body)
                with lock:
                    statuses.append(status)
                if status == 429:
                    time.sleep(RETRY_AFTER_S)  # a client that honours the server's Retry-After: 1

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=REQUEST_TIMEOUT_S * requests)
        return statuses

    # What Prometheus scrapes ------------------------------------------------------------------------------------

    @property
    def targets_dir(self) -> pathlib.Path:
        return self.layout.root / "prometheus-targets"

    def component_pod(self, manifest: pathlib.Path, name: str, address: str) -> dict[str, Any]:
        """A component the sandbox runs as a local process (the operator, the gateway), as the pod its Deployment
        in deploy/ makes of it (labels, containers, ports), answering at ``address``."""
        deployment = next(d for d in yaml.safe_load_all(manifest.read_text()) if d and d["kind"] == "Deployment")
        template = deployment["spec"]["template"]
        return {
            "metadata": {
                "name": name,
                "namespace": deployment["metadata"]["namespace"],
                "labels": template["metadata"]["labels"],
            },
            "spec": template["spec"],
            "status": {"podIP": address.rsplit(":", 1)[0]},
            "address": address,
        }

    def component_pods(self) -> list[dict[str, Any]]:
        pods = [self.component_pod(OPERATOR_DEPLOYMENT, "kubellm-operator-sandbox", self.state["operator_metrics"])]
        if self.state.get("gateway_url") and GATEWAY_DEPLOYMENT.is_file():
            address = str(self.state["gateway_url"]).removeprefix("http://")
            pods.append(self.component_pod(GATEWAY_DEPLOYMENT, "kubellm-gateway-sandbox", address))
        return pods

    def refresh_targets(self) -> None:
        """Rewrite the scrape targets from the pods the sandbox runs now (and its operator and gateway)."""

        def address(pod: Mapping[str, Any], container: Mapping[str, Any], port: Mapping[str, Any]) -> str:
            return str(pod["address"]) if "address" in pod else pod_address(pod, container, port)

        write_targets(self.monitors, [*self.component_pods(), *self.pods()], address, self.targets_dir)

    def prometheus(self) -> LocalPrometheus:
        """A Prometheus scraping the sandbox every second as the PodMonitors say, evaluating the alert rules."""
        self.refresh_targets()
        jobs = [job for monitor in self.monitors for job in scrape_config(monitor, self.targets_dir)]
        return LocalPrometheus(jobs, rule_groups())

    @contextlib.contextmanager
    def following_pods(self, every_s: float = 1.0) -> Iterator[None]:
        """Keep the scrape targets in step with the pods (a scale, a restart) while the block runs."""
        stop = threading.Event()

        def follow() -> None:
            while not stop.wait(every_s):
                with contextlib.suppress(kubernetes.client.ApiException, OSError):
                    self.refresh_targets()

        thread = threading.Thread(target=follow, name="follow-pods", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=10)


@contextlib.contextmanager
def sandbox(data_dir: pathlib.Path) -> Iterator[SandboxRun]:
    """`kubellm sandbox up` in ``data_dir`` (a free API port), stopped on the way out whatever happens."""
    layout = Layout(data_dir)
    state = cli.up(layout, api_port=free_port(), quiet=True)
    try:
        yield SandboxRun(layout, state)
    finally:
        cli.down(layout)
