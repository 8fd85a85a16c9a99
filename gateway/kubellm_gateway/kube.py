"""The gateway's Kubernetes API client: list, watch and merge-patch over httpx, asynchronously.

Asynchronous so that a watch is cancelled at once when the gateway stops (a thread blocked in the synchronous
client's read would not be). Credentials come from the kubernetes package's config loaders (in-cluster service
account, else a kubeconfig); every request has a timeout, every watch event a byte cap.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import kubernetes.client

# The operator's credential loading (in-cluster service account, else a kubeconfig), shared.
from kubellm.watchlines import EventLines, EventTooLarge
from kubellm_operator.cluster import load_configuration

__all__ = ["Kube", "KubeError", "load_configuration"]

MAX_LIST_BYTES = 256 << 20  # a list of every pod of a namespace can be large; not unbounded
MAX_EVENT_BYTES = 8 << 20  # one watch event: one object


class KubeError(Exception):
    """The API answered something other than success; ``status`` is its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class Kube:
    def __init__(self, config: kubernetes.client.Configuration, *, timeout_s: float) -> None:
        self._config = config
        verify: ssl.SSLContext | bool = False
        if config.verify_ssl:
            context = ssl.create_default_context(cafile=config.ssl_ca_cert)
            if config.cert_file:
                context.load_cert_chain(config.cert_file, config.key_file)
            verify = context
        self.timeout_s = timeout_s
        self._client = httpx.AsyncClient(
            base_url=config.host, verify=verify, timeout=httpx.Timeout(timeout_s), trust_env=False
        )

    def _headers(self) -> dict[str, str]:
        # In a pod the token is rotated: the loader's refresh hook re-reads the projected token file.
        if self._config.refresh_api_key_hook is not None:
            self._config.refresh_api_key_hook(self._config)
        header = self._config.get_api_key_with_prefix("BearerToken") or self._config.get_api_key_with_prefix(
            "authorization"
        )
        return {"Authorization": header} if header else {}

    async def close(self) -> None:
        await self._client.aclose()

    async def list(self, path: str, params: Mapping[str, str] | None = None) -> tuple[list[dict[str, Any]], str]:
        """The items at ``path`` and the list's resourceVersion (to watch from)."""
        async with self._client.stream("GET", path, params=dict(params or {}), headers=self._headers()) as response:
            body = await _read_capped(response, MAX_LIST_BYTES)
            if response.status_code != 200:
                raise KubeError(response.status_code, _message(body))
        listing = json.loads(body)
        items = listing.get("items") or []
        return [i for i in items if isinstance(i, dict)], str((listing.get("metadata") or {}).get("resourceVersion"))

    async def watch(
        self, path: str, resource_version: str, timeout_s: int, params: Mapping[str, str] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The watch events at ``path`` from ``resource_version`` until the server ends the watch."""
        query = dict(params or {}) | {
            "watch": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(timeout_s),
            "allowWatchBookmarks": "true",
        }
        timeout = httpx.Timeout(self.timeout_s, read=timeout_s + self.timeout_s)
        async with self._client.stream("GET", path, params=query, headers=self._headers(), timeout=timeout) as response:
            if response.status_code != 200:
                raise KubeError(response.status_code, _message(await _read_capped(response, 1 << 16)))
            lines = EventLines(MAX_EVENT_BYTES)
            async for chunk in response.aiter_bytes():
                try:
                    for line in lines.feed(chunk):
                        event = json.loads(line)
                        if isinstance(event, dict):
                            yield event
                except EventTooLarge:
                    raise KubeError(413, f"a watch event of {path} is larger than {MAX_EVENT_BYTES} bytes") from None

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> None:
        headers = self._headers() | {"Content-Type": "application/merge-patch+json"}
        response = await self._client.patch(path, content=json.dumps(patch).encode(), headers=headers)
        if response.status_code >= 300:
            raise KubeError(response.status_code, _message(response.content[: 1 << 16]))


async def _read_capped(response: httpx.Response, cap: int) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > cap:
            raise KubeError(413, f"the API's answer is larger than {cap} bytes")
    return bytes(body)


def _message(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return body[:200].decode(errors="replace")
    return str(parsed.get("message", "")) if isinstance(parsed, dict) else ""
