"""The typed `kubernetes` client parses what the emulator serves: seeded Nodes, and each kind's DELETE answer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import kubernetes.client
import pytest

from kubellm_emulator import Emulator
from kubellm_emulator.testing import kubernetes_configuration

REQUIRED_NODE_INFO = (
    "machine_id",
    "system_uuid",
    "boot_id",
    "kernel_version",
    "os_image",
    "container_runtime_version",
    "kubelet_version",
    "kube_proxy_version",
    "operating_system",
    "architecture",
)


@pytest.fixture
def client(emulator: Emulator) -> Iterator[kubernetes.client.ApiClient]:
    with kubernetes.client.ApiClient(kubernetes_configuration(emulator, set_default=False)) as api_client:
        yield api_client


async def test_seeded_nodes_parse_as_typed_nodes(emulator: Emulator, client: kubernetes.client.ApiClient) -> None:
    core = kubernetes.client.CoreV1Api(client)
    emulator.seed_node("gpu-1", gpus=1, taints=[{"key": "gpu", "effect": "NoSchedule"}], disk_pressure=True)
    emulator.seed_node("cpu-1")

    node = await asyncio.to_thread(core.read_node, "gpu-1")
    info = node.status.node_info
    assert all(getattr(info, field) for field in REQUIRED_NODE_INFO), info
    assert info.kubelet_version == "v1.32.0" and info.architecture == node.metadata.labels["kubernetes.io/arch"]
    assert node.status.daemon_endpoints.kubelet_endpoint.port == 10250
    assert {address.type for address in node.status.addresses} == {"InternalIP", "Hostname"}
    assert node.spec.taints[0].key == "gpu" and node.status.capacity["nvidia.com/gpu"] == "1"

    listing = await asyncio.to_thread(core.list_node)
    by_name = {item.metadata.name: item for item in listing.items}
    assert sorted(by_name) == ["cpu-1", "gpu-1"]
    assert by_name["cpu-1"].status.node_info.system_uuid != info.system_uuid, "each node has its own identity"
    internal = {
        name: next(a.address for a in item.status.addresses if a.type == "InternalIP") for name, item in by_name.items()
    }
    assert internal["cpu-1"] != internal["gpu-1"]

    # Seeding the same node again is a no-op: its identity (bootID included) derives from its name.
    emulator.seed_node("gpu-1", gpus=1, taints=[{"key": "gpu", "effect": "NoSchedule"}], disk_pressure=True)
    again = await asyncio.to_thread(core.read_node, "gpu-1")
    assert again.status.node_info == info


async def test_delete_answers_what_the_apiserver_answers(
    emulator: Emulator, client: kubernetes.client.ApiClient, widget_crd: dict[str, Any]
) -> None:
    core, apps = kubernetes.client.CoreV1Api(client), kubernetes.client.AppsV1Api(client)
    custom = kubernetes.client.CustomObjectsApi(client)
    emulator.apply_manifest(widget_crd)
    meta = {"name": "x"}
    pod_spec = {"containers": [{"name": "main", "image": "busybox"}]}
    await asyncio.to_thread(
        core.create_namespaced_service, "default", {"metadata": meta, "spec": {"ports": [{"port": 80}]}}
    )
    await asyncio.to_thread(core.create_namespaced_pod, "default", {"metadata": meta, "spec": pod_spec})
    await asyncio.to_thread(core.create_namespaced_config_map, "default", {"metadata": meta})
    selector = {"matchLabels": {"app": "x"}}
    template = {"metadata": {"labels": {"app": "x"}}, "spec": pod_spec}
    await asyncio.to_thread(
        apps.create_namespaced_deployment,
        "default",
        {"metadata": meta, "spec": {"selector": selector, "template": template}},
    )
    widget = {"apiVersion": "example.dev/v1", "kind": "Widget", "spec": {"size": "small"}}
    await asyncio.to_thread(
        custom.create_namespaced_custom_object, "example.dev", "v1", "default", "widgets", {**widget, "metadata": meta}
    )
    held = {"name": "held", "finalizers": ["example.dev/hold"]}
    await asyncio.to_thread(
        custom.create_namespaced_custom_object, "example.dev", "v1", "default", "widgets", {**widget, "metadata": held}
    )

    # Services and Pods answer the deleted object (typed); most kinds, custom resources included, a Status.
    service = await asyncio.to_thread(core.delete_namespaced_service, "x", "default")
    assert isinstance(service, kubernetes.client.V1Service) and service.metadata.name == "x"
    pod = await asyncio.to_thread(core.delete_namespaced_pod, "x", "default")
    assert isinstance(pod, kubernetes.client.V1Pod) and pod.metadata.name == "x"
    for status in (
        await asyncio.to_thread(core.delete_namespaced_config_map, "x", "default"),
        await asyncio.to_thread(apps.delete_namespaced_deployment, "x", "default"),
        await asyncio.to_thread(custom.delete_namespaced_custom_object, "example.dev", "v1", "default", "widgets", "x"),
    ):
        assert status["kind"] == "Status" and status["status"] == "Success" and status["details"]["name"] == "x"
    # An object that waits on finalizers is answered as it now is, with its deletionTimestamp.
    pending = await asyncio.to_thread(
        custom.delete_namespaced_custom_object, "example.dev", "v1", "default", "widgets", "held"
    )
    assert pending["kind"] == "Widget" and pending["metadata"]["deletionTimestamp"]
