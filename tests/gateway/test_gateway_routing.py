"""The gateway's routing decisions (kubellm_gateway.routing and catalog.backends_from), table by table."""

from __future__ import annotations

from typing import Any

import pytest

from kubellm_gateway.catalog import backends_from
from kubellm_gateway.routing import (
    Attempt,
    Backend,
    Outcome,
    Pod,
    RoutingError,
    Verdict,
    admit,
    after_attempt,
    hold_timeout_s,
    pick,
    progress_comment,
    resolve,
)

A = Backend("team-a", "chat", "m")
B = Backend("team-b", "chat", "m")
C = Backend("team-b", "code", "m")
BACKENDS = {b.id: b for b in (A, B, C)}


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("team-a/chat", "team-a/chat"),
        ("team-b/chat", "team-b/chat"),
        ("code", "team-b/code"),  # unique among the served namespaces
        ("chat", "model_ambiguous"),  # in two namespaces: must be NAMESPACE/NAME
        ("team-c/chat", "model_not_found"),
        ("nope", "model_not_found"),
        ("", "model_not_found"),
    ],
)
def test_resolve(model: str, expected: str) -> None:
    found = resolve(model, BACKENDS)
    if isinstance(found, RoutingError):
        assert found.status == 404 and found.code == expected
        assert "GET /v1/models" in found.message
    else:
        assert found.id == expected


P1, P2, P3 = Pod("p1", "10.0.0.1:5000", True), Pod("p2", "10.0.0.2:5000", True), Pod("p3", "10.0.0.3:5000", False)


@pytest.mark.parametrize(
    ("in_flight", "tried", "expected"),
    [
        ({}, (), "p1"),  # a tie: by name
        ({"10.0.0.1:5000": 2, "10.0.0.2:5000": 1}, (), "p2"),  # fewest in flight
        ({"10.0.0.2:5000": 5}, (), "p1"),
        ({}, ("10.0.0.1:5000",), "p2"),  # not the one already tried
        ({}, ("10.0.0.1:5000", "10.0.0.2:5000"), None),  # the not-Ready p3 is never picked
    ],
)
def test_pick(in_flight: dict[str, int], tried: tuple[str, ...], expected: str | None) -> None:
    chosen = pick((P3, P2, P1), in_flight, tried)
    assert (chosen.name if chosen else None) == expected


CONNECT, UNAVAILABLE = Attempt(Outcome.connect_failed), Attempt(Outcome.unavailable, 2)
BUSY, BUSY_7, OK = Attempt(Outcome.overloaded, 1), Attempt(Outcome.overloaded, 7), Attempt(Outcome.answered)


@pytest.mark.parametrize(
    ("attempts", "pods_left", "max_attempts", "retry", "status", "retry_after"),
    [
        ((OK,), 2, 3, False, None, None),  # an answer (whatever its status) is the client's
        ((CONNECT,), 1, 3, True, None, None),  # nothing was sent: another pod
        ((UNAVAILABLE,), 1, 3, True, None, None),  # 503 before the first byte: another pod
        ((BUSY,), 1, 3, True, None, None),
        ((BUSY, BUSY_7), 0, 3, False, 429, 7),  # every pod at capacity: 429, the longest Retry-After
        ((BUSY, CONNECT), 0, 3, False, 503, 1),  # not all 429: unavailable
        ((CONNECT, CONNECT, CONNECT), 5, 3, False, 503, 1),  # bounded: max_attempts
        ((UNAVAILABLE,), 0, 3, False, 503, 2),
    ],
)
def test_after_attempt(
    attempts: tuple[Attempt, ...],
    pods_left: int,
    max_attempts: int,
    retry: bool,
    status: int | None,
    retry_after: int | None,
) -> None:
    decision = after_attempt(attempts, pods_left, max_attempts)
    assert decision.retry is retry
    assert (decision.error.status if decision.error else None) == status
    assert (decision.error.retry_after if decision.error else None) == retry_after


READY = (Pod("p", "10.0.0.1:5000", True),)
STARTING = (Pod("p", "10.0.0.1:5000", False),)


def _backend(**fields: Any) -> Backend:
    return Backend("ns", "m", "m", **({"startup_budget_s": 600} | fields))


@pytest.mark.parametrize(
    ("backend", "held", "waited", "verdict", "code"),
    [
        (_backend(pods=READY), 0, 0.0, Verdict.route, None),
        (_backend(pods=READY, refusal="Degraded"), 0, 0.0, Verdict.route, None),  # a Ready pod still answers
        (_backend(can_wake=True), 0, 0.0, Verdict.hold, None),  # at zero with minReplicas 0: wake and hold
        (_backend(pods=STARTING, starting=True), 0, 0.0, Verdict.hold, None),  # pods starting: hold
        (_backend(), 0, 0.0, Verdict.refuse, "scaled_to_zero"),  # nothing will come: at once
        (_backend(can_wake=True, refusal="no node fits its storage"), 0, 0.0, Verdict.refuse, "unavailable"),
        (_backend(can_wake=True), 4, 0.0, Verdict.refuse, "hold_full"),  # over the bound per model
        (_backend(can_wake=True), 3, 629.0, Verdict.hold, None),  # within budget + margin
        (_backend(can_wake=True), 3, 630.0, Verdict.refuse, "hold_timeout"),
    ],
)
def test_admit(backend: Backend, held: int, waited: float, verdict: Verdict, code: str | None) -> None:
    decision = admit(backend, held=held, max_held=4, waited_s=waited, hold_cap_s=3600)
    assert decision.verdict == verdict
    assert (decision.error.code if decision.error else None) == code
    if decision.error is not None:
        assert decision.error.status == 503 and decision.error.retry_after is not None


