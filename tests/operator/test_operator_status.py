"""Status from the workload: phases, condition reasons, transition times and write-only-on-change (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from kubellm_operator.api import GIB, LLMServiceSpec
from kubellm_operator.status import Observed, compute_status, condition, merge_patch, pod_problem, status_patch
from kubellm_operator.storage import NodeFacts, check_storage

T0 = "2026-01-01T00:00:00Z"
T1 = "2026-01-01T00:05:00Z"
SPEC = LLMServiceSpec.model_validate({"model": {"name": "m"}, "storage": {"request": "10Gi"}})
FITS = check_storage(SPEC, [NodeFacts(name="big", allocatable=100 * GIB)], headroom=2 * GIB)
SHORT = check_storage(SPEC, [NodeFacts(name="small", allocatable=5 * GIB)], headroom=2 * GIB)


def deployment(
    replicas: int = 1,
    ready: int = 0,
    updated: int | None = None,
    *,
    generation: int = 1,
    observed: int = 1,
    conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {"name": "tiny", "generation": generation},
        "status": {
            "observedGeneration": observed,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": replicas if updated is None else updated,
            "conditions": conditions or [],
        },
    }


def pod(phase: str = "Running", *, containers: list[dict[str, Any]] | None = None, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "tiny-abc"},
        "status": {"phase": phase, "containerStatuses": containers or [], **status},
    }


def unschedulable_pod(message: str) -> dict[str, Any]:
    """A Pending pod the scheduler could not place, with the scheduler's message."""
    scheduled = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
    return pod("Pending", conditions=[scheduled])


def container(**fields: Any) -> dict[str, Any]:
    return {"name": "inference", "restartCount": 0, "ready": False, "started": False, "state": {}, **fields}


def observe(**fields: Any) -> Observed:
    base: dict[str, Any] = {
        "generation": 3,
        "desired": 1,
        "deployment": deployment(),
        "pods": [],
        "storage": FITS,
        "selector": "kubellm.dev/llmservice=tiny",
        "endpoint": "tiny.default.svc.cluster.local:5000",
    }
    return Observed(**(base | fields))


