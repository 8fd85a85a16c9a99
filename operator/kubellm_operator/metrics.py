"""The operator's Prometheus metrics and its HTTP endpoint (``/metrics`` and the liveness ``/healthz``).

The metrics live in their own registry, so an operator embedded in a test or the sandbox does not collide
with other collectors in the same process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

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
        self._phases = Gauge(
            "kubellm_operator_llmservices",
            "LLMServices by phase, as last computed by this operator.",
            ["phase"],
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
        self._refresh_phases()

    @contextmanager
    def timed(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.duration.observe(time.perf_counter() - started)

    def set_phase(self, namespace: str, name: str, phase: str | None) -> None:
        with self._lock:
            if phase is None:
                self._phase_of.pop((namespace, name), None)
            else:
                self._phase_of[(namespace, name)] = phase
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
