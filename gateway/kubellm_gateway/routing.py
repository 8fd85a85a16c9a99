"""The gateway's routing decisions, as pure functions of what it knows (table-tested in tests/gateway).

- :func:`resolve`: which LLMService a request's ``model`` names (``NAMESPACE/NAME``, or ``NAME`` when exactly one
  served namespace has it).
- :func:`pick`: the Ready pod with the fewest requests in flight, among those not tried yet for this request.
- :func:`after_attempt`: after an upstream attempt, retry on another pod or answer.
- :func:`admit`: route now, hold the request (its LLMService is waking or its pods are starting), or refuse it
  with the reason (Degraded, no node fits, scaled to zero without autoscaling, too many held, held too long).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum


@dataclass(frozen=True)
class Pod:
    name: str
    address: str  # podIP:containerPort
    ready: bool


@dataclass(frozen=True)
class Backend:
    """One served LLMService, as the gateway sees it from the watches."""

    namespace: str
    name: str
    served_model: str  # what its pods call the model (the body's `model` is rewritten to it)
    pods: tuple[Pod, ...] = ()
    can_wake: bool = False  # spec.autoscaling with minReplicas 0: a held request wakes it
    starting: bool = False  # pods asked for and not Ready yet (a rollout, a scale-up, a restart)
    startup_budget_s: int = 1800  # spec.probes.startup.budgetSeconds: how long a pod may take to load
    refusal: str | None = None  # Degraded, or no node fits the storage: no point in holding
    progress: str | None = None  # status.loading.message, for held clients
    per_pod: int | None = None  # spec.autoscaling.targetRequestsPerReplica: what one pod is meant to carry
    growing: bool = False  # the autoscaler asks for more pods than are Ready (status.autoscaling.desiredReplicas)

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.name}"

    def ready_pods(self) -> tuple[Pod, ...]:
        return tuple(p for p in self.pods if p.ready)


@dataclass(frozen=True)
class RoutingError:
    status: int
    message: str
    code: str
    retry_after: int | None = None


def resolve(model: str, backends: Mapping[str, Backend]) -> Backend | RoutingError:
    """The backend ``model`` names; ``backends`` is keyed by ``NAMESPACE/NAME``."""
    how = "GET /v1/models lists the ids this gateway serves (NAMESPACE/NAME)"
    if "/" in model:
        found = backends.get(model)
        if found is not None:
            return found
        return RoutingError(404, f"model {model!r} is not served by this gateway; {how}", "model_not_found")
    matches = sorted(key for key, backend in backends.items() if backend.name == model)
    if len(matches) == 1:
        return backends[matches[0]]
    if len(matches) > 1:
        return RoutingError(
            404,
            f"model {model!r} is ambiguous: {', '.join(matches)}; name it as NAMESPACE/NAME ({how})",
            "model_ambiguous",
        )
    return RoutingError(404, f"model {model!r} is not served by this gateway; {how}", "model_not_found")


def pick(pods: Iterable[Pod], in_flight: Mapping[str, int], tried: Iterable[str] = ()) -> Pod | None:
    """The Ready pod not tried yet with the fewest requests in flight (ties: by name, for stable tests)."""
    skip = set(tried)
    candidates = [p for p in pods if p.ready and p.address not in skip]
    if not candidates:
        return None
    return min(candidates, key=lambda p: (in_flight.get(p.address, 0), p.name))


class Outcome(StrEnum):
    connect_failed = "connect_failed"  # nothing was sent: safe to send elsewhere
    unavailable = "unavailable"  # 503 before the first byte (draining, not ready)
    overloaded = "overloaded"  # 429: the pod's queue is full
    answered = "answered"  # anything else: passed to the client as it is


@dataclass(frozen=True)
class Attempt:
    outcome: Outcome
    retry_after: int | None = None  # the pod's Retry-After on 429/503


@dataclass(frozen=True)
class Next:
    """After an attempt: ``retry`` on another pod, else answer (``error`` when the gateway answers itself)."""

    retry: bool
    error: RoutingError | None = None


def after_attempt(attempts: tuple[Attempt, ...], pods_left: int, max_attempts: int) -> Next:
    """Whether to try another pod after ``attempts`` (the last one is the newest)."""
    last = attempts[-1]
    if last.outcome == Outcome.answered:
        return Next(retry=False)
    if pods_left > 0 and len(attempts) < max_attempts:
        return Next(retry=True)
    if all(a.outcome == Outcome.overloaded for a in attempts):
        after = max((a.retry_after or 1 for a in attempts), default=1)
        return Next(
            False,
            RoutingError(
                429, f"every replica tried ({len(attempts)}) is at capacity; retry later", "overloaded", after
            ),
        )
    kinds = sorted({a.outcome.value for a in attempts})
    after = max((a.retry_after or 1 for a in attempts), default=1)
    return Next(
        False,
        RoutingError(
            503, f"no replica could take the request ({len(attempts)} tried: {', '.join(kinds)})", "unavailable", after
        ),
    )


class Verdict(StrEnum):
    route = "route"
    hold = "hold"
    refuse = "refuse"


@dataclass(frozen=True)
class Admission:
    verdict: Verdict
    error: RoutingError | None = None
    detail: str = field(default="")


HOLD_MARGIN_S = 30  # past the startup budget: the pod's Ready transition has to reach the gateway's watch


def hold_timeout_s(backend: Backend, cap_s: float) -> float:
    """How long a request may be held: a pod's startup budget (it is restarted after that) plus a margin, capped
    by the gateway's setting."""
    return float(min(backend.startup_budget_s + HOLD_MARGIN_S, cap_s))


