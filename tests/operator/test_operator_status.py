"""Status from the workload: phases, condition reasons, transition times and write-only-on-change (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from kubellm_operator.api import GIB, LLMServiceSpec
from kubellm_operator.status import (
    Observed,
    compute_status,
    condition,
    merge_patch,
    pod_problem,
    status_patch,
    storage_view,
)
from kubellm_operator.storage import BASIS_REQUESTS, NodeFacts, check_storage

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
# A 600 s startup budget (60 x 10 s, 5 s timeouts) in a pod with a 35 s grace period: the probe gives up after a
# run of 590 s to 935 s (60 x (10 s + 5 s) + 35 s).
STARTUP_PROBE = {
    "httpGet": {"path": "/readyz", "port": 5000},
    "periodSeconds": 10,
    "timeoutSeconds": 5,
    "failureThreshold": 60,
}


def restarted_pod(
    *, ran_s: int, exit_code: int = 137, ready_turned: str | None = None, probe: dict[str, Any] | None = STARTUP_PROBE
) -> dict[str, Any]:
    """A pod whose container's previous run started at T0 and ran `ran_s` seconds until it ended with `exit_code`;
    now restarted and not yet started. Its Ready condition is False since `ready_turned` (default: before T0)."""
    finished = f"2026-01-01T{ran_s // 3600:02d}:{ran_s // 60 % 60:02d}:{ran_s % 60:02d}Z"
    last = {"exitCode": exit_code, "reason": "Error", "startedAt": T0, "finishedAt": finished}
    restarted = container(restartCount=1, started=False, state={"running": {}}, lastState={"terminated": last})
    ready = {"type": "Ready", "status": "False", "lastTransitionTime": ready_turned or "2025-12-31T23:59:58Z"}
    declared = {"name": "inference", **({"startupProbe": probe} if probe else {})}
    return {
        **pod(containers=[restarted], conditions=[ready]),
        "spec": {"containers": [declared], "terminationGracePeriodSeconds": 35},
    }


STARTUP = restarted_pod(ran_s=600)
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
            observe(pods=[STARTUP]),
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
    # While a node fits, only what the verdict rests on: per-node figures would move with every node's jitter.
    assert status["storage"] == {"required": "12Gi", "nodesSeen": 1, "basis": BASIS_REQUESTS}
    assert [c["type"] for c in status["conditions"]] == [
        "Ready",
        "StorageReady",
        "Progressing",
        "Degraded",
        "Authenticated",
    ]
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
        ("Ready", "StorageReady", "Progressing", "Degraded", "Authenticated"), T0
    )
    third = compute_status(observe(deployment=deployment(ready=1)), second, T1)
    times = {c["type"]: c["lastTransitionTime"] for c in third["conditions"]}
    assert times == {"Ready": T1, "StorageReady": T0, "Progressing": T1, "Degraded": T0, "Authenticated": T0}


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


@pytest.mark.parametrize(
    ("restarted", "reason"),
    [
        # The startup probe gave up: killed after the 600 s budget, never ready.
        (STARTUP, "StartupProbeFailed"),
        (restarted_pod(ran_s=600, exit_code=143), "StartupProbeFailed"),  # SIGTERM within the grace period
        (restarted_pod(ran_s=935), "StartupProbeFailed"),  # the slowest give-up: timeouts and the whole grace
        # A healthy, started container killed (kill -9) and restarting: the same signal, but not the probe.
        (restarted_pod(ran_s=30, ready_turned="2026-01-01T00:00:30Z"), None),
        (restarted_pod(ran_s=30), None),  # too short for the probe to have given up, whatever Ready says
        (restarted_pod(ran_s=7200, ready_turned="2026-01-01T02:00:00Z"), None),  # too long: it had passed the probe
        (restarted_pod(ran_s=7200), None),
        # Within the window, but the pod's Ready turned during the run: it had become ready, so it had started.
        (restarted_pod(ran_s=900, ready_turned="2026-01-01T00:15:00Z"), None),
        # No startup probe: nothing of the kind can have killed it.
        (restarted_pod(ran_s=600, probe=None), None),
        # A crash with an exit code of its own is no probe kill.
        (restarted_pod(ran_s=600, exit_code=1), None),
    ],
)
def test_startup_probe_failure_is_told_from_a_kill_of_a_started_container(
    restarted: dict[str, Any], reason: str | None
) -> None:
    problem = pod_problem(restarted)
    assert (problem.reason if problem else None) == reason
    if problem is not None:
        assert "raise probes.startup.budgetSeconds" in problem.message


def test_a_killed_started_container_restarting_is_progress_not_degradation() -> None:
    killed = restarted_pod(ran_s=45, ready_turned="2026-01-01T00:00:45Z")
    status = compute_status(observe(pods=[killed]), None, T1)
    assert (status["phase"], reasons(status)["Degraded"]) == ("Progressing", ("False", "Healthy"))


def test_problem_message_counts_pods_and_says_what_to_do() -> None:
    status = compute_status(observe(pods=[pod(containers=[OOM]), pod(containers=[OOM])]), None, T0)
    message = condition(status, "Degraded")["message"]  # type: ignore[index]
    assert message.startswith("2 pods: pod tiny-abc container inference was OOMKilled (2 restarts)")
    assert "raise resources.limits.memory" in message


def crash_looping(message: str | None) -> dict[str, Any]:
    last: dict[str, Any] = {"exitCode": 1, "reason": "Error"}
    if message is not None:
        last["message"] = message
    state = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s restarting failed container"}}
    return {
        "metadata": {"name": "p"},
        "status": {"containerStatuses": [container(restartCount=2, state=state, lastState={"terminated": last})]},
    }


LOG_TAIL = "\n".join(
    [
        *(f"INFO line {n}" for n in range(80)),
        "Traceback (most recent call last):",
        "  ...",
        "ValueError: bad config",
        "",
    ]
)


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        (None, None),
        ("", None),
        (
            "model load failed: ModelLoadError: no model folder at /nope",
            "model load failed: ModelLoadError: no model folder at /nope",
        ),
        # A log tail (FallbackToLogsOnError): its last non-blank lines, on one line.
        (LOG_TAIL, "Traceback (most recent call last): | ... | ValueError: bad config"),
        # A long message keeps its end, where the error is.
        ("x" * 5000 + " the end", "..." + "x" * (400 - 3 - len(" the end")) + " the end"),
    ],
)
def test_crash_loop_carries_the_last_termination_message(message: str | None, shown: str | None) -> None:
    problem = pod_problem(crash_looping(message))
    assert problem is not None and problem.reason == "CrashLoopBackOff"
    assert problem.message.startswith(
        "pod p container inference is crash-looping (2 restarts, last exit code 1): back-off 20s"
    )
    if shown is None:
        assert "termination message" not in problem.message
    else:
        assert problem.message.endswith(f"; last termination message: {shown}")


def _view(*nodes: NodeFacts) -> tuple[Any, ...]:
    return storage_view(check_storage(SPEC, nodes, headroom=2 * GIB))


@pytest.mark.parametrize(
    ("before", "after", "same"),
    [
        # A node fits: its free space and how many others fit do not reach the status.
        ((NodeFacts("big", allocatable=100 * GIB),), (NodeFacts("big", allocatable=99 * GIB),), True),
        (
            (NodeFacts("big", allocatable=100 * GIB), NodeFacts("b2", allocatable=100 * GIB)),
            (NodeFacts("big", allocatable=100 * GIB), NodeFacts("b2", allocatable=100 * GIB, unschedulable=True)),
            True,
        ),
        # None fits: the best node's free space is shown in whole GiB, so jitter within a GiB writes nothing.
        (
            (NodeFacts("small", allocatable=5 * GIB + GIB // 10),),
            (NodeFacts("small", allocatable=5 * GIB + GIB // 2),),
            True,
        ),
        ((NodeFacts("small", allocatable=5 * GIB),), (NodeFacts("small", allocatable=6 * GIB),), False),
        # The verdict flips: the status changes.
        (
            (NodeFacts("big", allocatable=100 * GIB),),
            (NodeFacts("big", allocatable=100 * GIB, unschedulable=True),),
            False,
        ),
        ((NodeFacts("big", allocatable=100 * GIB),), (NodeFacts("big", allocatable=5 * GIB),), False),
    ],
)
def test_storage_view_moves_only_with_what_the_status_shows(
    before: tuple[NodeFacts, ...], after: tuple[NodeFacts, ...], same: bool
) -> None:
    assert (_view(*before) == _view(*after)) is same
    first = compute_status(observe(storage=check_storage(SPEC, before, headroom=2 * GIB)), None, T0)
    second = compute_status(observe(storage=check_storage(SPEC, after, headroom=2 * GIB)), first, T1)
    assert (status_patch(first, second) is None) is same
