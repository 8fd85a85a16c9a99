"""Publishing the requests the gateway holds, so the operator's autoscaler counts them (and wakes an LLMService at
zero replicas).

Each gateway replica merge-patches one annotation of its own on the LLMService,
``held.gateway.kubellm.dev/<replica>: {"held": N, "at": EPOCH}``: the change is a watch event the operator reacts
to at once (a wake-up within a second), no other component is needed, and the RBAC it takes is ``patch`` on
llmservices. The first change is published at once, later ones at most once per second per LLMService; while
requests are held the value is refreshed (the operator ignores values older than ``HELD_TTL_S``, so a gateway that
died cannot pin replicas up), and removed when none is held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import httpx

from kubellm_gateway.kube import Kube, KubeError
from kubellm_operator.api import GROUP, PLURAL, VERSION
from kubellm_operator.autoscale import HELD_ANNOTATION_PREFIX, HELD_TTL_S, held_annotation

logger = logging.getLogger("kubellm.gateway")

MIN_INTERVAL_S = 1.0
REFRESH_S = HELD_TTL_S / 3


class HeldPublisher:
    def __init__(self, kube: Kube, identity: str, clock: Callable[[], float] = time.time) -> None:
        self._kube = kube
        self._key = HELD_ANNOTATION_PREFIX + identity
        self._clock = clock
        self._held: dict[str, int] = {}  # NAMESPACE/NAME -> requests held now
        self._published: dict[str, tuple[int, float]] = {}  # what was last written, and when (monotonic)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def held(self, model: str) -> int:
        return self._held.get(model, 0)

    def change(self, model: str, delta: int) -> None:
        self._held[model] = max(self._held.get(model, 0) + delta, 0)
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="held publisher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _due(self, now: float) -> tuple[list[str], float]:
        """The models to publish now, and how long until the next one is due."""
        due, wait = [], REFRESH_S
        for model in sorted(set(self._held) | set(self._published)):
            held = self._held.get(model, 0)
            last_value, last_at = self._published.get(model, (0, -1e9))
            if held == last_value and (held == 0 or now - last_at < REFRESH_S):
                if held:
                    wait = min(wait, REFRESH_S - (now - last_at))
                continue
            ready_at = last_at + MIN_INTERVAL_S
            if now >= ready_at:
                due.append(model)
            else:
                wait = min(wait, ready_at - now)
        return due, max(wait, 0.05)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            due, wait = self._due(time.monotonic())
            for model in due:
                await self._publish(model)
            if not due:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)

    async def _publish(self, model: str) -> None:
        held = self._held.get(model, 0)
        namespace, name = model.split("/", 1)
        value = held_annotation(held, self._clock()) if held else None
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"
        try:
            await self._kube.merge_patch(path, {"metadata": {"annotations": {self._key: value}}})
        except (httpx.HTTPError, KubeError) as exc:
            # Retried at the next interval: the pass of the operator waits for it, the client is still held.
            logger.warning("publishing %d held requests on %s: %s", held, model, exc)
        self._published[model] = (held, time.monotonic())
        if not held and not self._held.get(model):
            self._published.pop(model, None)
            self._held.pop(model, None)
