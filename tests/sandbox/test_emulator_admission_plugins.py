"""Admission plugins: ResourceQuota on pods and OwnerReferencesPermissionEnforcement, with the apiserver's 403s,
and the Deployment stand-in's ReplicaFailure when a quota refuses its pods."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from emulator_http import Api

from kubellm_emulator import ApiError, Emulator, ObjectStore
from kubellm_emulator.kubelet import Kubelet

JsonObject = dict[str, Any]


def quota(hard: dict[str, str], name: str = "compute") -> JsonObject:
    return {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": name}, "spec": {"hard": hard}}


def pod(name: str, requests: dict[str, str] | None = None, limits: dict[str, str] | None = None) -> JsonObject:
    resources = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "server", "image": "kubellm:dev", "resources": resources}]},
    }


def _store_with(hard: dict[str, str]) -> ObjectStore:
    store = ObjectStore()
    store.create(store.type_for("", "v1", "resourcequotas"), "default", quota(hard))
    return store


def _create_pod(store: ObjectStore, body: JsonObject) -> JsonObject:
    return store.create(store.type_for("", "v1", "pods"), "default", body)


# (id, the quota, the pod already there, the pod refused, the 403 message) - plugin/pkg/admission/resourcequota
# `checkRequest` ("exceeded quota") and the pod evaluator's `Constraints` ("must specify").
ROWS = [
    (
        "requests.ephemeral-storage",
        {"requests.ephemeral-storage": "50Gi"},
        pod("a", requests={"ephemeral-storage": "20Gi"}),
        pod("b", requests={"ephemeral-storage": "40Gi"}),
        'pods "b" is forbidden: exceeded quota: compute, requested: requests.ephemeral-storage=40Gi, used: '
        "requests.ephemeral-storage=20Gi, limited: requests.ephemeral-storage=50Gi",
    ),
    (
        "limits.ephemeral-storage",
        {"limits.ephemeral-storage": "10Gi"},
        None,
        pod("b", limits={"ephemeral-storage": "12Gi"}),
        'pods "b" is forbidden: exceeded quota: compute, requested: limits.ephemeral-storage=12Gi, used: '
        "limits.ephemeral-storage=0, limited: limits.ephemeral-storage=10Gi",
    ),
    (
        "pods",
        {"pods": "1"},
        pod("a"),
        pod("b"),
        'pods "b" is forbidden: exceeded quota: compute, requested: pods=1, used: pods=1, limited: pods=1',
    ),
    (
        "requests.cpu",
        {"requests.cpu": "1"},
        pod("a", requests={"cpu": "500m"}),
        pod("b", requests={"cpu": "600m"}),
        'pods "b" is forbidden: exceeded quota: compute, requested: requests.cpu=600m, used: requests.cpu=500m, '
        "limited: requests.cpu=1",
    ),
    (
        "requests.memory",
        {"requests.memory": "1Gi"},
        None,
        pod("b", requests={"memory": "2Gi"}),
        'pods "b" is forbidden: exceeded quota: compute, requested: requests.memory=2Gi, used: requests.memory=0, '
        "limited: requests.memory=1Gi",
    ),
    (
        "must-specify",
        {"requests.cpu": "1", "limits.memory": "1Gi"},
        None,
        pod("b"),
        'pods "b" is forbidden: failed quota: compute: must specify limits.memory for: server; requests.cpu for: '
        "server",
    ),
]


@pytest.mark.parametrize(("hard", "before", "refused", "message"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_resource_quota_refuses_pods_over_it(
    hard: dict[str, str], before: JsonObject | None, refused: JsonObject, message: str
) -> None:
    store = _store_with(hard)
    if before is not None:
        _create_pod(store, before)
    with pytest.raises(ApiError) as caught:
        _create_pod(store, refused)
    assert (caught.value.code, caught.value.reason, caught.value.message) == (403, "Forbidden", message)


def test_quota_usage_follows_pods_and_failed_pods_count_for_nothing() -> None:
    """The quota controller's status.used; QuotaV1Pod: Failed and Succeeded pods are not counted."""
    store = _store_with({"pods": "1", "requests.ephemeral-storage": "50Gi"})
    pods = store.type_for("", "v1", "pods")
    _create_pod(store, pod("a", requests={"ephemeral-storage": "30Gi"}))
    used = store.get(store.type_for("", "v1", "resourcequotas"), "default", "compute")["status"]
    assert used == {
        "hard": {"pods": "1", "requests.ephemeral-storage": "50Gi"},
        "used": {"pods": "1", "requests.ephemeral-storage": "30Gi"},
    }
    store.patch(
        pods, "default", "a", "application/merge-patch+json", {"status": {"phase": "Failed"}}, subresource="status"
    )
    _create_pod(store, pod("b", requests={"ephemeral-storage": "30Gi"}))  # "a" failed: it frees its share
    store.delete(pods, "default", "a")
    used = store.get(store.type_for("", "v1", "resourcequotas"), "default", "compute")["status"]["used"]
    assert used == {"pods": "1", "requests.ephemeral-storage": "30Gi"}