def saturated(backend: Backend, in_flight: Mapping[str, int]) -> bool:
    """Whether every Ready pod already carries its target while more pods are on their way: a request sent now
    would wait in a busy pod's queue, where the new pods can never take it over."""
    if backend.per_pod is None or not (backend.growing or backend.starting):
        return False
    return all(in_flight.get(p.address, 0) >= backend.per_pod for p in backend.ready_pods())


def admit(
    backend: Backend,
    *,
    held: int,
    max_held: int,
    waited_s: float,
    hold_cap_s: float,
    in_flight: Mapping[str, int] | None = None,
) -> Admission:
    """Route, hold or refuse a request for ``backend``; ``held`` counts the requests already held for it (this one
    excluded when it is already held), ``waited_s`` how long this one has waited, ``in_flight`` the requests this
    gateway has on each pod."""
    who = backend.id
    if backend.ready_pods():
        # Held until the pods asked for are Ready (their load shows in the held demand, so the autoscaler counts
        # them), but never refused for it: past the hold time, or over the bound, a busy pod's queue takes it.
        busy = saturated(backend, in_flight or {})
        if not busy or held >= max_held or waited_s >= hold_timeout_s(backend, hold_cap_s):
            return Admission(Verdict.route)
        return Admission(Verdict.hold, detail=f"every Ready replica of {who} is busy; more are starting")
    if backend.refusal is not None:
        return Admission(
            Verdict.refuse, RoutingError(503, f"{who} cannot serve now: {backend.refusal}", "unavailable", 30)
        )
    if not backend.can_wake and not backend.starting:
        message = (
            f"{who} has no Ready replica and none is starting (replicas 0 without autoscaling.minReplicas 0 to wake "
            "it); scale it up"
        )
        return Admission(Verdict.refuse, RoutingError(503, message, "scaled_to_zero", 30))
    limit = hold_timeout_s(backend, hold_cap_s)
    if waited_s >= limit:
        message = f"{who} had no Ready replica within {limit:.0f}s (the startup budget); {backend.progress or ''}"
        return Admission(
            Verdict.refuse, RoutingError(503, message.rstrip("; "), "hold_timeout", _retry_after(limit / 10))
        )
    if held >= max_held:
        message = f"{who} is starting and already holds {held} requests (the gateway's limit per model); retry later"
        return Admission(Verdict.refuse, RoutingError(503, message, "hold_full", 5))
    return Admission(Verdict.hold, detail=backend.progress or "waiting for a Ready replica")


def _retry_after(seconds: float) -> int:
    return max(1, min(math.ceil(seconds), 300))


def progress_comment(backend: Backend, waited_s: float) -> bytes:
    """The SSE comment a held streaming client receives: ``: kubellm: Downloading 6.2/14.5Gi (43%)``."""
    line = backend.progress or f"waiting for a Ready replica of {backend.id}"
    line = " ".join(line.split())[:300]  # one line: a newline would end the comment
    return f": kubellm: {line} ({waited_s:.0f}s held)\n\n".encode()
