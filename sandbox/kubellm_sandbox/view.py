"""A running sandbox as its tests and tools read it: the kubernetes clients from its kubeconfig, its LLMServices and
pods, a bounded wait, and, when a wait runs out, everything that explains it (statuses, Events, the logs' tails)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import kubernetes

from kubellm_sandbox.supervisor import Layout

GROUP, VERSION, PLURAL = "kubellm.dev", "v1alpha1", "llmservices"
NAMESPACE = "default"
SELECTOR_LABEL = "kubellm.dev/llmservice"


class SandboxTimeout(TimeoutError):
    """A wait ran out; the message ends with the sandbox's dump."""


class SandboxView:
    """The sandbox's API as its admin sees it (the sandbox's own kubeconfig)."""

    def __init__(self, layout: Layout, state: dict[str, Any]) -> None:
        self.layout = layout
        self.state = state
        client = kubernetes.config.new_client_from_config(config_file=str(layout.kubeconfig))
        self.core = kubernetes.client.CoreV1Api(client)
        self.apps = kubernetes.client.AppsV1Api(client)
        self.custom = kubernetes.client.CustomObjectsApi(client)

    def llms(self, name: str) -> dict[str, Any]:
        obj: Any = self.custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
        return dict(obj)

    def pods(self, name: str | None = None) -> list[dict[str, Any]]:
        """The pods of one LLMService (every LLMService's without a name), as wire-shape dicts."""
        selector = f"{SELECTOR_LABEL}={name}" if name else SELECTOR_LABEL
        listing = self.core.list_namespaced_pod(NAMESPACE, label_selector=selector)
        pods: list[dict[str, Any]] = self.core.api_client.sanitize_for_serialization(listing)["items"]
        return pods

    def dump(self) -> str:
        """Everything that explains a failure: LLMService and pod statuses, Events, the tails of the logs."""
        parts = []
        with contextlib.suppress(Exception):
            listing: Any = self.custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)
            for item in listing["items"]:
                parts.append(f"LLMService {item['metadata']['name']}: {json.dumps(item.get('status'), indent=1)}")
        with contextlib.suppress(Exception):
            for pod in self.pods():
                parts.append(f"Pod {pod['metadata']['name']}: {json.dumps(pod.get('status'))[:1500]}")
        with contextlib.suppress(Exception):
            for event in self.core.list_namespaced_event(NAMESPACE).items:
                parts.append(f"Event {event.involved_object.name} {event.reason} x{event.count}: {event.message}")
        logs = [self.layout.sandbox_log, self.layout.operator_log, self.layout.gateway_log]
        for log in [*logs, *self.layout.root.glob("pods/*/*/*.log")]:
            with contextlib.suppress(OSError):
                parts.append(f"--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:]))
        return "\n".join(parts)

    def wait(self, predicate: Callable[[], Any], *, timeout: float, what: str) -> Any:
        """``predicate``'s first truthy result, polled every 0.5 s for at most ``timeout`` seconds (API and I/O
        errors count as not yet); :class:`SandboxTimeout` with the dump after that."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                result = predicate()
            except (kubernetes.client.ApiException, OSError, KeyError, IndexError) as error:
                result, last_error = None, error
            if result:
                return result
            time.sleep(0.5)
        raise SandboxTimeout(
            f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error})\n{self.dump()}"
        )
