"""The Deployment controller, as pure functions: which pods to create or delete, and the Deployment status.

Used by the sandbox's local runner and by the kubelet stand-in of the tests.

:func:`plan_rollout` is what the ReplicaSet and Deployment controllers decide together (scale, rolling update with
``maxSurge``/``maxUnavailable``, or ``Recreate``), over the pods of one Deployment; :func:`deployment_status` rolls
those pods' status up into the Deployment's ``status`` (replicas, updated, ready, available, observedGeneration,
the Available and Progressing conditions) so that whatever reads a Deployment (the operator, ``kubectl rollout
status``) sees what a cluster would show; the kubelet stand-in of the tests (``kubelet.py``) rolls up with it too.
No I/O and no clock: the caller passes ``now``.

The sandbox creates no ReplicaSets: pods are owned by the Deployment and carry the ``pod-template-hash`` label of
the template they were made from, which is all the rollout logic needs.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

JsonObject = dict[str, Any]

POD_TEMPLATE_HASH = "pod-template-hash"
DEFAULT_PROGRESS_DEADLINE_SECONDS = 600
DEFAULT_SURGE = DEFAULT_UNAVAILABLE = "25%"
# The hash alphabet of apimachinery's SafeEncodeString: no vowels, so a hash never spells a word.
_SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def template_hash(template: Mapping[str, Any]) -> str:
    """A stable short hash of a pod template (the `pod-template-hash` label value)."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True, separators=(",", ":")).encode()).digest()
    return "".join(_SAFE_ALPHABET[byte % len(_SAFE_ALPHABET)] for byte in digest[:10])


