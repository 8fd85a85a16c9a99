"""What the operator waits for before it watches: the LLMService resource being served, then (with leader
election) the leader Lease. Meanwhile it is alive (``/healthz`` 200) and says why it is not ready (``/readyz``
503 with the reason, the ``kubellm_operator_ready`` gauge at 0, one log line per new reason).

Kopf's resource scanning is off (``handlers.configure``: it would need list/watch on CRDs and namespaces), so
Kopf looks its resources up once, at start: an operator started before the CRD is served (``kubectl apply -k
deploy/`` creates both at once) would watch nothing for ever. Waiting here, with discovery polled on a backoff
and each request bounded, makes the install order not matter.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from contextlib import suppress

from kubernetes.client.exceptions import ApiException

from kubellm_operator.metrics import OperatorMetrics

log = logging.getLogger("kubellm.operator")

DISCOVERY_FIRST_S = 0.5
DISCOVERY_MAX_S = 10.0


class Readiness:
    """Why the operator is not reconciling yet (None: it is), for /readyz, the gauge and the log."""

    def __init__(self, metrics: OperatorMetrics) -> None:
        self._lock = threading.Lock()
        self._reason: str | None = "starting"
        self._metrics = metrics
        metrics.ready.set(0)

    def waiting(self, reason: str) -> None:
        with self._lock:
            changed, self._reason = reason != self._reason, reason
        if changed:
            log.info("not ready: %s", reason)
        self._metrics.ready.set(0)

    def ready(self) -> None:
        with self._lock:
            self._reason = None
        self._metrics.ready.set(1)

    def reason(self) -> str | None:
        with self._lock:
            return self._reason


async def wait_until_served(
    served: Callable[[], str | None],
    readiness: Readiness,
    stop: asyncio.Event,
    *,
    first_s: float = DISCOVERY_FIRST_S,
    max_s: float = DISCOVERY_MAX_S,
) -> bool:
    """Poll ``served()`` (None when the resource is served, else why not) with a doubling delay until it is served
    (True) or ``stop`` is set (False). ``served`` runs on a thread: it makes a bounded API request."""
    delay = first_s
    while not stop.is_set():
        why = await asyncio.to_thread(served)
        if why is None:
            return True
        readiness.waiting(why)
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, max_s)
    return False


def resource_served(list_resources: Callable[[], list[str]], group_version: str, plural: str) -> str | None:
    """None when discovery lists ``plural`` in ``group_version``, else the reason (for the readiness endpoint)."""
    try:
        names = list_resources()
    except ApiException as error:
        if error.status == 404:
            return f"waiting for {plural}.{group_version} to be served: install the CRD (kubectl apply -k crds/)"
        return f"waiting for {plural}.{group_version} to be served: discovery answered {error.status} {error.reason}"
    except OSError as error:  # urllib3's errors (a timeout, a refused connection) are OSErrors
        return f"waiting for {plural}.{group_version} to be served: cannot reach the API ({error})"
    if plural not in names:
        return f"waiting for {plural}.{group_version} to be served: discovery does not list it yet"
    return None
