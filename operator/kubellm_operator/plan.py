"""Plan: one pure function from what a pass observed to what it does (the second of observe → plan → execute).

:func:`plan` takes the :class:`observe.Observation`, the previous status and the clock, and returns a
:class:`Plan`: the child writes (``children.py`` decides each), the whole status and the patch that writes it,
the Events to post and lines to log, the background fetches still needed (``fetchers.py``), and when to look
again. It reads no API, no clock of its own and no endpoint: the same inputs give the same plan, which is what
the table tests in ``tests/operator/test_operator_plan.py`` check.

With ``spec.autoscaling`` the plan also decides the Deployment's replicas (``autoscale.plan``, pure): from the
pods' demand the fetchers hold, the gateways' held-requests annotations and the demand history in the
observation; its decision sets the replicas rendered, ``status.autoscaling`` and the ``ScalingActive`` condition,
and is handed back in ``Plan.scaling`` (the operator keeps the history it returns and sets the metrics from it).

The effective spec is computed here, once per pass: the LLMService validated, the values derived from the hub
model (``sizing.py``), the storage pre-flight against the Node facts, the rollout strategy in effect.
"""

from __future__ import annotations

import copy
import datetime
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from pydantic import ValidationError

from kubellm.quantity import format_bytes
from kubellm_operator import autoscale, policy, render
from kubellm_operator.api import AutoscalingSpec, LLMService, LLMServiceSpec, LoadingStatus, StoragePlan
from kubellm_operator.children import (
    ChildPlan,
    Refusal,
    fingerprint,
    plan_child,
    with_applied_hash,
)
from kubellm_operator.fetchers import DemandAnswer, DemandRequest, LoadzRequest, Request
from kubellm_operator.modelplan import (
    LOADING_REFRESH_S,
    HubAnswer,
    LoadzAnswer,
    ModelPlan,
    endpoint_refusal,
    hub_request,
    loading_status,
    model_plan,
    pods_loading,
)
from kubellm_operator.observe import Observation
from kubellm_operator.resolve import REFRESH_BRANCH_S, RETRY_FAILED_S
from kubellm_operator.status import (
    AUTHENTICATED,
    DEGRADED,
    INSUFFICIENT_STORAGE,
    INVALID_SPEC,
    READY,
    REFUSAL_REASONS,
    STORAGE_READY,
    Observed,
    compute_status,
    condition,
    status_patch,
    storage_view,
)
from kubellm_operator.storage import StorageCheck, check_storage

# Outcomes of a pass (the kubellm_operator_reconciles_total label).
CHANGED, UNCHANGED, INVALID, REFUSED, WAITING = "changed", "unchanged", "invalid", "refused", "waiting"
NOT_ALLOWED = "not_allowed"  # the tenant policy refused the spec: nothing fetched, nothing written


@dataclass(frozen=True)
class Event:
    """A core/v1 Event to post about the LLMService."""

    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    """What a pass does (see the module docstring)."""

    gone: bool = False  # the LLMService is gone or being deleted: nothing to write, its memory to drop
    children: tuple[ChildPlan, ...] = ()
    fingerprint: str | None = None  # what the child writes would write: a different one resets the backoff
    refusals: tuple[Refusal, ...] = ()  # writes not made: still backing off, or a child that is not ours
    status: Mapping[str, Any] = field(default_factory=dict)
    status_patch: Mapping[str, Any] | None = None
    events: tuple[Event, ...] = ()
    logs: tuple[tuple[int, str], ...] = ()
    posted: frozenset[tuple[str, str]] = frozenset()  # refusal Events known to be posted after this pass
    fetches: tuple[Request, ...] = ()
    storage_basis: tuple[LLMServiceSpec, tuple[Any, ...]] | None = None  # for reevaluate_storage
    invalid: str | None = None
    not_allowed: str | None = None  # the tenant policy refused the spec (kubellm_operator.policy): nothing written
    held: StorageCheck | None = None  # storage.enforce holds the replicas at 0
    model_hold: str | None = None  # the hub refused the model (kubellm_operator.modelplan)
    model_pending: bool = False  # the hub model's first resolution is under way
    recheck_s: float | None = None  # pods are loading: no event marks a download's progress, so look again then
    scaling: autoscale.Plan | None = None  # spec.autoscaling's decision of this pass

    @property
    def writes(self) -> tuple[ChildPlan, ...]:
        return tuple(child for child in self.children if child.writes and child.conflict is None)