def is_terminating(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def is_active(pod: Mapping[str, Any]) -> bool:
    """Counted by the ReplicaSet and Deployment controllers: neither terminating nor finished (Failed, Succeeded)."""
    return not is_terminating(pod) and (pod.get("status") or {}).get("phase") not in ("Failed", "Succeeded")


def is_ready(pod: Mapping[str, Any]) -> bool:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def pod_hash(pod: Mapping[str, Any]) -> str | None:
    labels: Mapping[str, str] = (pod.get("metadata") or {}).get("labels") or {}
    return labels.get(POD_TEMPLATE_HASH)


def _int_or_percent(value: Any, replicas: int, *, round_up: bool, field: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return max(value, 0)
    text = str(value).strip()
    if not text.endswith("%") or not text[:-1].isdigit():
        raise ValueError(f"spec.strategy.rollingUpdate.{field} must be an integer or a percentage, got {value!r}")
    exact = replicas * int(text[:-1]) / 100
    return math.ceil(exact) if round_up else math.floor(exact)


@dataclasses.dataclass(frozen=True)
class Strategy:
    recreate: bool
    max_surge: int
    max_unavailable: int


def strategy_of(spec: Mapping[str, Any], replicas: int) -> Strategy:
    strategy = spec.get("strategy") or {}
    if strategy.get("type") == "Recreate":
        return Strategy(recreate=True, max_surge=0, max_unavailable=replicas)
    rolling = strategy.get("rollingUpdate") or {}
    surge = _int_or_percent(rolling.get("maxSurge", DEFAULT_SURGE), replicas, round_up=True, field="maxSurge")
    unavailable = _int_or_percent(
        rolling.get("maxUnavailable", DEFAULT_UNAVAILABLE), replicas, round_up=False, field="maxUnavailable"
    )
    if surge == 0 and unavailable == 0:
        unavailable = 1  # as the Deployment controller does: a rollout must be able to make progress
    return Strategy(recreate=False, max_surge=surge, max_unavailable=unavailable)


def desired_replicas(deployment: Mapping[str, Any]) -> int:
    replicas = (deployment.get("spec") or {}).get("replicas")
    return 1 if replicas is None else int(replicas)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Pods to create (a count, from the current template) and pods to delete (names)."""

    create: int
    delete: tuple[str, ...]


def _deletion_order(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The ReplicaSet controller's order: pods that are not ready first, then the newest first."""

    def age_key(pod: Mapping[str, Any]) -> tuple[str, str]:
        metadata = pod.get("metadata") or {}
        return (str(metadata.get("creationTimestamp") or ""), str(metadata.get("name") or ""))

    newest_first = sorted(pods, key=age_key, reverse=True)
    return sorted(newest_first, key=is_ready)  # stable: keeps newest-first within ready and not ready


def plan_rollout(deployment: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> Plan:
    """What to do next for `deployment`, given its pods (terminating ones are already on their way out)."""
    spec = deployment.get("spec") or {}
    replicas = desired_replicas(deployment)
    current = template_hash(spec.get("template") or {})
    live = [pod for pod in pods if is_active(pod)]
    new = [pod for pod in live if pod_hash(pod) == current]
    old = [pod for pod in live if pod_hash(pod) != current]
    terminating = sum(1 for pod in pods if is_terminating(pod))
    names = lambda chosen: tuple(str(pod["metadata"]["name"]) for pod in chosen)  # noqa: E731
    if spec.get("paused"):
        return Plan(0, ())
    strategy = strategy_of(spec, replicas)
    if not old:
        if len(new) > replicas:
            return Plan(0, names(_deletion_order(new)[: len(new) - replicas]))
        if strategy.recreate and terminating:
            return Plan(0, ())  # Recreate: the new pods start only once the old ones are gone
        return Plan(replicas - len(new), ())
    if strategy.recreate:
        return Plan(0, names(old))
    # Rolling update. Old pods that are not ready add nothing to availability: they go first and freely.
    unready_old = [pod for pod in old if not is_ready(pod)]
    ready_total = sum(1 for pod in live if is_ready(pod))
    min_available = replicas - strategy.max_unavailable
    removable = max(ready_total - min_available, 0)
    ready_old = _deletion_order([pod for pod in old if is_ready(pod)])
    delete = names(unready_old) + names(ready_old[:removable])
    surge_room = replicas + strategy.max_surge - len(live) - terminating
    create = max(min(replicas - len(new), surge_room), 0)
    if len(new) > replicas:
        delete += names(_deletion_order(new)[: len(new) - replicas])
    return Plan(create, delete)


def _condition(
    previous: Mapping[str, Mapping[str, Any]], kind: str, status: str, reason: str, message: str, now: str
) -> JsonObject:
    before = previous.get(kind) or {}
    changed = before.get("status") != status or before.get("reason") != reason
    transition = now if before.get("status") != status else before.get("lastTransitionTime") or now
    return {
        "type": kind,
        "status": status,
        "lastUpdateTime": now if changed else before.get("lastUpdateTime") or now,
        "lastTransitionTime": transition,
        "reason": reason,
        "message": message,
    }


def _seconds_between(earlier: str, later: str) -> float:
    parse = lambda value: datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    return (parse(later) - parse(earlier)).total_seconds()


def deployment_status(
    deployment: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    now: str,
    *,
    deadline_exceeded: bool = False,
    create_failure: str | None = None,
) -> JsonObject:
    """The Deployment's whole `status`, from its pods; conditions keep their times unless they change.

    `deadline_exceeded` declares an unfinished rollout past its progress deadline now, whatever the clock says
    (the kubelet stand-in's tests use it rather than waiting `progressDeadlineSeconds`). `create_failure` is the
    apiserver's refusal of the last pod creation (e.g. a ResourceQuota's 403): the ReplicaSet controller's
    `ReplicaFailure` condition (reason `FailedCreate`), which the Deployment controller copies; it goes when pods
    can be created again."""
    spec = deployment.get("spec") or {}
    metadata = deployment.get("metadata") or {}
    previous_status = deployment.get("status") or {}
    previous = {c.get("type", ""): c for c in previous_status.get("conditions") or []}
    replicas = desired_replicas(deployment)
    name = metadata.get("name", "")
    current = template_hash(spec.get("template") or {})
    live = [pod for pod in pods if is_active(pod)]
    terminating = sum(1 for pod in pods if is_terminating(pod))
    updated = sum(1 for pod in live if pod_hash(pod) == current)
    ready = sum(1 for pod in live if is_ready(pod))
    # minReadySeconds is not waited for: a ready pod is available at once.
    available = ready
    unavailable = max(len(live) - available, replicas - available, 0)
    strategy = strategy_of(spec, replicas)
    min_available = replicas - strategy.max_unavailable if not strategy.recreate else replicas
    available_condition = (
        _condition(
            previous, "Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.", now
        )
        if available >= min_available
        else _condition(
            previous,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
            now,
        )
    )
    replica_set = f'ReplicaSet "{name}-{current}"'
    complete = updated == replicas and len(live) == replicas and available == replicas and not terminating
    deadline = int(spec.get("progressDeadlineSeconds") or DEFAULT_PROGRESS_DEADLINE_SECONDS)
    before = previous.get("Progressing") or {}
    if complete:
        progressing = _condition(
            previous,
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            f"{replica_set} has successfully progressed.",
            now,
        )
    else:
        progress_made = (
            previous_status.get("updatedReplicas") != updated
            or previous_status.get("readyReplicas", 0) != ready
            or previous_status.get("replicas") != len(live)
            or previous_status.get("observedGeneration") != metadata.get("generation")
        )
        last_update = before.get("lastUpdateTime")
        stalled = deadline_exceeded or (
            not progress_made
            and before.get("reason") in ("ReplicaSetUpdated", "NewReplicaSetCreated", "ProgressDeadlineExceeded")
            and last_update is not None
            and _seconds_between(last_update, now) > deadline
        )
        if stalled or (before.get("reason") == "ProgressDeadlineExceeded" and not progress_made):
            progressing = {
                **_condition(
                    previous,
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    f"{replica_set} has timed out progressing.",
                    now,
                ),
                "lastUpdateTime": before.get("lastUpdateTime") or now,
            }
        else:
            progressing = _condition(
                previous, "Progressing", "True", "ReplicaSetUpdated", f"{replica_set} is progressing.", now
            )
            if progress_made:
                progressing["lastUpdateTime"] = now
    status: JsonObject = {
        "observedGeneration": metadata.get("generation"),
        "replicas": len(live),
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "unavailableReplicas": unavailable,
        "conditions": [available_condition, progressing],
    }
    if create_failure is not None:
        status["conditions"].append(_condition(previous, "ReplicaFailure", "True", "FailedCreate", create_failure, now))
    # The API omits zero counts; the operator and kubectl read a missing count as 0.
    return {key: value for key, value in status.items() if value not in (0, None) or key == "conditions"}
