"""The declared-metrics check (what the gateway's expressions are held to until the gateway can be scraped here),
against real prometheus_client registries: the metric names and labels of the issue-20 contract pass, a renamed
metric or label fails naming the panel. Also: the operator's and the server's own registries declare every metric
the dashboards and rules read from them (a fast check that runs without Prometheus)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kubellm_inference.metrics import ServerMetrics
from kubellm_inference.progress import LoadProgress, ProgressCollector
from kubellm_monitoring.contract import Expression, Lookup, check, expressions, metrics_read, registry_lookup
from kubellm_operator.metrics import OperatorMetrics

GATEWAY_TARGET = frozenset({"job", "instance", "namespace", "pod"})
OPERATOR_TARGET = frozenset({"job", "instance"})
INFERENCE_TARGET = frozenset({"job", "instance", "namespace", "pod", "container", "endpoint", "llmservice"})


def gateway_registry(
    *, requests: str = "kubellm_gateway_requests", held_labels: tuple[str, ...] = ("model",)
) -> CollectorRegistry:
    """The gateway's metrics as the brief's contract names them."""
    r = CollectorRegistry()
    Counter(requests, "requests", ["model", "code"], registry=r)
    Gauge("kubellm_gateway_requests_in_flight", "in flight", ["model"], registry=r)
    Gauge("kubellm_gateway_requests_held", "held", list(held_labels), registry=r)
    Histogram("kubellm_gateway_hold_seconds", "hold", ["model"], registry=r)
    Histogram("kubellm_gateway_upstream_latency_seconds", "upstream", ["model"], registry=r)
    Counter("kubellm_gateway_routing_errors", "routing errors", ["model", "reason"], registry=r)
    return r


def autoscaler_registry() -> CollectorRegistry:
    r = CollectorRegistry()
    for name in (
        "kubellm_autoscaling_desired_replicas",
        "kubellm_autoscaling_demand",
        "kubellm_autoscaling_signal_missing",
    ):
        Gauge(name, name, ["namespace", "name"], registry=r)
    return r


def gateway_expressions() -> list[Expression]:
    return [
        e
        for e in expressions()
        if any(m.startswith(("kubellm_gateway_", "kubellm_autoscaling_")) for m in metrics_read([e]))
    ]


def lookup_of(*lookups: Lookup) -> Lookup:
    def lookup(metric: str) -> Sequence[Mapping[str, str]]:
        return [series for one in lookups for series in one(metric)]

    return lookup


def test_the_contracts_gateway_and_autoscaler_metrics_satisfy_the_gateway_dashboard() -> None:
    lookup = lookup_of(
        registry_lookup(gateway_registry(), GATEWAY_TARGET),
        registry_lookup(autoscaler_registry(), OPERATOR_TARGET),
        registry_lookup(OperatorMetrics().registry, OPERATOR_TARGET),
    )
    exprs = gateway_expressions()
    assert len(exprs) >= 10
    assert check(exprs, lookup) == []


def test_a_renamed_gateway_metric_or_label_fails_naming_the_panel() -> None:
    lookup = lookup_of(
        registry_lookup(
            gateway_registry(requests="kubellm_gateway_http_requests", held_labels=("service",)), GATEWAY_TARGET
        ),
        registry_lookup(autoscaler_registry(), OPERATOR_TARGET),
        registry_lookup(OperatorMetrics().registry, OPERATOR_TARGET),
    )
    problems = check(gateway_expressions(), lookup)
    assert (
        "dashboard kubellm-gateway.json, panel 'Requests by model and code' (A): kubellm_gateway_requests_total is not emitted (no series)"
        in problems
    )
    assert (
        "dashboard kubellm-gateway.json, variable 'model': kubellm_gateway_requests_total is not emitted (no series)"
        in problems
    )
    assert any(
        p.startswith(
            "dashboard kubellm-gateway.json, panel 'Held and in-flight requests' (A): kubellm_gateway_requests_held has no label 'model'"
        )
        for p in problems
    ), problems


def test_the_operator_and_server_registries_declare_what_the_dashboards_read() -> None:
    """Without Prometheus: every expression that reads the operator's or the server's metrics finds them declared
    with the labels it uses (the contract test then proves they are scraped under those names)."""
    server = ServerMetrics()
    server.registry.register(ProgressCollector(LoadProgress()))
    lookup = lookup_of(
        registry_lookup(OperatorMetrics().registry, OPERATOR_TARGET),
        registry_lookup(server.registry, INFERENCE_TARGET),
    )
    exprs = [e for e in expressions() if e not in gateway_expressions() and "up{" not in e.expr]
    problems = check(exprs, lookup)
    assert problems == [], "\n".join(problems)
