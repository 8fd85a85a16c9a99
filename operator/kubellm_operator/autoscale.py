"""The autoscaling decision of ``spec.autoscaling``: how many replicas an LLMService's Deployment should ask for.

:func:`decide` is pure: (demand history, pods by state, settings, now) -> :class:`Decision`. The operator's pass
gathers its inputs (the pods' own ``kubellm_queue_depth`` and ``kubellm_batch_size`` from their ``/metrics``, so
traffic that bypasses the gateway counts, plus the requests the gateways hold, published as annotations on the
LLMService) and writes its output (the Deployment's replicas, ``status.autoscaling``, the ``ScalingActive``
condition).

The rules, each against an anchor's known failure:

- needed = ceil(demand / targetRequestsPerReplica), within [minReplicas, maxReplicas], at least 1 while any
  request waits (a request held at zero replicas wakes the LLMService).
- **Pending-pod guard**: capacity is what the Deployment was already asked for (Ready or not), never the Ready pods
  only. Demand is a total, not a per-Ready-pod average, so a scale-up whose pods are still starting is never
  repeated (AIBrix issue 2670: 2 -> 4 -> 8 -> 16 while the first pods were Pending).
- Scale down only to the highest need seen during the last ``scaleDownDelaySeconds``, and only once the history
  covers that whole window (after an operator restart, the first window holds the replicas where they are).
- A missing signal (a Ready pod whose metrics cannot be read) never scales down and is reported, never replaced by
  a fallback (llm-d PR 2492); a scale-up on what is known (a lower bound) still happens.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubellm_operator.api import AutoscalingSpec

# Reasons (one CamelCase word, as conditions and status.autoscaling carry them).
SCALED_UP = "ScaledUp"
SCALED_DOWN = "ScaledDown"
SCALED_TO_ZERO = "ScaledToZero"
WITHIN_TARGET = "WithinTarget"
SCALE_DOWN_DELAYED = "ScaleDownDelayed"
SCALE_UP_PENDING = "ScaleUpPending"
BOUNDED = "Bounded"
SIGNAL_MISSING = "SignalMissing"

# The gateways publish the requests they hold for an LLMService as annotations on it, one key per gateway replica
# (a merge patch of its own key never overwrites another replica's): "held.gateway.kubellm.dev/<gateway pod>".
HELD_ANNOTATION_PREFIX = "held.gateway.kubellm.dev/"
# A gateway refreshes its annotation while it holds requests; one that stopped (crashed, scaled in) is ignored
# after this, so a dead gateway cannot pin replicas up.
HELD_TTL_S = 30.0
HELD_MAX = 100_000  # an annotation is tenant-writable: a bound on what one can claim (maxReplicas bounds the rest)


@dataclass(frozen=True)
class Sample:
    """Demand seen at one time (seconds since the epoch)."""

    at: float
    demand: float


@dataclass(frozen=True)
class Pods:
    """The pods of the LLMService, by state."""

    asked: int  # the Deployment's spec.replicas now (what the last decision asked for)
    ready: int
    starting: int  # created, not Ready, not terminating (Pending, pulling, loading the model)


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str
    message: str
    demand: float
    signal_missing: str | None = None  # why the pods' demand is not known (then `demand` is a lower bound)


def needed(demand: float, settings: AutoscalingSpec) -> int:
    """Replicas that carry ``demand`` at the target, within the bounds."""
    if demand <= 0:
        return settings.min_replicas
    wanted = math.ceil(demand / settings.target_requests_per_replica)
    return max(settings.min_replicas, 1, min(wanted, settings.max_replicas))


def trim(history: Sequence[Sample], now: float, delay_s: float) -> tuple[Sample, ...]:
    """The samples a decision at ``now`` can use: those in the scale-down window, plus the newest one before it
    (which shows that the window is covered from its start)."""
    start = now - delay_s
    inside = [s for s in history if s.at >= start]
    before = [s for s in history if s.at < start]
    return tuple(before[-1:] + inside)


def decide(
    history: Sequence[Sample],
    pods: Pods,
    settings: AutoscalingSpec,
    now: float,
    *,
    demand: float,
    signal_missing: str | None = None,
) -> Decision:
    """The replicas to ask for now. ``history`` holds earlier samples with a known demand (oldest first);
    ``demand`` is the demand now (a lower bound when ``signal_missing`` says why it is not known)."""
    # Pending-pod guard: pods asked for but not yet created or Ready are capacity already on its way.
    current = max(pods.asked, 0)
    want = needed(demand, settings)
    target = settings.target_requests_per_replica
    seen = f"demand {demand:g} (target {target} per replica)"
    if current > settings.max_replicas or current < settings.min_replicas:
        bounded = min(max(current, settings.min_replicas), settings.max_replicas)
        desired = max(bounded, min(want, settings.max_replicas))
        return Decision(
            desired,
            BOUNDED,
            f"{current} replicas is outside minReplicas {settings.min_replicas} .. maxReplicas "
            f"{settings.max_replicas}; {seen}",
            demand,
            signal_missing,
        )
    if want > current:
        starting = pods.starting + max(current - pods.ready - pods.starting, 0)
        guard = f"; {starting} asked for and not Ready yet count as capacity" if starting else ""
        lower = " at least (some pods' metrics are missing)" if signal_missing else ""
        return Decision(want, SCALED_UP, f"{seen}{lower} needs {want} replicas{guard}", demand, signal_missing)
    if signal_missing is not None:
        return Decision(
            current,
            SIGNAL_MISSING,
            f"holding {current} replicas: the demand is not known ({signal_missing})",
            demand,
            signal_missing,
        )
    if want == current:
        if current == 0:
            return Decision(
                0, SCALED_TO_ZERO, "no demand: at zero replicas (a request to the gateway wakes it)", demand
            )
        if pods.ready < current:
            message = f"{seen} needs {current}; {current - pods.ready} of them not Ready yet (not asked for again)"
            return Decision(current, SCALE_UP_PENDING, message, demand)
        return Decision(current, WITHIN_TARGET, f"{seen} needs {current} replicas", demand)
    delay = settings.scale_down_delay_seconds
    window = trim(history, now, delay)
    covered = delay == 0 or (bool(window) and window[0].at <= now - delay)
    peak = max([want, *(needed(s.demand, settings) for s in window if s.at >= now - delay)])
    if not covered or peak >= current:
        # No running count of seconds in the message: it would change the status (a write) on every pass.
        message = (
            f"{seen} needs {want}; keeping {current} until it has stayed below for {delay}s (scaleDownDelaySeconds)"
        )
        return Decision(current, SCALE_DOWN_DELAYED, message, demand)
    reason = SCALED_TO_ZERO if peak == 0 else SCALED_DOWN
    message = f"{seen} has needed at most {peak} replicas for {delay}s (scaleDownDelaySeconds)"
    return Decision(peak, reason, message, demand)


def held_requests(annotations: Mapping[str, Any], now: float) -> int:
    """The requests the gateways hold for an LLMService, from their annotations (fresh ones only).

    Each value is ``{"held": N, "at": EPOCH_SECONDS}``; a malformed or stale one counts 0 (it is tenant-writable:
    at worst a tenant scales its own LLMService up to its own maxReplicas).
    """
    total = 0
    for key, value in annotations.items():
        if not key.startswith(HELD_ANNOTATION_PREFIX) or not isinstance(value, str) or len(value) > 200:
            continue
        try:
            parsed = json.loads(value)
        except ValueError:
            continue
        if not isinstance(parsed, dict):
            continue
        held, at = parsed.get("held"), parsed.get("at")
        if isinstance(held, bool) or not isinstance(held, int) or not isinstance(at, int | float):
            continue
        if held > 0 and abs(now - float(at)) <= HELD_TTL_S:
            total += min(held, HELD_MAX)
    return min(total, HELD_MAX)


def held_annotation(held: int, now: float) -> str:
    """The value a gateway writes (the inverse of :func:`held_requests` for one key)."""
    return json.dumps({"held": held, "at": round(now, 3)}, separators=(",", ":"))


def pods_by_state(asked: int, pods: Iterable[Mapping[str, Any]]) -> Pods:
    """Count the LLMService's pods: Ready, and starting (not Ready, not terminating, not finished)."""
    ready = starting = 0
    for pod in pods:
        status = pod.get("status") or {}
        if (pod.get("metadata") or {}).get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
            continue
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        if conditions.get("Ready") == "True":
            ready += 1
        else:
            starting += 1
    return Pods(asked=asked, ready=ready, starting=starting)


