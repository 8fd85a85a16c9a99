"""The LimitRanger admission plugin for pods' containers (plugin/pkg/admission/limitranger/admission.go).

For each LimitRange item of `type: Container` in the pod's namespace: a container that does not declare a resource
gets the item's `defaultRequest` (which defaults to `default`, as SetDefaults_LimitRange does) as its request and
`default` as its limit (`defaultContainerResourceRequirements`, `mergeContainerResources`), recorded in the pod's
`kubernetes.io/limit-ranger` annotation; then the item's `min`, `max` and `maxLimitRequestRatio` are checked
(`PodValidateLimitFunc`: `minConstraint`, `maxConstraint`, `limitRequestRatioConstraint`) and a violation is the
plugin's 403, e.g. `pods "x" is forbidden: maximum ephemeral-storage usage per Container is 50Gi, but limit is 60Gi`.
It runs before ResourceQuota, as in the apiserver's admission order, so a quota counts the defaulted values.

Not emulated: `type: Pod` and `type: PersistentVolumeClaim` items.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kubellm_emulator.errors import ApiError
from kubellm_emulator.validation import canonical_quantity, quantity_value

JsonObject = dict[str, Any]


def _container_items(limit_ranges: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    items: list[Mapping[str, Any]] = []
    for limit_range in sorted(limit_ranges, key=lambda lr: lr["metadata"]["name"]):
        limits = (limit_range.get("spec") or {}).get("limits") or []
        items.extend(item for item in limits if isinstance(item, dict) and item.get("type") == "Container")
    return items


def _set_defaults(pod: JsonObject, items: list[Mapping[str, Any]]) -> None:
    spec = pod.get("spec") or {}
    notes: list[str] = []
    for kind, field in (("init container", "initContainers"), ("container", "containers")):
        for container in spec.get(field) or []:
            resources = container.setdefault("resources", {})
            set_requests: list[str] = []
            set_limits: list[str] = []
            for item in items:
                default_requests = {**(item.get("default") or {}), **(item.get("defaultRequest") or {})}
                for name, value in default_requests.items():
                    if name not in (resources.get("requests") or {}):
                        resources.setdefault("requests", {})[name] = value
                        set_requests.append(name)
                for name, value in (item.get("default") or {}).items():
                    if name not in (resources.get("limits") or {}):
                        resources.setdefault("limits", {})[name] = value
                        set_limits.append(name)
            name = container.get("name", "")
            if set_requests:
                notes.append(f"{', '.join(set_requests)} request for {kind} {name}")
            if set_limits:
                notes.append(f"{', '.join(set_limits)} limit for {kind} {name}")
    if notes:
        annotations = pod.setdefault("metadata", {}).setdefault("annotations", {})
        annotations["kubernetes.io/limit-ranger"] = "LimitRanger plugin set: " + "; ".join(notes)


def _check(kind: str, resources: Mapping[str, Any], item: Mapping[str, Any]) -> list[str]:
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    problems: list[str] = []
    for name, bound in (item.get("min") or {}).items():
        shown, low = canonical_quantity(bound), quantity_value(bound)
        if name not in requests:
            problems.append(f"minimum {name} usage per {kind} is {shown}.  No request is specified")
        elif quantity_value(requests[name]) < low:
            problems.append(
                f"minimum {name} usage per {kind} is {shown}, but request is {canonical_quantity(requests[name])}"
            )
        elif name in limits and quantity_value(limits[name]) < low:
            problems.append(
                f"minimum {name} usage per {kind} is {shown}, but limit is {canonical_quantity(limits[name])}"
            )
    for name, bound in (item.get("max") or {}).items():
        shown, high = canonical_quantity(bound), quantity_value(bound)
        if name not in limits:
            problems.append(f"maximum {name} usage per {kind} is {shown}.  No limit is specified")
        elif quantity_value(limits[name]) > high:
            problems.append(
                f"maximum {name} usage per {kind} is {shown}, but limit is {canonical_quantity(limits[name])}"
            )
        elif name in requests and quantity_value(requests[name]) > high:
            problems.append(
                f"maximum {name} usage per {kind} is {shown}, but request is {canonical_quantity(requests[name])}"
            )
    for name, ratio in (item.get("maxLimitRequestRatio") or {}).items():
        if name not in limits:
            continue
        request = quantity_value(requests[name]) if name in requests else 0
        shown = canonical_quantity(ratio)
        if request <= 0:
            problems.append(
                f"{name} max limit to request ratio per {kind} is {shown}, but no request is specified or request is 0"
            )
        elif quantity_value(limits[name]) / request > quantity_value(ratio):
            observed = float(quantity_value(limits[name]) / request)
            problems.append(
                f"{name} max limit to request ratio per {kind} is {shown}, but provided ratio is {observed:f}"
            )
    return problems


def admit_pod(pod: JsonObject, limit_ranges: Iterable[Mapping[str, Any]]) -> None:
    """Sets the defaults on `pod` (in place); raises the 403 when a container is outside an item's bounds."""
    items = _container_items(limit_ranges)
    if not items:
        return
    _set_defaults(pod, items)
    spec = pod.get("spec") or {}
    problems = [
        problem
        for item in items
        for container in (spec.get("initContainers") or []) + (spec.get("containers") or [])
        for problem in _check("Container", container.get("resources") or {}, item)
    ]
    if problems:
        name = (pod.get("metadata") or {}).get("name", "")
        why = problems[0] if len(problems) == 1 else "[" + ", ".join(problems) + "]"  # utilerrors.NewAggregate
        raise ApiError(403, "Forbidden", f'pods "{name}" is forbidden: {why}', details={"name": name, "kind": "pods"})
