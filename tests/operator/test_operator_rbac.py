"""deploy/'s RBAC is exactly what the operator uses: the verbs are derived from the requests it made to the API
emulator (every path of a pass: create, spec change, drift repair, a refused child, storage warnings, an invalid
spec, node changes, kubelet summaries) and compared with deploy/rbac.yaml and its opt-in component, both ways."""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
from typing import Any

import yaml
from operator_support import Kube, llmservice, operator_running
from test_operator_emulator import converged

from kubellm_emulator import RecordedRequest
from kubellm_operator.api import PLURAL

ROOT = pathlib.Path(__file__).resolve().parents[2]
BASE_RBAC = ROOT / "deploy" / "rbac.yaml"
KUBELET_STATS_RBAC = ROOT / "deploy" / "components" / "kubelet-stats" / "rbac.yaml"
# The operator runs as deploy/'s ServiceAccount (tests/operator/conftest.py); its client's and Kopf's requests alike.
OPERATOR_USER = "system:serviceaccount:kubellm-system:kubellm-operator"

LEASES_PATH = "/apis/coordination.k8s.io/v1/namespaces/kubellm-system/leases"
Rule = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)

_RESOURCE_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<namespace>[^/]+))?/(?P<resource>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?"
)


def required(request: RecordedRequest) -> set[Rule]:
    """The RBAC rules a request needs, as the apiserver's RequestInfoFactory and authorizer see it."""
    match = _RESOURCE_PATH.match(request.path)
    if match is None:
        return set()  # discovery (/api, /apis): granted to every authenticated user by system:discovery
    group = "" if match["core"] else match["group"]
    resource, name, sub = match["resource"], match["name"], match["sub"]
    if match["namespace"] is None and resource == "namespaces" and name is None:
        return set()
    if sub:
        resource = f"{resource}/{sub}"
    watching = request.query.get("watch") in ("true", "1")
    verb = {
        "GET": "watch" if watching else "get" if name else "list",
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if name else "deletecollection",
    }[request.method]
    rules = {(group, resource, verb)}
    body = _body(request)
    if _is_apply(request):
        # A server-side apply that creates the object is also authorized as create (apiserver handlers/patch.go).
        rules.add((group, resource, "create"))
    for reference in (body.get("metadata") or {}).get("ownerReferences") or []:
        if reference.get("blockOwnerDeletion"):
            # OwnerReferencesPermissionEnforcement: blockOwnerDeletion needs update on the owner's finalizers.
            owner_group = str(reference["apiVersion"]).rsplit("/", 1)[0] if "/" in reference["apiVersion"] else ""
            rules.add((owner_group, f"{PLURAL}/finalizers", "update"))
    return rules


def _is_apply(request: RecordedRequest) -> bool:
    # The operator's server-side applies are the only requests with force=true (a JSON patch has no force).
    return request.method == "PATCH" and "fieldManager" in request.query and "force" in request.query


def _body(request: RecordedRequest) -> dict[str, Any]:
    try:
        loaded = json.loads(request.body) if request.body else {}
    except ValueError:
        loaded = yaml.safe_load(request.body) if request.body else {}
    return loaded if isinstance(loaded, dict) else {}


def granted(path: pathlib.Path, kind: str = "ClusterRole") -> set[Rule]:
    rules: set[Rule] = set()
    for document in yaml.safe_load_all(path.read_text()):
        if not document or document.get("kind") != kind:
            continue
        for rule in document["rules"]:
            assert not rule.get("resourceNames") and "*" not in rule["verbs"] and "*" not in rule["resources"]
            rules |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return rules


def operator_requests(kube: Kube) -> list[RecordedRequest]:
    return [r for r in kube.emulator.requests() if r.user == OPERATOR_USER]


async def exercise_every_path(kube: Kube) -> None:
    kube.emulator.seed_node("small", ephemeral_storage="5Gi")
    kube.emulator.seed_node_stats("small", capacity="5Gi", available="4Gi")
    kube.emulator.apply_manifest(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "taken", "namespace": "default"},
            "spec": {"type": "NodePort", "selector": {"a": "b"}, "ports": [{"port": 80, "nodePort": 30600}]},
        }
    )
    async with operator_running(kube, summary_refresh_s=0.1):
        await kube.create(llmservice())  # storage warning (Event), children created
        await kube.create(llmservice("refused", service={"type": "NodePort", "nodePort": 30600}))
        impossible = llmservice("impossible", model={"name": "m", "sizeHint": "10Gi"}, storage={"limit": "2Gi"})
        await kube.create(impossible)
        await kube.wait(lambda: converged(kube), "tiny to converge")
        await kube.wait(lambda: kube.events("refused", "ChildRejected"), "the refusal Event")
        await kube.wait(lambda: kube.events("impossible", "InvalidSpec"), "the InvalidSpec Event")
        await kube.patch_llmservice("tiny", {"spec": {"replicas": 2}})
        await asyncio.to_thread(
            kube.core.patch_namespaced_service,
            "tiny",
            "default",
            {"spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}},
            _content_type="application/merge-patch+json",
        )
        kube.emulator.seed_node("big", ephemeral_storage="100Gi")
        await kube.wait(
            lambda: converged(kube) and kube.condition("tiny", "StorageReady").get("status") == "True",
            "tiny to converge again, with the storage it needs",
        )


async def test_rbac_is_exactly_what_the_operator_uses(kube: Kube) -> None:
    await exercise_every_path(kube)
    used: set[Rule] = set()
    for request in operator_requests(kube):
        used |= required(request)
    # The leader election's Lease is the one namespaced grant: a Role in kubellm-system, used only there.
    lease_requests = [r for r in operator_requests(kube) if "/leases" in r.path]
    assert lease_requests and all(r.path.startswith(LEASES_PATH) for r in lease_requests)
    base = granted(BASE_RBAC) | granted(BASE_RBAC, "Role")
    stats = granted(KUBELET_STATS_RBAC)
    assert stats == {("", "nodes/proxy", "get")}, "the opt-in component grants the kubelet summary only"
    assert not base & stats, "nodes/proxy is not granted by default"
    missing = used - base - stats
    unused = (base | stats) - used
    assert not missing, f"the operator needs rules deploy/ does not grant: {sorted(missing)}"
    assert not unused, f"deploy/ grants rules the operator never used: {sorted(unused)}"