BUSY_POD = {"10.0.0.1:5000": 8}


@pytest.mark.parametrize(
    ("backend", "in_flight", "held", "waited", "verdict"),
    [
        # Every Ready pod at its target while the autoscaler's pods start: held (its demand is published).
        (_backend(pods=READY, per_pod=8, growing=True), BUSY_POD, 0, 0.0, Verdict.hold),
        (_backend(pods=(*READY, *STARTING), per_pod=8, starting=True), BUSY_POD, 0, 0.0, Verdict.hold),
        (_backend(pods=READY, per_pod=8, growing=True), {"10.0.0.1:5000": 7}, 0, 0.0, Verdict.route),  # room left
        (_backend(pods=READY, per_pod=8), BUSY_POD, 0, 0.0, Verdict.route),  # nothing on its way: the pod queues it
        (_backend(pods=READY, growing=True), BUSY_POD, 0, 0.0, Verdict.route),  # no autoscaling target
        # Never refused for being busy: over the bound or past the hold time, the busy pod's queue takes it.
        (_backend(pods=READY, per_pod=8, growing=True), BUSY_POD, 4, 0.0, Verdict.route),
        (_backend(pods=READY, per_pod=8, growing=True), BUSY_POD, 0, 630.0, Verdict.route),
    ],
)
def test_admit_holds_while_ready_pods_are_saturated(
    backend: Backend, in_flight: dict[str, int], held: int, waited: float, verdict: Verdict
) -> None:
    decision = admit(backend, held=held, max_held=4, waited_s=waited, hold_cap_s=3600, in_flight=in_flight)
    assert decision.verdict == verdict and decision.error is None


def test_refusal_carries_the_reason() -> None:
    decision = admit(
        _backend(can_wake=True, refusal="no node fits its storage: needs 30Gi"),
        held=0,
        max_held=4,
        waited_s=0,
        hold_cap_s=60,
    )
    assert decision.error is not None and "needs 30Gi" in decision.error.message


def test_hold_timeout_is_the_startup_budget_capped() -> None:
    assert hold_timeout_s(_backend(startup_budget_s=100), 3600) == 130
    assert hold_timeout_s(_backend(startup_budget_s=100), 60) == 60


def test_progress_comment_is_one_sse_comment() -> None:
    line = progress_comment(_backend(progress="Downloading 6.2/14.5Gi (43%)\ndata: forged"), 12.4)
    assert line == b": kubellm: Downloading 6.2/14.5Gi (43%) data: forged (12s held)\n\n"


def _llms(name: str, namespace: str = "ns", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": {"name": "embedded:smollm2-135m-instruct"}}
    body.update(spec)
    return {
        "apiVersion": "kubellm.dev/v1alpha1",
        "kind": "LLMService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def _pod(owner: str, name: str, ip: str | None, ready: bool, port: int = 5000, **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "labels": {"kubellm.dev/llmservice": owner}, **meta},
        "spec": {"containers": [{"name": "inference", "ports": [{"containerPort": port}]}]},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_backends_from_objects() -> None:
    degraded = _llms("broken")
    degraded["status"] = {"conditions": [{"type": "Degraded", "status": "True", "reason": "X", "message": "why"}]}
    nofit = _llms("big", autoscaling={"minReplicas": 0, "maxReplicas": 2})
    nofit["status"] = {
        "conditions": [{"type": "StorageReady", "status": "False", "reason": "InsufficientStorage", "message": "m"}],
        "loading": {"message": "Downloading 1/2Gi (50%)"},
        "autoscaling": {"desiredReplicas": 0},
    }
    found = backends_from(
        [
            _llms("a"),
            _llms("hidden", gateway={"enabled": False}),
            degraded,
            nofit,
            _llms("named", env=[{"name": "KUBELLM_SERVED_MODEL_NAME", "value": "alias"}]),
            _llms("bad", replicas=-1),
        ],
        [
            _pod("a", "a-1", "10.0.0.1", True),
            _pod("a", "a-2", "10.0.0.2", False, port=8080),
            _pod("a", "a-3", None, False),  # not scheduled yet: no address
            _pod("a", "a-4", "10.0.0.4", True, deletionTimestamp="2026-01-01T00:00:00Z"),  # leaving
        ],
    )
    assert sorted(found) == ["ns/a", "ns/bad", "ns/big", "ns/broken", "ns/named"]
    a = found["ns/a"]
    assert [(p.name, p.address, p.ready) for p in a.pods] == [
        ("a-1", "10.0.0.1:5000", True),
        ("a-2", "10.0.0.2:8080", False),
    ]
    assert a.starting and not a.can_wake and a.refusal is None and a.served_model == "embedded:smollm2-135m-instruct"
    assert found["ns/broken"].refusal == "Degraded (X): why"
    assert found["ns/big"].can_wake and found["ns/big"].refusal == "no node fits its storage: m"
    assert found["ns/big"].progress == "Downloading 1/2Gi (50%)"
    assert found["ns/big"].per_pod == 8 and not found["ns/big"].growing and found["ns/a"].per_pod is None
    assert found["ns/named"].served_model == "alias"
    assert found["ns/bad"].refusal is not None and "invalid" in found["ns/bad"].refusal