def reasons(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


CRASH = container(
    restartCount=4,
    state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
    lastState={"terminated": {"exitCode": 1, "reason": "Error"}},
)
OOM = container(
    restartCount=2,
    state={"waiting": {"reason": "CrashLoopBackOff"}},
    lastState={"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
)
PULL = container(state={"waiting": {"reason": "ErrImagePull", "message": "not found"}})
STARTUP = container(
    restartCount=3, started=False, state={"running": {}}, lastState={"terminated": {"exitCode": 137, "reason": "Error"}}
)
LOADING = container(started=False, state={"running": {}})


@pytest.mark.parametrize(
    ("seen", "phase", "ready", "progressing", "degraded"),
    [
        (
            observe(deployment=deployment(ready=1)),
            "Ready",
            ("True", "MinimumReplicasAvailable"),
            ("False", "RolloutComplete"),
            ("False", "Healthy"),
        ),
        (
            observe(deployment=deployment(replicas=0), desired=0),
            "Pending",
            ("False", "ScaledToZero"),
            ("False", "ScaledToZero"),
            ("False", "Healthy"),
        ),
        (
            observe(pods=[pod("Pending")]),
            "Pending",
            ("False", "PodsPending"),
            ("True", "PodsPending"),
            ("False", "Healthy"),
        ),
        (
            observe(pods=[pod("Pending")], storage=SHORT),
            "Pending",
            ("False", "InsufficientStorage"),
            ("True", "InsufficientStorage"),
            ("False", "Healthy"),
        ),
        (
            observe(pods=[pod(containers=[LOADING])]),
            "Progressing",
            ("False", "ModelLoading"),
            ("True", "ModelLoading"),
            ("False", "Healthy"),
        ),
        (
            observe(deployment=deployment(replicas=2, ready=1, updated=1), pods=[pod(containers=[LOADING])]),
            "Progressing",
            ("True", "MinimumReplicasAvailable"),
            ("True", "RollingUpdate"),
            ("False", "Healthy"),
        ),
        (
            observe(deployment=deployment(ready=1, generation=2, observed=1)),
            "Progressing",
            ("True", "MinimumReplicasAvailable"),
            ("True", "RollingUpdate"),
            ("False", "Healthy"),
        ),
        (
            observe(pods=[pod(containers=[CRASH])]),
            "Degraded",
            ("False", "CrashLoopBackOff"),
            ("True", "CrashLoopBackOff"),
            ("True", "CrashLoopBackOff"),
        ),
        # A stuck rollout still serves from the old pods: Ready stays True, Degraded says why.
        (
            observe(deployment=deployment(replicas=2, ready=1, updated=1), pods=[pod(containers=[CRASH])]),
            "Degraded",
            ("True", "MinimumReplicasAvailable"),
            ("True", "CrashLoopBackOff"),
            ("True", "CrashLoopBackOff"),
        ),
        (
            observe(pods=[pod(containers=[CRASH]), pod(containers=[OOM])]),
            "Degraded",
            ("False", "OOMKilled"),
            ("True", "OOMKilled"),
            ("True", "OOMKilled"),
        ),
        (
            observe(pods=[pod(containers=[PULL])]),
            "Degraded",
            ("False", "ImagePullBackOff"),
            ("True", "ImagePullBackOff"),
            ("True", "ImagePullBackOff"),
        ),
        (
            observe(pods=[pod(containers=[STARTUP])]),
            "Degraded",
            ("False", "StartupProbeFailed"),
            ("True", "StartupProbeFailed"),
            ("True", "StartupProbeFailed"),
        ),
        (
            observe(pods=[pod("Failed", reason="Evicted", message="The node was low on resource: ephemeral-storage.")]),
            "Degraded",
            ("False", "EvictedEphemeralStorage"),
            ("True", "EvictedEphemeralStorage"),
            ("True", "EvictedEphemeralStorage"),
        ),
        (
            observe(pods=[pod("Failed", reason="Evicted", message="The node was low on resource: memory.")]),
            "Degraded",
            ("False", "Evicted"),
            ("True", "Evicted"),
            ("True", "Evicted"),
        ),
        (
            observe(pods=[unschedulable_pod("0/3 nodes are available: 3 Insufficient ephemeral-storage.")]),
            "Degraded",
            ("False", "InsufficientEphemeralStorage"),
            ("True", "InsufficientEphemeralStorage"),
            ("True", "InsufficientEphemeralStorage"),
        ),
        (
            observe(pods=[unschedulable_pod("0/3 nodes are available: 3 Insufficient cpu.")]),
            "Degraded",
            ("False", "Unschedulable"),
            ("True", "Unschedulable"),
            ("True", "Unschedulable"),
        ),
        (
            observe(
                deployment=deployment(
                    conditions=[
                        {
                            "type": "Progressing",
                            "status": "False",
                            "reason": "ProgressDeadlineExceeded",
                            "message": "timed out",
                        }
                    ]
                ),
                pods=[pod(containers=[LOADING])],
            ),
            "Failed",
            ("False", "ProgressDeadlineExceeded"),
            ("False", "ProgressDeadlineExceeded"),
            ("True", "ProgressDeadlineExceeded"),
        ),
        (
            observe(invalid="storage.limit (1Gi) is smaller than model.sizeHint (5Gi)"),
            "Failed",
            ("False", "InvalidSpec"),
            ("False", "InvalidSpec"),
            ("True", "InvalidSpec"),
        ),
        (
            observe(held_for_storage=True, storage=SHORT, deployment=deployment(replicas=0)),
            "Pending",
            ("False", "InsufficientStorage"),
            ("False", "InsufficientStorage"),
            ("False", "Healthy"),
        ),
    ],
)
def test_phase_and_reasons(
    seen: Observed, phase: str, ready: tuple[str, str], progressing: tuple[str, str], degraded: tuple[str, str]
) -> None:
    status = compute_status(seen, None, T0)
    assert status["phase"] == phase
    found = reasons(status)
    assert (found["Ready"], found["Progressing"], found["Degraded"]) == (ready, progressing, degraded)


def test_status_fields_for_kubectl_and_scale() -> None:
    status = compute_status(observe(deployment=deployment(replicas=2, ready=1, updated=2), desired=2), None, T0)
    assert {k: status[k] for k in ("observedGeneration", "replicas", "readyReplicas", "updatedReplicas", "ready")} == {
        "observedGeneration": 3,
        "replicas": 2,
        "readyReplicas": 1,
        "updatedReplicas": 2,
        "ready": "1/2",
    }
    assert status["selector"] == "kubellm.dev/llmservice=tiny"
    assert status["endpoint"] == "tiny.default.svc.cluster.local:5000"
    assert status["storage"] == {
        "required": "12Gi",
        "fittingNodes": 1,
        "eligibleNodes": 1,
        "nodesSeen": 1,
        "bestNode": "big",
        "bestNodeFree": "100Gi",
    }
    assert [c["type"] for c in status["conditions"]] == ["Ready", "StorageReady", "Progressing", "Degraded"]
    assert all(c["observedGeneration"] == 3 and c["lastTransitionTime"] == T0 for c in status["conditions"])


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        (FITS, ("True", "StorageAvailable")),
        (SHORT, ("False", "InsufficientStorage")),
        (check_storage(SPEC, [], headroom=0), ("Unknown", "NodesUnknown")),
        (None, ("Unknown", "InvalidSpec")),
    ],
)
def test_storage_ready(storage: Any, expected: tuple[str, str]) -> None:
    assert reasons(compute_status(observe(storage=storage), None, T0))["StorageReady"] == expected


