"""The operator on the API emulator over HTTP: reconcile, drift, GC, storage pre-flight, restarts, faults."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
import pytest
from operator_support import Kube, llmservice, operator_running

from kubellm_operator.api import LLMService
from kubellm_operator.children import is_applied, with_applied_hash
from kubellm_operator.render import DEFAULT_INFERENCE_IMAGE, render
from kubellm_operator.storage import BASIS_SUMMARY

GIB = 2**30


def rendered(kube: Kube, name: str = "tiny") -> list[dict[str, Any]]:
    """What the operator must have applied: the renderer's output, adopted and stamped, for the stored object."""
    obj = kube.get("LLMService", name)
    assert obj is not None
    children = render(
        LLMService.from_object({k: v for k, v in obj.items() if k != "status"}), image_default=DEFAULT_INFERENCE_IMAGE
    )
    kopf.adopt(children, owner=obj)  # type: ignore[arg-type]
    return [with_applied_hash(child) for child in children]


def owned_by(child: dict[str, Any], owner: dict[str, Any]) -> bool:
    refs = child["metadata"].get("ownerReferences") or []
    return [(r["kind"], r["name"], r["uid"], r.get("controller")) for r in refs] == [
        ("LLMService", owner["metadata"]["name"], owner["metadata"]["uid"], True)
    ]


def kopf_handled(kube: Kube, name: str = "tiny") -> bool:
    """Kopf has recorded the last change as handled (its own write after a handler ends, even a failed one)."""
    obj = kube.get("LLMService", name) or {}
    return "kubellm.dev/last-handled-configuration" in ((obj.get("metadata") or {}).get("annotations") or {})


def converged(kube: Kube, name: str = "tiny") -> bool:
    """Children as rendered, status for the current generation, and Kopf's own bookkeeping written."""
    obj = kube.get("LLMService", name)
    if obj is None or (obj.get("status") or {}).get("observedGeneration") != obj["metadata"]["generation"]:
        return False
    if not kopf_handled(kube, name):
        return False
    return all(is_applied(child, kube.get(child["kind"], name)) for child in rendered(kube, name))


async def test_reconcile_children_drift_and_garbage_collection(kube: Kube) -> None:
    kube.emulator.seed_node("worker-1", ephemeral_storage="100Gi")
    async with operator_running(kube):
        await kube.create(llmservice())
        await kube.wait(lambda: converged(kube), "the Deployment and Service as rendered, and the status")
        owner = kube.get("LLMService", "tiny")
        assert owner is not None
        for child in rendered(kube):
            actual = kube.get(child["kind"], "tiny")
            assert actual is not None and owned_by(actual, owner)
            assert actual["spec"] | child["spec"] == actual["spec"]  # every rendered field, as rendered
        status = owner["status"]
        assert (status["phase"], status["observedGeneration"], status["ready"]) == ("Pending", 1, "0/1")
        assert status["endpoint"] == "tiny.default.svc.cluster.local:5000"
        assert status["selector"] == "kubellm.dev/llmservice=tiny"
        assert kube.condition("tiny", "StorageReady")["status"] == "True"

        # A spec change: the Deployment follows, generation and observedGeneration move together.
        await kube.patch_llmservice("tiny", {"spec": {"replicas": 2, "image": "kubellm/inference:dev"}})
        await kube.wait(
            lambda: (kube.get("Deployment", "tiny") or {}).get("spec", {}).get("replicas") == 2 and converged(kube),
            "the Deployment to follow the spec change",
        )
        deployment = kube.get("Deployment", "tiny")
        assert deployment is not None
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "kubellm/inference:dev"
        owner = kube.get("LLMService", "tiny")
        assert owner is not None and owner["metadata"]["generation"] == owner["status"]["observedGeneration"] == 2

        # Drift: a hand edit is reverted, a deleted child comes back.
        await _hand_edit_deployment(kube)
        await kube.wait(lambda: converged(kube), "the hand-edited Deployment to be restored")
        old_uid = kube.get("Service", "tiny")["metadata"]["uid"]  # type: ignore[index]
        await kube.delete("Service", "tiny")
        await kube.wait(
            lambda: (kube.get("Service", "tiny") or {}).get("metadata", {}).get("uid") not in (None, old_uid),
            "the deleted Service to be recreated",
        )
        await kube.delete("Deployment", "tiny")
        await kube.wait(lambda: converged(kube), "the deleted Deployment to be recreated")
        assert len(kube.list("Deployment")) == len(kube.list("Service")) == 1

        # Deleting the LLMService garbage-collects its children (ownerReferences, no finalizer needed).
        await kube.quiet(0.3)  # let the passes the re-creations triggered finish first
        await kube.delete("LLMService", "tiny")
        await kube.wait(
            lambda: not kube.list("Deployment") and not kube.list("Service"), "the children to be garbage-collected"
        )
        # Known race (see docs/operator.md): a pass queued before the deletion reached the watch may still create a
        # child once; its ownerReference names the gone LLMService, so the garbage collector removes it at once.
        # What must hold: no child outlives its LLMService, and nothing but such a create is written.
        late = await kube.quiet(0.5)
        assert all(method == "POST" for method, _ in late), f"only a late create may be written: {late}"
        await kube.wait(
            lambda: not kube.list("Deployment") and not kube.list("Service"), "no child to outlive its LLMService"
        )


