"""The autoscaling decision (kubellm_operator.autoscale), table by table: the pure function the pass calls."""

from __future__ import annotations

import pytest

from kubellm_operator import autoscale
from kubellm_operator.api import AutoscalingSpec
from kubellm_operator.autoscale import Pods, Sample, decide, held_annotation, held_requests, parse_demand, trim

S = AutoscalingSpec(min_replicas=0, max_replicas=3, target_requests_per_replica=8, scale_down_delay_seconds=60)
NOW = 1000.0


def flat(demand: float, since: float, step: float = 5.0) -> tuple[Sample, ...]:
    """A history with the same demand every `step` seconds from `since` seconds ago until now (excluded)."""
    count = int(since / step)
    return tuple(Sample(NOW - since + i * step, demand) for i in range(count))


@pytest.mark.parametrize(
    ("case", "history", "pods", "demand", "desired", "reason"),
    [
        ("wake from zero on one held request", (), Pods(0, 0, 0), 1, 1, autoscale.SCALED_UP),
        ("16 requests at 8 per replica", (), Pods(1, 1, 0), 16, 2, autoscale.SCALED_UP),
        ("never above maxReplicas", (), Pods(1, 1, 0), 1000, 3, autoscale.SCALED_UP),
        # The pending-pod guard: 2 asked, 1 Ready, 1 starting, demand unchanged: not 4 (AIBrix 2670).
        ("guard: a scale-up not repeated", flat(16, 30), Pods(2, 1, 1), 16, 2, autoscale.SCALE_UP_PENDING),
        ("guard: pods not even created", flat(16, 30), Pods(2, 0, 0), 16, 2, autoscale.SCALE_UP_PENDING),
        ("more demand than the pending capacity", flat(16, 30), Pods(2, 1, 1), 24, 3, autoscale.SCALED_UP),
        ("steady", flat(8, 120), Pods(1, 1, 0), 8, 1, autoscale.WITHIN_TARGET),
        ("idle at zero", flat(0, 120), Pods(0, 0, 0), 0, 0, autoscale.SCALED_TO_ZERO),
        # Down: only after the demand stayed below for scaleDownDelaySeconds.
        (
            "below for less than the delay",
            flat(16, 120)[:-6] + flat(3, 30),
            Pods(2, 2, 0),
            3,
            2,
            autoscale.SCALE_DOWN_DELAYED,
        ),
        ("below for the whole delay", flat(16, 120)[:12] + flat(3, 65), Pods(2, 2, 0), 3, 1, autoscale.SCALED_DOWN),
        ("to zero after the delay", flat(0, 120), Pods(1, 1, 0), 0, 0, autoscale.SCALED_TO_ZERO),
        ("history too short (a restart)", flat(0, 30), Pods(1, 1, 0), 0, 1, autoscale.SCALE_DOWN_DELAYED),
        (
            "a peak inside the window holds",
            (*flat(0, 120)[:-4], Sample(NOW - 15, 9), *flat(0, 10)),
            Pods(2, 2, 0),
            0,
            2,
            autoscale.SCALE_DOWN_DELAYED,
        ),
        ("spec lowered maxReplicas", (), Pods(5, 5, 0), 100, 3, autoscale.BOUNDED),
    ],
)
def test_decide(case: str, history: tuple[Sample, ...], pods: Pods, demand: float, desired: int, reason: str) -> None:
    decision = decide(history, pods, S, NOW, demand=demand)
    assert (decision.desired, decision.reason) == (desired, reason), decision.message
    assert decision.message


def test_min_replicas_holds_a_floor() -> None:
    floor = S.model_copy(update={"min_replicas": 1})
    assert decide(flat(0, 300), Pods(2, 2, 0), floor, NOW, demand=0).desired == 1
    assert decide((), Pods(0, 0, 0), floor, NOW, demand=0).reason == autoscale.BOUNDED


def test_no_delay_scales_down_at_once() -> None:
    at_once = S.model_copy(update={"scale_down_delay_seconds": 0})
    assert decide((), Pods(3, 3, 0), at_once, NOW, demand=9).desired == 2


@pytest.mark.parametrize(
    ("pods", "demand", "desired", "reason"),
    [
        (Pods(2, 2, 0), 3, 2, autoscale.SIGNAL_MISSING),  # never down on a missing signal
        (Pods(1, 1, 0), 20, 3, autoscale.SCALED_UP),  # up on the lower bound still
    ],
)
def test_missing_signal(pods: Pods, demand: float, desired: int, reason: str) -> None:
    decision = decide(flat(0, 300), pods, S, NOW, demand=demand, signal_missing="pod x: no /metrics")
    assert (decision.desired, decision.reason) == (desired, reason)
    assert decision.signal_missing == "pod x: no /metrics"


