"""Service forwarding for the sandbox: 127.0.0.1:<service port> to the ready pods' podIP:port, round-robin.

This plays kube-proxy (and the seed's LoadBalancer) for a machine without a cluster: one TCP listener per Service
port, each accepted connection piped to the next ready backend. A connection that arrives while no backend is
ready is closed at once, as a Service without endpoints refuses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging

logger = logging.getLogger("kubellm.sandbox.forwarding")
CHUNK = 64 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


class PortForwarder:
    """Listens on `host:port` and forwards every connection to one of `backends` (pod IP, port), in turn."""

    def __init__(self, port: int, *, host: str = "127.0.0.1", name: str = "") -> None:
        self.host = host
        self.port = port
        self.name = name
        self.backends: list[tuple[str, int]] = []
        self._turn = itertools.count()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Binds the port; raises OSError (e.g. EADDRINUSE) when it cannot."""
        self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)

    def set_backends(self, addresses: list[tuple[str, int]]) -> None:
        self.backends = sorted(addresses)

    def next_backend(self) -> tuple[str, int] | None:
        if not self.backends:
            return None
        return self.backends[next(self._turn) % len(self.backends)]

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._forward(client_reader, client_writer)
        except asyncio.CancelledError:
            # stop() ends the open connections. Ending normally, not cancelled: Python 3.11's start_server callback
            # calls exception() on the connection's task, which raises for a cancelled one (and logs a traceback).
            pass
        finally:
            self._connections.discard(task)

    async def _forward(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        tried: set[tuple[str, int]] = set()
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        # A backend that refuses (it just stopped) is skipped for this connection; the next one is tried.
        while upstream is None:
            backend = self.next_backend()
            if backend is None or backend in tried:
                logger.info("%s: no ready backend for a connection on %s:%d", self.name, self.host, self.port)
                client_writer.close()
                return
            tried.add(backend)
            try:
                upstream = await asyncio.open_connection(*backend)
            except OSError:
                continue
        upstream_reader, upstream_writer = upstream
        try:
            await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))
        finally:
            for writer in (upstream_writer, client_writer):
                writer.close()
                with contextlib.suppress(OSError, ConnectionError):
                    await writer.wait_closed()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
