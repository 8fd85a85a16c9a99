"""What the gateway serves: LLMServices and their pods, from watches, as :class:`~kubellm_gateway.routing.Backend`.

:func:`backends_from` is pure (objects in, backends out). :class:`Catalog` keeps the objects current with a list
and watch per resource and per served namespace, as any cluster client does, and wakes the requests waiting on a
change (a pod turning Ready, a load progressing). Pods are reached at their podIP and the inference container's
port, as in a cluster; every LLMService field and pod field is untrusted input, parsed with bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import httpx
from pydantic import ValidationError

from kubellm.contract import DEFAULT_PORT, env_name
from kubellm_gateway.kube import Kube, KubeError
from kubellm_gateway.routing import Backend, Pod
from kubellm_operator.api import GROUP, PLURAL, VERSION, LLMService
from kubellm_operator.render import CONTAINER_NAME, SELECTOR_LABEL
from kubellm_operator.status import DEGRADED, INSUFFICIENT_STORAGE, STORAGE_READY

logger = logging.getLogger("kubellm.gateway")

SERVED_MODEL_ENV = env_name("served_model_name")
Key = tuple[str, str]


def _condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    for item in (obj.get("status") or {}).get("conditions") or []:
        if isinstance(item, dict) and item.get("type") == kind:
            return item
    return {}


def _is_ready(obj: Mapping[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _pod(obj: Mapping[str, Any]) -> Pod | None:
    metadata, status = obj.get("metadata") or {}, obj.get("status") or {}
    ip = status.get("podIP")
    if not isinstance(ip, str) or not ip or metadata.get("deletionTimestamp"):
        return None
    containers = (obj.get("spec") or {}).get("containers") or []
    container = next((c for c in containers if isinstance(c, dict) and c.get("name") == CONTAINER_NAME), None)
    ports = (container or {}).get("ports") or [{}]
    port = ports[0].get("containerPort") if isinstance(ports[0], dict) else None
    port = port if isinstance(port, int) and 0 < port < 65536 else DEFAULT_PORT
    ready = _is_ready(obj)
    host = f"[{ip}]" if ":" in ip else ip
    return Pod(name=str(metadata.get("name", "")), address=f"{host}:{port}", ready=ready)


def _refusal(obj: Mapping[str, Any]) -> str | None:
    degraded = _condition(obj, DEGRADED)
    if degraded.get("status") == "True":
        return f"Degraded ({degraded.get('reason')}): {str(degraded.get('message', ''))[:500]}"
    storage = _condition(obj, STORAGE_READY)
    if storage.get("status") == "False" and storage.get("reason") == INSUFFICIENT_STORAGE:
        return f"no node fits its storage: {str(storage.get('message', ''))[:500]}"
    return None


def backend_of(obj: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> Backend | None:
    """The backend of one LLMService object, or None when it is not on the gateway (opted out, or unreadable)."""
    metadata = obj.get("metadata") or {}
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if not isinstance(namespace, str) or not isinstance(name, str):
        return None
    try:
        llms = LLMService.from_object({k: v for k, v in obj.items() if k != "status"})
    except ValidationError:
        return Backend(namespace, name, "", refusal="its spec is invalid (kubectl describe llms shows why)")
    spec = llms.spec
    if not spec.gateway.enabled:
        return None
    served = next((v.value for v in spec.env if v.name == SERVED_MODEL_ENV and v.value), spec.model.name)
    pods = list(pods)
    found = tuple(sorted((p for p in (_pod(o) for o in pods) if p is not None), key=lambda p: p.name))
    # Starting: not Ready and not leaving, with an address yet or not (a pod just created has none).
    starting = any(not _is_ready(o) and not (o.get("metadata") or {}).get("deletionTimestamp") for o in pods)
    status = obj.get("status") or {}
    loading = (status.get("loading") or {}).get("message")
    desired = (status.get("autoscaling") or {}).get("desiredReplicas")
    ready = sum(1 for p in found if p.ready)
    return Backend(
        namespace=namespace,
        name=name,
        served_model=served,
        pods=found,
        can_wake=spec.autoscaling is not None and spec.autoscaling.min_replicas == 0,
        starting=starting,
        startup_budget_s=spec.probes.startup.budget_seconds,
        refusal=_refusal(obj),
        progress=str(loading)[:300] if loading else None,
        per_pod=spec.autoscaling.target_requests_per_replica if spec.autoscaling is not None else None,
        growing=isinstance(desired, int) and desired > ready,
    )


def backends_from(llmservices: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]]) -> dict[str, Backend]:
    """Every served backend, keyed by NAMESPACE/NAME."""
    by_owner: dict[Key, list[Mapping[str, Any]]] = {}
    for pod in pods:
        metadata = pod.get("metadata") or {}
        owner = (metadata.get("labels") or {}).get(SELECTOR_LABEL)
        if isinstance(owner, str):
            by_owner.setdefault((str(metadata.get("namespace")), owner), []).append(pod)
    found: dict[str, Backend] = {}
    for obj in llmservices:
        metadata = obj.get("metadata") or {}
        key = (str(metadata.get("namespace")), str(metadata.get("name")))
        backend = backend_of(obj, by_owner.get(key, []))
        if backend is not None:
            found[backend.id] = backend
    return found


class Catalog:
    """The watched LLMServices and pods of the served namespaces, and the backends they make."""

    def __init__(self, kube: Kube, namespaces: list[str], *, watch_timeout_s: int) -> None:
        self._kube = kube
        self._namespaces = namespaces
        self._watch_timeout_s = watch_timeout_s
        self._objects: dict[str, dict[str, dict[str, Any]]] = {}  # list path -> uid -> object
        self._backends: dict[str, Backend] = {}
        self._synced: set[str] = set()
        self._changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []

    def _paths(self) -> list[tuple[str, dict[str, str]]]:
        scopes = [""] if self._namespaces == ["*"] else [f"/namespaces/{ns}" for ns in self._namespaces]
        paths: list[tuple[str, dict[str, str]]] = []
        for scope in scopes:
            paths.append((f"/apis/{GROUP}/{VERSION}{scope}/{PLURAL}", {}))
            paths.append((f"/api/v1{scope}/pods", {"labelSelector": SELECTOR_LABEL}))
        return paths

    @property
    def synced(self) -> bool:
        return len(self._synced) == len(self._paths())

    def backends(self) -> dict[str, Backend]:
        return self._backends

    def backend(self, key: str) -> Backend | None:
        return self._backends.get(key)

    async def wait_change(self, timeout_s: float) -> None:
        """Return at the next change of the backends, or after ``timeout_s``."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout_s)

    async def _rebuild(self) -> None:
        services = [o for path, objs in self._objects.items() if path.endswith(PLURAL) for o in objs.values()]
        pods = [o for path, objs in self._objects.items() if path.endswith("/pods") for o in objs.values()]
        self._backends = backends_from(services, pods)
        async with self._changed:
            self._changed.notify_all()

    def start(self) -> None:
        for path, params in self._paths():
            self._tasks.append(asyncio.create_task(self._reflect(path, params), name=f"watch {path}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _reflect(self, path: str, params: dict[str, str]) -> None:
        """List, then watch from the list's version; on any failure, back off (bounded) and list again."""
        backoff = 0.5
        while True:
            try:
                items, version = await self._kube.list(path, params)
                self._objects[path] = {_uid(o): o for o in items}
                self._synced.add(path)
                await self._rebuild()
                async for event in self._kube.watch(path, version, self._watch_timeout_s, params):
                    kind, obj = event.get("type"), event.get("object")
                    if kind == "ERROR" or not isinstance(obj, dict):
                        break  # 410 Gone and the like: list again
                    if kind == "BOOKMARK":
                        continue
                    if kind == "DELETED":
                        self._objects[path].pop(_uid(obj), None)
                    else:
                        self._objects[path][_uid(obj)] = obj
                    await self._rebuild()
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except (httpx.HTTPError, KubeError, ValueError) as exc:
                logger.warning("watching %s: %s; listing again in %.1fs", path, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)


def _uid(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("uid") or f"{metadata.get('namespace')}/{metadata.get('name')}")
