"""An in-memory Kubernetes API server for tests and the local sandbox, built on kmock's KubernetesEmulator.

`async with Emulator() as emulator:` serves it over HTTP on 127.0.0.1 (a free port); `emulator.write_kubeconfig(path)`
points kubectl, the kubernetes client and Kopf at it. See docs/emulator.md for what it emulates and what it does not.
"""

from kubellm_sandbox.emulator.errors import ApiError
from kubellm_sandbox.emulator.faults import FaultInjector
from kubellm_sandbox.emulator.resources import ResourceType
from kubellm_sandbox.emulator.server import WRITE_METHODS, Emulator, RecordedRequest
from kubellm_sandbox.emulator.store import ObjectStore, WriteOptions

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
