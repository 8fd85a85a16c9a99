"""The Prometheus operator's CRD schemas (monitoring.coreos.com/v1 PodMonitor and PrometheusRule), for the fields
deploy/components/monitoring uses, as JSON Schema.

No PyPI package ships these schemas (kubernetes-validate has the built-in kinds only), and the CRD files are not
vendored here, so this is written from the published CRDs: prometheus-operator/prometheus-operator,
example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml and monitoring.coreos.com_prometheusrules.yaml
at operator version 0.93.0 (commit 6adcebc50). Types, enums, patterns, bounds and required fields are theirs. Every
object is closed (additionalProperties: false) over the fields the CRD defines at that level that this repository
may use: kubectl's default field validation (Strict) refuses unknown fields, so a misspelt field must fail here too.
A field the component starts to use must be added here from the CRD, with its CRD type.
"""

from __future__ import annotations

from typing import Any

DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
RELABEL_ACTIONS = [
    "replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod", "labelmap", "LabelMap",
    "labeldrop", "LabelDrop", "labelkeep", "LabelKeep", "lowercase", "Lowercase", "uppercase", "Uppercase",
    "keepequal", "KeepEqual", "dropequal", "DropEqual",
]  # fmt: skip


def closed(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


METADATA = closed(
    {
        "name": {"type": "string", "minLength": 1},
        "namespace": {"type": "string"},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
    ["name"],
)
RELABEL = closed(
    {
        "action": {"type": "string", "enum": RELABEL_ACTIONS},
        "modulus": {"type": "integer", "minimum": 0},
        "regex": {"type": "string"},
        "replacement": {"type": "string"},
        "separator": {"type": "string"},
        "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "targetLabel": {"type": "string"},
    }
)
LABEL_SELECTOR = closed(
    {
        "matchLabels": STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": closed(
                {
                    "key": {"type": "string"},
                    "operator": {"type": "string"},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
                ["key", "operator"],
            ),
        },
    }
)
POD_METRICS_ENDPOINT = closed(
    {
        "port": {"type": "string"},
        "portNumber": {"type": "integer", "minimum": 1, "maximum": 65535},
        "path": {"type": "string"},
        "scheme": {"type": "string"},
        "interval": DURATION,
        "scrapeTimeout": DURATION,
        "honorLabels": {"type": "boolean"},
        "honorTimestamps": {"type": "boolean"},
        "relabelings": {"type": "array", "items": RELABEL},
        "metricRelabelings": {"type": "array", "items": RELABEL},
    }
)
POD_MONITOR = closed(
    {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": METADATA,
        "spec": closed(
            {
                "jobLabel": {"type": "string"},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "namespaceSelector": closed(
                    {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}
                ),
                "selector": LABEL_SELECTOR,
                "podMetricsEndpoints": {"type": "array", "items": POD_METRICS_ENDPOINT},
            },
            ["selector"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)
RULE = closed(
    {
        "alert": {"type": "string"},
        "record": {"type": "string"},
        "expr": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
        "for": DURATION,
        "keep_firing_for": {**DURATION, "minLength": 1},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
    ["expr"],
)
PROMETHEUS_RULE = closed(
    {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": METADATA,
        "spec": closed(
            {
                "groups": {
                    "type": "array",
                    "items": closed(
                        {
                            "name": {"type": "string", "minLength": 1},
                            "interval": DURATION,
                            "labels": STRING_MAP,
                            "limit": {"type": "integer"},
                            "rules": {"type": "array", "items": RULE},
                        },
                        ["name"],
                    ),
                }
            }
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)
SCHEMAS = {"PodMonitor": POD_MONITOR, "PrometheusRule": PROMETHEUS_RULE}