def describe_validation(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else error["msg"])
    return "; ".join(parts)


def plan(observation: Observation, previous_status: Mapping[str, Any] | None, now: datetime.datetime) -> Plan:
    """The plan of one pass (see the module docstring)."""
    obj = observation.llmservice
    if obj is None:
        return Plan(gone=True)
    previous: Mapping[str, Any] = previous_status or {}
    config = observation.config
    namespace, name = observation.key
    metadata = obj.get("metadata") or {}
    generation = metadata.get("generation")

    # The effective spec: validated, the hub model's derived values filled in, checked for what cannot work.
    llms: LLMService | None = None
    model: ModelPlan | None = None
    invalid: str | None = None
    fetches: list[Request] = []
    verdict = policy.PolicyVerdict()
    storage_plan: StoragePlan | None = None
    try:
        llms = LLMService.from_object({k: v for k, v in obj.items() if k != "status"})
        # The tenant policy first: a spec outside it gets no hub request and no Secret read, let alone children.
        verdict = policy.evaluate(llms, config.policy)
        # Derived values only fill what the user left unset: a spec that cannot work as written is not resolved
        # (its hub is not asked).
        problems = llms.spec.problems()
        if not problems and verdict.allowed:
            model, wanted = _model_step(llms, observation)
            fetches += wanted
            llms = model.llms
            storage_plan = llms.spec.storage_plan()  # the one computation of it in a pass
            problems = llms.spec.problems(storage_plan)
        invalid = "; ".join(problems) if problems else None
    except ValidationError as exc:
        invalid = describe_validation(exc)
    not_allowed = None if verdict.allowed else verdict.message

    if model is not None and model.pending is not None and _resolved_before(previous, model, generation):
        # An operator restarted over a converged LLMService: the fetch is under way and queues the next pass;
        # until then, what the last pass wrote stands (no write, no status flapping through Pending).
        return Plan(status=previous, fetches=tuple(fetches), model_pending=True, posted=observation.posted)

    owner = f"{namespace}/{name}"
    storage = check_storage(llms.spec, observation.nodes, config.headroom_bytes, owner, storage_plan) if llms else None
    rollout = llms.spec.effective_rollout() if llms is not None and invalid is None else None
    basis = (llms.spec, storage_view(storage)) if llms is not None and storage is not None else None
    enforced = llms is not None and llms.spec.storage.enforce
    # storage.enforce holds the replicas at 0 only when the check knows some nodes and none fits.
    held = storage if enforced and storage is not None and storage.nodes_seen and not storage.ok else None
    model_hold = model.hold if model is not None else None
    pending = model.pending if model is not None else None

    # spec.autoscaling: the replicas from the demand (decided once per pass; the re-plan after writes keeps it).
    scaling: autoscale.Plan | None = None
    rolls_out = llms is not None and invalid is None and not_allowed is None and model_hold is None and pending is None
    if rolls_out and llms is not None and llms.spec.autoscaling is not None:
        scaling = observation.scaled
        if scaling is None:
            scaling, demand_wanted = _scaling(llms.spec.autoscaling, obj, observation, now)
            fetches += demand_wanted

    # The children: rendered, adopted, stamped, and planned against what the watch holds.
    children: list[ChildPlan] = []
    print_: str | None = None
    if rolls_out and llms is not None:
        rendered = render.render(
            llms,
            image_default=config.inference_image,
            gpu_image_default=config.gpu_inference_image,
            replicas=0 if held is not None else scaling.desired if scaling is not None else None,
            storage=storage_plan,
            rollout=rollout,
        )
        owner_uid = metadata.get("uid")
        stamped = [with_applied_hash(_adopt(child, obj)) for child in rendered]
        print_ = fingerprint(stamped)
        for desired in stamped:
            live = observation.children.get(desired["kind"])
            children.append(plan_child(desired, copy.deepcopy(dict(live)) if live is not None else None, owner_uid))

    # Refusals known before any write: a child that is not ours, and the same writes still within their backoff.
    standing = observation.standing
    held_back = {r.kind: r for r in standing.refusals} if standing and standing.fingerprint == print_ else {}
    refusals: list[Refusal] = []
    planned: list[ChildPlan] = []
    for child in children:
        if child.conflict is not None:
            refusals.append(child.conflict)
        elif child.kind in held_back:
            refusals.append(held_back[child.kind])  # not written again before its retry
            child = ChildPlan(child.kind, child.desired, child.live)
        planned.append(child)

    # The status: from the workload as the watch holds it, or as the writes of this pass will leave it (the
    # executor re-plans with their answers, so the status of a pass that wrote shows the written objects).
    deployment = observation.children.get("Deployment")
    if deployment is not None and any(c.conflict is not None for c in planned if c.kind == "Deployment"):
        deployment = None  # someone else's Deployment says nothing about this LLMService
    pods = [dict(p) for p in observation.pods]
    loading: LoadingStatus | None = None
    loadz_wanted: list[Request] = []
    if invalid is None and not_allowed is None and model_hold is None and pending is None:
        loading, loadz_wanted = _loading(pods, observation)
    fetches += loadz_wanted
    raw_replicas = (obj.get("spec") or {}).get("replicas", 1)
    if scaling is not None:
        replicas = scaling.desired
    elif llms is not None:
        replicas = llms.spec.fixed_replicas()
    else:
        replicas = raw_replicas if isinstance(raw_replicas, int) else 0
    problem = None
    if model is not None and model.status is not None and model.status.error and model_hold is None:
        problem = ("HubUnreachable", model.status.error)
    seen = Observed(
        generation=generation,
        desired=replicas,
        deployment=deployment,
        pods=pods,
        storage=storage,
        selector=render.selector_string(name),
        endpoint=render.endpoint(llms) if llms is not None else None,
        held_for_storage=held is not None,
        invalid=invalid,
        refusals=tuple((r.reason, r.message) for r in refusals),
        rollout=rollout,
        startup_budget_seconds=llms.spec.probes.startup.budget_seconds if llms is not None else None,
        now=now,
        model=model.status if model is not None else None,
        model_hold=(model_hold[0].value, model_hold[1]) if model_hold is not None else None,
        model_pending=pending,
        model_problem=problem,
        loading=loading,
        not_allowed=not_allowed,
        exposure=(llms.spec.service.type, llms.spec.auth is not None) if llms is not None else None,
        autoscaling=scaling.status if scaling is not None else None,
        scaling=scaling.condition if scaling is not None else None,
    )
    stamp = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = compute_status(seen, previous, stamp)
    events, logs, posted = _announce(
        obj, previous, status, storage, invalid, observation, tuple(refusals), verdict.warnings
    )
    loading_pods = (
        invalid is None and not_allowed is None and model_hold is None and pending is None and pods_loading(pods)
    )
    recheck = LOADING_REFRESH_S if loading_pods else None
    if scaling is not None and (pods or scaling.held or scaling.desired):
        # Demand moves without an event: looked at again while there are pods (or held requests) to scale.
        recheck = min(recheck or autoscale.PERIOD_S, autoscale.PERIOD_S)
        if scaling.asked is not None and scaling.asked != scaling.desired:  # once a pass: the last plan's logs
            decision = scaling.decision
            line = f"LLMService {namespace}/{name}: replicas {scaling.asked} -> {scaling.desired}"
            logs += ((logging.INFO, f"{line} ({decision.reason}: {decision.message})"),)
    return Plan(
        children=tuple(planned),
        fingerprint=print_,
        refusals=tuple(refusals),
        status=status,
        status_patch=status_patch(previous, status),
        events=events,
        logs=logs,
        posted=posted,
        fetches=tuple(fetches),
        storage_basis=basis,
        invalid=invalid,
        not_allowed=not_allowed,
        held=held,
        model_hold=model_hold[1] if model_hold is not None else None,
        model_pending=pending is not None,
        recheck_s=recheck,
        scaling=scaling,
    )


