"""The events of a Kubernetes watch response: newline-delimited JSON objects, split out of the bytes as they arrive,
each bounded (the operator's pod watch and the gateway's watches read them)."""

from __future__ import annotations

from collections.abc import Iterator


class EventTooLarge(ValueError):
    """An event (a line) grew past the bound before its newline came."""


class EventLines:
    """Feed a watch response's chunks; get its complete, non-blank lines. ``max_bytes`` bounds the one line still
    being received (an object is at most etcd's 1.5 MiB request, JSON-quoted)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._pending = b""

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        self._pending += chunk
        while b"\n" in self._pending:
            line, self._pending = self._pending.split(b"\n", 1)
            if line.strip():
                yield line
        if len(self._pending) > self.max_bytes:
            raise EventTooLarge(f"a watch event exceeded {self.max_bytes} bytes")
