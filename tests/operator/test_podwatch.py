"""The storage count's slim pod watch (podwatch.py) against the emulator, over HTTP, as the operator's
ServiceAccount: a paged list, then watch events, a relist after 410 Expired, and a re-opened watch after a cut."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Mapping
from typing import Any

import kubernetes.client
import pytest
from operator_support import Kube

from kubellm_emulator.testing import wait_until
from kubellm_operator.cluster import Cluster
from kubellm_operator.podwatch import PAGE_SIZE, PodTally, PodWatch

GI = 1 << 30


def pod(name: str, namespace: str = "tenant-a", node: str | None = "node-1", request: str = "1Gi") -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"ephemeral-storage": request}}}]
    }
    if node is not None:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


class Watching:
    """A PodWatch of one scope in its thread, and every index the tally published."""

    def __init__(self, kube: Kube, scope: str | None, **options: Any) -> None:
        config = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(str(kube.operator_kubeconfig), client_configuration=config)
        self.cluster = Cluster(config, timeout=5.0)
        self.published: list[dict[str, list[tuple[str, int]]]] = []
        self.tally = PodTally([scope], lambda index: self.published.append({k: sorted(v) for k, v in index.items()}))
        self.watch = PodWatch(self.cluster, self.tally, scope, watched=lambda: None, **options)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.watch.run, args=(self.stop,), daemon=True)

    def totals(self) -> dict[str, int]:
        return {node: sum(request for _, request in uses) for node, uses in self.tally.index().items()}

    def close(self) -> None:
        self.stop.set()
        self.watch.close()
        self.thread.join(timeout=10)
        self.cluster.close()
        assert not self.thread.is_alive()


@pytest.fixture
async def tenant(kube: Kube) -> Kube:
    for namespace in ("tenant-a", "tenant-b"):
        kube.emulator.store.create(
            kube.emulator.store.type_for("", "v1", "namespaces"), None, {"metadata": {"name": namespace}}
        )
    return kube


@pytest.fixture
async def watching(tenant: Kube) -> AsyncIterator[Watching]:
    created = Watching(tenant, None)
    yield created
    await asyncio.to_thread(created.close)


def store_pod(kube: Kube, body: Mapping[str, Any]) -> dict[str, Any]:
    return kube.emulator.store.create(kube._type("Pod"), body["metadata"]["namespace"], dict(body))


async def test_lists_in_pages_then_follows_binds_finishes_and_deletes(tenant: Kube, watching: Watching) -> None:
    for i in range(PAGE_SIZE + 20):
        store_pod(tenant, pod(f"p{i}", node=f"node-{i % 3}"))
    store_pod(tenant, pod("unbound", node=None))
    marker = tenant.emulator.request_marker()
    watching.thread.start()
    await wait_until(watching.tally.synced.is_set, timeout=20, what="the first listing")
    lists = [r for r in tenant.emulator.requests(since=marker) if r.method == "GET" and "watch" not in r.query]
    assert [r.query.get("limit") for r in lists] == [str(PAGE_SIZE)] * 2
    assert "continue" in lists[1].query
    assert watching.totals() == {"node-0": 174 * GI, "node-1": 173 * GI, "node-2": 173 * GI}

    store_pod(tenant, pod("late", namespace="tenant-b", node="node-9", request="5Gi"))
    await wait_until(lambda: watching.totals().get("node-9") == 5 * GI, what="the bound pod counted")

    # A status update that changes no request (the most frequent event of a busy cluster) publishes nothing.
    published = len(watching.published)
    pods = tenant._type("Pod")
    late = tenant.emulator.store.get(pods, "tenant-b", "late")
    tenant.emulator.store.replace(
        pods, "tenant-b", "late", {**late, "status": {"phase": "Running"}}, subresource="status"
    )
    store_pod(tenant, pod("marker", node="node-8"))
    await wait_until(lambda: "node-8" in watching.totals(), what="the marker pod counted")
    assert len(watching.published) == published + 1

    late = tenant.emulator.store.get(pods, "tenant-b", "late")
    tenant.emulator.store.replace(
        pods, "tenant-b", "late", {**late, "status": {"phase": "Succeeded"}}, subresource="status"
    )
    await wait_until(lambda: "node-9" not in watching.totals(), what="the finished pod no longer counted")
    tenant.emulator.store.delete(pods, "tenant-a", "p0")
    await wait_until(lambda: watching.totals()["node-0"] == 173 * GI, what="the deleted pod no longer counted")


async def test_a_page_over_its_byte_cap_is_asked_again_shorter(tenant: Kube) -> None:
    """Pods are tenant-written and can be large: a page over the cap is read no further and asked again from the
    same place, a tenth as long, down to one pod a page; every pod is still counted once."""
    for i in range(12):
        big = pod(f"big{i}", node=f"node-{i % 2}")
        big["metadata"]["annotations"] = {"filler": "x" * 20_000}
        store_pod(tenant, big)
    watching = Watching(tenant, None, max_page_bytes=120_000)  # five of these pods fit, twelve do not
    marker = tenant.emulator.request_marker()
    try:
        watching.thread.start()
        await wait_until(watching.tally.synced.is_set, timeout=20, what="the first listing")
        lists = [r for r in tenant.emulator.requests(since=marker) if r.method == "GET" and "watch" not in r.query]
        assert [r.query.get("limit") for r in lists] == [str(PAGE_SIZE), "50", "5", "5", "5"]
        assert "continue" not in lists[2].query and "continue" in lists[3].query
        assert watching.totals() == {"node-0": 6 * GI, "node-1": 6 * GI}
    finally:
        await asyncio.to_thread(watching.close)


async def test_relists_when_its_revision_expired_and_reopens_a_cut_watch(tenant: Kube, watching: Watching) -> None:
    store_pod(tenant, pod("first"))
    watching.thread.start()
    await wait_until(watching.tally.synced.is_set, timeout=20, what="the first listing")

    tenant.emulator.cut_watches()  # an apiserver restart: the watch is reopened from the last revision
    store_pod(tenant, pod("after-cut", node="node-2"))
    await wait_until(lambda: "node-2" in watching.totals(), what="the pod created after the cut")

    # Compaction: the watch's revision leaves the event log; the next watch gets 410 Expired and lists again.
    # Compaction past the watch's revision (a write it does not watch comes first); no await in between, so no
    # bookmark can move the watch's revision.
    marker = tenant.emulator.request_marker()
    tenant.emulator.store.create(
        tenant.emulator.store.type_for("", "v1", "namespaces"), None, {"metadata": {"name": "x"}}
    )
    tenant.emulator.store.compact()
    tenant.emulator.cut_watches()
    store_pod(tenant, pod("after-compaction", node="node-3"))
    await wait_until(lambda: "node-3" in watching.totals(), what="the pod created after the compaction")
    later = tenant.emulator.requests(since=marker)
    assert any(r.method == "GET" and "watch" not in r.query and r.query.get("limit") for r in later), later
    assert watching.tally.health(0) is None


async def test_a_forbidden_list_is_retried_and_reported_by_health(tenant: Kube) -> None:
    watching = Watching(tenant, "tenant-a")
    store_pod(tenant, pod("mine"))
    bindings = tenant.emulator.store.type_for("rbac.authorization.k8s.io", "v1", "clusterrolebindings")
    binding = tenant.emulator.store.get(bindings, None, "kubellm-operator")
    tenant.emulator.store.delete(bindings, None, "kubellm-operator")
    try:
        watching.thread.start()
        reason = await wait_until(lambda: watching.tally.health(0), timeout=10, what="the failure reported")
        assert "namespace tenant-a" in reason and "403" in reason
        assert not watching.tally.synced.is_set()
        binding["metadata"] = {"name": "kubellm-operator"}
        tenant.emulator.store.create(bindings, None, binding)
        await wait_until(watching.tally.synced.is_set, timeout=20, what="the listing after the retry")
        assert watching.totals() == {"node-1": GI}
        assert watching.tally.health(0) is None
    finally:
        await asyncio.to_thread(watching.close)
