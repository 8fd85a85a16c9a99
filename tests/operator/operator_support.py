"""Helpers for the operator's tests on the API emulator: the operator runs for real, in-process, over HTTP.

The operator's Kopf handlers are synchronous and its clients talk HTTP to the emulator, which is served by the
test's own event loop; so the test body only awaits (never blocks), user actions go through the kubernetes
client in a thread (`kube`), and reads for polling come straight from the emulator's store (cheap, in-process).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import shutil
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import kubernetes.client
import pytest
import yaml

from kubellm_emulator import WRITE_METHODS, ApiError, Emulator
from kubellm_emulator.testing import kubernetes_configuration, wait_until
from kubellm_operator.api import GROUP, PLURAL, VERSION
from kubellm_operator.config import OperatorSettings
from kubellm_operator.main import run
from kubellm_operator.metrics import OperatorMetrics

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "kubellm.dev_llmservices.yaml"
# What `kubectl apply -k deploy/` installs for the operator's identity; the operator under test runs as it.
OPERATOR_IDENTITY = [ROOT / "deploy" / name for name in ("namespace.yaml", "serviceaccount.yaml", "rbac.yaml")]
# The opt-in kubelet-summary RBAC (deploy/components/kubelet-stats): granted in these tests, so the summaries count;
# a test of the fallback removes its binding.
KUBELET_STATS = ROOT / "deploy" / "components" / "kubelet-stats" / "rbac.yaml"
OPERATOR_SERVICE_ACCOUNT = ("kubellm-system", "kubellm-operator")
LEASES_PATH = "/apis/coordination.k8s.io/v1/namespaces/kubellm-system/leases"


def llmservice(name: str = "tiny", namespace: str = "default", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": {"name": "embedded:smollm2-135m-instruct"}, "storage": {"cacheSize": "1Gi"}}
    body.update(spec)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LLMService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


class Kube:
    """The test's view of the emulator: reads from the store, writes over HTTP like a user would."""

    def __init__(self, emulator: Emulator, kubeconfig: pathlib.Path, *, operator_kubeconfig: pathlib.Path) -> None:
        self.emulator = emulator
        self.kubeconfig = kubeconfig  # the cluster admin's: the test's own kubectl calls
        self.operator_kubeconfig = operator_kubeconfig  # the operator's ServiceAccount (deploy/rbac.yaml only)
        self.client = kubernetes.client.ApiClient(kubernetes_configuration(emulator, set_default=False))
        self.custom = kubernetes.client.CustomObjectsApi(self.client)
        self.apps = kubernetes.client.AppsV1Api(self.client)
        self.core = kubernetes.client.CoreV1Api(self.client)

    # Reads (in-process) -----------------------------------------------------------------------------------

    def _type(self, kind: str) -> Any:
        group, version, plural = {
            "LLMService": (GROUP, VERSION, PLURAL),
            "Deployment": ("apps", "v1", "deployments"),
            "Service": ("", "v1", "services"),
            "Pod": ("", "v1", "pods"),
            "Event": ("", "v1", "events"),
            "Node": ("", "v1", "nodes"),
            "Lease": ("coordination.k8s.io", "v1", "leases"),
        }[kind]
        return self.emulator.store.type_for(group, version, plural)

    def get(self, kind: str, name: str, namespace: str | None = "default") -> dict[str, Any] | None:
        try:
            return self.emulator.store.get(self._type(kind), namespace if kind != "Node" else None, name)
        except ApiError as error:
            if error.code == 404:
                return None
            raise

    def list(self, kind: str, namespace: str | None = "default") -> list[dict[str, Any]]:
        items, _ = self.emulator.store.list_objects(self._type(kind), namespace)
        return items

    def events(self, name: str, reason: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.list("Event")
            if e.get("involvedObject", {}).get("name") == name
            and e.get("involvedObject", {}).get("kind") == "LLMService"
            and (reason is None or e.get("reason") == reason)
        ]

    def condition(self, name: str, kind: str) -> dict[str, Any]:
        obj = self.get("LLMService", name) or {}
        for condition in (obj.get("status") or {}).get("conditions") or []:
            if condition["type"] == kind:
                return dict(condition)
        return {}

    def writes(self, since: int = 0) -> list[tuple[str, str]]:
        """The write requests the emulator has served (after the marker `since`): (method, path); the leader
        election's Lease renewals (one every 2 s, whatever the LLMServices do) are not counted."""
        return [
            (r.method, r.path)
            for r in self.emulator.requests(WRITE_METHODS, since=since)
            if not r.path.startswith(LEASES_PATH)
        ]

    # Writes (over HTTP, in a thread so the loop keeps serving) --------------------------------------------

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        namespace = obj["metadata"].get("namespace", "default")
        created = await asyncio.to_thread(
            self.custom.create_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, obj
        )
        return dict(created)

    async def patch_llmservice(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        patched = await asyncio.to_thread(
            self.custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            "default",
            PLURAL,
            name,
            patch,
            _content_type="application/merge-patch+json",
        )
        return dict(patched)

    async def delete(self, kind: str, name: str) -> None:
        call: Callable[[], Any] = {
            "LLMService": lambda: self.custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, name),
            "Deployment": lambda: self.apps.delete_namespaced_deployment(name, "default"),
            "Service": lambda: self.core.delete_namespaced_service(name, "default"),
        }[kind]
        await asyncio.to_thread(call)

    def close(self) -> None:
        self.client.close()

    # Waiting ----------------------------------------------------------------------------------------------

    def dump(self) -> str:
        """Everything that explains a failed wait: LLMServices, children, pods, events, nodes."""
        parts = []
        for kind in ("LLMService", "Deployment", "Service", "Pod", "Event"):
            for obj in self.list(kind, None):
                shown = {k: obj.get(k) for k in ("metadata", "spec", "status") if k in obj}
                if kind == "Event":
                    shown = {k: obj.get(k) for k in ("reason", "message", "involvedObject", "type")}
                parts.append(f"--- {kind} {obj['metadata']['name']}\n{yaml.safe_dump(shown, sort_keys=False)}")
        for node in self.list("Node", None):
            parts.append(f"--- Node {node['metadata']['name']}: {json.dumps(node.get('spec'))}")
        return "\n".join(parts)

    async def wait(self, predicate: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
        """Poll ``predicate`` until truthy; on timeout fail with the cluster state dumped."""
        try:
            return await wait_until(predicate, timeout=timeout, what=what, interval=0.05)
        except TimeoutError as error:
            pytest.fail(f"{error}\n{self.dump()}")

    async def quiet(self, seconds: float = 1.0) -> list[tuple[str, str]]:
        """The writes made during ``seconds`` of letting everything run."""
        marker = self.emulator.request_marker()
        await asyncio.sleep(seconds)
        return self.writes(since=marker)


async def kubectl(kube: Kube, *args: str, timeout: float = 30.0) -> str | None:
    """Run kubectl against the emulator without blocking the loop that serves it; None when there is no kubectl."""
    binary = shutil.which("kubectl")
    if binary is None:
        return None
    cache = kube.kubeconfig.parent / "kubectl-cache"  # kubectl caches discovery per server: one cache per test
    process = await asyncio.create_subprocess_exec(
        binary,
        f"--kubeconfig={kube.kubeconfig}",
        f"--cache-dir={cache}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"kubectl {' '.join(args)} did not finish within {timeout}s")
    assert process.returncode == 0, f"kubectl {' '.join(args)}: {err.decode()}"
    return out.decode()


@contextlib.asynccontextmanager
async def operator_running(kube: Kube, *, wait_ready: bool = True, **overrides: Any) -> AsyncIterator[OperatorMetrics]:
    """The operator, exactly as `kubellm operator` runs it, on its own event loop in a thread, for the block;
    ``wait_ready=False`` enters the block at once (an operator that waits for its CRD or its Lease).

    Its own loop (as in its own process) keeps Kopf's shutdown from waiting on, or cancelling, the tasks of
    the test's loop, which serves the emulator.
    """
    settings = OperatorSettings(
        **({"kubeconfig": str(kube.operator_kubeconfig), "health_port": 0, "summary_refresh_s": 0.2} | overrides)
    )
    metrics = OperatorMetrics()
    ready = threading.Event()
    stopping: dict[str, Any] = {}
    failure: list[BaseException] = []

    async def operate() -> None:
        stop, started = asyncio.Event(), asyncio.Event()
        stopping["loop"], stopping["flag"] = asyncio.get_running_loop(), stop
        watcher = asyncio.create_task(started.wait())
        watcher.add_done_callback(lambda _: ready.set())
        await run(settings, stop_flag=stop, ready_flag=started, metrics=metrics)

    def thread_main() -> None:
        try:
            asyncio.run(operate())
        except BaseException as exc:
            failure.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=thread_main, name="kubellm-operator-under-test", daemon=True)
    thread.start()
    try:
        if wait_ready and not await asyncio.to_thread(ready.wait, 20):
            pytest.fail("the operator was not ready within 20s")
        if failure or (wait_ready and not thread.is_alive()):
            pytest.fail(f"the operator exited during its start: {failure!r}")
        yield metrics
    finally:
        if "loop" in stopping and not stopping["loop"].is_closed():
            stopping["loop"].call_soon_threadsafe(stopping["flag"].set)
        await asyncio.to_thread(thread.join, 20)
        if thread.is_alive():
            pytest.fail("the operator did not stop within 20s")