def test_storage_message_names_need_and_best_node() -> None:
    message = condition(compute_status(observe(storage=SHORT), None, T0), "StorageReady")["message"]  # type: ignore[index]
    assert message == (
        "no eligible node has 12Gi of free ephemeral storage (10Gi + 2Gi headroom); best node small "
        "has 5Gi free (1 eligible of 1 nodes)"
    )


def test_last_transition_time_moves_only_when_a_condition_flips() -> None:
    first = compute_status(observe(pods=[pod("Pending")]), None, T0)
    # Same statuses, different reason and message: the time stays.
    second = compute_status(observe(pods=[pod(containers=[LOADING])]), first, T1)
    assert {c["type"]: c["lastTransitionTime"] for c in second["conditions"]} == dict.fromkeys(
        ("Ready", "StorageReady", "Progressing", "Degraded"), T0
    )
    third = compute_status(observe(deployment=deployment(ready=1)), second, T1)
    times = {c["type"]: c["lastTransitionTime"] for c in third["conditions"]}
    assert times == {"Ready": T1, "StorageReady": T0, "Progressing": T1, "Degraded": T0}


def test_nothing_to_write_when_nothing_changed() -> None:
    seen = observe(deployment=deployment(ready=1))
    first = compute_status(seen, None, T0)
    again = compute_status(seen, first, T1)
    assert again == first
    assert status_patch({**first, "kopf": {"progress": {}}}, again) is None


def test_patch_replaces_conditions_whole_and_nulls_what_is_gone() -> None:
    before = compute_status(observe(), None, T0)
    after = compute_status(observe(storage=None, endpoint=None, invalid="bad"), before, T1)
    patch = status_patch({**before, "kopf": {"x": 1}}, after)
    assert patch is not None
    assert patch["endpoint"] is None and patch["storage"] is None
    assert patch["conditions"] == after["conditions"]
    assert "kopf" not in patch


def test_merge_patch_nulls_nested_fields() -> None:
    assert merge_patch({"storage": {"bestNode": "a", "nodesSeen": 1}}, {"storage": {"nodesSeen": 2}}) == {
        "storage": {"bestNode": None, "nodesSeen": 2}
    }
    assert merge_patch({"a": [1, 2]}, {"a": [1, 2]}) == {}
    assert merge_patch({"a": [1, 2]}, {"a": [2]}) == {"a": [2]}


def test_pods_being_deleted_are_not_problems() -> None:
    leaving = pod(containers=[CRASH])
    leaving["metadata"]["deletionTimestamp"] = T0
    status = compute_status(observe(pods=[leaving]), None, T0)
    assert (status["phase"], reasons(status)["Degraded"]) == ("Pending", ("False", "Healthy"))


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ({"phase": "Succeeded"}, None),
        ({"phase": "Running", "containerStatuses": [container(ready=True, started=True, state={"running": {}})]}, None),
        (
            {
                "phase": "Failed",
                "reason": "Evicted",
                "message": 'Usage of EmptyDir volume "model-cache" exceeds the limit "1Gi".',
            },
            "EvictedEphemeralStorage",
        ),
        (
            {
                "phase": "Failed",
                "reason": "Evicted",
                "message": "Pod ephemeral local storage usage exceeds the total limit of containers 2Gi.",
            },
            "EvictedEphemeralStorage",
        ),
        ({"phase": "Failed", "reason": "DeadlineExceeded"}, "PodFailed"),
        (
            {
                "phase": "Pending",
                "containerStatuses": [
                    container(
                        state={"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "hf" not found'}}
                    )
                ],
            },
            "CreateContainerConfigError",
        ),
        (
            {"phase": "Running", "containerStatuses": [container(state={"terminated": {"reason": "OOMKilled"}})]},
            "OOMKilled",
        ),
        # A crash before the startup probe passed, with a normal exit code, is a crash, not the probe.
        (
            {
                "phase": "Running",
                "containerStatuses": [
                    container(
                        restartCount=1,
                        state={"waiting": {"reason": "CrashLoopBackOff"}},
                        lastState={"terminated": {"exitCode": 1}},
                    )
                ],
            },
            "CrashLoopBackOff",
        ),
    ],
)
def test_pod_problem(status: dict[str, Any], reason: str | None) -> None:
    problem = pod_problem({"metadata": {"name": "p"}, "status": status})
    assert (problem.reason if problem else None) == reason


def test_problem_message_counts_pods_and_says_what_to_do() -> None:
    status = compute_status(observe(pods=[pod(containers=[OOM]), pod(containers=[OOM])]), None, T0)
    message = condition(status, "Degraded")["message"]  # type: ignore[index]
    assert message.startswith("2 pods: pod tiny-abc container inference was OOMKilled (2 restarts)")
    assert "raise resources.limits.memory" in message
