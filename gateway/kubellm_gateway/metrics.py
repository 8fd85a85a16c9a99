"""The gateway's Prometheus metrics (names fixed with the monitoring component; ``model`` is NAMESPACE/NAME, or
``unknown`` for a model the gateway does not serve, so a client cannot grow the label set)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

UNKNOWN_MODEL = "unknown"
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_HOLD_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # prometheus_client appends _total to a counter's name in the exposition.
        self.requests = Counter(
            "kubellm_gateway_requests",
            "Requests answered, by model and HTTP status code",
            ["model", "code"],
            registry=r,
        )
        self.in_flight = Gauge(
            "kubellm_gateway_requests_in_flight", "Requests being answered (held ones included)", ["model"], registry=r
        )
        self.held = Gauge(
            "kubellm_gateway_requests_held", "Requests held while the model wakes or starts", ["model"], registry=r
        )
        self.hold_seconds = Histogram(
            "kubellm_gateway_hold_seconds", "How long requests were held", ["model"], buckets=_HOLD_BUCKETS, registry=r
        )
        self.upstream_latency = Histogram(
            "kubellm_gateway_upstream_latency_seconds",
            "From sending a request to a pod to its first byte back",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.routing_errors = Counter(
            "kubellm_gateway_routing_errors",
            "Attempts and requests that did not reach an answer from a pod, by reason",
            ["model", "reason"],
            registry=r,
        )
