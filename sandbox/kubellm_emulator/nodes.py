"""Seeded Nodes and their kubelet stats (`/api/v1/nodes/{name}/proxy/stats/summary`), as tests describe them."""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from kubellm.quantity import parse_quantity
from kubellm.timefmt import now_rfc3339
from kubellm_emulator.resources import KUBERNETES_VERSION

JsonObject = dict[str, Any]
KUBELET_PORT = 10250


def _condition(kind: str, healthy: bool, *, ready_type: bool = False) -> JsonObject:
    status = "True" if healthy == ready_type else "False"
    reasons = {
        ("Ready", "True"): ("KubeletReady", "kubelet is posting ready status"),
        ("Ready", "False"): ("KubeletNotReady", "kubelet is not ready"),
        ("DiskPressure", "True"): ("KubeletHasDiskPressure", "kubelet has disk pressure"),
        ("DiskPressure", "False"): ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("MemoryPressure", "False"): ("KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ("MemoryPressure", "True"): ("KubeletHasInsufficientMemory", "kubelet has insufficient memory available"),
    }
    reason, message = reasons.get((kind, status), (kind, kind))
    now = now_rfc3339()
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    }


def node_info(name: str, architecture: str = "amd64") -> JsonObject:
    """`status.nodeInfo` as a kubelet reports it, every field the API requires; the ids derive from the name, so
    seeding a node again changes nothing (a new bootID would mean a reboot)."""
    node_uuid = uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.kubellm-emulator")
    return {
        "machineID": node_uuid.hex,
        "systemUUID": str(node_uuid),
        "bootID": str(uuid.uuid5(node_uuid, "boot")),
        "kernelVersion": "6.8.0-kubellm",
        "osImage": "Debian GNU/Linux 12 (bookworm)",
        "containerRuntimeVersion": "containerd://1.7.24",
        "kubeletVersion": KUBERNETES_VERSION,
        "kubeProxyVersion": KUBERNETES_VERSION,
        "operatingSystem": "linux",
        "architecture": architecture,
    }


def internal_ip(name: str) -> str:
    """A stable address in 10.0.0.0/16 per node name (distinct nodes rarely share one)."""
    digest = zlib.crc32(name.encode())
    return f"10.0.{(digest >> 8) % 256}.{digest % 254 + 1}"


def node_manifest(
    name: str,
    *,
    cpu: str = "8",
    memory: str = "32Gi",
    ephemeral_storage: str = "100Gi",
    allocatable_ephemeral_storage: str | None = None,
    gpus: int = 0,
    pods: str = "110",
    labels: Mapping[str, str] | None = None,
    taints: Iterable[Mapping[str, str]] = (),
    ready: bool = True,
    disk_pressure: bool = False,
    memory_pressure: bool = False,
) -> JsonObject:
    """A v1 Node with capacity, allocatable, conditions, taints and the usual well-known labels."""
    capacity = {"cpu": cpu, "memory": memory, "ephemeral-storage": ephemeral_storage, "pods": pods}
    if gpus:
        capacity["nvidia.com/gpu"] = str(gpus)
    allocatable = dict(capacity)
    if allocatable_ephemeral_storage is not None:
        allocatable["ephemeral-storage"] = allocatable_ephemeral_storage
    node_labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        **dict(labels or {}),
    }
    spec: JsonObject = {"taints": [dict(taint) for taint in taints]} if taints else {}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": node_labels},
        "spec": spec,
        "status": {
            "capacity": capacity,
            "allocatable": allocatable,
            "conditions": [
                _condition("Ready", ready, ready_type=True),
                _condition("MemoryPressure", not memory_pressure),
                _condition("DiskPressure", not disk_pressure),
            ],
            "addresses": [{"type": "InternalIP", "address": internal_ip(name)}, {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": KUBELET_PORT}},
            "nodeInfo": node_info(name),
        },
    }


def _bytes(value: str | int) -> int:
    return int(parse_quantity(value))


def _fs(capacity: str | int, available: str | int | None, used: str | int | None) -> JsonObject:
    capacity_bytes = _bytes(capacity)
    available_bytes = _bytes(available) if available is not None else capacity_bytes - (_bytes(used) if used else 0)
    used_bytes = _bytes(used) if used is not None else capacity_bytes - available_bytes
    return {
        "time": now_rfc3339(),
        "availableBytes": available_bytes,
        "capacityBytes": capacity_bytes,
        "usedBytes": used_bytes,
        "inodesFree": 1_000_000,
        "inodes": 2_000_000,
        "inodesUsed": 1_000_000,
    }


def stats_summary(
    name: str,
    *,
    capacity: str | int,
    available: str | int | None = None,
    used: str | int | None = None,
    image_capacity: str | int | None = None,
    image_available: str | int | None = None,
    image_used: str | int | None = None,
) -> JsonObject:
    """The kubelet's /stats/summary body (the parts kubellm reads): the node's fs and the runtime's imageFs."""
    image_fs = _fs(
        image_capacity if image_capacity is not None else capacity,
        image_available if image_available is not None else (available if image_capacity is None else None),
        image_used,
    )
    return {
        "node": {
            "nodeName": name,
            "startTime": now_rfc3339(),
            "fs": _fs(capacity, available, used),
            "runtime": {"imageFs": image_fs},
        },
        "pods": [],
    }
