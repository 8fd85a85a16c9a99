"""`meta.k8s.io/v1` Table responses for `kubectl get`: CRD printer columns, and the built-in kinds' usual columns."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from typing import Any

from kubellm_emulator.jsonpath import JsonPathError, evaluate
from kubellm_emulator.resources import ResourceType

JsonObject = dict[str, Any]
Cell = Any


def human_age(timestamp: str | None, now: datetime.datetime | None = None) -> str:
    """kubectl's duration.HumanDuration of the time since `timestamp` (e.g. 45s, 3m2s, 5h, 2d3h)."""
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return "<invalid>"
    seconds = int(((now or datetime.datetime.now(datetime.UTC)) - then).total_seconds())
    if seconds < -1:
        return "<invalid>"
    seconds = max(seconds, 0)
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if hours < 3:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years = days // 365
    return f"{years}y{days % 365}d" if years < 8 else f"{years}y"


def _column(name: str, kind: str = "string", *, priority: int = 0, description: str = "", fmt: str = "") -> JsonObject:
    return {"name": name, "type": kind, "format": fmt, "description": description or name, "priority": priority}


NAME_COLUMN = _column("Name", fmt="name", description="Name must be unique within a namespace.")
AGE_COLUMN = _column("Age", description="The time since the object was created.")


def _age(obj: JsonObject) -> str:
    return human_age(obj["metadata"].get("creationTimestamp"))


def _condition(obj: JsonObject, kind: str) -> JsonObject:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return {}


def _pod_status(pod: JsonObject) -> str:
    status = pod.get("status") or {}
    if pod["metadata"].get("deletionTimestamp"):
        return "Terminating"
    reason = status.get("reason") or status.get("phase") or "Unknown"
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        if "waiting" in state and state["waiting"].get("reason"):
            return str(state["waiting"]["reason"])
        if "terminated" in state and state["terminated"].get("reason"):
            return str(state["terminated"]["reason"])
    return str(reason)


def _pod_ready(pod: JsonObject) -> str:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    total = len((pod.get("spec") or {}).get("containers") or []) or len(statuses)
    return f"{sum(1 for s in statuses if s.get('ready'))}/{total}"


def _ports(service: JsonObject) -> str:
    ports = (service.get("spec") or {}).get("ports") or []
    return ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in ports) or "<none>"


def _node_status(node: JsonObject) -> str:
    ready = _condition(node, "Ready").get("status") == "True"
    text = "Ready" if ready else "NotReady"
    if (node.get("spec") or {}).get("unschedulable"):
        text += ",SchedulingDisabled"
    return text


BuiltinColumns = list[tuple[JsonObject, Callable[[JsonObject], Cell]]]