async def test_deployment_stand_in_reports_replica_failure(emulator: Emulator) -> None:
    """The ReplicaSet controller's FailedCreate, copied by the Deployment controller as ReplicaFailure."""
    emulator.seed_node("worker-1")
    emulator.apply_manifest(
        quota({"requests.ephemeral-storage": "10Gi"}) | {"metadata": {"name": "compute", "namespace": "default"}}
    )
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "tiny", "namespace": "default"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "tiny"}},
            "template": {
                "metadata": {"labels": {"app": "tiny"}},
                "spec": {
                    "containers": [
                        {
                            "name": "server",
                            "image": "kubellm:dev",
                            "resources": {"requests": {"ephemeral-storage": "20Gi"}},
                        }
                    ]
                },
            },
        },
    }
    emulator.apply_manifest(deployment)
    async with Kubelet(emulator.api_url) as kubelet:
        rolled = await kubelet.reconcile("default", "tiny")
        conditions = {c["type"]: c for c in rolled["status"]["conditions"]}
        failure = conditions["ReplicaFailure"]
        assert (failure["status"], failure["reason"]) == ("True", "FailedCreate")
        assert failure["message"].startswith('pods "tiny-')
        assert failure["message"].endswith(
            "is forbidden: exceeded quota: compute, requested: requests.ephemeral-storage=20Gi, used: "
            "requests.ephemeral-storage=0, limited: requests.ephemeral-storage=10Gi"
        )
        assert rolled["status"].get("readyReplicas", 0) == 0
        events, _ = emulator.store.list_objects(emulator.store.type_for("", "v1", "events"), "default")
        assert any(e["reason"] == "FailedCreate" and e["involvedObject"]["kind"] == "ReplicaSet" for e in events)
        # The quota grows: the next pass creates the pod and the condition goes.
        emulator.apply_manifest(
            quota({"requests.ephemeral-storage": "30Gi"}) | {"metadata": {"name": "compute", "namespace": "default"}}
        )
        rolled = await kubelet.reconcile("default", "tiny")
        assert "ReplicaFailure" not in {c["type"] for c in rolled["status"]["conditions"]}
        assert rolled["status"]["readyReplicas"] == 1


def limit_range(item: dict[str, Any]) -> JsonObject:
    return {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": {"name": "limits"},
        "spec": {"limits": [{"type": "Container", **item}]},
    }


def test_limit_range_defaults_then_quota_counts_them() -> None:
    """LimitRanger (defaultContainerResourceRequirements) before ResourceQuota: the defaults are what is counted."""
    store = _store_with({"requests.ephemeral-storage": "15Gi"})
    store.create(
        store.type_for("", "v1", "limitranges"),
        "default",
        limit_range({"default": {"ephemeral-storage": "20Gi"}, "defaultRequest": {"ephemeral-storage": "10Gi"}}),
    )
    created = _create_pod(store, pod("a"))
    assert created["spec"]["containers"][0]["resources"] == {
        "requests": {"ephemeral-storage": "10Gi"},
        "limits": {"ephemeral-storage": "20Gi"},
    }
    assert created["metadata"]["annotations"]["kubernetes.io/limit-ranger"] == (
        "LimitRanger plugin set: ephemeral-storage request for container server; ephemeral-storage limit for "
        "container server"
    )
    with pytest.raises(ApiError) as caught:
        _create_pod(store, pod("b"))
    assert caught.value.message == (
        'pods "b" is forbidden: exceeded quota: compute, requested: requests.ephemeral-storage=10Gi, used: '
        "requests.ephemeral-storage=10Gi, limited: requests.ephemeral-storage=15Gi"
    )


