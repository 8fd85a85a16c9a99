"""``kubellm gateway``: run the gateway (uvicorn) with its watches, until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys

import uvicorn

from kubellm_gateway.app import create_app
from kubellm_gateway.catalog import Catalog
from kubellm_gateway.config import GatewaySettings, SettingsError, load_settings
from kubellm_gateway.held import HeldPublisher
from kubellm_gateway.kube import Kube, load_configuration

logger = logging.getLogger("kubellm.gateway")


async def serve(settings: GatewaySettings, sock: socket.socket) -> None:
    kube = Kube(load_configuration(settings.kubeconfig), timeout_s=settings.api_timeout_s)
    catalog = Catalog(kube, settings.namespaces, watch_timeout_s=settings.watch_timeout_s)
    app = create_app(settings, catalog, HeldPublisher(kube, settings.identity))
    config = uvicorn.Config(app, log_level=settings.log_level.lower(), lifespan="on", timeout_graceful_shutdown=30)
    try:
        await uvicorn.Server(config).serve(sockets=[sock])
    finally:
        await kube.close()


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        print(f"kubellm gateway: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        print(f"kubellm gateway: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 1
    port = sock.getsockname()[1]
    where = "every namespace" if settings.clusterwide else "namespaces " + ",".join(settings.namespaces)
    # The port on stdout, alone on its line: `kubellm sandbox up` reads it when it asked for a free one.
    print(f"kubellm gateway listening on {settings.host}:{port}, serving {where}", flush=True)
    try:
        asyncio.run(serve(settings, sock))
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0
