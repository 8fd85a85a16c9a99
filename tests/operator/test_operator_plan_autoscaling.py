"""spec.autoscaling inside the pure plan: the demand the background fetchers hold and the gateways' held-requests
annotations in, the Deployment's replicas, status.autoscaling, ScalingActive and the history to keep out. No API,
no network, no sleeps; the fetchers are exercised with in-process callables (no sockets)."""

from __future__ import annotations

import dataclasses
import datetime
import threading
import time
from collections.abc import Mapping
from typing import Any

from test_operator_plan import NOW, condition, converged_children, llmservice, observe

from kubellm_operator import autoscale
from kubellm_operator.fetchers import DemandAnswer, DemandRequest, Fetchers, Held, LoadzRequest
from kubellm_operator.modelplan import HubAnswer, HubRequest
from kubellm_operator.plan import Plan, plan
from kubellm_operator.resolve import Resolution

AUTOSCALING = {"minReplicas": 0, "maxReplicas": 4, "targetRequestsPerReplica": 8, "scaleDownDelaySeconds": 60}
DEMAND_1 = DemandRequest("default/tiny-1", "pod-1")


def autoscaled(annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    obj = llmservice(autoscaling=AUTOSCALING)
    if annotations:
        obj["metadata"]["annotations"] = dict(annotations)
    return obj


def ready_pod(name: str = "tiny-1", uid: str = "pod-1", ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "default", "uid": uid, "labels": {"kubellm.dev/llmservice": "tiny"}},
        "status": {
            "phase": "Running",
            "podIP": "127.0.0.2",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def with_replicas(children: dict[str, dict[str, Any]], replicas: int) -> dict[str, dict[str, Any]]:
    deployment = {**children["Deployment"], "spec": {**children["Deployment"]["spec"], "replicas": replicas}}
    return {**children, "Deployment": deployment}


def deployment_replicas(decided: Plan) -> int:
    (deployment,) = [c.desired for c in decided.children if c.kind == "Deployment"]
    replicas: int = deployment["spec"]["replicas"]
    return replicas


def running_at_one() -> dict[str, dict[str, Any]]:
    """The children as an earlier pass left them: the Deployment asked for one replica (a held request woke it)."""
    held = {autoscale.HELD_ANNOTATION_PREFIX + "gw-1": autoscale.held_annotation(1, NOW.timestamp())}
    return converged_children(plan(observe(autoscaled(held)), None, NOW))


def demand_reads(decided: Plan) -> list[DemandRequest]:
    return [r for r in decided.fetches if isinstance(r, DemandRequest)]


def test_a_new_autoscaled_llmservice_starts_at_min_replicas_with_the_decision_in_the_plan() -> None:
    decided = plan(observe(autoscaled()), None, NOW)
    assert deployment_replicas(decided) == 0
    assert decided.scaling is not None and decided.scaling.desired == 0
    assert decided.status["autoscaling"]["reason"] == autoscale.SCALED_TO_ZERO
    assert condition(decided, autoscale.SCALING_ACTIVE)["status"] == "True"
    assert decided.fetches == () and decided.recheck_s is None  # no pod to read, nothing held, nothing asked


def test_a_held_request_wakes_it_from_zero() -> None:
    held = {autoscale.HELD_ANNOTATION_PREFIX + "gw-1": autoscale.held_annotation(1, NOW.timestamp())}
    children = with_replicas(converged_children(plan(observe(autoscaled()), None, NOW)), 0)
    decided = plan(observe(autoscaled(held), children=children), None, NOW)
    assert deployment_replicas(decided) == 1 and [c.kind for c in decided.writes] == ["Deployment"]
    assert decided.status["autoscaling"]["held"] == 1 and decided.status["autoscaling"]["lastScaleTime"]
    assert decided.recheck_s == autoscale.PERIOD_S
    assert any("replicas 0 -> 1" in line for _, line in decided.logs)


def test_a_running_pod_without_a_held_demand_is_asked_for_and_never_scaled_down_on() -> None:
    decided = plan(observe(autoscaled(), children=running_at_one(), pods=(ready_pod(),)), None, NOW)
    assert demand_reads(decided) == [DEMAND_1]
    assert deployment_replicas(decided) == 1 and decided.writes == ()
    shown = condition(decided, autoscale.SCALING_ACTIVE)
    assert (shown["status"], shown["reason"]) == ("False", autoscale.SIGNAL_MISSING) and "tiny-1" in shown["message"]
    assert decided.scaling is not None and decided.scaling.sample is None  # a guess never enters the history


def test_the_held_demand_scales_up_and_enters_the_history() -> None:
    fetched = {DEMAND_1: Held(DemandAnswer(20.0), 0.5)}
    seen = observe(autoscaled(), children=running_at_one(), pods=(ready_pod(),), fetched=fetched)
    decided = plan(seen, None, NOW)
    assert deployment_replicas(decided) == 3  # ceil(20 / 8)
    assert decided.status["autoscaling"]["reason"] == autoscale.SCALED_UP
    assert condition(decided, autoscale.SCALING_ACTIVE)["reason"] == autoscale.DEMAND_KNOWN
    assert demand_reads(decided) == []  # the answer is fresh: not read again before the period
    assert decided.scaling is not None and decided.scaling.history == (autoscale.Sample(NOW.timestamp(), 20.0),)
    stale = dataclasses.replace(seen, fetched={DEMAND_1: Held(DemandAnswer(20.0), autoscale.PERIOD_S)})
    assert demand_reads(plan(stale, None, NOW)) == [DEMAND_1]
    assert demand_reads(plan(dataclasses.replace(stale, fetching=frozenset({DEMAND_1})), None, NOW)) == []


def test_a_not_ready_pod_counts_its_demand_but_is_no_missing_signal() -> None:
    busy = ready_pod(ready=False)
    unknown = plan(observe(autoscaled(), children=running_at_one(), pods=(busy,)), None, NOW)
    assert condition(unknown, autoscale.SCALING_ACTIVE)["status"] == "True" and demand_reads(unknown) == [DEMAND_1]
    fetched = {DEMAND_1: Held(DemandAnswer(12.0), 0.1)}
    decided = plan(observe(autoscaled(), children=running_at_one(), pods=(busy,), fetched=fetched), None, NOW)
    assert deployment_replicas(decided) == 2


def test_scale_down_waits_for_a_history_covering_the_delay() -> None:
    idle = {DEMAND_1: Held(DemandAnswer(0.0), 0.1)}
    seen = observe(autoscaled(), children=running_at_one(), pods=(ready_pod(),), fetched=idle)
    fresh = plan(seen, None, NOW)
    assert deployment_replicas(fresh) == 1 and fresh.status["autoscaling"]["reason"] == autoscale.SCALE_DOWN_DELAYED
    since = NOW.timestamp() - AUTOSCALING["scaleDownDelaySeconds"] - 1
    history = tuple(autoscale.Sample(since + i * 10, 0.0) for i in range(7))
    decided = plan(dataclasses.replace(seen, scaling_history=history), None, NOW)
    assert deployment_replicas(decided) == 0 and decided.status["autoscaling"]["reason"] == autoscale.SCALED_TO_ZERO


def test_the_replan_after_writes_keeps_the_decision_of_the_pass() -> None:
    fetched = {DEMAND_1: Held(DemandAnswer(20.0), 0.5)}
    seen = observe(autoscaled(), children=running_at_one(), pods=(ready_pod(),), fetched=fetched)
    first = plan(seen, None, NOW)
    written = {**seen.children, "Deployment": next(c.desired for c in first.children if c.kind == "Deployment")}
    again = plan(dataclasses.replace(seen, children=written, scaled=first.scaling), None, NOW)
    assert again.scaling == first.scaling and again.status["autoscaling"] == first.status["autoscaling"]
    assert again.writes == () and any("replicas 1 -> 3" in line for _, line in again.logs)


def test_without_autoscaling_no_demand_is_read() -> None:
    children = converged_children(plan(observe(), None, NOW))
    decided = plan(observe(children=children, pods=(ready_pod(),)), None, NOW)
    assert decided.scaling is None and demand_reads(decided) == []
    assert deployment_replicas(decided) == 1 and "autoscaling" not in decided.status


def test_the_fetchers_read_demand_in_the_background_and_queue_a_pass_on_a_change() -> None:
    queued: list[tuple[str, str]] = []
    answered = threading.Event()
    values = iter([3.0, None])

    def demand(_key: tuple[str, str], request: DemandRequest) -> float | None:
        assert request == DEMAND_1
        return next(values)

    def notify(key: tuple[str, str]) -> None:
        queued.append(key)
        answered.set()

    def hub(request: HubRequest) -> HubAnswer:
        return HubAnswer(Resolution(None, None, "unused"))

    def loadz(_key: tuple[str, str], _request: LoadzRequest) -> None:
        return None

    fetchers = Fetchers(hub=hub, loadz=loadz, demand=demand, notify=notify, workers=1)
    try:
        key = ("default", "tiny")
        fetchers.request(key, [DEMAND_1])
        assert answered.wait(10)
        assert fetchers.held(key)[DEMAND_1].answer == DemandAnswer(3.0) and queued == [key]
        answered.clear()
        fetchers.request(key, [DEMAND_1])
        assert answered.wait(10)
        assert fetchers.held(key)[DEMAND_1].answer == DemandAnswer(None) and queued == [key, key]
    finally:
        fetchers.close()


def test_a_demand_read_past_its_deadline_is_unknown() -> None:
    release = threading.Event()
    done = threading.Event()

    def hanging(_key: tuple[str, str], _request: DemandRequest) -> float | None:
        release.wait(10)
        return 5.0

    def hub(request: HubRequest) -> HubAnswer:
        return HubAnswer(Resolution(None, None, "unused"))

    fetchers = Fetchers(
        hub=hub,
        loadz=lambda _k, _r: None,
        demand=hanging,
        notify=lambda _key: done.set(),
        workers=1,
        demand_deadline_s=0.05,
    )
    try:
        key = ("default", "tiny")
        started = time.monotonic()
        fetchers.request(key, [DEMAND_1])
        assert done.wait(10) and time.monotonic() - started < 5
        assert fetchers.held(key)[DEMAND_1].answer == DemandAnswer(None) and fetchers.timeouts == 1
    finally:
        release.set()
        fetchers.close()


def test_the_history_is_trimmed_to_the_window() -> None:
    old = autoscale.Sample(NOW.timestamp() - 1000, 5.0)
    fetched = {DEMAND_1: Held(DemandAnswer(1.0), 0.1)}
    seen = observe(
        autoscaled(), children=running_at_one(), pods=(ready_pod(),), fetched=fetched, scaling_history=(old, old)
    )
    decided = plan(seen, None, NOW + datetime.timedelta(seconds=0))
    assert decided.scaling is not None
    assert decided.scaling.history == (old, autoscale.Sample(NOW.timestamp(), 1.0))