@pytest.mark.parametrize(
    ("item", "resources", "message"),
    [
        (
            {"max": {"ephemeral-storage": "50Gi"}},
            {"limits": {"ephemeral-storage": "60Gi"}},
            'pods "p" is forbidden: maximum ephemeral-storage usage per Container is 50Gi, but limit is 60Gi',
        ),
        (
            {"max": {"cpu": "2"}},
            {"requests": {"cpu": "1"}},
            'pods "p" is forbidden: maximum cpu usage per Container is 2.  No limit is specified',
        ),
        (
            {"min": {"memory": "100Mi"}},
            {"requests": {"memory": "50Mi"}},
            'pods "p" is forbidden: minimum memory usage per Container is 100Mi, but request is 50Mi',
        ),
        (
            {"maxLimitRequestRatio": {"cpu": "2"}},
            {"requests": {"cpu": "500m"}, "limits": {"cpu": "2"}},
            'pods "p" is forbidden: cpu max limit to request ratio per Container is 2, but provided ratio is 4.000000',
        ),
    ],
    ids=["max", "max-needs-a-limit", "min", "ratio"],
)
def test_limit_range_bounds(item: dict[str, Any], resources: dict[str, Any], message: str) -> None:
    """LimitRanger's minConstraint, maxConstraint and limitRequestRatioConstraint."""
    store = ObjectStore()
    store.create(store.type_for("", "v1", "limitranges"), "default", limit_range(item))
    body = pod("p")
    body["spec"]["containers"][0]["resources"] = resources
    with pytest.raises(ApiError) as caught:
        _create_pod(store, body)
    assert (caught.value.code, caught.value.message) == (403, message)


def test_a_limit_alone_is_also_the_request() -> None:
    """SetDefaults_Pod: requests default to limits, so a quota on requests counts a limit-only container."""
    store = _store_with({"requests.ephemeral-storage": "5Gi"})
    with pytest.raises(ApiError) as caught:
        _create_pod(store, pod("p", limits={"ephemeral-storage": "8Gi"}))
    assert "requested: requests.ephemeral-storage=8Gi" in caught.value.message


@pytest.fixture
async def builder(emulator: Emulator) -> Any:
    """A ServiceAccount that may create and patch ConfigMaps and read Widgets, but nothing on finalizers or delete."""
    emulator.apply_manifest({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "builder"}})
    emulator.apply_manifest(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "builder", "namespace": "default"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "patch", "get"]}],
        }
    )
    emulator.apply_manifest(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "builder", "namespace": "default"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "builder"},
            "subjects": [{"kind": "ServiceAccount", "name": "builder", "namespace": "default"}],
        }
    )
    token = emulator.service_account_token("default", "builder")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        yield Api(session, emulator.api_url)


def _owned_config_map(owner: JsonObject, name: str, *, block: bool) -> JsonObject:
    reference = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        **({"blockOwnerDeletion": True} if block else {}),
    }
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "ownerReferences": [reference]}}


async def test_block_owner_deletion_needs_update_on_the_owners_finalizers(emulator: Emulator, builder: Api) -> None:
    """OwnerReferencesPermissionEnforcement (gc_admission.go), as OpenShift and hardened clusters run it."""
    owner = emulator.apply_manifest({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}})
    path = "/api/v1/namespaces/default/configmaps"
    status, body = await builder.post(path, _owned_config_map(owner, "child", block=True))
    assert status == 403
    assert body["message"] == (
        'configmaps "child" is forbidden: cannot set blockOwnerDeletion if an ownerReference refers to a resource '
        "you can't set finalizers on: , <nil>"
    )
    status, _ = await builder.post(path, _owned_config_map(owner, "child", block=False))
    assert status == 201  # an ownerReference without blockOwnerDeletion needs nothing more on create
    # Changing ownerReferences on update needs delete on the object itself.
    status, body = await builder.patch(f"{path}/child", {"metadata": {"ownerReferences": None}})
    assert status == 403
    assert body["message"] == (
        'configmaps "child" is forbidden: cannot set an ownerRef on a resource you can\'t delete: , <nil>'
    )
    emulator.apply_manifest(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "builder", "namespace": "default"},
            "rules": [
                {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "patch", "get"]},
                {"apiGroups": [""], "resources": ["configmaps/finalizers"], "verbs": ["update"]},
            ],
        }
    )
    status, body = await builder.post(path, _owned_config_map(owner, "second", block=True))
    assert status == 201, body
