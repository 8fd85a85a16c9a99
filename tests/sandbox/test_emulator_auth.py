"""Authentication, impersonation and RBAC over HTTP, each answer as kube-apiserver gives it.

The rules mirrored: k8s.io/apiserver `filters.WithAuthentication` (401), `filters.WithImpersonation`,
`request.RequestInfoFactory` (verbs), plugin/pkg/auth/authorizer/rbac `RuleAllows`, `responsewriters.Forbidden`
(the 403 message), and the access reviews of pkg/registry/authorization.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from emulator_http import Api

from kubellm_emulator import Emulator
from kubellm_emulator.auth import ADMIN_TOKEN

RBAC = "/apis/rbac.authorization.k8s.io/v1"
SA_USER = "system:serviceaccount:team:bot"


def role(name: str, rules: list[dict[str, Any]], namespace: str | None = "team") -> dict[str, Any]:
    kind = "Role" if namespace else "ClusterRole"
    metadata: dict[str, Any] = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": metadata, "rules": rules}


def binding(
    name: str, role_kind: str, role_name: str, subjects: list[dict[str, Any]], namespace: str | None
) -> dict[str, Any]:
    kind = "RoleBinding" if namespace else "ClusterRoleBinding"
    metadata: dict[str, Any] = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": metadata,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role_name},
        "subjects": subjects,
    }


@pytest.fixture
async def bot(emulator: Emulator) -> Any:
    """A ServiceAccount team/bot that may read pods and patch one ConfigMap's name in `team`, list nodes cluster-wide,
    and GET /healthz-like paths by prefix; and an HTTP client authenticated with its token."""
    for manifest in (
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "bot", "namespace": "team"}},
        role(
            "reader",
            [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
                {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]},
                {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["patch"], "resourceNames": ["settings"]},
                {"apiGroups": ["apps"], "resources": ["*/scale"], "verbs": ["get"]},
            ],
        ),
        binding("reader", "Role", "reader", [{"kind": "ServiceAccount", "name": "bot"}], "team"),
        role(
            "nodes-and-metrics",
            [
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
                {"nonResourceURLs": ["/metrics", "/debug/*"], "verbs": ["get"]},
            ],
            namespace=None,
        ),
        binding(
            "nodes-and-metrics",
            "ClusterRole",
            "nodes-and-metrics",
            [{"kind": "ServiceAccount", "name": "bot", "namespace": "team"}],
            None,
        ),
        binding("dangling", "ClusterRole", "missing", [{"kind": "Group", "name": "system:serviceaccounts"}], None),
    ):
        emulator.apply_manifest(manifest)
    token = emulator.service_account_token("team", "bot")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        yield Api(session, emulator.api_url)


def forbidden_message(what: str, verb: str, resource: str, group: str, where: str) -> str:
    return f'{what} is forbidden: User "{SA_USER}" cannot {verb} resource "{resource}" in API group "{group}" {where}'


@pytest.mark.parametrize(
    ("method", "path", "allowed", "message"),
    [
        ("GET", "/api/v1/namespaces/team/pods", True, None),
        ("GET", "/api/v1/namespaces/team/pods/p1", True, None),  # 404 after authorization: the pod does not exist
        (
            "GET",
            "/api/v1/namespaces/team/pods?watch=true",
            False,
            forbidden_message("pods", "watch", "pods", "", 'in the namespace "team"'),
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods",
            False,
            forbidden_message("pods", "list", "pods", "", 'in the namespace "default"'),
        ),
        (
            "DELETE",
            "/api/v1/namespaces/team/pods",
            False,
            forbidden_message("pods", "deletecollection", "pods", "", 'in the namespace "team"'),
        ),
        (
            "PATCH",
            "/api/v1/namespaces/team/pods/p1",
            False,
            forbidden_message('pods "p1"', "patch", "pods", "", 'in the namespace "team"'),
        ),
        ("PATCH", "/api/v1/namespaces/team/pods/p1/status", True, None),  # a subresource rule `pods/status`
        ("PATCH", "/api/v1/namespaces/team/configmaps/settings", True, None),  # resourceNames
        (
            "PATCH",
            "/api/v1/namespaces/team/configmaps/other",
            False,
            forbidden_message('configmaps "other"', "patch", "configmaps", "", 'in the namespace "team"'),
        ),
        ("GET", "/apis/apps/v1/namespaces/team/deployments/d/scale", True, None),  # `*/scale`
        (
            "GET",
            "/apis/apps/v1/namespaces/team/deployments/d",
            False,
            forbidden_message('deployments.apps "d"', "get", "deployments", "apps", 'in the namespace "team"'),
        ),
        ("GET", "/api/v1/nodes", True, None),
        (
            "GET",
            "/api/v1/nodes/n1",
            False,
            forbidden_message('nodes "n1"', "get", "nodes", "", "at the cluster scope"),
        ),
        ("GET", "/apis", True, None),  # system:discovery, bound to system:authenticated
        ("GET", "/debug/pprof", True, None),  # nonResourceURLs with a trailing *
        ("GET", "/other", False, f'forbidden: User "{SA_USER}" cannot get path "/other"'),
    ],
)
async def test_rbac_decides_as_the_apiserver(
    bot: Api, method: str, path: str, allowed: bool, message: str | None
) -> None:
    route, _, query = path.partition("?")
    params = dict(item.split("=") for item in query.split("&")) if query else None
    status, body = await bot.call(
        method, route, {} if method == "PATCH" else None, params=params, content_type="application/merge-patch+json"
    )
    if allowed:
        assert status != 403, body
        return
    assert status == 403
    assert body["reason"] == "Forbidden"
    # A binding to a ClusterRole that does not exist applies to the ServiceAccount and is named in the reason.
    assert body["message"] == f'{message}: RBAC: clusterrole.rbac.authorization.k8s.io "missing" not found'


async def test_tokens_and_anonymous(emulator: Emulator) -> None:
    """filters.WithAuthentication: an unknown token is 401; no token is system:anonymous (403 beyond public info);
    a ServiceAccount's token stops working when the ServiceAccount is deleted."""
    emulator.apply_manifest({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "gone"}})
    token = emulator.service_account_token("default", "gone")
    async with aiohttp.ClientSession() as session:
        async with session.get(emulator.api_url + "/api/v1/pods", headers={"Authorization": "Bearer nope"}) as r:
            assert (r.status, (await r.json())["reason"]) == (401, "Unauthorized")
        async with session.get(emulator.api_url + "/api/v1/pods") as r:
            body = await r.json()
            assert r.status == 403
            assert body["message"] == (
                'pods is forbidden: User "system:anonymous" cannot list resource "pods" in API group "" at the '
                "cluster scope"
            )
        async with session.get(emulator.api_url + "/version") as r:
            assert r.status == 200  # system:public-info-viewer
        headers = {"Authorization": f"Bearer {token}"}
        async with session.get(emulator.api_url + "/apis", headers=headers) as r:
            assert r.status == 200
        emulator.store.delete(emulator.store.type_for("", "v1", "serviceaccounts"), "default", "gone")
        async with session.get(emulator.api_url + "/apis", headers=headers) as r:
            assert r.status == 401