def test_trim_keeps_the_window_and_the_sample_before() -> None:
    history = flat(1, 200)
    kept = trim(history, NOW, 60)
    assert kept[0].at < NOW - 60 <= kept[1].at and len(kept) == 13


@pytest.mark.parametrize(
    ("annotations", "held"),
    [
        ({}, 0),
        ({"held.gateway.kubellm.dev/gw-1": held_annotation(3, NOW)}, 3),
        (
            {
                "held.gateway.kubellm.dev/gw-1": held_annotation(3, NOW - 5),
                "held.gateway.kubellm.dev/gw-2": held_annotation(2, NOW),
            },
            5,
        ),
        ({"held.gateway.kubellm.dev/gw-1": held_annotation(3, NOW - 31)}, 0),  # a gateway that stopped refreshing
        ({"held.gateway.kubellm.dev/gw-1": "3"}, 0),
        ({"held.gateway.kubellm.dev/gw-1": '{"held": true, "at": 1000}'}, 0),
        ({"held.gateway.kubellm.dev/gw-1": '{"held": -4, "at": 1000}'}, 0),
        ({"held.gateway.kubellm.dev/gw-1": '{"held": 10000000, "at": 1000}'}, autoscale.HELD_MAX),
        ({"other/gw-1": held_annotation(3, NOW)}, 0),
    ],
)
def test_held_requests(annotations: dict[str, str], held: int) -> None:
    assert held_requests(annotations, NOW) == held


@pytest.mark.parametrize(
    ("text", "demand"),
    [
        ("# HELP kubellm_queue_depth x\nkubellm_queue_depth 3.0\nkubellm_batch_size 2.0\n", 5.0),
        ("kubellm_queue_depth 0.0\nkubellm_batch_size 0.0\n", 0.0),
        ("kubellm_queue_depth 3.0\n", None),  # half a signal is no signal
        ("kubellm_queue_depth NaN\nkubellm_batch_size 1\n", None),
        ("kubellm_queue_depth -1\nkubellm_batch_size 1\n", None),
        ("<html>", None),
    ],
)
def test_parse_demand(text: str, demand: float | None) -> None:
    assert parse_demand(text) == demand


def _pod(name: str, ready: bool) -> dict[str, object]:
    return {
        "metadata": {"name": name},
        "status": {"phase": "Running", "podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": str(ready)}]},
    }


def _observe(demand: dict[str, float | None], **fields: object) -> autoscale.Observation:
    pods = [_pod("busy", False), _pod("idle", True)]
    base: dict[str, object] = {
        "settings": S,
        "asked": 2,
        "pods": pods,
        "demand_by_pod": demand,
        "annotations": {},
        "history": flat(8, 120),
        "previous": {"desiredReplicas": 2, "lastScaleTime": "2026-01-01T00:00:00Z"},
        "now": NOW,
        "now_text": "2026-12-06T00:00:00Z",
    }
    return autoscale.Observation(**(base | fields))  # type: ignore[arg-type]


def test_plan_counts_a_busy_pod_that_is_not_ready() -> None:
    # A pod too busy to pass its readiness probe still carries its 8 requests: they keep a replica (counting
    # only the Ready pods said 0, and scaled to zero under them).
    planned = autoscale.plan(_observe({"busy": 8.0, "idle": 0.0}))
    assert planned.decision.demand == 8 and planned.desired == 1
    assert planned.condition[0] == "True" and planned.sample == Sample(NOW, 8.0)


def test_plan_missing_signal_only_from_ready_pods() -> None:
    loading = autoscale.plan(_observe({"busy": None, "idle": 0.0}))  # a pod not Ready that does not answer
    assert loading.condition[:2] == ("True", autoscale.DEMAND_KNOWN)
    missing = autoscale.plan(_observe({"busy": 8.0, "idle": None}))
    assert missing.condition[:2] == ("False", autoscale.SIGNAL_MISSING) and "idle" in missing.condition[2]
    assert missing.sample is None and missing.desired == 2


def test_plan_adds_held_requests_and_keeps_last_scale_time() -> None:
    held = {autoscale.HELD_ANNOTATION_PREFIX + "gw": held_annotation(9, NOW)}
    planned = autoscale.plan(_observe({"busy": 8.0, "idle": 0.0}, annotations=held))
    assert planned.held == 9 and planned.decision.demand == 17 and planned.desired == 3
    assert planned.status["lastScaleTime"] == "2026-12-06T00:00:00Z"
    steady = autoscale.plan(_observe({"busy": 8.0, "idle": 8.0}))
    assert steady.status["lastScaleTime"] == "2026-01-01T00:00:00Z"
