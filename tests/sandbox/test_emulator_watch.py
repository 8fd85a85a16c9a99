"""Watches over HTTP: resuming without replay, selectors, timeouts, bookmarks, initial events, cut streams."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from emulator_http import Api

from kubellm_emulator import Emulator, ObjectStore
from kubellm_emulator.auth import ADMIN_TOKEN

CM = "/api/v1/namespaces/default/configmaps"


async def test_watch_resumes_after_a_resource_version_without_replay(api: Any) -> None:
    _, first = await api.post(CM, {"metadata": {"name": "a"}})
    _, second = await api.post(CM, {"metadata": {"name": "b"}})
    await api.patch(f"{CM}/a", {"data": {"k": "v"}})
    await api.delete(f"{CM}/b")
    events = await api.watch(CM, {"resourceVersion": second["metadata"]["resourceVersion"]}, until=2)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("MODIFIED", "a"), ("DELETED", "b")]
    assert events[0]["object"]["kind"] == "ConfigMap"
    assert int(events[1]["object"]["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])

    initial = await api.watch(CM, {}, until=1)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in initial] == [("ADDED", "a")]


async def test_watch_sees_live_changes_and_selector_transitions(api: Any) -> None:
    _, listing = await api.get(CM)
    since = listing["metadata"]["resourceVersion"]

    async def changes() -> None:
        await api.post(CM, {"metadata": {"name": "x", "labels": {"app": "web"}}})
        await api.patch(f"{CM}/x", {"metadata": {"labels": {"app": "db"}}})
        await api.patch(f"{CM}/x", {"metadata": {"labels": {"app": "web"}}})

    watching = asyncio.create_task(api.watch(CM, {"resourceVersion": since, "labelSelector": "app=web"}, until=3))
    await changes()
    events = await watching
    assert [e["type"] for e in events] == ["ADDED", "DELETED", "ADDED"]


async def test_watch_honours_timeout_seconds(api: Any) -> None:
    events = await api.watch(CM, {"timeoutSeconds": "1", "resourceVersion": "1"}, until=100, timeout=5)
    assert events == []


async def test_bookmarks_and_the_initial_events_end(emulator: Emulator, api: Any) -> None:
    await api.post(CM, {"metadata": {"name": "a"}})
    events = await api.watch(
        CM,
        {"sendInitialEvents": "true", "allowWatchBookmarks": "true", "resourceVersionMatch": "NotOlderThan"},
        until=2,
    )
    assert events[0]["type"] == "ADDED"
    assert events[1]["type"] == "BOOKMARK"
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}

    emulator.bookmark_interval = 0.05
    _, listing = await api.get(CM)
    events = await api.watch(
        CM, {"allowWatchBookmarks": "true", "resourceVersion": listing["metadata"]["resourceVersion"]}, until=1
    )
    assert events[0]["type"] == "BOOKMARK"
    assert events[0]["object"]["metadata"]["resourceVersion"] == listing["metadata"]["resourceVersion"]


async def test_cut_watches_ends_open_streams(emulator: Emulator, api: Any) -> None:
    watching = asyncio.create_task(api.watch(CM, {"resourceVersion": "1"}, until=100))
    await api.post(CM, {"metadata": {"name": "before-cut"}})
    while not emulator._open_watches:
        await asyncio.sleep(0.01)
    emulator.cut_watches()
    events = await asyncio.wait_for(watching, timeout=5)
    assert [e["object"]["metadata"]["name"] for e in events] == ["before-cut"]


async def test_a_resource_version_older_than_the_retained_log_is_410_gone() -> None:
    async with (
        Emulator(store=ObjectStore(event_log_limit=2)) as emulator,
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as session,
    ):
        api = Api(session, emulator.api_url)
        for name in ("a", "b", "c"):
            await api.post(CM, {"metadata": {"name": name}})
        events = await api.watch(CM, {"resourceVersion": "1"}, until=1)
    assert events[0]["type"] == "ERROR"
    assert events[0]["object"]["code"] == 410