def is_running(pod: Mapping[str, Any]) -> bool:
    """A pod whose server may hold requests: running, with an address, not on its way out."""
    status = pod.get("status") or {}
    leaving = (pod.get("metadata") or {}).get("deletionTimestamp")
    return not leaving and status.get("phase") == "Running" and bool(status.get("podIP"))


def parse_demand(text: str) -> float | None:
    """In flight + queued from a server's Prometheus exposition (``kubellm_batch_size`` + ``kubellm_queue_depth``),
    or None when either is absent or not a number."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, rest = line.partition(" ")
        if name in ("kubellm_batch_size", "kubellm_queue_depth"):
            try:
                value = float(rest.split()[0])
            except (ValueError, IndexError):
                return None
            if not math.isfinite(value) or value < 0:
                return None
            found[name] = value
    if len(found) != 2:
        return None
    return found["kubellm_batch_size"] + found["kubellm_queue_depth"]


# ---------------------------------------------------------------------------------------------------------
# One pass's autoscaling: observation in, replicas + status + condition out (pure; plan.py calls it with what the
# background fetchers hold, the operator keeps the history)
# ---------------------------------------------------------------------------------------------------------

SCALING_ACTIVE = "ScalingActive"  # the condition type (as the HorizontalPodAutoscaler names it)
DEMAND_KNOWN = "DemandKnown"
PERIOD_S = 2.0  # how often an autoscaled LLMService with pods (or held requests) is looked at again


@dataclass(frozen=True)
class Observation:
    settings: AutoscalingSpec
    asked: int | None  # the live Deployment's spec.replicas; None before the Deployment exists
    pods: Sequence[Mapping[str, Any]]
    # Running pod -> in flight + queued; None: its metrics were unreadable. Not only the Ready pods: a pod too busy
    # to pass its readiness probe still carries its requests, and scaling it away would cut them off.
    demand_by_pod: Mapping[str, float | None]
    annotations: Mapping[str, Any]  # the LLMService's (the gateways' held requests)
    history: Sequence[Sample]
    previous: Mapping[str, Any] | None  # the previous status.autoscaling (wire shape)
    now: float  # seconds since the epoch
    now_text: str  # the same, RFC 3339, for lastScaleTime


@dataclass(frozen=True)
class Plan:
    desired: int
    decision: Decision
    held: int
    status: dict[str, Any]  # status.autoscaling, wire shape
    condition: tuple[str, str, str]  # ScalingActive: (status, reason, message)
    sample: Sample | None  # what to add to the history (None when the demand was not fully known)
    asked: int | None = None  # the Deployment's replicas the decision started from (Observation.asked)
    history: tuple[Sample, ...] = ()  # the history to keep for the next decision (the sample added, trimmed)


def plan(seen: Observation) -> Plan:
    held = held_requests(seen.annotations, seen.now)
    # Only a Ready pod that does not answer is a missing signal; one still loading answers nothing useful yet.
    ready = {str((p.get("metadata") or {}).get("name")) for p in seen.pods if pods_by_state(0, [p]).ready}
    missing = sorted(name for name, value in seen.demand_by_pod.items() if value is None and name in ready)
    known = sum(value for value in seen.demand_by_pod.values() if value is not None)
    demand = round(known + held, 3)
    why_missing = (
        f"no demand from {len(missing)} Ready pod(s) ({', '.join(missing[:3])}): their /metrics did not answer "
        "kubellm_queue_depth and kubellm_batch_size"
        if missing
        else None
    )
    asked = seen.asked if seen.asked is not None else seen.settings.min_replicas
    decision = decide(
        seen.history,
        pods_by_state(asked, seen.pods),
        seen.settings,
        seen.now,
        demand=demand,
        signal_missing=why_missing,
    )
    previous = seen.previous or {}
    changed = previous.get("desiredReplicas") != decision.desired
    last_scale = seen.now_text if changed and seen.asked is not None else previous.get("lastScaleTime")
    status = {
        "desiredReplicas": decision.desired,
        "demand": demand,
        "held": held,
        "lastScaleTime": last_scale,
        "reason": decision.reason,
        "message": decision.message,
    }
    if why_missing is not None:
        condition = ("False", SIGNAL_MISSING, why_missing)
    else:
        condition = ("True", DEMAND_KNOWN, f"demand {demand:g}: in flight and queued on the pods, {held} held")
    sample = Sample(seen.now, demand) if why_missing is None else None
    return Plan(
        decision.desired,
        decision,
        held,
        {k: v for k, v in status.items() if v is not None},
        condition,
        sample,
        seen.asked,
        trim(
            (*seen.history, *([sample] if sample is not None else [])), seen.now, seen.settings.scale_down_delay_seconds
        ),
    )
