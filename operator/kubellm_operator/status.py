"""LLMService status from the workload: phase, conditions with reasons, and when to write it.

Pure functions: the handlers read the owned Deployment and its pods and pass them here with the storage
pre-flight result; what comes back is the whole ``status`` in its wire shape. The status is written only when
:func:`status_patch` finds a difference, and a condition's ``lastTransitionTime`` moves only when its status
flips, as the Kubernetes API conventions ask.

Phases: ``Pending`` (nothing runs yet, or replicas are 0), ``Progressing`` (pods are starting or a rollout is
under way), ``Ready`` (every desired replica is updated and ready), ``Degraded`` (a pod is failing: the reason
says how), ``Failed`` (the spec can never work, or the rollout passed its progress deadline with nothing ready).
The ``Ready`` condition's reason is the one a user needs first (the CRD's Reason column shows it).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubellm.modelfiles import HubFailure
from kubellm.quantity import format_bytes
from kubellm_operator.api import (
    AutoscalingStatus,
    Condition,
    ConditionStatus,
    LLMServiceStatus,
    LoadingStatus,
    ModelStatus,
    Phase,
    RolloutStatus,
    RolloutStrategy,
    ServiceType,
    StorageStatus,
)
from kubellm_operator.autoscale import SCALING_ACTIVE
from kubellm_operator.modelplan import hub_failure_problem
from kubellm_operator.storage import StorageCheck

READY = "Ready"
STORAGE_READY = "StorageReady"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
AUTHENTICATED = "Authenticated"
CONDITION_TYPES = (READY, STORAGE_READY, PROGRESSING, DEGRADED, AUTHENTICATED)
# What each condition says, for docs/api.md (kubellm_operator.crd.api_reference); docs/operator.md lists the reasons.
CONDITION_MEANINGS = {
    READY: "True when every desired replica is ready to generate; the reason says what a user needs first.",
    STORAGE_READY: "True when some eligible node has the ephemeral storage the LLMService needs (the pre-flight).",
    PROGRESSING: "True while pods start or a rollout is under way.",
    DEGRADED: "True when a pod is failing, the cluster or the operator's policy refused the spec, or it is invalid.",
    AUTHENTICATED: "Whether the inference routes require an API key: True ApiKeyRequired (spec.auth is set); "
    "False PublicWithoutAuth (a NodePort or LoadBalancer Service without spec.auth, with a Warning Event); "
    "False ClusterInternal (a ClusterIP Service without spec.auth: any pod that reaches it may call it).",
}

# Reasons (one CamelCase word each).
MINIMUM_REPLICAS_AVAILABLE = "MinimumReplicasAvailable"
ROLLOUT_COMPLETE = "RolloutComplete"
ROLLING_UPDATE = "RollingUpdate"
MODEL_LOADING = "ModelLoading"
PODS_PENDING = "PodsPending"
SCALED_TO_ZERO = "ScaledToZero"
HEALTHY = "Healthy"
INVALID_SPEC = "InvalidSpec"
NOT_ALLOWED = "NotAllowed"  # the operator's tenant policy refuses the spec (kubellm_operator.policy)
API_KEY_REQUIRED = "ApiKeyRequired"
PUBLIC_WITHOUT_AUTH = "PublicWithoutAuth"
CLUSTER_INTERNAL = "ClusterInternal"
PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
STORAGE_AVAILABLE = "StorageAvailable"
INSUFFICIENT_STORAGE = "InsufficientStorage"
NODES_UNKNOWN = "NodesUnknown"
OOM_KILLED = "OOMKilled"
EVICTED_EPHEMERAL_STORAGE = "EvictedEphemeralStorage"
INSUFFICIENT_EPHEMERAL_STORAGE = "InsufficientEphemeralStorage"
IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"
STARTUP_PROBE_FAILED = "StartupProbeFailed"
CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
UNSCHEDULABLE = "Unschedulable"
EVICTED = "Evicted"
POD_FAILED = "PodFailed"
# Refusals of kubellm's writes (reconcile.Refusal), and of the pods the ReplicaSet creates (Deployment ReplicaFailure).
CHILD_REJECTED = "ChildRejected"  # 400/422: the apiserver or an admission webhook refused the child as rendered
FORBIDDEN = "Forbidden"  # 403: RBAC or an admission policy
QUOTA_EXCEEDED = "QuotaExceeded"  # 403 "exceeded quota": a ResourceQuota
API_REFUSED = "ApiRefused"  # any other 4xx
NAME_CONFLICT = "NameConflict"  # a child's name is taken by an object this LLMService does not control
PODS_REJECTED = "PodsRejected"  # the ReplicaSet cannot create pods (ReplicaFailure: admission, LimitRange, ...)
REFUSAL_REASONS = frozenset(
    {CHILD_REJECTED, FORBIDDEN, QUOTA_EXCEEDED, API_REFUSED, PODS_REJECTED, NAME_CONFLICT, NOT_ALLOWED}
)
MODEL_RESOLVING = "ModelResolving"  # the hub model's first resolution is under way (in the background)

# Pod problems, most telling first: when pods fail in different ways, the first one names the LLMService's.
PROBLEM_PRIORITY = (
    OOM_KILLED,
    EVICTED_EPHEMERAL_STORAGE,
    INSUFFICIENT_EPHEMERAL_STORAGE,
    IMAGE_PULL_BACK_OFF,
    CREATE_CONTAINER_CONFIG_ERROR,
    STARTUP_PROBE_FAILED,
    # The pods' own account of a failed hub download (kubellm.modelfiles), before a generic crash loop.
    *(failure.value for failure in HubFailure),
    CRASH_LOOP_BACK_OFF,
    UNSCHEDULABLE,
    EVICTED,
    POD_FAILED,
)
_IMAGE_PULL_REASONS = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"})
_CONFIG_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError"})
# Exit codes of a container killed by a signal (SIGKILL, SIGTERM): the startup probe giving up kills this way, and
# so do an OOM kill, a node agent or a `kill -9`; _killed_by_startup_probe tells them apart.
_KILLED_EXIT_CODES = frozenset({137, 143})
# Probe defaults of the API, and the slack for one-second timestamps and the kubelet's sync period.
_PROBE_DEFAULTS = {"initialDelaySeconds": 0, "periodSeconds": 10, "timeoutSeconds": 1, "failureThreshold": 3}
_DEFAULT_GRACE_SECONDS = 30
_TIMESTAMP_SLACK_SECONDS = 2
# How much of lastState.terminated.message a condition message carries.
_TERMINATION_MESSAGE_LINES = 3
_TERMINATION_MESSAGE_CHARS = 400


@dataclass(frozen=True)
class PodProblem:
    reason: str
    message: str
    terminal: bool = False  # the pod is finished (evicted, failed): the Deployment replaces it


def _name(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("name", "?"))


def _time(value: Any) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(str(value))
    except ValueError:
        return None


def _killed_by_startup_probe(pod: Mapping[str, Any], container: Mapping[str, Any]) -> bool:
    """Whether the container's previous run ended the way a failing startup probe ends one, judged from what a
    kubelet reports (a kill by signal looks the same whoever sent it):

    - the container has a startup probe, and the run ended by signal (exit code 137 or 143);
    - the run lasted as long as that probe lets a container fail (initialDelaySeconds plus failureThreshold - 1
      periods) and no longer than it lets one stay unstarted (plus the probe timeouts and the kill's grace period):
      a shorter run was killed by something else, a longer one had passed its startup probe;
    - the pod's Ready condition did not turn during the run: it can only have turned to False, so the container had
      been ready (a healthy container killed, e.g. by `kill -9`, and now restarting).
    """
    last = (container.get("lastState") or {}).get("terminated") or {}
    if last.get("exitCode") not in _KILLED_EXIT_CODES:
        return False
    spec = pod.get("spec") or {}
    declared_containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    declared: Mapping[str, Any] = next((c for c in declared_containers if c.get("name") == container.get("name")), {})
    probe = declared.get("startupProbe")
    started_at, finished_at = _time(last.get("startedAt")), _time(last.get("finishedAt"))
    if not probe or started_at is None or finished_at is None:
        return False
    setting = {key: int(probe.get(key) or default) for key, default in _PROBE_DEFAULTS.items()}
    grace = probe.get("terminationGracePeriodSeconds", spec.get("terminationGracePeriodSeconds"))
    shortest = setting["initialDelaySeconds"] + (setting["failureThreshold"] - 1) * setting["periodSeconds"]
    longest = (
        setting["initialDelaySeconds"]
        + setting["failureThreshold"] * (setting["periodSeconds"] + setting["timeoutSeconds"])
        + int(_DEFAULT_GRACE_SECONDS if grace is None else grace)
    )
    ran = (finished_at - started_at).total_seconds()
    if not shortest - _TIMESTAMP_SLACK_SECONDS <= ran <= longest + _TIMESTAMP_SLACK_SECONDS:
        return False
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            turned = _time(condition.get("lastTransitionTime"))
            return condition.get("status") != "True" and (turned is None or turned <= started_at)
    return True


def _container_problem(pod: Mapping[str, Any], container: Mapping[str, Any]) -> PodProblem | None:
    pod_name = _name(pod)
    name = container.get("name", "?")
    state = container.get("state") or {}
    last = (container.get("lastState") or {}).get("terminated") or {}
    waiting = state.get("waiting") or {}
    terminated = state.get("terminated") or {}
    restarts = int(container.get("restartCount") or 0)
    where = f"pod {pod_name} container {name}"
    if "OOMKilled" in (terminated.get("reason"), last.get("reason")):
        return PodProblem(
            OOM_KILLED,
            f"{where} was OOMKilled ({restarts} restarts); raise resources.limits.memory or pick a smaller model",
        )
    hub_failure = hub_failure_problem(where, container)
    if hub_failure is not None:
        return PodProblem(hub_failure[0].value, hub_failure[1])
    waiting_reason = waiting.get("reason")
    detail = f": {waiting['message']}" if waiting.get("message") else ""
    if waiting_reason in _IMAGE_PULL_REASONS:
        return PodProblem(IMAGE_PULL_BACK_OFF, f"{where} cannot pull its image ({waiting_reason}){detail}")
    if waiting_reason in _CONFIG_REASONS:
        return PodProblem(CREATE_CONTAINER_CONFIG_ERROR, f"{where} cannot start ({waiting_reason}){detail}")
    if restarts > 0 and container.get("started") is False and _killed_by_startup_probe(pod, container):
        return PodProblem(
            STARTUP_PROBE_FAILED,
            f"{where} was killed by its startup probe before it passed ({restarts} restarts); "
            "raise probes.startup.budgetSeconds if the model needs longer to load",
        )
    if waiting_reason == "CrashLoopBackOff":
        exit_code = last.get("exitCode")
        code = f", last exit code {exit_code}" if exit_code is not None else ""
        said = termination_message_summary(str(last.get("message") or ""))
        why = f"; last termination message: {said}" if said else ""
        return PodProblem(CRASH_LOOP_BACK_OFF, f"{where} is crash-looping ({restarts} restarts{code}){detail}{why}")
    return None


def termination_message_summary(message: str) -> str:
    """A container's termination message made fit for a condition: its last few non-blank lines on one line,
    cut to a readable length (the message may be a log tail of up to 2 KiB, a traceback's last line the telling one).
    """
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    summary = " | ".join(lines[-_TERMINATION_MESSAGE_LINES:])
    if len(summary) > _TERMINATION_MESSAGE_CHARS:
        summary = "..." + summary[-(_TERMINATION_MESSAGE_CHARS - 3) :]
    return summary


def pod_problem(pod: Mapping[str, Any]) -> PodProblem | None:
    """What is wrong with one pod, or None when it is fine or merely starting."""
    status = pod.get("status") or {}
    name = _name(pod)
    if status.get("phase") == "Failed":
        reason = status.get("reason") or ""
        message = status.get("message") or ""
        if reason == "Evicted":
            if "ephemeral" in message.lower() or "emptydir" in message.lower():
                return PodProblem(
                    EVICTED_EPHEMERAL_STORAGE,
                    f"pod {name} was evicted: {message.strip()} Raise storage.request/limit or free node storage",
                    terminal=True,
                )
            return PodProblem(EVICTED, f"pod {name} was evicted: {message.strip()}", terminal=True)
        return PodProblem(POD_FAILED, f"pod {name} failed: {reason} {message}".strip(), terminal=True)
    if status.get("phase") == "Succeeded":
        return None
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            message = condition.get("message") or ""
            if "ephemeral-storage" in message:
                return PodProblem(INSUFFICIENT_EPHEMERAL_STORAGE, f"pod {name} cannot be scheduled: {message}".strip())
            return PodProblem(UNSCHEDULABLE, f"pod {name} cannot be scheduled: {message}".strip())
    containers = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    found = [p for p in (_container_problem(pod, c) for c in containers) if p is not None]
    return worst(found)


def worst(problems: Sequence[PodProblem]) -> PodProblem | None:
    if not problems:
        return None
    return min(problems, key=lambda p: PROBLEM_PRIORITY.index(p.reason))


def _deployment_condition(deployment: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    for condition in (deployment.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return condition
    return {}


@dataclass(frozen=True)
class Observed:
    """Everything the status is computed from."""

    generation: int | None
    desired: int  # spec.replicas as the user asked
    deployment: Mapping[str, Any] | None
    pods: Sequence[Mapping[str, Any]]
    storage: StorageCheck | None  # None when the spec could not be planned
    selector: str | None
    endpoint: str | None
    held_for_storage: bool = False  # storage.enforce holds the Deployment at 0 replicas
    invalid: str | None = None  # why the spec can never work
    refusals: tuple[tuple[str, str], ...] = ()  # (reason, message) of writes the API refused in this pass
    rollout: tuple[RolloutStrategy, str] | None = None  # the strategy in effect and why
    startup_budget_seconds: int | None = None  # the startup probe's budget: a start within it is still loading
    now: datetime.datetime | None = None
    model: ModelStatus | None = None  # the resolved hub model (kubellm_operator.modelplan)
    model_hold: tuple[str, str] | None = None  # (reason, message): the hub refused the model, no rollout
    model_pending: str | None = None  # the first resolution of the hub model is under way: no rollout yet
    model_problem: tuple[str, str] | None = None  # (reason, message): the hub did not answer; the rollout goes on
    loading: LoadingStatus | None = None  # the not-ready pods' download and load progress
    not_allowed: str | None = None  # why the operator's tenant policy refuses the spec (nothing is applied)
    exposure: tuple[ServiceType, bool] | None = None  # spec.service.type and whether spec.auth is set
    autoscaling: Mapping[str, Any] | None = None  # status.autoscaling (kubellm_operator.autoscale.plan)
    scaling: tuple[str, str, str] | None = None  # the ScalingActive condition: (status, reason, message)


@dataclass(frozen=True)
class _Verdict:
    phase: Phase
    ready: tuple[ConditionStatus, str, str]
    progressing: tuple[ConditionStatus, str, str]
    degraded: tuple[ConditionStatus, str, str]


_T, _F, _U = ConditionStatus.true, ConditionStatus.false, ConditionStatus.unknown


def _verdict(seen: Observed, counts: Mapping[str, int]) -> _Verdict:
    ready, updated, current = counts["ready"], counts["updated"], counts["replicas"]
    desired = seen.desired
    healthy = (_F, HEALTHY, "no pod is failing")
    if seen.invalid is not None:
        bad = (_F, INVALID_SPEC, seen.invalid)
        return _Verdict(Phase.failed, bad, bad, (_T, INVALID_SPEC, seen.invalid))
    if seen.not_allowed is not None:
        # Nothing of this spec is applied: the pods of the last allowed spec, if any, go on serving.
        refused = (_F, NOT_ALLOWED, seen.not_allowed)
        kept = (_T, MINIMUM_REPLICAS_AVAILABLE, f"{ready}/{desired} replicas ready (of the last allowed spec)")
        old_pods_serve = seen.deployment is not None and desired > 0 and ready >= desired
        return _Verdict(
            Phase.degraded, kept if old_pods_serve else refused, refused, (_T, NOT_ALLOWED, seen.not_allowed)
        )
    if seen.model_hold is not None:
        held_model = (_F, *seen.model_hold)
        return _Verdict(Phase.degraded, held_model, held_model, (_T, *seen.model_hold))
    if seen.model_pending is not None:
        waiting = (_F, MODEL_RESOLVING, seen.model_pending)
        return _Verdict(Phase.pending, waiting, (_T, MODEL_RESOLVING, seen.model_pending), healthy)
    if seen.held_for_storage:
        message = "replicas held at 0 by storage.enforce: " + (seen.storage.message if seen.storage else "")
        held = (_F, INSUFFICIENT_STORAGE, message)
        return _Verdict(Phase.pending, held, held, healthy)
    deployment = seen.deployment or {}
    ready_enough = ready >= desired and seen.deployment is not None
    if seen.refusals:
        reason = seen.refusals[0][0]
        message = "; ".join(text for _, text in seen.refusals)
        refused = (_F, reason, message)
        kept = (_T, MINIMUM_REPLICAS_AVAILABLE, f"{ready}/{desired} replicas ready (of the last accepted spec)")
        return _Verdict(Phase.degraded, kept if ready_enough and desired else refused, refused, (_T, *refused[1:]))
    if desired == 0:
        zero = (_F, SCALED_TO_ZERO, "spec.replicas is 0")
        return _Verdict(Phase.pending, zero, zero, healthy)
    failure = _deployment_condition(deployment, "ReplicaFailure")
    if failure.get("status") == "True":
        text = str(failure.get("message") or failure.get("reason") or "the ReplicaSet cannot create pods")
        reason = QUOTA_EXCEEDED if "exceeded quota" in text else PODS_REJECTED
        message = f"{ready}/{desired} replicas ready; pods are refused: {text}"
        rejected = (_F, reason, message)
        available = (_T, MINIMUM_REPLICAS_AVAILABLE, f"{ready}/{desired} replicas ready")
        return _Verdict(Phase.degraded, available if ready >= desired else rejected, rejected, (_T, reason, message))
    observed_generation = (deployment.get("status") or {}).get("observedGeneration")
    generation = (deployment.get("metadata") or {}).get("generation")
    rollout_seen = generation is None or (observed_generation is not None and observed_generation >= generation)
    enough = f"{ready}/{desired} replicas ready"
    # Complete as the Deployment controller means it: every replica updated and ready, no old pod left.
    if seen.deployment is not None and rollout_seen and ready >= desired and updated >= desired and current <= desired:
        return _Verdict(
            Phase.ready,
            (_T, MINIMUM_REPLICAS_AVAILABLE, enough),
            (_F, ROLLOUT_COMPLETE, f"{updated} replicas updated and ready"),
            healthy,
        )
    live = [p for p in seen.pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    problems = [p for p in (pod_problem(pod) for pod in live) if p is not None]
    problem = worst(problems)
    serving = (_T, MINIMUM_REPLICAS_AVAILABLE, enough) if ready >= desired else None
    if problem is not None:
        affected = sum(1 for p in problems if p.reason == problem.reason)
        message = problem.message if affected == 1 else f"{affected} pods: {problem.message}"
        return _Verdict(
            Phase.degraded,
            serving or (_F, problem.reason, f"{enough}; {message}"),
            (_T, problem.reason, message),
            (_T, problem.reason, message),
        )
    deadline = _deployment_condition(deployment, "Progressing")
    if (
        deadline.get("status") == "False"
        and deadline.get("reason") == PROGRESS_DEADLINE_EXCEEDED
        and not _still_loading(seen, live)
    ):
        message = f"{enough}; {deadline.get('message') or 'the rollout passed its progress deadline'}"
        stuck = (_F, PROGRESS_DEADLINE_EXCEEDED, message)
        return _Verdict(Phase.failed if ready == 0 else Phase.degraded, serving or stuck, stuck, (_T, *stuck[1:]))
    storage_short = seen.storage is not None and not seen.storage.ok and seen.storage.nodes_seen > 0
    running = sum(1 for p in live if (p.get("status") or {}).get("phase") == "Running")
    if ready == 0 and running == 0:
        reason, message = PODS_PENDING, f"{enough}; waiting for pods to be scheduled and started ({current} created)"
        if storage_short and seen.storage is not None:
            reason, message = INSUFFICIENT_STORAGE, f"{enough}; {seen.storage.message}"
        return _Verdict(Phase.pending, serving or (_F, reason, message), (_T, reason, message), healthy)
    if updated < desired or current > desired or not rollout_seen:
        reason, message = ROLLING_UPDATE, f"{enough}; {updated}/{desired} replicas updated"
    else:
        reason, message = MODEL_LOADING, f"{enough}; waiting for the model to load and the pods to become ready"
        if seen.loading is not None and seen.loading.message:
            message = f"{enough}; {seen.loading.message}"
    return _Verdict(Phase.progressing, serving or (_F, reason, message), (_T, reason, message), healthy)


def _still_loading(seen: Observed, live: Sequence[Mapping[str, Any]]) -> bool:
    """Whether some pod runs a container that has not started yet and is still within its startup budget: a slow
    first start (a big download) the kubelet has not given up on, whatever the Deployment's deadline says."""
    if seen.now is None or seen.startup_budget_seconds is None:
        return False
    for pod in live:
        status = pod.get("status") or {}
        if status.get("phase") != "Running":
            continue
        for container in status.get("containerStatuses") or []:
            started_at = _time(((container.get("state") or {}).get("running") or {}).get("startedAt"))
            running_for = (seen.now - started_at).total_seconds() if started_at is not None else None
            if container.get("started") is False and running_for is not None:
                return running_for <= seen.startup_budget_seconds
    return False


def _storage_condition(storage: StorageCheck | None) -> tuple[ConditionStatus, str, str]:
    if storage is None:
        return (_U, INVALID_SPEC, "the storage plan cannot be computed from this spec")
    if storage.nodes_seen == 0:
        return (_U, NODES_UNKNOWN, storage.message)
    if storage.ok:
        return (_T, STORAGE_AVAILABLE, storage.message)
    return (_F, INSUFFICIENT_STORAGE, storage.message)


def storage_summary(storage: StorageCheck) -> StorageStatus:
    """``status.storage``: while some eligible node fits, only what the verdict rests on (the need, how free space
    is counted, how many nodes were seen); the per-node figures (counts, best node, its free space rounded to GiB)
    appear when no node fits, the case a user acts on. Figures that move with every cordon or kubelet summary of
    any node would otherwise rewrite every LLMService's status (issue 13: idle clusters write no status)."""
    if storage.ok:
        return StorageStatus(required=format_bytes(storage.need), nodes_seen=storage.nodes_seen, basis=storage.basis)
    shown = storage.best_node_free_shown
    return StorageStatus(
        required=format_bytes(storage.need),
        fitting_nodes=storage.fitting_nodes,
        eligible_nodes=storage.eligible_nodes,
        nodes_seen=storage.nodes_seen,
        best_node=storage.best_node,
        best_node_free=format_bytes(shown) if shown is not None else None,
        basis=storage.basis,
    )


def storage_view(storage: StorageCheck | None) -> tuple[Any, ...]:
    """Everything of a storage check that reaches the status (the StorageReady condition and status.storage):
    equal views mean a pass would write the same status, so a node change need not queue that LLMService."""
    summary = storage_summary(storage).model_dump(by_alias=True, exclude_none=True) if storage is not None else None
    return (_storage_condition(storage), json.dumps(summary, sort_keys=True))


PUBLIC_SERVICE_TYPES = frozenset({ServiceType.node_port, ServiceType.load_balancer})


def authentication(service_type: ServiceType, auth: bool) -> tuple[ConditionStatus, str, str]:
    """The Authenticated condition of a spec: whether its inference routes need an API key, and who can reach them
    without one (issue 21: a public endpoint without auth is allowed by default, never silent)."""
    if auth:
        return (_T, API_KEY_REQUIRED, "inference routes require the API key of spec.auth.apiKeySecretRef")
    if service_type in PUBLIC_SERVICE_TYPES:
        return (
            _F,
            PUBLIC_WITHOUT_AUTH,
            f"spec.service.type {service_type.value} exposes the inference routes outside the cluster without an API "
            "key; set spec.auth.apiKeySecretRef",
        )
    return (
        _F,
        CLUSTER_INTERNAL,
        "no API key: any pod that reaches the ClusterIP Service may call the inference routes; set "
        "spec.auth.apiKeySecretRef to require one",
    )


def _authenticated_condition(exposure: tuple[ServiceType, bool] | None) -> tuple[ConditionStatus, str, str]:
    if exposure is None:
        return (_U, INVALID_SPEC, "the Service type and auth cannot be read from this spec")
    return authentication(*exposure)


def _previous_conditions(previous: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    return {c.get("type", ""): c for c in (previous or {}).get("conditions") or [] if isinstance(c, Mapping)}


def compute_status(seen: Observed, previous: Mapping[str, Any] | None, now: str) -> dict[str, Any]:
    """The whole status in wire shape (camelCase); ``now`` stamps conditions that flip."""
    deployment_status = (seen.deployment or {}).get("status") or {}
    counts = {
        "ready": int(deployment_status.get("readyReplicas") or 0),
        "updated": int(deployment_status.get("updatedReplicas") or 0),
        "replicas": int(deployment_status.get("replicas") or 0),
    }
    verdict = _verdict(seen, counts)
    if seen.model_problem is not None and verdict.degraded[0] != _T:
        # The operator cannot reach the hub: the pods may (a node-local proxy), so the rollout goes on, but say it.
        verdict = dataclasses.replace(verdict, degraded=(_T, *seen.model_problem))
    old = _previous_conditions(previous)
    conditions = []
    kinds: list[tuple[str, tuple[ConditionStatus, str, str]]] = [
        (READY, verdict.ready),
        (STORAGE_READY, _storage_condition(seen.storage)),
        (PROGRESSING, verdict.progressing),
        (DEGRADED, verdict.degraded),
        (AUTHENTICATED, _authenticated_condition(seen.exposure)),
    ]
    if seen.scaling is not None:
        kinds.append((SCALING_ACTIVE, (ConditionStatus(seen.scaling[0]), seen.scaling[1], seen.scaling[2])))
    for kind, (state, reason, message) in kinds:
        before = old.get(kind) or {}
        flipped = before.get("status") != state.value or not before.get("lastTransitionTime")
        conditions.append(
            Condition(
                type=kind,
                status=state,
                reason=reason,
                message=message,
                last_transition_time=now if flipped else str(before["lastTransitionTime"]),
                observed_generation=seen.generation,
            )
        )
    status = LLMServiceStatus(
        observed_generation=seen.generation,
        phase=verdict.phase,
        replicas=counts["replicas"],
        ready_replicas=counts["ready"],
        updated_replicas=counts["updated"],
        ready=f"{counts['ready']}/{seen.desired}",
        selector=seen.selector,
        endpoint=seen.endpoint,
        storage=storage_summary(seen.storage) if seen.storage is not None else None,
        rollout=RolloutStatus(strategy=seen.rollout[0], reason=seen.rollout[1]) if seen.rollout else None,
        model=seen.model,
        loading=seen.loading if verdict.phase != Phase.ready else None,
        autoscaling=AutoscalingStatus.model_validate(seen.autoscaling) if seen.autoscaling is not None else None,
        conditions=conditions,
    )
    return status.model_dump(by_alias=True, exclude_none=True, mode="json")


OWNED_STATUS_FIELDS = frozenset(f.alias or name for name, f in LLMServiceStatus.model_fields.items())


def merge_patch(previous: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The RFC 7386 merge patch that turns ``previous`` into ``new`` (empty when they are equal)."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = previous.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            nested = merge_patch(before, value)
            if nested:
                patch[key] = nested
        elif before != value or key not in previous:
            patch[key] = value
    for key, before in previous.items():
        if key not in new and before is not None:
            patch[key] = None
    return patch


def status_patch(previous: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any] | None:
    """The merge patch of ``status`` that turns ``previous`` into ``new``, or None when nothing changed.

    Only the fields kubellm owns are compared and patched; others' (e.g. Kopf's ``status.kopf``) are left
    alone. Lists, such as conditions, are replaced whole by a merge patch, so they are always written whole.
    """
    owned = {k: v for k, v in (previous or {}).items() if k in OWNED_STATUS_FIELDS}
    return merge_patch(owned, new) or None


def condition(status: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any] | None:
    """One condition of a status by type."""
    return _previous_conditions(status).get(kind)
