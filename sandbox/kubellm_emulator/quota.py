"""ResourceQuota admission of pods, as kube-apiserver's ResourceQuota plugin and the pod quota evaluator do it.

A pod is refused when, added to the usage of the namespace's other non-terminal pods, it would go over a quota's
`spec.hard` (plugin/pkg/admission/resourcequota `checkRequest`):
`pods "x" is forbidden: exceeded quota: NAME, requested: requests.ephemeral-storage=60Gi, used: ..., limited: ...`;
a quota on cpu or memory also needs every container to declare it (`podEvaluator.Constraints`):
`pods "x" is forbidden: failed quota: NAME: must specify limits.cpu for: server`.

Counted (pkg/quota/v1/evaluator/core/pods.go `PodUsageFunc`): `pods`, `count/pods`, `requests.cpu`/`cpu`,
`requests.memory`/`memory`, `requests.ephemeral-storage`/`ephemeral-storage`, `limits.cpu`, `limits.memory`,
`limits.ephemeral-storage`, extended `requests.<name>`; per resource the larger of the containers' sum and the
largest init container. Failed and Succeeded pods count for nothing. Usage is recomputed from the stored pods (the
quota controller's answer), and written to the quota's `status` (`hard`, `used`).
Not emulated: quota scopes and scope selectors (such quotas are ignored), object-count quotas other than pods.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from kubellm_emulator.errors import ApiError
from kubellm_emulator.validation import canonical_quantity, quantity_value

JsonObject = dict[str, Any]
# What a quota on these requires each container to declare (the pod evaluator's validationSet).
_MUST_DECLARE = {"cpu", "memory", "requests.cpu", "requests.memory", "limits.cpu", "limits.memory"}
_ALIASES = {"cpu": "requests.cpu", "memory": "requests.memory", "ephemeral-storage": "requests.ephemeral-storage"}


def _is_terminal(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Failed", "Succeeded")


def _sum_containers(pod: Mapping[str, Any], section: str) -> dict[str, Decimal]:
    spec = pod.get("spec") or {}
    total: dict[str, Decimal] = {}
    for container in spec.get("containers") or []:
        for name, value in ((container.get("resources") or {}).get(section) or {}).items():
            total[name] = total.get(name, Decimal(0)) + quantity_value(value)
    for container in spec.get("initContainers") or []:
        for name, value in ((container.get("resources") or {}).get(section) or {}).items():
            total[name] = max(total.get(name, Decimal(0)), quantity_value(value))
    return total


def pod_usage(pod: Mapping[str, Any]) -> dict[str, Decimal]:
    """PodUsageFunc: what one pod counts against a quota."""
    if _is_terminal(pod):
        return {}
    usage: dict[str, Decimal] = {"pods": Decimal(1), "count/pods": Decimal(1)}
    requests, limits = _sum_containers(pod, "requests"), _sum_containers(pod, "limits")
    for name, value in requests.items():
        usage[f"requests.{name}"] = value
        if name in ("cpu", "memory", "ephemeral-storage"):
            usage[name] = value
    for name, value in limits.items():
        if name in ("cpu", "memory", "ephemeral-storage"):
            usage[f"limits.{name}"] = value
    return usage


def _missing_declarations(pod: Mapping[str, Any], hard: Iterable[str]) -> str:
    required = set(hard) & _MUST_DECLARE
    missing: dict[str, list[str]] = {}
    spec = pod.get("spec") or {}
    for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        resources = container.get("resources") or {}
        for resource in required:
            section, _, name = resource.rpartition(".")
            section = {"": "requests", "requests": "requests", "limits": "limits"}[section]
            if name not in (resources.get(section) or {}):
                missing.setdefault(resource, []).append(container.get("name", ""))
    return "; ".join(f"{resource} for: {','.join(sorted(set(names)))}" for resource, names in sorted(missing.items()))


def _pretty(values: Mapping[str, str]) -> str:
    """quota.prettyPrint: sorted `name=quantity` pairs."""
    return ",".join(f"{name}={values[name]}" for name in sorted(values))


def _shown(value: Decimal, like: str) -> str:
    """A computed quantity in the format of the quota's limit (`like`): binary units for a limit in Gi, Mi, ..."""
    if value == 0:
        return "0"
    if str(like).strip().endswith("i") and value == value.to_integral_value() and int(value) % 1024 == 0:
        return canonical_quantity(f"{int(value) // 1024}Ki")
    return canonical_quantity(format(value.normalize(), "f"))


def usage_of(pods: Iterable[Mapping[str, Any]], hard: Mapping[str, Any]) -> dict[str, str]:
    """A quota's `status.used`: the namespace's pods' usage of each resource the quota limits."""
    used = {name: Decimal(0) for name in hard}
    for pod in pods:
        usage = pod_usage(pod)
        for name in hard:
            used[name] += usage.get(name, Decimal(0))
    return {name: _shown(value, str(hard[name])) for name, value in used.items()}


def admit_pod(pod: JsonObject, quotas: Iterable[Mapping[str, Any]], others: Sequence[Mapping[str, Any]]) -> None:
    """Raises the 403 the ResourceQuota plugin answers when `pod` does not fit one of `quotas`."""
    name = (pod.get("metadata") or {}).get("name", "")
    requested = pod_usage(pod)
    for quota in sorted(quotas, key=lambda q: q["metadata"]["name"]):
        spec = quota.get("spec") or {}
        if spec.get("scopes") or spec.get("scopeSelector"):
            continue  # scoped quotas are not emulated
        shown_hard = {key: str(value) for key, value in (spec.get("hard") or {}).items()}
        hard = {key: quantity_value(value) for key, value in shown_hard.items()}
        quota_name = quota["metadata"]["name"]
        missing = _missing_declarations(pod, hard)
        if missing:
            raise _forbidden(name, f"failed quota: {quota_name}: must specify {missing}")
        used = {key: quantity_value(value) for key, value in usage_of(others, shown_hard).items()}
        exceeded = sorted(key for key in hard if key in requested and used[key] + requested[key] > hard[key])
        if exceeded:
            raise _forbidden(
                name,
                f"exceeded quota: {quota_name}, "
                f"requested: {_pretty({key: _shown(requested[key], shown_hard[key]) for key in exceeded})}, "
                f"used: {_pretty({key: _shown(used[key], shown_hard[key]) for key in exceeded})}, "
                f"limited: {_pretty({key: canonical_quantity(shown_hard[key]) for key in exceeded})}",
            )


def _forbidden(name: str, why: str) -> ApiError:
    """admission.NewForbidden for a pod: `pods "x" is forbidden: <why>`."""
    return ApiError(403, "Forbidden", f'pods "{name}" is forbidden: {why}', details={"name": name, "kind": "pods"})
