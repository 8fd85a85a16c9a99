"""The Deployment controller's status logic (kubellm_emulator.deployments), on the clock it is given.

Mirrors pkg/controller/deployment/progress.go and sync.go: Progressing=False/ProgressDeadlineExceeded once no
progress was made for progressDeadlineSeconds, back to True on progress; ReplicaFailure/FailedCreate copied from the
ReplicaSet when a pod creation is refused, and gone once creation works again.
"""

from __future__ import annotations

from typing import Any

from kubellm_emulator.deployments import deployment_status, template_hash

T0, T_BEFORE, T_AFTER = "2026-01-01T00:00:00Z", "2026-01-01T00:09:00Z", "2026-01-01T00:10:01Z"


def deployment(status: dict[str, Any] | None = None, deadline: int = 600) -> dict[str, Any]:
    template = {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
    return {
        "metadata": {"name": "x", "generation": 1},
        "spec": {"replicas": 1, "progressDeadlineSeconds": deadline, "template": template},
        "status": status or {},
    }


def starting_pod(dep: dict[str, Any]) -> dict[str, Any]:
    labels = {"app": "x", "pod-template-hash": template_hash(dep["spec"]["template"])}
    return {"metadata": {"name": "x-1", "labels": labels}, "status": {"phase": "Pending"}}


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_progress_deadline_exceeded_after_the_deadline_without_progress() -> None:
    first = deployment()
    status = deployment_status(first, [starting_pod(first)], T0)
    assert conditions(status)["Progressing"] == ("True", "ReplicaSetUpdated")
    later = deployment(status)
    assert conditions(deployment_status(later, [starting_pod(later)], T_BEFORE))["Progressing"] == (
        "True",
        "ReplicaSetUpdated",
    )
    stalled = deployment_status(later, [starting_pod(later)], T_AFTER)
    assert conditions(stalled)["Progressing"] == ("False", "ProgressDeadlineExceeded")
    progressing = next(c for c in stalled["conditions"] if c["type"] == "Progressing")
    assert (
        progressing["message"]
        == f'ReplicaSet "x-{template_hash(later["spec"]["template"])}" has timed out progressing.'
    )


def test_replica_failure_comes_and_goes_with_the_refusal() -> None:
    dep = deployment()
    refused = 'pods "x-1" is forbidden: exceeded quota: compute, requested: pods=1, used: pods=1, limited: pods=1'
    status = deployment_status(dep, [], T0, create_failure=refused)
    failure = next(c for c in status["conditions"] if c["type"] == "ReplicaFailure")
    assert (failure["status"], failure["reason"], failure["message"]) == ("True", "FailedCreate", refused)
    assert "ReplicaFailure" not in conditions(deployment_status(deployment(status), [starting_pod(dep)], T_BEFORE))
