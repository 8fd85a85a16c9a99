"""The emulator's apiserver semantics over real HTTP: metadata, concurrency, patch types, subresources, deletion."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from kubellm_emulator import WRITE_METHODS, Emulator

CM = "/api/v1/namespaces/default/configmaps"
DEPLOY = "/apis/apps/v1/namespaces/default/deployments"
WIDGETS = "/apis/example.dev/v1/namespaces/default/widgets"


def deployment(name: str = "web", replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": "nginx:1",
                            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                            "ports": [{"containerPort": 80}],
                        },
                        {"name": "sidecar", "image": "busybox"},
                    ]
                },
            },
        },
    }


async def test_server_sets_metadata_and_one_counter(api: Any) -> None:
    status, first = await api.post(CM, {"metadata": {"name": "a"}, "data": {"k": "v"}})
    assert status == 201
    assert first["kind"] == "ConfigMap" and first["apiVersion"] == "v1"
    meta = first["metadata"]
    assert meta["namespace"] == "default" and meta["uid"] and meta["creationTimestamp"].endswith("Z")
    status, second = await api.post(DEPLOY, deployment())
    assert status == 201
    assert int(second["metadata"]["resourceVersion"]) == int(meta["resourceVersion"]) + 1

    status, generated = await api.post(CM, {"metadata": {"generateName": "gen-"}})
    assert (
        status == 201 and generated["metadata"]["name"].startswith("gen-") and len(generated["metadata"]["name"]) == 9
    )

    status, listing = await api.get(CM)
    assert listing["kind"] == "ConfigMapList" and listing["apiVersion"] == "v1"
    assert {item["kind"] for item in listing["items"]} == {"ConfigMap"}
    assert int(listing["metadata"]["resourceVersion"]) >= int(generated["metadata"]["resourceVersion"])

    status, error = await api.post(CM, {"metadata": {"name": "a"}})
    assert status == 409 and error["reason"] == "AlreadyExists" and error["kind"] == "Status"
    status, error = await api.post(CM, {"metadata": {"name": "b", "namespace": "other"}})
    assert status == 400 and "does not match the namespace" in error["message"]
    status, error = await api.post("/api/v1/namespaces/missing/configmaps", {"metadata": {"name": "b"}})
    assert status == 404 and error["message"] == 'namespaces "missing" not found'
    status, error = await api.post(CM, {"metadata": {"name": "Bad_Name"}})
    assert status == 422 and "metadata.name: Invalid value" in error["message"]


async def test_generation_bumps_only_on_spec_changes(api: Any) -> None:
    _, created = await api.post(DEPLOY, deployment())
    assert created["metadata"]["generation"] == 1
    _, labelled = await api.patch(f"{DEPLOY}/web", {"metadata": {"labels": {"x": "y"}}})
    assert labelled["metadata"]["generation"] == 1
    assert int(labelled["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    _, status_written = await api.patch(f"{DEPLOY}/web/status", {"status": {"replicas": 1}})
    assert status_written["metadata"]["generation"] == 1 and status_written["status"] == {"replicas": 1}
    _, scaled = await api.patch(f"{DEPLOY}/web", {"spec": {"replicas": 3}})
    assert scaled["metadata"]["generation"] == 2
    _, unchanged = await api.patch(f"{DEPLOY}/web", {"spec": {"replicas": 3}})
    assert unchanged["metadata"]["resourceVersion"] == scaled["metadata"]["resourceVersion"]


async def test_stale_resource_version_conflicts_and_failed_json_patch_test_is_422(api: Any) -> None:
    _, created = await api.post(CM, {"metadata": {"name": "a"}, "data": {"k": "1"}})
    stale = created["metadata"]["resourceVersion"]
    _, updated = await api.put(f"{CM}/a", {**created, "data": {"k": "2"}})
    assert updated["data"] == {"k": "2"}
    status, error = await api.put(f"{CM}/a", {**created, "data": {"k": "3"}})
    assert status == 409 and error["reason"] == "Conflict"
    assert "the object has been modified" in error["message"]
    status, _ = await api.patch(f"{CM}/a", {"metadata": {"resourceVersion": stale}, "data": {"k": "4"}})
    assert status == 409
    status, error = await api.patch(
        f"{CM}/a",
        [
            {"op": "test", "path": "/metadata/resourceVersion", "value": stale},
            {"op": "replace", "path": "/data/k", "value": "5"},
        ],
        kind="json",
    )
    assert status == 422 and error["reason"] == "Invalid"
    fresh = updated["metadata"]["resourceVersion"]
    status, patched = await api.patch(
        f"{CM}/a",
        [
            {"op": "test", "path": "/metadata/resourceVersion", "value": fresh},
            {"op": "add", "path": "/metadata/finalizers", "value": ["x/y"]},
        ],
        kind="json",
    )
    assert status == 200 and patched["metadata"]["finalizers"] == ["x/y"]


async def test_strategic_merge_patch_merges_named_lists_and_never_stores_directives(api: Any) -> None:
    await api.post(DEPLOY, deployment())
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "$setElementOrder/containers": [{"name": "main"}, {"name": "sidecar"}],
                    "containers": [
                        {
                            "name": "main",
                            "image": "nginx:2",
                            "$setElementOrder/env": [{"name": "A"}, {"name": "B"}, {"name": "C"}],
                            "env": [{"name": "C", "value": "3"}, {"name": "B", "$patch": "delete"}],
                        }
                    ],
                }
            }
        }
    }
    status, patched = await api.patch(f"{DEPLOY}/web", patch, kind="strategic")
    assert status == 200, patched
    containers = patched["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["main", "sidecar"]
    assert containers[0]["image"] == "nginx:2"
    assert containers[0]["env"] == [{"name": "A", "value": "1"}, {"name": "C", "value": "3"}]
    assert containers[0]["ports"] == [{"containerPort": 80}]
    assert "$setElementOrder" not in str(patched)

    status, merged = await api.patch(f"{DEPLOY}/web", {"metadata": {"labels": {"app": None}}}, kind="merge")
    assert status == 200 and "app" not in merged["metadata"]["labels"]
    status, replaced = await api.patch(
        f"{DEPLOY}/web", {"spec": {"template": {"spec": {"containers": [{"name": "only", "image": "x"}]}}}}
    )
    assert [c["name"] for c in replaced["spec"]["template"]["spec"]["containers"]] == ["only"]


async def test_server_side_apply_creates_merges_and_drops_what_its_manager_dropped(api: Any) -> None:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"a": "1"}}
    status, error = await api.patch(f"{CM}/applied", body, kind="apply")
    assert status == 400 and "fieldManager" in error["message"]
    status, created = await api.patch(f"{CM}/applied", body, kind="apply", params={"fieldManager": "me"})
    assert status == 200 and created["data"] == {"a": "1"}
    await api.patch(f"{CM}/applied", {"data": {"theirs": "x"}})  # another manager's field
    status, merged = await api.patch(
        f"{CM}/applied", {**body, "data": {"b": "2"}}, kind="apply", params={"fieldManager": "me", "force": "true"}
    )
    assert merged["data"] == {"b": "2", "theirs": "x"}
    entry = next(m for m in merged["metadata"]["managedFields"] if m["manager"] == "me")
    assert entry["operation"] == "Apply" and entry["fieldsV1"] == {"f:data": {"f:b": {}}}
    status, again = await api.patch(
        f"{CM}/applied", {**body, "data": {"b": "2"}}, kind="apply", params={"fieldManager": "me"}
    )
    assert again["metadata"]["resourceVersion"] == merged["metadata"]["resourceVersion"]  # a no-op apply


async def test_server_side_apply_of_a_deployment_merges_containers_by_name(api: Any) -> None:
    applied = deployment()
    params = {"fieldManager": "kubellm", "force": "true"}
    await api.patch(f"{DEPLOY}/web", applied, kind="apply", params=params)
    await api.patch(f"{DEPLOY}/web", {"metadata": {"annotations": {"note": "by hand"}}})
    containers = applied["spec"]["template"]["spec"]["containers"]
    containers[0]["env"] = [{"name": "A", "value": "1"}]  # B dropped
    del containers[1]  # sidecar dropped
    status, result = await api.patch(f"{DEPLOY}/web", applied, kind="apply", params=params)
    assert status == 200, result
    stored = result["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in stored] == ["main"]
    assert stored[0]["env"] == [{"name": "A", "value": "1"}] and stored[0]["ports"] == [{"containerPort": 80}]
    assert result["metadata"]["annotations"] == {"note": "by hand"}


async def test_dry_run_stores_nothing(api: Any) -> None:
    status, created = await api.post(CM, {"metadata": {"name": "dry"}}, params={"dryRun": "All"})
    assert status == 201 and created["metadata"]["name"] == "dry"
    assert (await api.get(f"{CM}/dry"))[0] == 404
    await api.post(CM, {"metadata": {"name": "kept"}, "data": {"k": "1"}})
    _, patched = await api.patch(f"{CM}/kept", {"data": {"k": "2"}}, params={"dryRun": "All"})
    assert patched["data"] == {"k": "2"}
    assert (await api.get(f"{CM}/kept"))[1]["data"] == {"k": "1"}
    assert (await api.delete(f"{CM}/kept", params={"dryRun": "All"}))[0] == 200
    assert (await api.get(f"{CM}/kept"))[0] == 200


async def test_status_and_scale_subresources(emulator: Emulator, api: Any, widget_crd: dict[str, Any]) -> None:
    emulator.apply_manifest(widget_crd)
    widget = {"apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": "small"}}
    status, created = await api.post(WIDGETS, {**widget, "status": {"ignored": True}})
    assert status == 201 and "status" not in created and created["spec"]["replicas"] == 1
    _, with_status = await api.patch(f"{WIDGETS}/w/status", {"status": {"replicas": 1}, "spec": {"size": "large"}})
    assert with_status["status"] == {"replicas": 1} and with_status["spec"]["size"] == "small"
    _, main = await api.patch(f"{WIDGETS}/w", {"status": {"replicas": 9}, "spec": {"size": "large"}})
    assert main["status"] == {"replicas": 1} and main["spec"]["size"] == "large"

    _, scale = await api.get(f"{WIDGETS}/w/scale")
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 1 and scale["status"]["replicas"] == 1
    _, scaled = await api.patch(f"{WIDGETS}/w/scale", {"spec": {"replicas": 4}})
    assert scaled["spec"]["replicas"] == 4
    assert (await api.get(f"{WIDGETS}/w"))[1]["spec"]["replicas"] == 4
    status, _ = await api.put(f"{WIDGETS}/w/scale", {**scale, "spec": {"replicas": 5}})
    assert status == 409  # that Scale carries the Widget's resourceVersion from before the patch
    status, rescaled = await api.put(f"{WIDGETS}/w/scale", {**scaled, "spec": {"replicas": 5}})
    assert status == 200 and rescaled["spec"]["replicas"] == 5

    await api.post(DEPLOY, deployment())
    _, deploy_scale = await api.get(f"{DEPLOY}/web/scale")
    assert deploy_scale["status"]["selector"] == "app=web"
    status, _ = await api.patch(f"{DEPLOY}/web/scale", {"spec": {"replicas": 2}})
    assert status == 200 and (await api.get(f"{DEPLOY}/web"))[1]["spec"]["replicas"] == 2


async def test_finalizers_defer_deletion_and_owners_collect_dependents(api: Any) -> None:
    _, owner = await api.post(DEPLOY, deployment())
    ref = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": owner["metadata"]["uid"]}
    await api.post(CM, {"metadata": {"name": "child", "ownerReferences": [ref]}})
    await api.post(CM, {"metadata": {"name": "held", "ownerReferences": [ref], "finalizers": ["example.dev/hold"]}})
    await api.post(CM, {"metadata": {"name": "orphan-candidate"}})

    status, _ = await api.delete(f"{DEPLOY}/web")
    assert status == 200
    assert (await api.get(f"{DEPLOY}/web"))[0] == 404
    assert (await api.get(f"{CM}/child"))[0] == 404
    _, held = await api.get(f"{CM}/held")
    assert held["metadata"]["deletionTimestamp"]
    status, error = await api.patch(f"{CM}/held", {"metadata": {"finalizers": ["example.dev/hold", "new/one"]}})
    assert status == 422 and "no new finalizers" in error["message"]
    status, _ = await api.patch(f"{CM}/held", {"metadata": {"finalizers": None}})
    assert status == 200
    assert (await api.get(f"{CM}/held"))[0] == 404

    _, owner2 = await api.post(DEPLOY, deployment("api"))
    ref2 = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api", "uid": owner2["metadata"]["uid"]}
    await api.post(CM, {"metadata": {"name": "kept", "ownerReferences": [ref2]}})
    await api.delete(f"{DEPLOY}/api", {"propagationPolicy": "Orphan"})
    _, kept = await api.get(f"{CM}/kept")
    assert "ownerReferences" not in kept["metadata"]


async def test_dependents_of_an_owner_that_is_gone_are_collected_whenever_they_appear(api: Any) -> None:
    _, owner = await api.post(DEPLOY, deployment())
    gone = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": owner["metadata"]["uid"]}
    _, live_owner = await api.post(DEPLOY, deployment("api"))
    live = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api", "uid": live_owner["metadata"]["uid"]}
    await api.post(CM, {"metadata": {"name": "plain"}})
    await api.delete(f"{DEPLOY}/web")

    # A writer that read the owner before it was deleted (the operator's apply, a create) still succeeds, as on a
    # real cluster, and the garbage collector then deletes the orphan.
    applied = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied", "ownerReferences": [gone]}}
    status, _ = await api.patch(f"{CM}/applied", applied, kind="apply", params={"fieldManager": "late"})
    assert status in (200, 201)
    assert (await api.get(f"{CM}/applied"))[0] == 404
    status, _ = await api.post(CM, {"metadata": {"name": "created", "ownerReferences": [gone]}})
    assert status == 201
    assert (await api.get(f"{CM}/created"))[0] == 404

    # An object that gains a reference to the gone owner is collected too; with a live owner left, only the
    # dangling reference is removed.
    status, _ = await api.patch(f"{CM}/plain", {"metadata": {"ownerReferences": [gone]}})
    assert status == 200
    assert (await api.get(f"{CM}/plain"))[0] == 404
    await api.post(CM, {"metadata": {"name": "shared", "ownerReferences": [gone, live]}})
    _, shared = await api.get(f"{CM}/shared")
    assert shared["metadata"]["ownerReferences"] == [live]
    held = {"name": "held", "ownerReferences": [gone], "finalizers": ["example.dev/hold"]}
    await api.post(CM, {"metadata": held})
    _, held_now = await api.get(f"{CM}/held")
    assert held_now["metadata"]["deletionTimestamp"], "an orphan with finalizers is being deleted"


async def test_namespace_deletion_removes_its_content(api: Any) -> None:
    await api.post("/api/v1/namespaces", {"metadata": {"name": "team"}})
    await api.post("/api/v1/namespaces/team/configmaps", {"metadata": {"name": "c"}})
    status, _ = await api.delete("/api/v1/namespaces/team")
    assert status == 200
    assert (await api.get("/api/v1/namespaces/team/configmaps/c"))[0] == 404
    assert (await api.get("/api/v1/namespaces/team"))[0] == 404


async def test_label_and_field_selectors(api: Any) -> None:
    for name, labels in (("a", {"tier": "web", "env": "prod"}), ("b", {"tier": "db"}), ("c", {})):
        await api.post(CM, {"metadata": {"name": name, "labels": labels}})

    async def names(**params: str) -> list[str]:
        status, listing = await api.get(CM, params=params)
        assert status == 200, listing
        return [item["metadata"]["name"] for item in listing["items"]]

    assert await names(labelSelector="tier=web") == ["a"]
    assert await names(labelSelector="tier!=web") == ["b", "c"]
    assert await names(labelSelector="tier in (web,db)") == ["a", "b"]
    assert await names(labelSelector="tier notin (web)") == ["b", "c"]
    assert await names(labelSelector="env") == ["a"]
    assert await names(labelSelector="!env") == ["b", "c"]
    assert await names(labelSelector="tier,env=prod") == ["a"]
    assert await names(fieldSelector="metadata.name=b") == ["b"]
    assert await names(fieldSelector="metadata.name!=b,metadata.namespace=default") == ["a", "c"]
    status, error = await api.get(CM, params={"fieldSelector": "nonsense"})
    assert status == 400 and "field selector" in error["message"]


async def test_events_are_listable_by_involved_object_in_both_groups(api: Any) -> None:
    involved = {"kind": "Pod", "name": "p1", "namespace": "default", "uid": "u1"}
    await api.post(
        "/api/v1/namespaces/default/events",
        {"metadata": {"generateName": "p1."}, "involvedObject": involved, "reason": "Pulled", "message": "ok"},
    )
    await api.post(
        "/apis/events.k8s.io/v1/namespaces/default/events",
        {
            "metadata": {"generateName": "p2."},
            "regarding": {**involved, "name": "p2"},
            "reason": "Failed",
            "note": "bad",
            "type": "Warning",
            "action": "Pull",
            "reportingController": "test",
            "reportingInstance": "test-1",
            "eventTime": "2026-01-01T00:00:00.000000Z",
        },
    )
    _, core = await api.get("/api/v1/events", params={"fieldSelector": "involvedObject.name=p2"})
    assert [(e["reason"], e["message"]) for e in core["items"]] == [("Failed", "bad")]
    _, modern = await api.get(
        "/apis/events.k8s.io/v1/namespaces/default/events", params={"fieldSelector": "regarding.name=p1"}
    )
    assert [(e["reason"], e["note"]) for e in modern["items"]] == [("Pulled", "ok")]


async def test_discovery_serves_crds_at_runtime(emulator: Emulator, api: Any, widget_crd: dict[str, Any]) -> None:
    _, core = await api.get("/api/v1")
    assert core["groupVersion"] == "v1"
    pods = next(r for r in core["resources"] if r["name"] == "pods")
    assert pods["namespaced"] is True and "watch" in pods["verbs"] and pods["kind"] == "Pod"
    assert (await api.get("/apis/example.dev/v1"))[0] == 404

    status, crd = await api.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", widget_crd)
    assert status == 201
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True"
    _, groups = await api.get("/apis")
    assert "example.dev" in [g["name"] for g in groups["groups"]]
    _, resources = await api.get("/apis/example.dev/v1")
    assert {r["name"] for r in resources["resources"]} == {"widgets", "widgets/status", "widgets/scale"}
    assert (await api.get(WIDGETS))[0] == 200

    await api.post(
        WIDGETS,
        {"apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": "small"}},
    )
    await api.delete("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.dev")
    assert (await api.get(WIDGETS))[0] == 404
    assert emulator.store.find_type("example.dev", "v1", "widgets") is None


async def test_injected_faults_fail_the_next_requests_then_stop(emulator: Emulator, api: Any) -> None:
    emulator.faults.fail(CM, method="POST", times=2, status=500)
    emulator.faults.fail(f"{CM}/x", method="PATCH", times=1, status=409)
    assert (await api.post(CM, {"metadata": {"name": "x"}}))[0] == 500
    assert (await api.post(CM, {"metadata": {"name": "x"}}))[0] == 500
    assert (await api.post(CM, {"metadata": {"name": "x"}}))[0] == 201
    status, error = await api.patch(f"{CM}/x", {"data": {"a": "b"}})
    assert status == 409 and error["reason"] == "Conflict"
    assert (await api.patch(f"{CM}/x", {"data": {"a": "b"}}))[0] == 200
    assert [status for _, _, status in emulator.faults.served] == [500, 500, 409]


async def test_node_stats_summary_serves_what_the_test_seeds(emulator: Emulator, api: Any) -> None:
    emulator.seed_node("n1", ephemeral_storage="100Gi", allocatable_ephemeral_storage="90Gi", disk_pressure=True)
    emulator.seed_node_stats("n1", capacity="100Gi", available="30Gi", image_capacity="200Gi", image_available="150Gi")
    _, node = await api.get("/api/v1/nodes/n1")
    assert node["status"]["allocatable"]["ephemeral-storage"] == "90Gi"
    assert {c["type"]: c["status"] for c in node["status"]["conditions"]}["DiskPressure"] == "True"
    _, summary = await api.get("/api/v1/nodes/n1/proxy/stats/summary")
    assert summary["node"]["nodeName"] == "n1"
    assert summary["node"]["fs"]["availableBytes"] == 30 * 2**30
    assert summary["node"]["fs"]["usedBytes"] == 70 * 2**30
    assert summary["node"]["runtime"]["imageFs"]["capacityBytes"] == 200 * 2**30
    emulator.seed_node_stats("n1", capacity="100Gi", available="10Gi")
    assert (await api.get("/api/v1/nodes/n1/proxy/stats/summary"))[1]["node"]["fs"]["availableBytes"] == 10 * 2**30
    emulator.seed_node(
        "n1", ephemeral_storage="100Gi", disk_pressure=False, taints=[{"key": "gpu", "effect": "NoSchedule"}]
    )
    _, node = await api.get("/api/v1/nodes/n1")
    assert {c["type"]: c["status"] for c in node["status"]["conditions"]}["DiskPressure"] == "False"
    assert node["spec"]["taints"] == [{"key": "gpu", "effect": "NoSchedule"}]
    assert (await api.get("/api/v1/nodes/missing/proxy/stats/summary"))[0] == 404


async def test_concurrent_read_modify_write_loses_no_update(api: Any) -> None:
    await api.post(CM, {"metadata": {"name": "counter"}, "data": {"n": "0"}})
    conflicts = 0

    async def increment() -> None:
        nonlocal conflicts
        for _ in range(50):  # bounded optimistic-concurrency retries
            _, current = await api.get(f"{CM}/counter")
            current["data"]["n"] = str(int(current["data"]["n"]) + 1)
            status, _ = await api.put(f"{CM}/counter", current)
            if status == 200:
                return
            assert status == 409
            conflicts += 1
        raise AssertionError("no update went through in 50 tries")

    await asyncio.gather(*(increment() for _ in range(8)))
    assert (await api.get(f"{CM}/counter"))[1]["data"]["n"] == "8"
    assert conflicts > 0


async def test_kmock_reactions_still_take_precedence(emulator: Emulator, api: Any) -> None:
    emulator["get /version"] << 503
    status, _ = await api.get("/version")
    assert status == 503
    assert (await api.get("/api/v1"))[0] == 200


async def test_request_log_filters_by_method_path_and_marker(emulator: Emulator, api: Any) -> None:
    await api.post(CM, {"metadata": {"name": "a"}})
    await api.get(CM)
    marker = emulator.request_marker()
    await api.patch(f"{CM}/a", {"data": {"k": "v"}}, params={"fieldManager": "me"})
    await api.post(DEPLOY, deployment())
    await api.get(f"{CM}/a")

    assert [(r.method, r.path) for r in emulator.requests(since=marker)] == [
        ("PATCH", f"{CM}/a"),
        ("POST", DEPLOY),
        ("GET", f"{CM}/a"),
    ]
    writes = emulator.requests(WRITE_METHODS)
    assert [r.method for r in writes] == ["POST", "PATCH", "POST"] and all(r.is_write for r in writes)
    assert [r.method for r in emulator.requests("get", path_prefix=CM)] == ["GET", "GET"]
    patch = emulator.requests("PATCH")[0]
    assert json.loads(patch.body) == {"data": {"k": "v"}} and patch.query == {"fieldManager": "me"}

    # Serials keep counting past the dropped history, so an old marker still selects only later requests.
    emulator.max_recorded_requests = 2
    marker = emulator.request_marker()
    for name in ("b", "c", "d"):
        await api.post(CM, {"metadata": {"name": name}})
    assert [r.serial for r in emulator.requests()] == [marker + 1, marker + 2]
    assert [r.serial for r in emulator.requests(since=marker + 2)] == [marker + 2]


LEASES = "/apis/coordination.k8s.io/v1/namespaces/default/leases"


async def test_leases_update_only_from_the_version_read_as_leader_election_needs(api: Any) -> None:
    """Two candidates that read the same Lease both write it: the apiserver takes one (optimistic concurrency) and
    answers the other 409 Conflict; an update naming no resourceVersion is refused (leaseStrategy refuses
    unconditional updates); ValidateLeaseSpec refuses a non-positive duration."""
    spec = {"holderIdentity": "a", "leaseDurationSeconds": 15, "leaseTransitions": 0}
    status, created = await api.post(LEASES, {"metadata": {"name": "leader"}, "spec": spec})
    assert status == 201
    first = {**created, "spec": {**spec, "holderIdentity": "b", "leaseTransitions": 1}}
    second = {**created, "spec": {**spec, "holderIdentity": "c", "leaseTransitions": 1}}
    status, won = await api.put(f"{LEASES}/leader", first)
    assert status == 200 and won["spec"]["holderIdentity"] == "b"
    status, error = await api.put(f"{LEASES}/leader", second)
    assert status == 409 and error["reason"] == "Conflict"
    assert error["message"] == (
        'Operation cannot be fulfilled on leases.coordination.k8s.io "leader": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    unconditional = {"metadata": {"name": "leader"}, "spec": {**spec, "holderIdentity": "d"}}
    status, error = await api.put(f"{LEASES}/leader", unconditional)
    assert status == 422 and error["reason"] == "Invalid"
    assert "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update" in error["message"]
    status, error = await api.post(
        LEASES, {"metadata": {"name": "bad"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 0}}
    )
    assert status == 422
    assert "spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0" in error["message"]
