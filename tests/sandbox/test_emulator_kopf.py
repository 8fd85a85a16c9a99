"""Real Kopf against the emulator over HTTP: each handler runs exactly once per change; children are collected."""

from __future__ import annotations

import asyncio
import collections
import json
import threading
from typing import Any

import kopf
import kubernetes
import pytest

from kubellm_emulator import Emulator
from kubellm_emulator.testing import kopf_operator, kubernetes_configuration, wait_until

GROUP, VERSION, PLURAL = "example.dev", "v1", "widgets"


# Kopf stores progress in annotations named after handler ids (`widget_registry.<locals>.created` becomes
# `kopf.zalando.org/widget_registry._locals_.created`); a leading underscore is no qualified name and is refused.
def widget_registry(calls: collections.Counter[str], lock: threading.Lock) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    def count(name: str) -> None:
        with lock:
            calls[name] += 1

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    def created(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[str, str]:
        count("create")
        child = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{name}-config"},
            "data": {"size": body["spec"]["size"]},
        }
        kopf.adopt(child, owner=body)
        kubernetes.client.CoreV1Api().create_namespaced_config_map(namespace, child)
        return {"child": child["metadata"]["name"]}

    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
    def updated(**_: Any) -> None:
        count("update")

    @kopf.on.field(GROUP, VERSION, PLURAL, field="spec.size", registry=registry)
    def size_changed(old: Any, new: Any, **_: Any) -> None:
        if old is not None:
            count(f"size:{old}->{new}")

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    def deleted(**_: Any) -> None:
        count("delete")

    return registry


async def test_kopf_handlers_run_exactly_once_per_change(emulator: Emulator, widget_crd: dict[str, Any]) -> None:
    emulator.apply_manifest(widget_crd)
    kubernetes_configuration(emulator)
    custom = kubernetes.client.CustomObjectsApi()
    core = kubernetes.client.CoreV1Api()
    calls: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def seen(name: str) -> bool:
        with lock:
            return calls[name] >= 1

    def handled_size() -> str | None:
        """The spec.size Kopf recorded as handled: it writes this only after every handler of a change returned."""
        widget = emulator.store.get(emulator.store.type_for(GROUP, VERSION, PLURAL), "default", "w1")
        annotations = widget["metadata"].get("annotations") or {}
        handled = annotations.get("kopf.zalando.org/last-handled-configuration")
        return json.loads(handled)["spec"]["size"] if handled else None

    async with kopf_operator(emulator, registry=widget_registry(calls, lock)):
        await asyncio.to_thread(
            custom.create_namespaced_custom_object,
            GROUP,
            VERSION,
            "default",
            PLURAL,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Widget",
                "metadata": {"name": "w1"},
                "spec": {"size": "small"},
            },
        )
        # The handlers count when they are entered, so wait for Kopf to record each change as handled (the
        # create handler has then written its child) before reading results or making the next change.
        await wait_until(lambda: handled_size() == "small", what="Kopf to record the created widget as handled")
        child = await asyncio.to_thread(core.read_namespaced_config_map, "w1-config", "default")
        assert child.metadata.owner_references[0].name == "w1"

        # Kopf's own finalizer and progress patches must not look like changes to it.
        await asyncio.to_thread(
            custom.patch_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, "w1", {"spec": {"size": "large"}}
        )
        await wait_until(lambda: handled_size() == "large", what="Kopf to record the update as handled")

        await asyncio.to_thread(custom.delete_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, "w1")
        await wait_until(lambda: seen("delete"), what="the delete handler")

        def gone() -> bool:
            names = [key[3] for key, _ in emulator.store.all_objects()]
            return "w1" not in names and "w1-config" not in names

        await wait_until(gone, what="the widget and its adopted ConfigMap to be deleted")

    assert calls == {"create": 1, "update": 1, "size:small->large": 1, "delete": 1}


@pytest.fixture(autouse=True)
def _no_kubeconfig_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Kopf must log in only through the emulator's login handler, never via a developer's kubeconfig.
    monkeypatch.delenv("KUBECONFIG", raising=False)