async def _hand_edit_deployment(kube: Kube) -> None:
    patch = {"spec": {"replicas": 5, "template": {"spec": {"containers": [{"name": "inference", "image": "evil"}]}}}}
    await asyncio.to_thread(
        kube.apps.patch_namespaced_deployment,
        "tiny",
        "default",
        patch,
        field_manager="kubectl-edit",
    )


def storage_nodes(kube: Kube) -> None:
    """Three nodes, none of which can take a 20Gi request plus 2Gi headroom."""
    kube.emulator.seed_node("small", ephemeral_storage="100Gi", allocatable_ephemeral_storage="90Gi")
    kube.emulator.seed_node_stats("small", capacity="100Gi", available="30Gi", image_available="12Gi")
    kube.emulator.seed_node("cordoned", ephemeral_storage="500Gi")
    kube.emulator.seed_node("tainted", ephemeral_storage="500Gi", taints=[{"key": "gpu", "effect": "NoSchedule"}])


async def cordon(kube: Kube, name: str) -> None:
    await asyncio.to_thread(kube.core.patch_node, name, {"spec": {"unschedulable": True}})


async def test_storage_warning_then_a_big_node_fixes_it(kube: Kube, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kubellm.operator")
    storage_nodes(kube)
    await cordon(kube, "cordoned")
    async with operator_running(kube):
        await kube.create(llmservice(storage={"request": "20Gi", "limit": "20Gi", "cacheSize": "16Gi"}))
        await kube.wait(lambda: kube.condition("tiny", "StorageReady").get("status") == "False", "StorageReady=False")
        await kube.wait(lambda: kube.events("tiny", "InsufficientStorage"), "the InsufficientStorage Event")
        storage_ready = kube.condition("tiny", "StorageReady")
        assert storage_ready["reason"] == "InsufficientStorage"
        # The kubelet summary's imageFs (12Gi free) counts, not the 90Gi allocatable; cordoned/tainted nodes don't.
        expected = (
            "no eligible node has 22Gi of free ephemeral storage (20Gi + 2Gi headroom); best node small has 12Gi "
            "free (1 eligible of 3 nodes)"
        )
        assert storage_ready["message"] == expected
        status = kube.get("LLMService", "tiny")["status"]  # type: ignore[index]
        assert status["storage"] == {
            "required": "22Gi",
            "fittingNodes": 0,
            "eligibleNodes": 1,
            "nodesSeen": 3,
            "bestNode": "small",
            "bestNodeFree": "12Gi",
            "basis": BASIS_SUMMARY,
        }
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        line = (
            "LLMService default/tiny needs 22Gi of free ephemeral storage (20Gi + 2Gi headroom) on a node, but best "
            "node small has 12Gi free (1 eligible of 3 nodes): its pods may stay Pending or be evicted"
        )
        assert warnings.count(line) == 1, warnings
        # The default rolls the workload out anyway: the scheduler is the final arbiter.
        assert (kube.get("Deployment", "tiny") or {}).get("spec", {}).get("replicas") == 1
        event = kube.events("tiny", "InsufficientStorage")[0]
        assert (event["type"], event["message"]) == ("Warning", expected)

        # An unrelated node change re-evaluates, but nothing changed: no new Event, no new log line, no write.
        await kube.wait(lambda: converged(kube), "Kopf's own bookkeeping of the create")
        kube.emulator.seed_node("tainted", ephemeral_storage="600Gi", taints=[{"key": "gpu", "effect": "NoSchedule"}])
        writes = await kube.quiet(1.0)
        assert [w for w in writes if "llmservices" in w[1] or "/events" in w[1]] == []
        assert len(kube.events("tiny", "InsufficientStorage")) == 1

        # A big enough node joins: StorageReady=True without anyone touching the LLMService.
        generation = kube.get("LLMService", "tiny")["metadata"]["generation"]  # type: ignore[index]
        kube.emulator.seed_node("big", ephemeral_storage="200Gi")
        kube.emulator.seed_node_stats("big", capacity="200Gi", available="150Gi")
        await kube.wait(lambda: kube.condition("tiny", "StorageReady").get("status") == "True", "StorageReady=True")
        after = kube.get("LLMService", "tiny")
        assert after is not None and after["metadata"]["generation"] == generation
        # Now that a node fits, the status keeps what the verdict rests on, not figures that move with every node.
        assert after["status"]["storage"] == {"required": "22Gi", "nodesSeen": 4, "basis": BASIS_SUMMARY}
        assert len(kube.events("tiny", "InsufficientStorage")) == 1


async def test_enforce_holds_replicas_at_zero_until_a_node_fits(kube: Kube) -> None:
    kube.emulator.seed_node("small", ephemeral_storage="10Gi")
    async with operator_running(kube):
        await kube.create(llmservice(replicas=2, storage={"request": "20Gi", "cacheSize": "16Gi", "enforce": True}))
        await kube.wait(lambda: (kube.get("LLMService", "tiny") or {}).get("status", {}).get("phase"), "a status")
        deployment = kube.get("Deployment", "tiny")
        assert deployment is not None and deployment["spec"]["replicas"] == 0
        ready = kube.condition("tiny", "Ready")
        assert (ready["reason"], kube.get("LLMService", "tiny")["status"]["phase"]) == (  # type: ignore[index]
            "InsufficientStorage",
            "Pending",
        )
        kube.emulator.seed_node("big", ephemeral_storage="100Gi")
        await kube.wait(
            lambda: (kube.get("Deployment", "tiny") or {}).get("spec", {}).get("replicas") == 2,
            "the replicas to be released once a node fits",
        )


async def test_impossible_spec_is_reported_once_without_a_crash_loop(kube: Kube) -> None:
    kube.emulator.seed_node("worker-1", ephemeral_storage="100Gi")
    async with operator_running(kube) as metrics:
        # Valid for the schema, impossible in practice: a 10Gi model cannot download into a 2Gi limit.
        impossible = llmservice(
            model={"name": "org/model", "sizeHint": "10Gi"},
            storage={"cacheSize": "12Gi", "limit": "2Gi", "request": "2Gi"},
        )
        await kube.create(impossible)
        await kube.wait(lambda: kube.condition("tiny", "Ready").get("reason") == "InvalidSpec", "Ready=InvalidSpec")
        await kube.wait(lambda: kube.events("tiny", "InvalidSpec"), "the InvalidSpec Event")
        status = kube.get("LLMService", "tiny")["status"]  # type: ignore[index]
        assert status["phase"] == "Failed"
        assert "storage.limit (2Gi) is smaller than model.sizeHint (10Gi)" in kube.condition("tiny", "Ready")["message"]
        assert kube.get("Deployment", "tiny") is None, "nothing is rolled out for a spec that cannot work"
        await kube.wait(lambda: kopf_handled(kube), "Kopf to record the permanent failure")
        # The pass is counted after its Event is posted: wait for the count, or the window between reads as a retry.
        passes = await kube.wait(lambda: metrics.reconciles.labels(outcome="invalid")._value.get(), "the pass counted")
        assert not await kube.quiet(1.5), "a permanent error is not retried"
        assert metrics.reconciles.labels(outcome="invalid")._value.get() == passes
        assert len(kube.events("tiny", "InvalidSpec")) == 1

        # Fixing the spec converges.
        await kube.patch_llmservice("tiny", {"spec": {"storage": {"limit": "14Gi", "request": "14Gi"}}})
        await kube.wait(lambda: converged(kube), "the fixed LLMService to converge")
        assert kube.condition("tiny", "Ready")["reason"] != "InvalidSpec"


async def test_restart_converges_without_duplicates_or_writes(kube: Kube) -> None:
    kube.emulator.seed_node("worker-1", ephemeral_storage="100Gi")
    kube.emulator.seed_node_stats("worker-1", capacity="100Gi", available="60Gi")
    async with operator_running(kube):
        await kube.create(llmservice())
        await kube.create(llmservice("other", storage={"request": "500Gi"}))
        await kube.wait(lambda: converged(kube) and converged(kube, "other"), "both LLMServices to converge")
        await kube.wait(lambda: kube.events("other", "InsufficientStorage"), "the storage Event")
        settled = await kube.quiet(0.5)
        assert settled == [], "a converged operator writes nothing"
    marker = kube.emulator.request_marker()
    async with operator_running(kube) as metrics:
        await kube.wait(lambda: metrics.reconciles.labels(outcome="unchanged")._value.get() >= 2, "the resume passes")
        await kube.quiet(1.0)
    assert kube.writes(since=marker) == [], "a restarted operator finds nothing to write"
    assert [d["metadata"]["name"] for d in kube.list("Deployment")] == ["other", "tiny"]
    assert [s["metadata"]["name"] for s in kube.list("Service")] == ["other", "tiny"]
    assert len(kube.events("other", "InsufficientStorage")) == 1


async def test_injected_conflicts_and_server_errors_are_retried(kube: Kube) -> None:
    kube.emulator.seed_node("worker-1", ephemeral_storage="100Gi")
    faults = kube.emulator.faults
    # Children are created with POST (a 409 there means the name is taken: read, found absent, retried).
    faults.fail("/apis/apps/v1/namespaces/default/deployments", method="POST", times=2, status=500)
    faults.fail("/api/v1/namespaces/default/services", method="POST", times=1, status=409)
    faults.fail(
        "/apis/kubellm.dev/v1alpha1/namespaces/default/llmservices/tiny/status", method="PATCH", times=2, status=409
    )
    # Five failures in a row: the backoff (1 s doubling) capped at 1 s keeps the test short.
    async with operator_running(kube, retry_max_s=1) as metrics:
        await kube.create(llmservice())
        await kube.wait(lambda: converged(kube), "convergence despite the injected errors", timeout=20)
    assert sorted({status for _, _, status in faults.served}) == [409, 500]
    assert len(faults.served) == 5
    assert metrics.reconciles.labels(outcome="error")._value.get() >= 1
    assert len(kube.list("Deployment")) == 1


async def test_namespaced_mode_ignores_other_namespaces_but_sees_nodes(kube: Kube) -> None:
    kube.emulator.seed_node("small", ephemeral_storage="3Gi")
    kube.emulator.apply_manifest({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}})
    async with operator_running(kube, namespaces=["team-a"]):
        await kube.create(llmservice("mine", namespace="team-a"))
        await kube.create(llmservice("theirs", namespace="default"))
        await kube.wait(
            lambda: (
                kube.get("Deployment", "mine", "team-a") is not None
                and (kube.get("LLMService", "mine", "team-a") or {})
                .get("status", {})
                .get("storage", {})
                .get("nodesSeen")
                == 1
            ),
            "the watched namespace's LLMService, with the (cluster-scoped) nodes seen",
        )
        kube.emulator.seed_node("big", ephemeral_storage="100Gi")
        await kube.wait(
            lambda: (
                (kube.get("LLMService", "mine", "team-a") or {}).get("status", {}).get("storage", {}).get("nodesSeen")
                == 2
            ),
            "a new node to be seen in namespaced mode",
        )
        assert kube.get("Deployment", "theirs") is None
        assert "status" not in (kube.get("LLMService", "theirs") or {})


