"""``kubellm gateway``: run the gateway (uvicorn) with its watches, until SIGINT or SIGTERM."""

from __future__ import annotations

import logging
import socket
import sys

import uvicorn
import uvloop

from kubellm.settings import SettingsError
from kubellm_gateway.app import create_app
from kubellm_gateway.config import GatewaySettings, load_settings

logger = logging.getLogger("kubellm.gateway")


def listening_socket(host: str, port: int) -> socket.socket:
    """The gateway's bound socket (uvicorn listens on it).

    Its proto is IPPROTO_TCP, not left 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on accepted
    sockets whose proto says TCP. Without it, on a kept-alive connection the first chunk relayed after the response
    headers waited for the client's delayed ACK: +40 ms to the first token (measured with `kubellm bench elastic`).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def serve(settings: GatewaySettings, sock: socket.socket) -> None:
    config = uvicorn.Config(
        create_app(settings), log_level=settings.log_level.lower(), lifespan="on", timeout_graceful_shutdown=30
    )
    await uvicorn.Server(config).serve(sockets=[sock])


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        print(f"kubellm gateway: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request at INFO (each watch, each relayed answer): the gateway's own lines say what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        sock = listening_socket(settings.host, settings.port)
    except OSError as exc:
        print(f"kubellm gateway: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 1
    port = sock.getsockname()[1]
    where = "every namespace" if settings.clusterwide else "namespaces " + ",".join(settings.namespaces)
    # The port on stdout, alone on its line: `kubellm sandbox up` reads it when it asked for a free one.
    print(f"kubellm gateway listening on {settings.host}:{port}, serving {where}", flush=True)
    try:
        # libuv's loop: the relay's socket reads and writes cost less CPU than asyncio's selector loop (the gateway's
        # CPU per relayed token, `bench/gateway_relay.py`); uvicorn picks httptools' compiled parser by itself.
        uvloop.run(serve(settings, sock))
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0
