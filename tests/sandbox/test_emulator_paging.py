"""Lists and watches as the apiserver serves them: paging over one snapshot, resourceVersionMatch, 410 after
compaction, and Kopf's relist when its watch's resourceVersion is gone."""

from __future__ import annotations

import base64
import json
from typing import Any

import aiohttp
import kopf
from emulator_http import Api

from kubellm_emulator import Emulator, ObjectStore
from kubellm_emulator.auth import ADMIN_TOKEN
from kubellm_emulator.paging import encode_continue
from kubellm_emulator.testing import kopf_operator, wait_until

CONFIGMAPS = "/api/v1/namespaces/default/configmaps"


def config_map(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": name}}


def _seed(emulator: Emulator, count: int) -> None:
    for index in range(count):
        emulator.apply_manifest(config_map(f"cm-{index}", parity="even" if index % 2 == 0 else "odd"))


async def test_pages_come_from_one_snapshot(emulator: Emulator, api: Api) -> None:
    """limit/continue: every page is read at the first page's revision (etcd's consistent paging)."""
    _seed(emulator, 5)
    status, first = await api.get(CONFIGMAPS, params={"limit": "2"})
    assert status == 200
    assert [item["metadata"]["name"] for item in first["items"]] == ["cm-0", "cm-1"]
    assert first["metadata"]["remainingItemCount"] == 3
    token = first["metadata"]["continue"]
    decoded = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    assert decoded == {
        "v": "meta.k8s.io/v1",
        "rv": int(first["metadata"]["resourceVersion"]),
        "start": "default/cm-1\x00",
    }
    # Changes after the first page: none of them shows in the later pages.
    emulator.apply_manifest(config_map("cm-2a"))
    await api.call("DELETE", f"{CONFIGMAPS}/cm-3")
    await api.patch(f"{CONFIGMAPS}/cm-4", {"data": {"k": "changed"}})
    status, second = await api.get(CONFIGMAPS, params={"limit": "2", "continue": token})
    assert [item["metadata"]["name"] for item in second["items"]] == ["cm-2", "cm-3"]
    status, third = await api.get(CONFIGMAPS, params={"limit": "2", "continue": second["metadata"]["continue"]})
    assert [item["metadata"]["name"] for item in third["items"]] == ["cm-4"]
    assert third["items"][0]["data"] == {"k": "cm-4"}
    assert "continue" not in third["metadata"]
    assert third["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    # A fresh list sees the present.
    status, now = await api.get(CONFIGMAPS)
    assert [item["metadata"]["name"] for item in now["items"]] == ["cm-0", "cm-1", "cm-2", "cm-2a", "cm-4"]


async def test_selectors_page_without_a_remaining_count(emulator: Emulator, api: Api) -> None:
    _seed(emulator, 5)
    status, page = await api.get(CONFIGMAPS, params={"limit": "2", "labelSelector": "parity=even"})
    assert status == 200
    assert [item["metadata"]["name"] for item in page["items"]] == ["cm-0", "cm-2"]
    assert "remainingItemCount" not in page["metadata"] and page["metadata"]["continue"]


async def test_resource_version_match(emulator: Emulator, api: Api) -> None:
    _seed(emulator, 2)
    status, before = await api.get(CONFIGMAPS)
    revision = before["metadata"]["resourceVersion"]
    emulator.apply_manifest(config_map("late"))
    status, exact = await api.get(CONFIGMAPS, params={"resourceVersion": revision, "resourceVersionMatch": "Exact"})
    assert status == 200 and [i["metadata"]["name"] for i in exact["items"]] == ["cm-0", "cm-1"]
    status, newer = await api.get(
        CONFIGMAPS, params={"resourceVersion": revision, "resourceVersionMatch": "NotOlderThan"}
    )
    assert [i["metadata"]["name"] for i in newer["items"]] == ["cm-0", "cm-1", "late"]
    status, body = await api.get(CONFIGMAPS, params={"resourceVersionMatch": "Exact"})
    assert (status, body["reason"]) == (422, "Invalid")
    assert body["message"] == (
        'ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden '
        "unless resourceVersion is provided"
    )
    status, body = await api.get(
        CONFIGMAPS, params={"resourceVersion": "99999", "resourceVersionMatch": "NotOlderThan"}
    )
    assert (status, body["reason"]) == (504, "Timeout")
    assert body["message"].startswith("Too large resource version: 99999, current: ")
    status, body = await api.get(CONFIGMAPS, params={"continue": "not-a-token"})
    assert status == 400 and body["message"].startswith("continue key is not valid")


async def test_compacted_revisions_are_410_gone() -> None:
    """A bounded event history: a continue token or an exact list older than it is 410 Expired."""
    async with Emulator(store=ObjectStore(event_log_limit=5)) as emulator:
        _seed(emulator, 3)
        configmaps = emulator.store.type_for("", "v1", "configmaps")
        page = emulator.store.snapshot(configmaps, "default", emulator.store.resource_version)
        assert len(page) == 3
        old = emulator.store.resource_version
        for index in range(10):
            emulator.apply_manifest(config_map(f"more-{index}"))
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as session:
            api = Api(session, emulator.api_url)
            status, body = await api.get(
                CONFIGMAPS, params={"limit": "1", "continue": encode_continue(old, ("default", "cm-0"))}
            )
            assert (status, body["reason"]) == (410, "Expired")
            assert body["message"].startswith("The provided continue parameter is too old")
            status, body = await api.get(
                CONFIGMAPS, params={"resourceVersion": str(old), "resourceVersionMatch": "Exact"}
            )
            assert (status, body["reason"]) == (410, "Expired")
            assert body["message"].startswith(f"too old resource version: {old} (")


async def test_kopf_relists_after_410_and_keeps_handling() -> None:
    """Kopf's watch resumes from its last resourceVersion; once that is compacted it gets the ERROR 410 event,
    lists again and goes on: a change made after the compaction is still handled."""
    registry = kopf.OperatorRegistry()
    seen: list[str] = []

    @kopf.on.event("", "v1", "configmaps", registry=registry)
    def on_configmap(event: dict[str, Any], name: str, **_: Any) -> None:
        seen.append(f"{event['type']}:{name}")

    async with (
        Emulator(store=ObjectStore(event_log_limit=20)) as emulator,
        kopf_operator(emulator, registry=registry, namespaces=("default",)),
    ):
        emulator.apply_manifest(config_map("first"))
        await wait_until(lambda: "ADDED:first" in seen or "None:first" in seen, timeout=10, what="the first event")
        marker = emulator.request_marker()
        # Kopf's watch is cut while 40 writes elsewhere push its resourceVersion out of the 20-event history.
        emulator.cut_watches()
        for index in range(40):
            emulator.apply_manifest(
                {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"s{index}"}, "stringData": {"a": "b"}}
            )
        emulator.apply_manifest(config_map("after-compaction"))
        await wait_until(
            lambda: any(entry.endswith(":after-compaction") for entry in seen),
            timeout=20,
            what="Kopf to handle a ConfigMap created after its resourceVersion was compacted",
        )
        lists = [
            r
            for r in emulator.requests("GET", "/api/v1/namespaces/default/configmaps", since=marker)
            if r.query.get("watch") != "true"
        ]
        assert lists, "Kopf listed again after the 410"