def _scaling(
    settings: AutoscalingSpec, obj: Mapping[str, Any], observation: Observation, now: datetime.datetime
) -> tuple[autoscale.Plan, list[Request]]:
    """The autoscaler's decision from the demand the fetchers hold for the running pods, the gateways'
    held-requests annotations and the history; and the demand reads to ask for (absent or older than the period).

    A running pod whose demand has no answer yet counts as not known (a Ready one is then a missing signal: no
    scale-down on a guess)."""
    demand: dict[str, float | None] = {}
    wanted: list[Request] = []
    for pod in observation.pods:
        if not autoscale.is_running(pod):
            continue
        metadata = pod.get("metadata") or {}
        request = DemandRequest(f"{metadata.get('namespace')}/{metadata.get('name')}", str(metadata.get("uid")))
        held = observation.held(request)
        answer = held.answer if held is not None and isinstance(held.answer, DemandAnswer) else None
        demand[str(metadata.get("name"))] = answer.demand if answer is not None else None
        if request not in observation.fetching and (held is None or held.age_s >= autoscale.PERIOD_S):
            wanted.append(request)
    deployment = observation.children.get("Deployment")
    asked = ((deployment or {}).get("spec") or {}).get("replicas") if deployment is not None else None
    planned = autoscale.plan(
        autoscale.Observation(
            settings=settings,
            asked=asked if isinstance(asked, int) and not isinstance(asked, bool) else None,
            pods=observation.pods,
            demand_by_pod=demand,
            annotations=(obj.get("metadata") or {}).get("annotations") or {},
            history=observation.scaling_history,
            previous=(obj.get("status") or {}).get("autoscaling"),
            now=now.timestamp(),
            now_text=now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
    )
    return planned, wanted


def _adopt(child: dict[str, Any], owner: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the child with the LLMService as its controller (``kopf.adopt``: ownerReference, namespace,
    the owner's labels), so deleting the LLMService garbage-collects it."""
    adopted = copy.deepcopy(child)
    kopf.adopt(adopted, owner=dict(owner))  # type: ignore[arg-type]
    return adopted


def _model_step(llms: LLMService, observation: Observation) -> tuple[ModelPlan, list[Request]]:
    """The model plan from the hub answer the fetchers hold, and the fetch to ask for (none, a first one, or a
    refresh of an answer past its time)."""
    config = observation.config
    request = hub_request(llms, config.hub_endpoint)
    if request is None:
        return model_plan(llms, None, default_endpoint=config.hub_endpoint, bandwidth=config.bandwidth_bytes), []
    refused = endpoint_refusal(
        llms,
        request.endpoint,
        config.hub_endpoints,
        default_endpoint=config.hub_endpoint,
        bandwidth=config.bandwidth_bytes,
    )
    if refused is not None:
        # Neither the token nor the hub is asked: the endpoint is the tenant's choice, the list the operator's.
        return refused, []
    held = observation.held(request)
    answer = held.answer if held is not None and isinstance(held.answer, HubAnswer) else None
    wanted: list[Request] = []
    if request not in observation.fetching:
        if answer is None:
            wanted.append(request)
        else:
            resolved = answer.resolution.model
            pinned = resolved is not None and request.revision is not None and resolved.commit == request.revision
            ttl = RETRY_FAILED_S if resolved is None else float("inf") if pinned else REFRESH_BRANCH_S
            if held is not None and held.age_s >= ttl:
                wanted.append(request)
    pending = f"resolving {request.model} on {request.endpoint} (in the background, within {config.hub_deadline_s:g}s)"
    step = model_plan(
        llms, answer, default_endpoint=config.hub_endpoint, bandwidth=config.bandwidth_bytes, pending=pending
    )
    return step, wanted


def _resolved_before(previous: Mapping[str, Any], model: ModelPlan, generation: Any) -> bool:
    """Whether the previous status already shows this generation with this model resolved."""
    shown = previous.get("model") or {}
    status = model.status
    return (
        status is not None
        and previous.get("observedGeneration") == generation
        and bool(shown.get("commit"))
        and (shown.get("name"), shown.get("endpoint"), shown.get("revision"))
        == (status.name, status.endpoint, status.revision)
    )


def _loading(pods: list[dict[str, Any]], observation: Observation) -> tuple[LoadingStatus | None, list[Request]]:
    """The loading progress from the /loadz answers held, and the reads to ask for (absent or older than the
    refresh)."""
    wanted: list[Request] = []
    answers: dict[str, LoadzAnswer | None] = {}
    for pod in pods:
        metadata = pod.get("metadata") or {}
        request = LoadzRequest(f"{metadata.get('namespace')}/{metadata.get('name')}", str(metadata.get("uid")))
        held = observation.held(request)
        answer = held.answer if held is not None and isinstance(held.answer, LoadzAnswer) else None
        answers[request.uid] = answer
        if request not in observation.fetching and (held is None or held.age_s >= LOADING_REFRESH_S):
            wanted.append(request)

    def answer_of(pod: Mapping[str, Any]) -> LoadzAnswer | None:
        return answers.get(str((pod.get("metadata") or {}).get("uid")))

    loading = loading_status(pods, answer_of)
    # Only pods still loading are read: a ready pod's progress is not shown.
    loading_uids = {str((p.get("metadata") or {}).get("uid")) for p in pods if pods_loading([p])}
    return loading, [r for r in wanted if isinstance(r, LoadzRequest) and r.uid in loading_uids]


def _announce(
    obj: Mapping[str, Any],
    previous: Mapping[str, Any],
    status: Mapping[str, Any],
    storage: StorageCheck | None,
    invalid: str | None,
    observation: Observation,
    refusals: tuple[Refusal, ...],
    warnings: tuple[policy.PolicyWarning, ...] = (),
) -> tuple[tuple[Event, ...], tuple[tuple[int, str], ...], frozenset[tuple[str, str]]]:
    """Events and log lines when a warning appears or changes, never on a pass where nothing changed."""
    metadata = obj.get("metadata") or {}
    who = f"{metadata.get('namespace')}/{metadata.get('name')}"
    events: list[Event] = []
    logs: list[tuple[int, str]] = []

    def is_new(kind: str, reason: str, same: Callable[[Mapping[str, Any]], bool]) -> bool:
        before = condition(previous, kind) or {}
        return before.get("status") != "False" or before.get("reason") != reason or not same(before)

    storage_now = condition(status, STORAGE_READY) or {}
    if storage is not None and storage_now.get("reason") == INSUFFICIENT_STORAGE:
        # Announced again only when the need changes, not when a node's free space moves a little.
        required = (status.get("storage") or {}).get("required")
        fresh = is_new(
            STORAGE_READY,
            INSUFFICIENT_STORAGE,
            lambda _: (previous.get("storage") or {}).get("required") == required,
        )
        if fresh or observation.announce:
            best = (
                f"best node {storage.best_node} has {format_bytes(storage.best_node_free)} free"
                if storage.best_node is not None and storage.best_node_free is not None
                else "no eligible node"
            )
            logs.append(
                (
                    logging.WARNING,
                    f"LLMService {who} needs {format_bytes(storage.need)} of free ephemeral storage "
                    f"({format_bytes(storage.request)} + {format_bytes(storage.headroom)} headroom) on a node, but "
                    f"{best} ({storage.eligible_nodes} eligible of {storage.nodes_seen} nodes): its pods may stay "
                    "Pending or be evicted",
                )
            )
        if fresh:
            events.append(Event("Warning", INSUFFICIENT_STORAGE, str(storage_now.get("message", ""))))
    elif storage is not None and (condition(previous, STORAGE_READY) or {}).get("reason") == INSUFFICIENT_STORAGE:
        logs.append((logging.INFO, f"LLMService {who}: storage pre-flight passes now: {storage.message}"))
    if invalid is not None and is_new(READY, INVALID_SPEC, lambda before: invalid in str(before.get("message"))):
        logs.append((logging.WARNING, f"LLMService {who} has an invalid spec: {invalid}"))
        events.append(Event("Warning", INVALID_SPEC, invalid))
    # One Warning Event per distinct refusal (and per ReplicaFailure the status reports), not one per retry.
    degraded = condition(status, DEGRADED) or {}
    found = [(r.reason, r.message) for r in refusals]
    if not found and degraded.get("reason") in REFUSAL_REASONS:
        found = [(str(degraded["reason"]), str(degraded.get("message", "")))]
    before = condition(previous, DEGRADED) or {}
    posted = observation.posted
    for reason, message in found:
        if (reason, message) not in posted and message not in str(before.get("message", "")):
            events.append(Event("Warning", reason, message))
    # What the policy allows but warns of (a public Service without auth): once, when it appears or changes; the
    # Authenticated condition says it for as long as it lasts.
    shown = condition(previous, AUTHENTICATED) or {}
    for warning in warnings:
        if (shown.get("status"), shown.get("reason"), shown.get("message")) != (
            "False",
            warning.reason,
            warning.message,
        ):
            logs.append((logging.WARNING, f"LLMService {who}: {warning.message}"))
            events.append(Event("Warning", warning.reason, warning.message))
    return tuple(events), tuple(logs), posted | frozenset(found)