async def test_impersonation(emulator: Emulator, bot: Api) -> None:
    """filters.WithImpersonation: the admin may impersonate; the impersonated user is then authorized; a user
    without the `impersonate` verb is refused with the apiserver's message."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession(headers=admin) as session:
        api = Api(session, emulator.api_url)
        status, _ = await api.get("/api/v1/namespaces/team/pods", headers={"Impersonate-User": SA_USER})
        assert status == 200
        status, body = await api.get("/api/v1/namespaces/team/secrets", headers={"Impersonate-User": SA_USER})
        assert status == 403
        assert body["message"].startswith(f'secrets is forbidden: User "{SA_USER}" cannot list resource "secrets"')
        # A group grants what is bound to it: system:masters is everything.
        status, _ = await api.get(
            "/api/v1/namespaces/team/secrets",
            headers={"Impersonate-User": "alice", "Impersonate-Group": "system:masters"},
        )
        assert status == 200
    status, body = await bot.get("/api/v1/namespaces/team/pods", headers={"Impersonate-User": "alice"})
    assert status == 403
    assert body["message"].startswith(
        f'users "alice" is forbidden: User "{SA_USER}" cannot impersonate resource "users" in API group "" at the '
        "cluster scope"
    )


async def test_access_reviews(emulator: Emulator, bot: Api) -> None:
    """SelfSubjectAccessReview (any authenticated user) and SubjectAccessReview (needs create on it)."""
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"namespace": "team", "verb": "list", "resource": "pods"}},
    }
    status, body = await bot.post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review)
    assert status == 201
    assert body["status"] == {
        "allowed": True,
        "reason": 'RBAC: allowed by RoleBinding "reader/team" of Role "reader" to ServiceAccount "bot/team"',
    }
    subject_review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {"user": SA_USER, "resourceAttributes": {"verb": "list", "resource": "nodes"}},
    }
    status, body = await bot.post("/apis/authorization.k8s.io/v1/subjectaccessreviews", subject_review)
    assert status == 403  # the bot may not ask about others
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as session:
        status, body = await Api(session, emulator.api_url).post(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews", subject_review
        )
    assert status == 201
    assert body["status"] == {
        "allowed": True,
        "reason": 'RBAC: allowed by ClusterRoleBinding "nodes-and-metrics" of ClusterRole "nodes-and-metrics" to '
        'ServiceAccount "bot/team"',
    }
    status, body = await bot.post(
        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", {"spec": {"namespace": "team"}}
    )
    assert status == 201
    assert {"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]} in body["status"]["resourceRules"]
