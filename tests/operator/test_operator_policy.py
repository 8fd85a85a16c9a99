"""Pure parts of issue 11: the retry policy, refusal classification, list repairs, scheduler-style storage counting,
status for refusals and slow starts, and the one human-units formatter. Table tests, no clock, no network."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from kubellm.quantity import format_bytes
from kubellm_operator.api import GIB, LLMServiceSpec
from kubellm_operator.children import list_repairs
from kubellm_operator.execute import refusal
from kubellm_operator.status import Observed, compute_status, condition
from kubellm_operator.storage import NodeFacts, check_storage, pod_ephemeral_request
from kubellm_operator.workqueue import RetryPolicy

KEY = ("default", "tiny")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def policy(rng: float = 1.0) -> tuple[RetryPolicy, Clock]:
    clock = Clock()
    return RetryPolicy(base=1.0, cap=300.0, rng=lambda: rng, clock=clock), clock


def test_backoff_doubles_from_one_second_to_five_minutes() -> None:
    retry, _ = policy(rng=1.0)  # the top of the jitter range: the plain step
    delays = [retry.failed(KEY, "a") for _ in range(12)]
    assert delays[:5] == [1, 2, 4, 8, 16]
    assert delays[-1] == 300 and max(delays) == 300


def test_jitter_spreads_each_step_over_half_to_all_of_it() -> None:
    low, _ = policy(rng=0.0)
    assert [low.failed(KEY, "a") for _ in range(3)] == [0.5, 1.0, 2.0]


def test_retry_after_is_honoured() -> None:
    retry, _ = policy()
    assert retry.failed(KEY, "a", retry_after=7) == 7
    assert retry.failed(KEY, "a", retry_after=0.1) == 2  # never sooner than the backoff either


def test_backoff_is_reset_only_by_a_different_write_or_a_spec_change() -> None:
    retry, clock = policy()
    retry.failed(KEY, "a")
    retry.failed(KEY, "a")
    assert retry.attempts(KEY) == 2
    retry.failed(KEY, None)  # a transient error before the plan: same backoff
    assert retry.attempts(KEY) == 3
    assert retry.failed(KEY, "b") == 1  # what would be written changed: start over
    retry.reset(KEY)
    assert retry.wait(KEY) == 0
    assert retry.attempts(KEY) == 0
    clock.now += 1000
    assert retry.wait(KEY) == 0


def test_a_permanent_refusal_is_held_until_the_write_changes() -> None:
    retry, clock = policy()
    refused = refusal(api_error(422, "Invalid", 'Service "tiny" is invalid: spec.ports[0].nodePort: ...'), "Service x")
    assert refused is not None and refused.permanent
    assert math.isinf(retry.failed(KEY, "a", permanent=True, refusals=(refused,)))
    clock.now += 10**6
    assert retry.holding(KEY, "a") == (refused,)
    assert retry.holding(KEY, "b") is None


def api_error(status: int, reason: str, message: str, retry_after: str | None = None) -> ApiException:
    error = ApiException(status=status, reason=reason)
    error.body = json.dumps({"kind": "Status", "status": "Failure", "reason": reason, "message": message})
    error.headers = {"Retry-After": retry_after} if retry_after else {}
    return error


@pytest.mark.parametrize(
    ("status", "reason", "message", "expected", "permanent"),
    [
        (
            422,
            "Invalid",
            'Service "tiny" is invalid: spec.ports[1].name: Duplicate value: "http"',
            "ChildRejected",
            True,
        ),
        (400, "BadRequest", "bad", "ChildRejected", True),
        (403, "Forbidden", 'pods "x" is forbidden: exceeded quota: q, requested: ...', "QuotaExceeded", False),
        (403, "Forbidden", 'deployments.apps "tiny" is forbidden: User "x" cannot patch', "Forbidden", False),
        (404, "NotFound", 'namespaces "gone" not found', "ApiRefused", False),
        (409, "Conflict", "the object has been modified", None, None),
        (429, "TooManyRequests", "slow down", None, None),
        (500, "InternalError", "etcd", None, None),
    ],
)
def test_refusals_by_cause(status: int, reason: str, message: str, expected: str | None, permanent: Any) -> None:
    found = refusal(api_error(status, reason, message), "Service default/tiny")
    if expected is None:
        assert found is None  # transient: retried with backoff, not reported as refused
        return
    assert found is not None
    assert (found.reason, found.permanent) == (expected, permanent)
    assert found.message == f"Service default/tiny was refused ({status} {reason}): {message}"


def test_a_forbidden_write_carries_its_retry_after() -> None:
    found = refusal(api_error(403, "Forbidden", "exceeded quota: q", retry_after="12"), "Deployment d")
    assert found is not None and found.retry_after == 12


SERVICE = {"spec": {"ports": [{"name": "http", "port": 5000, "targetPort": "http", "protocol": "TCP"}]}}


@pytest.mark.parametrize(
    ("live_ports", "repaired"),
    [
        ([{"name": "http", "port": 5000, "targetPort": "http", "protocol": "TCP", "nodePort": 1}], False),
        ([{"name": "http", "port": 5000, "targetPort": 8080, "protocol": "TCP"}], False),  # apply fixes it
        ([{"name": "http", "port": 80, "protocol": "TCP"}], True),  # kubectl patch replaced the list
        ([{"name": "http", "port": 5000, "protocol": "TCP"}, {"name": "x", "port": 81, "protocol": "TCP"}], True),
        ([{"name": "http", "port": 5000}, {"name": "http", "port": 5000, "protocol": "TCP"}], True),  # twice
    ],
)
def test_list_repairs_replace_only_lists_with_foreign_keys(live_ports: list[Any], repaired: bool) -> None:
    ops = list_repairs("Service", SERVICE, {"spec": {"ports": live_ports}})
    assert ops == ([{"op": "replace", "path": "/spec/ports", "value": SERVICE["spec"]["ports"]}] if repaired else [])


def test_list_repairs_reach_into_containers_by_name() -> None:
    desired = {"spec": {"containers": [{"name": "inference", "env": [{"name": "A", "value": "1"}]}]}}
    live = {
        "spec": {
            "containers": [{"name": "inference", "env": [{"name": "A", "value": "1"}, {"name": "X", "value": "2"}]}]
        }
    }
    assert list_repairs("Deployment", desired, live) == [
        {"op": "replace", "path": "/spec/containers/0/env", "value": [{"name": "A", "value": "1"}]}
    ]


def pod(requests: dict[str, str], init: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "a", "resources": {"requests": requests}}]}
    if init is not None:
        spec["initContainers"] = [{"name": "i", "resources": {"requests": init}}]
    return {"spec": spec}


def test_pod_requests_count_as_the_scheduler_counts_them() -> None:
    assert pod_ephemeral_request(pod({"ephemeral-storage": "2Gi"})) == 2 * GIB
    assert pod_ephemeral_request(pod({"ephemeral-storage": "2Gi"}, init={"ephemeral-storage": "5Gi"})) == 5 * GIB
    assert pod_ephemeral_request(pod({"cpu": "1"})) == 0


def test_free_storage_is_allocatable_minus_other_pods_requests() -> None:
    node = NodeFacts(
        name="n", allocatable=100 * GIB, requested=(("", 30 * GIB), ("default/tiny", 21 * GIB), ("x/y", 10 * GIB))
    )
    assert node.free_for(None) == 39 * GIB
    assert node.free_for("default/tiny") == 60 * GIB  # the LLMService's own pods are the ones being placed
    spec = LLMServiceSpec.model_validate({"model": {"name": "m"}, "storage": {"request": "50Gi"}})
    check = check_storage(spec, [node], 2 * GIB, owner="default/tiny")
    assert check.ok and check.best_node_free == 60 * GIB
    assert "requests of the pods on each node" in check.basis
    assert not check_storage(spec, [node], 2 * GIB, owner="other/llm").ok


def observed(**fields: Any) -> Observed:
    base: dict[str, Any] = {
        "generation": 1,
        "desired": 1,
        "deployment": None,
        "pods": [],
        "storage": None,
        "selector": "s",
        "endpoint": "e",
    }
    return Observed(**(base | fields))


def test_a_refusal_is_degraded_and_not_ready_while_nothing_serves() -> None:
    status = compute_status(observed(refusals=(("ChildRejected", "Service x was refused: ..."),)), None, "T")
    assert status["phase"] == "Degraded"
    assert (condition(status, "Degraded") or {})["reason"] == "ChildRejected"
    assert (condition(status, "Ready") or {})["status"] == "False"


def test_a_refusal_with_the_old_pods_serving_keeps_ready() -> None:
    deployment = {"status": {"readyReplicas": 1, "replicas": 1, "updatedReplicas": 1}}
    status = compute_status(observed(deployment=deployment, refusals=(("Forbidden", "no"),)), None, "T")
    assert (condition(status, "Ready") or {})["status"] == "True"
    assert (condition(status, "Degraded") or {})["reason"] == "Forbidden"


def test_pods_refused_by_a_quota_are_quota_exceeded() -> None:
    deployment = {
        "status": {
            "conditions": [
                {
                    "type": "ReplicaFailure",
                    "status": "True",
                    "reason": "FailedCreate",
                    "message": 'pods "tiny-1" is forbidden: exceeded quota: storage, requested: '
                    "requests.ephemeral-storage=3Gi, used: requests.ephemeral-storage=0, limited: "
                    "requests.ephemeral-storage=1Gi",
                }
            ]
        }
    }
    status = compute_status(observed(deployment=deployment), None, "T")
    assert (condition(status, "Degraded") or {})["reason"] == "QuotaExceeded"
    assert "exceeded quota: storage" in (condition(status, "Ready") or {})["message"]


def slow_start(started: str) -> Observed:
    import datetime

    deployment = {
        "metadata": {"generation": 1},
        "status": {
            "observedGeneration": 1,
            "replicas": 1,
            "updatedReplicas": 1,
            "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}],
        },
    }
    running = {
        "metadata": {"name": "p"},
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {"name": "inference", "started": False, "state": {"running": {"startedAt": started}}}
            ],
        },
    }
    return observed(
        deployment=deployment,
        pods=[running],
        startup_budget_seconds=1800,
        now=datetime.datetime(2026, 1, 1, 1, 0, tzinfo=datetime.UTC),
    )


def test_a_slow_start_within_its_startup_budget_is_model_loading_not_failed() -> None:
    status = compute_status(slow_start("2026-01-01T00:40:00Z"), None, "T")  # 20 min of a 30 min budget
    assert (status["phase"], (condition(status, "Ready") or {})["reason"]) == ("Progressing", "ModelLoading")
    past = compute_status(slow_start("2026-01-01T00:20:00Z"), None, "T")  # 40 min: the kubelet gave up
    assert (past["phase"], (condition(past, "Ready") or {})["reason"]) == ("Failed", "ProgressDeadlineExceeded")


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (10 * 2**40, "10Ti"),
        (10243 * GIB, "10.0Ti"),
        (72302012 * 1024, "69.0Gi"),
        (22 * GIB, "22Gi"),
        (1536 * 2**20, "1.5Gi"),
        (512, "512"),
        (0, "0"),
    ],
)
def test_one_formatter_for_sizes_in_messages(value: int, shown: str) -> None:
    assert format_bytes(value) == shown


def idle_operator(**settings: Any) -> Any:
    import kubernetes.client

    from kubellm_operator.cluster import Cluster
    from kubellm_operator.config import OperatorSettings
    from kubellm_operator.metrics import OperatorMetrics
    from kubellm_operator.reconcile import Operator

    config = kubernetes.client.Configuration()
    config.host = "http://127.0.0.1:9"  # never called: these tests only queue and ask for health
    return Operator(OperatorSettings(**settings), Cluster(config), OperatorMetrics())


def test_a_node_driven_requeue_does_not_cut_a_backoff_short() -> None:
    op = idle_operator()
    op.remember(KEY, exists=True)
    for _ in range(4):
        op.retry.failed(KEY, "a")  # the fourth step: 4-8 s
    op.requeue_all()  # a Node changed
    due = op.queue.due_in(KEY)
    assert due is not None and due > 3
    op.spec_changed(KEY)  # the spec changed: at once
    assert (op.queue.due_in(KEY) or 0) <= 0


def test_health_fails_when_a_pass_has_been_due_too_long() -> None:
    op = idle_operator(stall_after_s=60, watch_stall_after_s=0)
    assert op.health() is None
    op.queue.add(KEY, delay=-120)  # as if due two minutes ago and never taken
    assert "the work queue has had a pass due for 120s" in (op.health() or "")


def test_a_first_start_slower_than_ten_minutes_is_still_progressing() -> None:
    """The emulator's Deployment controller over the rendered Deployment: 20 minutes into a 30-minute startup
    budget, a Deployment with the old default deadline (600 s) has timed out; the rendered one has not."""
    import datetime

    from kubellm_emulator.deployments import POD_TEMPLATE_HASH, deployment_status, template_hash
    from kubellm_operator.api import LLMService
    from kubellm_operator.render import render_deployment

    llms = LLMService.model_validate(
        {"metadata": {"name": "tiny", "namespace": "default"}, "spec": {"model": {"name": "m"}}}
    )
    rendered = render_deployment(llms, image_default="img")
    rendered["metadata"]["generation"] = 1
    started, now = "2026-01-01T00:00:00Z", "2026-01-01T00:20:00Z"
    pod = {
        "metadata": {"name": "tiny-1", "labels": {POD_TEMPLATE_HASH: template_hash(rendered["spec"]["template"])}},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [
                {"name": "inference", "started": False, "state": {"running": {"startedAt": started}}}
            ],
        },
    }

    def progressing_after(deployment: dict[str, Any]) -> tuple[dict[str, Any], str]:
        first = {**deployment, "status": deployment_status(deployment, [pod], started)}
        later = deployment_status(first, [pod], now)
        status = compute_status(
            observed(
                deployment={**first, "status": later},
                pods=[pod],
                startup_budget_seconds=1800,
                now=datetime.datetime(2026, 1, 1, 0, 20, tzinfo=datetime.UTC),
            ),
            None,
            "T",
        )
        condition_of = {c["type"]: c for c in later["conditions"]}
        return status, str(condition_of["Progressing"]["reason"])

    old = {**rendered, "spec": {k: v for k, v in rendered["spec"].items() if k != "progressDeadlineSeconds"}}
    _, reason = progressing_after(old)
    assert reason == "ProgressDeadlineExceeded"  # what a real cluster said mid-download before issue 11
    status, reason = progressing_after(rendered)
    assert reason != "ProgressDeadlineExceeded"
    assert (status["phase"], (condition(status, "Ready") or {})["reason"]) == ("Progressing", "ModelLoading")


def test_a_node_change_queues_only_the_llmservices_whose_storage_status_changes() -> None:
    from kubellm_operator.status import storage_view
    from kubellm_operator.storage import NodeFacts, check_storage

    op = idle_operator(storage_headroom="0")
    small, large = (
        LLMServiceSpec.model_validate({"model": {"name": "m"}, "storage": {"request": r}}) for r in ("10Gi", "100Gi")
    )
    nodes = {"a": NodeFacts("a", allocatable=50 * GIB), "big": NodeFacts("big", allocatable=200 * GIB)}
    op.nodes.replace({name: [facts] for name, facts in nodes.items()})
    for key, spec in ((("ns", "small"), small), (("ns", "large"), large)):
        op.remember(key, exists=True)
        view = storage_view(check_storage(spec, op.nodes.facts(), 0, "/".join(key)))
        op._storage_basis[key] = (spec, view)
    # Jitter on both nodes: no verdict moves, nothing is queued.
    op.nodes.replace({"a": [NodeFacts("a", allocatable=49 * GIB)], "big": [NodeFacts("big", allocatable=199 * GIB)]})
    assert op.reevaluate_storage() == [] and op.queue.pending() == 0
    # The big node cordoned: only the LLMService that fitted nowhere else.
    cordoned = NodeFacts("big", allocatable=200 * GIB, unschedulable=True)
    op.nodes.replace({"a": [nodes["a"]], "big": [cordoned]})
    assert op.reevaluate_storage() == [("ns", "large")]
    assert op.queue.due_in(("ns", "large")) is not None and op.queue.due_in(("ns", "small")) is None
