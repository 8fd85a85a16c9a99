"""Helpers of the gateway tests: the gateway runs for real (uvicorn, its own event loop in a thread) as deploy/'s
ServiceAccount against the API emulator, which the test's loop serves; LLMServices and pods are written into the
emulator's store as a cluster's controllers would leave them (pods point at real inference servers)."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import uvicorn

from kubellm_emulator import Emulator
from kubellm_emulator.store import PATCH_MERGE
from kubellm_emulator.testing import wait_until
from kubellm_gateway.app import GatewayApp, create_app
from kubellm_gateway.config import GatewaySettings
from kubellm_operator.api import GROUP, PLURAL, VERSION

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "kubellm.dev_llmservices.yaml"
GATEWAY_COMPONENT = ROOT / "deploy" / "components" / "gateway"
GATEWAY_IDENTITY = [
    ROOT / "deploy" / "namespace.yaml",
    GATEWAY_COMPONENT / "serviceaccount.yaml",
    GATEWAY_COMPONENT / "rbac.yaml",
]
GATEWAY_SERVICE_ACCOUNT = ("kubellm-system", "kubellm-gateway")
GATEWAY_USER = "system:serviceaccount:kubellm-system:kubellm-gateway"


def install(emulator: Emulator) -> None:
    emulator.apply_manifests(CRD)
    for manifest in GATEWAY_IDENTITY:
        emulator.apply_manifests(manifest)


def _type(emulator: Emulator, kind: str) -> Any:
    group, version, plural = {"LLMService": (GROUP, VERSION, PLURAL), "Pod": ("", "v1", "pods")}[kind]
    return emulator.store.type_for(group, version, plural)


def put_llmservice(emulator: Emulator, name: str, status: dict[str, Any] | None = None, **spec: Any) -> None:
    body: dict[str, Any] = {"model": {"name": "tiny-model"}, "storage": {"cacheSize": "1Gi"}}
    body.update(spec)
    emulator.apply_manifest(
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LLMService", "metadata": {"name": name}, "spec": body}
    )
    if status is not None:
        set_status(emulator, "LLMService", name, status)


def set_status(emulator: Emulator, kind: str, name: str, status: dict[str, Any]) -> None:
    emulator.store.patch(_type(emulator, kind), "default", name, PATCH_MERGE, {"status": status}, subresource="status")


def get(emulator: Emulator, kind: str, name: str) -> dict[str, Any]:
    return emulator.store.get(_type(emulator, kind), "default", name)


def put_pod(emulator: Emulator, owner: str, name: str, port: int, *, ready: bool = True) -> None:
    """A pod of ``owner`` at 127.0.0.1:``port`` (its podIP and the inference container's port, as in a cluster)."""
    emulator.apply_manifest(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"kubellm.dev/llmservice": owner}},
            "spec": {
                "containers": [
                    {"name": "inference", "image": "kubellm/inference:dev", "ports": [{"containerPort": port}]}
                ]
            },
        }
    )
    condition = {"type": "Ready", "status": "True" if ready else "False"}
    set_status(emulator, "Pod", name, {"phase": "Running", "podIP": "127.0.0.1", "conditions": [condition]})


def closed_port() -> int:
    """A port nothing listens on (bound, then released): connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class RunningGateway:
    def __init__(self, base_url: str, app: GatewayApp) -> None:
        self.base_url = base_url
        self.app = app

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=30.0, **kwargs)

    def sample(self, name: str, **labels: str) -> float:
        value = self.app.state.gateway.metrics.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else float(value)

    async def served(self, model: str, ready: int | None = None, timeout: float = 10.0) -> None:
        """Wait until the gateway's watches show ``model`` (with ``ready`` Ready pods when given)."""

        def seen() -> bool:
            backend = self.app.state.gateway.catalog.backend(model)
            return backend is not None and (ready is None or len(backend.ready_pods()) == ready)

        await wait_until(seen, timeout=timeout, what=f"the gateway to serve {model} ({ready} ready)")


@contextlib.asynccontextmanager
async def running_gateway(
    emulator: Emulator, tmp_path: pathlib.Path, **overrides: Any
) -> AsyncIterator[RunningGateway]:
    """The gateway as `kubellm gateway` runs it, as deploy/'s ServiceAccount, for the block; stopped after it."""
    kubeconfig = emulator.write_kubeconfig(tmp_path / "gateway-kubeconfig", service_account=GATEWAY_SERVICE_ACCOUNT)
    settings = GatewaySettings(
        **(
            {
                "namespaces": ["default"],
                "kubeconfig": str(kubeconfig),
                "host": "127.0.0.1",
                "port": 0,
                "identity": "gateway-test",
                "progress_interval_s": 0.5,
                "connect_timeout_s": 1.0,
                "read_timeout_s": 30.0,
            }
            | overrides
        )
    )
    app = create_app(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="gateway-under-test")
    thread.start()
    gateway = RunningGateway(f"http://127.0.0.1:{port}", app)
    try:
        await wait_until(lambda: server.started or not thread.is_alive(), timeout=20, what="the gateway to start")
        assert server.started, "the gateway did not start"
        async with gateway.client() as client:
            for _ in range(200):  # bounded: 10 s
                if (await client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the gateway's watches did not list within 10s")
        yield gateway
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 15)
        sock.close()
        assert not thread.is_alive(), "the gateway did not stop"