_BUILTIN: dict[tuple[str, str], BuiltinColumns] = {
    ("", "namespaces"): [
        (_column("Status"), lambda o: (o.get("status") or {}).get("phase", "")),
    ],
    ("", "nodes"): [
        (_column("Status"), _node_status),
        (_column("Roles"), lambda o: "<none>"),
        (AGE_COLUMN, _age),
        (_column("Version"), lambda o: ((o.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion", "")),
    ],
    ("", "pods"): [
        (_column("Ready"), _pod_ready),
        (_column("Status"), _pod_status),
        (
            _column("Restarts", "integer"),
            lambda o: sum(s.get("restartCount", 0) for s in (o.get("status") or {}).get("containerStatuses") or []),
        ),
        (AGE_COLUMN, _age),
        (_column("IP", priority=1), lambda o: (o.get("status") or {}).get("podIP") or "<none>"),
        (_column("Node", priority=1), lambda o: (o.get("spec") or {}).get("nodeName") or "<none>"),
    ],
    ("", "services"): [
        (_column("Type"), lambda o: (o.get("spec") or {}).get("type", "ClusterIP")),
        (_column("Cluster-IP"), lambda o: (o.get("spec") or {}).get("clusterIP", "<none>")),
        (_column("External-IP"), lambda o: "<none>"),
        (_column("Port(s)"), _ports),
        (AGE_COLUMN, _age),
    ],
    ("apps", "deployments"): [
        (
            _column("Ready"),
            lambda o: f"{(o.get('status') or {}).get('readyReplicas', 0)}/{(o.get('spec') or {}).get('replicas', 1)}",
        ),
        (_column("Up-to-date", "integer"), lambda o: (o.get("status") or {}).get("updatedReplicas", 0)),
        (_column("Available", "integer"), lambda o: (o.get("status") or {}).get("availableReplicas", 0)),
        (AGE_COLUMN, _age),
    ],
    ("apps", "replicasets"): [
        (_column("Desired", "integer"), lambda o: (o.get("spec") or {}).get("replicas", 0)),
        (_column("Current", "integer"), lambda o: (o.get("status") or {}).get("replicas", 0)),
        (_column("Ready", "integer"), lambda o: (o.get("status") or {}).get("readyReplicas", 0)),
        (AGE_COLUMN, _age),
    ],
    ("", "events"): [
        (_column("Last Seen"), lambda o: human_age(o.get("lastTimestamp") or o["metadata"].get("creationTimestamp"))),
        (_column("Type"), lambda o: o.get("type", "")),
        (_column("Reason"), lambda o: o.get("reason", "")),
        (
            _column("Object"),
            lambda o: (
                f"{(o.get('involvedObject') or {}).get('kind', '').lower()}/{(o.get('involvedObject') or {}).get('name', '')}"
            ),
        ),
        (_column("Message"), lambda o: o.get("message", "")),
    ],
    ("", "configmaps"): [
        (_column("Data", "integer"), lambda o: len(o.get("data") or {}) + len(o.get("binaryData") or {})),
        (AGE_COLUMN, _age),
    ],
    ("", "secrets"): [
        (_column("Type"), lambda o: o.get("type", "Opaque")),
        (_column("Data", "integer"), lambda o: len(o.get("data") or {})),
        (AGE_COLUMN, _age),
    ],
    ("apiextensions.k8s.io", "customresourcedefinitions"): [
        (_column("Created At", "date"), lambda o: o["metadata"].get("creationTimestamp", "")),
    ],
}


def _custom_cell(column: JsonObject, obj: JsonObject) -> Cell:
    try:
        values = evaluate(column.get("jsonPath", ""), obj)
    except JsonPathError:
        return None
    if not values:
        return None
    kind = column.get("type", "string")
    value = values[0] if len(values) == 1 else ",".join(_text(v) for v in values)
    if kind == "date":
        return human_age(value if isinstance(value, str) else None)
    if kind in ("integer", "number") and isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if kind == "boolean" and isinstance(value, bool):
        return value
    return _text(value)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _row_object(obj: JsonObject, include: str) -> JsonObject | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}


def render_table(
    rtype: ResourceType,
    items: list[JsonObject],
    *,
    list_metadata: JsonObject,
    include_object: str = "Metadata",
) -> JsonObject:
    """A Table of `items`; `priority` > 0 columns are shown by kubectl only with `-o wide`."""
    columns: list[JsonObject]
    cells: Callable[[JsonObject], list[Cell]]
    if rtype.custom and rtype.printer_columns:
        specs = list(rtype.printer_columns)
        columns = [NAME_COLUMN] + [
            _column(
                spec["name"],
                "string" if spec.get("type") == "date" else spec.get("type", "string"),
                priority=int(spec.get("priority", 0)),
                description=spec.get("description", ""),
                fmt=spec.get("format", ""),
            )
            for spec in specs
        ]

        def cells(obj: JsonObject) -> list[Cell]:
            return [obj["metadata"]["name"]] + [_custom_cell(spec, obj) for spec in specs]

    else:
        builtin = _BUILTIN.get((rtype.group, rtype.plural))
        if builtin is None:
            builtin = [(AGE_COLUMN, _age)]
        if (rtype.group, rtype.plural) == ("", "namespaces"):
            builtin = [*builtin, (AGE_COLUMN, _age)]
        columns = [NAME_COLUMN] + [column for column, _ in builtin]

        def cells(obj: JsonObject) -> list[Cell]:
            return [obj["metadata"]["name"]] + [getter(obj) for _, getter in builtin]

    if (rtype.group, rtype.plural) == ("", "events"):
        # kubectl's event table leads with Last Seen; the object's name is not a column there.
        columns = columns[1:]
        original = cells

        def cells(obj: JsonObject) -> list[Cell]:
            return original(obj)[1:]

    rows = []
    for obj in items:
        row: JsonObject = {"cells": cells(obj)}
        embedded = _row_object(obj, include_object)
        if embedded is not None:
            row["object"] = embedded
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_metadata,
        "columnDefinitions": columns,
        "rows": rows,
    }