async def test_cut_watches_are_resumed(kube: Kube) -> None:
    kube.emulator.seed_node("worker-1", ephemeral_storage="100Gi")
    async with operator_running(kube):
        await kube.create(llmservice())
        await kube.wait(lambda: converged(kube), "the first LLMService")
        kube.emulator.cut_watches()
        await kube.create(llmservice("second"))
        await kube.wait(lambda: converged(kube, "second"), "an LLMService created after the watches were cut")
        await kube.delete("Deployment", "tiny")
        await kube.wait(lambda: converged(kube), "drift repaired after the watches were cut")


async def test_a_field_dropped_from_the_spec_leaves_the_children(kube: Kube) -> None:
    """kubellm creates its children with POST (never applied over someone else's object), which gives its field
    manager an Update entry owning every field it set; server-side apply removes a field kubellm stops applying
    only when no other entry owns it. The first update folds that Update entry into kubellm's Apply entry (one read,
    one managedFields patch), so a nodeSelector dropped from the spec leaves the Deployment."""
    kube.emulator.seed_node("worker-1", ephemeral_storage="100Gi", labels={"disk": "ssd"})
    async with operator_running(kube):
        await kube.create(llmservice(nodeSelector={"disk": "ssd"}))
        await kube.wait(lambda: converged(kube), "the children as rendered")
        created = kube.get("Deployment", "tiny")
        assert created is not None
        assert created["spec"]["template"]["spec"]["nodeSelector"] == {"disk": "ssd"}
        assert [(e["manager"], e["operation"]) for e in created["metadata"]["managedFields"]] == [("kubellm", "Update")]

        marker = kube.emulator.request_marker()
        await kube.patch_llmservice("tiny", {"spec": {"nodeSelector": None}})

        def dropped() -> bool:
            deployment = kube.get("Deployment", "tiny") or {}
            return converged(kube) and "nodeSelector" not in deployment["spec"]["template"]["spec"]

        await kube.wait(dropped, "the nodeSelector to leave the Deployment")
        deployment = kube.get("Deployment", "tiny")
        assert deployment is not None
        assert [(e["manager"], e["operation"]) for e in deployment["metadata"]["managedFields"]] == [
            ("kubellm", "Apply")
        ]
        writes = [w for w in kube.writes(since=marker) if "/deployments/" in w[1]]
        assert writes == [("PATCH", "/apis/apps/v1/namespaces/default/deployments/tiny")] * 2, writes

        # Once adopted, a later change is one apply.
        marker = kube.emulator.request_marker()
        await kube.patch_llmservice("tiny", {"spec": {"replicas": 2}})
        await kube.wait(
            lambda: (kube.get("Deployment", "tiny") or {}).get("spec", {}).get("replicas") == 2 and converged(kube),
            "the replicas change",
        )
        writes = [w for w in kube.writes(since=marker) if "/deployments/" in w[1]]
        assert writes == [("PATCH", "/apis/apps/v1/namespaces/default/deployments/tiny")], writes
