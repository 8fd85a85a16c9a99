"""This machine as the sandbox's one Node: its CPUs, memory and the disk that holds the sandbox's data directory.

The operator's storage pre-flight reads a Node's allocatable ephemeral storage and the kubelet summary's free
bytes (``fs`` and ``runtime.imageFs``); in the sandbox both describe the real filesystem the model cache is
written to, measured with ``os.statvfs`` (and re-measured periodically by the sandbox).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import socket

DEFAULT_NODE_NAME = "kubellm-sandbox"


@dataclasses.dataclass(frozen=True)
class DiskUsage:
    capacity: int  # bytes of the filesystem
    available: int  # bytes an unprivileged process may still write


def disk_usage(path: pathlib.Path) -> DiskUsage:
    stat = os.statvfs(path)
    return DiskUsage(capacity=stat.f_blocks * stat.f_frsize, available=stat.f_bavail * stat.f_frsize)


def memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError):
        return 8 * 1024**3


def node_name() -> str:
    """The machine's host name as a Node name (a DNS subdomain), or a fixed name when it is not usable."""
    name = re.sub(r"[^a-z0-9.-]+", "-", socket.gethostname().lower()).strip("-.")
    return name[:63] if name else DEFAULT_NODE_NAME


def node_fields(data_dir: pathlib.Path) -> dict[str, object]:
    """Keyword arguments of the emulator's `seed_node` that describe this machine."""
    disk = disk_usage(data_dir)
    return {
        "cpu": str(os.cpu_count() or 1),
        "memory": str(memory_bytes()),
        "ephemeral_storage": str(disk.capacity),
        "labels": {"kubellm.dev/sandbox": "true"},
    }


def stats_fields(data_dir: pathlib.Path) -> dict[str, object]:
    """Keyword arguments of the emulator's `seed_node_stats`: the real disk's capacity and free bytes."""
    disk = disk_usage(data_dir)
    return {"capacity": disk.capacity, "available": disk.available}
