"""The operator's Prometheus metrics and its HTTP endpoint (``/metrics`` and the liveness ``/healthz``).

The metrics live in their own registry, so an operator embedded in a test or the sandbox does not collide
with other collectors in the same process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kubellm_operator.api import Phase

HEALTHZ_PATH = "/healthz"
READYZ_PATH = "/readyz"
METRICS_PATH = "/metrics"

# Reconcile outcomes.
CHANGED = "changed"  # a child or the status was written
UNCHANGED = "unchanged"  # nothing to write
INVALID = "invalid"  # the spec can never work (InvalidSpec)
WAITING = "waiting"  # held for the world to change (storage.enforce)
REFUSED = "refused"  # the API refused a child; the status says why
ERROR = "error"  # an API error; Kopf retries
OUTCOMES = (CHANGED, UNCHANGED, INVALID, WAITING, REFUSED, ERROR)
ERROR_KINDS = ("conflict", "server", "client", "other")
WRITE_TARGETS = ("deployment", "service", "status", "event")


class OperatorMetrics:
    """Counters and gauges of one operator instance."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.reconciles = Counter(
            "kubellm_operator_reconciles",
            "Reconcile passes by outcome (changed, unchanged, invalid, not_allowed, waiting, refused, error).",
            ["outcome"],
            registry=self.registry,
        )
        self.errors = Counter(
            "kubellm_operator_errors",
            "Errors during reconciles by kind (conflict, server, client, other).",
            ["kind"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "kubellm_operator_reconcile_duration_seconds",
            "Duration of reconcile passes.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.storage_warnings = Counter(
            "kubellm_operator_storage_warnings",
            "Storage pre-flight warnings raised (InsufficientStorage, once per change).",
            registry=self.registry,
        )
        self.writes = Counter(
            "kubellm_operator_writes",
            "Writes to the API by what was written (deployment, service, status, event).",
            ["target"],
            registry=self.registry,
        )
        # Every known label value exported from the start, at 0: a counter that has never counted is a 0 on the
        # dashboards and in rate(), not "no data" (and an alert on it can fire at the first error, not the second).
        for counter, values in ((self.reconciles, OUTCOMES), (self.errors, ERROR_KINDS), (self.writes, WRITE_TARGETS)):
            for value in values:
                counter.labels(value)
        self.queue_length = Gauge(
            "kubellm_operator_queue_length", "LLMServices queued for a pass (due now or later).", registry=self.registry
        )
        self.queue_overdue = Gauge(
            "kubellm_operator_queue_overdue_seconds",
            "How long the longest-waiting due pass has waited for a worker (0 when none is due).",
            registry=self.registry,
        )
        # Per LLMService, from the status each pass computes: "which LLMServices are Degraded, and why" is one query.
        self._phases = Gauge(
            "kubellm_llmservices",
            "LLMServices by phase, as last computed by this operator.",
            ["phase"],
            registry=self.registry,
        )
        self._conditions = Gauge(
            "kubellm_llmservice_condition",
            "1 for each current condition of an LLMService (type, status and reason as in status.conditions).",
            ["namespace", "name", "type", "status", "reason"],
            registry=self.registry,
        )
        self._replicas = Gauge(
            "kubellm_llmservice_replicas",
            "Replicas an LLMService asks for (spec.replicas, or what the autoscaler set it to).",
            ["namespace", "name"],
            registry=self.registry,
        )
        self._ready_replicas = Gauge(
            "kubellm_llmservice_ready_replicas",
            "Ready pods of an LLMService.",
            ["namespace", "name"],
            registry=self.registry,
        )
        labels = ["namespace", "name"]
        self.desired_replicas = Gauge(
            "kubellm_autoscaling_desired_replicas",
            "Replicas the autoscaler asks for (spec.autoscaling).",
            labels,
            registry=self.registry,
        )
        self.demand = Gauge(
            "kubellm_autoscaling_demand",
            "Requests in flight and queued on the pods plus those the gateways hold.",
            labels,
            registry=self.registry,
        )
        self.signal_missing = Gauge(
            "kubellm_autoscaling_signal_missing",
            "1 while some Ready pod's demand cannot be read (the autoscaler then never scales down), else 0.",
            labels,
            registry=self.registry,
        )
        self.ready = Gauge(
            "kubellm_operator_ready",
            "1 while this operator watches and reconciles; 0 while it waits (for the CRD to be served, or as a "
            "standby for the leader Lease).",
            registry=self.registry,
        )
        self.leader = Gauge(
            "kubellm_operator_leader", "1 while this operator holds the leader Lease.", registry=self.registry
        )
        self._lock = threading.Lock()
        self._phase_of: dict[tuple[str, str], str] = {}
        self._conditions_of: dict[tuple[str, str], tuple[tuple[str, str, str], ...]] = {}
        self._refresh_phases()

    @contextmanager
    def timed(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.duration.observe(time.perf_counter() - started)

    def set_status(self, namespace: str, name: str, status: Mapping[str, Any] | None) -> None:
        """Export the status a pass computed for the LLMService (``None``: it is gone, and so are its series)."""
        key = (namespace, name)
        with self._lock:
            current: tuple[tuple[str, str, str], ...] = ()
            if status is not None:
                current = tuple(
                    (str(c.get("type")), str(c.get("status")), str(c.get("reason")))
                    for c in status.get("conditions") or ()
                )
            # Only the series that changed go: a scrape between a removal and its re-add would end the series and
            # restart the `for:` of every alert on it.
            for type_, state, reason in set(self._conditions_of.pop(key, ())) - set(current):
                self._conditions.remove(namespace, name, type_, state, reason)
            if status is None:
                if self._phase_of.pop(key, None) is not None:
                    self._replicas.remove(namespace, name)
                    self._ready_replicas.remove(namespace, name)
            else:
                self._phase_of[key] = str(status.get("phase"))
                for type_, state, reason in current:
                    self._conditions.labels(namespace, name, type_, state, reason).set(1)
                self._conditions_of[key] = current
                # status.ready is "ready/desired" (the READY column): the desired count is not a field of its own.
                _, _, desired = str(status.get("ready") or "").partition("/")
                self._replicas.labels(namespace, name).set(int(desired) if desired.isdigit() else 0)
                self._ready_replicas.labels(namespace, name).set(int(status.get("readyReplicas") or 0))
            self._refresh_phases()

    def set_autoscaling(self, namespace: str, name: str, figures: tuple[int, float, bool] | None) -> None:
        """(desired, demand, signal missing) of an autoscaled LLMService; None removes its series."""
        for gauge in (self.desired_replicas, self.demand, self.signal_missing):
            if figures is None:
                with suppress(KeyError):
                    gauge.remove(namespace, name)
        if figures is not None:
            desired, demand, missing = figures
            self.desired_replicas.labels(namespace=namespace, name=name).set(desired)
            self.demand.labels(namespace=namespace, name=name).set(demand)
            self.signal_missing.labels(namespace=namespace, name=name).set(1 if missing else 0)

    def _refresh_phases(self) -> None:
        for phase in Phase:
            self._phases.labels(phase=phase.value).set(sum(1 for p in self._phase_of.values() if p == phase.value))

    def watch_queue(self, length: Callable[[], int], overdue: Callable[[], float]) -> None:
        """Read the work queue at scrape time."""
        self.queue_length.set_function(lambda: float(length()))
        self.queue_overdue.set_function(overdue)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def health_app(
    metrics: OperatorMetrics,
    stuck: Callable[[], str | None] = lambda: None,
    waiting: Callable[[], str | None] = lambda: None,
) -> web.Application:
    """/healthz: 200 while the operator's event loop runs and ``stuck()`` finds nothing (its watches and its work
    queue make progress), else 503 with the reason, so the kubelet restarts a stuck operator. /readyz: 200 while it
    reconciles, 503 with ``waiting()``'s reason while it waits (the CRD not served yet, a standby): alive, not
    working. /metrics: the registry.
    """

    async def readyz(_: web.Request) -> web.Response:
        why = waiting()
        if why is not None:
            return web.json_response({"status": "waiting", "reason": why}, status=503)
        return web.json_response({"status": "ready"})

    async def healthz(_: web.Request) -> web.Response:
        why = stuck()
        if why is not None:
            return web.json_response({"status": "stuck", "reason": why}, status=503)
        return web.json_response({"status": "ok"})

    async def serve_metrics(_: web.Request) -> web.Response:
        response = web.Response(body=metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get(HEALTHZ_PATH, healthz)
    app.router.add_get(READYZ_PATH, readyz)
    app.router.add_get(METRICS_PATH, serve_metrics)
    return app


async def start_health_server(
    metrics: OperatorMetrics,
    host: str,
    port: int,
    stuck: Callable[[], str | None] = lambda: None,
    waiting: Callable[[], str | None] = lambda: None,
) -> web.AppRunner:
    """Start the endpoint on the running loop; the caller calls ``cleanup()`` on the runner to stop it."""
    runner = web.AppRunner(health_app(metrics, stuck, waiting), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
