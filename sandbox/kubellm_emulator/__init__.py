"""Test tooling: an in-memory Kubernetes API server (on kmock) with the Deployment controller and a kubelet stand-in.

Tests and the local sandbox run against it, since no real apiserver can run on the project's machines.

`async with Emulator() as emulator:` serves it over HTTP on 127.0.0.1 (a free port); `emulator.write_kubeconfig(path)`
points kubectl, the kubernetes client and Kopf at it. See docs/emulator.md for what it emulates and what it does not.
"""

from kubellm_emulator.errors import ApiError
from kubellm_emulator.faults import FaultInjector
from kubellm_emulator.resources import ResourceType
from kubellm_emulator.server import WRITE_METHODS, Emulator, RecordedRequest
from kubellm_emulator.store import ObjectStore, WriteOptions

__all__ = [
    "WRITE_METHODS",
    "ApiError",
    "Emulator",
    "FaultInjector",
    "ObjectStore",
    "RecordedRequest",
    "ResourceType",
    "WriteOptions",
]
