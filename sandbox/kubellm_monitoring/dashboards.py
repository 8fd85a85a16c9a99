"""The Grafana dashboards, one per audience, built as plain data (pure, deterministic) and written as JSON files.

The JSON files under deploy/components/monitoring/dashboards are generated from here (`kubellm monitoring
dashboards`) and drift-tested, as the CRD is; kustomize's configMapGenerator turns the same files into the
ConfigMaps that Grafana's sidecar loads. Every expression here is checked against the metrics that the operator, the
inference server and the gateway emit (tests/monitoring).

Label names: the inference pods' series carry ``namespace``, ``pod`` and ``llmservice`` (the pod label
``kubellm.dev/llmservice``, copied by the PodMonitor); the operator's per-LLMService series carry ``namespace``
and ``name`` of their own (the PodMonitor honours them); the gateway's carry ``model`` (``NAMESPACE/NAME``).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Probe and scrape routes are not traffic: the request panels leave them out.
NOT_TRAFFIC = 'route!~"/healthz|/readyz|/livez|/metrics|/loadz|unmatched"'
SERVING = 'namespace=~"$namespace", llmservice=~"$llmservice"'
OPERATOR_SERVICE = 'namespace=~"$namespace", name=~"$llmservice"'
GATEWAY = 'model=~"$model"'
RATE = "$__rate_interval"


@dataclasses.dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    instant: bool = False


@dataclasses.dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"  # timeseries, stat, table
    description: str = ""
    width: int = 12


def quantiles(metric: str, selector: str, by: str = "", qs: tuple[float, ...] = (0.5, 0.95, 0.99)) -> tuple[Query, ...]:
    group = f"le, {by}" if by else "le"
    suffix = f" {{{{{by}}}}}" if by else ""
    return tuple(
        Query(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{selector}}}[{RATE}])))",
            f"p{round(q * 100)}{suffix}",
        )
        for q in qs
    )


SERVING_PANELS = (
    Panel(
        "Requests by status code",
        (Query(f"sum by (status) (rate(kubellm_requests_total{{{SERVING}, {NOT_TRAFFIC}}}[{RATE}]))", "{{status}}"),),
        unit="reqps",
        description="Inference requests answered per second, by HTTP status (probes and scrapes left out).",
    ),
    Panel(
        "Errors (5xx) and refusals (429), share of requests",
        (
            Query(
                f'sum(rate(kubellm_requests_total{{{SERVING}, {NOT_TRAFFIC}, status=~"5.."}}[{RATE}]))'
                f" / sum(rate(kubellm_requests_total{{{SERVING}, {NOT_TRAFFIC}}}[{RATE}]))",
                "5xx",
            ),
            Query(
                f'sum(rate(kubellm_requests_total{{{SERVING}, {NOT_TRAFFIC}, status="429"}}[{RATE}]))'
                f" / sum(rate(kubellm_requests_total{{{SERVING}, {NOT_TRAFFIC}}}[{RATE}]))",
                "429 (queue full)",
            ),
        ),
        unit="percentunit",
    ),
    Panel(
        "Time to first token",
        quantiles("kubellm_time_to_first_token_seconds", SERVING),
        unit="s",
        description="From a request entering the queue to its first generated token.",
    ),
    Panel(
        "Request latency by route",
        quantiles("kubellm_request_duration_seconds", f"{SERVING}, {NOT_TRAFFIC}", by="route", qs=(0.5, 0.95)),
        unit="s",
        description="Until the last byte of the answer.",
    ),
    Panel(
        "Tokens per second",
        (
            Query(f"sum(rate(kubellm_generated_tokens_total{{{SERVING}}}[{RATE}]))", "generated"),
            Query(f"sum(rate(kubellm_prompt_tokens_total{{{SERVING}}}[{RATE}]))", "prompt"),
        ),
        unit="short",
    ),
    Panel(
        "Queue depth and batch size",
        (
            Query(f"sum by (pod) (kubellm_queue_depth{{{SERVING}}})", "queued {{pod}}"),
            Query(f"sum by (pod) (kubellm_batch_size{{{SERVING}}})", "batch {{pod}}"),
            Query(f"max(kubellm_queue_capacity{{{SERVING}}})", "queue capacity"),
        ),
        description="Requests waiting to join the batch, in the running batch, and the queue's bound (429 beyond).",
    ),
    Panel(
        "Replicas: desired and ready",
        (
            Query(f"sum by (name) (kubellm_llmservice_replicas{{{OPERATOR_SERVICE}}})", "desired {{name}}"),
            Query(f"sum by (name) (kubellm_llmservice_ready_replicas{{{OPERATOR_SERVICE}}})", "ready {{name}}"),
            Query(f"sum by (llmservice) (kubellm_ready{{{SERVING}}})", "serving {{llmservice}}"),
        ),
        description="From the operator's status (desired, ready pods) and from the servers themselves (model loaded).",
    ),
    Panel(
        "Load phase of each pod",
        (Query(f"max by (pod, phase) (kubellm_load_phase{{{SERVING}}}) == 1", "{{pod}}: {{phase}}"),),
        kind="state-timeline",
        description="Where each pod's model load is: starting, resolving, downloading, converting, loading, warming up, "
        "ready (or failed).",
    ),
    Panel(
        "Download progress of loading pods",
        (
            Query(
                f"max by (pod) (kubellm_download_bytes{{{SERVING}}})"
                f" / max by (pod) (kubellm_download_total_bytes{{{SERVING}}} > 0)",
                "{{pod}}",
            ),
        ),
        unit="percentunit",
    ),
    Panel(
        "Download rate",
        (
            Query(f"max by (pod) (kubellm_download_bytes_per_second{{{SERVING}}})", "{{pod}}"),
            Query(f"sum by (pod) (increase(kubellm_download_restarts_total{{{SERVING}}}[1h]))", "restarts {{pod}}"),
        ),
        unit="Bps",
    ),
    Panel(
        "Conditions",
        (
            Query(
                f"max by (namespace, name, type, status, reason) (kubellm_llmservice_condition{{{OPERATOR_SERVICE}}})",
                instant=True,
            ),
        ),
        kind="table",
        width=24,
        description="Each LLMService's conditions as in kubectl describe: type, status and the one-word reason.",
    ),
)

OPERATOR_PANELS = (
    Panel(
        "Reconcile passes by outcome",
        (Query(f"sum by (outcome) (rate(kubellm_operator_reconciles_total[{RATE}]))", "{{outcome}}"),),
        unit="ops",
    ),
    Panel("Reconcile duration", quantiles("kubellm_operator_reconcile_duration_seconds", ""), unit="s"),
    Panel(
        "API errors by kind",
        (Query(f"sum by (kind) (rate(kubellm_operator_errors_total[{RATE}]))", "{{kind}}"),),
        unit="ops",
    ),
    Panel(
        "Refused and degraded LLMServices by reason",
        (
            Query(
                'count by (reason) (kubellm_llmservice_condition{type="Degraded", status="True"})',
                "{{reason}}",
            ),
        ),
        description="NotAllowed, ChildRejected, Forbidden, QuotaExceeded, InvalidSpec, ...: docs/operator.md.",
    ),
    Panel(
        "Writes to the API",
        (Query(f"sum by (target) (rate(kubellm_operator_writes_total[{RATE}]))", "{{target}}"),),
        unit="wps",
    ),
    Panel(
        "Work queue",
        (
            Query("max(kubellm_operator_queue_length)", "queued"),
            Query("max(kubellm_operator_queue_overdue_seconds)", "oldest due pass waiting (s)"),
        ),
    ),
    Panel(
        "Storage warnings",
        (
            Query("sum(increase(kubellm_operator_storage_warnings_total[1h]))", "warnings raised (1h)"),
            Query(
                'count(kubellm_llmservice_condition{type="StorageReady", status="False"}) or vector(0)',
                "LLMServices with StorageReady=False",
            ),
        ),
    ),
    Panel("LLMServices by phase", (Query("sum by (phase) (kubellm_llmservices)", "{{phase}}"),)),
    Panel(
        "Degraded LLMServices, and why",
        (
            Query(
                'max by (namespace, name, reason) (kubellm_llmservice_condition{type="Degraded", status="True"})',
                instant=True,
            ),
        ),
        kind="table",
        width=24,
    ),
)

GATEWAY_PANELS = (
    Panel(
        "Requests by model and code",
        (
            Query(
                f"sum by (model, code) (rate(kubellm_gateway_requests_total{{{GATEWAY}}}[{RATE}]))",
                "{{model}} {{code}}",
            ),
        ),
        unit="reqps",
    ),
    Panel(
        "Held and in-flight requests",
        (
            Query(f"sum by (model) (kubellm_gateway_requests_held{{{GATEWAY}}})", "held {{model}}"),
            Query(f"sum by (model) (kubellm_gateway_requests_in_flight{{{GATEWAY}}})", "in flight {{model}}"),
        ),
        description="Held: waiting for a ready replica (scale from zero); in flight: sent upstream.",
    ),
    Panel("Hold time", quantiles("kubellm_gateway_hold_seconds", GATEWAY, by="model", qs=(0.5, 0.95)), unit="s"),
    Panel(
        "Upstream latency (to first byte)",
        quantiles("kubellm_gateway_upstream_latency_seconds", GATEWAY, by="model", qs=(0.5, 0.95)),
        unit="s",
    ),
    Panel(
        "Routing errors by reason",
        (
            Query(
                f"sum by (model, reason) (rate(kubellm_gateway_routing_errors_total{{{GATEWAY}}}[{RATE}]))",
                "{{model}} {{reason}}",
            ),
        ),
        unit="ops",
    ),
    Panel(
        "Autoscaler: demand, desired and ready replicas",
        (
            Query("sum by (namespace, name) (kubellm_autoscaling_demand)", "demand {{namespace}}/{{name}}"),
            Query("sum by (namespace, name) (kubellm_autoscaling_desired_replicas)", "desired {{namespace}}/{{name}}"),
            Query("sum by (namespace, name) (kubellm_llmservice_ready_replicas)", "ready {{namespace}}/{{name}}"),
        ),
    ),
    Panel(
        "Autoscaler signal missing",
        (Query("max by (namespace, name) (kubellm_autoscaling_signal_missing) == 1", "{{namespace}}/{{name}}"),),
        description="1 while the autoscaler has no demand signal for an LLMService (it then keeps the replicas).",
    ),
)


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"var-{name}"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


DATASOURCE_VARIABLE = {
    "name": "datasource",
    "label": "Prometheus",
    "type": "datasource",
    "query": "prometheus",
    "current": {},
}


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    height = 8
    body: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {},
        "targets": [
            {
                "refId": chr(ord("A") + index),
                "datasource": DATASOURCE,
                "expr": query.expr,
                "legendFormat": query.legend or "__auto",
                "instant": query.instant,
                "range": not query.instant,
                **({"format": "table"} if panel.kind == "table" else {}),
            }
            for index, query in enumerate(panel.queries)
        ],
    }
    if panel.kind == "table":
        body["transformations"] = [{"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True}}}]
    return body


def dashboard(uid: str, title: str, panels: tuple[Panel, ...], variables: list[dict[str, Any]]) -> dict[str, Any]:
    laid_out = []
    x = y = 0
    for panel_id, panel in enumerate(panels, start=1):
        if x + panel.width > 24:
            x, y = 0, y + 8
        laid_out.append(_panel(panel, panel_id, x, y))
        x += panel.width
    return {
        "uid": uid,
        "title": title,
        "tags": ["kubellm"],
        "timezone": "browser",
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "templating": {"list": [DATASOURCE_VARIABLE, *variables]},
        "annotations": {"list": []},
        "panels": laid_out,
    }


def dashboards() -> dict[str, dict[str, Any]]:
    """File name → dashboard."""
    namespace = _variable("namespace", "Namespace", "label_values(kubellm_llmservice_condition, namespace)")
    llmservice = _variable(
        "llmservice", "LLMService", 'label_values(kubellm_llmservice_condition{namespace=~"$namespace"}, name)'
    )
    model = _variable("model", "Model", "label_values(kubellm_gateway_requests_total, model)")
    return {
        "kubellm-serving.json": dashboard(
            "kubellm-serving", "kubellm / Serving", SERVING_PANELS, [namespace, llmservice]
        ),
        "kubellm-operator.json": dashboard("kubellm-operator", "kubellm / Operator", OPERATOR_PANELS, []),
        "kubellm-gateway.json": dashboard(
            "kubellm-gateway", "kubellm / Gateway and autoscaling", GATEWAY_PANELS, [model]
        ),
    }


def render(board: dict[str, Any]) -> str:
    return json.dumps(board, indent=2, sort_keys=True) + "\n"


def write(directory: pathlib.Path) -> list[pathlib.Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, board in dashboards().items():
        path = directory / name
        path.write_text(render(board))
        written.append(path)
    return written
