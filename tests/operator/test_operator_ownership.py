"""Never write what is not ours: a child's name held by another object gives Degraded/NameConflict, and no write
request reaches that object, whether the apiserver runs OwnerReferencesPermissionEnforcement or not (vanilla
Kubernetes and kind do not; without it, an apply over the object would have succeeded)."""

from __future__ import annotations

from typing import Any

import pytest
from operator_support import Kube, llmservice, operator_running
from test_operator_emulator import converged

from kubellm_emulator import WRITE_METHODS
from kubellm_operator.render import SELECTOR_LABEL

PATHS = {
    "Service": "/api/v1/namespaces/default/services/tiny",
    "Deployment": "/apis/apps/v1/namespaces/default/deployments/tiny",
}


def _foreign(kind: str, owner: dict[str, Any] | None, labels: dict[str, str]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "tiny", "namespace": "default", "labels": labels}
    if owner is not None:
        metadata["ownerReferences"] = [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
                "controller": True,
            }
        ]
    if kind == "Service":
        spec: dict[str, Any] = {"selector": {"app": "theirs"}, "ports": [{"name": "web", "port": 80}]}
        return {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec}
    template = {
        "metadata": {"labels": {"app": "theirs"}},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]},
    }
    spec = {"replicas": 1, "selector": {"matchLabels": {"app": "theirs"}}, "template": template}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": spec}


@pytest.mark.parametrize("enforcement", [True, False], ids=["enforced", "vanilla"])
@pytest.mark.parametrize(
    ("kind", "owned", "labelled"),
    [("Service", False, False), ("Deployment", True, False), ("Service", True, True)],
    ids=["service-no-owner", "deployment-owned", "service-with-kubellm-label"],
)
async def test_a_name_taken_by_a_foreign_object_is_a_name_conflict_and_never_written(
    kube: Kube, kind: str, owned: bool, labelled: bool, enforcement: bool
) -> None:
    kube.emulator.owner_references_permission_enforcement = enforcement
    kube.emulator.seed_node("worker-1", ephemeral_storage="100Gi")
    owner = (
        kube.emulator.apply_manifest(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "team-b-app", "namespace": "default"}}
        )
        if owned
        else None
    )
    # A label kubellm's watch selects on makes the object visible to it; without, only the create's 409 shows it.
    labels = {SELECTOR_LABEL: "tiny"} if labelled else {"app": "theirs"}
    before = kube.emulator.apply_manifest(_foreign(kind, owner, labels), field_manager="team-b")
    marker = kube.emulator.request_marker()
    async with operator_running(kube, retry_max_s=1):
        await kube.create(llmservice())
        await kube.wait(
            lambda: kube.condition("tiny", "Degraded").get("reason") == "NameConflict", "Degraded=NameConflict"
        )
        message = kube.condition("tiny", "Degraded")["message"]
        assert f"{kind} default/tiny already exists and is not this LLMService's" in message
        assert ("owner ConfigMap team-b-app" in message) if owned else ("no owner" in message), message
        other = "Deployment" if kind == "Service" else "Service"
        await kube.wait(lambda: kube.get(other, "tiny") is not None, f"the {other}, which is free, created")
        await kube.wait(lambda: kube.events("tiny", "NameConflict"), "the NameConflict Event")
        await kube.quiet(2.5)  # retries with backoff (capped at 1 s): none may write the object either
        assert len(kube.events("tiny", "NameConflict")) == 1
        await kube.delete("LLMService", "tiny")
        await kube.wait(lambda: kube.get("LLMService", "tiny") is None, "the LLMService gone")
    writes = [r for r in kube.emulator.requests(WRITE_METHODS, since=marker) if r.path == PATHS[kind]]
    assert writes == [], [(r.method, r.path) for r in writes]
    after = kube.get(kind, "tiny")
    assert after is not None, "deleting the LLMService garbage-collects nothing of the foreign object"
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["metadata"].get("ownerReferences") == before["metadata"].get("ownerReferences")


async def test_a_freed_name_is_taken_once_the_foreign_object_is_gone(kube: Kube) -> None:
    kube.emulator.owner_references_permission_enforcement = False
    kube.emulator.seed_node("worker-1", ephemeral_storage="100Gi")
    kube.emulator.apply_manifest(_foreign("Service", None, {"app": "theirs"}), field_manager="team-b")
    async with operator_running(kube, retry_max_s=1):
        await kube.create(llmservice())
        await kube.wait(
            lambda: kube.condition("tiny", "Degraded").get("reason") == "NameConflict", "Degraded=NameConflict"
        )
        await kube.delete("Service", "tiny")
        # No watch sees a foreign object go; the backoff's retry creates the Service then.
        await kube.wait(lambda: converged(kube), "convergence once the name is free", timeout=20)
