"""A thin JSON-over-HTTP client for the emulator's own tests."""

from __future__ import annotations

import json
from typing import Any

import aiohttp


class Api:
    """A thin JSON-over-HTTP client for asserting on the emulator's exact answers (status codes included)."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        data = None if body is None else (body if isinstance(body, str | bytes) else json.dumps(body))
        all_headers = {"Content-Type": content_type, **(headers or {})}
        async with self.session.request(method, self.base + path, data=data, params=params, headers=all_headers) as r:
            text = await r.text()
            return r.status, json.loads(text) if text.strip().startswith(("{", "[")) else text

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        return await self.call("GET", path, **kwargs)

    async def post(self, path: str, body: Any, **kwargs: Any) -> tuple[int, Any]:
        return await self.call("POST", path, body, **kwargs)

    async def put(self, path: str, body: Any, **kwargs: Any) -> tuple[int, Any]:
        return await self.call("PUT", path, body, **kwargs)

    async def patch(self, path: str, body: Any, kind: str = "merge", **kwargs: Any) -> tuple[int, Any]:
        content_type = {
            "merge": "application/merge-patch+json",
            "json": "application/json-patch+json",
            "strategic": "application/strategic-merge-patch+json",
            "apply": "application/apply-patch+yaml",
        }[kind]
        return await self.call("PATCH", path, body, content_type=content_type, **kwargs)

    async def delete(self, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        return await self.call("DELETE", path, body, **kwargs)

    async def watch(
        self, path: str, params: dict[str, str], *, until: int, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """Reads watch events until `until` events arrived or the server ended the stream (bounded by `timeout`)."""
        events: list[dict[str, Any]] = []
        async with self.session.get(
            self.base + path, params={"watch": "true", **params}, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as response:
            assert response.status == 200, await response.text()
            assert response.content_type == "application/json"
            async for line in response.content:
                if line.strip():
                    events.append(json.loads(line))
                if len(events) >= until:
                    break
        return events
